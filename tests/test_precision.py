"""Mixed precision (``precision="bf16"``): the network call alone runs in bfloat16, its output and everything
after it stay float32; training resumes exactly at bf16; both backends and the CLI accept it."""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch

import ppl_diffusion.closed_forms as cf
import ppl_diffusion.precision as precision_mod
from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.cli import _one_line_warning, main
from ppl_diffusion.infer.bound import variational_bound
from ppl_diffusion.nets import MLPDenoiser, unet_preset
from ppl_diffusion.train import TrainConfig, load_trained, train

from .test_train import assert_same_training_state, final_state, toy

# Where bf16 is emulated (a CPU without AVX-512-BF16 / AMX, JAX on a CPU) the package warns once; the suite turns
# warnings into errors, and these tests are about numbers, not speed (test_emulated_bf16_warns_once checks it).
pytestmark = pytest.mark.filterwarnings("ignore:precision bf16 on:RuntimeWarning")

# bfloat16 keeps 8 significant bits: unit roundoff u = 2^-8 (relative spacing; round-to-nearest errs by u/2 per
# rounding). A forward rounds its inputs and weights at every matrix product and convolution, ~10 (MLP) to ~30
# (U-Net) of them in a row with float32 accumulation in between, so the output's relative error (2-norm) is a few
# u: measured 1.6 u (MLP) and 2.7–3.6 u (digits U-Net, torch and Flax). The test allows 8 u; float32 would be
# ~1e-6 and bf16 everywhere (no float32 accumulation) tens of u. The lower bound u / 16 shows bf16 took effect.
U = 2.0 ** -8
UPPER, LOWER = 8 * U, U / 16


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / a.norm()).item()


def _digits_diffusion(net, precision, T=1000):
    return GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(1, 8, 8),
                             decoder="discretized", precision=precision)


@pytest.mark.parametrize("name", ["unet", "mlp"])
def test_bf16_forward_is_close_to_fp32_and_returns_float32(name):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "unet":  # the digits preset on 8x8 images
        net, x, shape = unet_preset("digits", zero_init=False).eval(), torch.randn(16, 1, 8, 8, generator=g), (1, 8, 8)
    else:  # the MLP on the 64 flattened pixels
        net, x, shape = MLPDenoiser(dim=64, zero_init=False).eval(), torch.randn(16, 64, generator=g), (64,)
    t = torch.randint(1, 1001, (16,), generator=g)
    models = {p: GaussianDiffusion(schedule=NoiseSchedule.linear(1000), denoiser=net, event_shape=shape, precision=p)
              for p in ("fp32", "bf16")}
    with torch.no_grad():
        eps = {p: d.predict_eps(x, t) for p, d in models.items()}
        particles = models["bf16"].predict_eps(x.expand(2, *x.shape), t)  # vectorized particles [K x B x ...]
    assert eps["bf16"].dtype == particles.dtype == torch.float32
    assert LOWER < _rel(eps["fp32"], eps["bf16"]) < UPPER
    assert torch.equal(particles[0], eps["bf16"]) and torch.equal(particles[1], eps["bf16"])
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights untouched


def test_only_the_network_runs_under_autocast(monkeypatch):
    """The denoiser runs under bf16 autocast, μ_θ (and so every closed form, KL and decoder term) outside it."""
    seen = {"net": [], "mean": []}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 64)

        def forward(self, x, t):
            seen["net"].append(torch.is_autocast_enabled("cpu"))
            return self.lin(x.flatten(1)).reshape(x.shape)

    p_mean = cf.p_mean_from_eps

    def spy_mean(*args, **kw):
        seen["mean"].append(torch.is_autocast_enabled("cpu"))
        return p_mean(*args, **kw)

    monkeypatch.setattr(cf, "p_mean_from_eps", spy_mean)
    x0 = torch.randint(0, 256, (4, 1, 8, 8)) * 2 / 255 - 1  # bin centres of the 8-bit decoder
    bound = variational_bound(_digits_diffusion(Spy(), "bf16", T=5), x0, timesteps_per_batch=5)
    assert seen["net"] and all(seen["net"]) and seen["mean"] and not any(seen["mean"])
    assert bound.terms.dtype == torch.float32


def test_bf16_bound_of_a_tiny_model_differs_from_fp32_by_little():
    """Same weights, same noise: the bound's terms stay float32 and the bits/dim move by far less than the model's
    own spread; an exactly-zero network (ε̂ = 0 at both precisions) gives the same bound bit for bit."""
    torch.manual_seed(0)
    net = MLPDenoiser(dim=64, zero_init=False).eval()
    x0 = (torch.randint(0, 256, (16, 1, 8, 8)) / 127.5 - 1).float()

    class Flat(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t):
            return self.inner(x.flatten(1), t).reshape(x.shape)

    bpd = {}
    for p in ("fp32", "bf16"):
        torch.manual_seed(1)
        with torch.no_grad():
            bound = variational_bound(_digits_diffusion(Flat(net), p, T=50), x0, timesteps_per_batch=25)
        assert bound.terms.dtype == torch.float32
        bpd[p] = bound.bits_per_dim()
    diff = (bpd["bf16"] - bpd["fp32"]).abs()
    assert 0 < diff.max() < 1e-2 * bpd["fp32"].std()  # measured ~1e-4 bits/dim against a spread of ~0.5
    zero = MLPDenoiser(dim=64)  # zero_init: ε̂ = 0 exactly
    same = []
    for p in ("fp32", "bf16"):
        torch.manual_seed(1)
        with torch.no_grad():
            same.append(variational_bound(_digits_diffusion(Flat(zero), p, T=50), x0, timesteps_per_batch=25).terms)
    assert torch.equal(same[0], same[1])


