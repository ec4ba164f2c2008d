"""The MaxSim Triton kernel against its PyTorch reference and a brute-force loop: ragged and empty documents, padded
candidate rows, weighted and padded query tokens, float16 storage, odd sizes around the block edges. The wrapper
poisons its output with NaN, so a program that never writes its slot fails the comparison."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="the kernels need rankstack[kernels] (triton)")

from rankstack import kernels as K  # noqa: E402
from rankstack.errors import BadInput  # noqa: E402

DEVICE = "cuda" if os.environ.get("RANKSTACK_GPU") == "1" else "cpu"


def _case(seed: int, dim: int, lengths: list[int], lq: int, b: int, c: int):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor(lengths)
    off = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    tok = torch.nn.functional.normalize(torch.randn(int(lens.sum()), dim, generator=g), dim=-1)
    q = torch.randn(b, lq, dim, generator=g)
    w = torch.ones(b, lq)
    w[0, lq // 2:] = 0  # a padded query
    if b > 1:
        w[1, -1] = 0.37  # a weighted expansion token
    rows = torch.randint(-1, len(lengths), (b, c), generator=g)
    return q, w, tok, off, rows


def _brute(q, w, tok, off, rows):
    out = torch.full(rows.shape, float("-inf"))
    for i in range(rows.shape[0]):
        for j in range(rows.shape[1]):
            r = int(rows[i, j])
            if r < 0 or off[r + 1] == off[r]:
                continue
            s = q[i].double() @ tok[off[r]:off[r + 1]].double().T
            live = w[i] != 0
            out[i, j] = float((w[i][live].double() * s[live].max(1).values).sum())
    return out


@pytest.mark.parametrize("dim,lengths,lq,block_t", [
    (24, [5, 0, 17, 1, 40, 3], 7, 16),       # an empty document; spans shorter and longer than a block
    (33, [16, 32, 15, 0, 0, 64, 65], 13, 32),  # odd dimension; spans exactly on block edges
    (128, [1] * 9 + [200], 32, 64),           # ColBERT's dimension and query length
])
def test_maxsim_kernel_matches_reference_and_brute_force(dim, lengths, lq, block_t):
    q, w, tok, off, rows = _case(dim, dim, lengths, lq, b=3, c=11)
    ref = K.maxsim_ref(q, w, tok, off, rows)
    got = K.maxsim(q.to(DEVICE), w.to(DEVICE), tok.to(DEVICE), off.to(DEVICE), rows.to(DEVICE), block_t=block_t,
                   triton=True).cpu()
    brute = _brute(q, w, tok, off, rows)
    assert not torch.isnan(got).any(), "a program left its poisoned slot unwritten"
    assert torch.equal(torch.isinf(got), torch.isinf(brute)) and torch.equal(torch.isinf(ref), torch.isinf(brute))
    fin = torch.isfinite(brute)
    assert fin.any()
    torch.testing.assert_close(ref[fin], brute[fin], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(got[fin], brute[fin], atol=1e-4, rtol=1e-5)
    # -1 rows and empty documents are -inf, never a number that could outrank a real document
    empty = torch.tensor([[int(r) < 0 or lengths[int(r)] == 0 for r in row] for row in rows])
    assert torch.equal(torch.isinf(got), empty)


def test_maxsim_kernel_reads_float16_tokens():
    q, w, tok, off, rows = _case(5, 64, [3, 50, 7, 19], 9, b=2, c=6)
    ref = K.maxsim_ref(q, w, tok.half(), off, rows)  # the reference upcasts the same stored values
    got = K.maxsim(q.to(DEVICE), w.to(DEVICE), tok.half().to(DEVICE), off.to(DEVICE), rows.to(DEVICE),
                   triton=True).cpu()
    fin = torch.isfinite(ref)
    torch.testing.assert_close(got[fin], ref[fin], atol=1e-3, rtol=1e-4)


def test_maxsim_checks_its_inputs():
    q, w, tok, off, rows = _case(1, 16, [3, 4], 5, b=2, c=2)
    with pytest.raises(BadInput, match="dimension"):
        K.maxsim(q[:, :, :8], w, tok, off, rows)
    with pytest.raises(BadInput, match="out of range"):
        K.maxsim(q, w, tok, off, torch.tensor([[0, 2], [1, 0]]))
    with pytest.raises(BadInput, match="weights"):
        K.maxsim(q, w[:, :3], tok, off, rows)
