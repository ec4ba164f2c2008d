"""The load gate: a request past the stage timeout gets a 504 at once, but its slot stays taken until its worker
thread has really finished, so timed-out work (an LLM call) cannot pile up under new requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rankstack.service.app import Overloaded, ServiceState, StageTimeout

from svc_helpers import make_settings


def test_a_timed_out_request_holds_its_slot_until_the_thread_finishes(tmp_path):
    state = ServiceState(make_settings(tmp_path, limits={"max_inflight": 1, "max_queue": 0,
                                                         "stage_timeout_s": 0.2}))
    release = threading.Event()
    finished = threading.Event()

    def slow():
        release.wait(10)
        finished.set()
        return "late"

    async def scenario():
        with pytest.raises(StageTimeout, match="exceeded the 0.2 s timeout"):
            await state.work(slow)
        assert not finished.is_set()  # the thread still runs...
        with pytest.raises(Overloaded):  # ...and still holds the only slot
            await state.work(lambda: "next")
        release.set()
        for _ in range(100):  # the slot is freed by the thread's completion, on the event loop
            await asyncio.sleep(0.02)
            if state.gate.admitted == 0:
                break
        assert finished.is_set() and state.gate.admitted == 0
        assert await state.work(lambda: "next") == "next"

    asyncio.run(scenario())
    state.executor.shutdown(wait=True)


def test_http_504_then_429_while_the_timed_out_rerank_runs(tmp_path):
    """Through the app: /v1/rerank with a slow reranker times out (504); while its thread still works, another
    request is shed (429); once it is done, requests pass again."""
    import httpx

    from rankstack.service.app import create_app
    from tests.tiny_llm import save_tiny_llm

    tiny = save_tiny_llm(tmp_path / "tiny")
    settings = make_settings(tmp_path, rerankers={"slow": f"listwise:model={tiny},window=20,passage_tokens=64"},
                             rerank_encoder="hash:64",  # the built-in reranker, model-free: fast enough for 0.3 s
                             limits={"max_inflight": 1, "max_queue": 0, "stage_timeout_s": 0.3})
    app = create_app(settings)
    docs = [f"the flea life cycle is about weeks eggs larva pupa adult number {i}" for i in range(40)]

    async def go():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
                t0 = time.perf_counter()
                r1 = await c.post("/v1/rerank", json={"query": "flea", "documents": docs, "model": "slow"})
                r2 = await c.post("/v1/rerank", json={"query": "flea", "documents": docs[:2], "model": "embedding"})
                state = app.state.rankstack
                while state.gate.admitted:
                    await asyncio.sleep(0.05)
                busy = time.perf_counter() - t0
                r3 = await c.post("/v1/rerank", json={"query": "flea", "documents": docs[:2], "model": "embedding"})
                return r1, r2, r3, busy

    r1, r2, r3, busy = asyncio.run(go())
    assert r1.status_code == 504 and "still holds a slot" in r1.json()["error"]
    assert r2.status_code == 429
    assert r3.status_code == 200 and busy > 0.3
