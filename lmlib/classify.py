"""Transfer learning: a pretrained GPT with a classification head, and the data plumbing around it.

Derived in chapter 5 ("Applications", notebook 01, text classification). A decoder-only GPT reads
a message left to right; its final hidden state at the last real token has seen the whole message,
so a linear layer on that vector can classify it (``pooling="last"``). ``pooling="mean"``
averages the hidden states of all real tokens instead. Padding goes on the right and is masked.

The classifier follows the trainer's convention, ``model(x, targets=y) -> (logits, loss)`` with
``x`` (B, T) token ids padded with ``pad_id`` and ``y`` (B,) class ids, so
:class:`lmlib.train.Trainer` fine-tunes it unchanged.

API summary
-----------
GPTClassifier(gpt, n_classes, pad_id, pooling="last", dropout=0.0)
    forward(x, targets=None) -> (logits (B, n_classes), loss)
freeze(model, train_last_blocks=1) -> int           train only the head (+ last blocks, final norm)
unfreeze(model) -> int
BagOfWords(vocab_size, n_classes, pad_id)           logistic regression on word presence
load_labelled(name, file=None) -> (texts, labels, LoadReport)
LAYOUTS: {data set: (layout, class names)}       how each registered labelled set is laid out
parse_labelled(lines, layout, classes, source="<lines>") -> (texts, labels, LoadReport)
stratified_split(labels, fractions=(0.8, 0.1, 0.1), seed=0) -> (train, val, test) index tensors
pad_batch(seqs, pad_id, max_len) -> (N, T) ids
classification_batches(ids, labels, batch_size, pad_id) -> batch_fn(generator) -> (x, y)
predict(model, ids, batch_size=256, pad_id=None) -> logits (N, n_classes), shortest rows batched together
train_classifier(model, ids, labels, *, pad_id, steps, batch_size=32, lr=5e-4, ...) -> History
evaluate_classifier(model, ids, labels, *, pad_id, positive=1) -> dict of metrics
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmlib import data
from lmlib.data import RowReport, pad_right, random_batches
from lmlib.device import eval_mode, model_device
from lmlib.metrics import accuracy, confusion_matrix, precision_recall_f1
from lmlib.model import GPT, GPTWithHead
from lmlib.train import TrainConfig, Trainer

Tensor = torch.Tensor

__all__ = [
    "GPTClassifier", "freeze", "unfreeze", "BagOfWords", "LoadReport",
    "LAYOUTS", "parse_labelled", "load_labelled", "stratified_split", "pad_batch",
    "classification_batches", "predict", "train_classifier", "evaluate_classifier",
]


# --- the model ----------------------------------------------------------------------------------

class GPTClassifier(GPTWithHead):
    """A GPT body with a linear classification head on a pooled hidden state (chapter 5).

    ``pad_id`` marks padding (put it on the right; it must not occur inside a text).
    ``pooling="last"`` takes the hidden state of the last non-padding token, which has attended
    to the whole text; ``"mean"`` averages the hidden states of the non-padding tokens.
    """

    def __init__(self, gpt: GPT, n_classes: int, pad_id: int, pooling: str = "last", dropout: float = 0.0) -> None:
        if not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}.")
        super().__init__(gpt, n_classes, pad_id, dropout)
        self.pooling = pooling

    def pool(self, h: Tensor, mask: Tensor) -> Tensor:
        """(B, T, C) hidden states and a (B, T) bool mask of real tokens -> (B, C)."""
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = torch.where(mask, positions, -1).max(dim=1).values  # index of the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        mask = x != self.pad_id
        empty = ~mask.any(dim=1)
        if empty.any():
            raise ValueError(
                f"{int(empty.sum())} row(s) of x hold only padding (pad_id={self.pad_id}); every text "
                "needs at least one token. Count and drop empty texts when loading the data."
            )
        logits = self.head(self.pool(self.features(x), mask))
        loss = None
        if targets is not None:
            if targets.shape != (x.shape[0],):
                raise ValueError(f"targets must be one class id per row, shape ({x.shape[0]},), got {tuple(targets.shape)}.")
            loss = F.cross_entropy(logits.float(), targets.long())
        return logits, loss


def freeze(model: nn.Module, train_last_blocks: int = 1) -> int:
    """Freeze a :class:`GPTClassifier`'s body except its last ``train_last_blocks`` blocks and final norm.

    The head always trains. Returns the number of trainable parameters.
    """
    if not isinstance(model, GPTClassifier):
        raise TypeError(f"freeze expects a GPTClassifier, got {type(model).__name__}.")
    n_layer = len(model.gpt.blocks)
    if not 0 <= train_last_blocks <= n_layer:
        raise ValueError(f"train_last_blocks must be between 0 and n_layer={n_layer}, got {train_last_blocks}.")
    for p in model.gpt.parameters():
        p.requires_grad_(False)
    trainable = [model.head] + ([model.gpt.ln_f] if train_last_blocks else [])
    trainable += list(model.gpt.blocks)[n_layer - train_last_blocks:]
    for module in trainable:
        for p in module.parameters():
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unfreeze(model: nn.Module) -> int:
    """Make every parameter trainable again; returns the count."""
    for p in model.parameters():
        p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters())


class BagOfWords(nn.Module):
    """Logistic regression on which vocabulary entries occur in a text (the baseline of chapter 5).

    Input: (B, T) ids padded with ``pad_id`` (any id outside ``[0, vocab_size)`` is ignored only
    if it is ``pad_id``). Features are 0/1 presence, so word order is thrown away.
    """

    def __init__(self, vocab_size: int, n_classes: int, pad_id: int) -> None:
        super().__init__()
        if vocab_size < 1 or n_classes < 2:
            raise ValueError(f"need vocab_size >= 1 and n_classes >= 2, got {vocab_size} and {n_classes}.")
        self.vocab_size, self.pad_id = vocab_size, pad_id
        self.linear = nn.Linear(vocab_size, n_classes)
        nn.init.zeros_(self.linear.weight)

    def features(self, x: Tensor) -> Tensor:
        real = x != self.pad_id
        ids = torch.where(real, x, 0).long()
        if ids.min() < 0 or ids.max() >= self.vocab_size:
            raise ValueError(f"ids must be in [0, {self.vocab_size}) or equal pad_id={self.pad_id}.")
        return torch.zeros(x.shape[0], self.vocab_size, device=x.device).scatter_(1, ids, real.float())

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits = self.linear(self.features(x))
        loss = None if targets is None else F.cross_entropy(logits, targets.long())
        return logits, loss


# --- data ---------------------------------------------------------------------------------------

@dataclass
class LoadReport(RowReport):
    """A :class:`lmlib.data.RowReport` of a labelled file, with the count of each label kept."""

    label_counts: Counter = field(default_factory=Counter)

    def headline(self) -> str:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(self.label_counts.items()))
        return f"{super().headline()}\n  labels: {labels}"


#: How each registered labelled data set is laid out: which side of the tab holds the label,
#: and its class names in class-id order.
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sms-spam-collection": ("label_first", ("ham", "spam")),
    "sentiment-labelled-sentences": ("label_last", ("0", "1")),
    "rt-polarity": ("label_last", ("0", "1")),
}


def parse_labelled(lines: Sequence[str], layout: str, classes: Sequence[str],
                   source: str = "<lines>") -> tuple[list[str], list[int], LoadReport]:
    """Rows ``label<TAB>text`` (``layout="label_first"``) or ``text<TAB>label`` (``"label_last"``).

    Nothing is dropped silently: blank lines, lines without a tab, empty texts and labels not in
    ``classes`` are counted in the returned :class:`LoadReport`. Texts are stripped.
    """
    if layout not in ("label_first", "label_last"):
        raise ValueError(f"layout must be 'label_first' or 'label_last', got {layout!r}.")
    index = {c: i for i, c in enumerate(classes)}
    report = LoadReport(source)
    texts, labels = [], []
    for no, line in enumerate(lines, 1):
        report.lines += 1
        if not line.strip():
            report.reject("blank line", no, line)
            continue
        if "\t" not in line:
            report.reject("no tab between label and text", no, line)
            continue
        if layout == "label_first":
            label, text = line.split("\t", 1)
        else:
            text, label = line.rsplit("\t", 1)
        label, text = label.strip(), text.strip()
        if label not in index:
            report.reject(f"unknown label (expected one of {list(classes)})", no, line)
            continue
        if not text:
            report.reject("empty text", no, line)
            continue
        texts.append(text)
        labels.append(index[label])
        report.label_counts[label] += 1
        report.kept += 1
    return texts, labels, report


def load_labelled(name: str, file: str | None = None) -> tuple[list[str], list[int], LoadReport]:
    """A registered labelled data set as (texts, class ids, report); see :func:`parse_labelled`.

    Lines are split on ``"\\n"`` only (not ``str.splitlines``, which also breaks at U+0085 and
    other separators that occur inside some sentences); one final newline ends the file and is
    not a row.
    """
    if name not in LAYOUTS:
        raise ValueError(f"No labelled layout known for {name!r}; known: {', '.join(LAYOUTS)}.")
    layout, classes = LAYOUTS[name]
    encoding = "cp1252" if name == "rt-polarity" else "utf-8"
    text = data.read_text(name, file, encoding=encoding).replace("\r\n", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return parse_labelled(lines, layout, classes, source=f"{name}/{file or data.dataset(name).default}")


def stratified_split(labels: Sequence[int] | Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                     seed: int = 0) -> tuple[Tensor, ...]:
    """Index tensors (train, val, test, ...) with each class split in the same ``fractions``.

    Deterministic for a given ``seed``; every class contributes the rounded share of its rows
    to each part (the last part takes the rest), so a rare class is in every part.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {tuple(labels.shape)}.")
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)}.")
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[Tensor]] = [[] for _ in fractions]
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        bounds = [round(sum(fractions[: k + 1]) * len(idx)) for k in range(len(fractions) - 1)]
        for k, chunk in enumerate(torch.tensor_split(idx, bounds)):
            parts[k].append(chunk)
    return tuple(torch.cat(p)[torch.randperm(sum(len(q) for q in p), generator=gen)] for p in parts)


