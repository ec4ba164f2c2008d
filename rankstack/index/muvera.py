"""MUVERA fixed-dimensional encodings (Dhulipala et al., 2024): one vector per multi-vector set whose inner product
approximates the Chamfer (MaxSim) similarity, so that a single-vector index can find late-interaction candidates.

Per repetition: ``k_sim`` Gaussian hyperplanes split the space into ``B = 2 ** k_sim`` SimHash partitions; every
token vector is projected to ``d_proj`` dimensions by a random +-1 matrix (scaled by ``1 / sqrt(d_proj)``; none when
``d_proj`` equals the token dimension). A query's block ``k`` is the SUM of its projected tokens in partition ``k``;
a document's block is the AVERAGE of its tokens there, and an empty document block is filled with the document
token whose SimHash signature is nearest (Hamming) to ``k``. Then ``<fde(q), fde(d)> = sum_k sum_{q in k} q .
avg(d in k)``, which tends to ``sum_q max_d q . d`` as partitions get finer. Repetitions are concatenated: the
encoding has ``reps * 2 ** k_sim * d_proj`` dimensions.

(The paper sums query tokens and averages document tokens; the other way round would weight a query token by how
many document tokens share its partition, which is not MaxSim.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rankstack.errors import BadInput

__all__ = ["FDEConfig", "document_fdes", "query_fdes"]


@dataclass(frozen=True)
class FDEConfig:
    k_sim: int = 5
    d_proj: int = 16
    reps: int = 20
    fill_empty: bool = True
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.k_sim <= 12:
            raise BadInput(f"MUVERA k_sim must lie in [0, 12] (2**k_sim partitions), got {self.k_sim}")
        for key in ("d_proj", "reps"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise BadInput(f"MUVERA {key} must be a positive integer, got {v!r}")

    @property
    def partitions(self) -> int:
        return 1 << self.k_sim

    def dim(self, token_dim: int) -> int:
        return self.reps * self.partitions * min(self.d_proj, token_dim)

    def label(self) -> str:
        return f"k_sim={self.k_sim},d_proj={self.d_proj},reps={self.reps}" + ("" if self.fill_empty else ",fill=0")


def _draws(cfg: FDEConfig, token_dim: int):
    """Per repetition: hyperplanes ``[D, k_sim]`` and projection ``[D, d_proj]`` (None: identity)."""
    rng = np.random.default_rng(cfg.seed)
    out = []
    for _ in range(cfg.reps):
        planes = rng.standard_normal((token_dim, cfg.k_sim)).astype(np.float32)
        proj = None
        if cfg.d_proj < token_dim:
            proj = ((rng.integers(0, 2, (token_dim, cfg.d_proj)) * 2 - 1) / np.sqrt(cfg.d_proj)).astype(np.float32)
        out.append((planes, proj))
    return out


def _signatures(x: np.ndarray, planes: np.ndarray) -> np.ndarray:
    bits = (x @ planes > 0).astype(np.int64)
    return (bits << np.arange(planes.shape[1])).sum(axis=1) if planes.shape[1] else np.zeros(len(x), np.int64)


_POP = np.array([bin(i).count("1") for i in range(1 << 12)], np.int16)


# below this many tokens the partition sums use numpy: torch's index_add_ enters its thread pool even for one
# document, and when another process holds a core that costs a scheduler wait per call (1.2 s for one 100-token
# document's 20 repetitions on 2 loaded cores, 4 ms at one thread); both sum in token order
_SMALL_TOKENS = 65_536


def document_fdes(tokens: np.ndarray, offsets: np.ndarray, cfg: FDEConfig, *, chunk_docs: int = 4096
                  ) -> np.ndarray:
    """FDEs ``[N, dim]`` float32 of the documents whose tokens are ``tokens[offsets[i]:offsets[i + 1]]``."""
    import torch

    offsets = np.asarray(offsets, np.int64)
    n, d = len(offsets) - 1, tokens.shape[1]
    b = cfg.partitions
    dp = min(cfg.d_proj, d)
    draws = _draws(cfg, d)
    out = np.zeros((n, cfg.reps * b * dp), np.float32)
    for c0 in range(0, n, chunk_docs):
        c1 = min(n, c0 + chunk_docs)
        x = np.asarray(tokens[offsets[c0]:offsets[c1]], np.float32)
        lens = np.diff(offsets[c0:c1 + 1])
        doc = np.repeat(np.arange(c1 - c0), lens)
        pos = np.arange(len(x)) - np.repeat(offsets[c0:c1] - offsets[c0], lens)
        for r, (planes, proj) in enumerate(draws):
            sig = _signatures(x, planes)
            px = x @ proj if proj is not None else x
            slot = doc * b + sig
            if len(x) < _SMALL_TOKENS:  # a service write's few documents: summed on this thread (see below)
                sums = np.zeros(((c1 - c0) * b, dp), np.float32)
                np.add.at(sums, slot, px)
            else:
                t = torch.zeros(((c1 - c0) * b, dp), dtype=torch.float32)
                sums = t.index_add_(0, torch.from_numpy(slot), torch.from_numpy(np.ascontiguousarray(px))).numpy()
            counts = np.bincount(slot, minlength=(c1 - c0) * b).astype(np.float32)
            blocks = sums / np.maximum(counts, 1)[:, None]
            if cfg.fill_empty and b > 1:
                empty = np.flatnonzero(counts == 0)
                if len(empty):
                    # nearest token by Hamming distance of signatures, ties to the earliest token of the document
                    ham = _POP[sig[:, None] ^ np.arange(b)[None, :]].astype(np.int64)  # [tokens, B]
                    key = ham << 20 | pos[:, None]
                    best = np.minimum.reduceat(key, offsets[c0:c1] - offsets[c0], axis=0)  # [docs, B]
                    starts = offsets[c0:c1] - offsets[c0]
                    e_doc, e_part = empty // b, empty % b
                    tok = starts[e_doc] + (best[e_doc, e_part] & ((1 << 20) - 1))
                    blocks[empty] = px[tok]
            out[c0:c1, r * b * dp:(r + 1) * b * dp] = blocks.reshape(c1 - c0, b * dp)
    return out


def query_fdes(queries: Sequence[np.ndarray], cfg: FDEConfig, weights: Sequence[np.ndarray] | None = None
               ) -> np.ndarray:
    """FDEs ``[B, dim]`` of query token arrays (per-partition sums; ``weights`` scale tokens, e.g. PRF
    expansion embeddings)."""
    if not queries:
        return np.zeros((0, 0), np.float32)
    d = queries[0].shape[1]
    b = cfg.partitions
    dp = min(cfg.d_proj, d)
    draws = _draws(cfg, d)
    out = np.zeros((len(queries), cfg.reps * b * dp), np.float32)
    for i, q in enumerate(queries):
        q = np.asarray(q, np.float32)
        w = np.ones(len(q), np.float32) if weights is None else np.asarray(weights[i], np.float32)
        for r, (planes, proj) in enumerate(draws):
            sig = _signatures(q, planes)
            pq = (q @ proj if proj is not None else q) * w[:, None]
            blocks = np.zeros((b, dp), np.float32)
            np.add.at(blocks, sig, pq)
            out[i, r * b * dp:(r + 1) * b * dp] = blocks.ravel()
    return out
