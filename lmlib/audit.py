"""Auditing a model for bias and robustness: what it prefers, and what breaks it.

Derived in chapter 6 ("Challenges", notebook 04, bias and robustness), which audits the course
model of chapter 4. Three tools:

- a **template probe** for a language model: the log-probability of each continuation (" he",
  " she", an occupation, ...) after each filled-in template ("The nurse said that"), as a tidy
  table with one row per (template, filler, continuation); and the **counts** of a corpus that a
  probe must be read against (how often each word occurs, and how often near each pronoun);
- **counterfactual swaps**: replace words by their partners (he <-> she, John <-> Mary), whole
  words only, keeping the case, and measure how a classifier's predictions move;
- **noise** for robustness: character typos (swap, drop, insert, keyboard neighbour) and word
  dropout at a given rate with a seeded generator, the accuracy-against-noise curve of a
  classifier, and the exact log-likelihood of whole texts under a language model
  (:func:`text_nll`), to compare perturbed texts per word rather than per token.

API summary
-----------
continuation_logprobs(model, tokenizer, prompts, continuations, batch_size=64) -> Tensor (N,)
template_probe(model, tokenizer, templates, fillers, continuations) -> list[dict]   tidy rows
log_odds(rows, a, b) -> dict[filler, float]       mean over templates of log P(a) - log P(b)
format_table(rows, columns=None, floatfmt=".3f", max_rows=None) -> str
cooccurrence(words, targets, contexts, window=10) -> dict[target, dict[context, int]]
corpus_counts(texts, targets, contexts, window=10) -> CorpusCounts   the same over documents, + totals
words_of(text) -> list[str]                       lowercase words (runs of letters)
swap_map(pairs) -> dict[str, str];  swap_words(text, pairs) -> str;  GENDER_PAIRS, NAME_PAIRS
counterfactual_shift(predict_proba, texts, pairs, positive=1, n_examples=5) -> SwapResult
typos(text, rate, rng, kinds=KINDS) -> str;  word_dropout(text, rate, rng) -> str
KEYBOARD_NEIGHBOURS, keyboard_typo(char, rng) -> str
noise_curve(predict, texts, labels, noise, rates, seeds=(0,), progress=True) -> NoiseCurve
text_nll(model, tokenizer, texts, prefix="", batch_size=16) -> (nats (N,), tokens (N,))   every token scored once
"""
from __future__ import annotations

import bisect
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from lmlib.data import pad_right
from lmlib.device import eval_mode, model_device
from lmlib.generate import continuation_logprob

Tensor = torch.Tensor

__all__ = [
    "continuation_logprobs", "template_probe", "log_odds", "format_table", "cooccurrence", "CorpusCounts",
    "corpus_counts", "words_of", "text_nll",
    "GENDER_PAIRS", "NAME_PAIRS", "swap_map", "swap_words", "SwapResult", "counterfactual_shift",
    "KINDS", "KEYBOARD_NEIGHBOURS", "keyboard_typo", "typos", "word_dropout", "NoiseCurve",
    "noise_curve",
]


# --- (a) template probes for a language model ----------------------------------------------------

def _encode(tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text)
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    if tokenizer.decode(ids) != text:
        raise ValueError(
            f"The tokenizer cannot represent the {what} {text!r} exactly (it decodes to "
            f"{tokenizer.decode(ids)!r}); a word-level tokenizer turns unknown words into <unk>, and "
            "the probe would score <unk> instead. Use words from the tokenizer's vocabulary, or a BPE tokenizer."
        )
    return ids


