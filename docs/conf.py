"""Sphinx configuration of the ppl_diffusion documentation site.

Build (warnings are errors, every cross-reference must resolve)::

    python -m sphinx -W -n --keep-going -b html docs docs/_build/html

Choices: **furo** (a maintained, readable theme with a light and a dark mode and a search box), **MyST** so the
Markdown pages that GitHub renders are also the site's pages, **myst-nb** to render the tutorials from their
stored outputs (no execution at build time and no pandoc, which nbsphinx needs; CI runs the notebooks separately
in smoke mode with nbval), autodoc + autosummary for one API page per module, each showing the module's
``__all__``. Intersphinx reads inventories kept in ``docs/_inventories`` (written by ``make_inventories.py``
there), so the build needs no network, and MathJax is copied into the site (``sphinx-mathjax-offline``), so
the math renders where the site is read without one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")

import ppl_diffusion  # noqa: E402

project = "ppl_diffusion"
author = "the ppl_diffusion developers"
copyright = "2026, the ppl_diffusion developers"
release = version = ppl_diffusion.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: the math renders without a network
    "myst_nb",
    "cli_help",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"
exclude_patterns = ["_build", "_templates", "_tools", "**/race_runs", "**/.ipynb_checkpoints", "tutorials/conftest.py",
                    "**/draws"]
templates_path = ["_templates"]

# -- API pages ----------------------------------------------------------------------------------------------
autosummary_generate = True
autosummary_ignore_module_all = False  # a module's public names are its __all__
autosummary_imported_members = False
autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
add_module_names = False
python_use_unqualified_type_names = True
nitpicky = True
nitpick_ignore_regex = [
    # type hints autodoc writes out that have no page anywhere: typing internals and numpy's array aliases
    ("py:class", r"(typing\.|collections\.abc\.|numpy\.typing\.|jaxtyping\.|optax\._src\.).*"),
]

# -- notebooks and Markdown ---------------------------------------------------------------------------------
nb_execution_mode = "off"  # tutorials are stored with their outputs; CI smoke-runs them with nbval
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 4
suppress_warnings = []

# -- cross-project links (offline inventories) --------------------------------------------------------------
_inv = str(DOCS / "_inventories")
intersphinx_mapping = {
    name: (url, f"{_inv}/{name}.inv") for name, url in {
        "python": "https://docs.python.org/3/",
        "numpy": "https://numpy.org/doc/stable/",
        "torch": "https://pytorch.org/docs/stable/",
        "pyro": "https://docs.pyro.ai/en/stable/",
        "numpyro": "https://num.pyro.ai/en/stable/",
        "jax": "https://docs.jax.dev/en/latest/",
        "flax": "https://flax.readthedocs.io/en/latest/",
    }.items()
}

# -- HTML -----------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"ppl_diffusion {release}"
html_static_path: list[str] = []
html_sourcelink_suffix = ""  # "Show source" of a tutorial downloads the notebook itself, not a .txt copy
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True


# -- where each public name is documented -------------------------------------------------------------------
def _reexports() -> dict[str, dict[str, str]]:
    """For every module of the package, the names of its ``__all__`` that are defined elsewhere, mapped to the
    module that defines them: a package's page lists them in a table that links to that module's page, so each
    object is documented once, where it is defined."""
    import importlib
    import pkgutil

    out: dict[str, dict[str, str]] = {}
    names = ["ppl_diffusion"] + [m.name for m in pkgutil.walk_packages(ppl_diffusion.__path__, "ppl_diffusion.")
                                 if not m.name.rsplit(".", 1)[-1].startswith("_") and not m.name.endswith(".cli")]
    for name in names:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", []):
            obj = getattr(module, public)
            home = getattr(obj, "__module__", None)
            if home and home != name and hasattr(obj, "__qualname__") and home.startswith("ppl_diffusion"):
                out.setdefault(name, {})[public] = f"{home}.{obj.__qualname__}"
    return out


autosummary_context = {"reexports": _reexports()}
# every public alias (a name of a package's or module's __all__ defined elsewhere) -> where it is documented
_CANONICAL = {f"{module}.{name}": target for module, names in autosummary_context["reexports"].items()
              for name, target in names.items()}


# -- autodoc hooks -------------------------------------------------------------------------------------------
# annotations written as strings (``from __future__ import annotations``) name these by their short names
SHORT_NAMES = {"Tensor": "torch.Tensor", "Array": "jax.Array", "Module": "torch.nn.Module"}


def _resolve(app, env, node, contnode):
    """References Sphinx leaves unresolved, resolved as a reader means them:

    - a short type name of a string annotation (``Tensor``) through intersphinx;
    - a public name where users import it (``ppl_diffusion.GaussianDiffusion``, ``ppl_diffusion.nets.UNet``)
      to the page of the module that defines it;
    - an unqualified name (``GaussianDiffusion``) to the one object of that name in the same backend.
    """
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    if target in SHORT_NAMES:
        from sphinx.ext import intersphinx

        node["reftarget"] = SHORT_NAMES[target]
        return intersphinx.missing_reference(app, env, node, contnode)
    py = env.get_domain("py")
    found = _CANONICAL.get(target)
    if found is None and target and not target.startswith("ppl_diffusion"):
        matches = [name for name in py.objects if name.endswith("." + target) and name.startswith("ppl_diffusion.")]
        numpyro = (node.get("py:module") or "").startswith("ppl_diffusion.numpyro")
        matches = [m for m in matches if m.startswith("ppl_diffusion.numpyro") == numpyro] or matches
        found = matches[0] if len(matches) == 1 else None
    if found is None:
        return None
    return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], found, node, contnode)


def _public_bases(app, name, obj, options, bases):
    """Show a class's public bases: a private base (``_OnBins``) is replaced by its own bases."""
    def public(base):
        return [base] if not base.__name__.startswith("_") else [c for b in base.__bases__ for c in public(b)]

    bases[:] = [c for b in list(bases) for c in public(b)]


def setup(app):
    app.connect("missing-reference", _resolve)
    app.connect("autodoc-process-bases", _public_bases)
