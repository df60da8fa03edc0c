"""The README's and the guides' Python snippets, their command sessions and the examples run as written (with tiny
arguments)."""

import json
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


def test_cli_page_python_snippet_runs(tmp_path, monkeypatch):
    """docs/cli.md's "From Python": the CLI session's train, evaluate (with fitted variances) and sample as calls."""
    text = (ROOT / "docs" / "cli.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/cli.md has no python snippet"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, "docs/cli.md", "exec"), {"__name__": "__cli_page__"})


def markdown_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images of ``text``, fenced code blocks and inline code left out."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    inline = re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    refs = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    html = re.findall(r"<(?:img|a)\b[^>]*?(?:src|href)=[\"']([^\"']+)", text)
    return inline + refs + html


def anchors(text: str):
    """The anchors GitHub gives the headings of ``text``: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def test_links_resolve_inside_the_repository():
    """Every link of the README and docs is an http(s) URL or a relative path to a file or folder of the
    repository (an anchor to a heading of its page); none leaves it (no ../shared, no absolute paths), and
    ../shared is not mentioned at all."""
    bad = []
    for page in markdown_pages():
        text, name = page.read_text(), page.relative_to(ROOT)
        if "../shared" in text:
            bad.append(f"{name} mentions ../shared, a path outside the repository")
        for target in links(text):
            if re.match(r"https?://", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or path.startswith("/"):
                bad.append(f"{name}: {target} is neither an http(s) URL nor a relative path")
            elif not resolved.is_relative_to(ROOT):
                bad.append(f"{name}: {target} leaves the repository")
            elif not resolved.exists():
                bad.append(f"{name}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in set(anchors(resolved.read_text())):
                bad.append(f"{name}: {target} names no heading of {resolved.relative_to(ROOT)}")
    assert not bad, "\n".join(bad)


def test_link_check_finds_what_it_must():
    """The link extraction sees inline links, images, reference links and HTML, and skips code."""
    text = ("see [a](docs/theory.md#notation), ![fig](docs/figures/x.png \"t\"), <img src=\"y.png\">\n"
            "[ref]: ../shared/z.md\n`[not](a link)`\n```\n[nor](this)\n```\n")
    assert links(text) == ["docs/theory.md#notation", "docs/figures/x.png", "../shared/z.md", "y.png"]
    assert list(anchors("# The `ppl-diffusion` command\n## Two backends: Pyro and NumPyro\n## Notes\n## Notes\n")) == [
        "the-ppl-diffusion-command", "two-backends-pyro-and-numpyro", "notes", "notes-1"]


def test_theory_page_agrees_with_the_code():
    """docs/theory.md's check block: each formula of the page, computed from the page, equals the package's."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "theory.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/theory.md", "exec"), {"__name__": "__theory__"})


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


