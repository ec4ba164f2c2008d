"""Binary embeddings: 1-bit sign codes and multi-bit residual codes with per-plane scales.

After centring by the corpus mean, plane 1 is ``sign(x - mean)``; each further plane binarises the residual left by
the planes before it (recurrent binarisation, as in Tencent's binary embedding-based retrieval). Each plane ``b`` of
each vector has a scale ``alpha_b = mean(|r_b|)``, the least-squares weight of a +-1 code, so

    x ~= mean + sum_b alpha_b * s_b,   s_b in {-1, +1}^d.

Scores against a float query ``q`` (asymmetric) are ``q.mean + sum_b alpha_b q.s_b``; against an encoded query
(symmetric) they use only Hamming distances, since ``s.t = d - 2 * hamming(s, t)``.
"""

from __future__ import annotations

import logging

import numpy as np

from rankstack.errors import BadInput
from rankstack.kernels import binary_scan

logger = logging.getLogger(__name__)

__all__ = ["ResidualBinaryCodec", "SUPPORTED_BITS"]

SUPPORTED_BITS = (1, 2, 3, 4)


class ResidualBinaryCodec:
    """Encode float vectors ``[n, dim]`` into ``bits`` packed bit-planes ``uint8 [n, bits, dim/8]`` + scales."""

    def __init__(self, dim: int, bits: int = 1, mean: np.ndarray | None = None):
        if dim % 8:
            raise BadInput(f"binary codes need a dimension divisible by 8, got {dim}")
        if bits not in SUPPORTED_BITS:
            raise BadInput(f"bits per dimension must be one of {SUPPORTED_BITS}, got {bits}")
        self.dim = dim
        self.bits = bits
        self.mean = np.zeros(dim, np.float32) if mean is None else np.asarray(mean, np.float32)

    @property
    def code_bytes(self) -> int:
        """Bytes per vector in memory: the planes plus a float16 scale per plane."""
        return self.bits * self.dim // 8 + 2 * self.bits

    def fit(self, x: np.ndarray) -> ResidualBinaryCodec:
        self.mean = np.asarray(x, np.float32).mean(axis=0)
        return self

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = np.asarray(x, np.float32) - self.mean
        planes = np.empty((r.shape[0], self.bits, self.dim // 8), np.uint8)
        scales = np.empty((r.shape[0], self.bits), np.float16)
        for b in range(self.bits):
            pos = r >= 0
            alpha = np.abs(r).mean(axis=1)
            planes[:, b] = np.packbits(pos, axis=1)
            scales[:, b] = alpha
            r = r - alpha.astype(np.float16).astype(np.float32)[:, None] * np.where(pos, 1.0, -1.0)
        return planes, scales

    def signs(self, planes: np.ndarray) -> np.ndarray:
        """Unpack ``[n, bits, dim/8]`` to +-1 float32 ``[n, bits, dim]``."""
        return np.unpackbits(planes, axis=-1).astype(np.float32) * 2.0 - 1.0

    def decode(self, planes: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return self.mean + np.einsum("nb,nbd->nd", scales.astype(np.float32), self.signs(planes))

    def _chunks(self, n: int, chunk: int):
        for s0 in range(0, n, chunk):
            yield slice(s0, min(n, s0 + chunk))

    def asymmetric_scores(self, q: np.ndarray, planes: np.ndarray, scales: np.ndarray, *,
                          chunk: int = 32768) -> np.ndarray:
        """Float ``q [nq, dim]`` against codes: ``[nq, n]`` approximate inner products ``q . x_hat``."""
        q = np.asarray(q, np.float32)
        out = np.empty((q.shape[0], planes.shape[0]), np.float32)
        base = q @ self.mean
        for sl in self._chunks(planes.shape[0], chunk):
            s = self.signs(planes[sl])
            acc = np.zeros((q.shape[0], s.shape[0]), np.float32) + base[:, None]
            for b in range(self.bits):
                acc += (q @ s[:, b].T) * scales[sl, b].astype(np.float32)[None, :]
            out[:, sl] = acc
        return out

    def symmetric_scores(self, q: np.ndarray, planes: np.ndarray, scales: np.ndarray, *,
                         chunk: int = 32768) -> np.ndarray:
        """Encode ``q`` with this codec and compare codes only: ``sum_ab alpha_a beta_b (dim - 2 hamming)``.

        The +-1 products are exact small integers, so a float matmul computes the Hamming terms exactly.
        Mean terms are left out: this is a distance between codes, as in the paper's symmetric mode.
        """
        qp, qs = self.encode(q)
        qsig = self.signs(qp)
        qs = qs.astype(np.float32)
        out = np.empty((qp.shape[0], planes.shape[0]), np.float32)
        for sl in self._chunks(planes.shape[0], chunk):
            s = self.signs(planes[sl])
            xs = scales[sl].astype(np.float32)
            acc = np.zeros((qp.shape[0], s.shape[0]), np.float32)
            for a in range(self.bits):
                for b in range(self.bits):
                    acc += qs[:, a, None] * xs[None, :, b] * (qsig[:, a] @ s[:, b].T)
            out[:, sl] = acc
        return out

    def topk(self, q: np.ndarray, planes: np.ndarray, scales: np.ndarray, k: int, mode: str = "asymmetric", *,
             scan: str = "auto", layout=None) -> tuple[np.ndarray, np.ndarray]:
        """The best ``min(k, n)`` codes per query, ``(scores, positions)`` best first, ties by position.

        Compiled scans (:mod:`rankstack.kernels.binary_scan`, need ``rankstack[fastscan]``): ``scan="lut"`` reads byte
        lookup tables, ``"gemm"`` decodes blocks of codes and multiplies them with all queries at once, ``"shuffle"``
        looks up 4-bit tables in SIMD registers and rescores what its bound cannot rule out (x86-64 with AVX2; over
        ``layout``, the codes laid out for it, when given); ``"auto"`` takes ``shuffle`` when ``layout`` is given and
        it runs here, else picks ``lut`` or ``gemm`` by the number of queries. ``"numpy"``: the reference above
        (unpacks every sign to float32), also what ``auto`` falls back to without numba."""
        if scan not in (*binary_scan.SCANS, "numpy"):
            raise BadInput(f"unknown binary scan {scan!r}; choose auto, lut, gemm, shuffle or numpy")
        if scan in ("lut", "gemm", "shuffle") and not binary_scan.available():
            from rankstack.errors import MissingExtra

            raise MissingExtra(f"the {scan} scan needs numba: `pip install 'rankstack[fastscan]'` (or scan=numpy)")
        q = np.asarray(q, np.float32)
        if scan == "numpy" or not binary_scan.available():
            if scan == "auto":
                _warn_no_numba()
            fn = self.asymmetric_scores if mode == "asymmetric" else self.symmetric_scores
            full = fn(q, planes, scales)
            n = full.shape[1]
            kk = min(k, n)
            pos = np.argpartition(-full, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (q.shape[0], 1))
            part = np.take_along_axis(full, pos, axis=1)
            order = np.lexsort((pos, -part), axis=1)
            return np.take_along_axis(part, order, axis=1), np.take_along_axis(pos, order, axis=1)
        if mode == "asymmetric":  # q.x_hat = q.mean + sum_b alpha_b q.s_b
            vecs, qw, base = q[:, None], np.ones((q.shape[0], 1), np.float32), q @ self.mean
        else:  # sum_a beta_a t_a . sum_b alpha_b s_b over the query's own +-1 planes t_a; no mean terms
            qp, qs = self.encode(q)
            vecs, qw, base = self.signs(qp), qs.astype(np.float32), np.zeros(q.shape[0], np.float32)
        return binary_scan.topk(vecs, qw, base, planes, scales, k, scan=scan, layout=layout)


_warned = []


def _warn_no_numba() -> None:
    if not _warned:
        _warned.append(True)
        logger.warning("multi-bit binary codes are scanned with numpy (slow at large sizes); "
                       "`pip install 'rankstack[fastscan]'` for the compiled lookup-table scan")
