"""Figures written by the ``ppl-diffusion`` command: sample grids, 2-D scatters, the bound per step.

Every function writes one PNG and returns its path. The figures are made without pyplot (``matplotlib.figure.Figure``,
drawn by Agg when saved): no display is needed, and the session's backend and figures are left alone, so a notebook
that calls ``evaluate_run`` or ``sample_run`` keeps showing its own inline figures.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np


class _Figures:
    """``subplots`` as pyplot has it, for a figure that pyplot does not manage (``_figures().subplots(...)``)."""

    @staticmethod
    def subplots(*args, figsize=None, **kwargs):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)


def _figures() -> type[_Figures]:
    return _Figures


def image_grid(images: np.ndarray, path: str | Path, *, title: str | None = None) -> Path:
    """8-bit images ``[N x C x H x W]`` (C = 1 or 3) as a near-square grid with 1-pixel gaps.

    :param numpy.ndarray images: ``[N x C x H x W]``, values 0..255.
    :param path: the PNG to write (its folder is made).
    :param str title: the figure's title (wrapped to its width).
    :returns: ``path``, a :class:`pathlib.Path`.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from ppl_diffusion.plots import image_grid
    >>> images = np.random.default_rng(0).integers(0, 256, size=(4, 1, 8, 8))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = image_grid(images, Path(folder) / "samples.png", title="4 samples")
    ...     path.name, path.stat().st_size > 0
    ('samples.png', True)
    """
    images = np.asarray(images, dtype=np.uint8)
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = img.transpose(1, 2, 0)
    plt = _figures()
    size = min(12, max(3.0, 0.5 + 0.03 * grid.shape[1] * max(1, 16 // w)))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_axis_off()
    if title:  # wrapped to the figure's width (about 0.55 em a character at 10 points)
        ax.set_title(textwrap.fill(title, width=max(20, int(size * 72 / (10 * 0.55)))), fontsize=10)
    return _save(fig, path)


def scatter(points: np.ndarray, path: str | Path, *, title: str | None = None) -> Path:
    """Points ``[N x D]`` as a scatter plot of their first two coordinates.

    :param numpy.ndarray points: ``[N x D]`` (D = 1: on the x axis).
    :param path: the PNG to write.
    :param str title: the figure's title.
    :returns: ``path``, a :class:`pathlib.Path`.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from ppl_diffusion.plots import scatter
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     scatter(np.random.default_rng(0).normal(size=(4, 2)), Path(folder) / "x.png").exists()
    True
    """
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)
    plt = _figures()
    fig, ax = plt.subplots(figsize=(5, 5))
    y = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
    ax.scatter(points[:, 0], y, s=3, alpha=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def bound_terms(terms: dict[str, list[float]], path: str | Path, *, title: str | None = None) -> Path:
    """L_t against t = 0..T (nats per example, log scale) for each named set of weights.

    :param dict terms: ``{name: [L_0, ..., L_T]}``, e.g. the mean over examples of a
        :class:`~ppl_diffusion.infer.bound.VariationalBound`'s ``terms``.
    :param path: the PNG to write.
    :param str title: the figure's title.
    :returns: ``path``, a :class:`pathlib.Path`.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from ppl_diffusion.plots import bound_terms
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     bound_terms({"ema": [3.0, 1.0, 0.5, 0.1]}, Path(folder) / "terms.png").exists()
    True
    """
    plt = _figures()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in terms.items():
        ax.plot(np.arange(len(values)), values, label=label, lw=1)
    ax.set_yscale("log")  # non-positive values (a Gaussian decoder's L_0 can be negative) are not drawn
    ax.set_xlabel("t")
    ax.set_ylabel("L_t (nats per example)")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def integrand(draws: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, title: str | None = None) -> Path:
    """The continuous-time diffusion term's integrand L(t) = ½ γ'(t)‖ε − ε̂‖² at the drawn times: the mean of the
    draws in each of 50 bins of t against t (nats per example, log scale), for each named set of weights
    ``{name: (t, L)}``; its area is the diffusion term.

    :param dict draws: ``{name: (t [R], L(t) [R])}``, e.g. a
        :class:`~ppl_diffusion.infer.continuous_bound.ContinuousBoundEstimate`'s ``t`` and ``integrand``.
    :param path: the PNG to write.
    :param str title: the figure's title.
    :returns: ``path``, a :class:`pathlib.Path`.

    Example:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from ppl_diffusion.plots import integrand
    >>> t = np.linspace(0.01, 0.99, 20)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     integrand({"ema": (t, 1.0 / t)}, Path(folder) / "integrand.png").exists()
    True
    """
    plt = _figures()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    edges = np.linspace(0.0, 1.0, 51)
    for label, (t, values) in draws.items():
        t, values = np.asarray(t).reshape(-1), np.asarray(values).reshape(-1)
        k = np.clip(np.digitize(t, edges) - 1, 0, 49)
        count = np.bincount(k, minlength=50)
        mean = np.bincount(k, weights=values, minlength=50) / np.maximum(count, 1)
        keep = count > 0
        ax.plot(0.5 * (edges[:-1] + edges[1:])[keep], mean[keep], label=label, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("L(t) (nats per example)")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    fig.clf()
    return path


__all__ = ["bound_terms", "image_grid", "integrand", "scatter"]
