"""A sharded collection: one corpus split into N shards, each small enough for one machine, behind one manifest.

Layout of ``<root>`` (written atomically: a failed build leaves the previous collection intact)::

    params.json          kind "sharded": shards (folder, first position, size), indexes, corpus fingerprint
    docids.json          every docid in collection order (shard 0's first, then shard 1's, ...)
    bm25-stats/          collection-wide BM25 statistics: each term's document frequency, document and term counts
    shard-000/docs/      the shard's documents (DocStore)
    shard-000/bm25/      its BM25 postings (BM25Matrix, Lucene's analyser and length norms)
    shard-000/dense/     its vectors (any VectorIndex kind: flat, or compressed as the dense spec says)
    shard-000/splade/    its learned-sparse impacts (SparseIndex)
    splade-stats/        collection-wide document frequencies of the sparse vocabulary (IDF queries)

Shards hold contiguous runs of the corpus in its order, so a document's *position* (shard start + row) is its
place in the single-index build. That is what makes a sharded run equal the single-index run exactly:

- BM25 scores each shard's postings with the collection's statistics (``bm25-stats``), so every document gets the
  score one index over the whole corpus would give; shard top-k lists are merged by (score, position), which is
  Lucene's own order, and Pyserini's rounding is applied once, after the merge.
- dense scores are inner products of one document vector and the query, learned-sparse scores integer impact
  dot products: shard-independent; the merge keeps the best ``k`` over all shards. Inference-free sparse queries
  (``query=idf``) are weighted by the collection's document frequencies (``splade-stats``), as in one index.

:class:`Shard` is what one shard server holds (no JVM: queries arrive analysed); :class:`ShardedIndex` opens the
manifest; searching across shards, locally or on Ray, is :mod:`rankstack.distributed.router`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from rankstack._atomic import write_json
from rankstack.errors import BadInput, IndexCorrupt, UnknownDocid
from rankstack.index.base import IndexSpec, check_k, read_params
from rankstack.records import Document

logger = logging.getLogger(__name__)

__all__ = ["ShardedIndex", "Shard", "ShardedDocuments", "shard_ranges", "write_shard", "write_manifest",
           "merge_topk", "read_sparse_stats", "SHARD_INDEXES", "KIND", "FORMAT_VERSION"]

KIND = "sharded"
FORMAT_VERSION = 1
SHARD_INDEXES = ("bm25", "dense", "splade")


def shard_ranges(num_docs: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous [start, end) ranges covering ``num_docs`` positions, sizes differing by at most one."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards <= 0:
        raise BadInput(f"shards must be a positive integer, got {shards!r}")
    if shards > num_docs:
        raise BadInput(f"{shards} shards for {num_docs} documents: every shard needs at least one document")
    bounds = [num_docs * i // shards for i in range(shards + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def shard_name(i: int) -> str:
    return f"shard-{i:03d}"


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several (positions, scores) lists: score descending, ties to the earlier position (the
    order one index over the whole collection would give)."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    pos = np.concatenate([np.asarray(p, np.int64) for p, _ in parts])
    sc = np.concatenate([np.asarray(s, np.float32) for _, s in parts])
    order = np.lexsort((pos, -sc))[:k]
    return pos[order], sc[order]


# ---- writing ----------------------------------------------------------------------------------------------------

def write_shard(folder: str | os.PathLike, documents: Sequence[Document], *, indexes: Sequence[str],
                vectors: np.ndarray | None = None, dense_spec: str = "flat", dense_meta: dict | None = None,
                sparse=None, sparse_meta: dict | None = None, show_progress: bool | None = False) -> dict:
    """Write one shard's folder (documents in collection order); returns its summary for the manifest. Runs on
    whichever worker holds the shard's documents (:mod:`rankstack.distributed.build`) or in-process."""
    from rankstack.index.docstore import DocStore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (folder / "docs").mkdir(exist_ok=True)
    DocStore.write(folder / "docs", documents)
    out: dict = {"num_docs": len(documents)}
    if "bm25" in indexes:
        from rankstack.index.bm25_matrix import BM25Matrix

        m = BM25Matrix.build(documents, show_progress=show_progress)
        m.save(folder / "bm25")
        out["bm25"] = {"doc_count": m.doc_count, "sum_total_term_freq": m.sum_ttf, "terms": len(m.terms)}
    if "dense" in indexes:
        from rankstack.index.registry import build_vector_index

        if vectors is None or len(vectors) != len(documents):
            raise BadInput("a dense shard needs one vector per document")
        index = build_vector_index(IndexSpec.parse(dense_spec), [d.docid for d in documents],
                                   np.asarray(vectors, np.float32), meta=dict(dense_meta or {}))
        index.save(folder / "dense")
        out["dense"] = {"bytes": int(index.memory_bytes())}
    if "splade" in indexes:
        from rankstack.index.sparse import SparseIndex

        if sparse is None or sparse[0].shape[0] != len(documents):
            raise BadInput("a splade shard needs one sparse vector per document (weights, tokens)")
        m = dict(sparse_meta or {})
        index = SparseIndex(m.pop("vocab"), fingerprint=m.pop("fingerprint"), scale=m.pop("scale"), meta=m)
        index.add([d.docid for d in documents], sparse[0], sparse[1])
        index.save(folder / "splade")
        out["splade"] = {"bytes_per_doc": round(index.bytes_per_doc(), 1)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["pid"] = os.getpid()
    return out


def write_manifest(root: Path, docids: Sequence[str], ranges: Sequence[tuple[int, int]], summaries: Sequence[dict],
                   *, indexes: Sequence[str], dense: dict | None, corpus_sha1: str, build: dict,
                   splade: dict | None = None) -> None:
    """Write ``params.json``, ``docids.json`` and, for BM25, the collection-wide statistics gathered from the
    shards' postings (``root`` is the build's temporary folder)."""
    shards = []
    for i, ((start, end), s) in enumerate(zip(ranges, summaries)):
        if s.get("num_docs") != end - start:
            raise IndexCorrupt(f"{shard_name(i)} holds {s.get('num_docs')} documents, expected {end - start}")
        shards.append({"name": shard_name(i), "start": start, "num_docs": end - start,
                       **{k: v for k, v in s.items() if k in ("bm25", "dense", "splade", "seconds")}})
    if "bm25" in indexes:
        _write_bm25_stats(root, [root / shard_name(i) / "bm25" for i in range(len(ranges))])
    if "splade" in indexes:
        _write_sparse_stats(root, [root / shard_name(i) / "splade" for i in range(len(ranges))])
    (root / "docids.json").write_text(json.dumps(list(docids)), encoding="utf-8")
    write_json(root / "params.json", {"kind": KIND, "format_version": FORMAT_VERSION, "num_docs": len(docids),
                                      "indexes": list(indexes), "dense": dense, "splade": splade,
                                      "shards": shards,
                                      "corpus_sha1": corpus_sha1, "build": build})


def _write_bm25_stats(root: Path, shard_dirs: Sequence[Path]) -> None:
    from rankstack.index.bm25_matrix import BM25Matrix

    df: dict[str, int] = {}
    doc_count = sum_ttf = 0
    for p in shard_dirs:
        m = BM25Matrix.load(p)
        for t, n in zip(m.terms, np.diff(m.indptr).tolist()):
            df[t] = df.get(t, 0) + n
        doc_count += m.doc_count
        sum_ttf += m.sum_ttf
    folder = root / "bm25-stats"
    folder.mkdir()
    terms = list(df)
    (folder / "terms.json").write_text(json.dumps(terms), encoding="utf-8")
    np.save(folder / "df.npy", np.fromiter(df.values(), dtype=np.int64, count=len(df)))
    write_json(folder / "stats.json", {"doc_count": doc_count, "sum_total_term_freq": sum_ttf, "terms": len(terms)})


def _write_sparse_stats(root: Path, shard_dirs: Sequence[Path]) -> None:
    from rankstack.index.sparse import SparseIndex

    df, n = None, 0
    for p in shard_dirs:
        ix = SparseIndex.load(p)
        df = ix.document_frequencies if df is None else df + ix.document_frequencies
        n += len(ix)
    folder = root / "splade-stats"
    folder.mkdir()
    np.save(folder / "df.npy", df)
    write_json(folder / "stats.json", {"doc_count": n, "vocab_size": int(df.size)})


def read_sparse_stats(root: Path) -> tuple[np.ndarray, int]:
    """The collection's sparse document frequencies and document count."""
    try:
        df = np.load(root / "splade-stats" / "df.npy")
        n = int(json.loads((root / "splade-stats" / "stats.json").read_text(encoding="utf-8"))["doc_count"])
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise IndexCorrupt(f"{root}/splade-stats is missing or corrupt ({exc}); rebuild the sharded index") from None
    return df, n


# ---- reading ----------------------------------------------------------------------------------------------------

class Shard:
    """One shard opened in this process: what a shard server holds. Queries arrive analysed (BM25 terms) or
    encoded (dense vectors, sparse impacts), so a shard server needs neither a JVM nor an encoder."""

    def __init__(self, root: str | os.PathLike, number: int, params: dict | None = None):
        from rankstack.index.docstore import DocStore

        self.root = Path(root)
        params = params or read_params(self.root, KIND, FORMAT_VERSION)
        entries = params["shards"]
        if not 0 <= number < len(entries):
            raise BadInput(f"{self.root} has {len(entries)} shards; there is no shard {number}")
        entry = entries[number]
        self.number, self.name, self.start = number, entry["name"], int(entry["start"])
        self.path = self.root / self.name
        self.docs = DocStore(self.path / "docs")
        if len(self.docs) != entry["num_docs"]:
            raise IndexCorrupt(f"{self.path}: {len(self.docs)} documents, the manifest says {entry['num_docs']}; "
                               f"rebuild the sharded index")
        self._row = {d: i for i, d in enumerate(self.docs.docids)}
        self.bm25 = self.dense = self.splade = None
        if "bm25" in params["indexes"]:
            from rankstack.index.bm25_matrix import BM25Matrix

            self.bm25 = BM25Matrix.load(self.path / "bm25")
            terms, df, stats = _read_stats(self.root)
            at = {t: i for i, t in enumerate(terms)}
            try:
                local = df[[at[t] for t in self.bm25.terms]]
            except KeyError:
                raise IndexCorrupt(f"{self.path}: a term of this shard is missing from the collection statistics; "
                                   f"rebuild the sharded index") from None
            self.bm25.use_collection_stats(local, stats["doc_count"], stats["sum_total_term_freq"])
        if "dense" in params["indexes"]:
            from rankstack.index.registry import load_vector_index

            self.dense = load_vector_index(self.path / "dense")
        if "splade" in params["indexes"]:
            from rankstack.index.sparse import SparseIndex

            self.splade = SparseIndex.load(self.path / "splade")

    def __len__(self) -> int:
        return len(self.docs)

    def bm25_search(self, analysed: Sequence[Sequence[str]], k: int, k1: float = 0.9,
                    b: float = 0.4) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (already analysed terms): (collection positions, raw float32 Lucene scores), best first."""
        if self.bm25 is None:
            raise BadInput(f"{self.root} has no BM25 shards; build it with --kind bm25")
        out = []
        for terms in analysed:
            rows, scores = self.bm25.top_rows(terms, k, k1, b)
            out.append((rows.astype(np.int64) + self.start, scores))
        return out

    def dense_search(self, vectors: np.ndarray, k: int, params: Mapping | None = None
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query vector: (collection positions, inner products), best first."""
        if self.dense is None:
            raise BadInput(f"{self.root} has no dense shards; build it with --kind dense")
        check_k(k)
        pairs = self.dense.docid_pairs(self.dense.search(vectors, min(k, len(self.dense)), **dict(params or {})))
        return [(np.array([self._row[d] + self.start for d, _ in ps], np.int64),
                 np.array([s for _, s in ps], np.float32)) for ps in pairs]

    def sparse_search(self, impacts, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query (int CSR impacts over the collection's vocabulary): (collection positions, integer scores),
        best first; documents sharing no term with the query are not returned."""
        if self.splade is None:
            raise BadInput(f"{self.root} has no splade shards; build it with --kind splade")
        top = self.splade.search(impacts, min(k, len(self.splade)))
        out = []
        for ids, scores in zip(top.ids, top.scores):
            hit = ids >= 0
            out.append((ids[hit].astype(np.int64) + self.start, scores[hit].astype(np.float32)))
        return out

    def documents(self, positions: Sequence[int]) -> list[dict]:
        """The documents at these collection positions (plain dicts: they cross process boundaries)."""
        out = []
        for p in positions:
            d = self.docs._read(int(p) - self.start)
            out.append({"docid": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)})
        return out

    def health(self) -> dict:
        return {"shard": self.number, "name": self.name, "documents": len(self), "pid": os.getpid(),
                "indexes": [k for k in SHARD_INDEXES if getattr(self, k) is not None]}


def _read_stats(root: Path) -> tuple[list[str], np.ndarray, dict]:
    folder = root / "bm25-stats"
    try:
        terms = json.loads((folder / "terms.json").read_text(encoding="utf-8"))
        df = np.load(folder / "df.npy")
        stats = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{folder}: collection statistics are missing or corrupt ({exc}); rebuild the sharded "
                           f"index") from None
    if len(terms) != len(df) or stats.get("terms") != len(terms):
        raise IndexCorrupt(f"{folder}: terms and document frequencies disagree; rebuild the sharded index")
    return terms, df, stats


class ShardedIndex:
    """The manifest of a sharded collection: shards, which indexes each holds, docids in collection order."""

    KIND = KIND
    FORMAT_VERSION = FORMAT_VERSION

    def __init__(self, path: str | os.PathLike, params: dict, docids: list[str]):
        self.path, self.params, self.docids = Path(path), params, docids
        self.shards = params["shards"]
        self.indexes = tuple(params["indexes"])
        self.dense = params.get("dense") or {}
        self.splade = params.get("splade") or {}
        self._starts = np.array([s["start"] for s in self.shards], np.int64)
        self._position: dict[str, int] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardedIndex:
        path = Path(path)
        params = read_params(path, KIND, FORMAT_VERSION)
        try:
            docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"{path}/docids.json is missing or corrupt ({exc}); rebuild the sharded index") from None
        shards = params.get("shards") or []
        if (len(docids) != params.get("num_docs") or not shards
                or sum(s["num_docs"] for s in shards) != len(docids)):
            raise IndexCorrupt(f"{path}: the manifest's shards do not add up to its {len(docids)} docids; rebuild it")
        for s in shards:
            if not (path / s["name"]).is_dir():
                raise IndexCorrupt(f"{path}: shard folder {s['name']} is missing; rebuild the sharded index")
        return cls(path, params, docids)

    def __len__(self) -> int:
        return len(self.docids)

    @property
    def kind(self) -> str:
        return KIND

    def shard_of(self, position: int) -> int:
        return int(np.searchsorted(self._starts, position, side="right") - 1)

    def position(self, docid: str) -> int:
        if self._position is None:
            self._position = {d: i for i, d in enumerate(self.docids)}
        p = self._position.get(docid)
        if p is None:
            raise UnknownDocid(f"unknown docid {docid!r}: not in the sharded collection {self.path}")
        return p

    def open_shard(self, number: int) -> Shard:
        return Shard(self.path, number, self.params)


class ShardedDocuments(Mapping[str, Document]):
    """docid -> Document over the shards' document stores (read from the shared folder: rerankers and filters
    need candidate texts once, after the merge)."""

    def __init__(self, index: ShardedIndex):
        from rankstack.index.docstore import DocStore

        self.index = index
        self._stores = [DocStore(index.path / s["name"] / "docs") for s in index.shards]

    def __getitem__(self, docid: str) -> Document:
        p = self.index.position(docid)
        i = self.index.shard_of(p)
        return self._stores[i]._read(p - self.index.shards[i]["start"])

    def __contains__(self, docid: object) -> bool:
        try:
            self.index.position(docid)  # type: ignore[arg-type]
        except UnknownDocid:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.index.docids)

    def __len__(self) -> int:
        return len(self.index)
