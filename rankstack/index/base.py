"""What every persistent index shares: one directory with ``params.json`` (kind and format version), atomic
writes, and, for vector indexes, one interface (:class:`VectorIndex`) with the shared input checks and one spec
(:class:`IndexSpec`) saying what to build.

Concrete classes are known only to :mod:`rankstack.index.registry` (kind -> class).
"""

from __future__ import annotations

import dataclasses
import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from rankstack._atomic import recover
from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, IndexNotFound, UnknownDocid
from rankstack.records import TopK
from rankstack.spec import Item, as_item, coerce, parse_item, unknown_option

__all__ = ["read_params", "PARAMS_FILE", "IndexSpec", "VectorIndex", "INDEX_KINDS", "as_matrix", "check_k", "checked_corpus"]

PARAMS_FILE = "params.json"

INDEX_KINDS = ("flat", "ivf-flat", "hnsw", "pq", "opq-pq", "ivf-pq", "sq8", "binary")
RESCORE = ("none", "float32", "float16", "int8")
BINARY_SEARCH = ("hamming", "symmetric", "asymmetric")
_ALIASES = {"multiplier": "rescore_multiplier", "ef": "ef_search", "mode": "binary_search"}


def read_params(path: str | os.PathLike, kind: str | None, format_version: int | None) -> dict:
    """Read and check ``<path>/params.json``; raise a clear error for a missing, foreign or corrupt index.
    ``kind``/``format_version`` None: accept any (the registry reads the kind to pick the class)."""
    path = Path(path)
    recover(path)
    if not path.exists():
        raise IndexNotFound(f"no index at {path}; build one first (e.g. `rankstack index --help`)")
    try:
        params = json.loads((path / PARAMS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorrupt(f"{path}: no {PARAMS_FILE}; this is not a RankStack index or its build was interrupted") from None
    except json.JSONDecodeError as exc:
        raise IndexCorrupt(f"{path}/{PARAMS_FILE} is corrupt ({exc.msg}); rebuild the index") from None
    if not isinstance(params, dict):
        raise IndexCorrupt(f"{path}/{PARAMS_FILE} is not a JSON object; rebuild the index")
    if kind is not None and params.get("kind") != kind:
        raise IndexCorrupt(f"{path} holds a {params.get('kind')!r} index, not {kind!r}")
    if format_version is not None and params.get("format_version") != format_version:
        raise IndexCorrupt(f"{path}: format version {params.get('format_version')} is not supported "
                           f"(this RankStack reads version {format_version}); rebuild the index")
    return params


# ---- what to build --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IndexSpec:
    """What vector index to build, as ``kind:key=value,...`` (the project's one spec grammar).

    ``flat`` is exact inner-product search; the other kinds are compressed (:mod:`rankstack.index.compressed`).
    ``m`` PQ sub-quantizers of ``nbits`` bits (``m * nbits / 8`` bytes per vector); ``bits`` is bits per dimension
    for binary codes; ``train_size`` caps the vectors used to train quantizers; ``rescore`` adds a second tier of
    full-precision vectors that re-ranks ``k * rescore_multiplier`` candidates exactly.

    ``nprobe``, ``ef_search``, ``rescore_multiplier`` and ``binary_search`` only steer searching: they are not part
    of :meth:`build_key`, and :meth:`search_params` passes the ones a spec sets to ``VectorIndex.search``.
    """

    kind: str = "flat"
    nlist: int = 256
    nprobe: int = 16
    m: int = 48
    nbits: int = 8
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    bits: int = 1
    binary_search: str = "hamming"
    train_size: int = 100_000
    rescore: str = "none"
    rescore_multiplier: int = 4
    seed: int = 0

    SEARCH_FIELDS: ClassVar[tuple[str, ...]] = ("nprobe", "ef_search", "rescore_multiplier", "binary_search")

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise BadInput(f"unknown index kind {self.kind!r}; choose one of {', '.join(INDEX_KINDS)}")
        for f in ("nlist", "nprobe", "m", "nbits", "hnsw_m", "ef_construction", "ef_search", "bits",
                  "train_size", "rescore_multiplier"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise BadInput(f"index spec: {f} must be a positive integer, got {v!r}")
        if self.rescore not in RESCORE:
            raise BadInput(f"index spec: rescore must be one of {RESCORE}, got {self.rescore!r}")
        if self.binary_search not in BINARY_SEARCH:
            raise BadInput(f"index spec: binary_search must be one of {BINARY_SEARCH}, got {self.binary_search!r}")
        if self.kind == "binary" and self.binary_search == "hamming" and self.bits != 1:
            raise BadInput("Hamming search needs 1-bit codes; use binary_search=symmetric or asymmetric for "
                           f"bits={self.bits}")
        if self.nbits > 16:
            raise BadInput(f"index spec: nbits={self.nbits} is too large (PQ sub-quantizers use <= 16 bits)")
        if self.kind == "flat" and self.rescore != "none":
            raise BadInput("a flat index is exact already: it takes no rescoring tier (rescore=none)")

    @classmethod
    def parse(cls, text: str | Item) -> IndexSpec:
        """``"kind"`` or ``"kind:key=value,..."``, e.g. ``"ivf-pq:nlist=1024,m=48,nprobe=32,rescore=int8"``."""
        item = as_item(text, "index spec") if isinstance(text, Item) else parse_item(text, "index spec")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        types = {"int": int, "str": str}
        kw: dict[str, Any] = {}
        for key, value in item.options:
            name = _ALIASES.get(key, key)
            if name not in fields or name == "kind":
                raise unknown_option(f"index spec {str(item)!r}", key, [k for k in fields if k != "kind"])
            kw[name] = coerce(value, types[fields[name]], key=key, where=f"index spec {str(item)!r}")
        return cls(kind=item.kind, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _non_default(self, skip: Sequence[str] = ()) -> list[tuple[str, str]]:
        return [(f.name, str(getattr(self, f.name))) for f in dataclasses.fields(self)
                if f.name != "kind" and f.name not in skip and getattr(self, f.name) != f.default]

    def __str__(self) -> str:
        return str(Item(self.kind, tuple(self._non_default())))

    def build_key(self) -> str:
        """The spec without its search-time fields: two specs with the same key can share one built index."""
        return str(Item(self.kind, tuple(self._non_default(self.SEARCH_FIELDS))))

    def search_params(self) -> dict[str, Any]:
        """The search-time fields this spec sets (to pass to ``VectorIndex.search``)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {f: getattr(self, f) for f in self.SEARCH_FIELDS if getattr(self, f) != defaults[f]}

    @property
    def label(self) -> str:
        parts = {"ivf-flat": f"IVF{self.nlist},Flat", "hnsw": f"HNSW{self.hnsw_m}", "pq": f"PQ{self.m}x{self.nbits}",
                 "opq-pq": f"OPQ{self.m},PQ{self.m}x{self.nbits}", "ivf-pq": f"IVF{self.nlist},PQ{self.m}x{self.nbits}",
                 "sq8": "SQ8", "flat": "Flat", "binary": f"binary{self.bits}b-{self.binary_search}"}
        s = parts[self.kind]
        return s + (f"+rescore-{self.rescore}x{self.rescore_multiplier}" if self.rescore != "none" else "")


# ---- shared checks --------------------------------------------------------------------------------------------

def checked_corpus(documents, what: str) -> list:
    """``documents`` as a list, refused when empty or when a docid repeats (``what``: the thing being built)."""
    docs = list(documents)
    if not docs:
        raise BadInput(f"cannot build {what} from an empty corpus")
    seen: set[str] = set()
    for d in docs:
        if d.docid in seen:
            raise BadInput(f"duplicate docid {d.docid!r} in the corpus; docids must be unique")
        seen.add(d.docid)
    return docs


def check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise BadInput(f"k must be a positive integer, got {k!r}")


def as_matrix(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``[n, dim]`` matrix, or a clear error."""
    v = np.asarray(vectors)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2:
        raise DimensionMismatch(f"{what} must be a 2-D array [n, {dim}], got shape {v.shape}")
    if v.shape[1] != dim:
        raise DimensionMismatch(f"{what} have dimension {v.shape[1]} but this index holds {dim}-d vectors; "
                                f"encode with the same model the index was built with")
    if not np.issubdtype(v.dtype, np.floating):
        raise BadInput(f"{what} must be floating point, got {v.dtype}")
    v = np.ascontiguousarray(v, dtype=np.float32)
    if not np.isfinite(v).all():
        raise BadInput(f"{what} contain NaN or infinite values")
    return v


class VectorIndex(ABC):
    """A persistent vector index over string docids; scores are inner products (higher is better).

    Subclasses implement the ``_``-prefixed hooks; the public methods here do the checks every kind shares
    (dimensions, finite floats, duplicate or unknown docids, ``k``, an empty index). ``search`` takes a numpy array
    or a torch tensor ``[nq, dim]``; indexes that have GPU kernels run them for tensors that live on a GPU (or under
    ``TRITON_INTERPRET=1``) and their CPU path otherwise.
    """

    KIND: ClassVar[str]
    FORMAT_VERSION: ClassVar[int]

    dim: int
    meta: dict
    spec: IndexSpec

    # -- docids --
    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, docid: str) -> bool: ...

    @property
    @abstractmethod
    def docids(self) -> list[str]:
        """Every docid in the index."""

    # -- writes --
    def add(self, docids: Sequence[str], vectors: np.ndarray, *, upsert: bool = False) -> None:
        """Add vectors ``[n, dim]`` for ``docids``. An existing docid is an error unless ``upsert``."""
        v = as_matrix(vectors, self.dim, "vectors")
        docids = [str(d) for d in docids]
        if len(docids) != v.shape[0]:
            raise BadInput(f"{len(docids)} docids for {v.shape[0]} vectors")
        if len(set(docids)) != len(docids):
            raise BadInput("duplicate docids in one add() call")
        existing = [d for d in docids if d in self]
        if existing and not upsert:
            raise BadInput(f"docids already in the index: {existing[:5]}; pass upsert=True to replace them")
        if existing:
            self.remove(existing)
        self._add(docids, v)

    def remove(self, docids: Sequence[str]) -> None:
        """Remove documents by docid; unknown docids raise :class:`UnknownDocid` and nothing is removed."""
        docids = list(dict.fromkeys(str(d) for d in docids))
        missing = [d for d in docids if d not in self]
        if missing:
            raise UnknownDocid(f"unknown docids {missing[:5]}: not in this index")
        if docids:
            self._remove(docids)

    @abstractmethod
    def _add(self, docids: list[str], vectors: np.ndarray) -> None: ...

    @abstractmethod
    def _remove(self, docids: list[str]) -> None: ...

    # -- search --
    def search(self, queries, k: int, **params) -> TopK:
        """Top-``k`` rows for each query ``[nq, dim]`` (best first; ``-1`` past the index size). ``params``: the
        search-time fields of :class:`IndexSpec` this kind understands (``nprobe``, ``ef_search``...)."""
        check_k(k)
        if len(self) == 0:
            raise BadInput("the index is empty; add documents before searching")
        unknown = set(params) - set(self.search_param_names())
        if unknown:
            raise BadInput(f"a {self.spec.kind} index takes no search parameter {sorted(unknown)}; it takes "
                           f"{list(self.search_param_names()) or 'none'}")
        if _is_tensor(queries):
            if queries.ndim != 2 or queries.shape[1] != self.dim:
                raise DimensionMismatch(f"query vectors have shape {tuple(queries.shape)} but this index holds "
                                        f"{self.dim}-d vectors; encode with the model the index was built with")
            return self._search_tensor(queries, k, **params)
        return self._search(as_matrix(queries, self.dim, "query vectors"), k, **params)

    def search_param_names(self) -> tuple[str, ...]:
        return ()

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int, **params) -> TopK: ...

    def _search_tensor(self, queries, k: int, **params) -> TopK:
        """Default for torch tensors: the CPU path. Kinds with GPU kernels override this."""
        return self._search(as_matrix(queries.detach().float().cpu().numpy(), self.dim, "query vectors"), k, **params)

    @abstractmethod
    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        """Map a :class:`TopK` to ``(docid, score)`` lists in trec_eval order, dropping ``-1``."""

    def memory_bytes(self) -> int:
        """Bytes held in memory for search (codes, ids, quantizer tables; not an on-disk rescoring tier)."""
        return 0

    # -- persistence --
    @abstractmethod
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: a failure leaves any previous index at ``path`` intact."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> VectorIndex:
        """Open a saved index; ``dim``, when given, must match."""

    @staticmethod
    def check_loaded_dim(path: Path, have: int, want: int | None) -> None:
        if want is not None and want != have:
            raise DimensionMismatch(f"{path} holds {have}-d vectors but {want}-d were expected; encode with the "
                                    f"model the index was built with")


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "is_cuda")


def sort_pairs(pairs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    pairs.sort(key=lambda p: (p[1], p[0]), reverse=True)
    return pairs


def drop_dead(scores: np.ndarray, ids: np.ndarray, dead: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` hits per row that are neither ``dead`` (tombstoned, a mask like ``ids``) nor ``-1``, in their
    order; rows with fewer are padded with ``-inf`` / ``-1``. Indexes that tombstone removals search ``k`` plus the
    tombstones and keep what this returns."""
    out_s = np.full((scores.shape[0], k), -np.inf, np.float32)
    out_i = np.full((scores.shape[0], k), -1, np.int64)
    for r in range(scores.shape[0]):
        keep = ~dead[r] & (ids[r] >= 0)
        s, i = scores[r][keep][:k], ids[r][keep][:k]
        out_s[r, :s.size], out_i[r, :i.size] = s, i
    return out_s, out_i


class GrowingRows:
    """Arrays sharing their first axis that grow by appended rows in O(those rows) amortised: the buffers double
    when full, where ``np.concatenate`` per write copies every earlier row. ``arrays`` are views of the rows held
    (no copy); arrays given at construction (a loaded index's, perhaps memory-mapped) are copied at the first
    append only."""

    def __init__(self, *arrays: np.ndarray):
        self._bufs = list(arrays)
        self.n = int(arrays[0].shape[0])
        self._owned = False

    def __len__(self) -> int:
        return self.n

    def append(self, *rows: np.ndarray) -> None:
        m = int(rows[0].shape[0])
        if not self._owned or self.n + m > self._bufs[0].shape[0]:
            cap = max(self.n + m, 2 * self.n, 1024)
            grown = []
            for b in self._bufs:
                g = np.empty((cap,) + b.shape[1:], b.dtype)
                g[:self.n] = b[:self.n]
                grown.append(g)
            self._bufs, self._owned = grown, True
        for b, r in zip(self._bufs, rows):
            b[self.n:self.n + m] = r
        self.n += m

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(b[:self.n] for b in self._bufs)
