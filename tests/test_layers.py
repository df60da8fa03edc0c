"""The package's imports follow the layers written in docs/ARCHITECTURE.md, and have no cycle.

Static: every ``import`` / ``from ... import`` in every module (module level and inside functions) is parsed with
``ast`` and resolved to a module of the package; importing ``a.b.c`` also runs the packages ``a.b`` (their
``__init__``), so those count as imported too (except a module's own parent packages)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ppl_diffusion"


def modules() -> dict[str, Path]:
    """Dotted name (without the leading ``ppl_diffusion.``; ``ppl_diffusion`` for the package itself) → file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts) or "ppl_diffusion"] = path
    return found


def _full(name: str) -> str:
    return "ppl_diffusion" + ("" if name == "ppl_diffusion" else "." + name)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that importing ``name`` runs, directly or as parent packages."""
    full = _full(name)
    package = full.split(".") if path.name == "__init__.py" else full.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            base = (".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                    if node.level else node.module or "")
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            if candidate != "ppl_diffusion" and not candidate.startswith("ppl_diffusion."):
                continue
            parts = candidate.split(".")
            for i in range(2, len(parts) + 1):  # the module and every package above it that the import runs
                target = ".".join(parts[:i])[len("ppl_diffusion."):]
                if target in known and target != name and not name.startswith(target + "."):
                    targets.add(target)
    return targets


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layers() -> list[list[str]]:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- layers -->\n```text\n(.*?)\n```", text, flags=re.S)
    assert block, "docs/ARCHITECTURE.md has no <!-- layers --> block"
    return [[n.strip() for n in line.split(",") if n.strip()] for line in block.group(1).splitlines() if line.strip()]


def layer_of(name: str, table: dict[str, int]) -> int | None:
    """The layer of the most specific name in the table that covers ``name`` (itself or a package above it)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    return None


def test_the_graph_sees_function_level_and_parent_package_imports():
    g = graph()
    assert "ode" in g["likelihood"] and "train" in g["sampling"]  # module-level imports
    assert "numpyro.train" in g["train.load"]  # an import inside a function (to_backend)
    assert "infer.draws" in g["infer.bound"] and "infer" not in g["infer.bound"]  # not its own parent package
    assert "numpyro" in g["train.load"]  # importing numpyro.train runs numpyro/__init__ first


def test_every_module_has_a_layer():
    table = {name: i for i, line in enumerate(layers()) for name in line}
    unknown = [n for n in table if n not in modules()]
    assert not unknown, f"docs/ARCHITECTURE.md's layers name modules that do not exist: {unknown}"
    missing = [n for n in modules() if layer_of(n, table) is None]
    assert not missing, f"modules without a layer in docs/ARCHITECTURE.md: {missing}"


def test_no_module_imports_from_a_layer_above():
    table = {name: i for i, line in enumerate(layers()) for name in line}
    upward = [f"{a} (line {layer_of(a, table) + 1}) imports {b} (line {layer_of(b, table) + 1})"
              for a, targets in graph().items() for b in sorted(targets) if layer_of(b, table) < layer_of(a, table)]
    assert not upward, "imports against the layers of docs/ARCHITECTURE.md:\n" + "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_train_does_not_import_interop():
    g = graph()
    assert not [(a, b) for a, targets in g.items() if a.split(".")[0] == "train" for b in targets
                if b.split(".")[0] == "interop"]