def pad_batch(seqs: Sequence[Tensor | Sequence[int]], pad_id: int, max_len: int) -> Tensor:
    """(N, T) ids: each sequence cut to its first ``max_len`` tokens, right-padded with ``pad_id``.

    T is the longest (cut) sequence; an empty sequence is an error (it has nothing to classify).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}.")
    seqs = [torch.as_tensor(s, dtype=torch.long)[:max_len] for s in seqs]
    empty = [i for i, s in enumerate(seqs) if len(s) == 0]
    if empty:
        raise ValueError(f"sequences {empty[:5]} are empty: drop empty texts (and report them) before padding.")
    return pad_right(seqs, pad_id)


def _trim(x: Tensor, pad_id: int) -> Tensor:
    """Drop the columns that are padding in every row (saves compute on short batches)."""
    keep = int((x != pad_id).any(0).nonzero().max()) + 1 if (x != pad_id).any() else 1
    return x[:, :keep]


def classification_batches(ids: Tensor, labels: Tensor, batch_size: int,
                           pad_id: int) -> Callable[[torch.Generator], tuple[Tensor, Tensor]]:
    """A ``batch_fn(generator) -> (x, y)`` drawing ``batch_size`` random rows (with replacement)."""
    labels = torch.as_tensor(labels)
    if ids.dim() != 2 or labels.shape != (ids.shape[0],):
        raise ValueError(f"ids must be (N, T) and labels (N,), got {tuple(ids.shape)} and {tuple(labels.shape)}.")
    return random_batches(ids.shape[0], batch_size, lambda rows: (_trim(ids[rows], pad_id), labels[rows]))


@torch.no_grad()
def predict(model: nn.Module, ids: Tensor, batch_size: int = 256, pad_id: int | None = None) -> Tensor:
    """Logits (N, n_classes) of ``model`` on every row of ``ids``, in evaluation mode, on the CPU.

    With ``pad_id`` the rows run shortest first, so that each batch is cut to the length of its
    own longest text instead of the longest of all (right padding is masked, so only the cost
    changes); the logits come back in the order of ``ids``.
    """
    if ids.dim() != 2 or batch_size < 1:
        raise ValueError(f"ids must be (N, T) and batch_size >= 1, got {tuple(ids.shape)} and {batch_size}.")
    order = torch.arange(ids.shape[0])
    if pad_id is not None:
        order = (ids != pad_id).sum(1).argsort(stable=True)
    with eval_mode(model):
        device = model_device(model)
        out = []
        for start in range(0, ids.shape[0], batch_size):
            x = ids[order[start:start + batch_size]]
            if pad_id is not None:
                x = _trim(x, pad_id)
            out.append(model(x.to(device))[0].float().cpu())
    logits = torch.cat(out)
    return torch.empty_like(logits).index_copy_(0, order, logits)


# --- training and evaluation --------------------------------------------------------------------

def train_classifier(model: nn.Module, ids: Tensor, labels: Tensor, *, pad_id: int, steps: int,
                     batch_size: int = 32, lr: float = 5e-4, warmup_steps: int = 10,
                     weight_decay: float = 0.01, seed: int = 0, progress: bool = True):
    """Fit a classifier with :class:`lmlib.train.Trainer` on random batches of (ids, labels).

    No validation pass and no early stopping: every model in a comparison gets the same number
    of steps. Returns the trainer's history.
    """
    config = TrainConfig(max_steps=steps, lr=lr, warmup_steps=min(warmup_steps, steps),
                         weight_decay=weight_decay, eval_every=None, seed=seed, progress=progress)
    batches = classification_batches(ids, labels, batch_size, pad_id)
    return Trainer(model, config, batches).fit()


def evaluate_classifier(model: nn.Module, ids: Tensor, labels: Tensor, *, pad_id: int,
                        positive: int = 1) -> dict:
    """Accuracy, precision, recall, F1 (of class ``positive``) and the confusion matrix on (ids, labels)."""
    labels = torch.as_tensor(labels)
    logits = predict(model, ids, pad_id=pad_id)
    pred = logits.argmax(-1)
    n = logits.shape[1]
    p, r, f1 = precision_recall_f1(labels, pred, positive, n_classes=n)
    return {"accuracy": accuracy(labels, pred), "precision": p, "recall": r, "f1": f1,
            "confusion": confusion_matrix(labels, pred, n)}
