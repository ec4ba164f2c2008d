"""Cross-encoder reranking with a config-built tiny BERT (no offline cross-encoder checkpoint exists: this checks
batching, ordering and plumbing against the model's own forward pass, never quality)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sentence_transformers")

from rankstack.errors import BadInput  # noqa: E402
from rankstack.records import Candidate, Document, Query, Ranking  # noqa: E402
from rankstack.rerank.cross_encoder import CrossEncoderReranker  # noqa: E402

WORDS = "the flea life cycle is about weeks cats dogs eggs larva pupa adult how long".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    d = tmp_path_factory.mktemp("tiny-ce")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=1, max_position_embeddings=128)
    BertForSequenceClassification(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _ranking(qid, texts):
    return Ranking(query=Query(qid=qid, text="how long is the flea life cycle"), candidates=tuple(
        Candidate(docid=f"{qid}-{i}", score=float(-i), document=Document(docid=f"{qid}-{i}", text=t))
        for i, t in enumerate(texts)))


def test_scores_equal_the_models_forward_and_order_by_them(model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["flea eggs larva pupa adult", "cats dogs", "the life cycle is about weeks", "adult flea", "dogs"]
    rankings = [_ranking("a", texts), _ranking("b", texts[::-1])]
    ce = CrossEncoderReranker(str(model_dir), batch_size=3, max_length=64)
    from rankstack.pipeline import Given, Pipeline, Rerank

    # through the rerank stage at depth 4: the fifth candidate is the tail
    out = Pipeline(Given(rankings), [Rerank(ce, depth=4)]).run([r.query for r in rankings], 5).rankings
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    for r, o in zip(rankings, out):
        head = r.candidates[:4]
        enc = tok([r.query.text] * 4, [c.document.text for c in head], return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**enc).logits[:, 0]
        want = torch.sigmoid(logits)  # CrossEncoder's default activation for one label
        by_id = {c.docid: c.score for c in o.candidates}
        torch.testing.assert_close(torch.tensor([by_id[c.docid] for c in head]), want, rtol=1e-4, atol=1e-5)
        # the project's order: score descending, ties by docid descending (what trec_eval scores)
        assert o.docids[:4] == [head[i].docid for i in sorted(range(4), key=lambda i: (float(by_id[head[i].docid]),
                                                                                      head[i].docid), reverse=True)]
        assert o.docids[4] == r.candidates[4].docid and o.candidates[4].score < o.candidates[3].score


def test_bad_input(model_dir, tmp_path):
    ce = CrossEncoderReranker(str(model_dir))
    with pytest.raises(BadInput, match="no candidates"):
        ce.rerank(Ranking(query=Query(qid="q", text="x"), candidates=()))
    with pytest.raises(BadInput, match="no document text"):
        ce.rerank(Ranking(query=Query(qid="q", text="x"), candidates=(Candidate(docid="a", score=1.0),)))
    with pytest.raises(BadInput, match="batch_size"):
        CrossEncoderReranker(ce.model, batch_size=0)
