"""lmlib: the one source of the course's reusable code.

Each module holds one idea and names the chapter that derives it. Notebooks build a piece in the
open, then check it against the module here, so the book and the library cannot drift apart.
Submodules load on first use (``lmlib.attention`` imports ``lmlib/attention.py``), so
``import lmlib`` stays fast.

The package is flat, but its modules form three layers (:data:`LAYERS`; a test keeps them so):

- **core**, the language-model engine: where and how big a run is (``presets``, ``device``), data
  and tokens (``data``, ``tokenizers``), the model (``attention``, ``model``), using it
  (``generate``, ``metrics``) and training it (``optim``, ``train``, ``checkpoint``). Core
  modules import only core modules.
- **applications**, one module per chapter topic, built on the core: n-grams and RNNs (chapter
  1), deduplication and published weights (4: GPT-2 from the Hub, llama2.c's Llama),
  classification, translation, instructions, LoRA, span tasks and retrieval (5), compression,
  speculative decoding, cost, privacy and DP-SGD, bias audits and interpretability (6). They
  import the core and each other, never the book plumbing.
- **book**, the plumbing of the website and its exercises: glue, plots, widgets, the shared
  training recipes, the chat assistant made from the released course model (``chat``, which loads
  releases through ``recipes``; its conversations, ``dialogue``; its evaluation harness, ``evals``;
  its training recipe, ``assistant``), and the exercise checkers. These may import anything.
"""
import importlib

from lmlib.book import glue as glue  # every notebook glues numbers into its prose

__version__ = "0.1.0"

#: The three layers of the package, each a tuple of module names (see the module docstring).
LAYERS = {
    "core": ("presets", "device", "data", "tokenizers", "attention", "model", "generate", "metrics",
             "checkpoint", "optim", "train"),
    "applications": ("ngram", "rnn", "dedup", "corpus", "pretrained", "hub", "llama2c", "classify", "seq2seq",
                     "instruct", "lora", "spans", "retrieval", "compress", "speculative", "cost", "privacy", "dp", "audit", "interpret"),
    "book": ("book", "plot", "widgets", "recipes", "chat", "dialogue", "evals", "assistant", "exercises"),
}


def __getattr__(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    try:
        module = importlib.import_module(f"lmlib.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"lmlib.{name}":
            raise  # a real missing dependency inside the module, not a wrong name
        raise AttributeError(f"module 'lmlib' has no submodule or attribute {name!r}") from None
    globals()[name] = module
    return module
