"""Triton kernels against their PyTorch references on seeded data.

On CPU they run under TRITON_INTERPRET=1 (set in tests/conftest.py); with RANKSTACK_GPU=1 on a CUDA machine the
same tests run the compiled kernels. Sizes straddle block boundaries (block_n=64 here), ties are forced, and the
wrappers poison their outputs before each launch, so an unwritten block or slot changes the answer.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="the kernels need rankstack[kernels] (triton)")

from rankstack import kernels as K  # noqa: E402
from rankstack.errors import BadInput  # noqa: E402

DEVICE = "cuda" if os.environ.get("RANKSTACK_GPU") == "1" else "cpu"
SIZES = [1, 63, 64, 65, 64 * 3 + 17]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("k", [1, 10, 64, 100])
def test_hamming_topk_matches_reference_exactly(n, k):
    g = _gen(n * 1000 + k)
    nbytes = 6  # 48-bit codes: not a whole number of int32 words, and many distance ties
    codes = torch.randint(0, 256, (n, nbytes), dtype=torch.uint8, generator=g)
    q = torch.randint(0, 256, (3, nbytes), dtype=torch.uint8, generator=g)
    codes[n // 2] = q[0]  # an exact match at distance 0
    d_ref, r_ref = K.hamming_topk_ref(q, codes, k)
    d, r = K.hamming_topk(q.to(DEVICE), codes.to(DEVICE), k, block_n=64, triton=True)
    assert torch.equal(r.cpu(), r_ref) and torch.equal(d.cpu(), d_ref)
    assert d_ref[0, 0] == 0 and r_ref[0, 0] == n // 2
    if k > n:
        assert (r_ref[:, n:] == -1).all()


def test_hamming_reference_is_brute_force():
    """The reference itself against an unpacked bit-by-bit count with a stable sort."""
    g = _gen(7)
    codes = torch.randint(0, 256, (300, 32), dtype=torch.uint8, generator=g)
    q = torch.randint(0, 256, (4, 32), dtype=torch.uint8, generator=g)
    bits = lambda x: ((x[..., None] >> torch.arange(8)) & 1).flatten(-2)  # noqa: E731
    dist = (bits(q)[:, None, :] != bits(codes)[None, :, :]).sum(-1)
    order = torch.stack([torch.tensor(sorted(range(300), key=lambda j: (int(row[j]), j))) for row in dist])
    d, r = K.hamming_topk_ref(q, codes, 25)
    assert torch.equal(r, order[:, :25])
    assert torch.equal(d.long(), torch.gather(dist, 1, order[:, :25]))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("largest", [True, False])
def test_pq_adc_topk_matches_reference_exactly(n, largest):
    g = _gen(n)
    m = 6
    codes = torch.randint(0, 256, (n, m), dtype=torch.uint8, generator=g)
    lut = torch.randn(2, m, 256, generator=g)
    lut[1] = torch.randint(-3, 4, (m, 256), generator=g).float()  # integer table: forced score ties
    lut[0, :, :8] = -lut[0, :, :8].abs()  # negative partial sums exercise the float-to-key mapping
    for k in (1, 10, 64, 100):
        s_ref, r_ref = K.pq_adc_topk_ref(lut, codes, k, largest=largest)
        s, r = K.pq_adc_topk(lut.to(DEVICE), codes.to(DEVICE), k, largest=largest, block_n=64, triton=True)
        assert torch.equal(r.cpu(), r_ref)
        assert torch.equal(s.cpu().nan_to_num(-999.0), s_ref.nan_to_num(-999.0))  # bit-exact, same summation order


def test_pq_reference_is_brute_force():
    g = _gen(3)
    codes = torch.randint(0, 16, (200, 4), dtype=torch.uint8, generator=g)
    lut = torch.randint(-2, 3, (1, 4, 256), generator=g).float()
    full = sum(lut[0, j, codes[:, j].long()] for j in range(4))
    order = sorted(range(200), key=lambda i: (-float(full[i]), i))[:30]
    s, r = K.pq_adc_topk_ref(lut, codes, 30)
    assert r[0].tolist() == order and s[0].tolist() == [float(full[i]) for i in order]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rescore_matches_reference(dtype):
    g = _gen(11)
    n, d = 500, 100  # d not a multiple of block_d=64; C=130 straddles block_c=64
    vectors = torch.randn(n, d, generator=g).to(dtype)
    q = torch.randn(3, d, generator=g)
    ids = torch.randint(0, n, (3, 130), generator=g)
    ids[1, 5] = -1
    ref = K.rescore_ref(q, vectors, ids)
    got = K.rescore(q.to(DEVICE), vectors.to(DEVICE), ids.to(DEVICE), block_c=64, block_d=64, triton=True).cpu()
    assert torch.isinf(got[1, 5]) and got[1, 5] < 0
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # stated tolerance: summation order differs
    exact = (vectors[ids.clamp(min=0)].double() * q.double()[:, None, :]).sum(-1)
    assert torch.allclose(ref[ids >= 0].double(), exact[ids >= 0], atol=1e-4)


def test_kernel_input_errors():
    c = torch.zeros((10, 8), dtype=torch.uint8)
    with pytest.raises(BadInput, match="code sizes differ"):
        K.hamming_topk(torch.zeros((1, 4), dtype=torch.uint8), c, 3)
    with pytest.raises(BadInput, match="uint8"):
        K.hamming_topk(torch.zeros((1, 8), dtype=torch.int32), c, 3)
    with pytest.raises(BadInput, match="k must be"):
        K.pq_adc_topk(torch.zeros((1, 8, 256)), c, 0)
    with pytest.raises(BadInput, match="out of range"):
        K.rescore(torch.zeros((1, 4)), torch.zeros((5, 4)), torch.tensor([[7]]))


def test_order_keys_invert_bit_exactly_and_sort_like_the_floats():
    g = _gen(5)
    x = torch.cat([torch.randn(1000, generator=g) * 1e3, torch.tensor([0.0, -0.0, float("inf"), float("-inf"),
                                                                       1e-38, -1e-38])])
    for largest in (True, False):
        keys = K.float_order_key(x, largest)
        back = K.key_to_float(keys, largest)
        assert torch.equal(back.view(torch.int32), x.view(torch.int32))  # every bit, signed zeros included
        order = torch.argsort(keys, stable=True)
        assert torch.equal(x[order], torch.sort(x, descending=largest, stable=True).values)


def test_pq_kernel_returns_its_own_sums():
    """The scores come from the kernel's sort keys, not from a recomputation: a table whose sums are exact in
    float32 must come back bit for bit, and every returned score must be the table sum of its row's code."""
    g = _gen(9)
    codes = torch.randint(0, 256, (150, 4), dtype=torch.uint8, generator=g)
    lut = (torch.randint(-1000, 1000, (2, 4, 256), generator=g).float() / 64)  # exact binary fractions
    s, r = K.pq_adc_topk(lut.to(DEVICE), codes.to(DEVICE), 20, block_n=64, triton=True)
    full = sum(lut[:, j, codes[:, j].long()] for j in range(4))  # [2, 150]
    assert torch.equal(s.cpu(), torch.gather(full, 1, r.cpu()))
    assert torch.equal(s.cpu(), torch.sort(full, dim=1, descending=True).values[:, :20])