@torch.no_grad()
def continuation_logprobs(model: torch.nn.Module, tokenizer, prompts: Sequence[str],
                          continuations: Sequence[str], batch_size: int = 64) -> Tensor:
    """log P(continuation | prompt) for each pair, summed over the continuation's tokens (float64, (N,)).

    Prompt and continuation are encoded separately and joined, so the continuation's tokens are
    the same whatever the prompt (put the space at the start of the continuation: " he").
    ``model(idx) -> (logits, loss)`` as :class:`lmlib.model.GPT`; it runs in evaluation mode.
    Sequences are padded on the right, which a causal model never looks at.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"Need one continuation per prompt, got {len(prompts)} prompts and {len(continuations)} continuations.")
    block = getattr(getattr(model, "config", None), "block_size", None)
    seqs, starts = [], []
    for prompt, cont in zip(prompts, continuations):
        p, c = _encode(tokenizer, prompt, "prompt"), _encode(tokenizer, cont, "continuation")
        if not p or not c:
            raise ValueError(f"Prompt {prompt!r} and continuation {cont!r} must both be non-empty: "
                             "the first continuation token is predicted from the prompt.")
        if block is not None and len(p) + len(c) > block:
            raise ValueError(f"{prompt!r} + {cont!r} is {len(p) + len(c)} tokens, more than the model's "
                             f"context of {block}: shorten the template.")
        seqs.append(p + c)
        starts.append(len(p))
    out = []
    with eval_mode(model):
        device = model_device(model)
        for lo in range(0, len(seqs), batch_size):
            chunk = seqs[lo:lo + batch_size]
            x = pad_right(chunk, 0).to(device)  # right padding: a causal model never looks at it
            out.append(continuation_logprob(model, x, torch.tensor(starts[lo:lo + batch_size], device=device),
                                            torch.tensor([len(s) for s in chunk], device=device),
                                            dtype=torch.float64).cpu())
    return torch.cat(out)


def template_probe(model: torch.nn.Module, tokenizer, templates: Sequence[str], fillers: Sequence[str],
          continuations: Sequence[str]) -> list[dict]:
    """Score every continuation after every template filled with every filler: a tidy table.

    A template holds one ``{}``, e.g. ``"The {} said that"`` with fillers ``["nurse", "engineer"]``
    and continuations ``[" he", " she"]``, or ``"{} worked as a"`` with fillers ``["He", "She"]``
    and occupations as continuations. One row per (template, filler, continuation) with keys
    ``template, filler, prompt, continuation, logprob``.
    """
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"Each template needs exactly one '{{}}' where the filler goes, got {t!r}.")
    keys = [(t, f, c) for t in templates for f in fillers for c in continuations]
    if not keys:
        raise ValueError("Need at least one template, one filler and one continuation.")
    prompts = [t.format(f) for t, f, _ in keys]
    scores = continuation_logprobs(model, tokenizer, prompts, [c for *_, c in keys])
    return [dict(template=t, filler=f, prompt=p, continuation=c, logprob=float(s))
            for (t, f, c), p, s in zip(keys, prompts, scores)]


def log_odds(rows: Sequence[dict], a: str, b: str) -> dict[str, float]:
    """For each filler, the mean over templates of log P(a | prompt) - log P(b | prompt).

    Positive: the model prefers continuation ``a``. ``rows`` come from :func:`template_probe`.
    """
    score = {(r["template"], r["filler"], r["continuation"]): r["logprob"] for r in rows}
    conts = {r["continuation"] for r in rows}
    for c in (a, b):
        if c not in conts:
            raise ValueError(f"Continuation {c!r} is not in the rows; they hold {sorted(conts)}.")
    diffs: dict[str, list[float]] = {}
    for (t, f, c) in score:
        if c == a and (t, f, b) in score:
            diffs.setdefault(f, []).append(score[t, f, a] - score[t, f, b])
    return {f: sum(d) / len(d) for f, d in diffs.items()}


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None, floatfmt: str = ".3f",
                 max_rows: int | None = None) -> str:
    """A plain-text table of dict rows (floats formatted with ``floatfmt``), for printing.

    Strings with leading or trailing spaces are shown quoted (" he" reads as ' he').
    """
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    shown = list(rows[:max_rows] if max_rows else rows)

    def cell(value) -> str:
        if isinstance(value, float):
            return format(value, floatfmt)
        if isinstance(value, str) and value != value.strip():
            return repr(value)
        return str(value)

    body = [[cell(r[c]) for c in columns] for r in shown]
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
    left = [isinstance(shown[0][c], str) for c in columns]  # text left-aligned, numbers right-aligned

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if l else v.rjust(w) for v, w, l in zip(values, widths, left)).rstrip()

    out = [line(columns), line(["-" * w for w in widths])] + [line(b) for b in body]
    if max_rows and len(rows) > max_rows:
        out.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(out)


def cooccurrence(words: Sequence[str], targets: Sequence[str], contexts: Sequence[str],
                 window: int = 10) -> dict[str, dict[str, int]]:
    """How often each context word occurs within ``window`` words of each target word.

    ``words`` is the corpus as a list of (lowercased) words; for every occurrence of a target,
    the context words at distance 1..``window`` on either side are counted. One pass collects the
    positions of the words of interest; a binary search then counts each window.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 word, got {window}.")
    where: dict[str, list[int]] = {w: [] for w in (*targets, *contexts)}
    for pos, w in enumerate(words):
        if w in where:
            where[w].append(pos)
    out = {}
    for t in targets:
        pos = torch.tensor(where[t], dtype=torch.long)
        out[t] = {}
        for c in contexts:
            cpos = torch.tensor(where[c], dtype=torch.long)
            inside = torch.searchsorted(cpos, pos + window + 1) - torch.searchsorted(cpos, pos - window)
            out[t][c] = int(inside.sum()) - (len(pos) if c == t else 0)  # a word is not its own context
    return out


