"""Sharding as an index: one corpus split into N shards, and, for each retrieval kind it holds, a
:class:`ShardedIndex` with the interface of that kind's single index, so the kind's ordinary retriever runs over it
unchanged (FAISS's ``IndexShards`` in spirit).

Layout of ``<root>`` (written atomically: a failed build leaves the previous collection intact)::

    params.json          kind "sharded": shards (folder, first position, size), the indexes (kind, spec, folder)
    docids.json          every docid in collection order (shard 0's first, then shard 1's, ...)
    shard-000/docs/      the shard's documents (DocStore)
    shard-000/<folder>/  its index of each kind (what the kind writes for a shard: BM25 a score matrix, so shard
                         servers need no JVM; dense any vector index; splade impacts; maxsim token vectors)
    <folder>-stats/      collection statistics of a kind that needs them (BM25's document frequencies and lengths,
                         SPLADE's document frequencies), summed over the shards by the kind

Shards hold contiguous runs of the corpus in its order, so a document's *position* (shard start + row) is its place
in the single-index build. That is what makes a sharded run equal the single-index run: each shard scores with the
collection's statistics (the kind's ``use_stats``), so every document gets the score one index over the whole corpus
would give; the shards' top-k lists are merged by (score, position), which is the order of one index; a kind whose
single index reports its scores after the cut (BM25's Pyserini rounding) finishes them once, after the merge.
Derived indexes (MUVERA's encodings, PLAID's codes) are derived by each shard from its own part, on first use.

:class:`Shard` is what one shard server holds; searching across shards, in this process or on Ray actors, goes
through a router (:class:`~rankstack.distributed.router.ShardRouter`): queries arrive encoded, so a shard server
needs no encoder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from rankstack._atomic import write_json
from rankstack.errors import BadInput, IndexCorrupt, UnknownDocid
from rankstack.index.base import read_params, sort_pairs
from rankstack.records import Document, TopK
from rankstack.retrieval import kinds

logger = logging.getLogger(__name__)

__all__ = ["ShardSet", "ShardedIndex", "Shard", "ShardEntry", "ShardedDocuments", "shard_ranges", "write_shard",
           "write_manifest", "merge_topk", "KIND", "FORMAT_VERSION"]

KIND = "sharded"
FORMAT_VERSION = 2


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


@dataclass(frozen=True)
class ShardEntry:
    """One index every shard holds: the spec it was built from, the defaults it was resolved with (the encoder), and
    its folder in each shard."""

    spec: str
    folder: str
    defaults: dict = field(default_factory=dict, compare=False)

    def resolve(self):
        return kinds.resolve(self.spec, self.defaults)

    def to_dict(self) -> dict:
        kind, s = self.resolve()
        return {"spec": self.spec, "kind": kind.name, "folder": self.folder, "defaults": self.defaults,
                "index_key": s.index_key}

    @classmethod
    def from_dict(cls, d: Mapping) -> ShardEntry:
        return cls(spec=d["spec"], folder=d["folder"], defaults=dict(d.get("defaults") or {}))


# ---- collection statistics: arrays, numbers and term counts, summed over shards by the kind ----------------------

def save_stats(folder: Path, stats: Mapping[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    scalars, arrays = {}, {}
    for name, v in stats.items():
        if isinstance(v, dict):
            (folder / f"{name}.keys.json").write_text(json.dumps(list(v)), encoding="utf-8")
            arrays[f"{name}.values"] = np.fromiter(v.values(), dtype=np.int64, count=len(v))
        elif isinstance(v, np.ndarray):
            arrays[name] = v
        else:
            scalars[name] = v
    np.savez(folder / "arrays.npz", **arrays)
    write_json(folder / "stats.json", {"scalars": scalars, "arrays": list(arrays)})


def load_stats(folder: Path) -> dict[str, Any]:
    try:
        head = json.loads((folder / "stats.json").read_text(encoding="utf-8"))
        out: dict[str, Any] = dict(head["scalars"])
        with np.load(folder / "arrays.npz") as z:
            for name in head["arrays"]:
                if name.endswith(".values"):
                    base = name[:-len(".values")]
                    keys = json.loads((folder / f"{base}.keys.json").read_text(encoding="utf-8"))
                    out[base] = dict(zip(keys, z[name].tolist()))
                else:
                    out[name] = z[name]
    except (OSError, ValueError, KeyError) as exc:
        raise IndexCorrupt(f"{folder}: collection statistics are missing or corrupt ({exc}); rebuild the sharded "
                           f"index") from None
    return out


# ---- writing ----------------------------------------------------------------------------------------------------

def write_shard(folder: str | os.PathLike, documents: Sequence[Document],
                parts: Sequence[tuple[ShardEntry, Any, dict]]) -> dict:
    """Write one shard's folder: its documents (in collection order) and, for each (entry, encoded batch, meta), the
    index its kind writes for a shard. Returns its summary for the manifest. Runs on whichever worker holds the
    shard's documents (:mod:`rankstack.distributed.build`) or in-process."""
    from rankstack.index.docstore import DocStore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (folder / "docs").mkdir(exist_ok=True)
    DocStore.write(folder / "docs", documents)
    out: dict = {"num_docs": len(documents), "indexes": {}}
    for entry, batch, meta in parts:
        kind, settings = entry.resolve()
        index = kind.shard_write(settings, documents, batch, dict(meta), folder / entry.folder)
        n = len(index)
        if n != len(documents):
            raise IndexCorrupt(f"{folder / entry.folder}: the {kind.name} index holds {n} documents, the shard "
                               f"{len(documents)}")
        out["indexes"][entry.folder] = {"dim": getattr(index, "dim", None)}
    out["seconds"] = round(time.perf_counter() - t0, 3)
    out["pid"] = os.getpid()
    return out