def test_rescore_int8_rows_with_scales():
    g = _gen(13)
    n, d = 300, 72
    x = torch.randn(n, d, generator=g)
    scales = x.abs().amax(1) / 127
    rows = torch.round(x / scales[:, None]).clamp(-127, 127).to(torch.int8)
    q = torch.randn(2, d, generator=g)
    ids = torch.randint(0, n, (2, 70), generator=g)
    ids[0, 3] = -1
    got = K.rescore(q.to(DEVICE), rows.to(DEVICE), ids.to(DEVICE), scales=scales.to(DEVICE), block_c=32,
                    block_d=32, triton=True).cpu()
    exact = ((rows.double() * scales.double()[:, None])[ids.clamp(min=0)] * q.double()[:, None, :]).sum(-1)
    assert torch.isinf(got[0, 3]) and got[0, 3] < 0
    ok = ids >= 0
    torch.testing.assert_close(got[ok].double(), exact[ok], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got, K.rescore_ref(q, rows, ids, scales), rtol=1e-5, atol=1e-5)
    with pytest.raises(BadInput, match="scales must be"):
        K.rescore(q, rows, ids, scales=scales[:5])


def test_topk_by_score_breaks_ties_by_id_and_puts_missing_last():
    scores = torch.tensor([[1.0, 3.0, 3.0, float("-inf"), 2.0], [0.5, 0.5, 0.5, 0.5, 0.5]])
    ids = torch.tensor([[10, 7, 4, 2, -1], [9, 8, 7, -1, 6]])
    s, i = K.topk_by_score(scores, ids, 6)
    assert i.tolist() == [[4, 7, 10, 2, -1, -1], [6, 7, 8, 9, -1, -1]]
    assert s[0, :3].tolist() == [3.0, 3.0, 1.0] and torch.isinf(s[0, 4:]).all()


