# The course's two commands (see README.md):
#   make book   build the website, executing every notebook, into _build/html
#   make test   run the unit tests, every notebook (nbval) and a strict site build
# Both create the virtual environment and install what they need first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# PyTorch is installed first and pinned: an unpinned `torch` can pull a multi-GB CUDA build.
# An environment that already imports torch (a CUDA build you installed, Colab) keeps its own.
TORCH_SPEC ?= torch==2.13.0
# The course data mirror, if this checkout has one beside it (CI does); readers download instead.
LMLIB_DATA ?= $(wildcard $(abspath $(CURDIR)/../shared/data))
export LMLIB_DATA
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install book test test-fast browser clean help
help:
	@echo "make book   build the website into _build/html (executes every notebook)"
	@echo "make test   unit tests + every notebook at LMLIB_SCALE=smoke + strict site build"
	@echo "make install  only create $(VENV) with everything installed"

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.x)")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

# The scale preset is the reader's (LMLIB_SCALE, default: gpu with CUDA, else cpu).
book: install
	$(VENV)/bin/jupyter-book build . -W --keep-going
	@echo "Open _build/html/index.html in a browser (or: $(PY) -m http.server -d _build/html 8000)."

test: install browser
	LMLIB_SCALE=smoke $(PY) -m pytest

# The site checks drive Debian's Chromium (browser downloads by Playwright do not work offline).
# Installed when we can (root with apt-get, as in CI); otherwise those checks are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "Chromium is not installed: the browser checks of the site will be skipped."; fi; }

test-fast: install
	LMLIB_SCALE=smoke $(PY) -m pytest tests -m "not book"

clean:
	rm -rf _build .pytest_cache
