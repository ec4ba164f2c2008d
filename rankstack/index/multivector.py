"""Multi-vector (late-interaction) indexes: every document is a bag of token vectors.

- :class:`MultiVectorIndex` (``multi-vector``): the token vectors as they are (float16 on disk, memory-mapped), the
  tokens' vocabulary ids (ColBERT-PRF's IDF) and per-document offsets. Exact MaxSim over any candidates, or over the
  whole corpus (:meth:`MultiVectorIndex.search`, chunked so memory stays bounded).
- :class:`PlaidIndex` (``multi-vector-plaid``): ColBERTv2/PLAID-style compression. FAISS k-means centroids; each
  token stored as its centroid id plus its residual quantized to ``nbits`` (1, 2 or 4) per dimension with bucket
  cutoffs and values taken from the residual distribution; decompressed only for candidates. Candidates come from
  centroid postings (the documents holding a token in one of each query token's ``nprobe`` nearest centroids), are
  ranked by centroid interaction (MaxSim with every token replaced by its centroid), and the best ``candidates`` are
  decompressed and scored exactly.

Both are written atomically (a failed write leaves the previous index) and checked at load.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from rankstack._atomic import atomic_dir, write_json
from rankstack.errors import BadInput, DimensionMismatch, IndexCorrupt, UnknownDocid
from rankstack.index.base import PARAMS_FILE, GrowingRows, read_params
from rankstack.kernels.topk_heap import rows_topk
from rankstack.records import TopK

logger = logging.getLogger(__name__)

__all__ = ["MultiVectorIndex", "PlaidIndex", "maxsim_scores", "pad_queries", "QUERY_BATCH"]

FORMAT_VERSION = 1
QUERY_BATCH = 16  # queries per corpus sweep: their token rows times a chunk of tokens stay ~ a few hundred MB
_CHUNK_TOKENS = 131_072


def pad_queries(queries: Sequence[np.ndarray], weights: Sequence[np.ndarray] | None = None):
    """Ragged query token arrays as ``(float32 [B, Lmax, D], weights [B, Lmax])`` torch tensors (weight 0 pads)."""
    import torch

    if not queries:
        raise BadInput("no queries to score")
    dim = queries[0].shape[1]
    width = max(1, max(q.shape[0] for q in queries))
    out = torch.zeros((len(queries), width, dim), dtype=torch.float32)
    w = torch.zeros((len(queries), width), dtype=torch.float32)
    for i, q in enumerate(queries):
        if q.ndim != 2 or q.shape[1] != dim:
            raise DimensionMismatch(f"query {i} has token vectors of shape {q.shape}; expected [n, {dim}]")
        out[i, :q.shape[0]] = torch.from_numpy(np.asarray(q, np.float32))
        w[i, :q.shape[0]] = torch.from_numpy(np.asarray(weights[i], np.float32)) if weights is not None else 1.0
    return out, w


def maxsim_scores(queries: Sequence[np.ndarray], tokens, offsets: np.ndarray, rows: np.ndarray,
                  weights: Sequence[np.ndarray] | None = None, *, device: str | None = None) -> np.ndarray:
    """MaxSim ``[B, C]`` of query token arrays against document rows ``rows [B, C]`` (``-1`` pads) whose tokens are
    ``tokens[offsets[r]:offsets[r + 1]]``; on ``device`` (a GPU runs the Triton kernel) or the CPU reference."""
    import torch

    from rankstack.kernels import maxsim

    q, w = pad_queries(queries, weights)
    t = torch.from_numpy(np.asarray(tokens)) if not isinstance(tokens, torch.Tensor) else tokens
    off = torch.from_numpy(np.asarray(offsets, np.int64))
    r = torch.from_numpy(np.asarray(rows, np.int64))
    if device and device != "cpu":
        q, w, t, off, r = (x.to(device) for x in (q, w, t, off, r))
    return maxsim(q, w, t, off, r).cpu().numpy()


def _spans(offsets: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Token positions of documents ``rows`` (in that order), concatenated."""
    lens = offsets[rows + 1] - offsets[rows]
    if not len(rows):
        return np.zeros(0, np.int64)
    return np.repeat(offsets[rows] - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))


