"""The kernel path of compressed indexes: for torch tensor queries on a GPU (or any tensor under
``TRITON_INTERPRET=1``), 1-bit Hamming codes and 8-bit PQ/OPQ codes are scanned by the Triton kernels of
:mod:`rankstack.kernels`, and the rescoring tier by the gather + dot kernel. The codes, tables and rescoring tier are
copied to the device on first use and kept (in the index's ``_device``) until the index changes."""

from __future__ import annotations

import numpy as np

from rankstack._optional import require
from rankstack.errors import BadInput
from rankstack.index.compressed_parts import faiss_base
from rankstack.records import TopK

__all__ = ["search", "device_state", "pq_lut"]


def search(self, queries, k: int, *, rescore: bool | None = None, rescore_multiplier: int | None = None,
           nprobe: int | None = None, ef_search: int | None = None, binary_search: str | None = None) -> TopK | None:
    """The top ``k`` of a :class:`~rankstack.index.compressed.CompressedIndex` (``self``) for torch tensor queries,
    by the Triton kernels (1-bit Hamming codes, 8-bit PQ/OPQ codes, the rescoring tier by gather + dot); None where
    no kernel applies (the caller takes the CPU path)."""
    from rankstack import kernels

    mode = self._binary_mode(binary_search) if self._codec is not None else None
    has_kernel = (self.spec.kind in ("pq", "opq-pq") and self.spec.nbits == 8) or mode == "hamming"
    if not (kernels.use_triton(queries) and has_kernel):
        return None
    import torch

    do_rescore, fetch = self._plan(k, rescore, rescore_multiplier)
    q = queries.detach().to(torch.float32).contiguous()
    if not torch.isfinite(q).all():
        raise BadInput("query vectors contain NaN or infinite values")
    dev = device_state(self, q.device)
    block = min(1024, 1 << max(6, (int(dev["codes"].shape[0]) - 1).bit_length()))  # no wider than the codes
    extra = int(dev["dead"].numel())  # tombstoned rows are still in the codes: fetch past them
    if mode == "hamming":
        codes = _pack_signs(q - dev["mean"])
        dist, pos = kernels.hamming_topk(codes, dev["codes"], fetch + extra, block_n=block)
        scores = torch.where(pos >= 0, (self.dim - 2 * dist).to(torch.float32),
                             torch.full_like(dist, float("-inf"), dtype=torch.float32))
    else:
        scores, pos = kernels.pq_adc_topk(pq_lut(q, dev), dev["codes"], fetch + extra, block_n=block)
    slots = torch.where(pos >= 0, dev["slots"][pos.clamp(min=0)], torch.full_like(pos, -1))
    if extra:
        dead = torch.isin(slots, dev["dead"])
        scores = scores.masked_fill(dead, float("-inf"))
        slots = slots.masked_fill(dead, -1)
        keep = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :fetch]
        scores, slots = scores.gather(1, keep), slots.gather(1, keep)
    if do_rescore:
        exact = kernels.rescore(q, dev["vectors"], slots, scales=dev.get("vector_scales"))
        scores, slots = kernels.topk_by_score(exact, slots, k)
    return TopK(scores=scores[:, :k].cpu().numpy().astype(np.float32),
                ids=slots[:, :k].cpu().numpy().astype(np.int64))

def pq_lut(q, dev):
    """``[Q, M, 256]`` inner products of each query sub-vector with each sub-quantizer centroid (after the OPQ
    rotation for opq-pq)."""
    if "opq_a" in dev:
        q = q @ dev["opq_a"].T + dev["opq_b"]
    m, ksub, dsub = dev["centroids"].shape
    return (q.view(q.shape[0], m, 1, dsub) * dev["centroids"][None]).sum(-1)

def device_state(self, device) -> dict:
    """Codes, slot map, tables and rescoring tier as tensors on ``device``: built on first use and dropped when
    the index changes."""
    key = str(device)
    if key in self._device:
        return self._device[key]
    import torch

    faiss = require("faiss")
    st: dict = {"dead": torch.tensor(sorted(self._tombstones), dtype=torch.int64, device=device)}
    if self._codec is not None:
        st["codes"] = torch.from_numpy(np.ascontiguousarray(self._planes[:, 0])).to(device)
        st["slots"] = torch.from_numpy(self._pos_slot).to(device)
        st["mean"] = torch.from_numpy(self._codec.mean).to(device)
    else:
        pq_index = faiss_base(self._faiss)
        n = pq_index.ntotal
        st["codes"] = torch.from_numpy(faiss.vector_to_array(pq_index.codes).reshape(n, pq_index.code_size)).to(device)
        st["slots"] = torch.from_numpy(faiss.vector_to_array(self._faiss.id_map).astype(np.int64)).to(device)
        pq = pq_index.pq
        st["centroids"] = torch.from_numpy(
            faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub)).to(device)
        if self.spec.kind == "opq-pq":
            lt = faiss.downcast_VectorTransform(faiss.downcast_index(self._faiss.index).chain.at(0))
            st["opq_a"] = torch.from_numpy(faiss.vector_to_array(lt.A).reshape(lt.d_out, lt.d_in)).to(device)
            b = faiss.vector_to_array(lt.b) if lt.have_bias else np.zeros(lt.d_out, np.float32)
            st["opq_b"] = torch.from_numpy(b.astype(np.float32)).to(device)
    if self._store is not None:
        rows, scales = self._store.storage_rows(self._next_slot)
        st["vectors"] = torch.from_numpy(rows).to(device)
        if scales is not None:
            st["vector_scales"] = torch.from_numpy(scales).to(device)
    self._device[key] = st
    return st


def _pack_signs(x):
    """``x >= 0`` packed 8 dimensions per byte, most significant bit first (numpy ``packbits``' order): uint8
    ``[n, dim / 8]`` on ``x``'s device."""
    import torch

    bits = (x >= 0).to(torch.uint8).view(x.shape[0], -1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=x.device)
    return (bits * weights).sum(-1, dtype=torch.int32).to(torch.uint8)
