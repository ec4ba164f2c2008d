from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rankstack.records import Document

# Triton kernels run on CPU tensors through the interpreter unless a GPU run asks for native kernels
# (RANKSTACK_GPU=1). It must be set before triton is first imported.
if os.environ.get("RANKSTACK_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Ray Data's usage collector polls Prometheus from a driver thread and logs each failed query with its traceback;
# on CPython 3.11.7 formatting that traceback parses source (caret anchors) and shares one AST recursion counter
# with pytest rewriting a module in the main thread, which raised "SystemError: AST constructor recursion depth
# mismatch" in CI (tests/service/test_fuzz.py, after the Ray tests). Tests need no usage telemetry.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# LLM rerankers compute in bf16 by default where the CPU multiplies bf16 in hardware (compute=auto); the tests compare
# them with float32 references and with each other, so auto resolves to float32 on every machine they run on.
# tests/rerank/test_factory.py checks the hardware rule itself with the variable unset.
os.environ.setdefault("RANKSTACK_COMPUTE", "fp32")
# Dense encoders run the fastest backend measured lossless on the CPU (backend=auto: OpenVINO, bf16 where the CPU has
# bf16 units). The tests compare dense results with sentence-transformers references and golden values, so auto runs
# PyTorch here; tests/retrieval/test_encoding_backends.py checks the hardware rule and the auto backend itself.
os.environ.setdefault("RANKSTACK_ENCODER_BACKEND", "torch")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when the collection is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} is absent: these tests need the shared evaluation data in ../shared/data")
    return p


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    return shared_path("beir", "scifact")


@pytest.fixture(scope="session")
def nfcorpus_dir() -> Path:
    return shared_path("beir", "nfcorpus")


@pytest.fixture(scope="session")
def dl19_dir() -> Path:
    return shared_path("trec-dl", "dl19")


def write_beir(folder: Path, docs: list[Document], queries: dict[str, str], qrels: dict[str, dict[str, int]],
               split: str = "test") -> Path:
    """Write a small BEIR folder in the standard layout."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.docid, "title": d.title, "text": d.text}) + "\n")
    with open(folder / "queries.jsonl", "w") as fh:
        for q, t in queries.items():
            fh.write(json.dumps({"_id": q, "text": t}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    with open(folder / "qrels" / f"{split}.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, rels in qrels.items():
            for d, r in rels.items():
                fh.write(f"{q}\t{d}\t{r}\n")
    return folder


def beir_subset(source: Path, folder: Path, queries: int, docs: int) -> Path:
    """A BEIR folder with the first ``queries`` judged test queries of ``source``, every document judged for them,
    and other documents up to ``docs`` in all (real text, short encoding)."""
    from rankstack.eval.datasets import load_beir

    full = load_beir(source)
    qids = sorted(full.qrels.qids)[:queries]
    judged = {d for q in qids for d in full.qrels.judgments[q]}
    docids = sorted(judged) + [d for d in sorted(full.corpus) if d not in judged][: docs - len(judged)]
    return write_beir(folder, [full.corpus[d] for d in docids], {q: full.queries[q].text for q in qids},
                      {q: dict(full.qrels.judgments[q]) for q in qids})


def same_lucene_run(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> bool:
    """Equal to a Pyserini run: equal scores at every rank, equal (docid, score) pairs above the lowest score
    (documents tied at the cut aside: Lucene keeps the ones earliest in its index order)."""
    if [s for _, s in sorted(got, key=lambda p: -p[1])] != [s for _, s in sorted(want, key=lambda p: -p[1])]:
        return False
    cut = min(s for _, s in want) if want else 0.0
    return {p for p in got if p[1] > cut + 1e-4} == {p for p in want if p[1] > cut + 1e-4}


@pytest.fixture()
def tiny_beir(tmp_path: Path) -> Path:
    docs = [
        Document(docid="d1", title="Cats", text="Cats are small domesticated carnivorous mammals that purr."),
        Document(docid="d2", title="Dogs", text="Dogs are loyal domesticated animals descended from wolves."),
        Document(docid="d3", title="Python", text="Python is a programming language with readable syntax."),
        Document(docid="d4", title="Rust", text="Rust is a systems programming language focused on memory safety."),
        Document(docid="d5", title="Tea", text="Green tea is brewed from the leaves of the tea plant."),
    ]
    queries = {"q1": "which animals purr", "q2": "memory safe systems programming language", "q3": "brewed tea leaves"}
    qrels = {"q1": {"d1": 1}, "q2": {"d4": 2, "d3": 1}, "q3": {"d5": 1}}
    return write_beir(tmp_path / "tiny", docs, queries, qrels)


def kill_while_writing(proc, writer, acked: list, stop, at_least: int, pause: float = 0.0) -> None:
    """Run ``writer`` in a thread; once it has ``at_least`` acknowledged writes in ``acked`` (and ``pause`` seconds
    later, to land inside a later request), SIGKILL the server ``proc``, then stop the writer (``stop``: an Event)."""
    import signal
    import threading
    import time

    t = threading.Thread(target=writer)
    t.start()
    while len(acked) < at_least and t.is_alive():
        time.sleep(0.05)
    time.sleep(pause)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop.set()
    t.join(60)
    assert len(acked) >= at_least