def write_manifest(root: Path, docids: Sequence[str], ranges: Sequence[tuple[int, int]], summaries: Sequence[dict],
                   *, entries: Sequence[ShardEntry], corpus_sha1: str, build: dict) -> None:
    """Write ``params.json``, ``docids.json`` and the collection statistics each kind gathers from the shards'
    indexes (``root`` is the build's temporary folder)."""
    shards = []
    for i, ((start, end), s) in enumerate(zip(ranges, summaries)):
        if s.get("num_docs") != end - start:
            raise IndexCorrupt(f"{shard_name(i)} holds {s.get('num_docs')} documents, expected {end - start}")
        shards.append({"name": shard_name(i), "start": start, "num_docs": end - start,
                       **{k: v for k, v in s.items() if k in ("indexes", "seconds")}})
    out = []
    for entry in entries:
        kind, settings = entry.resolve()
        parts = [kind.stats(kind.shard_load(settings, root / shard_name(i) / entry.folder)) for i in range(len(ranges))]
        if parts and parts[0] is not None:
            save_stats(root / f"{entry.folder}-stats", kind.merge_stats(parts))
        d = entry.to_dict()
        d["dim"] = summaries[0]["indexes"].get(entry.folder, {}).get("dim") if summaries else None
        out.append(d)
    (root / "docids.json").write_text(json.dumps(list(docids)), encoding="utf-8")
    write_json(root / "params.json", {"kind": KIND, "format_version": FORMAT_VERSION, "num_docs": len(docids),
                                      "indexes": out, "shards": shards, "corpus_sha1": corpus_sha1, "build": build})


# ---- reading ----------------------------------------------------------------------------------------------------

