"""The search page in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): Chinese and English queries with their highlights, modes, a tag filter, a hit opened in
its document, keyboard navigation, phone width, and the empty / no-results / unreachable states.

Skips when chromium is missing, except under CI=true, where that is a failure."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from serve_support import SEQUENCE_NOTE, RunningServer, build_index, copy_corpus, free_port

from search.server import ServerConfig

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--lang=zh-CN"]
WAIT = 30


def _need_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="search-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}", "--window-size=1280,900"]:
        options.add_argument(flag)
    # The browser is not what a CPU class is tested for: under `make test-avx2` it must not inherit the
    # CPUID shim, whose SIGSEGV handler Chromium's own crash handler replaces.
    env = {name: value for name, value in os.environ.items() if name not in ("LD_PRELOAD", "CPUID_MASK")}
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER, env=env), options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _need_browser()
    root = tmp_path_factory.mktemp("serve-browser")
    build_index(copy_corpus(root / "notes"), root / "index")
    with RunningServer(ServerConfig(index_dir=str(root / "index"), port=free_port(), mcp=False)) as server:
        yield server


# ----- helpers ------------------------------------------------------------------------------------

def _wait(driver, condition, timeout: float = WAIT):
    """condition(driver) until truthy; elements replaced by a re-render meanwhile just mean "not yet"."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException))
    return wait.until(lambda d: condition(d))


def _status(driver) -> str:
    return driver.find_element("id", "status").text


def _open(driver, url: str) -> None:
    driver.get(url)
    _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _type_query(driver, text: str) -> None:
    box = driver.find_element("id", "q")
    box.clear()
    box.send_keys(text)
    # results as you type: no Enter; wait for the debounced search to answer this very text
    _wait(driver, lambda d: d.execute_script("return document.body.classList.contains('busy')") is False
          and d.find_element("id", "q").get_attribute("value") == text
          and ("results" in _status(d) or "No results" in _status(d) or "match the filters" in _status(d)))


def _hits(driver):
    return driver.find_elements("css selector", "#results .hit")


def _marks(element) -> list[str]:
    return [mark.text for mark in element.find_elements("css selector", "mark")]


# ----- the tests ----------------------------------------------------------------------------------

def test_chinese_query_finds_sequence_parallelism_first_with_its_highlight(browser, site):
    _open(browser, site.url)
    assert "搜索" in browser.title and "Search" in browser.title
    _type_query(browser, "序列并行")
    first = _hits(browser)[0]
    location = first.find_element("css selector", ".location")
    assert location.text == f"notes/{SEQUENCE_NOTE}:34"  # shown from the indexed folder on
    assert location.get_attribute("title").endswith(f"/notes/{SEQUENCE_NOTE}:34") and location.get_attribute("title").startswith("/")
    assert first.find_element("css selector", ".heading").text == "序列并行"
    marks = _marks(first.find_element("css selector", ".snippet"))
    assert "序列" in marks and "并行" in marks
    assert set(marks) <= {"序列", "并行"}  # not 列 of 按列 nor 行 of 进行: unigrams inside longer terms are not marked
    assert "?q=" in browser.current_url  # the query is in the address, so the page can be shared or reloaded


def test_english_query_and_mode_switch(browser, site):
    _open(browser, site.url)
    _type_query(browser, "how do I merge keyword and vector results")
    first = _hits(browser)[0]
    assert "retrieval-notes.md" in first.find_element("css selector", ".location").text
    marks = [mark.lower() for mark in _marks(first.find_element("css selector", ".snippet"))]
    assert marks and set(marks) <= {"how", "do", "merge", "keyword", "and", "vector", "results"}  # whole words only
    browser.find_element("css selector", 'label:has(input[value="bm25"])').click()
    _wait(browser, lambda d: "keyword" in _status(d))
    assert all(hit.find_element("css selector", ".score").get_attribute("title").count("dense") == 0 for hit in _hits(browser))
    browser.find_element("css selector", 'label:has(input[value="hybrid"])').click()
    _wait(browser, lambda d: "hybrid" in _status(d))


def test_tag_filter_chip(browser, site):
    _open(browser, site.url)
    _type_query(browser, "检索")
    before = {hit.find_element("css selector", ".location").text for hit in _hits(browser)}
    assert any(SEQUENCE_NOTE not in location for location in before)
    chip = browser.find_element("css selector", '.chip[data-kind="tag"][data-value="机器学习"]')
    chip.click()
    _wait(browser, lambda d: chip.get_attribute("aria-pressed") == "true" and _hits(d)
          and all(SEQUENCE_NOTE in h.find_element("css selector", ".location").text for h in _hits(d)))
    assert "tag=" in browser.current_url
    for kind in ("type", "path"):
        assert browser.find_elements("css selector", f'.chip[data-kind="{kind}"]')
    chip.click()
    _wait(browser, lambda d: chip.get_attribute("aria-pressed") == "false"
          and any(SEQUENCE_NOTE not in h.find_element("css selector", ".location").text for h in _hits(d)))


