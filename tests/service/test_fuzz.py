"""Schema fuzzing with schemathesis against a running server: no input may produce a 5xx."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="needs rankstack[dev]")
uvicorn = pytest.importorskip("uvicorn", reason="needs rankstack[service]")
importlib.import_module("schemathesis.specs.openapi.schemas")  # imported, and so rewritten by pytest, at collection

from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from svc_helpers import DOCS

from rankstack.service.process import free_port

# The server runs in a child process, not in a thread of this one, and schemathesis' OpenAPI modules are imported
# at collection, when no other thread runs: CPython 3.11 before 3.11.8 shares one AST recursion counter between
# threads, so any `ast.parse` in another thread (a server thread's lazy import, a traceback being formatted)
# racing pytest's assertion rewriting of a schemathesis module here raised "SystemError: AST constructor
# recursion depth mismatch" in CI.
_SERVER = """
import sys
from pathlib import Path
import uvicorn
sys.path.insert(0, {helpers!r})
from svc_helpers import make_settings
from rankstack.service.app import create_app
app = create_app(make_settings(Path({tmp!r}), limits={{"max_k": 50, "max_documents_per_request": 20}}))
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="warning")
"""


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    port = free_port()
    script = _SERVER.format(helpers=str(Path(__file__).parent), tmp=str(tmp_path_factory.mktemp("fuzz")), port=port)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if proc.poll() is not None:
                pytest.fail(f"the service process exited with code {proc.returncode} before it was ready")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/collections/demo/documents", json={"documents": DOCS},
                       timeout=60)
        assert r.status_code < 300, r.text
        yield schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_no_input_causes_a_server_error(api_schema):
    """Every operation, 25 generated requests each (schemathesis' pytest plugin does not support pytest 9, so
    the operations are driven through hypothesis directly)."""
    from hypothesis import given

    ops = [r.ok() for r in api_schema.get_all_operations()]
    assert len(ops) >= 9
    calls = []

    for op in ops:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            if case.path_parameters and "name" in case.path_parameters and len(calls) % 2 == 0:
                case.path_parameters["name"] = "demo"  # half the cases hit the populated collection
            calls.append(op.label)
            case.call_and_validate(checks=[not_a_server_error])

        run()
    assert len(calls) >= 9 * 10
