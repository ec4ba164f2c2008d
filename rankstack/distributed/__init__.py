"""Beyond one machine, on Ray (the optional ``ray`` extra): sharded builds with Ray Data (:mod:`.build`), shard
servers and an exact scatter-gather router (:mod:`.router`), and query batches spread over workers for
``rankstack eval`` / ``rankstack rerank`` (:mod:`.queries`). Sharded collections are read without Ray too: the
router then opens every shard in-process.
"""

from rankstack.distributed.cluster import connect

__all__ = ["connect"]