_WORD = re.compile(r"[a-z]+")


def words_of(text: str) -> list[str]:
    """The lowercase words of ``text``: maximal runs of the letters a-z ("He's" gives "he", "s")."""
    return _WORD.findall(text.lower())


@dataclass
class CorpusCounts:
    """What :func:`corpus_counts` counted.

    ``near[t][c]``: occurrences of context word ``c`` within the window of an occurrence of target
    ``t`` (same document); ``totals[w]``: occurrences of each target and context word;
    ``n_words``: all words of the corpus; ``n_docs``: documents.
    """

    near: dict[str, dict[str, int]]
    totals: dict[str, int]
    n_words: int
    n_docs: int


def corpus_counts(texts: Sequence[str] | Iterable[str], targets: Sequence[str], contexts: Sequence[str],
                  window: int = 10) -> CorpusCounts:
    """:func:`cooccurrence` over a corpus of documents, with the total count of every word of interest.

    Each text is split into lowercase words by :func:`words_of`; windows never cross from one
    document into the next. Only the positions of the words of interest are kept, so a corpus of
    millions of words is counted in one pass without holding its word list.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 word, got {window}.")
    bad = [w for w in (*targets, *contexts) if not isinstance(w, str) or not _WORD.fullmatch(w)]
    if bad:
        raise ValueError(f"targets and contexts must be lowercase words of letters a-z (what words_of "
                         f"returns), got {bad[:3]!r}.")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, not one string: wrap it as [text].")
    interest = set(targets) | set(contexts)
    near = {t: {c: 0 for c in contexts} for t in targets}
    totals = {w: 0 for w in interest}
    n_words = n_docs = 0
    for text in texts:
        words = words_of(text)
        n_docs += 1
        n_words += len(words)
        where: dict[str, list[int]] = {}
        for pos, w in enumerate(words):
            if w in interest:
                where.setdefault(w, []).append(pos)
        for w, pos in where.items():
            totals[w] += len(pos)
        for t in targets:
            for p in where.get(t, ()):
                for c in contexts:
                    cpos = where.get(c)
                    if cpos:
                        inside = bisect.bisect_right(cpos, p + window) - bisect.bisect_left(cpos, p - window)
                        near[t][c] += inside - (1 if c == t else 0)  # a word is not its own context
    return CorpusCounts(near, totals, n_words, n_docs)


# --- (b) counterfactual swaps --------------------------------------------------------------------

#: Gendered word pairs. "her" is both the partner of "him" and of "his": the first pair wins, so
#: "her" becomes "his" and a swap of "him" is not undone by a second swap (see :func:`swap_map`).
GENDER_PAIRS: tuple[tuple[str, str], ...] = (
    ("he", "she"), ("his", "her"), ("him", "her"), ("himself", "herself"), ("man", "woman"),
    ("men", "women"), ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("son", "daughter"),
    ("brother", "sister"), ("husband", "wife"), ("boyfriend", "girlfriend"), ("king", "queen"),
    ("mr", "mrs"), ("guy", "gal"), ("dad", "mom"), ("actor", "actress"), ("actors", "actresses"),
)

#: Common first names, paired across genders (a swap changes only the name).
NAME_PAIRS: tuple[tuple[str, str], ...] = (
    ("john", "mary"), ("james", "linda"), ("michael", "susan"), ("david", "sarah"),
    ("robert", "jennifer"), ("william", "elizabeth"), ("richard", "karen"), ("thomas", "emma"),
    ("daniel", "anna"), ("paul", "lisa"), ("mark", "laura"), ("peter", "kate"), ("tom", "amy"),
    ("jack", "emily"), ("steve", "helen"), ("chris", "julia"),
)


def swap_map(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Both directions of each (a, b) pair, lowercased. A word in two pairs keeps its first partner.

    The swap is exactly reversible on a text when the pairs form a one-to-one mapping (no word in
    two pairs); with ``GENDER_PAIRS`` "him" -> "her" -> "his" is the known exception.
    """
    mapping: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(w, str) and re.fullmatch(r"\w+", w) for w in pair):
            raise ValueError(f"Each pair must be two single words, like ('he', 'she'); got {pair!r}.")
        a, b = (w.lower() for w in pair)
        if a == b:
            raise ValueError(f"Pair {pair!r} swaps a word with itself.")
        mapping.setdefault(a, b)
        mapping.setdefault(b, a)
    return mapping


