"""Config-built tiny models for reranker plumbing tests (random weights: never a quality number)."""

from __future__ import annotations

import torch

CORPUS = [
    "Here are some paragraphs: [1] [2] [3] Please find information that are relevant to the following query "
    "in the paragraphs above. Query: N/A Passage [A] [B] [C] [D] [E] [F] [G] [H] [I] [J] [K] [L] [M] [N] [O] [P] "
    "[Q] [R] [S] [T] > output format ranking search relevance passages identifier brackets respond word explain "
    "<think> </think> <answer> </answer> the flea life cycle is about weeks cats dogs eggs larva pupa adult",
] * 20

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<eos>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    fast.chat_template = TEMPLATE
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**{"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
                         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096, **kw})
    return LlamaForCausalLM(cfg).eval()


def save_tiny_llm(folder, seed: int = 0):
    """A tiny Llama and its tokenizer saved as a local model folder (what ``CausalLM(path)`` loads)."""
    tok = tiny_tokenizer()
    tiny_llama(len(tok), seed=seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
