"""The README's Python snippet and the examples run as written (with tiny arguments)."""

import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python snippet"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def test_readme_commands_are_what_ci_runs():
    text = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "<!-- quickstart-test -->" in text and "<!-- quickstart-run -->" in text and "quickstart-test" in ci
    for marker in ("quickstart-run", "quickstart-test"):
        cmd = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", text).group(1)
        assert cmd.startswith("python3.11 -m venv .venv") and "-c constraints.txt" in cmd


def test_example_gaussian_mixture(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("example", ROOT / "examples" / "gaussian_mixture_2d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    nll = mod.main(["--steps", "30", "--T", "20", "--batch", "64", "--out", str(tmp_path)])
    assert (tmp_path / "mixture_2d.png").stat().st_size > 1000
    assert math.isfinite(nll) and abs(nll) < 100


def test_estimator_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "estimators_quick.json").exists() and "stochastic-kl" in out.stdout


def test_pyro_overhead_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pyro_overhead.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "pyro_overhead_quick.json").exists() and "training step" in out.stdout