def _match_case(source: str, word: str) -> str:
    if len(source) > 1 and source.isupper():
        return word.upper()
    if source[0].isupper():
        return word[0].upper() + word[1:]
    return word


def swap_words(text: str, pairs: Sequence[tuple[str, str]] | Mapping[str, str]) -> str:
    """Replace each listed word by its partner: whole words only, in one pass, keeping the case.

    "He thanked his sister." -> "She thanked her brother."; "the" and "shell" are left alone, since
    only whole words match. ``pairs`` is a sequence of (a, b) pairs (swapped both ways) or a
    ready mapping from :func:`swap_map`. Case: "he" -> "she", "He" -> "She", "HE" -> "SHE".
    """
    mapping = {k.lower(): v.lower() for k, v in pairs.items()} if isinstance(pairs, Mapping) else swap_map(pairs)
    if not mapping:
        return text
    words = sorted(mapping, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    return pattern.sub(lambda m: _match_case(m.group(0), mapping[m.group(0).lower()]), text)


@dataclass
class SwapResult:
    """What a counterfactual swap did to a classifier's predictions (only texts the swap changed)."""

    n_texts: int                 # texts given
    n_changed: int               # texts the swap changed (the rest cannot move)
    n_flipped: int               # changed texts whose predicted class changed
    mean_abs_shift: float        # mean |P(positive | swapped) - P(positive | original)|
    max_abs_shift: float
    examples: list[dict] = field(default_factory=list)  # the largest shifts, largest first

    @property
    def flip_rate(self) -> float:
        """Flipped predictions as a fraction of the changed texts (0 if none changed)."""
        return self.n_flipped / self.n_changed if self.n_changed else 0.0


def counterfactual_shift(predict_proba: Callable[[list[str]], Tensor], texts: Sequence[str],
                         pairs: Sequence[tuple[str, str]], positive: int = 1, n_examples: int = 5) -> SwapResult:
    """Swap words in every text and compare the classifier's predictions before and after.

    ``predict_proba(list of texts) -> (N, n_classes)`` class probabilities. A fair classifier in
    the sense of Garg et al. 2019's counterfactual token fairness (CTF) predicts the same for a
    text and its swap; the mean absolute shift of the positive class is their CTF gap.
    """
    swapped = [swap_words(t, pairs) for t in texts]
    changed = [i for i, (a, b) in enumerate(zip(texts, swapped)) if a != b]
    if not changed:
        return SwapResult(len(texts), 0, 0, 0.0, 0.0)
    before = torch.as_tensor(predict_proba([texts[i] for i in changed])).double()
    after = torch.as_tensor(predict_proba([swapped[i] for i in changed])).double()
    if before.shape != (len(changed), before.shape[-1]) or after.shape != before.shape or before.dim() != 2:
        raise ValueError(f"predict_proba must return (N, n_classes) probabilities for N texts; got "
                         f"{tuple(before.shape)} and {tuple(after.shape)} for N = {len(changed)}.")
    shift = after[:, positive] - before[:, positive]
    flipped = before.argmax(-1) != after.argmax(-1)
    order = shift.abs().argsort(descending=True)[:n_examples].tolist()
    examples = [dict(original=texts[changed[k]], swapped=swapped[changed[k]], p_before=float(before[k, positive]),
                     p_after=float(after[k, positive])) for k in order]
    return SwapResult(len(texts), len(changed), int(flipped.sum()), float(shift.abs().mean()),
                      float(shift.abs().max()), examples)


# --- (c) noise ------------------------------------------------------------------------------------

KINDS = ("swap", "drop", "insert", "keyboard")

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _neighbours() -> dict[str, str]:
    pos = {c: (r, i) for r, row in enumerate(_ROWS) for i, c in enumerate(row)}
    out = {}
    for c, (r, i) in pos.items():  # same row left/right, and the keys touching it above and below
        near = [d for d, (r2, i2) in pos.items() if d != c and
                ((r2 == r and abs(i2 - i) == 1) or (abs(r2 - r) == 1 and i2 - i in ((0, 1) if r2 < r else (-1, 0))))]
        out[c] = "".join(sorted(near))
    return out


#: For each lowercase letter, the letters next to it on a QWERTY keyboard (rows are staggered:
#: 's' touches 'w' and 'e' above, 'z' and 'x' below).
KEYBOARD_NEIGHBOURS: dict[str, str] = _neighbours()


def _rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if rng is None or isinstance(rng, int):
        return random.Random(rng)
    raise TypeError(f"rng must be a random.Random or an int seed, got {type(rng).__name__}.")


def _check_rate(rate: float) -> None:
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise ValueError(f"rate must be a probability between 0 and 1, got {rate!r}.")


def keyboard_typo(char: str, rng: random.Random) -> str:
    """A random QWERTY neighbour of the letter ``char``, in the same case."""
    near = KEYBOARD_NEIGHBOURS.get(char.lower())
    if not near:
        raise ValueError(f"{char!r} is not a letter a-z: it has no keyboard neighbours here.")
    new = rng.choice(near)
    return new.upper() if char.isupper() else new


def typos(text: str, rate: float, rng: random.Random | int | None = None,
          kinds: Sequence[str] = KINDS) -> str:
    """Corrupt each ASCII letter of ``text`` with probability ``rate`` by a typo of a random kind.

    Kinds: ``swap`` (exchange with the next letter, which is then left alone), ``drop`` (delete
    it), ``insert`` (add a keyboard neighbour after it), ``keyboard`` (replace it by a keyboard
    neighbour). Spaces, digits and punctuation are never touched, so on average a fraction ``rate``
    of the letters carries a typo. ``rng`` is a ``random.Random`` or a seed: same seed, same typos.
    """
    _check_rate(rate)
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)}.")
    rng = _rng(rng)
    chars, out, i = list(text), [], 0
    is_letter = lambda c: c.lower() in KEYBOARD_NEIGHBOURS
    while i < len(chars):
        c = chars[i]
        if not is_letter(c) or rng.random() >= rate:
            out.append(c)
            i += 1
            continue
        kind = rng.choice(kinds)
        if kind == "swap" and i + 1 < len(chars) and is_letter(chars[i + 1]) and chars[i + 1] != c:
            out += [chars[i + 1], c]
            i += 2
            continue
        if kind == "drop":
            pass
        elif kind == "insert":
            out += [c, keyboard_typo(c, rng)]
        else:  # keyboard, and a swap with no letter (or the same letter) after it
            out.append(keyboard_typo(c, rng))
        i += 1
    return "".join(out)


