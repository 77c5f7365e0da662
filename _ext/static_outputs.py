"""What the book's kernels print, made for a static page: finished progress bars, described plots.

**Progress bars.** In Jupyter, ``tqdm.auto`` draws a widget that updates live. A static page
cannot run widgets, so it would show the text the widget was created with, ``training: 0% 0/20``,
for a run that finished long ago. While the book executes its notebooks, every kernel gets a bar
that draws nothing while it runs and prints its final line once, when it closes.

**Alt text.** A plot on the page is an ``<img>`` whose alt text would be its file name. The
kernels give every Matplotlib figure a plain-text form written by
``lmlib.plot.describe_figure`` (its titles, axes and legends); after the build, each plot's
``<img>`` gets the text of the output it came from (matched by the image's SHA-256, which is
its file name).

The kernels inherit the build's environment, so ``IPYTHONDIR`` points them at a profile whose
startup file calls :func:`install` before the first cell runs. Only the book build is affected:
Jupyter, Colab and the tests keep the live bars.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from tqdm.std import tqdm as _text_tqdm


class StaticBar(_text_tqdm):
    """A text bar that stays silent while it runs and prints its last state once, on close."""

    def __init__(self, *args, **kwargs):
        self._stream = kwargs.pop("file", None) or sys.stdout
        kwargs["file"] = io.StringIO()  # where tqdm's own refreshes go: nowhere visible
        kwargs.setdefault("ascii", False)
        kwargs.pop("ncols", None)
        self._shown = False
        super().__init__(*args, **kwargs)

    def close(self):
        if self._shown or self.disable or not self.leave:
            return super().close()
        self._shown = True
        line = str(self).replace("\r", "").strip()
        super().close()
        print(line, file=self._stream, flush=True)


def install() -> None:
    """In a kernel: static bars from ``tqdm.auto``, and a figure's plain text is its description."""
    import tqdm.auto
    import tqdm.autonotebook

    tqdm.auto.tqdm = StaticBar
    tqdm.autonotebook.tqdm = StaticBar
    from matplotlib.figure import Figure

    def describe(fig, printer, cycle):
        from lmlib.plot import describe_figure
        printer.text(describe_figure(fig))

    # A method, not a formatter entry: the inline backend drops every formatter registered for
    # Figure when pyplot is first imported, and IPython's printer falls back on _repr_pretty_.
    Figure._repr_pretty_ = describe


_STARTUP = """\
import sys
sys.path.insert(0, {ext!r})
import static_outputs
static_outputs.install()
sys.path.remove({ext!r})
"""


def _builder_inited(app):
    ipython_dir = Path(tempfile.mkdtemp(prefix="lmcourse-ipython-"))
    startup = ipython_dir / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-static-outputs.py").write_text(_STARTUP.format(ext=str(Path(__file__).parent)))
    os.environ["IPYTHONDIR"] = str(ipython_dir)


def image_descriptions(notebooks: list[Path]) -> dict[str, str]:
    """``{sha256 of an output image: its output's text/plain}`` over executed notebooks."""
    found = {}
    for path in notebooks:
        for cell in json.loads(path.read_text(encoding="utf-8")).get("cells", []):
            for output in cell.get("outputs", []):
                data = output.get("data", {})
                text = data.get("text/plain")
                text = "".join(text) if isinstance(text, list) else text
                if not text or text.startswith("<"):  # a bare repr such as <Figure size 640x480 ...>
                    continue
                for mime in ("image/png", "image/jpeg", "image/gif"):
                    if mime in data:
                        raw = base64.b64decode("".join(data[mime]) if isinstance(data[mime], list) else data[mime])
                        found[hashlib.sha256(raw).hexdigest()] = " ".join(text.split())
    return found


_IMG = re.compile(r'<img\b[^>]*?>')
_SRC = re.compile(r'\bsrc="[^"]*?([0-9a-f]{64})\.(?:png|jpe?g|gif)"')
_ALT = re.compile(r'\balt="[^"]*"')


def add_alt_text(page_html: str, descriptions: dict[str, str]) -> str:
    """Give every output image of the page the description of the output it came from."""
    def fix(match: re.Match) -> str:
        tag = match.group(0)
        src = _SRC.search(tag)
        if not src or src.group(1) not in descriptions:
            return tag
        alt = f'alt="{html.escape(descriptions[src.group(1)], quote=True)}"'
        return _ALT.sub(lambda _: alt, tag, count=1) if _ALT.search(tag) else tag.replace("<img", f"<img {alt}", 1)

    return _IMG.sub(fix, page_html)


def _build_finished(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    executed = Path(app.outdir).parent / "jupyter_execute"
    descriptions = image_descriptions(sorted(executed.rglob("*.ipynb"))) if executed.is_dir() else {}
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = add_alt_text(text, descriptions)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("builder-inited", _builder_inited)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
