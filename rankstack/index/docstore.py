"""A persistent document store shared by every index: ``docs.jsonl`` plus byte offsets for random access."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rankstack.errors import IndexCorrupt, UnknownDocid
from rankstack.records import Document

__all__ = ["DocStore"]


class DocStore:
    """Read-only view over ``<dir>/docs.jsonl`` and ``<dir>/docs.offsets.npy`` written by :meth:`write`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._path = self.directory / "docs.jsonl"
        try:
            self._offsets = np.load(self.directory / "docs.offsets.npy")
            with open(self.directory / "docs.ids.json", encoding="utf-8") as fh:
                self._docids = json.load(fh)
            size = self._path.stat().st_size
        except (OSError, ValueError) as exc:
            raise IndexCorrupt(f"{self.directory}: document store is missing or unreadable ({exc}); rebuild the index") from exc
        if len(self._offsets) != len(self._docids) + 1 or int(self._offsets[-1]) != size:
            raise IndexCorrupt(f"{self.directory}: document store offsets do not match docs.jsonl "
                               f"(truncated file?); rebuild the index")
        self._row = {d: i for i, d in enumerate(self._docids)}
        self._fh = open(self._path, "rb")

    @staticmethod
    def write(directory: str | os.PathLike, documents: Iterable[Document]) -> list[str]:
        """Write the store into ``directory`` (normally an index's temporary build directory)."""
        directory = Path(directory)
        offsets = [0]
        docids = []
        with open(directory / "docs.jsonl", "wb") as fh:
            for d in documents:
                line = json.dumps({"_id": d.docid, "title": d.title, "text": d.text, "metadata": dict(d.metadata)},
                                  ensure_ascii=False).encode("utf-8") + b"\n"
                fh.write(line)
                offsets.append(offsets[-1] + len(line))
                docids.append(d.docid)
        np.save(directory / "docs.offsets.npy", np.asarray(offsets, dtype=np.int64))
        with open(directory / "docs.ids.json", "w", encoding="utf-8") as fh:
            json.dump(docids, fh)
        return docids

    def __len__(self) -> int:
        return len(self._docids)

    def __contains__(self, docid: str) -> bool:
        return docid in self._row

    @property
    def docids(self) -> list[str]:
        return list(self._docids)

    def __getitem__(self, docid: str) -> Document:
        row = self._row.get(docid)
        if row is None:
            raise UnknownDocid(f"unknown docid {docid!r}: not in {self.directory}")
        return self._read(row)

    get = __getitem__

    def _read(self, row: int) -> Document:
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        obj = json.loads(os.pread(self._fh.fileno(), end - start, start))  # pread: safe across threads
        return Document(docid=obj["_id"], title=obj.get("title", ""), text=obj["text"], metadata=obj.get("metadata") or {})

    def __iter__(self) -> Iterator[Document]:
        for row in range(len(self._docids)):
            yield self._read(row)

    def close(self) -> None:
        self._fh.close()
