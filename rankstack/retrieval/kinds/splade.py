"""``splade``: learned sparse retrieval (SPLADE, inference-free queries), over the integer impacts of a
:class:`~rankstack.index.sparse.SparseIndex`, searched by the scipy, Lucene impact or Seismic engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rankstack.errors import BadInput
from rankstack.retrieval.kinds.base import RetrievalKind, Settings, slug
from rankstack.spec import Item, Option, parse_item

__all__ = ["SparseKind", "SparseSettings", "SPLADE"]

_SEISMIC = ("n_postings", "summary_energy", "query_cut", "heap_factor")


@dataclass(frozen=True)
class SparseSettings(Settings):
    """A ``splade:...`` item resolved: the sparse encoder, the vectors it makes (``vectors_key``: model and
    truncation), and how to search them (query mode, engine, Seismic's parameters)."""

    kind: str = "splade"
    model: str = ""
    max_seq_length: int = 256
    batch_size: int = 32
    query: str = "model"
    engine: str = "scipy"
    device: str | None = None
    threads: int | None = None
    seismic: tuple = ()
    vectors_key: str = field(init=False, default="")

    def __post_init__(self):
        vk = str(Item(self.model, (("max_seq_length", str(self.max_seq_length)),)))
        object.__setattr__(self, "vectors_key", vk)
        object.__setattr__(self, "index_key", f"splade|{vk}")
        object.__setattr__(self, "key", f"splade:{vk}:{self.batch_size}:{self.query}:{self.engine}:{self.device}:"
                                        f"{self.threads}:{self.seismic}")

    @classmethod
    def of(cls, item: Item | str, default_model: str | None = None) -> SparseSettings:
        item = parse_item(item, "retriever spec") if isinstance(item, str) else item
        return SPLADE.settings(SPLADE.check(Item("splade", item.options)),
                               {"sparse_model": default_model} if default_model else {})

    def encoder(self, models):
        from rankstack.retrieval.sparse_encoders import cached_sparse_encoder

        return cached_sparse_encoder(models, self.model, max_seq_length=self.max_seq_length,
                                     batch_size=self.batch_size, device=self.device)


def lucene_path(path: Path | None) -> Path | None:
    """Where the Lucene impact index of the sparse index at ``path`` lives: inside a folder ``rankstack index`` wrote,
    beside one the workspace or a service keeps (their folders are replaced whole at each save)."""
    if path is None:
        return None
    path = Path(path)
    inside = path / "lucene-impact"
    return inside if inside.is_dir() else path.with_name(path.name + "-lucene")


class SparseKind(RetrievalKind):
    name = "splade"
    aliases = ("sparse",)
    summary = "learned sparse retrieval: SPLADE (query=model) or inference-free (query=idf) over integer impacts"
    saved_kinds = ("sparse-impact",)
    stats_labels = ("splade",)
    options = {
        "model": Option(type=str, doc="a SPLADE model (splade-tiny offline), inference-free model or decoder LM"),
        "query": Option("model", choices=("model", "idf"), doc="encode queries with the model, or weight by IDF"),
        "engine": Option("scipy", choices=("scipy", "lucene", "seismic"),
                         doc="exact scipy products, Anserini's impact searcher, or Seismic (approximate)"),
        "batch_size": Option(32, low=1),
        "max_seq_length": Option(256, low=1),
        "device": Option(type=str),
        "threads": Option(type=int, low=1),
        "n_postings": Option(type=int, low=1, doc="Seismic: postings kept per term"),
        "summary_energy": Option(type=float, doc="Seismic: block summaries' energy"),
        "query_cut": Option(type=int, low=1, doc="Seismic: query terms searched"),
        "heap_factor": Option(type=float, doc="Seismic: how eagerly blocks are skipped"),
    }

    def settings(self, item: Item, defaults: Mapping[str, Any]) -> SparseSettings:
        from rankstack.retrieval.sparse_encoders import DEFAULT_SPARSE_MODEL

        g = item.get
        return SparseSettings(model=g("model") or defaults.get("sparse_model") or DEFAULT_SPARSE_MODEL,
                              max_seq_length=g("max_seq_length", 256), batch_size=g("batch_size", 32),
                              query=g("query", "model"), engine=g("engine", "scipy"), device=g("device"),
                              threads=g("threads"), seismic=tuple((k, g(k)) for k in _SEISMIC if g(k) is not None))

    def defaults_of(self, index) -> dict[str, Any]:
        model = (getattr(index, "meta", None) or {}).get("model")
        return {"sparse_model": model} if model else {}

    def folder(self, settings: SparseSettings, defaults) -> str:
        return f"splade-{slug(settings.vectors_key)}"

    # ---- the stored index ---------------------------------------------------------------------------------------

    def encoder(self, settings: SparseSettings, models):
        return settings.encoder(models)

    def encode(self, settings, encoder, documents):
        if not len(documents):
            return None
        return encoder.encode_documents(list(documents), with_tokens=True)

    def header(self, settings: SparseSettings, encoder) -> dict[str, Any]:
        """What a sparse index needs besides the encoded documents (a shard built from them elsewhere)."""
        from rankstack.index.sparse import DEFAULT_SCALE

        return {"vocab": encoder.vocab, "fingerprint": encoder.fingerprint, "scale": DEFAULT_SCALE}

    def empty(self, settings: SparseSettings, meta: dict, *, encoder=None, batch=None):
        from rankstack.index.sparse import DEFAULT_SCALE, SparseIndex

        meta = dict(meta)
        head = self.header(settings, encoder) if encoder is not None else {
            "vocab": meta.pop("vocab"), "fingerprint": meta.pop("fingerprint"), "scale": meta.pop("scale", DEFAULT_SCALE)}
        meta.pop("vocab", None), meta.pop("fingerprint", None), meta.pop("scale", None)
        return SparseIndex(head["vocab"], fingerprint=head["fingerprint"], scale=head["scale"],
                           meta={"model": settings.model, "vectors": settings.vectors_key, **meta})

    def apply(self, index, removed, docids, batch, state) -> None:
        gone = [d for d in removed if d in index]
        if gone:
            index.remove(gone)
        if len(docids):
            weights, tokens = batch
            index.add(list(docids), weights, tokens, upsert=True)

    def write(self, settings, documents, batch, meta, path):
        index = self.empty(settings, meta, batch=batch)
        self.apply(index, [], [d.docid for d in documents], batch, {})
        index.save(path)
        return index

    def build(self, settings, models, documents, meta, path):
        from rankstack.retrieval.sparse import build_sparse_index

        index = build_sparse_index(self.encoder(settings, models), list(documents),
                                   meta={"vectors": settings.vectors_key, **meta})
        index.save(path)
        return index

    def write_folder(self, settings, models, documents, path):
        """The impacts, and inside the folder their Lucene impact index (``engine=lucene``)."""
        from rankstack.index.lucene_impact import LuceneImpactIndex

        index = self.build(settings, models, documents, {}, path)
        LuceneImpactIndex.build(index, Path(path) / "lucene-impact", threads=settings.threads or 1,
                                meta={"source_version": index.signature()})
        return index

    def load(self, settings, path: Path, models):
        from rankstack.index.sparse import SparseIndex

        return SparseIndex.load(path)

    def matches(self, settings: SparseSettings, index) -> str | None:
        built = index.meta.get("vectors")
        if built != settings.vectors_key:
            return f"built as {built!r}, configured as {settings.vectors_key!r}"
        return None

    def split(self, batch) -> list:
        if batch is None:
            return []
        weights, tokens = batch
        return [(weights[i], tokens[i]) for i in range(weights.shape[0])]

    def pack(self, payloads: list) -> dict[str, np.ndarray]:
        import scipy.sparse as sp

        out = {}
        for name, rows in (("w", [w for w, _ in payloads]), ("t", [t for _, t in payloads])):
            m = sp.vstack(rows, format="csr")
            out.update({f"{name}_data": m.data, f"{name}_indices": m.indices, f"{name}_indptr": m.indptr,
                        f"{name}_shape": np.array(m.shape, np.int64)})
        return out

    def unpack(self, arrays):
        import scipy.sparse as sp

        return tuple(sp.csr_matrix((arrays[f"{n}_data"], arrays[f"{n}_indices"], arrays[f"{n}_indptr"]),
                                   shape=tuple(arrays[f"{n}_shape"])) for n in ("w", "t"))

    # ---- retrieval ----------------------------------------------------------------------------------------------

    def retriever(self, settings: SparseSettings, index, *, models, documents=None, derived=None, path=None):
        from rankstack.retrieval.sparse import SparseRetriever

        where = lucene_path(path)
        if settings.engine != "scipy" and where is None:
            raise BadInput(f"splade engine {settings.engine!r} keeps files beside its index, and this index has no "
                           f"folder (a sharded collection scores each shard's impacts exactly, engine=scipy): drop engine=")
        return SparseRetriever(settings.encoder(models), index, engine=settings.engine, query=settings.query,
                               lucene_path=where, threads=settings.threads, documents=documents,
                               **dict(settings.seismic))

    # ---- shards -------------------------------------------------------------------------------------------------

    def stats(self, index) -> dict[str, Any]:
        return {"df": index.document_frequencies, "doc_count": len(index)}

    def use_stats(self, index, stats: dict[str, Any]) -> None:
        index.use_collection_stats(np.asarray(stats["df"]), int(stats["doc_count"]))


SPLADE = SparseKind()