def test_cnf_example_runs(tmp_path):
    """examples/cnf_2d.py --quick: maximum likelihood through the ODE trains (its loss falls) and both models get
    finite ODE and ELBO numbers and a figure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cnf_example", ROOT / "examples" / "cnf_2d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.main(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "cnf_2d.png").stat().st_size > 1000
    assert [r["model"] for r in rows] == ["ML (ODE)", "ELBO"]
    assert rows[0]["loss_last"] < rows[0]["loss_first"] - 1.0  # 12.6 -> 8.1 nats/point in 10 steps
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("nll", "bpd", "elbo_nll", "elbo_bpd", "floor"))
        assert r["nfe"] > 0 and r["tol_gap"] < 0.1 and r["nll"] > r["floor"]


def test_compare_estimators_example_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_example", ROOT / "examples" / "compare_estimators.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows, agree = mod.main(["--T", "10", "--steps", "20", "--replicates", "16", "--full-chain-replicates", "8",
                            "--batch", "32", "--out", str(tmp_path)])
    assert (tmp_path / "estimators_forest.png").stat().st_size > 1000
    assert [r.estimator for r in rows] == list(mod.ESTIMATORS) and agree["dof"] == 4
    assert all(math.isfinite(r.elbo_mean) and r.grad_total_variance > 0 for r in rows)


def test_svi_learned_schedule_example_runs():
    """examples/svi_learned_schedule.py with tiny settings: one plain SVI step trains the denoiser, both endpoints
    and the interior (the variance objective through SVI's loss), and the bound comes with both standard errors."""
    import importlib.util

    import pyro
    import torch

    from ppl_diffusion.gamma import MonotoneNetGamma

    spec = importlib.util.spec_from_file_location("vdm_example", ROOT / "examples" / "svi_learned_schedule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary, diffusion = mod.main(["--steps", "2", "--batch", "8", "--test-examples", "6", "--strata", "2"])
    pyro.set_rng_seed(0)
    initial = MonotoneNetGamma(-13.3, 5.0)  # the example's schedule as it starts (the first draw after its seed)
    assert summary["gamma_0"] != -13.3 and summary["gamma_1"] != 5.0
    fresh = dict(initial.named_parameters())
    for name in ("l2.weight", "l2.bias", "l3.weight"):  # the interior's layers (its scale |w| gets ~0 at the start)
        p = dict(diffusion.schedule.named_parameters())[name]
        assert not torch.allclose(p.detach(), fresh[name]), f"the interior's {name} did not move"
    assert all(math.isfinite(summary[k]) and summary[k] > 0 for k in ("bpd", "bpd_stderr", "bpd_t_stderr"))


def test_svi_learned_schedule_example_takes_a_folder_of_pngs(tmp_path, capsys):
    """The example on images of another size (6×6 PNGs): the MLP and the bits/dim follow the data's dimension."""
    import importlib.util

    import numpy as np
    from PIL import Image

    for i in range(20):
        Image.fromarray(np.random.default_rng(i).choice([0, 40, 200, 255], size=(6, 6)).astype(np.uint8)).save(
            tmp_path / f"{i}.png")
    spec = importlib.util.spec_from_file_location("vdm_example", ROOT / "examples" / "svi_learned_schedule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    summary, diffusion = mod.main(["--steps", "2", "--batch", "4", "--test-examples", "2", "--strata", "2",
                                   "--log-every", "1", "--data-root", str(tmp_path)])
    out = capsys.readouterr().out
    assert tuple(diffusion.event_shape) == (1, 6, 6) and diffusion.denoiser.dim == 36
    assert "step    1:" in out and "test bound on 2 image_folder examples" in out, out
    assert math.isfinite(summary["bpd"])


def test_estimator_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "estimators.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "estimators_quick.json").exists() and "stochastic-kl" in out.stdout


@pytest.mark.slow  # two fresh processes that train, evaluate and sample: ~110 s on 2 loaded cores
def test_demo_recipe_benchmark_quick(tmp_path):
    import subprocess
    import sys

    script, out = str(ROOT / "benchmarks" / "demo_recipe.py"), ["--quick", "--out", str(tmp_path)]
    for phase in (["speed", "mlp"], ["run", "mlp", "--run-root", str(tmp_path / "runs")]):
        done = subprocess.run([sys.executable, script, *phase, *out], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "demo_recipe_quick.json").read_text())
    assert set(result["speed"]) == {"mlp"} and result["speed"]["mlp"]["s_per_step_min"] > 0
    row = result["runs"]["mlp"]
    assert row["weights_from"] == "best" and math.isfinite(row["test_bpd_ema"]) and row["validation"]
    assert (tmp_path / row["samples_png"]).stat().st_size > 1000
    assert "| mlp |" in (tmp_path / "demo_recipe_quick.md").read_text()


@pytest.mark.slow  # 35-55 s; moved out of the default run to keep it under 12 minutes
def test_backends_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "backends.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "backends_quick.json").read_text())
    assert len(result["rows"]) == 4 and all(r["pyro_s"] > 0 and r["numpyro_s"] > 0 for r in result["rows"])


def test_pyro_overhead_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pyro_overhead.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "pyro_overhead_quick.json").exists() and "training step" in out.stdout


@pytest.mark.slow  # ~20 s on 2 shared cores: two tiny trainings and evaluations
def test_fourier_features_benchmark_quick(tmp_path):
    """benchmarks/fourier_features.py --quick: both rows, the second with the rule's exponents for the digits (2, 3)
    and a first conv that reads 4 more channels, scored with finite bounds and SEs."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fourier_features.py"), "--quick", "--run-dir",
                          str(tmp_path / "run"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "fourier_features_quick.json").read_text())
    none, fourier = record["rows"]
    assert none["fourier_features"] == [] and fourier["fourier_features"] == record["exponents"] == [2, 3]
    assert record["spacing"] == pytest.approx(0.125)
    assert fourier["parameters"] - none["parameters"] == 4 * 8 * 9  # 4 channels into model_channels 8, 3x3
    for r in (none, fourier):
        for w in ("raw", "ema"):
            assert math.isfinite(r[w]["bpd"]) and r[w]["se"] > 0
    assert "| n = 2,3 | raw |" in (tmp_path / "out" / "fourier_features_quick.md").read_text()


@pytest.mark.slow  # ~60 s on 2 shared cores: 7 fresh processes, each one digits U-Net gradient at T = 2 or 3
def test_memory_benchmark_quick(tmp_path):
    """benchmarks/memory.py --quick: every level at both T, the checkpointed levels keeping a small fraction of the
    stored path's bytes, the interleaved timing and the T = 1000 table written."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "memory_quick.json").read_text())
    rows = {(r["T"], r["level"]): r for r in record["rows"]}
    assert set(rows) == {(T, level) for T in (2, 3) for level in ("none", "steps", "blocks")}
    for T in (2, 3):
        assert rows[(T, "steps")]["saved_bytes"] < rows[(T, "none")]["saved_bytes"] / 20
    assert record["interleaved_timing"][0]["ratio_to_none"]["none"] == 1.0
    assert "## At T = 1000" in (tmp_path / "memory_quick.md").read_text()