def _owners(offsets: np.ndarray) -> np.ndarray:
    """The document row of every token."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def _update_input(docids: Sequence[str], encoded, dim: int):
    """An update's docids (as strings, no duplicates) with their encoding checked: ``(docids, lengths, float16
    vectors [T, dim], token ids)``; None for the last three when there are no docids."""
    docids = [str(d) for d in docids]
    if len(set(docids)) != len(docids):
        raise BadInput("duplicate docids in one update of a multi-vector index")
    if not docids:
        return docids, None, None, None
    if encoded is None or len(encoded.lengths) != len(docids):
        raise BadInput(f"{len(docids)} docids but {0 if encoded is None else len(encoded.lengths)} encoded documents")
    lens = np.asarray(encoded.lengths, np.int64)
    if (lens == 0).any():
        raise BadInput("a document has no tokens after encoding; give it some text")
    vecs = np.asarray(encoded.vectors, np.float16).reshape(-1, dim)
    ids = np.asarray(encoded.token_ids, np.int32)
    if vecs.shape[0] != int(lens.sum()) or ids.shape[0] != vecs.shape[0]:
        raise BadInput(f"encoded documents hold {vecs.shape[0]} vectors and {ids.shape[0]} token ids for "
                       f"{int(lens.sum())} tokens")
    return docids, lens, vecs, ids


def _check_dim(queries: Sequence[np.ndarray], dim: int) -> None:
    for q in queries:
        if q.ndim != 2 or q.shape[1] != dim:
            raise DimensionMismatch(f"query token vectors of shape {tuple(q.shape)} do not match the index's "
                                    f"{dim}-d tokens; encode queries with the model the index was built with")


class _TombstonedRows:
    """Document rows of which some are tombstones: ``_docids`` holds None at a tombstone's row, ``_dead`` its row."""

    _docids: list[str | None]
    _dead: set[int]
    _dead_tokens: int
    offsets: np.ndarray

    def _tombstone(self, names, row_of: dict[str, int]) -> None:
        """Tombstone the rows of ``names`` that ``row_of`` holds (and drop them from it); others are ignored."""
        for d in dict.fromkeys(names):
            row = row_of.pop(d, None)
            if row is not None:
                self._docids[row] = None
                self._dead.add(row)
                self._dead_tokens += int(self.offsets[row + 1] - self.offsets[row])

    @property
    def docids(self) -> list[str]:
        """The live documents, in row order."""
        return [d for d in self._docids if d is not None] if self._dead else list(self._docids)

    @property
    def row_docids(self) -> list[str | None]:
        """The docid of every row (None: a tombstone), to map the rows a search returns."""
        return self._docids

    @property
    def n_rows(self) -> int:
        return len(self._docids)

    @property
    def tombstones(self) -> int:
        return len(self._dead)


