"""RankStack: retrieval and reranking. Stage packages: index, retrieval, rerank, kernels, service, eval."""

import logging

from rankstack.records import Candidate, Document, Qrels, Query, Ranking, Run, TopK

__version__ = "0.1.0"
__all__ = ["Candidate", "Document", "Qrels", "Query", "Ranking", "Run", "TopK", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
