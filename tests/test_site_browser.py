"""The built site, as a reader's browser sees it: headless Chromium loads every page.

Checks per page: no console errors and no request leaves the machine (MathJax is served locally),
math is typeset, every image loads, exercise solutions start collapsed, and every interactive
explorer widget (which cannot run on a static site) shows its static first drawing, loaded and
visible, with no Python repr of the widget leaking into the page, every image has alt text that
describes it (not its file name), and no progress bar is frozen at 0%. On a phone (390 x 844) no
page scrolls sideways and the menu button opens the chapter list. Screenshots of a few pages
are saved as test artefacts (their paths are printed). Skipped where Chromium is not installed;
`make test` installs it when it can (as root with apt-get, as in CI).
"""
import functools
import http.server
import re
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "_build" / "screenshots"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def _pages(site: Path) -> list[Path]:
    # index.html only redirects to intro.html; genindex and search are Sphinx's generated pages.
    skip = {"index.html", "genindex.html", "search.html"}
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts and p.relative_to(site).as_posix() not in skip)


@pytest.mark.book
def test_no_broken_internal_links(site):
    parsed = {}
    for page in site.rglob("*.html"):
        parser = _Links()
        parser.feed(page.read_text(errors="replace"))
        parsed[page.resolve()] = parser
    broken = []
    for page, parser in parsed.items():
        for href in parser.hrefs:
            if urlparse(href).scheme or href.startswith(("mailto:", "//")):
                continue
            url, fragment = urldefrag(href)
            target = (page.parent / url).resolve() if url else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site.resolve())}: {href}")
            elif fragment and target.suffix == ".html" and fragment not in parsed[target].ids:
                broken.append(f"{page.relative_to(site.resolve())}: {href} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:30])


# For each code cell that shows an lmlib explorer (a widget), is there an image in its output
# (the explorer's static first drawing), loaded and visible?
WIDGET_FALLBACKS = """() => Array.from(document.querySelectorAll('div.cell'))
  .filter(c => /explorer\\(/.test((c.querySelector('.cell_input') || {}).innerText || ''))
  .map(c => {
    const img = c.querySelector('.cell_output img');
    return !!img && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().height > 0;
  })"""


# Alt text that is missing, or only a file name (a plot's would otherwise be its hash path).
IMAGES_WITHOUT_ALT = """() => Array.from(document.querySelectorAll('main img'))
  .filter(i => { const a = (i.getAttribute('alt') || '').trim();
                 return a.length < 6 || /\\.(png|svg|jpe?g|gif)$/i.test(a) || /[0-9a-f]{32}/.test(a); })
  .map(i => i.getAttribute('src'))"""
# A tqdm bar as its widget's text fallback shows it before the first update.
FROZEN_BAR = re.compile(r"(?<![\d.])0%\|[^\n|]*\|\s*0/\d+")


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def served(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.book
def test_every_page_renders_in_chromium(site, served, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shots, problems, widget_pages = [], [], []
    pages = _pages(site)
    for page_file in pages:
        rel = page_file.relative_to(site).as_posix()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, outside = [], []
        page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.on("requestfailed", lambda r, errors=errors: errors.append(f"failed request {r.url}"))
        page.on("request", lambda r, outside=outside: outside.append(r.url) if not r.url.startswith((served, "data:", "blob:")) else None)
        page.goto(f"{served}/{rel}", wait_until="networkidle")
        html = page_file.read_text()
        if re.search(r'class="[^"]*\bmath\b', html):
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
            page.evaluate("() => MathJax.startup.promise")
            if page.locator("mjx-container").count() == 0:
                problems.append(f"{rel}: math not typeset")
        broken_images = page.evaluate(
            "() => Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        if broken_images:
            problems.append(f"{rel}: images not loaded {broken_images}")
        solutions = page.locator("div.solution")
        for i in range(solutions.count()):
            body = solutions.nth(i).locator(".admonition-title ~ *").first
            if body.count() and body.is_visible():
                problems.append(f"{rel}: solution {i + 1} is not collapsed")
        if page.locator("div.exercise").count() and not solutions.count():
            problems.append(f"{rel}: exercises without solutions")
        widgets = page.evaluate(WIDGET_FALLBACKS)
        if widgets:
            widget_pages.append(rel)
        if not all(widgets):
            problems.append(f"{rel}: an explorer cell without its static figure (loaded, visible) {widgets}")
        bad_alt = page.evaluate(IMAGES_WITHOUT_ALT)
        if bad_alt:
            problems.append(f"{rel}: images without alt text that describes them {bad_alt[:3]}")
        frozen = FROZEN_BAR.findall(page.inner_text("main"))
        if frozen:
            problems.append(f"{rel}: progress bars frozen at 0% {frozen[:2]}")
        leaked = [w for w in ("VBox(children", "interactive(children", "HBox(children") if w in page.inner_text("main")]
        if leaked:
            problems.append(f"{rel}: widget repr shown as text {leaked}")
        if errors:
            problems.append(f"{rel}: console errors {errors[:3]}")
        if outside:
            problems.append(f"{rel}: requests leaving the machine {outside[:3]}")
        if rel in ("intro.html", "chapters/01_background/01_language_models.html") or rel.endswith("/01_attention_by_hand.html"):
            shot = SCREENSHOTS / (rel.replace("/", "_").replace(".html", ".png"))
            page.screenshot(path=str(shot), full_page=False)
            shots.append(shot)
        page.close()
    print(f"\nChecked {len(pages)} pages in Chromium ({len(widget_pages)} with widgets: static figures present); "
          "screenshots:\n" + "\n".join(f"  {s}" for s in shots))
    assert not problems, "\n".join(problems)
    expected = {nb.relative_to(ROOT).with_suffix(".html").as_posix() for nb in ROOT.glob("chapters/*/*.ipynb")
                if "explorer(" in nb.read_text()}
    assert expected <= set(widget_pages), f"pages whose notebooks show a widget but none was found: {expected - set(widget_pages)}"
    assert len(pages) >= 5


PHONE = {"width": 390, "height": 844}


@pytest.mark.book
def test_phone_pages_do_not_scroll_sideways(site, served, browser):
    wide = []
    for page_file in _pages(site):
        rel = page_file.relative_to(site).as_posix()
        page = browser.new_page(viewport=PHONE, is_mobile=True)
        page.goto(f"{served}/{rel}", wait_until="load")
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        if overflow > 1:
            culprits = page.evaluate("""() => Array.from(document.querySelectorAll('main *'))
              .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
              .filter(e => !Array.from(e.children).some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
              .slice(0, 3).map(e => e.tagName + '.' + e.className + ': ' + (e.innerText || '').slice(0, 40))""")
            wide.append(f"{rel}: {overflow}px wider than the screen, e.g. {culprits}")
        page.close()
    assert not wide, "pages that scroll sideways on a phone:\n" + "\n".join(wide)


@pytest.mark.book
def test_phone_menu_opens_the_chapter_list(site, served, browser):
    page = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True)
    page.goto(f"{served}/chapters/02_attention/01_attention_by_hand.html", wait_until="networkidle")
    visible = [b for b in page.locator(".primary-toggle").all() if b.is_visible()]
    assert visible, "no visible menu button on a phone"
    nav = page.locator("nav.bd-docs-nav")
    assert not nav.is_visible(), "the chapter list shows before the menu is opened"
    visible[0].click()
    page.wait_for_timeout(300)
    assert nav.is_visible(), "the menu button did not open the chapter list"
    assert page.get_by_role("link", name=re.compile("The Transformer|Pretraining", re.I)).first.is_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "phone_menu.png"))
    page.close()


@pytest.mark.book
def test_search_ranks_the_teaching_page_first_and_shows_no_raw_math(site, served, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{served}/search.html?q=softmax", wait_until="networkidle")
    page.wait_for_selector("#search-results ul.search li", timeout=20000)
    page.wait_for_timeout(1500)  # the snippets are filled in as each page is fetched
    results = page.eval_on_selector_all("#search-results ul.search li", """items => items.map(li => ({
        href: li.querySelector('a').getAttribute('href'),
        snippet: (li.querySelector('p.context') || {}).textContent || ''}))""")
    page.close()
    assert results, "no search results for 'softmax'"
    assert "glossary" not in results[0]["href"] and "bibliography" not in results[0]["href"], results[:3]
    raw = [r for r in results if "\\(" in r["snippet"] or "\\[" in r["snippet"] or "\\frac" in r["snippet"]]
    assert not raw, f"search snippets show raw TeX: {raw[:2]}"
