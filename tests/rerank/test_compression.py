"""Compressed LLM runtime: weight codes decode to within their quantization step of the float weights, layers equal
the dense matmul with the decoded weights, bytes are what the formats say, compressed checkpoints reload (and refuse
another model), the quantized KV cache round-trips within its step, and the ICR prompt order. Tiny config-built
models (plumbing, not quality)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from rankstack.errors import BadInput, RankStackError  # noqa: E402
from rankstack.rerank.factory import RerankerSpec  # noqa: E402
from rankstack.rerank.llm.icr import ICRReranker  # noqa: E402
from rankstack.rerank.llm.kvquant import KVScheme, QuantizedKV, dequantize_tensor, quantize_tensor  # noqa: E402
from rankstack.rerank.llm.quant import (Int4Linear, Int8Linear, compress_model, dequantize_int4,  # noqa: E402
                                        linear_weight_bytes, load_or_compress, quantize_int4)
from rankstack.rerank.llm.runtime import CausalLM  # noqa: E402
from rankstack.records import Candidate, Document, Query, Ranking  # noqa: E402
from tests.tiny_llm import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.mark.parametrize("group", [32, 64])
def test_int4_codes_are_within_half_a_step(group):
    torch.manual_seed(0)
    w = torch.randn(48, 128)
    w[3, 7] = 40.0  # an outlier that would stretch its group's range
    packed, scales, zeros, idx, vals = quantize_int4(w, group)
    assert packed.dtype == torch.uint8 and packed.shape == (48, 64) and scales.shape == (48, 128 // group)
    d = dequantize_int4(packed, scales, zeros, group=group, shape=w.shape)
    step = scales.float().repeat_interleave(group, dim=1)
    assert ((d - w).abs() <= step * 0.5 + step * 0.01 + 1e-3).all()
    # with outliers: the stretched group is kept exact where it matters and quantizes finer elsewhere
    p2, s2, z2, i2, v2 = quantize_int4(w, group, outliers=0.005)
    assert i2.numel() == round(0.005 * w.numel()) and 3 * 128 + 7 in i2.tolist()
    d2 = dequantize_int4(p2, s2, z2, i2, v2, group=group, shape=w.shape)
    assert d2[3, 7] == pytest.approx(40.0) and (d2 - w).abs()[3].max() < (d - w).abs()[3].max()


def test_constant_and_all_outlier_groups_decode_exactly():
    """A group whose kept weights are all equal has a zero range; its fp16 step once rounded to zero and the zero
    point became 0/0, so the layer decoded to NaN (SmolLM2's layer-1 down projection at 0.5% outliers)."""
    w = torch.randn(4, 64) * 0.01
    w[0, :32] = 0.25  # a constant group
    w[1, :32] = 0.0
    w[2, 32:] = torch.tensor([5.0] * 16 + [-5.0] * 16)  # the +5s go to outliers, leaving a constant group
    for outliers in (0.0, 0.13):
        packed, scales, zeros, idx, vals = quantize_int4(w, 32, outliers)
        d = dequantize_int4(packed, scales, zeros, idx, vals, group=32, shape=w.shape)
        assert torch.isfinite(d).all() and (scales.float() > 0).all()
        assert torch.equal(d[1, :32], w[1, :32]) and (d[0, :32] - 0.25).abs().max() < 1e-3
    assert set(range(2 * 64 + 32, 2 * 64 + 48)) <= set(idx.tolist())  # the +5s kept exactly
    assert (d[2, 32:] - w[2, 32:]).abs().max() < 2e-3
    kv = torch.zeros(1, 1, 64, 8)  # a constant KV block
    for bits in (4, 2):
        s = quantize_tensor(kv + 0.5, bits, dim=2, block=64)
        assert torch.equal(dequantize_tensor(s), kv + 0.5) and (s["scale"].float() > 0).all()


def test_weights_already_on_a_4bit_grid_come_back_unchanged():
    """A model converted from a 4-bit file (SmolLM2's Q4_1 GGUF: per 32 weights an fp16 step and minimum) re-finds
    its grid: the zero point is real-valued, and trimming outliers cannot move a group off a grid it already fits.
    With integer zero points (format 2) every such group moved by up to half a step."""
    torch.manual_seed(3)
    out, inp = 16, 128
    d = (torch.rand(out, inp // 32) * 0.01 + 0.001).half().float()
    m = (-torch.rand(out, inp // 32) * 0.1).half().float()
    q = torch.randint(0, 16, (out, inp // 32, 32)).float()
    q[..., 0], q[..., 1] = 0, 15  # each block spans its grid, as Q4_1's do
    w = (q * d[..., None] + m[..., None]).reshape(out, inp)
    for outliers in (0.0, 0.005):
        packed, scales, zeros, idx, vals = quantize_int4(w, 32, outliers)
        back = dequantize_int4(packed, scales, zeros, idx, vals, group=32, shape=w.shape)
        step = d.repeat_interleave(32, dim=1)
        assert ((back - w).abs() / step).max() < 0.02


def test_group_must_divide():
    with pytest.raises(BadInput, match="does not divide"):
        quantize_int4(torch.randn(4, 96), 64)


def test_layers_equal_dense_matmul_with_decoded_weights():
    torch.manual_seed(1)
    src = torch.nn.Linear(64, 32)
    x = torch.randn(5, 64)
    q8 = Int8Linear(src)
    ref8 = x @ (q8.qweight.float() * q8.scale[:, None]).T + src.bias
    torch.testing.assert_close(q8(x), ref8, rtol=1e-4, atol=1e-4)
    assert (q8.qweight.float() * q8.scale[:, None] - src.weight).abs().max() <= q8.scale.max() / 2 + 1e-6
    q4 = Int4Linear(src, 32, outliers=0.01)
    torch.testing.assert_close(q4(x), x @ q4.dequantized().T + src.bias, rtol=1e-5, atol=1e-5)
    assert q4.stored_bytes() == 32 * 32 + 2 * 2 * 32 * 2 + q4.outlier_idx.numel() * 6


@pytest.mark.parametrize("outliers", [0.0, 0.01])
def test_int4_generation_calls_use_the_fused_kernel_on_the_same_codes(tmp_path, outliers):
    """bf16 decoding-size inputs run PyTorch's fused int4 CPU kernel on a copy of the codes in its layout (the zero
    point moved to the float domain, the outliers added as a sparse correction): the product equals the decoded
    weights' (independent float32 reference) within bf16 rounding, the copy is counted in the layer's bytes, prefill
    inputs never make it, and a saved checkpoint leaves it out."""
    from rankstack.rerank.llm import quant

    torch.manual_seed(2)
    src = torch.nn.Linear(128, 96)
    q4 = Int4Linear(src, 32, outliers=outliers)
    before = q4.stored_bytes()
    prefill = torch.randn(quant.DECODE_ROWS + 1, 128).bfloat16()
    q4(prefill)
    assert q4.stored_bytes() == before and not hasattr(q4, "fused_codes")
    x = torch.randn(3, 1, 128).bfloat16()  # [batch, one new token, hidden]
    y = q4(x)
    assert hasattr(q4, "fused_codes") and y.shape == (3, 1, 96) and y.dtype == torch.bfloat16
    ref = x.float() @ q4.dequantized().T + src.bias
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 0.01, err
    # the fused path is really taken: without the outliers' correction the error would be far larger
    if outliers:
        plain = x.float() @ dequantize_int4(q4.packed, q4.scales, q4.zeros, group=32, shape=(96, 128)).T + src.bias
        assert (plain - ref).norm() / ref.norm() > 5 * err
    pack = q4.fused_codes.numel() * q4.fused_codes.element_size() + 2 * 2 * 96 * 4
    extra = q4.fused_outliers.numel() * 8 + q4.fused_outlier_delta.numel() * 2 if outliers else 0
    assert q4.stored_bytes() == before + pack + extra
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    load_or_compress(model, "int4-g32", tmp_path)
    with torch.no_grad():
        model.to(torch.bfloat16)(torch.tensor([tok.encode("a flea")])[:, :1])
    assert any(hasattr(m, "fused_codes") for m in model.modules())
    from safetensors import safe_open

    with safe_open(str(tmp_path / "weights-int4-g32.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if ".fused_" in k]


def test_model_bytes_reload_and_foreign_checkpoint(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    fp32 = linear_weight_bytes(model)
    stats = load_or_compress(model, "int4-g32-outliers", tmp_path)
    assert stats["layers"] == 3 * 7 and stats["fp32_linear_bytes"] == fp32 and stats["ratio"] < 0.2
    again = tiny_llama(len(tok))
    stats2 = load_or_compress(again, "int4-g32-outliers", tmp_path)
    assert stats2["loaded_from"] and stats2["linear_bytes"] == stats["linear_bytes"]
    ids = torch.tensor([tok.encode("the flea life cycle")])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, again(ids).logits)
    # a checkpoint of an older format is compressed again, not trusted
    from safetensors.torch import load_file, save_file
    path = tmp_path / "weights-int4-g32-outliers.safetensors"
    save_file(load_file(str(path)), str(path), metadata={"fingerprint": "x", "scheme": "int4-g32-outliers"})
    assert "loaded_from" not in load_or_compress(tiny_llama(len(tok)), "int4-g32-outliers", tmp_path)
    assert "loaded_from" in load_or_compress(tiny_llama(len(tok)), "int4-g32-outliers", tmp_path)
    other = tiny_llama(len(tok), seed=5)
    with pytest.raises(BadInput, match="another model"):
        load_or_compress(other, "int4-g32-outliers", tmp_path)
    shapes = [(m.out_features, m.in_features) for n, m in model.named_modules() if isinstance(m, Int4Linear)]
    want = sum(o * i + 4 * o for o, i in shapes) / sum(4 * o * i for o, i in shapes)  # int8 codes + fp32 scale/row
    assert compress_model(tiny_llama(len(tok)), "int8")["ratio"] == pytest.approx(want)
    with pytest.raises(BadInput, match="unknown weight compression"):
        compress_model(tiny_llama(len(tok)), "int3")


@pytest.mark.parametrize("bits", [4, 2])
def test_kv_codes_round_trip_within_a_step(bits):
    torch.manual_seed(2)
    k = torch.randn(1, 2, 150, 16)
    k[..., 5] *= 20  # a large channel, as keys have
    s = quantize_tensor(k, bits, dim=2, block=64)
    d = dequantize_tensor(s)
    step = s["scale"].float().max()
    assert d.shape == k.shape and (d - k).abs().max() <= step / 2 + 1e-3
    v = torch.randn(1, 2, 150, 16)
    sv = quantize_tensor(v, bits, dim=3)
    assert (dequantize_tensor(sv) - v).abs().max() <= sv["scale"].float().max() / 2 + 1e-3
    assert s["codes"].numel() == 2 * 192 * 16 * bits // 8  # 150 tokens padded to whole blocks of 64


def test_quantized_cache_between_passes():
    from transformers import DynamicCache

    torch.manual_seed(3)
    cache = DynamicCache()
    k, v = torch.randn(1, 2, 90, 16), torch.randn(1, 2, 90, 16)
    cache.update(k.clone(), v.clone(), 0)
    cache.crop(-20)  # as ICR does after its N/A pass: the cache becomes a strided view
    k, v = k[:, :, :70], v[:, :, :70]
    q = QuantizedKV(cache, KVScheme.parse("int4"))
    assert cache.layers[0].keys.shape[2] == 0
    # keys: 4-bit codes of 70 tokens padded to 2 blocks of 64, fp16 scale+zero per (head, channel, block), 0.5%
    # outliers (int32 index + fp16); values: codes, fp16 scale+zero per (head, token), 0.5% outliers
    keys = 2 * 128 * 16 // 2 + 2 * 16 * 2 * 4 + int(0.005 * 2 * 128 * 16) * 6
    values = 2 * 70 * 16 // 2 + 2 * 70 * 4 + int(0.005 * 2 * 70 * 16) * 6
    assert q.stored_bytes() == keys + values
    q.restore()
    assert cache.get_seq_length() == 70
    assert (cache.layers[0].keys - k).abs().max() < 0.5 and (cache.layers[0].values - v).abs().max() < 0.5
    with pytest.raises(BadInput, match="KV-cache"):
        KVScheme.parse("int8")


def test_icr_order_and_spec_options():
    from rankstack.rerank.llm.runtime import ForwardStats

    tok = tiny_tokenizer()
    llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    cands = [Candidate(docid=f"d{i}", score=1.0, document=Document(docid=f"d{i}", text=t))
             for i, t in enumerate(["cats dogs", "flea eggs larva", "pupa adult weeks"])]
    last = ICRReranker(llm, passage_tokens=8, keep_signals=True)
    first = ICRReranker(llm, passage_tokens=8, order="retriever-first", keep_signals=True)
    s_last = last.score_window("flea eggs", cands, ForwardStats())
    s_first = first.score_window("flea eggs", cands, ForwardStats())
    assert last.signals[0].docids == ["d2", "d1", "d0"] and first.signals[0].docids == ["d0", "d1", "d2"]
    # reversing the prompt by hand gives the retriever-last scores, mapped back to the input order
    torch.testing.assert_close(s_last, first.score_window("flea eggs", cands[::-1], ForwardStats()).flip(0))
    assert not torch.equal(s_last, s_first)
    # the KV cache kept between ICR's passes as int4 codes: scores move by little, not to something else
    q = CausalLM(llm.model, tokenizer=tok, kv="int4")
    s_q = ICRReranker(q, passage_tokens=8).score_window("flea eggs", cands, ForwardStats())
    torch.testing.assert_close(s_q, s_last, rtol=0.2, atol=0.05)
    with pytest.raises(BadInput, match="order must be"):
        ICRReranker(llm, order="best-first")
    spec = RerankerSpec.parse("icr:depth=20,weights=int4-g32,kv=int2,order=retriever-first")
    assert dict(spec.options) == {"weights": "int4-g32", "kv": "int2", "order": "retriever-first"}
    with pytest.raises(BadInput, match="unknown weight compression"):
        RerankerSpec.parse("first:weights=int5")
    with pytest.raises(BadInput, match="KV-cache"):
        RerankerSpec.parse("icr:kv=fp8")


def test_passage_block_prefill_equals_each_passage_run_alone():
    """Under the layout, a passage's keys and values are those of the prefix + that passage run alone at the same
    positions; FlexAttention (compiled) equals the boolean-mask SDPA reference; the query part sees everything."""
    from rankstack.rerank.llm.sparse_attention import PassageLayout

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok))
    llm = CausalLM(model, tokenizer=tok)
    prefix = llm.encode("Here are some paragraphs:")
    passages = [llm.encode(" [1] the flea life cycle is about weeks"), llm.encode(" [2] cats dogs eggs larva pupa"),
                llm.encode(" [3] adult")]
    query = llm.encode(" Query: flea eggs")
    ids, spans = list(prefix), []
    for p in passages:
        spans.append((len(ids), len(ids) + len(p)))
        ids += p
    start = len(ids)
    ids += query
    outs = {}
    for impl in ("flex", "flex-padded", "sdpa"):  # flex-padded: fixed-size kernels (the fallback when the
        # dynamic-shape kernel does not compile, as for Gemma-3 on CPU)
        layout = PassageLayout.from_spans(len(ids), spans, start, block=16, impl=impl)
        llm.reset_stats()
        logits, cache = llm.forward(ids, layout=layout)
        outs[impl] = (logits, [(lay.keys.clone(), lay.values.clone()) for lay in cache.layers], llm.reset_stats())
    torch.testing.assert_close(outs["flex"][0], outs["sdpa"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outs["flex-padded"][0], outs["sdpa"][0], rtol=1e-4, atol=1e-4)
    for (kf, vf), (ks, vs) in zip(outs["flex"][1], outs["sdpa"][1]):
        torch.testing.assert_close(kf, ks, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(vf, vs, rtol=1e-4, atol=1e-4)
    s, e = spans[1]
    alone = prefix + ids[s:e]
    pos = torch.tensor([list(range(len(prefix))) + list(range(s, e))])
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([alone]), position_ids=pos, use_cache=True)
    for lay, (k, v) in zip(ref.past_key_values.layers, outs["flex"][1]):
        torch.testing.assert_close(k[:, :, s:e], lay.keys[:, :, len(prefix):], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v[:, :, s:e], lay.values[:, :, len(prefix):], rtol=1e-4, atol=1e-5)
    dense, _ = llm.forward(ids)
    assert not torch.allclose(dense, outs["flex"][0], atol=1e-4)  # the passages did see each other before
    stats = outs["flex"][2]
    assert 0 < stats.attention_blocks <= stats.dense_blocks
    with pytest.raises(BadInput, match="attention must be"):
        ICRReranker(llm, attention="sliding")


def test_icr_attention_auto_is_passage_block_in_one_prompt_and_dense_in_windows():
    tok = tiny_tokenizer()
    llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    query = Query(qid="q", text="flea eggs")
    cands = tuple(Candidate(docid=f"d{i}", score=1.0 - i / 10, document=Document(docid=f"d{i}", text=t))
                  for i, t in enumerate(["cats dogs", "flea eggs larva", "pupa adult weeks", "the cycle of a flea"]))
    ranking = Ranking(query=query, candidates=cands)

    def run(**kw):
        return [(c.docid, c.score) for c in ICRReranker(llm, passage_tokens=8, keep_signals=True, **kw
                                                         ).rerank(ranking).candidates]

    def signals(**kw):
        r = ICRReranker(llm, passage_tokens=8, keep_signals=True, **kw)
        r.rerank(ranking)
        return torch.cat([s.query.flatten() for s in r.signals])

    # one prompt holds all four: auto is the passage-block prefill, which differs from dense attention
    torch.testing.assert_close(signals(), signals(attention="passage-block"))
    assert not torch.allclose(signals(), signals(attention="dense"))
    assert run() == run(attention="passage-block")
    # sliding windows of two: auto attends densely
    torch.testing.assert_close(signals(window=2, stride=1), signals(window=2, stride=1, attention="dense"))


def test_duo_heads_flex_equals_masked_reference_and_probe_follows():
    """Streaming heads see only the sink and the local window, in the prompt pass and in the query pass over the
    cache; the blocked computation equals the masked SDPA reference, and ICR's probe rows are the heads' own
    attention."""
    from rankstack.rerank.llm.runtime import AttentionProbe, ForwardStats
    from rankstack.rerank.llm.sparse_attention import HeadLayout

    tok = tiny_tokenizer()
    llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    ids = llm.encode("Here are some paragraphs: [1] the flea life cycle is about weeks [2] cats dogs eggs larva pupa "
                     "adult [3] output format ranking search relevance passages Query: flea eggs")
    full = frozenset({(0, 1), (2, 3)})
    res = {}
    for impl in ("blocks", "sdpa"):
        layout = HeadLayout(full, llm.num_heads, sink=2, window=8, block=4, impl=impl)
        llm.reset_stats()
        _, cache = llm.forward(ids[:-6], layout=layout)
        probe = AttentionProbe(query_positions=[len(ids) - 2, len(ids) - 1])
        logits, _ = llm.forward(ids[-6:], cache, probe=probe, layout=layout)
        res[impl] = (logits, probe.stacked(), llm.reset_stats())
    st = res["blocks"][2]
    assert 0 < st.attention_blocks < 0.6 * st.dense_blocks  # 10 of 12 heads stream: most (row, key) pairs skipped
    torch.testing.assert_close(res["blocks"][0], res["sdpa"][0], rtol=1e-4, atol=1e-4)
    rows = res["blocks"][1]  # [layers, heads, L]
    far = slice(2, len(ids) - 1 - 8)  # past the sink, before the window of the first probed row
    assert (rows[0, 0, far] == 0).all() and (rows[0, 1, far] > 0).all()  # streaming head 0.0, full head 0.1
    torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]), rtol=1e-5, atol=1e-5)
    llm.reset_stats()
    icr = ICRReranker(llm, passage_tokens=8, attention="duo", full_heads=[(0, 1), (2, 3)], window_tokens=8)
    cands = [Candidate(docid=f"d{i}", score=1.0, document=Document(docid=f"d{i}", text=t))
             for i, t in enumerate(["cats dogs", "flea eggs larva", "pupa adult weeks"])]
    icr.score_window("flea eggs", cands, ForwardStats())
    assert llm.reset_stats().attention_blocks > 0
    with pytest.raises(BadInput, match="needs full_heads"):
        ICRReranker(llm, attention="duo")
    spec = RerankerSpec.parse("icr:attention=duo,full_heads=18.7;18.8,window_tokens=64")
    assert dict(spec.options)["full_heads"] == ((18, 7), (18, 8))


def test_topk_rows_attend_to_their_selected_keys():
    """With a budget covering every key, top-k equals dense; with a small one, each query row's probe attention
    lives on at most budget + own-chunk keys and the scores stay finite; three passes per ICR window."""
    from rankstack.rerank.llm.runtime import ForwardStats

    tok = tiny_tokenizer()
    llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    cands = [Candidate(docid=f"d{i}", score=1.0, document=Document(docid=f"d{i}", text=t))
             for i, t in enumerate(["cats dogs eggs larva", "flea eggs larva pupa", "pupa adult weeks cycle"])]
    dense = ICRReranker(llm, passage_tokens=8).score_window("flea eggs", cands, ForwardStats())
    wide = ICRReranker(llm, passage_tokens=8, attention="topk", topk_tokens=10_000, topk_channels=4)
    torch.testing.assert_close(wide.score_window("flea eggs", cands, ForwardStats()), dense, rtol=1e-4, atol=1e-5)
    narrow = ICRReranker(llm, passage_tokens=8, attention="topk", topk_tokens=4, topk_channels=2,
                         keep_signals=True)
    llm.reset_stats()
    s = narrow.score_window("flea eggs", cands, ForwardStats())
    st = llm.reset_stats()
    assert torch.isfinite(s).all() and st.forward_passes == 3
    assert 0 < st.attention_blocks < st.dense_blocks
    sel = narrow.head_layout._selected[0][1]  # [H, R, L] kept keys of layer 0's query rows
    assert (sel.sum(-1) <= 4 + sel.shape[1]).all()
    with pytest.raises(BadInput, match="calibrated two-pass"):
        ICRReranker(llm, attention="topk", calibration="none")


def test_torchao_schemes_compute_with_their_own_codes_and_stay_near_float32(monkeypatch):
    pytest.importorskip("torchao", reason="needs rankstack[torchao]")
    from rankstack.rerank.llm.quant import TorchaoLinear

    torch.manual_seed(2)
    src = torch.nn.Linear(128, 64)
    x = torch.randn(7, 128)
    exact = src(x).detach()
    t8, q8 = TorchaoLinear(src, 8), Int8Linear(src)
    # the same per-channel symmetric int8 scheme as RankStack's own: outputs agree to rounding of a few codes
    torch.testing.assert_close(t8(x), q8(x), rtol=0, atol=2e-2 * exact.abs().max().item())
    assert t8.stored_bytes() <= 64 * 128 + 64 * 6  # codes + per-channel scale (and torchao's bookkeeping)
    for group in (32, 64):
        t4, q4 = TorchaoLinear(src, 4, group), Int4Linear(src, group)
        decoded = (t4(torch.eye(128)) - src.bias).T.detach()  # torchao's weights as its kernel decodes them
        w = src.weight.detach().reshape(64, -1, group)
        step = (w.amax(-1) - w.amin(-1)) / 15  # every decoded weight within half a 4-bit step (+ bf16 rounding)
        assert ((decoded.reshape(64, -1, group) - w).abs() <= step[..., None] / 2 + 4e-3).all()
        torch.testing.assert_close(t4(x), x.bfloat16().float() @ decoded.T + src.bias, rtol=0, atol=0.05)
        err_ao, err_ours = (t4(x) - exact).abs().mean(), (q4(x) - exact).abs().mean()
        assert err_ao < 2 * err_ours + 1e-3, (group, float(err_ao), float(err_ours))
        assert t4.stored_bytes() < 0.2 * 64 * 128 * 4
    tok = tiny_tokenizer()
    model, ref = tiny_llama(len(tok)), tiny_llama(len(tok))
    stats = compress_model(model, "int4-g32-torchao")
    assert stats["layers"] == 3 * 7 and stats["ratio"] < 0.2
    ids = torch.tensor([tok.encode("the flea life cycle")])
    with torch.no_grad():
        a, b = model(ids).logits.flatten(), ref(ids).logits.flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.98
    monkeypatch.setitem(__import__("sys").modules, "torchao.quantization", None)  # as if the extra were missing
    with pytest.raises(ImportError, match=r"rankstack\[torchao\]"):
        compress_model(tiny_llama(len(tok)), "int8-torchao")


def test_non_finite_logits_are_an_error_not_the_retriever_order():
    """A NaN weight made every ICR score NaN, and sorting NaNs kept the first-stage order without a word."""
    tok = tiny_tokenizer()
    llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    ids = tok.encode("the flea life cycle")
    assert torch.isfinite(llm.forward(ids)[0]).all()
    with torch.no_grad():
        llm.model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(RankStackError, match="non-finite logits"):
        llm.forward(ids)


def test_bf16_compute_keeps_compressed_parts_and_rope_in_their_precision():
    """``compute=bf16``: activations, norms, embeddings and the cache in bf16; int8 weights are scaled and int4
    groups decoded in float32 before the cast to bf16; RoPE frequencies stay float32. Logits stay close to
    the float32 model's (bf16 rounding only) and an unknown dtype is refused."""
    tok = tiny_tokenizer()
    ids = tok.encode("the flea life cycle has four stages in a warm house")
    ref = CausalLM(tiny_llama(len(tok)), tokenizer=tok)
    want, _ = ref.forward(ids)
    for weights in ("fp32", "int8", "int4-g32-outliers"):
        full = CausalLM(tiny_llama(len(tok)), tokenizer=tok, weights=weights)
        same, _ = full.forward(ids)
        llm = CausalLM(tiny_llama(len(tok)), tokenizer=tok, weights=weights, compute="bf16")
        logits, cache = llm.forward(ids)
        assert cache.layers[0].keys.dtype == torch.bfloat16 and logits.dtype == torch.float32
        assert llm.model.model.embed_tokens.weight.dtype == torch.bfloat16
        assert llm.model.model.rotary_emb.inv_freq.dtype == torch.float32
        assert llm.kv_bytes_per_token() == llm.kv_bytes_per_token("bf16") == ref.kv_bytes_per_token() / 2
        for m in llm.model.modules():
            if isinstance(m, Int8Linear):
                assert m.scale.dtype == torch.float32 and m.qweight.dtype == torch.int8
            if isinstance(m, Int4Linear):
                assert m.scales.dtype == torch.float16 and m.zeros.dtype == torch.float16
        cos = torch.nn.functional.cosine_similarity(logits, same, dim=0)
        assert cos > 0.999, (weights, float(cos))
        assert not torch.equal(logits, same)  # it did run in bf16
    # the compressed layers under bf16 inputs: the float32 computation up to one bf16 rounding of inputs and outputs
    torch.manual_seed(2)
    src = torch.nn.Linear(64, 32)
    x = torch.randn(40, 64).to(torch.bfloat16)
    for layer, weight in ((Int8Linear(src), None), (Int4Linear(src, 32, outliers=0.01), None)):
        weight = (layer.qweight.float() * layer.scale[:, None] if isinstance(layer, Int8Linear)
                  else layer.dequantized())
        want = x.float() @ weight.T + src.bias
        got = layer(x)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
    with pytest.raises(BadInput, match="unknown compute dtype 'fp8'; choose one of auto, fp32, bf16"):
        CausalLM(tiny_llama(len(tok)), tokenizer=tok, compute="fp8")
    with pytest.raises(BadInput, match="unknown compute dtype"):
        RerankerSpec.parse("icr:compute=fp16")
    assert dict(RerankerSpec.parse("first:compute=bf16,weights=int8").options) == {"compute": "bf16",
                                                                                   "weights": "int8"}