def test_clicking_a_hit_opens_its_document_at_the_marked_passage(browser, site):
    from selenium.webdriver.common.keys import Keys

    _open(browser, site.url)
    _type_query(browser, "序列并行")
    _hits(browser)[0].click()
    doc = browser.find_element("id", "doc")
    _wait(browser, lambda d: doc.is_displayed() and d.find_elements("css selector", "#doc-body .line.focus"))
    focus = browser.find_elements("css selector", "#doc-body .line.focus")
    assert focus[0].get_attribute("data-line") == "34"
    assert "序列并行沿序列维度切分输入" in focus[0].text
    assert "序列" in _marks(focus[0])
    assert browser.find_elements("css selector", '#doc-body .line[data-line="32"]')  # lines around the passage
    assert SEQUENCE_NOTE in browser.find_element("id", "doc-location").text
    assert browser.execute_script(  # scrolled so the passage is in view
        "const r = document.querySelector('#doc-body .line.focus').getBoundingClientRect();"
        "const b = document.getElementById('doc-body').getBoundingClientRect(); return r.top >= b.top && r.bottom <= b.bottom;")
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: not doc.is_displayed())


def test_keyboard_navigation(browser, site):
    from selenium.webdriver.common.keys import Keys

    _open(browser, site.url)
    _type_query(browser, "并行")
    hits = _hits(browser)
    assert len(hits) >= 2
    box = browser.find_element("id", "q")
    box.send_keys(Keys.ARROW_DOWN)
    box.send_keys(Keys.ARROW_DOWN)
    _wait(browser, lambda d: "selected" in _hits(d)[1].get_attribute("class"))
    assert box.get_attribute("aria-activedescendant") == "hit-1"
    box.send_keys(Keys.ARROW_UP)
    _wait(browser, lambda d: "selected" in _hits(d)[0].get_attribute("class"))
    box.send_keys(Keys.ARROW_DOWN)
    second = _hits(browser)[1]
    second_location = second.find_element("css selector", ".location").get_attribute("title")
    box.send_keys(Keys.ENTER)
    _wait(browser, lambda d: d.find_element("id", "doc").is_displayed() and d.find_element("id", "doc-location").get_attribute("title") == second_location)
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: not d.find_element("id", "doc").is_displayed())
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)  # a second Escape clears the query
    _wait(browser, lambda d: d.find_element("id", "q").get_attribute("value") == "" and not _hits(d))


def test_no_results_says_so(browser, site):
    _open(browser, site.url + "/?mode=bm25")
    _type_query(browser, "zzqqxxyy")
    assert "没有结果" in _status(browser) and "No results" in _status(browser) and not _hits(browser)


def test_phone_width(browser, site):
    browser.set_window_size(390, 844)
    try:
        _open(browser, site.url)
        _type_query(browser, "序列并行")
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        _hits(browser)[0].click()
        doc = browser.find_element("id", "doc")
        _wait(browser, lambda d: doc.is_displayed() and d.find_elements("css selector", "#doc-body .line.focus"))
        assert doc.rect["width"] >= browser.execute_script("return document.documentElement.clientWidth") - 1  # the whole screen
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        browser.find_element("id", "doc-close").click()
        _wait(browser, lambda d: not doc.is_displayed())
    finally:
        browser.set_window_size(1280, 900)


def test_empty_index_and_unreachable_engine_say_so(browser, tmp_path):
    from search import Engine

    (tmp_path / "empty").mkdir()
    Engine.build([str(tmp_path / "empty")], str(tmp_path / "index"))[0].close()
    server = RunningServer(ServerConfig(index_dir=str(tmp_path / "index"), port=free_port(), mcp=False))
    with server:
        _open(browser, server.url)
        _wait(browser, lambda d: "索引为空" in _status(d) and "empty" in _status(d))
        assert "0 段 passages" in browser.find_element("id", "stats").text
    # the server is gone now: the page says it cannot reach the engine
    _type_query_unreachable(browser, "序列并行")
    assert "无法连接搜索引擎" in _status(browser) and "Cannot reach" in _status(browser)


def _type_query_unreachable(driver, text: str) -> None:
    box = driver.find_element("id", "q")
    box.clear()
    box.send_keys(text)
    _wait(driver, lambda d: "Cannot reach" in _status(d))


def test_screenshot_for_the_readme(browser, site):
    """Writes the page's picture where SEARCH_SCREENSHOT says (the README's docs/serve-page.png)."""
    target = os.environ.get("SEARCH_SCREENSHOT")
    if not target:
        pytest.skip("set SEARCH_SCREENSHOT=docs/serve-page.png to refresh the README's screenshot")
    browser.set_window_size(1280, 800)
    _open(browser, site.url)
    _type_query(browser, "序列并行")
    _hits(browser)[0].click()
    _wait(browser, lambda d: d.find_elements("css selector", "#doc-body .line.focus"))
    browser.execute_script("document.activeElement.blur()")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(target)


def test_a_server_with_a_token_asks_for_it_and_takes_it_from_the_address(browser, site):
    index = site.config.index_dir
    server = RunningServer(ServerConfig(index_dir=index, port=free_port(), token="s3cret", mcp=False))
    with server:
        _open(browser, server.url)
        _wait(browser, lambda d: d.find_element("id", "token-box").is_displayed())
        browser.execute_script("sessionStorage.clear()")
        _open(browser, server.url + "/#token=s3cret")
        assert "token" not in browser.current_url  # taken out of the address at once
        _type_query(browser, "序列并行")
        assert SEQUENCE_NOTE in _hits(browser)[0].find_element("css selector", ".location").text
        browser.execute_script("sessionStorage.clear()")
