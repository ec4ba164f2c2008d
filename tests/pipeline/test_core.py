"""The executor against hand computations: fusion equals the pure functions on the retrievers' own runs, depths
propagate as documented, the tail rule holds for every reranker, filters, stats, and operators == specs."""

from __future__ import annotations

import pytest

from rankstack.errors import BadInput, RankStackError
from rankstack.pipeline import Cutoff, Filter, Fuse, Given, Pipeline, Rerank, Resources, compile_pipeline
from rankstack.records import Candidate, Document, Query, Ranking, Run
from rankstack.rerank.base import Reranker
from rankstack.retrieval.base import Retriever
from rankstack.pipeline.fusion import interpolate, rrf
from rankstack.spec import parse_item

QUERIES = [Query(qid="q1", text="first"), Query(qid="q2", text="second")]


class FixedRetriever(Retriever):
    """A real Retriever over a fixed score table; records the depths it was asked for."""

    def __init__(self, table, name, kind="fixed", documents=None):
        self.table, self.name, self.kind, self.documents = table, name, kind, documents
        self.asked: list[int] = []

    def retrieve(self, queries, k=1000):
        self.asked.append(k)
        return [Ranking.from_scores(q, self.table.get(q.qid, {})).top(k) for q in queries]


def table(n, offset=0.0, seed=1):
    import random

    rng = random.Random(seed)
    return {q.qid: {f"d{i:02d}": rng.random() + offset for i in range(n)} for q in QUERIES}


class Reverse(Reranker):
    """Puts the candidates it gets in reverse order, with scores 100 - position (a known preference)."""

    name = "reverse"

    def __init__(self):
        self.seen: list[list[str]] = []

    def rerank_batch(self, rankings):
        out = []
        for r in rankings:
            assert all(c.document is not None for c in r.candidates), "the stage must attach documents"
            self.seen.append(r.docids)
            cands = list(reversed(r.candidates))
            out.append(Ranking(query=r.query, candidates=tuple(
                Candidate(docid=c.docid, score=100.0 - i, document=c.document) for i, c in enumerate(cands))))
        return out


DOCS = {f"d{i:02d}": Document(docid=f"d{i:02d}", text=f"text {i}", metadata={"parity": "even" if i % 2 == 0 else "odd",
                                                                           "n": i}) for i in range(50)}


def test_rrf_pipeline_equals_rrf_of_the_retrievers_runs():
    a, b = FixedRetriever(table(40, seed=1), "a"), FixedRetriever(table(30, seed=2), "b")
    out = Pipeline(Fuse("rrf", [a, b], rrf_k=60)).run(QUERIES, 25)
    want = rrf([Run.from_rankings(a.retrieve(QUERIES, 25)), Run.from_rankings(b.retrieve(QUERIES, 25))], rrf_k=60)
    for r in out.rankings:
        assert [(c.docid, c.score) for c in r.candidates] == want.ranked(r.query.qid)[:25]
    assert a.asked[0] == 25 and b.asked[0] == 25  # a fusion asks each input for what it was asked
    interp = Pipeline(Fuse("interp", [a % 10, b % 10], alpha=0.3)).run(QUERIES, 5)
    want = interpolate(Run.from_rankings(a.retrieve(QUERIES, 10)), Run.from_rankings(b.retrieve(QUERIES, 10)),
                       alpha=0.3)
    assert [(c.docid, c.score) for c in interp.rankings[0].candidates] == want.ranked("q1")[:5]


def test_cutoffs_fix_each_inputs_fetch_depth():
    a, b = FixedRetriever(table(40, seed=1), "a"), FixedRetriever(table(40, seed=2), "b")
    pipe = (a % 7) + (b % 3)
    out = pipe.run(QUERIES, 100)
    assert a.asked == [7] and b.asked == [3]
    assert len(out.rankings[0].candidates) <= 10
    # rerank depth 5 with k=20: the input is asked for max(20, 5) = 20
    c = FixedRetriever(table(40), "c", documents=DOCS)
    out = (c >> Rerank(Reverse(), depth=5)).run(QUERIES, 20)
    assert c.asked == [20] and len(out.rankings[0].candidates) == 20
    c.asked.clear()
    (c >> Rerank(Reverse(), depth=30) % 3).run(QUERIES, 10)
    assert c.asked == [30]


def test_one_tail_rule_head_reranked_tail_in_input_order_below_it():
    c = FixedRetriever(table(40), "c", documents=DOCS)
    rev = Reverse()
    out = (c >> Rerank(rev, depth=5)).run(QUERIES, 20)
    base = c.retrieve(QUERIES, 20)
    for got, inp in zip(out.rankings, base):
        head, tail = got.candidates[:5], got.candidates[5:]
        assert [x.docid for x in head] == list(reversed(inp.docids[:5]))
        assert [x.docid for x in tail] == inp.docids[5:20]
        assert min(x.score for x in head) > max(x.score for x in tail)
        scores = [x.score for x in got.candidates]
        assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)
        assert Run.from_rankings([got]).ranked(got.query.qid)[0][0] == head[0].docid  # trec order = our order
    assert rev.seen[0] == base[0].docids[:5]  # the reranker got exactly the head


