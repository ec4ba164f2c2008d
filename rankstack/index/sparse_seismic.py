"""The Seismic engine of learned-sparse retrieval (Bruch et al., SIGIR 2024): approximate search over clustered, pruned
posting lists with block summaries, built from a snapshot of a :class:`~rankstack.index.sparse.SparseIndex`'s
impacts; beside the exact scipy engine (:mod:`rankstack.index.sparse_scipy`) and the Lucene impact engine
(:mod:`rankstack.index.lucene_impact`). ``rankstack[sparse]`` (pyseismic-lsr)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import Sequence

import numpy as np

from rankstack.errors import MissingExtra

logger = logging.getLogger(__name__)

__all__ = ["SeismicEngine", "captured_stdout"]


@contextlib.contextmanager
def captured_stdout(lines: list[str]):
    """Collect what native code (Seismic's Rust) prints on file descriptor 1 into ``lines`` instead of the
    terminal."""
    import sys
    import tempfile

    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield lines
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            lines += tmp.read().decode("utf-8", "replace").splitlines()


class SeismicEngine:
    """A Seismic index built from a snapshot of a SparseIndex's impacts (its live documents at ``version``).
    Seismic's index is immutable: documents written after ``version`` are searched exactly beside it (see
    :meth:`rankstack.retrieval.sparse.SparseRetriever.seismic_engine`) until a background merge builds the next one."""

    def __init__(self, docids: Sequence[str], impacts, vocab: Sequence[str], version: int, n_postings: int,
                 summary_energy: float, threads: int):
        try:
            import seismic
        except ImportError:
            raise MissingExtra("engine=seismic needs Seismic: `pip install 'rankstack[sparse]'` "
                               "(pyseismic-lsr)") from None
        self._string = seismic.get_seismic_string()
        vocab = np.asarray(vocab, dtype=object)
        ds = seismic.SeismicDataset()
        for r, d in enumerate(docids):
            s, e = impacts.indptr[r], impacts.indptr[r + 1]
            if e > s:
                ds.add_document(d, np.asarray(vocab[impacts.indices[s:e]], dtype=self._string),
                                impacts.data[s:e].astype(np.float32))
        t0 = time.perf_counter()
        with captured_stdout([]) as printed:
            self.index = seismic.SeismicIndex.build_from_dataset(ds, n_postings=int(n_postings),
                                                                 summary_energy=float(summary_energy),
                                                                 num_threads=int(threads))
        for line in printed:
            logger.debug("seismic: %s", line)
        logger.info("built a Seismic index of %d documents in %.1f s", len(docids), time.perf_counter() - t0)
        self.version = version
        self.docids = frozenset(docids)

    def search(self, queries: list[dict[str, int]], k: int, query_cut: int, heap_factor: float,
               threads: int) -> list[list[tuple[str, float]]]:
        live = [i for i, q in enumerate(queries) if q]
        out: list[list[tuple[str, float]]] = [[] for _ in queries]
        if not live:
            return out
        comps = [np.asarray(list(queries[i]), dtype=self._string) for i in live]
        vals = [np.asarray(list(queries[i].values()), dtype=np.float32) for i in live]
        res = self.index.batch_search(np.asarray([str(i) for i in live], dtype=self._string), comps, vals, int(k),
                                      int(query_cut), float(heap_factor), num_threads=int(threads))
        for hits in res:  # result lists are not in query order: each hit names its query
            if hits:
                pairs = [(d, float(s)) for _, s, d in hits]
                pairs.sort(key=lambda p: (p[1], p[0]), reverse=True)
                out[int(hits[0][0])] = pairs
        return out
