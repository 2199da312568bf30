"""matplotlib, headless: figures drawn off-screen (Agg) and read back as pixels or saved as PNG.

Figures are built from ``matplotlib.figure.Figure`` with an Agg canvas rather than through
``pyplot``, so drawing needs no display, keeps no global figure list and is safe in a training
loop or a worker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def figure(width_in: float, height_in: float, dpi: int = 100, **subplots):
    """A ``(Figure, axes)`` pair on an off-screen Agg canvas; ``subplots`` go to ``Figure.subplots``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(**subplots)


def pixels(fig) -> np.ndarray:
    """The figure as uint8 RGB pixels ``(H, W, 3)``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def save(fig, path: str | Path) -> Path:
    """Write the figure (PNG, SVG, PDF: by suffix), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