class Shard:
    """One shard opened in this process: what a shard server holds. Queries arrive encoded (analysed BM25 terms,
    dense vectors, sparse impacts, token vectors), so a shard server needs neither a JVM nor an encoder."""

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
        self.indexes: dict[str, tuple[Any, Any, Any]] = {}  # folder -> (kind, settings, index)
        for d in params["indexes"]:
            e = ShardEntry.from_dict(d)
            kind, settings = e.resolve()
            index = kind.shard_load(settings, self.path / e.folder)
            stats_dir = self.root / f"{e.folder}-stats"
            if stats_dir.exists():
                kind.use_stats(index, load_stats(stats_dir))
            self.indexes[e.folder] = (kind, settings, index)
        self._derived: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.docs)

    def index(self, folder: str):
        if folder not in self.indexes:
            raise BadInput(f"{self.root} has no {folder} shards; rebuild it with that index")
        return self.indexes[folder]

    def _target(self, folder: str, settings, derived_key: str | None):
        kind, _, index = self.index(folder)
        if derived_key is None:
            return kind, index
        with self._lock:
            if (folder, derived_key) not in self._derived:  # this shard's part of a derived index, made on first use
                self._derived[(folder, derived_key)] = kind.derive(settings, index)
            return kind, self._derived[(folder, derived_key)]

    def search(self, folder: str, settings, derived_key: str | None, queries, k: int,
               params: Mapping | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (collection positions, scores), best first, as the kind's shard search reports them."""
        kind, target = self._target(folder, settings, derived_key)
        if len(target) == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in range(_count(queries))]
        return [(rows.astype(np.int64) + self.start, scores)
                for rows, scores in kind.shard_search(settings, target, queries, min(k, len(target)),
                                                      dict(params or {}))]

    def score(self, folder: str, queries, rows: np.ndarray) -> np.ndarray:
        """Scores of each query against its candidate rows of this shard (``-1``: none)."""
        kind, _, index = self.index(folder)
        return index.score(queries, rows)

    def documents(self, positions: Sequence[int]) -> list[dict]:
        """The documents at these collection positions (plain dicts: they cross process boundaries)."""
        out = []
        for p in positions:
            d = self.docs._read(int(p) - self.start)
            out.append({"docid": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)})
        return out

    def health(self) -> dict:
        return {"shard": self.number, "name": self.name, "documents": len(self), "pid": os.getpid(),
                "indexes": list(self.indexes)}


def _count(queries) -> int:
    shape = getattr(queries, "shape", None)
    return int(shape[0]) if shape is not None else len(queries)


class ShardSet:
    """The manifest of a sharded collection: shards, the indexes each holds, docids in collection order."""

    KIND = KIND
    FORMAT_VERSION = FORMAT_VERSION

    def __init__(self, path: str | os.PathLike, params: dict, docids: list[str]):
        self.path, self.params, self.docids = Path(path), params, docids
        self.shards = params["shards"]
        self.entries = [ShardEntry.from_dict(d) for d in params["indexes"]]
        self.indexes = tuple(d["kind"] for d in params["indexes"])
        self._starts = np.array([s["start"] for s in self.shards], np.int64)
        self._position: dict[str, int] | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardSet:
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

    def entry(self, name: str) -> dict:
        """The manifest entry of the index folder ``name``."""
        return next(d for d in self.params["indexes"] if d["folder"] == name)

    def shard_of(self, position: int) -> int:
        return int(np.searchsorted(self._starts, position, side="right") - 1)

    def owners(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self._starts, positions, side="right") - 1

    def position(self, docid: str) -> int:
        if self._position is None:
            self._position = {d: i for i, d in enumerate(self.docids)}
        p = self._position.get(docid)
        if p is None:
            raise UnknownDocid(f"unknown docid {docid!r}: not in the sharded collection {self.path}")
        return p

    def open_shard(self, number: int) -> Shard:
        return Shard(self.path, number, self.params)


