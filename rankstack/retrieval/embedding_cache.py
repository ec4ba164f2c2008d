"""A persistent embedding cache: vectors keyed by the encoder that made them and a hash of the text.

``dense:cache=true`` turns it on for an encoder. Re-ingesting a document, re-building an index with another index
spec, or re-running an evaluation then encodes only texts the encoder has not seen. One SQLite file per encoder
identity (model, backend, int8 scope, truncation length, normalisation: everything that changes a vector) under
``$RANKSTACK_EMBEDDING_CACHE`` or ``~/.cache/rankstack/embeddings``; rows are ``blake2b-128(text) -> float32
bytes``. The batch a text was encoded in changes its vector only in the last float bits, so a cached vector equals a
fresh one up to that rounding.

A cache file that cannot be read (truncated, not SQLite, another dimension) is moved aside with a warning and a new
one started: everything in it can be recomputed, so a broken cache never stops a search or an ingest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "embedding_cache_root"]


def embedding_cache_root() -> Path:
    env = os.environ.get("RANKSTACK_EMBEDDING_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rankstack" / "embeddings"


class EmbeddingCache:
    """Vectors of one encoder identity (``identity``: a JSON-able dict), ``dim`` floats each."""

    def __init__(self, identity: dict, dim: int, root: str | Path | None = None):
        self.identity = identity
        self.dim = int(dim)
        text = json.dumps(identity, sort_keys=True, default=str)
        name = hashlib.sha256(text.encode()).hexdigest()[:20]
        self.path = Path(root or embedding_cache_root()) / f"{name}.sqlite"
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._db = self._open(text)

    def _open(self, text: str) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect(text)
        except (sqlite3.DatabaseError, ValueError) as exc:
            aside = self.path.with_suffix(f".broken-{os.getpid()}")
            logger.warning("embedding cache %s cannot be used (%s); moved to %s and starting an empty one",
                           self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    os.replace(p, Path(str(aside) + suffix))
            return self._connect(text)

    def _connect(self, text: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT)")
            db.execute("CREATE TABLE IF NOT EXISTS vec (h BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID")
            row = db.execute("SELECT v FROM meta WHERE k='identity'").fetchone()
            if row is None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?), ('dim', ?)", (text, str(self.dim)))
            else:
                dim = db.execute("SELECT v FROM meta WHERE k='dim'").fetchone()
                if row[0] != text or dim is None or int(dim[0]) != self.dim:
                    raise ValueError(f"it holds vectors of another encoder or dimension ({dim and dim[0]})")
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _hash(text: str) -> bytes:
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def encode(self, texts: Sequence[str], compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors for ``texts``: cached rows, and ``compute(missing texts)`` for the rest (then stored)."""
        hashes = [self._hash(t) for t in texts]
        found: dict[bytes, bytes] = {}
        unique = list(dict.fromkeys(hashes))
        with self._lock:
            for i in range(0, len(unique), 500):  # SQLite's bound-parameter limit
                chunk = unique[i:i + 500]
                q = f"SELECT h, v FROM vec WHERE h IN ({','.join('?' * len(chunk))})"
                found.update(self._db.execute(q, chunk).fetchall())
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        todo: dict[bytes, list[int]] = {}
        for i, h in enumerate(hashes):
            blob = found.get(h)
            if blob is not None and len(blob) == 4 * self.dim:
                out[i] = np.frombuffer(blob, dtype=np.float32)
            else:
                todo.setdefault(h, []).append(i)
        self.hits += len(texts) - sum(len(v) for v in todo.values())
        if todo:
            first = [rows[0] for rows in todo.values()]
            vecs = np.asarray(compute([texts[i] for i in first]), dtype=np.float32)
            if vecs.shape != (len(first), self.dim):
                raise ValueError(f"encoder returned shape {vecs.shape}, expected {(len(first), self.dim)}")
            for rows, v in zip(todo.values(), vecs):
                out[rows] = v
            self.misses += len(first)
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)",
                                     [(h, v.tobytes()) for h, v in zip(todo, vecs)])
                self._db.execute("COMMIT")
        return out

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM vec").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
