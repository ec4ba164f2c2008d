"""The BEIR/TREC evaluator: loaders, run and qrels I/O, metrics, significance tests, reports."""

from rankstack.eval.datasets import BeirDataset, TrecDl, load_beir, load_candidates_json, load_trec_dl
from rankstack.eval.metrics import DEFAULT_METRICS, EvalResult, evaluate
from rankstack.eval.report import Report, build_report
from rankstack.eval.significance import compare_per_query, paired_ttest, randomization_test
from rankstack.eval.trec import read_qrels, read_run, read_topics, write_qrels, write_run

__all__ = [
    "BeirDataset", "TrecDl", "load_beir", "load_candidates_json", "load_trec_dl",
    "DEFAULT_METRICS", "EvalResult", "evaluate", "Report", "build_report",
    "compare_per_query", "paired_ttest", "randomization_test",
    "read_qrels", "read_run", "read_topics", "write_qrels", "write_run",
]
