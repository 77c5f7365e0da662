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

.PHONY: install book test test-fast test-oldest browser clean help
help:
	@echo "make book   build the website into _build/html (executes every notebook)"
	@echo "make test   unit tests + every notebook at LMLIB_SCALE=smoke + strict site build"
	@echo "make install  only create $(VENV) with everything installed"
	@echo "make test-oldest  unit tests + a notebook per chapter with every dependency at its floor (in $(OLDEST_VENV))"

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

# The oldest versions pyproject.toml claims to support: every runtime dependency pinned at its `>=`
# floor (.ci/floor_pins.py writes the pins), in a venv of its own, then the unit tests and one
# notebook per chapter. torch stays at TORCH_SPEC (any other build is a multi-GB download), so its
# floor is not tested. Not part of `make test`. The venv is rebuilt when pyproject.toml or the
# script changes.
OLDEST_VENV  ?= .venv-oldest
OLDEST_PY    := $(OLDEST_VENV)/bin/python
OLDEST_STAMP := $(OLDEST_VENV)/.installed-$(shell cat pyproject.toml .ci/floor_pins.py | cksum | cut -d' ' -f1)
OLDEST_NOTEBOOKS := chapters/01_background/02_ngram_models.ipynb chapters/02_attention/02_multi_head.ipynb \
	chapters/03_transformer/02_gpt.ipynb chapters/04_pretraining/01_tokenization.ipynb \
	chapters/05_applications/02_translation.ipynb chapters/06_challenges/01_faster_and_smaller.ipynb

$(OLDEST_STAMP): pyproject.toml .ci/floor_pins.py
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=python3.x)")'
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) .ci/floor_pins.py --skip torch > $(OLDEST_VENV)/floors.txt
	$(OLDEST_PY) -m pip install --quiet -c $(OLDEST_VENV)/floors.txt -e . pytest nbval nbclient pyyaml hypothesis ipykernel
	$(OLDEST_PY) -m pip check
	touch $@

# Left out: the tests that need the book extras, which are not installed here (the site build and
# browser checks, marker `book`; the notebook budgets, which import Sphinx and MyST-NB), and the
# reader's install into a fresh environment (marker `reader`), which would not use these versions.
test-oldest: $(OLDEST_STAMP)
	@$(OLDEST_PY) -c 'from importlib.metadata import version as v; names = [l.split("==")[0] for l in open("$(OLDEST_VENV)/floors.txt")]; \
	  print("testing with", ", ".join(f"{n} {v(n)}" for n in ["torch", *names]))'
	LMLIB_SCALE=smoke $(OLDEST_PY) -m pytest -m "not book and not reader" --ignore=tests/test_notebook_budgets.py \
	  tests $(OLDEST_NOTEBOOKS)

clean:
	rm -rf _build .pytest_cache
