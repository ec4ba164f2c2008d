"""How many queries of a TREC DL folder would fall back (passages cut further, or windows) under ICR's exact-count
fitting, without running the model: the decision depends only on the tokenizer, the context and the texts.

    python benchmarks/context_fallbacks.py --trec-dl ../shared/data/trec-dl/dl19 [--model smollm2] [--depth 100]
        [--passage-tokens 100]
    python benchmarks/context_fallbacks.py --beir ../shared/data/beir/scifact   # over its BM25 top-100

Prints, per query, what the fitting decides (``ICRReranker.layout``: one prompt / shrunk / windows) and the
passages' token count, then the counts. The model's weights are not loaded: a tiny Llama with
the model's vocabulary stands in for them (its context set to the model's)."""

from __future__ import annotations

import argparse
import logging
import sys

from rankstack.eval.datasets import load_trec_dl
from rankstack.rerank.llm import ICRReranker
from rankstack.rerank.llm.runtime import CausalLM, resolve_llm

logger = logging.getLogger("context_fallbacks")


def stand_in(model: str, context: int) -> CausalLM:
    """The offline model's tokenizer over a tiny Llama with its vocabulary (no weights loaded)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(resolve_llm(model))  # (converted from the offline GGUF once, then cached)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context)
    return CausalLM(LlamaForCausalLM(cfg).eval(), tokenizer=tok, compute="fp32")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--trec-dl", help="a TREC DL folder (its BM25 top-100 with passage texts)")
    src.add_argument("--beir", help="a BEIR folder: the candidates are BM25's top --depth for its test queries")
    ap.add_argument("--year", default=None)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--context", type=int, default=8192, help="the model's context (SmolLM2: 8192)")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--passage-tokens", type=int, default=100)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.trec_dl:
        dl = load_trec_dl(args.trec_dl, args.year)
        name, rankings = f"{dl.year}", dl.candidates
    else:
        import tempfile

        from rankstack.eval.datasets import load_beir
        from rankstack.pipeline import DatasetWorkspace, compile_pipeline

        ds = load_beir(args.beir)
        with tempfile.TemporaryDirectory() as root:
            pipe = compile_pipeline("bm25", DatasetWorkspace(ds, root))
            rankings = pipe.run(list(ds.queries.values()), args.depth, with_documents=True).rankings
        name = f"{ds.name} (BM25 top {args.depth})"
    icr = ICRReranker(stand_in(args.model, args.context), passage_tokens=args.passage_tokens)
    counts = {"one prompt": 0, "shrunk": 0, "windows": 0}
    for r in rankings:
        verdict, built = icr.layout(r.query.text, list(r.top(args.depth).candidates))
        counts[verdict] += 1
        logger.info("%s: %s (the passages' part: %s tokens)", r.query.qid, verdict, len(built[0]) if built else "-")
    sys.stdout.write(f"{name}, {len(rankings)} queries, depth {args.depth}, context {args.context}: {counts}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