class MultiVectorIndex(_TombstonedRows):
    """Token vectors of a corpus. ``tokens [T, D]`` float16, ``offsets [N + 1]``, ``token_ids [T]`` int32.

    :meth:`update` writes in place (a service's upserts): a removed document's row stays in the arrays as a
    tombstone (its entry in :attr:`row_docids` is None and it is never scored) and new documents are appended into
    buffers with spare capacity, so a write costs O(its own tokens) amortised instead of copying the corpus; the
    arrays are compacted once tombstones hold ``COMPACT_FRACTION`` of the tokens. Rows therefore number
    :attr:`n_rows`, live documents ``len(index)``; :meth:`compacted` gives an index without tombstones (what
    :meth:`save` writes and the derived FDE and PLAID indexes are built from).
    """

    kind = "multi-vector"
    COMPACT_FRACTION = 1 / 8

    def __init__(self, docids: Sequence[str], tokens: np.ndarray, offsets: np.ndarray, token_ids: np.ndarray, *,
                 meta: dict | None = None):
        self._docids = list(docids)
        self.tokens = tokens
        self.offsets = np.asarray(offsets, np.int64)
        self.token_ids = token_ids
        self.meta = dict(meta or {})
        if self.offsets.shape != (len(self._docids) + 1,) or self.offsets[-1] != tokens.shape[0]:
            raise IndexCorrupt(f"multi-vector index: offsets ({self.offsets.shape}) do not match {len(self._docids)} "
                               f"documents and {tokens.shape[0]} tokens; rebuild the index")
        if token_ids.shape[0] != tokens.shape[0]:
            raise IndexCorrupt("multi-vector index: token ids and token vectors differ in number; rebuild the index")
        self.row_of = {d: i for i, d in enumerate(self._docids)}
        if len(self.row_of) != len(self._docids):
            raise BadInput("duplicate docids in a multi-vector index")
        self._idf = None
        self._dead: set[int] = set()  # tombstoned rows
        self._dead_tokens = 0
        self._buffers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # tokens, ids, offsets with room

    # -- building --
    @classmethod
    def build(cls, docids: Sequence[str], encoded, *, meta: dict | None = None) -> MultiVectorIndex:
        """From :class:`~rankstack.retrieval.token_encoders.EncodedDocuments` (one entry per docid)."""
        if len(docids) == 0:
            raise BadInput("cannot build a multi-vector index of an empty corpus; give it some documents")
        if len(encoded.lengths) != len(docids):
            raise BadInput(f"{len(docids)} docids but {len(encoded.lengths)} encoded documents")
        empty = [docids[i] for i in np.flatnonzero(encoded.lengths == 0)[:3]]
        if empty:
            raise BadInput(f"documents {empty} have no tokens after encoding; drop them or give them text")
        info = {**(meta or {}), "truncated_documents": int(encoded.truncated)}
        return cls(docids, np.asarray(encoded.vectors, np.float16), encoded.offsets,
                   np.asarray(encoded.token_ids, np.int32), meta=info)

    def __len__(self) -> int:
        return len(self.row_of)

    def __contains__(self, docid: str) -> bool:
        return docid in self.row_of

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def bytes_per_token(self) -> float:
        return float(self.tokens.dtype.itemsize * self.dim)

    def rows(self, docids: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self.row_of[d] for d in docids], np.int64)
        except KeyError as exc:
            raise UnknownDocid(f"docid {exc.args[0]!r} is not in the multi-vector index") from None

    def doc_tokens(self, row: int) -> np.ndarray:
        return np.asarray(self.tokens[self.offsets[row]:self.offsets[row + 1]], np.float32)

    def idf(self) -> np.ndarray:
        """Inverse document frequency per vocabulary id, ``log((N + 1) / (df + 1))``, over the stored tokens."""
        if self._idf is None:
            owners, ids = _owners(self.offsets), np.asarray(self.token_ids)
            if self._dead:  # removed documents no longer count (a fresh build of the live ones gives the same)
                live = ~np.isin(owners, np.fromiter(self._dead, np.int64, len(self._dead)))
                owners, ids = owners[live], ids[live]
            pairs = np.unique(owners << 32 | ids.astype(np.int64))
            df = np.bincount((pairs & 0xFFFFFFFF).astype(np.int64), minlength=int(self.token_ids.max()) + 1)
            self._idf = np.log((len(self) + 1) / (df + 1.0))
        return self._idf

    # -- scoring --
    def score(self, queries: Sequence[np.ndarray], rows: np.ndarray, weights=None, *, device=None) -> np.ndarray:
        """Exact MaxSim of each query against its candidate rows ``[B, C]`` (``-1`` pads score ``-inf``); each
        query's candidate tokens are gathered once and scored by :func:`rankstack.kernels.maxsim` (the Triton kernel
        on a GPU ``device``, the reference on CPU)."""
        _check_dim(queries, self.dim)
        rows = np.asarray(rows, np.int64)
        if rows.size and int(rows.max()) >= self.n_rows:
            raise BadInput(f"candidate row {int(rows.max())} is out of range for {self.n_rows} documents")
        out = np.full(rows.shape, -np.inf, np.float32)
        lens_all = np.diff(self.offsets)
        for b, q in enumerate(queries):
            ok = rows[b] >= 0
            r = rows[b][ok]
            if not len(r):
                continue
            # one copy of the candidates' spans (the store is a read-only memory map), in candidate order
            sub = np.concatenate([self.tokens[self.offsets[i]:self.offsets[i + 1]] for i in r],
                                 dtype=np.float32)  # gathered and widened in one pass
            sub_off = np.concatenate([[0], np.cumsum(lens_all[r])])
            w = None if weights is None else [weights[b]]
            out[b, ok] = maxsim_scores([q], sub, sub_off, np.arange(len(r))[None], w, device=device)[0]
        return out

    def search(self, queries: Sequence[np.ndarray], k: int, weights=None) -> tuple[np.ndarray, np.ndarray]:
        """Exact MaxSim over the whole corpus: ``(scores [B, k], rows [B, k])`` best first (ties by ascending row;
        tombstoned rows score ``-inf`` and come last)."""
        return rows_topk(self.score_all(queries, weights), min(int(k), self.n_rows))

    def topk(self, queries: Sequence[np.ndarray], k: int) -> TopK:
        """:meth:`search` as a :class:`TopK` of rows (the surface every retrieval kind's index has)."""
        scores, rows = self.search(queries, k)
        return TopK(scores=np.ascontiguousarray(scores, np.float32), ids=np.ascontiguousarray(rows, np.int64))

    def score_all(self, queries: Sequence[np.ndarray], weights=None) -> np.ndarray:
        """MaxSim of every query against every document, ``[B, N]``: the corpus swept in chunks of whole
        documents, :data:`QUERY_BATCH` queries at a time, so memory stays bounded."""
        import torch

        from rankstack.kernels.reference import segment_max

        _check_dim(queries, self.dim)
        n = self.n_rows
        scores = np.empty((len(queries), n), np.float32)
        bounds = [0]
        while bounds[-1] < n:
            start_tok = self.offsets[bounds[-1]]
            end = int(np.searchsorted(self.offsets, start_tok + _CHUNK_TOKENS, side="right")) - 1
            bounds.append(max(end, bounds[-1] + 1) if end < n else n)
        lengths = torch.from_numpy(np.diff(self.offsets))
        for b0 in range(0, len(queries), QUERY_BATCH):
            batch = queries[b0:b0 + QUERY_BATCH]
            w = weights[b0:b0 + QUERY_BATCH] if weights is not None else [np.ones(len(q), np.float32) for q in batch]
            qcat = torch.from_numpy(np.concatenate([np.asarray(q, np.float32) for q in batch]))
            wcat = torch.from_numpy(np.concatenate([np.asarray(x, np.float32) for x in w]))
            owner = torch.repeat_interleave(torch.arange(len(batch)), torch.tensor([len(q) for q in batch]))
            for d0, d1 in zip(bounds[:-1], bounds[1:]):
                t = torch.from_numpy(np.asarray(self.tokens[self.offsets[d0]:self.offsets[d1]], np.float32))
                best = segment_max((t @ qcat.T).T.contiguous(), lengths[d0:d1])  # [sum Lq, docs]
                per = torch.zeros((len(batch), d1 - d0), dtype=torch.float32)
                per.index_add_(0, owner, wcat[:, None] * best)
                scores[b0:b0 + len(batch), d0:d1] = per.numpy()
        if self._dead:
            scores[:, sorted(self._dead)] = -np.inf
        return scores

    @classmethod
    def empty(cls, dim: int, *, meta: dict | None = None) -> MultiVectorIndex:
        return cls([], np.zeros((0, dim), np.float16), np.zeros(1, np.int64), np.zeros(0, np.int32), meta=meta)

    def replaced(self, remove: Sequence[str], docids: Sequence[str], encoded) -> MultiVectorIndex:
        """A new compact index without the documents ``remove`` and with ``docids`` (encoded as ``encoded``)
        appended; this one is left as it is."""
        new = MultiVectorIndex(self._docids, self.tokens, self.offsets, self.token_ids, meta=self.meta) \
            if not self._dead else self.compacted()
        new.update(remove, docids, encoded)
        return new.compacted()

    def update(self, remove: Sequence[str], docids: Sequence[str], encoded=None) -> None:
        """In place: tombstone ``remove`` and any earlier version of ``docids``, then append ``docids`` (encoded as
        ``encoded``, :class:`~rankstack.retrieval.token_encoders.EncodedDocuments`). Unknown ``remove`` docids are
        ignored. Callers that search concurrently hold a lock (the service's collection write lock)."""
        docids, lens, vecs, ids = _update_input(docids, encoded, self.dim)
        self._tombstone([*map(str, remove), *docids], self.row_of)
        if docids:
            t0, n0 = self.n_tokens, self.n_rows
            tok, tid, off = self._reserve(t0 + vecs.shape[0], n0 + len(docids))
            tok[t0:t0 + vecs.shape[0]] = vecs
            tid[t0:t0 + vecs.shape[0]] = ids
            off[n0 + 1:n0 + 1 + len(docids)] = t0 + np.cumsum(lens)
            self.tokens, self.token_ids = tok[:t0 + vecs.shape[0]], tid[:t0 + vecs.shape[0]]
            self.offsets = off[:n0 + len(docids) + 1]
            for i, d in enumerate(docids):
                self.row_of[d] = n0 + i
            self._docids.extend(docids)
        self._idf = None
        if self._dead_tokens > self.COMPACT_FRACTION * max(self.n_tokens, 1):
            self._compact()

    def _reserve(self, tokens: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Buffers holding the current arrays with room for ``tokens`` and ``rows`` (grown by doubling, so appends
        cost O(1) amortised; a loaded index's memory-mapped arrays are copied into memory at its first write)."""
        b = self._buffers
        if b is not None and b[0].shape[0] >= tokens and b[2].shape[0] >= rows + 1:
            return b
        cap_t = max(tokens, 2 * (b[0].shape[0] if b else self.n_tokens), 1024)
        cap_r = max(rows + 1, 2 * (b[2].shape[0] if b else self.n_rows + 1), 64)
        tok = np.empty((cap_t, self.dim), np.float16)
        tid = np.empty(cap_t, np.int32)
        off = np.empty(cap_r, np.int64)
        t, n = self.n_tokens, self.n_rows
        tok[:t], tid[:t], off[:n + 1] = self.tokens, self.token_ids, self.offsets
        self._buffers = (tok, tid, off)
        return self._buffers

    def _live_arrays(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        keep = np.array([i for i, d in enumerate(self._docids) if d is not None], np.int64)
        idx = _spans(self.offsets, keep)
        lens = np.diff(self.offsets)[keep]
        return ([self._docids[i] for i in keep], np.asarray(self.tokens[idx], np.float16),
                np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), np.asarray(self.token_ids[idx], np.int32))

    def _compact(self) -> None:
        """Drop the tombstoned rows from the arrays (O(T); live rows keep their order)."""
        docids, tokens, offsets, ids = self._live_arrays()
        self._docids, self.tokens, self.offsets, self.token_ids = docids, tokens, offsets, ids
        self.row_of = {d: i for i, d in enumerate(docids)}
        self._dead, self._dead_tokens, self._buffers, self._idf = set(), 0, None, None

    def compacted(self) -> MultiVectorIndex:
        """This index without tombstones: itself when it has none, else a compact copy (this one unchanged)."""
        if not self._dead:
            return self
        docids, tokens, offsets, ids = self._live_arrays()
        return MultiVectorIndex(docids, tokens, offsets, ids, meta=dict(self.meta))

    # -- persistence --
    def save(self, path: str | os.PathLike) -> Path:
        src = self.compacted()  # a copy when there are tombstones: a checkpoint runs beside searches
        return _write(path, self.kind, {"tokens": np.asarray(src.tokens, np.float16), "offsets": src.offsets,
                                        "token_ids": np.asarray(src.token_ids, np.int32)}, src._docids,
                      {"dim": src.dim, "n_docs": len(src), "n_tokens": src.n_tokens, "meta": self.meta})

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> MultiVectorIndex:
        params, a, docids = _read(path, cls.kind, ("tokens", "offsets", "token_ids"), "tokens", dim)
        return cls(docids, a["tokens"], a["offsets"], a["token_ids"], meta=params.get("meta", {}))


def _write(path, kind: str, arrays: dict, docids: list[str], params: dict) -> Path:
    """One index folder, atomically: ``<name>.npy`` per array, ``docids.json`` and ``params.json``."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.asarray(arr))
        (tmp / "docids.json").write_text(json.dumps(docids), encoding="utf-8")
        write_json(tmp / PARAMS_FILE, {"kind": kind, "format_version": FORMAT_VERSION, **params})
    return path


def _read(path, kind: str, names: Sequence[str], per_token: str, dim: int | None):
    """``(params, arrays, docids)`` of a folder :func:`_write` made (large arrays memory-mapped), checked against
    ``params.json`` (``per_token``: the array with one row per token) and the expected token dimension."""
    path = Path(path)
    params = read_params(path, kind, FORMAT_VERSION)
    try:
        arrays = {n: np.load(path / f"{n}.npy", mmap_mode="r" if n in _MAPPED else None) for n in names}
        docids = json.loads((path / "docids.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{path}: {kind} index files are missing or corrupt ({exc}); rebuild it with `rankstack "
                           f"index --kind {'plaid' if 'plaid' in kind else 'maxsim'}`") from None
    if len(docids) != params.get("n_docs") or arrays[per_token].shape[0] != params.get("n_tokens"):
        raise IndexCorrupt(f"{path}: stored arrays do not match params.json; rebuild the index")
    have = int(params.get("dim", -1))
    if dim is not None and have != dim:
        raise DimensionMismatch(f"{path} holds {have}-d token vectors, not {dim}-d; use the encoder it was built with")
    return params, arrays, docids


_MAPPED = ("tokens", "codes", "residuals", "token_ids")


# ---- PLAID-style compression ----------------------------------------------------------------------------------

def _pack_codes(codes: np.ndarray, nbits: int) -> np.ndarray:
    """``[T, D]`` integer codes in ``[0, 2**nbits)`` -> ``[T, D * nbits / 8]`` uint8 (first value in the high bits)."""
    per = 8 // nbits
    t, d = codes.shape
    c = codes.reshape(t, d // per, per).astype(np.uint8)
    out = np.zeros((t, d // per), np.uint8)
    for j in range(per):
        out |= c[:, :, j] << (8 - nbits * (j + 1))
    return out


def _unpack_codes(packed: np.ndarray, nbits: int, dim: int) -> np.ndarray:
    per = 8 // nbits
    mask = (1 << nbits) - 1
    parts = [(packed >> (8 - nbits * (j + 1))) & mask for j in range(per)]
    return np.stack(parts, axis=2).reshape(packed.shape[0], dim)


_STEP = 262_144  # tokens per chunk when assigning or packing


def _centroid_index(centroids: np.ndarray):
    """A FAISS inner-product index over PLAID's centroids (a token's centroid is its nearest by inner product)."""
    import faiss

    flat = faiss.IndexFlatIP(centroids.shape[1])
    flat.add(np.ascontiguousarray(centroids, np.float32))
    return flat


def _nearest(flat, tokens) -> np.ndarray:
    """int32 id of each token's nearest centroid in ``flat``."""
    codes = np.empty(tokens.shape[0], np.int32)
    for s in range(0, tokens.shape[0], _STEP):
        codes[s:s + _STEP] = flat.search(np.asarray(tokens[s:s + _STEP], np.float32), 1)[1][:, 0]
    return codes


def _residual_codes(tokens, centroids: np.ndarray, codes: np.ndarray, cutoffs: np.ndarray, nbits: int) -> np.ndarray:
    """Each token's residual to its centroid, bucketed at ``cutoffs`` and packed ``nbits`` per dimension."""
    packed = np.empty((tokens.shape[0], tokens.shape[1] * nbits // 8), np.uint8)
    for s in range(0, tokens.shape[0], _STEP):
        r = np.asarray(tokens[s:s + _STEP], np.float32) - centroids[codes[s:s + _STEP]]
        packed[s:s + _STEP] = _pack_codes(np.searchsorted(cutoffs, r), nbits)
    return packed


class PlaidIndex(_TombstonedRows):
    """Centroid ids + ``nbits`` residual codes per token; see the module docstring.

    :meth:`update` writes in place with the centroids and residual buckets it has (as ColBERT's index updater does):
    new documents' tokens are assigned to their nearest centroid and their residuals bucketed, and appended; a
    removed document stays as a tombstone (None in :attr:`row_docids`, never a candidate) until tombstones hold
    ``COMPACT_FRACTION`` of the tokens. The centroid postings cover the rows they were built over; rows appended
    since are matched by a scan of their own codes, and the postings are rebuilt once those pass
    ``COMPACT_FRACTION`` of the indexed tokens. Centroids trained on an earlier corpus fit a grown one less well:
    :meth:`outgrown` says when the live tokens have doubled since training, and the service then derives the index
    afresh."""

    kind = "multi-vector-plaid"
    COMPACT_FRACTION = 1 / 8

    def __init__(self, docids, offsets, centroids, codes, residuals, cutoffs, values, token_ids, *, nbits: int,
                 meta: dict | None = None):
        self._docids: list[str | None] = list(docids)
        self.centroids = np.asarray(centroids, np.float32)
        self.cutoffs = np.asarray(cutoffs, np.float32)
        self.values = np.asarray(values, np.float32)
        self.nbits = int(nbits)
        self.meta = dict(meta or {})
        offsets = np.asarray(offsets, np.int64)
        if offsets[-1] != codes.shape[0] or residuals.shape[0] != codes.shape[0]:
            raise IndexCorrupt("PLAID index: offsets, centroid ids and residual codes disagree; rebuild the index")
        self._tok = GrowingRows(codes, residuals, token_ids)  # grown in place by update()
        self._off = GrowingRows(offsets)
        self._sync_views()
        self._row_of: dict[str, int] | None = None  # docid -> row, made at the first update
        self._dead: set[int] = set()
        self._dead_tokens = 0
        self._postings = None
        self._postings_rows = 0  # rows the postings cover; later rows are scanned
        self._flat = None  # FAISS inner-product index over the centroids, for update()'s assignment

    def _sync_views(self) -> None:
        self.codes, self.residuals, self.token_ids = self._tok.arrays
        self.offsets = self._off.arrays[0]

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    def __len__(self) -> int:
        return len(self._docids) - len(self._dead)

    def bytes_per_token(self) -> float:
        return float(self.dim * self.nbits / 8 + self.codes.dtype.itemsize)

    def outgrown(self, factor: float = 2.0) -> bool:
        """True once the live tokens exceed ``factor`` times those the centroids were trained on."""
        trained = int(self.meta.get("trained_tokens", self.codes.shape[0]))
        return self.codes.shape[0] - self._dead_tokens > factor * max(trained, 1)

    @classmethod
    def build(cls, index: MultiVectorIndex, *, nbits: int = 2, ncentroids: int | None = None, seed: int = 0,
              sample: int = 262_144, niter: int = 10, meta: dict | None = None,
              like: PlaidIndex | None = None, codebook: PlaidIndex | None = None) -> PlaidIndex:
        """Compress ``index``'s tokens. ``ncentroids`` defaults to PLAID's rule, ``2 ** floor(log2(16 sqrt(T)))``,
        capped by the sample size / 32; k-means runs on a random sample of ``sample`` tokens. ``like``: reuse the
        centroids and assignments of another compression of the same tokens (only the residual bits change).
        ``codebook``: reuse another PLAID index's centroids and residual buckets as they are (no training; what
        :meth:`update` writes with)."""
        import faiss

        if codebook is not None:
            index = index.compacted()
            if codebook.dim != index.tokens.shape[1]:
                raise BadInput(f"codebook= holds {codebook.dim}-d centroids for {index.tokens.shape[1]}-d tokens")
            codes, packed = codebook._encode(index.tokens)
            return cls(index.docids, index.offsets, codebook.centroids, codes, packed, codebook.cutoffs,
                       codebook.values, index.token_ids, nbits=codebook.nbits,
                       meta={**index.meta, **codebook.meta, **(meta or {})})
        if nbits not in (1, 2, 4):
            raise BadInput(f"PLAID residuals take nbits 1, 2 or 4, got {nbits}")
        index = index.compacted()
        t, d = index.tokens.shape
        if d % (8 // nbits):
            raise BadInput(f"token dimension {d} is not a multiple of {8 // nbits} ({nbits}-bit codes pack per byte)")
        rng = np.random.default_rng(seed)
        if like is not None:
            if like.codes.shape[0] != t or like.dim != d:
                raise BadInput("like= must be a compression of the same token vectors")
            centroids, codes, ncentroids = like.centroids, np.asarray(like.codes), len(like.centroids)
            rng.choice(t, size=min(sample, t), replace=False)  # keep the random stream as without like=
        else:
            take = np.sort(rng.choice(t, size=min(sample, t), replace=False))
            train = np.asarray(index.tokens[take], np.float32)
            if ncentroids is None:
                ncentroids = 2 ** int(np.floor(np.log2(16 * np.sqrt(t))))
                ncentroids = max(1, min(ncentroids, len(train) // 32))
            if ncentroids > len(train):
                raise BadInput(f"ncentroids={ncentroids} exceeds the {len(train)} tokens available to train them")
            km = faiss.Kmeans(d, int(ncentroids), niter=niter, seed=seed, spherical=True, verbose=False,
                              max_points_per_centroid=1 << 30)
            km.train(train)
            centroids = km.centroids.astype(np.float32)
            codes = _nearest(_centroid_index(centroids), index.tokens)
        # residual buckets from a held-out sample, as ColBERTv2 does: cutoffs at quantiles, values at mid-quantiles
        held = rng.choice(t, size=min(65_536, t), replace=False)
        res = np.asarray(index.tokens[held], np.float32) - centroids[codes[held]]
        nb = 1 << nbits
        cutoffs = np.quantile(res, np.arange(1, nb) / nb).astype(np.float32)
        values = np.quantile(res, (np.arange(nb) + 0.5) / nb).astype(np.float32)
        packed = _residual_codes(index.tokens, centroids, codes, cutoffs, nbits)
        info = {**index.meta, **(meta or {}), "ncentroids": int(ncentroids), "seed": seed, "trained_tokens": int(t)}
        return cls(index.docids, index.offsets, centroids, codes, packed, cutoffs, values, index.token_ids,
                   nbits=nbits, meta=info)

    def decompress(self, start: int, end: int) -> np.ndarray:
        """Tokens ``start:end`` rebuilt: centroid + bucket values, L2-normalised (as ColBERTv2 does)."""
        return self.decompress_rows(np.arange(start, end))

    def decompress_rows(self, idx: np.ndarray) -> np.ndarray:
        """The tokens at positions ``idx``, rebuilt (float32)."""
        v = self.centroids[np.asarray(self.codes[idx])]
        v += self.values[_unpack_codes(np.asarray(self.residuals[idx]), self.nbits, self.dim)]
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v

    # ---- writes ----------------------------------------------------------------------------------------------

    def _encode(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """Centroid ids (nearest by inner product, as :meth:`build` assigns) and packed residual codes of
        ``tokens``, with this index's centroids and buckets."""
        if self._flat is None:
            self._flat = _centroid_index(self.centroids)
        codes = _nearest(self._flat, tokens)
        return codes, _residual_codes(tokens, self.centroids, codes, self.cutoffs, self.nbits)

    def update(self, remove: Sequence[str], docids: Sequence[str], encoded=None) -> None:
        """In place, as :meth:`MultiVectorIndex.update`: tombstone ``remove`` and any earlier version of ``docids``,
        then append ``docids`` (``encoded``: their token vectors, rounded to float16 as the token index stores
        them) compressed with this index's centroids and buckets. O(the changed documents' tokens) amortised."""
        docids, lens, vecs, ids = _update_input(docids, encoded, self.dim)
        if self._row_of is None:
            self._row_of = {d: r for r, d in enumerate(self._docids) if d is not None}
        self._tombstone([*map(str, remove), *docids], self._row_of)
        if docids:
            codes, packed = self._encode(np.asarray(vecs, np.float32))
            self._tok.append(codes, packed, ids)
            self._off.append(int(self.offsets[-1]) + np.cumsum(lens))
            for d in docids:
                self._row_of[d] = len(self._docids)
                self._docids.append(d)
            self._sync_views()
        if self._dead_tokens > self.COMPACT_FRACTION * max(self.codes.shape[0], 1):
            self._compact()

    def _live_parts(self):
        """(docids, offsets, codes, residuals, token ids) of the live rows, copied."""
        live = np.array([r for r, d in enumerate(self._docids) if d is not None], np.int64)
        pos = _spans(self.offsets, live)
        off = np.concatenate([[0], np.cumsum(np.diff(self.offsets)[live])]).astype(np.int64)
        return [self._docids[r] for r in live.tolist()], off, self.codes[pos], self.residuals[pos], self.token_ids[pos]

    def _compact(self) -> None:
        docids, off, codes, residuals, ids = self._live_parts()
        self._tok, self._off = GrowingRows(codes, residuals, ids), GrowingRows(off)
        self._docids, self._row_of = docids, {d: r for r, d in enumerate(docids)}
        self._dead, self._dead_tokens, self._postings = set(), 0, None
        self._sync_views()

    def compacted(self) -> PlaidIndex:
        """This index without tombstones (itself when it has none)."""
        if not self._dead:
            return self
        docids, off, codes, residuals, ids = self._live_parts()
        return PlaidIndex(docids, off, self.centroids, codes, residuals, self.cutoffs, self.values, ids,
                          nbits=self.nbits, meta=self.meta)

    # ---- search ------------------------------------------------------------------------------------------------

    def _ivf(self):
        n_tok = self.codes.shape[0]
        fresh = n_tok - int(self.offsets[self._postings_rows]) if self._postings is not None else 0
        if self._postings is None or fresh > self.COMPACT_FRACTION * max(n_tok - fresh, 1):
            pairs = np.unique(np.asarray(self.codes, np.int64) << 32 | _owners(self.offsets))
            cent = pairs >> 32
            self._postings = (np.searchsorted(cent, np.arange(len(self.centroids) + 1)), pairs & 0xFFFFFFFF)
            self._postings_rows = self.n_rows
        return self._postings

    def candidates(self, query: np.ndarray, nprobe: int) -> np.ndarray:
        """Live document rows holding a token in one of each query token's ``nprobe`` nearest centroids."""
        bounds, docs = self._ivf()
        sims = query @ self.centroids.T
        near = np.unique(np.argpartition(-sims, min(nprobe, sims.shape[1]) - 1, axis=1)[:, :nprobe])
        cand = np.unique(np.concatenate([docs[bounds[c]:bounds[c + 1]] for c in near]))
        if self._postings_rows < self.n_rows:  # rows appended since the postings were built: scan their codes
            t0 = int(self.offsets[self._postings_rows])
            hit = t0 + np.flatnonzero(np.isin(self.codes[t0:], near))
            cand = np.union1d(cand, np.searchsorted(self.offsets, hit, side="right") - 1)
        if self._dead:
            cand = cand[~np.isin(cand, np.fromiter(self._dead, np.int64, len(self._dead)))]
        return cand

    def search(self, queries: Sequence[np.ndarray], k: int, *, nprobe: int = 4, candidates: int = 1000
               ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
        """Per query: ``(scores, rows)`` best first, and counts: documents generated from postings and documents
        decompressed and scored exactly."""
        import torch

        from rankstack.kernels.reference import segment_max

        _check_dim(queries, self.dim)
        out_s, out_r = [], []
        stats = {"generated": 0, "scored": 0}
        lengths_all = np.diff(self.offsets)
        for q in queries:
            q = np.asarray(q, np.float32)
            cand = self.candidates(q, nprobe)
            stats["generated"] += len(cand)
            # centroid interaction: every token replaced by its centroid
            csims = torch.from_numpy(np.ascontiguousarray((self.centroids @ q.T).T))
            lens = lengths_all[cand]
            codes = torch.from_numpy(np.asarray(self.codes[_spans(self.offsets, cand)], np.int64))
            approx = segment_max(csims[:, codes], torch.from_numpy(lens)).sum(0).numpy()
            keep = cand[np.argsort(-approx, kind="stable")[:candidates]]
            stats["scored"] += len(keep)
            toks = self.decompress_rows(_spans(self.offsets, keep))
            sub_off = np.concatenate([[0], np.cumsum(lengths_all[keep])])
            s = maxsim_scores([q], toks, sub_off, np.arange(len(keep))[None])[0]
            order = np.lexsort((keep, -s))[:k]
            out_s.append(s[order])
            out_r.append(keep[order])
        return out_s, out_r, stats

    def topk(self, queries: Sequence[np.ndarray], k: int, *, nprobe: int = 4, candidates: int = 1000) -> TopK:
        """:meth:`search` as a :class:`TopK` of rows (``-1`` pads); its counts are kept in ``last_stats``."""
        scores, rows, self.last_stats = self.search(queries, k, nprobe=nprobe, candidates=candidates)
        width = max([1] + [len(r) for r in rows])
        out_s = np.full((len(rows), width), -np.inf, np.float32)
        out_r = np.full((len(rows), width), -1, np.int64)
        for i, (sc, r) in enumerate(zip(scores, rows)):
            out_s[i, :len(r)], out_r[i, :len(r)] = sc, r
        return TopK(scores=out_s, ids=out_r)

    def save(self, path: str | os.PathLike) -> Path:
        """Write a compacted copy atomically (tombstones are not saved)."""
        c = self.compacted()
        names = ("offsets", "centroids", "codes", "residuals", "cutoffs", "values", "token_ids")
        return _write(path, self.kind, {n: getattr(c, n) for n in names}, c._docids,
                      {"dim": c.dim, "nbits": c.nbits, "n_docs": len(c), "n_tokens": int(c.codes.shape[0]),
                       "meta": c.meta})

    @classmethod
    def load(cls, path: str | os.PathLike, *, dim: int | None = None) -> PlaidIndex:
        params, a, docids = _read(path, cls.kind, ("offsets", "centroids", "codes", "residuals", "cutoffs", "values",
                                                   "token_ids"), "codes", dim)
        return cls(docids, a["offsets"], a["centroids"], a["codes"], a["residuals"], a["cutoffs"], a["values"],
                   a["token_ids"], nbits=params["nbits"], meta=params.get("meta", {}))
