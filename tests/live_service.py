"""A real RankStack service on a free localhost port, in a background thread (uvicorn), for tests that talk HTTP
to it (the RAG adapters' service client, the search page in a browser)."""

from __future__ import annotations

import contextlib
import threading
import time

from rankstack.service.process import free_port


def _import_anyio_eagerly():
    """anyio parses its own source (`ast.parse`) when a lazy submodule is first touched. Touch them all here, in
    the main thread: CPython 3.11 before 3.11.8 shares one AST recursion counter between threads, so a parse in
    the server thread racing one here (pytest rewriting a module it imports) raises a spurious SystemError."""
    import anyio
    import anyio.abc

    for module in (anyio, anyio.abc):
        for name in dir(module):
            getattr(module, name, None)


@contextlib.contextmanager
def live_service(settings, timeout: float = 120):
    """Yield the base URL of a service running ``settings``; stop it on exit."""
    import httpx
    import uvicorn

    from rankstack.service.app import create_app

    _import_anyio_eagerly()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    try:
        while True:
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or not thread.is_alive():
                raise RuntimeError("the test service did not become ready")
            time.sleep(0.2)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
