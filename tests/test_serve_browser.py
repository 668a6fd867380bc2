"""The page of `zhen serve` in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright for
Python) loads it from a real `zhen serve` process on 127.0.0.1, types 我爱你, waits for "I love you.", opens
explain, and checks the heatmaps are drawn with the model's tokens as labels; then the same at phone width,
and with the keyboard alone. Screenshots go to $ZHEN_SCREENSHOTS (default: the test's temporary directory).

Where no browser is installed the tests are skipped, except in CI (CI=true), where .ci/run installs one and a
missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from serve_support import start_server, stop_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SOURCE = ["▁我爱", "你", "</s>"]
TARGET = ["<s>", "▁I", "▁love", "▁you", "."]


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or CHROMIUM is None:
        missing = "playwright" if sync_playwright is None else "chromium"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} is missing: .ci/run installs it")
        pytest.skip(f"{missing} is not installed (apt-get install chromium; pip install playwright)")
    return sync_playwright


@pytest.fixture(scope="module")
def server():
    process, url = start_server()
    yield url
    stop_server(process)


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("ZHEN_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page, errors


def wait_for(page, script: str, what: str) -> None:
    """Wait (60 s: the machine may be busy) for `script` to be true; on a timeout, say what the page shows."""
    try:
        page.wait_for_function(script, timeout=60_000)
    except Exception as error:  # playwright's TimeoutError: report the page's state, not only the wait
        state = page.evaluate("[document.getElementById('target').textContent, "
                              "document.getElementById('status').textContent, document.activeElement.id]")
        pytest.fail(f"{what}: {type(error).__name__}; target, status, focus = {state}")


def translated(page, text: str) -> None:
    wait_for(page, f"document.getElementById('target').textContent === {text!r}", f"no translation {text!r}")


def explained(page, kind: str) -> None:
    wait_for(page, f"document.querySelector('#attention-{kind} svg') !== null", "no heatmaps")


def labels(page, kind: str, axis: str) -> list[str]:
    return page.locator(f"#attention-{kind} figure >> nth=0").locator(f"text.{axis}").all_text_contents()


def test_type_translate_explain_heatmaps(browser, server, shots):
    page, errors = open_page(browser, server, 1200)
    page.locator("#source").press_sequentially("我爱你")  # real key events: translate as you type
    translated(page, "I love you.")
    alternatives = page.locator("#alternatives li").all_inner_texts()
    assert alternatives[0].startswith("I love you.") and len(alternatives) >= 2
    assert all(text.split()[-1].lstrip("-").replace(".", "").isdigit() for text in alternatives)  # with scores

    page.click("#explain-button")
    explained(page, "cross")
    assert page.locator("#source-tokens .piece").all_inner_texts() == SOURCE
    assert page.locator("#target-tokens .piece").all_inner_texts() == TARGET
    expected = {"encoder": (SOURCE, SOURCE), "decoder": (TARGET, TARGET), "cross": (TARGET, SOURCE)}
    for kind, (rows, columns) in expected.items():
        assert page.locator(f"#attention-{kind} figure").count() == 4  # one heatmap per head
        assert labels(page, kind, "query") == rows
        assert labels(page, kind, "key") == columns
        cells = page.locator(f"#attention-{kind} figure >> nth=0").locator("rect.cell")
        assert cells.count() == len(rows) * len(columns)
    # The causal mask: in the decoder's self-attention, the cells above the diagonal are masked.
    assert page.locator("#attention-decoder figure >> nth=0").locator("rect.masked").count() == 10

    cell = page.locator("#attention-cross figure >> nth=0").locator("rect.cell >> nth=4")  # row ▁I, column 你
    cell.hover()
    weight = float(cell.get_attribute("data-weight"))
    readout = page.locator("#attention-cross figure >> nth=0").locator(".readout").inner_text()
    assert readout == f"row “▁I” → column “你”: {weight:.4f}"

    page.locator("#attention-encoder .layer-picker button >> nth=2").click()
    assert page.locator("#attention-encoder figure >> nth=0").get_attribute("data-layer") == "3"
    steps = page.locator("#next-steps .step")
    assert steps.count() == 5 and "writes ▁love" in steps.nth(1).inner_text()
    page.screenshot(path=str(shots / "serve-desktop.png"), full_page=True)
    assert errors == []
    page.close()


def test_phone_width_and_keyboard_only(browser, server, shots):
    page, errors = open_page(browser, server, 390)
    assert page.evaluate("document.activeElement.id") == "source"  # the text box has the focus on arrival
    page.keyboard.type("我爱你")
    page.keyboard.press("Enter")  # Enter translates at once (no new line)
    translated(page, "I love you.")
    assert page.locator("#source").input_value() == "我爱你"
    for _ in range(5):  # Tab reaches the Explain button (past the alternatives' summary)
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "explain-button":
            break
    page.keyboard.press("Enter")
    explained(page, "encoder")
    svg = page.locator("#attention-encoder figure >> nth=0").locator("svg")
    svg.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    readout = page.locator("#attention-encoder figure >> nth=0").locator(".readout").inner_text()
    assert readout.startswith("row “你” → column “你”: ")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    page.screenshot(path=str(shots / "serve-phone.png"), full_page=False)
    assert errors == []
    page.close()
