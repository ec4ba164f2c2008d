"""On-disk delta segments: a collection's vector index is checkpointed in O(the documents changed), not O(the index).

A checkpoint used to save the whole index (a dense flat index of 200k x 384 is 300 MB), synchronously, in the write
that crossed ``index_checkpoint_docs``. Now the index folder is a *base* saved at some log sequence, and each
checkpoint writes one segment file beside it: the docids removed since the previous checkpoint and the encoded
payload (dense vectors, sparse weights, token vectors) of the documents written since, under the log sequences it
covers. Opening a collection loads the base and applies its segments in order (no encoding), then replays the log
from there. Once the segments hold more than a fraction of the index, a background thread merges them into a new
base *from disk* (it loads the base into a second object, applies the segments and saves it atomically), so neither
writes nor searches wait for it; the merged segments are deleted after the new base is in place, and any segment
the base already covers is skipped at open.

Segment files are ``seg-<from>-<to>-<documents>.npz`` (zero-padded log sequences; no pickled objects) written to a temporary
name, fsynced and renamed. A segment that is unreadable, or a gap in the chain, stops the replay there: the log,
fsynced before every acknowledgement, is the source of truth, and the documents after that point are re-encoded
from it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rankstack._atomic import fsync_dir

logger = logging.getLogger(__name__)

__all__ = ["Journal", "Segment", "Segments", "MERGE_FRACTION", "MERGE_MIN_DOCS", "MAX_SEGMENTS"]

# the base is rewritten (in the background) once the segments hold more changed documents than this fraction of the
# index, with at least MERGE_MIN_DOCS, or once there are more than MAX_SEGMENTS files
MERGE_FRACTION = 0.25
MERGE_MIN_DOCS = 4096
MAX_SEGMENTS = 64

_NAME = re.compile(r"seg-(\d{12})-(\d{12})-(\d+)\.npz")


@dataclass
class Journal:
    """What changed in an index since its last checkpoint: docids removed from the saved state (deleted or replaced)
    and the latest payload of each document written since (``payload`` is one document's part, as
    :meth:`Segments.write`'s ``pack`` takes it)."""

    removed: set = field(default_factory=set)
    added: dict = field(default_factory=dict)

    def remove(self, docids) -> None:
        for d in docids:
            self.added.pop(d, None)
            self.removed.add(d)

    def put(self, docid: str, payload) -> None:
        self.added[docid] = payload

    def __len__(self) -> int:
        return len(self.removed | self.added.keys())


@dataclass
class Segment:
    path: Path
    first: int  # the log sequence of the checkpoint it follows
    last: int  # the log sequence it brings the index to
    docs: int  # documents it removes or writes


class Segments:
    """The segment files of one index folder (``<folder>.segments/``) and its background merge."""

    def __init__(self, index_path: Path, min_docs: int | None = None):
        self.index_path = Path(index_path)
        self.min_docs = min_docs  # None: MERGE_MIN_DOCS
        self.dir = self.index_path.with_name(self.index_path.name + ".segments")
        self._merge: threading.Thread | None = None
        self.merges = 0  # completed background merges (for tests and benchmarks)
        self.merge_error: BaseException | None = None

    def list(self) -> list[Segment]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            m = _NAME.fullmatch(p.name)
            if m:
                out.append(Segment(p, int(m.group(1)), int(m.group(2)), int(m.group(3))))
        return sorted(out, key=lambda s: (s.first, s.last))

    def chain(self, base_seq: int) -> list[Segment]:
        """The segments that follow a base saved at ``base_seq``, in order, up to the first gap."""
        out, seq = [], base_seq
        for s in self.list():
            if s.last <= seq:
                continue  # covered by the base (a merge died before deleting it)
            if s.first != seq:
                logger.warning("%s: segment %s does not follow sequence %d; the log is replayed from there", self.dir,
                               s.path.name, seq)
                break
            out.append(s)
            seq = s.last
        return out

    def write(self, first: int, last: int, journal: Journal, pack: Callable[[list], dict]) -> Segment:
        """Write ``journal`` as the segment ``first -> last``; ``pack(payloads)`` gives the payload arrays."""
        self.dir.mkdir(parents=True, exist_ok=True)
        added = list(journal.added)
        arrays = pack([journal.added[d] for d in added]) if added else {}
        path = self.dir / f"seg-{first:012d}-{last:012d}-{len(journal)}.npz"
        tmp = self.dir / f".{path.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, removed=np.array(sorted(journal.removed), dtype=str),
                         added=np.array(added, dtype=str), **{f"p_{k}": v for k, v in arrays.items()})
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(self.dir)
        return Segment(path, first, last, len(journal))

    @staticmethod
    def read(seg: Segment) -> tuple[list[str], list[str], dict]:
        """``(removed, added, payload arrays)`` of a segment (raises on a torn or corrupt file)."""
        with np.load(seg.path, allow_pickle=False) as z:
            return ([str(d) for d in z["removed"]], [str(d) for d in z["added"]],
                    {k[2:]: z[k] for k in z.files if k.startswith("p_")})

    def _replay(self, index, seq: int, apply: Callable, *, upto: int | None = None, tolerant: bool = False) -> int:
        """Apply the chain after ``seq`` (up to ``upto``) to ``index`` with ``apply(index, removed, added, arrays)``;
        returns the sequence reached. An unreadable segment raises, or with ``tolerant`` ends the chain there."""
        for s in self.chain(seq):
            if upto is not None and s.last > upto:
                break
            try:
                removed, added, arrays = self.read(s)
            except Exception as exc:  # noqa: BLE001 - a torn file; the log has the documents
                if not tolerant:
                    raise
                logger.warning("%s is unreadable (%s); the log is replayed from sequence %d", s.path, exc, seq)
                break
            apply(index, removed, added, arrays)
            seq = s.last
        return seq

    def apply(self, index, base_seq: int, apply: Callable) -> int:
        """Apply the chain after ``base_seq`` to ``index`` (``apply(index, removed, added, arrays)``); returns the
        sequence reached. A segment that cannot be read ends the chain there (and it and later ones are deleted)."""
        seq = self._replay(index, base_seq, apply, tolerant=True)
        if seq != base_seq:
            logger.info("%s: applied segments %d -> %d", self.dir, base_seq, seq)
        self.drop_after(seq)  # anything past a gap is out of the chain
        return seq

    def drop_upto(self, seq: int) -> None:
        for s in self.list():
            if s.last <= seq:
                with contextlib.suppress(OSError):
                    s.path.unlink()

    def drop_after(self, seq: int) -> None:
        """Delete the segments past ``seq`` (after the chain was applied up to ``seq``: those past a gap or an
        unreadable file, which the log replaces)."""
        for s in self.list():
            if s.last > seq:
                with contextlib.suppress(OSError):
                    s.path.unlink()

    def clear(self) -> None:
        for s in self.list():
            with contextlib.suppress(OSError):
                s.path.unlink()

    # ---- the background merge -----------------------------------------------------------------------------------

    def merging(self) -> bool:
        return self._merge is not None and self._merge.is_alive()

    def wait(self) -> None:
        """Wait for a merge in flight (before the base folder is written by anything else, and at close)."""
        if self._merge is not None:
            self._merge.join()
            self._merge = None

    def due(self, index_docs: int) -> bool:
        segs = self.list()
        if not segs or self.merging():
            return False
        return len(segs) > MAX_SEGMENTS or sum(s.docs for s in segs) > max(
            MERGE_MIN_DOCS if self.min_docs is None else self.min_docs, MERGE_FRACTION * index_docs)

    def merge_in_background(self, load: Callable[[Path], object], apply: Callable) -> None:
        """Rewrite the base with the segments now on disk, in a thread: ``load(path)`` opens the base as a new object
        (the one being served is not touched), the chain is applied, the result saved atomically at the last
        segment's sequence, and the merged segments deleted."""
        self.wait()
        upto = self.list()[-1].last

        def run():
            try:
                base = load(self.index_path)
                seq = self._replay(base, base.meta.get("applied_seq", 0), apply, upto=upto)
                base.meta["applied_seq"] = seq
                base.save(self.index_path)
                self.drop_upto(seq)
                self.merges += 1
                logger.info("%s: merged segments into the base at sequence %d", self.index_path, seq)
            except BaseException as exc:  # noqa: BLE001 - the segments stay; the next merge or open retries
                self.merge_error = exc
                logger.warning("%s: background merge failed (%s); the segments are kept", self.index_path, exc)

        self._merge = threading.Thread(target=run, name=f"merge-{self.index_path.name}", daemon=True)
        self._merge.start()