def test_unknown_precision_is_a_one_line_error(tmp_path):
    for make in (lambda: _digits_diffusion(MLPDenoiser(dim=64), "fp16"),
                 lambda: TrainConfig(precision="fp16", steps=1).validate()):
        with pytest.raises(ValueError, match=r"^unknown precision 'fp16'; choose one of \['fp32', 'bf16'\]") as e:
            make()
        assert "\n" not in str(e.value)


def test_emulated_bf16_warns_once(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(precision_mod, "_warned", set())
    d = GaussianDiffusion(schedule=NoiseSchedule.linear(5), denoiser=MLPDenoiser(dim=2), event_shape=(2,),
                          precision="bf16")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            d.predict_eps(torch.zeros(3, 2), torch.ones(3, dtype=torch.long))
    found = [w for w in caught if issubclass(w.category, precision_mod.PrecisionWarning)]
    assert len(found) == 1 and "emulated" in str(found[0].message)
    w = found[0]
    line = _one_line_warning(w.message, w.category, w.filename, w.lineno)  # as the CLI prints it
    assert line.startswith("ppl-diffusion: warning: precision bf16 on this CPU") and line.count("\n") == 1


# ---------------------------------------------------------------------------------------- training
def test_train_at_bf16_resumes_exactly(tmp_path):
    full = train(toy(precision="bf16", steps=4, checkpoint_every=2), tmp_path / "full", progress=False)
    train(toy(precision="bf16", steps=2, checkpoint_every=2), tmp_path / "cut", progress=False)
    resumed = train(toy(precision="bf16", steps=4, checkpoint_every=2), tmp_path / "cut", resume=True, progress=False)
    assert full.step == resumed.step == 4
    a, b = final_state(tmp_path / "full"), final_state(tmp_path / "cut")
    assert_same_training_state(a, b)
    assert all(v.dtype == torch.float32 for part in ("model", "ema") for v in a[part].values())
    assert load_trained(tmp_path / "full").precision == "bf16"
    assert load_trained(tmp_path / "full", precision="fp32").precision == "fp32"


# ---------------------------------------------------------------------------------------- NumPyro
def test_numpyro_twin_computes_in_bf16_close_to_the_torch_bf16_net(monkeypatch):
    jax = pytest.importorskip("jax")
    pytest.importorskip("flax")
    pytest.importorskip("numpyro")
    import jax.numpy as jnp
    import numpy as np

    from ppl_diffusion.numpyro.train import from_torch

    torch.manual_seed(0)
    net = MLPDenoiser(dim=64, width=64, depth=2, emb_dim=32, zero_init=False)
    torch_d = GaussianDiffusion(schedule=NoiseSchedule.linear(100), denoiser=net, event_shape=(64,),
                                precision="bf16").eval()
    monkeypatch.setattr(precision_mod, "_warned", set())
    on_cpu = jax.default_backend() == "cpu"
    with pytest.warns(RuntimeWarning, match="XLA emulates bfloat16") if on_cpu else contextlib.nullcontext():
        twin = from_torch(torch_d)
    assert twin.denoiser.dtype == jnp.bfloat16
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(64, 64, generator=g), torch.randint(1, 101, (64,), generator=g)
    out = twin.denoiser(jnp.asarray(x.numpy()), jnp.asarray(t.numpy()))
    assert out.dtype == jnp.float32
    with torch.no_grad():
        torch_bf16 = torch_d.predict_eps(x, t)
        torch_fp32 = GaussianDiffusion(schedule=torch_d.schedule, denoiser=torch_d.denoiser,
                                       event_shape=(64,)).predict_eps(x, t)
    got = torch.from_numpy(np.array(out))
    assert LOWER < _rel(torch_fp32, got) < UPPER  # the Flax net's own bf16 rounding, within bf16's tolerance
    assert _rel(torch_bf16, got) < UPPER  # and the two backends' bf16 nets agree to bf16's tolerance


@pytest.mark.slow  # compiles the NumPyro training step (~15 s on 2 idle cores)
def test_numpyro_backend_trains_at_bf16(tmp_path):
    pytest.importorskip("jax")
    pytest.importorskip("flax")
    pytest.importorskip("numpyro")
    result = train(toy(backend="numpyro", precision="bf16", steps=3, T=10), tmp_path / "run", progress=False)
    assert result.step == 3
    state = final_state(tmp_path / "run")
    assert all(v.dtype == torch.float32 for v in state["model"].values())


# ---------------------------------------------------------------------------------------- CLI
def test_cli_precision_flag(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tiny = ["--data", "digits", "--net", "mlp", "--T", "10", "--batch-size", "16", "--warmup-steps", "2",
            "--checkpoint-every", "2", "--no-progress", "--steps", "2"]
    assert main(["train", *tiny, "--precision", "bf16", "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "config.json").read_text())["precision"] == "bf16"
    assert main(["evaluate", str(run_dir), "--max-examples", "4", "--fd-samples", "0", "--precision", "bf16",
                 "--no-progress"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["precision"] == "bf16"
    assert "precision bf16" in capsys.readouterr().out
    assert main(["sample", str(run_dir), "-n", "2", "--precision", "bf16"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--precision", "fp16", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown precision 'fp16'" in err


def test_precision_benchmark_quick(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "precision.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "precision_quick.json").read_text())
    assert result["machine"]["avx512_bf16"] in (True, False) and "shared" in result["machine"]
    assert {"fp32", "bf16"} <= set(result["forward"]["torch"]) and len(result["bounds"]) == 1
    assert (tmp_path / "precision_quick.md").read_text().startswith("# Mixed precision")
