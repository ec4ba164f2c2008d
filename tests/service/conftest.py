from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="needs rankstack[service]")
pytest.importorskip("prometheus_client", reason="needs rankstack[service]")
pytest.importorskip("pyserini", reason="needs rankstack[lucene]")
pytest.importorskip("faiss", reason="needs rankstack[cpu]")

