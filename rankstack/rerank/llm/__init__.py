"""LLM rerankers on one runtime: listwise generation, FIRST, ICR, setwise (see each module)."""

from rankstack.rerank.llm.icr import ICRReranker
from rankstack.rerank.llm.listwise import FirstReranker, ListwiseReranker
from rankstack.rerank.llm.runtime import AttentionProbe, CausalLM, ForwardStats, resolve_llm
from rankstack.rerank.llm.setwise import SetwiseReranker

__all__ = ["CausalLM", "AttentionProbe", "ForwardStats", "resolve_llm", "ICRReranker", "FirstReranker",
           "ListwiseReranker", "SetwiseReranker"]
