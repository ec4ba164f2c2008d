# Two commands on a fresh machine:  `make serve` (set up, then run the main job: the search service)  and
# `make test`.  `make eval` evaluates the retrieval pipelines on BEIR SciFact.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: setup serve eval test bench clean
PORT ?= 8000

$(BIN)/rankstack: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all-cpu]'
	$(BIN)/rankstack install-llm
	touch $(BIN)/rankstack

setup: $(BIN)/rankstack

# The main job: the search service on 127.0.0.1:$(PORT), serving BEIR SciFact (BM25 + dense MiniLM, fused with RRF)
# from ./data. The first run ingests and encodes the corpus (about 3 minutes on 2 cores); a run stopped during the
# ingest is resumed by the next one (stored documents are skipped), never served half-built.
serve: setup
	test -f data/scifact/ingest-complete.json || $(BIN)/rankstack ingest --name scifact --source $(DATA)/beir/scifact --data-dir data
	$(BIN)/rankstack serve --data-dir data --port $(PORT)

# BM25, dense MiniLM and both hybrids on BEIR SciFact, with a metrics table and significance vs BM25.
eval: setup
	$(BIN)/rankstack eval --dataset $(DATA)/beir/scifact --pipeline bm25 --pipeline dense \
		--pipeline hybrid-rrf --pipeline hybrid-interp

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/retrieval_beir.py --data $(DATA)/beir

clean:
	rm -rf $(VENV) .rankstack-cache runs