def word_dropout(text: str, rate: float, rng: random.Random | int | None = None) -> str:
    """Delete each whitespace-separated word with probability ``rate`` (words rejoined by one space).

    A text never becomes empty: if every word was drawn for deletion, one of them is kept.
    """
    _check_rate(rate)
    rng = _rng(rng)
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    if words and not kept:
        kept = [rng.choice(words)]
    return " ".join(kept)


@dataclass
class NoiseCurve:
    """Accuracy at each noise rate: the mean and standard deviation over the seeds."""

    rates: list[float]
    accuracy: list[float]
    std: list[float]


def noise_curve(predict: Callable[[list[str]], Tensor], texts: Sequence[str], labels: Sequence[int] | Tensor,
                noise: Callable[[str, float, random.Random], str], rates: Sequence[float],
                seeds: Sequence[int] = (0,), progress: bool = True) -> NoiseCurve:
    """Accuracy of ``predict(texts) -> (N,) class ids`` when every text goes through ``noise(text, rate, rng)``.

    One run per (rate, seed); the seed fixes the noise, so two classifiers scored with the same
    seeds see exactly the same corrupted texts.
    """
    from tqdm.auto import tqdm

    labels = torch.as_tensor(labels)
    if labels.shape != (len(texts),):
        raise ValueError(f"Need one label per text: {len(texts)} texts, labels of shape {tuple(labels.shape)}.")
    if not seeds:
        raise ValueError("Give at least one seed.")
    means, stds = [], []
    for rate in tqdm(list(rates), desc="noise rates", disable=not progress, leave=False):
        accs = []
        for seed in seeds:
            rng = random.Random(seed)
            noisy = [noise(t, rate, rng) for t in texts]
            pred = torch.as_tensor(predict(noisy))
            if pred.shape != labels.shape:
                raise ValueError(f"predict must return one class id per text, shape {tuple(labels.shape)}; got {tuple(pred.shape)}.")
            accs.append((pred == labels).double().mean().item())
        means.append(sum(accs) / len(accs))
        stds.append(math.sqrt(sum((a - means[-1]) ** 2 for a in accs) / max(1, len(accs) - 1)))
    return NoiseCurve(list(rates), means, stds)


