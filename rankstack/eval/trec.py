"""TREC run and qrels files: ``qid Q0 docid rank score tag`` and ``qid 0 docid rel``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from rankstack.errors import DatasetError
from rankstack.records import Qrels, Query, Run

__all__ = ["read_run", "write_run", "read_qrels", "write_qrels", "read_topics"]


def _lines(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield lineno, line


def read_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read a 6-column TREC run. The rank column is ignored, as trec_eval ignores it."""
    path = Path(path)
    scores: dict[str, dict[str, float]] = {}
    tag = None
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DatasetError(
                f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}: {line[:80]!r}"
            )
        qid, _, docid, _, score, tag = parts
        try:
            scores.setdefault(qid, {})[docid] = float(score)
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: score {score!r} is not a number") from None
    return Run(scores=scores, name=name or tag or path.stem)


def write_run(run: Run, path: str | os.PathLike, *, k: int | None = None) -> Path:
    """Write ``run`` with ranks from 1 in trec_eval order (score desc, docid desc). Atomic.

    Scores are written in full precision (the shortest text that reads back as the same float), so trec_eval sees
    the ties and the order we evaluated, and a run read back equals the run written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = run.name.replace(" ", "_") or "rankstack"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for qid in run.qids:
            for rank, (docid, score) in enumerate(run.ranked(qid)[:k], 1):
                fh.write(f"{qid} Q0 {docid} {rank} {float(score)!r} {tag}\n")
    os.replace(tmp, path)
    return path


def read_qrels(path: str | os.PathLike) -> Qrels:
    """Read TREC qrels (``qid iter docid rel``) or BEIR TSV qrels (``query-id corpus-id score`` with a header)."""
    path = Path(path)
    judgments: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path):
        parts = line.split()
        if lineno == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        if len(parts) == 4:
            qid, _, docid, rel = parts
        elif len(parts) == 3:
            qid, docid, rel = parts
        else:
            raise DatasetError(
                f"{path}:{lineno}: expected 'qid 0 docid rel' or 'qid docid rel', got {len(parts)} columns: {line[:80]!r}"
            )
        try:
            judgments.setdefault(qid, {})[docid] = int(float(rel))
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: relevance {rel!r} is not an integer") from None
    if not judgments:
        raise DatasetError(f"{path}: no judgments found")
    return Qrels(judgments=judgments)


def write_qrels(qrels: Qrels, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for qid, docs in qrels.judgments.items():
            for docid, rel in docs.items():
                fh.write(f"{qid} 0 {docid} {rel}\n")
    return path


def read_topics(path: str | os.PathLike) -> dict[str, Query]:
    """Read a TSV topics file (``qid<TAB>text``), as TREC DL distributes them."""
    path = Path(path)
    topics: dict[str, Query] = {}
    for lineno, line in _lines(path):
        parts = line.split("\t", 1)
        if len(parts) != 2 or not parts[1].strip():
            raise DatasetError(f"{path}:{lineno}: expected 'qid<TAB>query text', got {line[:80]!r}")
        topics[parts[0].strip()] = Query(qid=parts[0].strip(), text=parts[1].strip())
    return topics


def filter_run(run: Run, qids: Mapping[str, object] | list[str]) -> Run:
    keep = set(qids)
    return Run(scores={q: s for q, s in run.scores.items() if q in keep}, name=run.name)
