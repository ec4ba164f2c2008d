"""What a retrieval kind is: one object that says everything RankStack needs to know about one way of retrieving.

A kind (``bm25``, ``dense``, ``splade``, ``maxsim``, ``muvera``, ``plaid``, or one a plugin registers) declares in one
place:

- its **options**, with defaults and allowed values (the pipeline spec parser reads them; there is no second table),
  and how an item resolves into **settings** (:meth:`RetrievalKind.settings`), whose ``index_key`` names the stored
  index the item reads (items with equal keys share one index) and whose ``key`` names the retriever;
- its **stored index**: how documents are encoded (:meth:`~RetrievalKind.encode`, the slow part, done outside any
  lock), how an index is made empty, changed (:meth:`~RetrievalKind.apply`), written to and read from a folder, and
  how a batch of encoded documents is packed into arrays (a service checkpoint segment, a Ray transfer);
- its **derived index**, if any: what some items search besides the stored one (PLAID's codes, MUVERA's encodings,
  BM25's score matrix), built from it, and how it follows writes;
- its **retriever** over an index, whatever place the index lives in;
- how shards of its index share **collection statistics** (BM25's document frequencies and lengths, SPLADE's IDF).

The places an index lives (index folders, the eval workspace cache, a sharded collection, a service collection)
only supply an index for a kind and settings; :meth:`rankstack.pipeline.resources.Resources.retriever` is written
once over them. ``docs/adding-a-kind.md`` walks through a kind defined outside the library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rankstack.errors import BadInput
from rankstack.records import Document
from rankstack.spec import Item, Option, check_options

__all__ = ["RetrievalKind", "Settings", "Option", "slug"]


def slug(text: str, keep: int = 48) -> str:
    """A file-system-safe name for ``text``: readable, plus a short hash so that different texts differ."""
    import hashlib
    import re

    clean = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:keep]
    return f"{clean}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Settings:
    """An item resolved by its kind. ``index_key`` names the stored index it reads (two items with equal keys share
    one index: a search-time option such as ``k1`` or ``nprobe`` does not change it); ``key`` names the retriever
    (the index and every search-time option). Kinds subclass it with their own fields, or use ``options``."""

    kind: str
    options: tuple[tuple[str, Any], ...] = ()
    index_key: str = field(default="", compare=False)
    key: str = field(default="", compare=False)

    def __post_init__(self):
        if not self.index_key:
            object.__setattr__(self, "index_key", self.kind)
        if not self.key:
            object.__setattr__(self, "key", f"{self.index_key}|{str(Item(self.kind, self.options))}")

    def get(self, name: str, default: Any = None) -> Any:
        for k, v in self.options:
            if k == name:
                return v
        return default


class RetrievalKind(ABC):
    """One retrieval kind. Subclasses set the class attributes and implement :meth:`settings` and
    :meth:`retriever`; a kind that keeps a stored index built from documents implements the index methods too (the
    defaults say what they expect). Methods receive the resolved :class:`Settings`, never raw items."""

    name: str = ""
    aliases: tuple[str, ...] = ()
    options: Mapping[str, Option] = {}
    summary: str = ""
    saved_kinds: tuple[str, ...] = ()
    """``params.json`` kinds of the index folders this kind can search (``rankstack search --index DIR``)."""
    stats_labels: tuple[str, ...] = ()
    """Build-statistics labels (``index_seconds``...) that ``rankstack eval`` reports for a pipeline using the kind:
    the stored index's first, then derived indexes' (prefixed with their label)."""
    self_durable: bool = False
    """True when the live index commits itself with every write (Lucene); False: the service checkpoints it in
    segments from the encoded documents (:meth:`pack`)."""
    shardable: bool = True

    # ---- options and settings ---------------------------------------------------------------------------------

    def check(self, item: Item) -> Item:
        """``item`` with its options checked and typed (the pipeline parser calls this)."""
        return check_options(item, self.options, f"retriever {self.name!r}")

    @abstractmethod
    def settings(self, item: Item, defaults: Mapping[str, Any]) -> Settings:
        """Resolve a checked item. ``defaults`` are what the place supplies for options the item leaves out:
        ``model`` (a service's or workspace's encoder, or the model an index folder records), a workspace's ``k1``
        and ``b``..."""

    def defaults_of(self, index) -> dict[str, Any]:
        """What an existing index says about the settings it was built with (the model it records), for items that
        leave them out."""
        meta = getattr(index, "meta", None) or {}
        return {"model": meta["model"]} if meta.get("model") else {}

    def folder(self, settings: Settings, defaults: Mapping[str, Any]) -> str:
        """The name of the folder the stored index of ``settings`` has in a workspace or a service collection."""
        return slug(settings.index_key) if settings.index_key != self.name else self.name

    # ---- the stored index -------------------------------------------------------------------------------------

    def encoder(self, settings: Settings, models) -> Any:
        """What encodes this kind's documents and queries (None when it needs no model)."""
        return None

    def encode(self, settings: Settings, encoder, documents: Sequence[Document]) -> Any:
        """``documents`` encoded into what :meth:`apply` adds (a batch: one row per document). The slow part of a
        write, done before any lock is taken."""
        return None

    def header(self, settings: Settings, encoder) -> dict[str, Any]:
        """What an index needs besides encoded documents, to be built where the encoder is not (a sparse index's
        vocabulary, for a shard written by another worker); recorded in the index's meta."""
        return {}

    def empty(self, settings: Settings, meta: dict, *, encoder=None, batch=None) -> Any:
        """A new index with no documents; ``meta`` is recorded in it. ``encoder`` or an encoded ``batch`` tell
        its shape (a dense index's dimension)."""
        raise BadInput(f"retrieval kind {self.name!r} keeps no index that follows writes")

    def apply(self, index, removed: Sequence[str], docids: Sequence[str], batch, state: dict) -> None:
        """Remove ``removed`` (those present) from ``index``, then add (or replace) ``docids`` with their encoded
        ``batch``. ``state`` is the live slot's scratch space (a compressed index keeps vectors there until it can
        train)."""
        raise BadInput(f"retrieval kind {self.name!r} keeps no index that follows writes")

    def write(self, settings: Settings, documents: Sequence[Document], batch, meta: dict, path: Path) -> Any:
        """Write the stored index of ``documents`` (encoded as ``batch``) to ``path`` and return it opened."""
        index = self.empty(settings, meta, batch=batch)
        self.apply(index, [], [d.docid for d in documents], batch, {})
        self.save(index, path)
        return self.load(settings, path, None)

    def build(self, settings: Settings, models, documents: Sequence[Document], meta: dict, path: Path) -> Any:
        """Encode ``documents`` and write their stored index to ``path`` (what ``rankstack index`` and the
        workspace cache do); returns it opened."""
        return self.write(settings, documents, self.encode(settings, self.encoder(settings, models), documents), meta,
                          path)

    def write_folder(self, settings: Settings, models, documents: Sequence[Document], path: Path) -> Any:
        """What ``rankstack index`` writes: the stored index at ``path``, and beside it, in ``path/derived``, the
        index an item with these settings derives from it (BM25's score matrix), so a search over the folder
        derives nothing. Returns the stored index."""
        index = self.build(settings, models, documents, {"index_key": settings.index_key}, path)
        key = self.derived_key(settings, index)
        if key is not None:
            self.derive(settings, index, meta={"derived_key": key}).save(path / "derived" / slug(key, 32))
        return index

    def source(self, settings: Settings) -> Settings | None:
        """Settings of another index of this kind that this one can be built from without encoding (a compressed
        dense index from the exact one's vectors), or None."""
        return None

    def build_from(self, settings: Settings, source, meta: dict, path: Path) -> Any:
        """Build from :meth:`source`'s index; only called for kinds whose :meth:`source` returns settings."""
        raise NotImplementedError(f"kind {self.name!r} returns a source() index, so it must define build_from()")

    def save(self, index, path: Path) -> None:
        index.save(path)

    def load(self, settings: Settings, path: Path, models) -> Any:
        """Open the stored index at ``path`` (raising IndexNotFound or IndexCorrupt)."""
        from rankstack.index.registry import open_index

        return open_index(path)

    def open_folder(self, path: Path) -> Any:
        """Open an index folder this kind wrote (one whose ``params.json`` kind is among :attr:`saved_kinds`)."""
        from rankstack.index.registry import open_index

        return open_index(path)

    def spec_of(self, index) -> str:
        """The retriever spec that serves ``index``, a folder this kind wrote (``rankstack search --index``)."""
        return self.name

    def matches(self, settings: Settings, index) -> str | None:
        """Why ``index`` is not the stored index of ``settings`` (built with another model or spec), or None."""
        built = (getattr(index, "meta", None) or {}).get("index_key")
        if built is not None and built != settings.index_key:
            return f"built as {built!r}, configured as {settings.index_key!r}"
        return None

    def split(self, batch) -> list:
        """One payload per document of an encoded ``batch`` (what a checkpoint journals)."""
        return list(batch) if batch is not None else []

    def pack(self, payloads: list) -> dict[str, np.ndarray]:
        """Per-document payloads (:meth:`split`) as named arrays (a checkpoint segment: no pickled objects)."""
        raise BadInput(f"retrieval kind {self.name!r} does not pack encoded documents")

    def unpack(self, arrays: Mapping[str, np.ndarray]) -> Any:
        """The batch :meth:`pack` packed."""
        raise BadInput(f"retrieval kind {self.name!r} does not pack encoded documents")

    def holds(self, index, state: dict, docid: str) -> bool:
        """Whether the live index holds ``docid`` (``state``: the slot's scratch space, see :meth:`apply`)."""
        return docid in index

    def held(self, index, state: dict) -> list[str]:
        """Every docid the live index holds."""
        return list(index.docids)

    def select(self, item: Item, candidates: Sequence[tuple[Path, Any]]) -> list[tuple[Path, Any]]:
        """Of the index folders of this kind given to ``rankstack search``, those ``item`` may mean."""
        return list(candidates)

    def ready(self, index) -> str | None:
        """Why ``index`` cannot be searched yet (a compressed index that still waits for training data), or None."""
        return None

    # ---- derived indexes --------------------------------------------------------------------------------------

    def derived_key(self, settings: Settings, index, *, changing: bool = False) -> str | None:
        """What the second index ``settings`` searches besides ``index`` depends on, or None when it searches
        ``index`` alone. ``changing``: the index follows writes (a service collection), so a derived index must
        follow them too (:meth:`follow`) or not be used."""
        return None

    def derive(self, settings: Settings, index, meta: dict | None = None) -> Any:
        """The derived index; only called for kinds whose :meth:`derived_key` returns a key."""
        raise NotImplementedError(f"kind {self.name!r} returns a derived_key(), so it must define derive()")

    def load_derived(self, settings: Settings, path: Path) -> Any:
        from rankstack.index.registry import open_index

        return open_index(path)

    def prepare(self, settings: Settings, batch) -> Any:
        """What :meth:`follow` needs of a write that is slow to compute (made before the write lock is taken)."""
        return None

    def follow(self, settings: Settings, derived, removed: Sequence[str], docids: Sequence[str], batch,
               prepared: Any = None) -> bool:
        """Apply a write to a derived index in place (``prepared``: what :meth:`prepare` made of it); False when it
        must be derived afresh instead."""
        return False

    # ---- retrieval --------------------------------------------------------------------------------------------

    @abstractmethod
    def retriever(self, settings: Settings, index, *, models, documents=None, derived=None,
                  path: Path | None = None):
        """The retriever of ``settings`` over ``index`` (and ``derived``). ``path``: the folder the index lives in,
        when it has one (engines that keep files beside it); ``documents``: where pipelines find candidate texts."""

    # ---- shards -----------------------------------------------------------------------------------------------

    def shard_write(self, settings: Settings, documents: Sequence[Document], batch, meta: dict, path: Path) -> Any:
        """Write one shard's index (by default the stored index; BM25 writes its score matrix, so shard servers
        need no JVM)."""
        return self.write(settings, documents, batch, meta, path)

    def shard_load(self, settings: Settings, path: Path) -> Any:
        return self.load(settings, path, None)

    def shard_search(self, settings: Settings, index, queries, k: int, params: Mapping[str, Any]
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
        """One shard's top ``k`` per query as (rows, scores), best first, ties to the earlier row (what merges
        across shards into the order of one index). By default the index's own ``topk`` or ``search`` (a shard's
        index is built in order, so its ids are its rows)."""
        search = getattr(index, "topk", None) or index.search
        top = search(queries, k, **dict(params))
        out = []
        for ids, scores in zip(top.ids, top.scores):
            ok = (ids >= 0) & np.isfinite(scores)
            out.append((ids[ok].astype(np.int64), scores[ok].astype(np.float32)))
        return out

    def shard_finish(self, settings: Settings, merged: list[tuple[np.ndarray, np.ndarray]],
                     docids: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The merged (positions, scores) per query as one index would report them (by default unchanged)."""
        return merged

    def stats(self, index) -> dict[str, Any] | None:
        """What one shard's index contributes to collection statistics (summed over shards by
        :meth:`merge_stats`), or None when its scores need none."""
        return None

    def merge_stats(self, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The collection's statistics from the shards' (by default, values summed key by key; a dict value is
        summed per key)."""
        out: dict[str, Any] = {}
        for part in parts:
            for k, v in part.items():
                if isinstance(v, dict):
                    acc = out.setdefault(k, {})
                    for t, n in v.items():
                        acc[t] = acc.get(t, 0) + n
                else:
                    out[k] = v if k not in out else out[k] + v
        return out

    def use_stats(self, index, stats: dict[str, Any]) -> None:
        """Make a shard's ``index`` score as one index over the whole collection would."""

    def __repr__(self) -> str:
        return f"<retrieval kind {self.name}>"
