"""Compressed dense indexes behind the :class:`~rankstack.index.base.VectorIndex` interface: FAISS IVF/HNSW/PQ/
OPQ/IVF-PQ/SQ8 and binary codes.

An :class:`IndexSpec` (``IndexSpec.parse("pq:m=48,rescore=float32")``) says what to build. Every kind supports
add/upsert/remove by docid, atomic save/load with consistency checks, and an optional second tier: full-precision
(float32, float16 or int8) vectors in a memory-mapped file, used to rescore ``k * rescore_multiplier`` candidates
from the compact codes exactly. Only the codes live in memory; the rescoring file is paged in on demand.

Internally each document has a *slot* (a stable int64 id that FAISS stores); the rescoring file is indexed by slot.
Removed slots are never reused, and their rows stay in the rescoring file until the index is rebuilt.

Search runs on FAISS (and numpy for multi-bit codes) for numpy queries. For torch tensors on a GPU (or any tensor
under ``TRITON_INTERPRET=1``), 1-bit Hamming codes and 8-bit PQ/OPQ codes are scanned by the Triton kernels of
:mod:`rankstack.kernels`, and the rescoring tier by the gather+dot kernel; the codes and the rescoring tier are then
copied to the device once and kept there until the index changes. The other kinds search on the CPU path.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from rankstack._optional import require
from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt
from rankstack.index.base import GrowingRows, IndexSpec, VectorIndex, as_matrix, drop_dead, sort_pairs
from rankstack.index import compressed_device, compressed_io
from rankstack.index.binary import ResidualBinaryCodec
from rankstack.index.compressed_parts import DocidTable, VectorStore, faiss_base, no_polysemous
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["IndexSpec", "CompressedIndex", "KINDS", "no_polysemous"]

KINDS = ("ivf-flat", "hnsw", "pq", "opq-pq", "ivf-pq", "sq8", "binary")
KERNEL_KINDS = ("binary", "pq", "opq-pq")  # kinds with a GPU scan kernel (binary: 1-bit Hamming; PQ: 8-bit codes)


class CompressedIndex(VectorIndex):
    """A compressed dense index over string docids; scores are inner products (higher is better)."""

    KIND = "dense-compressed"
    FORMAT_VERSION = 1

    def __init__(self, dim: int, spec: IndexSpec, *, meta: dict | None = None):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise BadInput(f"dimension must be a positive integer, got {dim!r}")
        if spec.kind not in KINDS:
            raise BadInput(f"{spec.kind!r} is not a compressed index kind ({', '.join(KINDS)}); a flat index is "
                           f"rankstack.index.faiss_flat.DenseFlatIndex (rankstack.index.registry.new_vector_index "
                           f"picks the class)")
        if spec.kind in ("pq", "opq-pq", "ivf-pq") and dim % spec.m:
            raise BadInput(f"PQ with m={spec.m} needs a dimension divisible by m; {dim} is not")
        if spec.kind == "binary" and dim % 8:
            raise BadInput(f"binary codes need a dimension divisible by 8, got {dim}")
        self.dim = dim
        self.spec = spec
        self.meta = dict(meta or {})
        self._ids = DocidTable()
        self._next_slot = 0
        self._faiss = None  # FAISS kinds: an index whose ids are slots
        self._tombstones: set[int] = set()  # removed slots still in the codes (FAISS's or binary), filtered at search
        self._codec: ResidualBinaryCodec | None = None
        # binary kinds: bit-planes, their scales and each row's slot, grown in place by writes
        self._codes = GrowingRows(np.empty((0, spec.bits, dim // 8), np.uint8), np.empty((0, spec.bits), np.float16),
                                  np.empty(0, np.int64))
        self._store = VectorStore(dim, spec.rescore) if spec.rescore != "none" else None
        self._device: dict[str, dict] = {}  # device -> codes/tables/rescoring tier copied there for the kernels
        # binary kinds on x86-64 with AVX2: the codes laid out for the shuffle scan, extended as rows are appended
        self._shuffle = None
        self._shuffle_lock = threading.Lock()
        self.trained = False

    # ---- building ----------------------------------------------------------------------------------------

    @classmethod
    def build(cls, spec: IndexSpec, docids, vectors: np.ndarray, *, meta: dict | None = None) -> CompressedIndex:
        v = np.asarray(vectors)
        if v.ndim != 2:
            raise DimensionMismatch(f"vectors must be a 2-D array [n, dim], got shape {v.shape}")
        self = cls(int(v.shape[1]), spec, meta=meta)
        self.train(v)
        self.add(docids, v)
        return self

    def _factory(self) -> str:
        s = self.spec
        return {"ivf-flat": f"IVF{s.nlist},Flat", "hnsw": f"HNSW{s.hnsw_m},Flat",
                "pq": f"PQ{s.m}x{s.nbits}", "opq-pq": f"OPQ{s.m},PQ{s.m}x{s.nbits}",
                "ivf-pq": f"IVF{s.nlist},PQ{s.m}x{s.nbits}", "sq8": "SQ8"}[s.kind]

    def min_training_vectors(self) -> int:
        return {"ivf-flat": self.spec.nlist, "ivf-pq": max(self.spec.nlist, 1 << self.spec.nbits),
                "pq": 1 << self.spec.nbits, "opq-pq": 1 << self.spec.nbits}.get(self.spec.kind, 1)

    def train(self, vectors: np.ndarray) -> None:
        """Train the quantizers on at most ``spec.train_size`` vectors sampled with ``spec.seed``."""
        faiss = require("faiss")
        v = as_matrix(vectors, self.dim, "training vectors")
        if v.shape[0] > self.spec.train_size:
            rng = np.random.default_rng(self.spec.seed)
            v = v[np.sort(rng.choice(v.shape[0], self.spec.train_size, replace=False))]
        need = self.min_training_vectors()
        if v.shape[0] < need:
            raise BadInput(f"{self.spec.label} needs at least {need} training vectors, got {v.shape[0]}; "
                           f"lower nlist/nbits or train on more data")
        if self.spec.kind == "binary":
            self._codec = ResidualBinaryCodec(self.dim, self.spec.bits).fit(v)
        else:
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            base = faiss.index_factory(self.dim, self._factory(), faiss.METRIC_INNER_PRODUCT)
            if self.spec.kind == "hnsw":
                faiss.downcast_index(base).hnsw.efConstruction = self.spec.ef_construction
            no_polysemous(base)
            base.train(v)
            self._faiss = base if self.spec.kind.startswith("ivf") else faiss.IndexIDMap(base)
        self.trained = True

    @property
    def _planes(self) -> np.ndarray:
        return self._codes.arrays[0]

    @property
    def _scales(self) -> np.ndarray:
        return self._codes.arrays[1]

    @property
    def _pos_slot(self) -> np.ndarray:
        return self._codes.arrays[2]

    # ---- docids ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, docid: str) -> bool:
        return docid in self._ids

    @property
    def docids(self) -> list[str]:
        return self._ids.sorted_items()[1]

    def add(self, docids, vectors: np.ndarray, *, upsert: bool = False) -> None:
        if not self.trained:
            raise BadInput("the index is not trained; call train() (or build()) first")
        super().add(docids, vectors, upsert=upsert)

    def _add(self, docids: list[str], v: np.ndarray) -> None:
        slots = np.arange(self._next_slot, self._next_slot + len(docids), dtype=np.int64)
        if self._codec is not None:
            planes, scales = self._codec.encode(v)
            self._codes.append(planes, scales, slots)
        else:
            self._faiss.add_with_ids(v, slots)
        if self._store is not None:
            self._store.put(slots, v)
        for s, d in zip(slots.tolist(), docids):
            self._ids.add(s, d)
        self._next_slot += len(docids)
        self._device.clear()

    def _remove(self, docids: list[str]) -> None:
        slots = np.array(sorted({self._ids.slot_of(d) for d in docids}), dtype=np.int64)
        # dropping rows from the codes (FAISS's remove_ids, or filtering the binary arrays) rewrites the code array or
        # scans every inverted list, O(n) per write: a removal is a tombstone that search filters; HNSW cannot remove
        # at all, other kinds drop their tombstones in one go once they pass 1/32 of the index (at least 256), O(1)
        # amortised per removal
        self._tombstones.update(slots.tolist())
        held = len(self._codes) if self._codec is not None else self._faiss.ntotal
        if self.spec.kind != "hnsw" and len(self._tombstones) > max(256, held / 32):
            self.purge_tombstones()
        for s in slots.tolist():
            self._ids.remove_slot(s)
        self._device.clear()

    def binary_parts(self):
        """``(codec, planes, scales)`` of a binary index: the codec and the codes a scan reads (benchmarks time the
        scans on them)."""
        if self._codec is None:
            raise BadInput(f"a {self.spec.kind} index has no binary codes")
        return self._codec, self._planes, self._scales

    def purge_tombstones(self) -> None:
        """Remove the tombstoned slots from the codes (not from HNSW's graph, which cannot); removals call it once
        tombstones pass a 32nd of the index."""
        dead = np.array(sorted(self._tombstones), dtype=np.int64)
        if self._codec is not None:
            self._codes = GrowingRows(*self._live_codes())
            self._tombstones = set()
            self._device.clear()
            self._shuffle = None  # rows moved: laid out again at the next search
            return
        faiss = require("faiss")
        removed = self._faiss.remove_ids(faiss.IDSelectorBatch(dead.size, faiss.swig_ptr(dead)))
        if removed != dead.size:
            raise IndexCorrupt(f"FAISS removed {removed} of {dead.size} vectors; the index is inconsistent")
        self._tombstones = set()
        self._device.clear()

    def _live_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The binary planes, scales and slots of the rows not tombstoned (views when there are none)."""
        planes, scales, pos = self._codes.arrays
        if not self._tombstones:
            return planes, scales, pos
        keep = ~np.isin(pos, np.fromiter(self._tombstones, np.int64, len(self._tombstones)))
        return planes[keep], scales[keep], pos[keep]

    # ---- search ------------------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes this index holds in memory for search (codes, ids, quantizer tables), not the rescoring file."""
        ids = self._ids.nbytes()  # frozen docid table; a thawed one (after edits) costs ~200 B/doc more
        if self._codec is not None:
            shuffle = self._shuffle.nbytes if self._shuffle is not None else 0
            return (ids + self._planes.nbytes + self._scales.nbytes + self._pos_slot.nbytes + self._codec.mean.nbytes
                    + shuffle)
        faiss = require("faiss")
        return ids + int(faiss.serialize_index(self._faiss).nbytes)

    def search_param_names(self) -> tuple[str, ...]:
        names = {"ivf-flat": ("nprobe",), "ivf-pq": ("nprobe",), "hnsw": ("ef_search",),
                 "binary": ("binary_search",)}.get(self.spec.kind, ())
        return names + (("rescore", "rescore_multiplier") if self._store is not None else ())

    def _plan(self, k: int, rescore: bool | None, rescore_multiplier: int | None) -> tuple[bool, int]:
        do_rescore = self._store is not None if rescore is None else bool(rescore)
        if do_rescore and self._store is None:
            raise BadInput(f"this index has no rescoring tier (built with rescore='none'): {self.spec.label}")
        return do_rescore, k * (rescore_multiplier or self.spec.rescore_multiplier) if do_rescore else k

    def _binary_mode(self, binary_search: str | None) -> str:
        mode = binary_search or self.spec.binary_search
        if mode == "hamming" and self.spec.bits != 1:
            raise BadInput(f"Hamming search needs 1-bit codes; this index has {self.spec.bits} bits per dimension")
        return mode

    def _search(self, q: np.ndarray, k: int, *, rescore: bool | None = None, rescore_multiplier: int | None = None,
                nprobe: int | None = None, ef_search: int | None = None, binary_search: str | None = None) -> TopK:
        """Top-``k`` slots per query (``-1`` when fewer exist). With a rescoring tier (and ``rescore`` not False)
        the codes fetch ``k * rescore_multiplier`` candidates and exact inner products re-rank them."""
        do_rescore, fetch = self._plan(k, rescore, rescore_multiplier)
        extra = len(self._tombstones)  # fetch past the removed rows, then drop them
        if self._codec is not None:
            scores, slots = self._binary_candidates(q, fetch + extra, self._binary_mode(binary_search))
        else:
            scores, slots = self._faiss_candidates(q, fetch + extra, nprobe, ef_search)
        if extra:
            dead = np.isin(slots, np.fromiter(self._tombstones, np.int64, extra))
            scores, slots = drop_dead(scores, slots, dead, fetch)
        if do_rescore:
            scores, slots = self._rescore(q, slots, k)
        return TopK(scores=scores[:, :k], ids=slots[:, :k])

    def _faiss_candidates(self, q: np.ndarray, k: int, nprobe, ef_search) -> tuple[np.ndarray, np.ndarray]:
        faiss = require("faiss")
        if self.spec.kind.startswith("ivf"):
            faiss.extract_index_ivf(self._faiss).nprobe = nprobe or self.spec.nprobe
        elif self.spec.kind == "hnsw":
            faiss.downcast_index(self._faiss.index).hnsw.efSearch = ef_search or self.spec.ef_search
        return self._faiss.search(q, k)

    def _binary_candidates(self, q: np.ndarray, k: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
        faiss = require("faiss")
        n = self._planes.shape[0]
        kk = min(k, n)
        if mode == "hamming":
            qp, _ = self._codec.encode(q)
            dist, pos = faiss.knn_hamming(np.ascontiguousarray(qp[:, 0]), np.ascontiguousarray(self._planes[:, 0]), kk)
            scores = (self.dim - 2 * dist).astype(np.float32)  # +-1 agreement: higher is better
        else:
            # the compiled scans with rankstack[fastscan] (on x86-64 with AVX2 the shuffle scan over the layout kept
            # here), else the numpy reference; the layout is taken before the codes, so a racing append can only
            # make the codes longer than the rows laid out, never shorter
            lay = self.shuffle_layout()
            scores, pos = self._codec.topk(q, self._planes, self._scales, kk, mode, layout=lay)
        slots = self._pos_slot[pos]
        if kk < k:
            pad = k - kk
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            slots = np.pad(slots, ((0, 0), (0, pad)), constant_values=-1)
        return scores.astype(np.float32), slots.astype(np.int64)

    def shuffle_layout(self):
        """The binary codes laid out for :mod:`rankstack.kernels.binary_scan.shuffle`, brought up to date with appended rows
        (O(new rows)); ``None`` where that scan cannot run (no numba, no AVX2, over 1024 dimensions). It costs about
        the codes' bytes again, built at the first search rather than at load, so an index that is never searched
        (or that runs elsewhere) does not pay it."""
        from rankstack.kernels.binary_scan import shuffle as shuffle_scan

        if not shuffle_scan.available() or not shuffle_scan.fits(self.dim):
            return None
        with self._shuffle_lock:  # one layout, even when the first searches run at once
            if self._shuffle is None:
                self._shuffle = shuffle_scan.ShuffleLayout(self.spec.bits, self.dim // 8)
            lay = self._shuffle
        return lay.sync(self._planes, self._scales)  # lays out only appended rows (none, on most searches)

    def _rescore(self, q: np.ndarray, slots: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s = np.full((q.shape[0], k), -np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for i in range(q.shape[0]):
            cand = slots[i][slots[i] >= 0]
            if cand.size == 0:
                continue
            exact = self._store.gather(cand) @ q[i]
            order = np.lexsort((cand, -exact))[:k]
            out_s[i, :order.size] = exact[order]
            out_i[i, :order.size] = cand[order]
        return out_s, out_i

    # ---- the kernel path (GPU tensors, or any tensor under TRITON_INTERPRET=1): rankstack.index.compressed_device

    def _search_tensor(self, queries, k: int, **params) -> TopK:
        out = compressed_device.search(self, queries, k, **params)
        return out if out is not None else super()._search_tensor(queries, k, **params)

    def docid_pairs(self, topk: TopK) -> list[list[tuple[str, float]]]:
        out = []
        for srow, irow in zip(topk.scores, topk.ids):
            keep = irow >= 0
            out.append(sort_pairs(list(zip(self._ids.names(irow[keep]), srow[keep].astype(float).tolist()))))
        return out

    # ---- persistence: rankstack.index.compressed_io ----------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index atomically: a crash or error mid-save leaves the previous index at ``path`` intact."""
        return compressed_io.save(self, path)

    def code_bytes(self) -> int:
        """Bytes of one document's code (the PQ code size, or the binary planes plus their scales)."""
        if self._codec is not None:
            return self._codec.code_bytes
        return int(getattr(faiss_base(self._faiss), "code_size", 0))

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> CompressedIndex:
        return compressed_io.load(cls, path, dim=dim)
