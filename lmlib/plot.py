"""Plots the chapters share: heatmaps (bigram tables, attention maps) and training curves.

Used from chapter 1 on. Every function draws on a given Matplotlib ``ax`` (or a new one) and
returns it, so notebooks can combine plots into one figure. ``describe_figure`` writes a figure's
text alternative from its titles, axis labels and legends: the website uses it as the alt text of
every plot.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch


def heatmap(
    matrix,
    xlabels: Sequence[str] | None = None,
    ylabels: Sequence[str] | None = None,
    *,
    ax=None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    cmap: str = "viridis",
    colorbar: bool = True,
):
    """Draw a 2-D array (e.g. P(next | previous) or attention weights) with optional tick labels."""
    matrix = torch.as_tensor(matrix).detach().float().cpu()
    if matrix.dim() != 2:
        raise ValueError(f"heatmap needs a 2-D matrix, got shape {tuple(matrix.shape)}.")
    ax = ax or plt.subplots(figsize=(6, 5))[1]
    image = ax.imshow(matrix.numpy(), cmap=cmap, aspect="auto")
    for labels, axis, setter in ((xlabels, 1, ax.set_xticks), (ylabels, 0, ax.set_yticks)):
        if labels is not None:
            if len(labels) != matrix.shape[axis]:
                raise ValueError(f"Got {len(labels)} labels for an axis of length {matrix.shape[axis]}.")
            setter(range(len(labels)), [repr(l)[1:-1] for l in labels], fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if colorbar:
        ax.figure.colorbar(image, ax=ax)
    return ax


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    ax=None,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "loss",
    logy: bool = False,
):
    """Plot named ``(x, y)`` series on one axis, e.g. training and validation loss."""
    ax = ax or plt.subplots(figsize=(6, 4))[1]
    for label, (x, y) in series.items():
        ax.plot(list(x), list(y), label=label)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax


def attention_heads(weights, tokens: Sequence[str], *, title: str = "", ncols: int = 2, size: float = 3.2):
    """A grid of attention maps, one per head, from weights of shape (heads, T, T) (chapter 2).

    The static twin of ``lmlib.widgets.attention_explorer`` for the website: at most about 7
    inches wide, words on the outer axes only. Returns the figure.
    """
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() != 3 or weights.shape[1:] != (len(tokens), len(tokens)):
        raise ValueError(f"weights must be (heads, T, T) with T = len(tokens) = {len(tokens)}, got {tuple(weights.shape)}.")
    H, T = weights.shape[0], len(tokens)
    ncols = min(ncols, H)
    nrows = -(-H // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols + 0.5, size * nrows + 0.5), squeeze=False)
    labels = [repr(t)[1:-1] for t in tokens]
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        row, col = divmod(h, ncols)
        ax.imshow(weights[h].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}", fontsize=10)
        bottom, left = row == nrows - 1 or h + ncols >= H, col == 0
        ax.set_xticks(range(T), labels if (T <= 24 and bottom) else [""] * T, rotation=90, fontsize=8)
        ax.set_yticks(range(T), labels if (T <= 24 and left) else [""] * T, fontsize=8)
        ax.set(xlabel="key (attended to)" if bottom else "", ylabel="query (attending)" if left else "")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _describe_axes(ax) -> str:
    title = " ".join(t for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t)
    xlabel, ylabel = ax.get_xlabel(), ax.get_ylabel()
    if not xlabel:  # a stacked panel whose shared x axis is labelled once, at the bottom
        xlabel = next((a.get_xlabel() for a in ax.get_shared_x_axes().get_siblings(ax) if a.get_xlabel()), "")
    if ax.images:
        kind = "heat map"
    elif ax.containers and not ax.get_lines():
        kind = "bar chart"
    elif ax.collections and not ax.get_lines():
        kind = "scatter plot"
    elif ax.get_lines():
        kind = "line plot"
    else:
        kind = "panel"
    words = [f"{kind} \u201c{title}\u201d" if title else kind]
    if ylabel and xlabel:
        words.append(f"of {ylabel} against {xlabel}")
    elif ylabel or xlabel:
        words.append(f"of {ylabel}" if ylabel else f"against {xlabel}")
    legend = ax.get_legend()
    if legend is not None:
        labels = [t.get_text() for t in legend.get_texts() if t.get_text()]
        if labels:
            words.append("showing " + ", ".join(labels[:8]) + (" and more" if len(labels) > 8 else ""))
    return " ".join(words)


def describe_figure(fig) -> str:
    """A one-paragraph text alternative for a Matplotlib figure: its title, then each panel's kind,
    title, axes and legend, e.g. ``Line plot "Training" of loss against step showing train, val.``

    Colour bars and hidden axes are left out. The website uses it as the alt text of every plot.
    """
    suptitle = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.axison and ax.get_label() != "<colorbar>"]
    parts = [_describe_axes(ax) for ax in panels]
    if not parts:
        text = "A figure"
    elif len(parts) == 1:
        text = parts[0][0].upper() + parts[0][1:]
    else:
        text = f"{len(parts)} panels: " + "; ".join(f"({i}) {p}" for i, p in enumerate(parts, 1))
    return (f"{suptitle}. " if suptitle else "") + text + "."
