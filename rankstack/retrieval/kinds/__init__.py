"""The table of retrieval kinds: the only place that names them.

Built in: ``bm25``, ``dense``, ``splade`` (alias ``sparse``), ``maxsim``, ``muvera``, ``plaid``. A kind defined
elsewhere is added with :func:`register` (one line), or by a plugin: a module named in the ``RANKSTACK_KINDS``
environment variable (``package.module`` or ``package.module:attribute``, comma-separated; the module registers its
kinds when imported, or the attribute is a kind or a list of kinds) or an entry point in the
``rankstack.retrieval_kinds`` group. Plugins load at the first lookup, in every process (the CLI, the service, shard
servers and query workers), so a kind defined outside the library runs everywhere the built-in ones do.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any, Mapping

from rankstack.errors import BadInput
from rankstack.retrieval.kinds.base import RetrievalKind, Settings, slug
from rankstack.retrieval.kinds.bm25 import BM25
from rankstack.retrieval.kinds.dense import DENSE
from rankstack.retrieval.kinds.multivector import MAXSIM, MUVERA, PLAID
from rankstack.retrieval.kinds.splade import SPLADE
from rankstack.spec import Item

logger = logging.getLogger(__name__)

__all__ = ["RetrievalKind", "Settings", "register", "get", "names", "resolve", "settings_of", "slug", "PLUGIN_ENV",
           "ENTRY_POINT_GROUP"]

PLUGIN_ENV = "RANKSTACK_KINDS"
ENTRY_POINT_GROUP = "rankstack.retrieval_kinds"

_KINDS: dict[str, RetrievalKind] = {}
_ALIASES: dict[str, str] = {}
_plugins_loaded = False
_plugin_lock = threading.RLock()


def register(kind: RetrievalKind, *, replace: bool = False) -> RetrievalKind:
    """Add ``kind`` to the table (its name and aliases). A name already taken is refused unless ``replace``."""
    if not isinstance(kind, RetrievalKind):
        raise TypeError(f"register() takes a RetrievalKind instance, got {type(kind).__name__}")
    if not kind.name or not kind.name.replace("-", "").replace("_", "").isalnum():
        raise BadInput(f"a retrieval kind needs a name of letters, digits, - and _; got {kind.name!r}")
    with _plugin_lock:
        for name in (kind.name, *kind.aliases):
            taken = _KINDS.get(name) or _KINDS.get(_ALIASES.get(name, ""))
            if taken is not None and taken is not kind and not replace:
                raise BadInput(f"retrieval kind {name!r} is already registered ({taken!r}); pass replace=True to "
                               f"override it")
        _KINDS[kind.name] = kind
        for a in kind.aliases:
            _ALIASES[a] = kind.name
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests that register one of their own clean up with this)."""
    with _plugin_lock:
        kind = _KINDS.pop(name, None)
        for a in getattr(kind, "aliases", ()):
            _ALIASES.pop(a, None)


for _k in (BM25, DENSE, SPLADE, MAXSIM, MUVERA, PLAID):
    register(_k)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    with _plugin_lock:
        if _plugins_loaded:
            return
        _plugins_loaded = True
        for spec in filter(None, (s.strip() for s in os.environ.get(PLUGIN_ENV, "").split(","))):
            _load_one(spec, f"{PLUGIN_ENV}={spec}")
        try:
            from importlib.metadata import entry_points

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                _load_one(ep.value, f"entry point {ep.name}")
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the built-in kinds
            logger.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)


def _load_one(spec: str, where: str) -> None:
    module, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise BadInput(f"{where}: cannot import {module!r} ({exc}); install it or fix {PLUGIN_ENV}") from None
    if attr:
        found = getattr(mod, attr, None)
        if found is None:
            raise BadInput(f"{where}: {module!r} has no attribute {attr!r}")
        for kind in found if isinstance(found, (list, tuple)) else [found]:
            if kind.name not in _KINDS or _KINDS[kind.name] is not kind:
                register(kind)


def get(name: str) -> RetrievalKind:
    """The kind named ``name`` (or an alias of it); an unknown name fails listing the kinds there are."""
    _load_plugins()
    kind = _KINDS.get(_ALIASES.get(name, name))
    if kind is None:
        raise BadInput(f"{name!r} is not a retriever; retrievers are {', '.join(names())}")
    return kind


def known(name: str) -> bool:
    _load_plugins()
    return _ALIASES.get(name, name) in _KINDS


def names() -> tuple[str, ...]:
    _load_plugins()
    return tuple(_KINDS)


def canonical(item: Item | str) -> Item:
    """A retriever item (text or parsed) under its kind's own name (``sparse`` -> ``splade``), options checked and
    typed, as pipelines hold it."""
    from rankstack.spec import parse_item

    item = parse_item(item, "retriever spec") if isinstance(item, str) else item
    kind = get(item.kind)
    if item.kind != kind.name:
        item = Item(kind.name, item.options)
    return kind.check(item)


def resolve(item: Item | str, defaults: Mapping[str, Any] | None = None) -> tuple[RetrievalKind, Settings]:
    """The kind of ``item`` and the settings it resolves to, with ``defaults`` for what it leaves out."""
    item = canonical(item)
    kind = get(item.kind)
    return kind, kind.settings(item, dict(defaults or {}))


def settings_of(item: Item | str, defaults: Mapping[str, Any] | None = None) -> Settings:
    return resolve(item, defaults)[1]
