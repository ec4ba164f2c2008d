"""RankStack for RAG pipelines: relevance filtering, context packing, LangChain and LlamaIndex adapters."""
