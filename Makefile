# Two commands on a fresh machine:  `make eval` (set up, then run the main job)  and  `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data

.PHONY: setup eval test bench clean

$(BIN)/rankstack: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all-cpu]'
	$(BIN)/rankstack install-llm
	touch $(BIN)/rankstack

setup: $(BIN)/rankstack

# The main job: BM25, dense MiniLM and both hybrids on BEIR SciFact, with a metrics table and significance vs BM25.
eval: setup
	$(BIN)/rankstack eval --dataset $(DATA)/beir/scifact --pipeline bm25 --pipeline dense \
		--pipeline hybrid-rrf --pipeline hybrid-interp

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/retrieval_beir.py --data $(DATA)/beir

clean:
	rm -rf $(VENV) .rankstack-cache runs
