"""Chapter 4's GPT-2 tokenizer: the course's ByteBPE with OpenAI's merges against Hugging Face's.

``ByteBPE.from_gpt2()`` is pure Python; ``transformers.GPT2TokenizerFast`` runs Hugging Face's Rust
``tokenizers`` library (timed through ``transformers`` and called directly). Both are built from the same two files (the registry's ``gpt2-tokenizer``)
and encode the same texts (Tiny Shakespeare and WikiText-2's validation file by default); the
script checks that the ids are identical and prints ids/s and the ratio to the fast tokenizer.
With transformers 4 it also times the slow, pure-Python ``transformers.GPT2Tokenizer`` (version 5
dropped it: there ``GPT2Tokenizer`` is the fast one).

Our tokenizer keeps the ids of every distinct pre-token in a cache, as GPT-2's own encoder does,
so a text costs less the second time: each round times a fresh tokenizer (cold cache) and then the
same text again (warm cache). Rounds alternate between the tokenizers; figures are medians.

    LMLIB_DATA=<mirror> .venv/bin/python benchmarks/gpt2_tokenizer.py

That the ids agree on every UTF-8 file of the data mirror, whole, is a test
(``tests/test_gpt2_tokenizer.py``), not part of this timing. Results go to
``benchmarks/results/cpu_gpt2_tokenizer.json`` and to stdout.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import transformers
from common import RESULTS, cpu_name, write_results

import lmlib.data
from lmlib.tokenizers import ByteBPE

TEXTS = {"Tiny Shakespeare": ("tinyshakespeare", "input.txt"), "WikiText-2 validation": ("wikitext-2", "wiki.valid.tokens")}


def hugging_face(cls, encoder: Path, merges: Path):
    """``cls`` (a transformers GPT-2 tokenizer class) built from the two files."""
    # transformers 5 takes the two files as vocab= and merges=; version 4 called them vocab_file= and merges_file=
    names = ("vocab", "merges") if int(transformers.__version__.split(".")[0]) >= 5 else ("vocab_file", "merges_file")
    tok = cls(**dict(zip(names, (str(encoder), str(merges)))))
    if len(tok) != 50257:
        raise RuntimeError(f"{cls.__name__} did not read {encoder} and {merges} ({len(tok)} tokens)")
    return tok


def timed(encode, text: str) -> tuple[list[int], float]:
    start = time.perf_counter()
    ids = encode(text)
    return ids, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-chars", type=int, default=None, help="use only the start of each text")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds per text (median)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    encoder = lmlib.data.path("gpt2-tokenizer", "encoder.json")
    merges = lmlib.data.path("gpt2-tokenizer", "vocab.bpe")
    gpt2 = ByteBPE.from_gpt2(encoder, merges)
    fast = hugging_face(transformers.GPT2TokenizerFast, encoder, merges)
    slow_class = getattr(transformers, "GPT2Tokenizer", None)
    slow = hugging_face(slow_class, encoder, merges) if slow_class is not None and slow_class is not transformers.GPT2TokenizerFast else None
    load_before = os.getloadavg()
    print(f"{cpu_name()} | transformers {transformers.__version__} | load average {load_before[0]:.2f}"
          + ("" if slow else " | no slow GPT2Tokenizer in this transformers"))

    columns = ["lmlib ByteBPE (cold cache)", "lmlib ByteBPE (warm cache)", "GPT2TokenizerFast",
               "its Rust backend, called directly"] + (["GPT2Tokenizer (slow)"] if slow else [])
    print(f"{'text':<24}{'tokens':>10}" + "".join(f"{c:>36}" for c in columns))
    rows = []
    for label, (name, file) in TEXTS.items():
        text = lmlib.data.path(name, file).read_text(encoding="utf-8")[: args.max_chars]
        seconds: dict[str, list[float]] = {c: [] for c in columns}
        for _ in range(args.repeats):
            fresh = ByteBPE(gpt2.merges, list(gpt2.special_tokens), gpt2.pattern, gpt2.byte_order)  # empty cache
            ours, s = timed(fresh.encode_list, text)
            seconds[columns[0]].append(s)
            seconds[columns[1]].append(timed(fresh.encode_list, text)[1])
            reference, s = timed(lambda t: fast(t)["input_ids"], text)
            seconds[columns[2]].append(s)
            if ours != reference:
                raise AssertionError(f"ByteBPE.from_gpt2 and GPT2TokenizerFast give different ids on {label}")
            ids, s = timed(lambda t: fast.backend_tokenizer.encode(t).ids, text)
            seconds[columns[3]].append(s)
            if ids != reference:
                raise AssertionError(f"GPT2TokenizerFast's backend gives other ids on {label}")
            if slow:
                ids, s = timed(lambda t: slow(t)["input_ids"], text)
                seconds[columns[4]].append(s)
                if ids != reference:
                    raise AssertionError(f"the slow GPT2Tokenizer gives other ids on {label}")
        ids_per_s = {c: len(reference) / statistics.median(v) for c, v in seconds.items()}
        ratio = {c: r / ids_per_s["GPT2TokenizerFast"] for c, r in ids_per_s.items()}
        rows.append({"text": label, "chars": len(text), "bytes": len(text.encode("utf-8")), "tokens": len(reference),
                     "same_ids": True, "seconds": seconds, "ids_per_s": ids_per_s, "ratio_to_fast": ratio})
        print(f"{label:<24}{len(reference):>10,}" + "".join(f"{ids_per_s[c]:>25,.0f} ({ratio[c]:5.2f}x)" for c in columns))

    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": cpu_name(), "python": sys.version.split()[0], "transformers": transformers.__version__,
        "repeats": args.repeats, "max_chars": args.max_chars, "rows": rows,
        "slow_tokenizer": "timed" if slow else "not in this transformers version (5 dropped the pure-Python class)",
        "load_average_before_after": [load_before, os.getloadavg()],
        "command": "python benchmarks/gpt2_tokenizer.py " + " ".join(sys.argv[1:]),
    }
    write_results(result, args.out or RESULTS / "cpu_gpt2_tokenizer.json")


if __name__ == "__main__":
    main()
