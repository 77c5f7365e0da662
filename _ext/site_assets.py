"""Site assets: MathJax served from the site itself, no duplicated inline scripts, and the course's
fixes to the theme (``static/lmcourse.js`` and ``lmcourse.css``: the phone menu, wrapped outputs,
images that open at full size).

By default Sphinx pages fetch MathJax from a CDN: offline (or behind a strict firewall) equations
stay raw TeX. MathJax 3 ships on PyPI inside `django-static-mathjax` (plain static files, no
Django needed); this extension copies the parts a page loads into `_static/mathjax/` and points
`mathjax_path` at them.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

# tex-chtml.js plus what it loads on demand: fonts, TeX extensions, the menu and accessibility.
_PARTS = ["tex-chtml.js", "output/chtml/fonts", "input/tex/extensions", "ui", "a11y", "sre"]


def _mathjax_root() -> Path:
    import mathjax  # from django-static-mathjax

    root = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (root / "tex-chtml.js").is_file():
        raise RuntimeError(f"MathJax files not found under {root}: reinstall django-static-mathjax.")
    return root


def _config_inited(app, config):
    config.mathjax_path = "mathjax/tex-chtml.js"  # relative to _static/
    config.html_static_path = [*config.html_static_path, str(Path(__file__).parent / "static")]


def _finish(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    _drop_duplicate_inline_scripts(Path(app.outdir))
    src, dst = _mathjax_root(), Path(app.outdir) / "_static" / "mathjax"
    for part in _PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dst / part)


_INLINE_SCRIPT = re.compile(r"<script>[^<]*</script>\n?")


def _drop_duplicate_inline_scripts(outdir: Path) -> None:
    """sphinx-thebe and sphinx-togglebutton register their inline configuration scripts once per
    read phase and jupyter-book runs two, so every page declared `const THEBE_JS_URL` twice (a
    console error). Keep the first copy of each identical inline script."""
    for page in outdir.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        seen: set[str] = set()

        def once(match: re.Match) -> str:
            if match.group(0) in seen:
                return ""
            seen.add(match.group(0))
            return match.group(0)

        fixed = _INLINE_SCRIPT.sub(once, html)
        if fixed != html:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("config-inited", _config_inited)
    app.connect("build-finished", _finish)
    app.add_css_file("lmcourse.css")
    app.add_js_file("lmcourse.js")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