class ShardedIndex:
    """One kind's index over every shard, with the interface of that kind's single index: ``search``/``topk`` (the
    merged top ``k``, ids = collection positions), ``docid_pairs``, ``rows``/``score`` (rescoring candidates where
    they live), ``docids``; anything else a retriever asks for (query analysis, IDF weights, the dimension) is
    answered by shard 0's index under the collection's statistics (the *head*), opened on first use.

    ``router``: how the shards are reached (in process or on Ray actors); ``derived_key``: this is the view of a
    derived index (MUVERA's encodings, PLAID's codes), each shard deriving its part from its own index."""

    def __init__(self, shardset: ShardSet, folder: str, settings, router, derived_key: str | None = None):
        self.shardset, self.folder, self.settings, self.router = shardset, folder, settings, router
        self.derived_key = derived_key
        self.kind = kinds.get(settings.kind)
        self.entry = shardset.entry(folder)
        self._head = None
        self._head_lock = threading.Lock()
        self.meta = {"model": self.entry.get("defaults", {}).get("model"), "index_key": self.entry["index_key"]}

    # -- the single index's surface ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.shardset)

    def __contains__(self, docid: str) -> bool:
        try:
            self.shardset.position(docid)
        except UnknownDocid:
            return False
        return True

    @property
    def docids(self) -> list[str]:
        return self.shardset.docids

    @property
    def row_docids(self) -> list[str]:
        return self.shardset.docids

    @property
    def n_rows(self) -> int:
        return len(self.shardset)

    @property
    def dim(self) -> int:
        dim = self.entry.get("dim") if self.derived_key is None else None  # a derived index has its own
        return int(dim) if dim is not None else self.head.dim

    @property
    def head(self):
        """Shard 0's index (or derived index), scoring under the collection's statistics: what answers queries'
        preparation (analysis, IDF weights, quantization), never a search."""
        with self._head_lock:
            if self._head is None:
                shard = Shard(self.shardset.path, 0, self.shardset.params)
                _, target = shard._target(self.folder, self.settings, self.derived_key)
                self._head = target
            return self._head

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("_head", "_head_lock"):
            raise AttributeError(name)
        return getattr(self.head, name)

    def derived(self, settings, key: str) -> ShardedIndex:
        return ShardedIndex(self.shardset, self.folder, settings, self.router, derived_key=key)

    def topk(self, queries, k: int, **params) -> TopK:
        """The collection's top ``k`` per query: every shard's, merged by (score, position), then finished by the
        kind once (Pyserini's rounding, for BM25)."""
        nq = _count(queries)
        merged = self.router.search(self.folder, self.settings, self.derived_key, queries, k, params, nq)
        finished = self.kind.shard_finish(self.settings, merged, self.shardset.docids)
        width = max([k] + [len(p) for p, _ in finished]) if finished else k
        scores = np.full((nq, width), -np.inf, np.float32)
        ids = np.full((nq, width), -1, np.int64)
        for i, (pos, sc) in enumerate(finished):
            scores[i, :len(pos)], ids[i, :len(pos)] = sc, pos
        return TopK(scores=scores, ids=ids)

    search = topk

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        docids = self.shardset.docids
        return [sort_pairs([(docids[i], float(s)) for s, i in zip(srow, irow) if i >= 0 and np.isfinite(s)])
                for srow, irow in zip(topk.scores, topk.ids)]

    def rows(self, docids: Sequence[str]) -> np.ndarray:
        return np.array([self.shardset.position(d) for d in docids], np.int64)

    def score(self, queries, rows: np.ndarray) -> np.ndarray:
        """Each query against its candidate positions ``[B, C]`` (``-1``: none), each shard scoring its own."""
        rows = np.asarray(rows, np.int64)
        out = np.full(rows.shape, -np.inf, np.float32)
        owner = np.where(rows >= 0, self.shardset.owners(np.maximum(rows, 0)), -1)
        for i in np.unique(owner[owner >= 0]).tolist():
            mine = owner == i
            local = np.where(mine, rows - self.shardset.shards[i]["start"], -1)
            got = self.router.score(i, self.folder, queries, local)
            out[mine] = got[mine]
        return out


class ShardedDocuments(Mapping[str, Document]):
    """docid -> Document over the shards' document stores (read from the shared folder: rerankers and filters
    need candidate texts once, after the merge)."""

    def __init__(self, shardset: ShardSet):
        from rankstack.index.docstore import DocStore

        self.shardset = shardset
        self._stores = [DocStore(shardset.path / s["name"] / "docs") for s in shardset.shards]

    def __getitem__(self, docid: str) -> Document:
        p = self.shardset.position(docid)
        i = self.shardset.shard_of(p)
        return self._stores[i]._read(p - self.shardset.shards[i]["start"])

    def __contains__(self, docid: object) -> bool:
        try:
            self.shardset.position(docid)  # type: ignore[arg-type]
        except UnknownDocid:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.shardset.docids)

    def __len__(self) -> int:
        return len(self.shardset)
