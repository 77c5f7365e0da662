"""Interactive explorers (ipywidgets) for the notebooks, with a static twin for the website.

Started in chapter 2 ("Masks and multi-head attention") with the attention explorer; any chapter
can add an explorer here. Every explorer is built on :func:`explorer`: a ``draw(fig, **values)``
function plus named controls. In Jupyter or Colab, moving a control redraws the figure. The static
website cannot run Python: every explorer also offers its first drawing as a PNG in its display
data, and the book (``nb_mime_priority_overrides`` in ``_config.yml``) shows that image in place
of the widget. Notebooks may still draw a fuller static figure beside it (for attention,
:func:`lmlib.plot.attention_heads`).

Adding an explorer: write ``draw(fig, **values)`` that fills a Matplotlib figure, and return
``explorer(draw, {"name": some_widget, ...})``.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from lmlib.generate import top_k_filter, top_p_filter
from lmlib.plot import describe_figure

try:
    import ipywidgets as W
except ImportError:  # pragma: no cover - ipywidgets is a course dependency
    W = None


def _require_ipywidgets():
    if W is None:
        raise ImportError("The explorers need ipywidgets: pip install ipywidgets (Colab has it).")
    return W


def explorer(
    draw: Callable[..., None],
    controls: Mapping[str, "W.ValueWidget"],
    *,
    figsize: tuple[float, float] = (7, 4),
) -> "W.Widget":
    """Controls on top, a Matplotlib figure below, redrawn with ``draw(fig, **values)`` on change."""
    W = _require_ipywidgets()

    def redraw(**values):
        fig = plt.figure(figsize=figsize)
        draw(fig, **values)
        plt.show()

    output = W.interactive_output(redraw, dict(controls))
    first = {name: control.value for name, control in controls.items()}
    return _with_static_png(W.VBox([W.HBox(list(controls.values())), output]), draw, first, figsize)


def static_png(draw: Callable[..., None], values: Mapping, figsize: tuple[float, float]) -> bytes:
    """``draw(fig, **values)`` rendered off-screen to PNG bytes (the explorer's website fallback)."""
    return _static_drawing(draw, values, figsize)[0]


def _static_drawing(draw, values: Mapping, figsize) -> tuple[bytes, str]:
    fig = Figure(figsize=figsize)
    draw(fig, **values)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue(), describe_figure(fig)


def _with_static_png(widget: "W.Widget", draw, values: Mapping, figsize) -> "W.Widget":
    """Add ``image/png`` of the first drawing to the widget's display data.

    Jupyter and Colab render the live widget (its own MIME type ranks first); a static renderer
    that cannot run widgets picks the image instead of printing ``VBox(children=...)``.
    """
    png, description = _static_drawing(draw, values, figsize)
    png = base64.b64encode(png).decode("ascii")
    plain_bundle = widget._repr_mimebundle_

    def bundle(**kwargs):
        data = plain_bundle(**kwargs) or {}
        data = dict(data) if isinstance(data, dict) else {}
        data["image/png"] = png
        # the page's alt text for the image (instead of the widget's repr)
        data["text/plain"] = f"An interactive explorer, drawn at its first setting: {description}"
        return data

    widget._repr_mimebundle_ = bundle
    return widget


def attention_explorer(
    tokens: Sequence[str],
    weights: torch.Tensor,
    *,
    layer_names: Sequence[str] | None = None,
    figsize: tuple[float, float] = (6.5, 8),
) -> "W.Widget":
    """Explore attention weights of shape (heads, T, T) or (layers, heads, T, T) over ``tokens``.

    Pick a layer and head (or the mean over heads) and a query position: the top panel shows the
    whole (query, key) map with the chosen query's row outlined, the bottom panel that row as bars.
    """
    W = _require_ipywidgets()
    weights = torch.as_tensor(weights).detach().float().cpu()
    if weights.dim() == 3:
        weights = weights[None]
    if weights.dim() != 4 or weights.shape[-1] != weights.shape[-2] or weights.shape[-1] != len(tokens):
        raise ValueError(
            f"weights must be (heads, T, T) or (layers, heads, T, T) with T = len(tokens) = {len(tokens)}, "
            f"got shape {tuple(weights.shape)}."
        )
    L, H, T, _ = weights.shape
    names = list(layer_names) if layer_names is not None else [f"layer {i}" for i in range(L)]
    labels = [repr(t)[1:-1] for t in tokens]
    controls = {
        "layer": W.Dropdown(options=[(n, i) for i, n in enumerate(names)], value=0, description="layer"),
        "head": W.Dropdown(options=[("mean of heads", -1)] + [(f"head {h}", h) for h in range(H)], value=0, description="head"),
        "query": W.IntSlider(value=T - 1, min=0, max=T - 1, description="query"),
    }

    def draw(fig, layer: int, head: int, query: int):
        w = weights[layer].mean(0) if head < 0 else weights[layer, head]
        ax_map, ax_row = fig.subplots(2, 1, gridspec_kw={"height_ratios": [1.6, 1]})
        ax_map.imshow(w.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax_map.set_xticks(range(T), labels, rotation=90, fontsize=9)
        ax_map.set_yticks(range(T), labels, fontsize=9)
        ax_map.set_title("mean attention of all heads" if head < 0 else f"attention of head {head}")
        ax_map.add_patch(plt.Rectangle((-0.5, query - 0.5), T, 1, fill=False, edgecolor="red", lw=1.5))
        ax_map.set(xlabel="key (attended to)", ylabel="query (attending)")
        ax_row.bar(range(T), w[query].numpy(), color="tab:blue")
        ax_row.set_xticks(range(T), labels, rotation=90, fontsize=9)
        ax_row.set(ylim=(0, 1), xlabel="key (attended to)", ylabel="weight",
                   title=f"the weights of query {query} ({labels[query]!s})")
        fig.tight_layout()

    return explorer(draw, controls, figsize=figsize)


def sampling_explorer(
    logits: torch.Tensor,
    labels: Sequence[str],
    *,
    show: int = 20,
    figsize: tuple[float, float] = (7, 3.8),
) -> "W.Widget":
    """Explore how temperature, top-k and top-p reshape one next-token distribution (chapter 3).

    ``logits`` (V,) are a model's scores for the next token and ``labels`` the V token strings. The
    bars show the ``show`` most likely tokens: grey the original probabilities, blue the ones the
    sampler would draw from. Top-k 0 and top-p 1.0 switch those filters off. The static twin for
    the website is a plain figure at a few temperatures (chapter 3, notebook 03).
    """
    W = _require_ipywidgets()
    logits = torch.as_tensor(logits).detach().float().cpu()
    if logits.dim() != 1 or logits.numel() != len(labels):
        raise ValueError(f"logits must be 1-D with one score per label ({len(labels)}), got shape {tuple(logits.shape)}.")
    show = min(show, logits.numel())
    order = logits.argsort(descending=True)[:show]
    names = [repr(labels[i])[1:-1] for i in order.tolist()]
    controls = {
        "temperature": W.FloatLogSlider(value=1.0, base=10, min=-1.3, max=0.7, step=0.05, description="temperature"),
        "top_k": W.IntSlider(value=0, min=0, max=show, description="top-k (0=off)"),
        "top_p": W.FloatSlider(value=1.0, min=0.05, max=1.0, step=0.05, description="top-p"),
    }

    def draw(fig, temperature: float, top_k: int, top_p: float):
        scaled = logits / temperature
        if top_k > 0:
            scaled = top_k_filter(scaled, top_k)
        if top_p < 1.0:
            scaled = top_p_filter(scaled, top_p)
        probs = torch.softmax(scaled, dim=-1)
        kept = int((probs > 0).sum())
        entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
        ax = fig.subplots()
        ax.bar(range(show), torch.softmax(logits, -1)[order].numpy(), color="lightgrey", label="T = 1, unfiltered")
        ax.bar(range(show), probs[order].numpy(), width=0.5, color="tab:blue", label="sampled from")
        ax.set_xticks(range(show), names, fontsize=8, rotation=60 if show > 12 else 0)
        ax.set(ylim=(0, 1), xlabel="next token (most likely first)", ylabel="probability",
               title=f"T = {temperature:.2f}: {kept} tokens can be drawn, entropy {entropy:.2f} nats")
        ax.legend()
        fig.tight_layout()

    return explorer(draw, controls, figsize=figsize)