@torch.no_grad()
def text_nll(model: torch.nn.Module, tokenizer, texts: Sequence[str], prefix: str = "",
             batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """The negative log-likelihood (nats, float64) of each whole text, and the number of tokens scored.

    Each text is encoded after ``prefix`` (for the course model, its end-of-text token, so a text
    reads as the start of a document; the prefix itself is context, never scored). Every token of
    the text is scored exactly once: a text longer than the model's context is cut into windows
    of ``block_size + 1`` tokens that overlap by one token, so each window predicts the next
    ``block_size`` tokens; a token's context is then the part of its window before it. With an
    empty prefix the text's first token has no context and is not scored.

    Per-token averages of two versions of a text (clean, with typos) are not comparable when the
    versions are cut into different numbers of tokens; the total is, and so is the total divided
    by the words of the clean text (nats per word).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it as [text].")
    block = getattr(getattr(model, "config", None), "block_size", None)
    if block is None:
        raise ValueError("text_nll needs model.config.block_size (an lmlib.model.GPT) to cut long texts into windows.")
    pre = tokenizer.encode(prefix).tolist() if prefix else []
    if len(pre) >= block:
        raise ValueError(f"the prefix {prefix!r} is {len(pre)} tokens, as long as the model's context ({block}).")
    rows, owner = [], []
    counts = torch.zeros(len(texts), dtype=torch.long)
    for i, text in enumerate(texts):
        ids = pre + tokenizer.encode(text).tolist()
        first = len(pre) if pre else 1  # the first scored position
        counts[i] = max(0, len(ids) - first)
        for lo in range(first - 1, len(ids) - 1, block):  # window lo .. lo + block predicts lo + 1 .. lo + block
            chunk = ids[lo: lo + block + 1]
            rows.append(chunk)
            owner.append(i)
    nll = torch.zeros(len(texts), dtype=torch.float64)
    if not rows:
        return nll, counts
    order = sorted(range(len(rows)), key=lambda k: len(rows[k]))  # similar lengths together: less padding
    with eval_mode(model):
        device = model_device(model)
        for lo in range(0, len(order), batch_size):
            pick = order[lo: lo + batch_size]
            chunk = [rows[k] for k in pick]
            x = pad_right(chunk, 0).to(device)
            lp = continuation_logprob(model, x, 1, torch.tensor([len(c) for c in chunk], device=device),
                                      dtype=torch.float64).cpu()
            nll.index_add_(0, torch.tensor([owner[k] for k in pick]), -lp)
    return nll, counts