def test_queries_without_candidates_pass_through_and_bad_rerankers_are_caught():
    empty = FixedRetriever({}, "empty", documents=DOCS)
    out = (empty >> Rerank(Reverse(), depth=5)).run(QUERIES, 10)
    assert all(not r.candidates for r in out.rankings)

    class Liar(Reranker):
        def rerank_batch(self, rankings):
            return [Ranking(query=r.query, candidates=r.candidates[:-1]) for r in rankings]

    c = FixedRetriever(table(10), "c", documents=DOCS)
    with pytest.raises(RankStackError, match="other candidates than it was given"):
        (c >> Rerank(Liar(), depth=5)).run(QUERIES, 10)
    nodocs = FixedRetriever(table(10), "c")
    with pytest.raises(BadInput, match="needs passage texts"):
        (nodocs >> Rerank(Reverse(), depth=5)).run(QUERIES, 10)


def test_filter_stage_overfetches_and_keeps_matches_in_order():
    c = FixedRetriever(table(50), "c", documents=DOCS)
    out = (c >> Filter({"parity": "even"}, overfetch=4) % 5).run(QUERIES, 5)
    assert c.asked == [20]  # 5 results x overfetch 4
    full = c.retrieve(QUERIES, 20)
    for got, inp in zip(out.rankings, full):
        assert got.docids == [d for d in inp.docids if int(d[1:]) % 2 == 0][:5]
    out = (c >> Filter({"n": ["3", 4]})).run(QUERIES, 50)  # spec text matches numbers; a list means any of
    assert {d for r in out.rankings for d in r.docids} == {"d03", "d04"}


def test_stats_and_timings_name_each_stage():
    a = FixedRetriever(table(10), "a", kind="bm25", documents=DOCS)
    b = FixedRetriever(table(10, seed=3), "b", kind="dense")
    out = ((a + b) >> Rerank(Reverse(), depth=3)).run(QUERIES, 5)
    assert list(out.timings) == ["retrieve_bm25", "retrieve_dense", "fuse", "rerank"]
    fused = len(set(a.retrieve(QUERIES[:1], 5)[0].docids) | set(b.retrieve(QUERIES[:1], 5)[0].docids))
    assert out.stats["q1"] == {"retrieve_bm25": 5, "retrieve_dense": 5, "fuse": fused, "rerank": fused}


class TableResources(Resources):
    """bm25 and dense items resolve to fixed retrievers; rerankers are built for real (hash embeddings)."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b, self.documents = a, b, DOCS

    def retriever(self, item):
        return {"bm25": self.a, "dense": self.b}[item.kind]


def test_operators_and_specs_build_the_same_pipeline():
    from rankstack.rerank.embedding import EmbeddingReranker
    from rankstack.retrieval.encoders import HashingEncoder

    a = FixedRetriever(table(40, seed=4), "a", kind="bm25")
    b = FixedRetriever(table(40, seed=5), "b", kind="dense")
    res = TableResources(a, b)
    spec = "rrf(bm25 % 10, dense % 10) >> embedding:model=hash:64,depth=5 % 8"
    compiled = compile_pipeline(spec, res)
    emb, depth = res.reranker(parse_item("embedding:model=hash:64"))
    assert emb is compiled.stages[0].reranker and depth == 100  # built once per spec; the depth is the stage's
    built = ((a % 10 + b % 10) >> Rerank(emb, depth=5) % 8).with_documents(DOCS)
    assert compiled.describe() == built.describe()
    got, want = compiled.run(QUERIES, 20), built.run(QUERIES, 20)
    assert [[(c.docid, c.score) for c in r.candidates] for r in got.rankings] == \
        [[(c.docid, c.score) for c in r.candidates] for r in want.rankings]
    direct = EmbeddingReranker(HashingEncoder(64))
    assert [c.docid for c in got.rankings[0].candidates[:5]] == direct.rerank(
        Ranking(query=QUERIES[0], candidates=tuple(Candidate(docid=d, score=s, document=DOCS[d]) for d, s in
                                                  rrf([Run.from_rankings(a.retrieve(QUERIES, 10)),
                                                       Run.from_rankings(b.retrieve(QUERIES, 10))]).ranked("q1")[:5]
                                                  ))).docids


def test_given_source_and_operator_errors():
    r = Ranking(query=QUERIES[0], candidates=tuple(Candidate(docid=d, score=1.0, document=DOCS[d])
                                                   for d in ("d01", "d02", "d03")))
    out = Pipeline(Given([r]), [Rerank(Reverse(), depth=2)]).run([QUERIES[0], QUERIES[1]], 10)
    assert out.rankings[0].docids == ["d02", "d01", "d03"] and out.rankings[1].candidates == ()
    a = FixedRetriever(table(3), "a")
    with pytest.raises(BadInput, match="after >> comes a reranker"):
        a >> a
    with pytest.raises(BadInput, match="cutoff must be a positive integer"):
        Cutoff(0)
    with pytest.raises(BadInput, match="interp fuses exactly two"):
        Fuse("interp", [a, a, a])
    with pytest.raises(BadInput, match="k must be a positive integer"):
        a.pipeline().run(QUERIES, 0)
