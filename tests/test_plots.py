"""ppl_diffusion.plots: each function writes a PNG of the promised size and leaves the session's matplotlib alone
(its backend and its pyplot figures), so a notebook that evaluates or samples a run keeps its inline figures."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from ppl_diffusion import plots


@pytest.fixture
def svg_session():
    """A session on another backend than Agg (as a notebook's inline one is), with one figure of its own open."""
    before = matplotlib.get_backend()
    plt.switch_backend("svg")
    mine = plt.figure()
    yield mine
    plt.close("all")
    plt.switch_backend(before)


@pytest.mark.parametrize("draw", [
    lambda path: plots.image_grid(np.zeros((5, 1, 8, 8), np.uint8), path, title="grid"),
    lambda path: plots.scatter(np.random.default_rng(0).normal(size=(50, 2)), path),
    lambda path: plots.bound_terms({"raw": [3.0, 1.0, 0.5], "ema": [2.0, 0.9, 0.4]}, path, title="terms"),
    lambda path: plots.integrand({"ema": (np.linspace(0, 1, 20), np.linspace(1, 2, 20))}, path),
], ids=["image_grid", "scatter", "bound_terms", "integrand"])
def test_writes_png_and_leaves_the_session_alone(tmp_path, svg_session, draw):
    path = draw(tmp_path / "sub" / "figure.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
    assert matplotlib.get_backend() == "svg"  # not switched to Agg
    assert plt.get_fignums() == [svg_session.number]  # no figure of ours left in (or added to) pyplot
