"""The LLM runtime: attention rows rebuilt under SDPA equal eager attention, with and without a KV cache."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.rerank.llm.runtime import AttentionProbe, CausalLM, resolve_llm  # noqa: E402
from tests.tiny_llm import tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_probe_rows_equal_eager_attention(tok):
    model = tiny_llama(len(tok))
    eager = tiny_llama(len(tok), attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    llm = CausalLM(model, tokenizer=tok)
    ids = llm.encode("Here are some paragraphs: [1] the flea life cycle is about weeks Query: flea eggs larva")
    positions = [len(ids) - 4, len(ids) - 2, len(ids) - 1]
    probe = AttentionProbe(query_positions=positions)
    logits, _ = llm.forward(ids, probe=probe)
    with torch.no_grad():
        ref = eager(torch.tensor([ids]), output_attentions=True)
    want = torch.stack([a[0][:, positions, :].mean(dim=1) for a in ref.attentions])  # [layers, heads, L]
    torch.testing.assert_close(probe.stacked(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ref.logits[0, -1], rtol=1e-4, atol=1e-4)  # SDPA main pass agrees too
    # the same rows when the prefix comes from the KV cache and only the tail is run
    _, cache = llm.forward(ids[:10])
    probe2 = AttentionProbe(query_positions=positions)
    llm.forward(ids[10:], cache, probe=probe2)
    torch.testing.assert_close(probe2.stacked(), want, rtol=1e-5, atol=1e-6)
    spans = [(0, 5), (5, 12)]
    torch.testing.assert_close(probe.span_sums(spans)[..., 1], want[..., 5:12].sum(-1), rtol=1e-5, atol=1e-6)
    assert llm.stats.forward_passes == 3


def test_generate_equals_transformers_greedy_decoding_and_counts_passes(tok):
    model = tiny_llama(len(tok), seed=3)
    llm = CausalLM(model, tokenizer=tok, max_context=64)
    ids = llm.encode("the flea life cycle")
    text = llm.generate(ids, 8)
    g = llm.stats.generated_tokens
    # the independent baseline: Hugging Face's greedy generate, without a cache, stopping at the same EOS ids
    eos = sorted({tok.eos_token_id} | {model.generation_config.eos_token_id})
    with torch.no_grad():
        new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, use_cache=False,
                             eos_token_id=eos, pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
    ref = new[:next((i for i, t in enumerate(new) if t in eos), len(new))]  # up to the first EOS
    assert g == len(ref) > 0 and text == tok.decode(ref, skip_special_tokens=True)
    # one prefill, then one pass per token fed back (the last token is never fed back)
    assert llm.stats.forward_passes == (g if g == 8 else g + 1)
    with pytest.raises(BadInput, match="exceed the model's context of 64"):
        llm.forward(list(range(5, 70)))


def test_unknown_model_names_say_what_to_use(tmp_path):
    with pytest.raises(BadInput, match="unknown model 'nonsense'.*smollm2"):
        resolve_llm("nonsense")
    with pytest.raises(BadInput, match="no config.json"):
        resolve_llm(str(tmp_path))
    assert resolve_llm("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # online users keep HF names


def test_probe_rows_respect_sliding_window_layers(tok):
    """Local-attention layers (Gemma 3 style) see only the last `sliding_window` keys; rebuilt rows must too."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=6,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512)
    model = Gemma3ForCausalLM(cfg).eval()
    eager = Gemma3ForCausalLM(Gemma3TextConfig(**{**cfg.to_dict(), "_attn_implementation": "eager"})).eval()
    eager.load_state_dict(model.state_dict())
    eager.config._attn_implementation = "eager"
    llm = CausalLM(model, tokenizer=tok)
    ids = llm.encode("the flea life cycle is about weeks cats dogs eggs larva pupa adult")
    positions = [len(ids) - 3, len(ids) - 1]
    probe = AttentionProbe(query_positions=positions)
    llm.forward(ids, probe=probe)
    with torch.no_grad():
        ref = eager(torch.tensor([ids]), output_attentions=True)
    want = torch.stack([a[0][:, positions, :].mean(dim=1) for a in ref.attentions])
    assert float(want[0, :, : len(ids) - 8].abs().max()) == 0.0  # the local layer really is windowed
    torch.testing.assert_close(probe.stacked(), want, rtol=1e-5, atol=1e-6)