# ---- int4 group-wise matmul -------------------------------------------------------------------------------------

@pytest.mark.parametrize("m,n,k,group", [(1, 40, 64, 32), (3, 70, 128, 64), (17, 64, 256, 128), (1, 5, 64, 64),
                                         (33, 129, 96, 32)])
def test_int4_matmul_kernel_matches_reference(m, n, k, group):
    from rankstack.kernels import int4_matmul, int4_matmul_ref
    from rankstack.rerank.llm.quant import quantize_int4

    torch.manual_seed(m * 7 + n)
    w = torch.randn(n, k)
    packed, scales, zeros, _, _ = quantize_int4(w, group)
    x = torch.randn(m, k)
    got = int4_matmul(x, packed, scales, zeros, group, triton=True)
    want = int4_matmul_ref(x, packed, scales, zeros, group)
    assert not torch.isnan(got).any()  # the output starts NaN-poisoned: every entry was written
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # and the reference is the dense matmul with the decoded weight, close to the float weight's
    assert (want - x @ w.T).abs().max() < 0.15 * (x @ w.T).abs().max()


def test_int4_matmul_checks_shapes():
    from rankstack.kernels import int4_matmul
    from rankstack.rerank.llm.quant import quantize_int4

    packed, scales, zeros, _, _ = quantize_int4(torch.randn(8, 64), 32)
    with pytest.raises(BadInput, match="input dimension"):
        int4_matmul(torch.randn(2, 32), packed, scales, zeros, 32)
    with pytest.raises(BadInput, match="scales/zeros"):
        int4_matmul(torch.randn(2, 64), packed, scales, zeros, 64)


# ---- fused ICR attention rows ----------------------------------------------------------------------------------

@pytest.mark.parametrize("h,hkv,r,length,d,window", [(4, 2, 3, 50, 16, None), (2, 2, 1, 130, 32, None),
                                                      (6, 3, 17, 97, 16, 40), (2, 1, 5, 5, 16, None)])
def test_attention_rows_kernel_matches_reference(h, hkv, r, length, d, window):
    from rankstack.kernels import attention_rows, attention_rows_ref

    torch.manual_seed(length + r)
    q = torch.randn(h, r, d)
    k = torch.randn(hkv, length, d)
    qpos = torch.arange(length - r, length)  # the last r tokens, as ICR's query part
    qpos[0] = max(0, length - r - 7)  # one row earlier in the sequence: its causal edge cuts the keys after it
    got = attention_rows(q, k, qpos, d ** -0.5, window=window, triton=True)
    want = attention_rows_ref(q, k, qpos, d ** -0.5, window=window)
    assert not torch.isnan(got).any()  # poisoned output, every key written
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got.sum(-1), torch.ones(h), rtol=1e-4, atol=1e-4)  # each row's mass sums to 1
    assert (got[:, int(qpos.max()) + 1:] == 0).all()  # nothing after the last row (causal edge)
    spans = [(0, 3), (3, 3), (3, length // 2)]  # an empty span sums to 0
    csum = torch.nn.functional.pad(got.cumsum(-1), (1, 0))
    sums = torch.stack([csum[:, e] - csum[:, s] for s, e in spans], -1)
    assert (sums[:, 1] == 0).all() and torch.allclose(sums[:, 0], want[:, :3].sum(-1), atol=1e-5)


def test_attention_rows_checks_shapes():
    from rankstack.kernels import attention_rows

    with pytest.raises(BadInput, match="Hkv dividing H"):
        attention_rows(torch.randn(3, 2, 8), torch.randn(2, 10, 8), torch.tensor([8, 9]), 1.0)
    with pytest.raises(BadInput, match="one position per query row"):
        attention_rows(torch.randn(2, 2, 8), torch.randn(2, 10, 8), torch.tensor([9]), 1.0)