@pytest.mark.slow  # ~40 s on 2 shared cores: two tiny trainings and evaluations, then a rerun that skips both
def test_vdm_digits_benchmark_quick(tmp_path):
    """benchmarks/vdm_digits.py: each row's settings reach its run (config.json), both kinds of bound are
    gathered, a rerun resumes (nothing trained or evaluated again) and the report lists the rows not run."""
    import subprocess
    import sys

    script = [sys.executable, str(ROOT / "benchmarks" / "vdm_digits.py")]
    run = [*script, "run", "inf-learned-ff-cat", "t1000-learned", "--runs", str(tmp_path / "runs"), "--quick"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    again = subprocess.run(run, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count("not trained or evaluated again") == 2, again.stdout[-2000:]
    assert "trained 3 steps" not in again.stdout + again.stderr
    out = subprocess.run([*script, "report", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "vdm_digits.json").read_text())
    rows = {r["row"]: r for r in record["rows"]}
    assert set(rows) == {"inf-learned-ff-cat", "t1000-learned"} and "inf-fixed" in record["missing_rows"]
    cat, t1000 = rows["inf-learned-ff-cat"], rows["t1000-learned"]
    assert (cat["T"], cat["schedule"], cat["fourier_features"], cat["decoder"]) == (
        "inf", "learned-net", [2, 3], "vdm-categorical")
    assert (t1000["T"], t1000["fourier_features"], t1000["decoder"]) == (1000, [], "discretized")
    for r in rows.values():
        assert math.isfinite(r["bpd_ema"]) and r["bpd_ema_stderr"] > 0 and r["bpd_ema_t_stderr"] > 0
    bad = subprocess.run([*script, "run", "nope", "--runs", str(tmp_path / "runs")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown rows ['nope']" in bad.stderr


@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_digits_budget_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "digits_budget.py"), "--quick", "--run-dir",
                          str(tmp_path / "run"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "digits_budget_quick.json").read_text())
    for key in ("test_bpd", "test_bpd_ema", "steps", "batch_size", "parameters", "minutes", "command", "machine"):
        assert key in record
    assert [p["step"] for p in record["curve"]] == [10, 20] and record["steps"] == 30
    assert (tmp_path / "out" / "digits_budget_quick_curve.png").exists()


@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_cli_page_session_runs(tmp_path):
    """docs/cli.md's CLI session, line by line, with ``ppl-diffusion`` the installed command's module."""
    import shlex
    import subprocess
    import sys

    text = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(r"<!-- cli-example -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1)
    for line in block.splitlines():
        args = shlex.split(line)
        assert args[0] == "ppl-diffusion"
        out = subprocess.run([sys.executable, "-m", "ppl_diffusion", *args[1:], *(
            ["--no-progress"] if args[1] in ("train", "evaluate") else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (line, out.stderr[-2000:])
    assert (tmp_path / "runs" / "toy" / "eval-fitted.json").exists()
    assert (tmp_path / "runs" / "toy" / "samples-ema-K25.png").exists()
    assert (tmp_path / "runs" / "toy" / "ckpt-00000800.pt").exists()


# Appended to each command of docs/cli.md's own-images recipe: the same commands, seconds instead of minutes (argparse
# takes a flag's last value).
OWN_IMAGES_TINY = {"train": ["--steps", "2", "--T", "5", "--channels", "4", "--res-blocks", "1", "--batch-size", "8",
                             "--warmup-steps", "1", "--ema-decay", "0.5", "--checkpoint-every", "1", "--val-examples",
                             "8", "--no-progress"],
                   "evaluate": ["--max-examples", "4", "--no-progress"], "sample": ["-n", "4"]}


def test_own_images_recipe_runs_as_written(tmp_path):
    """docs/cli.md's own-images commands in order, with OWN_IMAGES_TINY appended: examples/make_png_folder.py writes
    the folder (1,797 PNGs of 16x16), train reads it with the U-Net of the size rule, evaluate and sample the run."""
    import shlex
    import subprocess
    import sys

    text = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(r"<!-- own-images -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1)
    commands = [shlex.split(line.split("  #")[0]) for line in block.replace("\\\n", " ").splitlines()]
    assert [c[1] for c in commands] == [
        "examples/make_png_folder.py", "train", "evaluate", "sample"]
    for args in commands:
        if args[0] == "python":
            argv = [sys.executable, str(ROOT / args[1]), *args[2:]]
        else:
            argv = [sys.executable, "-m", "ppl_diffusion", *args[1:], *OWN_IMAGES_TINY[args[1]]]
        out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (args, out.stderr[-2000:])
    pngs = sorted((tmp_path / "data" / "digits16").rglob("*.png"))
    assert len(pngs) == 1797 and {p.parent.name for p in pngs} == {str(d) for d in range(10)}
    run = tmp_path / "runs" / "own"
    config = json.loads((run / "config.json").read_text())
    assert (config["data"], config["net"]) == ("image_folder", "auto")
    assert json.loads((run / "eval.json").read_text())["weights_from"] == "best"
    assert (run / "samples-ema.png").exists()


@pytest.mark.slow  # 35-55 s; moved out of the default run to keep it under 12 minutes
def test_backends_page_example_runs_as_written(tmp_path):
    """docs/backends.md's session: trained on NumPyro, scored on Pyro, sampled on NumPyro."""
    pytest.importorskip("jax")
    import shlex
    import subprocess
    import sys

    text = (ROOT / "docs" / "backends.md").read_text()
    block = re.search(r"<!-- backend-example -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1)
    for line in block.splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "ppl-diffusion"
        out = subprocess.run([sys.executable, "-m", "ppl_diffusion", *args[1:], *(
            ["--no-progress"] if args[1] in ("train", "evaluate") else [])],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, (line, out.stderr[-2000:])
    run = tmp_path / "runs" / "jax"
    assert json.loads((run / "config.json").read_text())["backend"] == "numpyro"
    assert json.loads((run / "eval.json").read_text())["backend"] == "pyro"
    assert (run / "samples-ema.npz").exists() and (run / "ckpt-00000500.pt").exists()


@pytest.mark.parametrize("name", ["learned_gaussian", "student_t", "mixture", "flow", "custom"])
def test_prior_examples_run(tmp_path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"prior_{name}", ROOT / "examples" / f"prior_{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--steps", "20", "--T", "10", "--batch", "64", "--out", str(tmp_path)])
    assert (tmp_path / f"prior_{name}.png").stat().st_size > 1000
    assert math.isfinite(out["nll"]) and math.isfinite(out["prior_term"])


def test_extending_guide_runs_as_written(capsys):
    """docs/extending.md's python blocks, in order, in one namespace (its worked examples)."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n(.*?)\n```", text, flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/extending.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "bits/dim; prior term" in out and "learned prior location" in out and "torch.Size([4, 2])" in out


@pytest.mark.slow  # 35-55 s; moved out of the default run to keep it under 12 minutes
def test_priors_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "priors_digits.py"), "--quick", "--out",
                          str(tmp_path), "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "priors_digits_quick.json").read_text())
    assert [r["prior"] for r in result["rows"]] == ["normal", "gaussian", "normal"]
    assert result["rows"][-1]["estimator"] == "hybrid" and all(math.isfinite(r["bpd_ema"]) for r in result["rows"])


@pytest.mark.slow  # 35-55 s; moved out of the default run to keep it under 12 minutes
def test_ode_benchmark_quick(tmp_path):
    """benchmarks/ode.py --quick: every section (ELBO, IWAE, ODE on both backends, the k-diffusion side-by-side when
    k-diffusion is installed) runs on fresh T = 20 nets and writes its table."""
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ode.py"), "--quick", "--threads", "1", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "ode_quick.json").read_text())
    for m in result["models"].values():
        for rows in m["ode"].values():
            assert rows["torchdiffeq"]["nfe_mean"] > 0 and rows["diffrax"]["nfe_mean"] > 0
            # the two solvers at tol 1e-4 on an untrained T = 20 net (measured 0.06 bits/dim on the digits)
            assert rows["max_abs_diff_nats"] / (m["num_dims"] * math.log(2)) < 0.3
    assert "torchdiffeq (dopri5) against diffrax" in (tmp_path / "ode_quick.md").read_text()


@pytest.mark.slow  # 20-60 s; out of the default run to keep it under 12 minutes
def test_bound_estimate_benchmark_quick(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bound_estimate.py"), "--quick", "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "bound_estimate_quick.json").read_text())
    full, *estimates = record["digits"]["rows"]
    assert full["calls"] == 24 * 40 and all(r["calls"] < full["calls"] for r in estimates)
    assert all(abs(r["diff_from_full"]) < 5 * r["t_stderr"] for r in estimates)
    assert record["cifar10"]["parameters"] == 35_746_307 and record["cifar10"]["flops_per_input"] > 1e10
    assert "estimate, not a measurement" in (tmp_path / "bound_estimate_quick.md").read_text()
