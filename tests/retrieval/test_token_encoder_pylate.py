"""Loading a checkpoint in PyLate's format with our own stack. There is no ColBERT checkpoint offline, so the test
writes one from a config (a 2-layer BERT with random weights, MiniLM's tokenizer plus the [Q]/[D] markers, a Dense
projection to 16 dimensions): plumbing only, never quality. Every output is checked against the same computation
done by hand here: markers after [CLS], [MASK] query augmentation not attended to, the punctuation skiplist on
documents, the projection, L2 normalisation."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch

from rankstack.records import Document
from rankstack.retrieval.token_encoders import TokenEncoder, load_token_model


@pytest.fixture(scope="module")
def pylate_dir(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rankstack.retrieval.encoders import resolve_model

    root = tmp_path_factory.mktemp("pylate-tiny")
    tok = AutoTokenizer.from_pretrained(resolve_model("sentence-transformers/all-MiniLM-L6-v2"))
    tok.add_tokens(["[Q]", "[D]"])
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128)).eval()
    model.save_pretrained(root)
    tok.save_pretrained(root)
    (root / "1_Dense").mkdir()
    lin = torch.nn.Linear(32, 16, bias=False)
    save_file({"linear.weight": lin.weight.detach().contiguous()}, str(root / "1_Dense" / "model.safetensors"))
    (root / "1_Dense" / "config.json").write_text(json.dumps(
        {"in_features": 32, "out_features": 16, "bias": False,
         "activation_function": "torch.nn.modules.linear.Identity"}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]))
    (root / "config_sentence_transformers.json").write_text(json.dumps(
        {"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 12, "document_length": 24,
         "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation),
         "do_query_expansion": True}))
    return root, model, lin, tok


def _by_hand(model, lin, ids, attn):
    with torch.inference_mode():
        h = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([attn])).last_hidden_state[0]
        return torch.nn.functional.normalize(lin(h), dim=-1).numpy()


def test_pylate_format_queries_and_documents(pylate_dir):
    root, model, lin, tok = pylate_dir
    m = load_token_model(str(root))
    assert (m.query_prefix, m.document_prefix, m.query_length, m.document_length) == ("[Q] ", "[D] ", 12, 24)
    assert m.expansion and not m.attend_to_expansion_tokens and len(m.projections) == 1 and m.dim == 16
    enc = TokenEncoder(str(root), loaded=m)
    q = enc.encode_queries(["cats purr"])[0]
    body = tok("cats purr")["input_ids"]  # [CLS] cats purr [SEP]
    ids = body[:1] + [tok.convert_tokens_to_ids("[Q]")] + body[1:]
    n = len(ids)
    ids += [tok.mask_token_id] * (12 - n)
    want = _by_hand(model, lin, ids, [1] * n + [0] * (12 - n))
    assert q.shape == (12, 16)  # expansion tokens kept
    np.testing.assert_allclose(q, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)

    doc = Document(docid="d", title="Cats", text="Cats purr, loudly; always!")
    out = enc.encode_documents([doc])
    body = tok(doc.contents)["input_ids"]
    ids = body[:1] + [tok.convert_tokens_to_ids("[D]")] + body[1:]
    full = _by_hand(model, lin, ids, [1] * len(ids))
    keep = [i for i, t in enumerate(ids) if tok.convert_ids_to_tokens(t) not in set(string.punctuation)]
    assert len(keep) == len(ids) - 3  # ',', ';' and '!' skipped
    np.testing.assert_allclose(out.vectors, full[keep], atol=1e-5)
    assert list(out.token_ids) == [ids[i] for i in keep] and out.truncated == 0

    long = enc.encode_documents([Document(docid="l", text="word " * 100)])
    assert long.truncated == 1 and long.lengths[0] == 24
