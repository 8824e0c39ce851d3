"""Pictures: labelled attention heat maps (TensorBoard, during training) and line plots
(tools/plot_bleu.py). matplotlib is imported here only, on the paths that draw, through its
object-oriented API with the Agg canvas: no pyplot state, no display needed."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_LABELS = 60  # longer sides are labelled at every k-th position only
PIECE_MARK = "\u2581"  # SentencePiece's word-start mark


def figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas (no pyplot, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def rgb(fig) -> np.ndarray:
    """The drawn figure as an [H, W, 3] uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _ticks(axis_labels: Sequence[str]) -> tuple[list[int], list[str]]:
    every = max(1, -(-len(axis_labels) // MAX_LABELS))
    positions = list(range(0, len(axis_labels), every))
    return positions, [axis_labels[i] for i in positions]


def attention_figure(weights: np.ndarray, src: Sequence[str], tgt: Sequence[str],
                     title: str = ""):
    """A heat map of attention `weights` [T, S]: one row per target piece the decoder
    predicts (`tgt`, T labels), one column per source piece (`src`, S labels), a colour bar
    from 0 to 1. Pieces are shown as SentencePiece writes them (\u2581 starts a word)."""
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (len(tgt), len(src)):
        raise ValueError(f"attention weights {weights.shape} do not match "
                         f"{len(tgt)} target x {len(src)} source labels")
    rows, cols = weights.shape
    fig = figure(min(24.0, 2.0 + 0.22 * cols), min(24.0, 1.6 + 0.22 * rows))
    ax = fig.add_subplot()
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                      interpolation="nearest")
    x, x_labels = _ticks(list(src))
    y, y_labels = _ticks(list(tgt))
    ax.set_xticks(x, x_labels, rotation=90, fontsize=8)
    ax.set_yticks(y, y_labels, fontsize=8)
    ax.set_xlabel("source pieces")
    ax.set_ylabel("target pieces (predicted)")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    fig.tight_layout()
    return fig


def line_plot(curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, xlabel: str,
              ylabel: str, title: str = ""):
    """One line with markers per named curve (x values, y values)."""
    fig = figure(8.0, 5.0)
    ax = fig.add_subplot()
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
