"""A JVM (Pyserini) and a Ray driver in one process: ``ray.init`` must not take the JVM's SIGSEGV handler.

Run in a child process without Python's faulthandler, as ``rankstack eval --index ... --ray-address`` runs: the JVM
starts first, then Ray, then Lucene indexes SciFact (JIT-compiled code that traps SIGSEGV on purpose). Before
:func:`rankstack.distributed.cluster.init`, plain ``ray.init`` here ended the process with exit 139."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray", reason="needs rankstack[ray]")
pytest.importorskip("pyserini", reason="needs rankstack[lucene]")

SCRIPT = textwrap.dedent("""
    import sys
    from rankstack.eval.datasets import load_beir
    from rankstack.index.lucene import LuceneIndex
    docs = list(load_beir(sys.argv[1]).corpus.values())
    LuceneIndex.build(docs[:50], sys.argv[2] + "/first")  # the JVM is up before Ray
    from rankstack.distributed.cluster import init
    import ray
    init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING")
    ray.shutdown()
    for i in range({rounds}):
        LuceneIndex.build(docs, sys.argv[2] + f"/all-{{i}}")
    print("built", flush=True)
""")


def test_lucene_indexing_survives_ray_init_in_the_same_process(scifact_dir, tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(rounds=2), str(scifact_dir), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0 and "built" in out.stdout, (out.returncode, out.stderr[-3000:])
