"""The documentation site builds with no warning, shows every tutorial and API page, and has no broken
internal link; every public name of both backends is documented with an example."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

import ppl_diffusion

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytest.importorskip("sphinx")
pytest.importorskip("myst_nb")
pytest.importorskip("furo")


def api_modules() -> list[str]:
    """Every module of the package that has an API page: all but the command line and private modules."""
    names = [m.name for m in pkgutil.walk_packages(ppl_diffusion.__path__, "ppl_diffusion.")]
    return ["ppl_diffusion"] + [n for n in names if not any(p.startswith("_") for p in n.split("."))
                                and n != "ppl_diffusion.cli"]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("name"):
            self.ids.add(attrs["name"])
        for key in ("href", "src"):
            if attrs.get(key) and tag in ("a", "img", "link", "script"):
                self.links.append(attrs[key])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    cmd = [sys.executable, "-m", "sphinx", "-W", "-n", "--keep-going", "-q", "-b", "html",
           "-d", str(out / "doctrees"), str(DOCS), str(out / "html")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"sphinx failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    return out / "html"


def test_every_tutorial_and_api_page_is_built(site):
    notebooks = sorted(p.stem for p in (DOCS / "tutorials").glob("*.ipynb"))
    assert len(notebooks) >= 9, notebooks
    missing = [n for n in notebooks if not (site / "tutorials" / f"{n}.html").exists()]
    missing += [m for m in api_modules() if not (site / "api" / "generated" / f"{m}.html").exists()]
    assert not missing, missing
    index = (site / "tutorials" / "index.html").read_text()
    assert all(f"{n}.html" in index for n in notebooks)


def test_no_broken_internal_link(site):
    """Every relative href/src of every page points at a file of the site, and its #anchor at an id there."""
    pages = sorted(site.rglob("*.html"))
    parsed: dict[Path, _Links] = {}

    def parse(path: Path) -> _Links:
        if path not in parsed:
            parser = _Links()
            parser.feed(path.read_text(errors="replace"))
            parsed[path] = parser
        return parsed[path]

    broken = []
    for page in pages:
        for link in parse(page).links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith(("//", "mailto:", "javascript:", "data:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {link}")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in parse(target).ids:
                broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    assert not broken, f"{len(broken)} broken links, e.g.\n" + "\n".join(broken[:30])


def public_objects():
    for name in api_modules():
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", []):
            obj = getattr(module, public)
            if getattr(obj, "__module__", name) == name:  # documented where it is defined
                yield f"{name}.{public}", obj


def test_every_module_declares_its_public_names():
    missing = [m for m in api_modules() if not hasattr(importlib.import_module(m), "__all__")]
    assert not missing, f"modules without __all__: {missing}"


def test_every_public_name_has_a_docstring_with_an_example():
    """Functions and classes of every ``__all__`` have a docstring with a ``>>>`` example (pytest runs them
    with --doctest-modules); constants need a docstring comment only where autodoc shows one."""
    bad = []
    for qualname, obj in public_objects():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            bad.append(qualname)
    assert not bad, f"{len(bad)} public names without an example: {bad}"


def test_front_page_example_runs(tmp_path, monkeypatch):
    import re

    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "index.md").read_text(), flags=re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        namespace = {"__name__": "__docs_index__"}
        exec(compile(code, "docs/index.md", "exec"), namespace)
    assert namespace["loss"] > 0  # the negative ELBO of 128 points in nats
