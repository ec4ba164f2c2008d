"""Dataset loaders: BEIR (local folder, official zip URL, Hugging Face), TREC topics/qrels, candidate lists."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from tqdm.auto import tqdm

from rankstack._atomic import atomic_dir
from rankstack._progress import progress_enabled
from rankstack.errors import DatasetError
from rankstack.eval.trec import read_qrels, read_topics
from rankstack.records import Candidate, Document, Qrels, Query, Ranking

logger = logging.getLogger(__name__)

__all__ = [
    "BeirDataset",
    "load_beir",
    "read_corpus",
    "read_queries",
    "download_beir",
    "load_candidates_json",
    "TrecDl",
    "load_trec_dl",
    "trec_dl_year",
    "BEIR_URL",
]

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# md5 of the official zips we could verify; other datasets are accepted with their md5 logged.
BEIR_MD5 = {"nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d"}
BEIR_NAMES = (
    "msmarco", "trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020",
    "cqadupstack", "quora", "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact",
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("RANKSTACK_CACHE", Path.home() / ".cache" / "rankstack"))


@dataclass(frozen=True, kw_only=True)
class BeirDataset:
    """A BEIR dataset: the corpus, the queries judged in ``split``, and that split's qrels."""

    name: str
    split: str
    corpus: Mapping[str, Document]
    queries: Mapping[str, Query]
    qrels: Qrels
    path: Path | None = None

    def __repr__(self) -> str:
        return (f"BeirDataset(name={self.name!r}, split={self.split!r}, docs={len(self.corpus)}, "
                f"queries={len(self.queries)}, qrels={sum(len(v) for v in self.qrels.judgments.values())})")


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (a BEIR folder holds corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise DatasetError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _field(path: Path, lineno: int, obj: dict, key: str, alt: str | None = None) -> str:
    val = obj.get(key, obj.get(alt) if alt else None)
    if val is None:
        raise DatasetError(f"{path}:{lineno}: missing field {key!r} (keys present: {sorted(obj)})")
    return str(val)


def read_corpus(path: str | os.PathLike, *, show_progress: bool | None = None) -> dict[str, Document]:
    """Read a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``, optional ``metadata``)."""
    path = Path(path)
    corpus: dict[str, Document] = {}
    for lineno, obj in tqdm(_jsonl(path), desc=f"read {path.parent.name}/corpus", unit=" docs",
                            disable=not progress_enabled(show_progress)):
        docid = _field(path, lineno, obj, "_id", "id")
        if docid in corpus:
            raise DatasetError(f"{path}:{lineno}: duplicate docid {docid!r}")
        meta = obj.get("metadata") or {}
        corpus[docid] = Document(docid=docid, title=str(obj.get("title") or ""),
                                 text=_field(path, lineno, obj, "text"), metadata=meta if isinstance(meta, dict) else {})
    if not corpus:
        raise DatasetError(f"{path}: corpus is empty")
    return corpus


def read_queries(path: str | os.PathLike) -> dict[str, Query]:
    """Read a BEIR ``queries.jsonl`` (``_id``, ``text``)."""
    path = Path(path)
    queries = {}
    for lineno, obj in _jsonl(path):
        qid = _field(path, lineno, obj, "_id", "id")
        queries[qid] = Query(qid=qid, text=_field(path, lineno, obj, "text"))
    return queries


def load_beir_folder(folder: str | os.PathLike, split: str = "test", *, name: str | None = None,
                     show_progress: bool | None = None) -> BeirDataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    qrels_dir = folder / "qrels"
    splits = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if split not in splits:
        raise DatasetError(
            f"{folder}: unknown split {split!r}; available: {splits or 'none (no qrels/*.tsv files)'}"
        )
    qrels = read_qrels(qrels_dir / f"{split}.tsv")
    all_queries = read_queries(folder / "queries.jsonl")
    missing = [q for q in qrels.qids if q not in all_queries]
    if missing:
        raise DatasetError(f"{qrels_dir / (split + '.tsv')}: {len(missing)} judged queries are not in "
                           f"queries.jsonl, e.g. {missing[:3]}")
    queries = {q: all_queries[q] for q in qrels.qids}
    corpus = read_corpus(folder / "corpus.jsonl", show_progress=show_progress)
    return BeirDataset(name=name or folder.name, split=split, corpus=corpus, queries=queries, qrels=qrels,
                       path=folder)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_beir(name: str, cache_dir: str | os.PathLike | None = None, *, url: str | None = None,
                  md5: str | None = None) -> Path:
    """Download and unpack an official BEIR zip into ``cache_dir/beir/<name>``; returns the folder.

    The zip's md5 is checked against ``md5`` (or the known value for ``name``). Without network access this
    raises :class:`DatasetError` telling the user to pass a local folder instead.
    """
    cache = Path(cache_dir or default_cache_dir()) / "beir"
    target = cache / name
    if (target / "corpus.jsonl").is_file():
        return target
    url = url or BEIR_URL.format(name=name)
    expected = md5 or BEIR_MD5.get(name)
    cache.mkdir(parents=True, exist_ok=True)
    zpath = cache / f"{name}.zip.part"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(zpath, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}") as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        zpath.unlink(missing_ok=True)
        raise DatasetError(
            f"could not download {url}: {exc}. If this machine is offline, download the zip elsewhere, unzip it, "
            f"and pass the folder (it must hold corpus.jsonl, queries.jsonl and qrels/)."
        ) from exc
    got = _md5(zpath)
    if expected and got != expected:
        zpath.unlink(missing_ok=True)
        raise DatasetError(f"{url}: md5 {got} does not match the expected {expected}; the download is corrupt, retry")
    logger.info("downloaded %s (md5 %s)", url, got)
    with atomic_dir(target) as tmp:
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        inner = tmp / name
        if inner.is_dir():  # the official zips hold a top-level <name>/ folder
            for p in inner.iterdir():
                shutil.move(str(p), tmp / p.name)
            inner.rmdir()
    zpath.unlink(missing_ok=True)
    return target


def load_beir_hf(repo: str, split: str = "test") -> BeirDataset:
    """Load a BEIR dataset from the Hugging Face hub (``BeIR/<name>`` and ``BeIR/<name>-qrels``). Needs network."""
    import datasets as hfds

    name = repo.split("/")[-1]
    try:
        corpus_ds = hfds.load_dataset(repo, "corpus", split="corpus")
        queries_ds = hfds.load_dataset(repo, "queries", split="queries")
        qrels_ds = hfds.load_dataset(f"{repo}-qrels", split=split)
    except Exception as exc:  # datasets raises many types when offline or for an unknown repo
        raise DatasetError(
            f"could not load {repo!r} from the Hugging Face hub: {exc}. Offline? Pass a local BEIR folder instead."
        ) from exc
    corpus = {str(r["_id"]): Document(docid=str(r["_id"]), title=r.get("title") or "", text=r["text"])
              for r in corpus_ds}
    judgments: dict[str, dict[str, int]] = {}
    for r in qrels_ds:
        judgments.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
    all_q = {str(r["_id"]): Query(qid=str(r["_id"]), text=r["text"]) for r in queries_ds}
    queries = {q: all_q[q] for q in judgments if q in all_q}
    return BeirDataset(name=name, split=split, corpus=corpus, queries=queries, qrels=Qrels(judgments=judgments))


def load_beir(source: str | os.PathLike, split: str = "test", *, cache_dir: str | os.PathLike | None = None,
              show_progress: bool | None = None) -> BeirDataset:
    """Load a BEIR dataset.

    ``source`` is a local folder in the standard layout, an official dataset name (``scifact``; downloaded
    once into the cache), or ``hf:<repo>`` for a Hugging Face dataset such as ``hf:BeIR/scifact``.
    """
    src = str(source)
    if src.startswith("hf:"):
        return load_beir_hf(src[3:], split)
    path = Path(src)
    if path.exists():
        return load_beir_folder(path, split, show_progress=show_progress)
    if src in BEIR_NAMES:
        return load_beir_folder(download_beir(src, cache_dir), split, name=src, show_progress=show_progress)
    raise DatasetError(
        f"{src!r} is neither a folder nor a BEIR dataset name ({', '.join(BEIR_NAMES)}) nor 'hf:<repo>'"
    )


def load_candidates_json(path: str | os.PathLike, topics: Mapping[str, Query] | None = None) -> list[Ranking]:
    """Read a RankGPT-style candidate file: ``[{"query": str, "hits": [{"qid","docid","rank","score","content"}]}]``.

    Returns one :class:`Ranking` per query with each candidate's passage as its document.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a JSON list of {{'query', 'hits'}} objects")
    rankings = []
    for i, item in enumerate(data):
        try:
            hits = item["hits"]
            qid = str(hits[0]["qid"]) if hits else str(item.get("qid", i))
            text = item["query"]
            cands = tuple(
                Candidate(docid=str(h["docid"]), score=float(h["score"]),
                          document=Document(docid=str(h["docid"]), text=h["content"]))
                for h in sorted(hits, key=lambda h: int(h["rank"]))
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DatasetError(f"{path}: entry {i} is malformed ({exc!r}); expected query and hits with "
                               f"qid, docid, rank, score, content") from None
        if topics is not None and qid in topics:
            text = topics[qid].text
        rankings.append(Ranking(query=Query(qid=qid, text=text), candidates=cands))
    return rankings


@dataclass(frozen=True, kw_only=True)
class TrecDl:
    topics: Mapping[str, Query]
    qrels: Qrels
    candidates: list[Ranking]
    year: str = ""


def trec_dl_year(folder: str | os.PathLike) -> str:
    """The year of a TREC DL folder: the one ``YEAR`` with both ``topics.YEAR-passage.txt`` and
    ``qrels.YEAR-passage.txt`` there (e.g. ``dl19``, ``dl20``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; give a TREC DL folder with topics.YEAR-passage.txt, "
                           f"qrels.YEAR-passage.txt and bm25_top100.json")
    topics = {p.name[len("topics."):-len("-passage.txt")] for p in folder.glob("topics.*-passage.txt")}
    years = sorted(y for y in topics if (folder / f"qrels.{y}-passage.txt").is_file())
    if len(years) == 1:
        return years[0]
    if not years:
        raise DatasetError(f"{folder} has no topics.YEAR-passage.txt with a matching qrels.YEAR-passage.txt "
                           f"(found topics for: {', '.join(sorted(topics)) or 'none'})")
    raise DatasetError(f"{folder} holds several years ({', '.join(years)}); choose one with --year")


def load_trec_dl(folder: str | os.PathLike, year: str | None = None) -> TrecDl:
    """Load ``../shared/data/trec-dl/dl19``-style folders: topics, NIST qrels and the BM25 top-100 candidates.
    ``year``: which topics and qrels (``dl19`` reads ``topics.dl19-passage.txt``); by default the one year whose
    files the folder holds (:func:`trec_dl_year`)."""
    folder = Path(folder)
    if year is None:
        year = trec_dl_year(folder)
        logger.info("%s: TREC DL year %s (from topics.%s-passage.txt)", folder, year, year)
    topics = read_topics(folder / f"topics.{year}-passage.txt")
    qrels = read_qrels(folder / f"qrels.{year}-passage.txt")
    candidates = load_candidates_json(folder / "bm25_top100.json", topics)
    return TrecDl(topics=topics, qrels=qrels, candidates=candidates, year=year)
