"""What every persistent index shares: one directory, ``params.json`` with kind and format version, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rankstack._atomic import recover
from rankstack.errors import IndexCorrupt, IndexNotFound

__all__ = ["read_params", "PARAMS_FILE"]

PARAMS_FILE = "params.json"


def read_params(path: str | os.PathLike, kind: str, format_version: int) -> dict:
    """Read and check ``<path>/params.json``; raise a clear error for a missing, foreign or corrupt index."""
    path = Path(path)
    recover(path)
    if not path.exists():
        raise IndexNotFound(f"no index at {path}; build one first (e.g. `rankstack index --help`)")
    try:
        params = json.loads((path / PARAMS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorrupt(f"{path}: no {PARAMS_FILE}; this is not a RankStack index or its build was interrupted") from None
    except json.JSONDecodeError as exc:
        raise IndexCorrupt(f"{path}/{PARAMS_FILE} is corrupt ({exc.msg}); rebuild the index") from None
    if params.get("kind") != kind:
        raise IndexCorrupt(f"{path} holds a {params.get('kind')!r} index, not {kind!r}")
    if params.get("format_version") != format_version:
        raise IndexCorrupt(f"{path}: format version {params.get('format_version')} is not supported "
                           f"(this RankStack reads version {format_version}); rebuild the index")
    return params
