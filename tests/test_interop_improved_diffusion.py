"""improved-diffusion / guided-diffusion checkpoints in and out (ppl_diffusion.interop).

The state dicts "of theirs" are built here two ways: our net exported through the module's key map, and the
key list their ``UNetModel`` has, written from their naming rules below (independently of the module). Their
net's semantics that our net must reproduce are checked against references written here from their
definitions: the legacy qkv order of their attention, the step label (t − 1, times 1000/T when rescaled), the
variance types and the schedules.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ppl_diffusion import GaussianDiffusion, NoiseSchedule
from ppl_diffusion.cli import main
from ppl_diffusion.interop import (from_improved_diffusion, from_safetensors, to_improved_diffusion,
                                   to_safetensors, write_run)
from ppl_diffusion.interop import improved_diffusion as idiff
from ppl_diffusion.interop.export import step_rotation
from ppl_diffusion.nets import UNet
from ppl_diffusion.nets.embedding import timestep_embedding
from ppl_diffusion.sampling import load_run
from ppl_diffusion.train import TrainConfig

# A tiny 8x8 one-channel model in their flags: two levels (8, 4), attention at 4 with two heads, T = 30.
FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
             num_heads=2, learn_sigma=True, diffusion_steps=30, noise_schedule="linear", in_channels=1)
FLAG_STRING = " ".join(f"--{k} {v}" for k, v in FLAGS.items())


def their_keys(*, in_ch, mc, mult, nres, attn_ds, out_ch, scale_shift=True):
    """Their UNetModel's state-dict keys and shapes, from their naming rules (improved-diffusion unet.py)."""
    keys = {}
    emb = 4 * mc

    def lin(p, i, o):
        keys[f"{p}.weight"], keys[f"{p}.bias"] = (o, i), (o,)

    def conv(p, i, o, k=3, d=2):
        keys[f"{p}.weight"], keys[f"{p}.bias"] = (o, i) + (k,) * d, (o,)

    def norm(p, c):
        keys[f"{p}.weight"], keys[f"{p}.bias"] = (c,), (c,)

    def res(p, i, o):  # in_layers = [norm, SiLU, conv], emb_layers = [SiLU, linear], out_layers = [norm, SiLU, drop, conv]
        norm(f"{p}.in_layers.0", i), conv(f"{p}.in_layers.2", i, o)
        lin(f"{p}.emb_layers.1", emb, 2 * o if scale_shift else o)
        norm(f"{p}.out_layers.0", o), conv(f"{p}.out_layers.3", o, o)
        if i != o:
            conv(f"{p}.skip_connection", i, o, k=1)

    def attn(p, c):
        norm(f"{p}.norm", c), conv(f"{p}.qkv", c, 3 * c, k=1, d=1), conv(f"{p}.proj_out", c, c, k=1, d=1)

    lin("time_embed.0", mc, emb), lin("time_embed.2", emb, emb)
    conv("input_blocks.0.0", in_ch, mc)
    chans, ch, ds, b = [mc], mc, 1, 1
    for level, m in enumerate(mult):
        for _ in range(nres):
            res(f"input_blocks.{b}.0", ch, m * mc)
            ch = m * mc
            if ds in attn_ds:
                attn(f"input_blocks.{b}.1", ch)
            chans.append(ch)
            b += 1
        if level != len(mult) - 1:
            conv(f"input_blocks.{b}.0.op", ch, ch)
            chans.append(ch)
            ds *= 2
            b += 1
    res("middle_block.0", ch, ch), attn("middle_block.1", ch), res("middle_block.2", ch, ch)
    b = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nres + 1):
            res(f"output_blocks.{b}.0", ch + chans.pop(), m * mc)
            ch, j = m * mc, 1
            if ds in attn_ds:
                attn(f"output_blocks.{b}.1", ch)
                j = 2
            if level and i == nres:
                conv(f"output_blocks.{b}.{j}.conv", ch, ch)
                ds //= 2
            b += 1
    norm("out.0", ch), conv("out.2", mc, out_ch)
    return keys


def random_unet(flags=FLAGS, seed=0, **overrides) -> UNet:
    """Our U-Net of their ``flags`` with random weights everywhere (no zero init) and no step shift."""
    cfg, resolved = idiff.import_config(flags)
    kwargs = {**cfg.net_config, "timestep_shift": 0.0, "timestep_scale": 1.0, **overrides}
    torch.manual_seed(seed)
    net = UNet(**kwargs, learn_sigma=resolved["learn_sigma"], zero_init=False)
    with torch.no_grad():  # GroupNorm's affine parameters away from (1, 0) too
        for m in net.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def theirs_checkpoint(tmp_path_factory):
    """(path of a .pt state dict in their naming, the net of ours it came from)."""
    net = random_unet()
    path = tmp_path_factory.mktemp("theirs") / "model.pt"
    torch.save(idiff.state_dict_to_theirs(net.state_dict(), net), path)
    return path, net


@pytest.fixture(scope="module")
def imported_run(tmp_path_factory, theirs_checkpoint):
    run = tmp_path_factory.mktemp("imported") / "run"
    assert main(["import", "improved-diffusion", str(theirs_checkpoint[0]), "--flags", FLAG_STRING, "--run-dir",
                 str(run), "--data", "digits"]) == 0
    source = json.loads((run / "config.json").read_text())["source"]
    assert source["kind"] == "improved-diffusion" and source["flags"]["diffusion_steps"] == 30
    assert source["sha256"] == hashlib.sha256(theirs_checkpoint[0].read_bytes()).hexdigest()
    return run


# ------------------------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("mult, nres, attn", [((1, 2), 1, "4"), ((1, 1, 2), 2, "4,2")], ids=["2-levels", "3-levels"])
def test_their_key_list_is_ours_renamed(mult, nres, attn):
    flags = dict(FLAGS, channel_mult=",".join(map(str, mult)), num_res_blocks=nres, attention_resolutions=attn)
    net = random_unet(flags)
    theirs = idiff.state_dict_to_theirs(net.state_dict(), net)
    want = their_keys(in_ch=1, mc=32, mult=mult, nres=nres, attn_ds={8 // int(r) for r in attn.split(",")}, out_ch=2)
    assert list(theirs) == list(want)  # the same keys in the same order ...
    assert {k: tuple(v.shape) for k, v in theirs.items()} == want  # ... and shapes


def test_import_forward_equals_the_net_at_their_step_label(theirs_checkpoint):
    """Our t = 1..T reaches their net as (t − 1) · 1000/T (rescale_timesteps) or t − 1 (guided's default)."""
    path, net = theirs_checkpoint
    x, t = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([1, 2, 9, 29, 30])
    for origin, scale in [("improved-diffusion", 1000 / 30), ("guided-diffusion", 1.0)]:
        d = from_improved_diffusion(path, origin=origin, **FLAGS)
        assert d.variance == "learned-range" and d.T == 30
        with torch.no_grad():
            want = net(x, (t - 1).float() * scale)  # the shift-free net at their label
            assert torch.equal(d.denoiser(x, t), want), origin
            assert not torch.allclose(d.denoiser(x, t), net(x, t.float()), atol=1e-3)  # the label matters


@pytest.mark.parametrize("new_order", [False, True], ids=["legacy", "new-order"])
def test_guided_head_channels_and_attention_orders(new_order):
    """guided-diffusion's num_head_channels (2 heads at 32 channels, 4 at 64) in either qkv order."""
    flags = dict(FLAGS, num_head_channels=16, use_new_attention_order=new_order, attention_resolutions="8,4")
    net = random_unet(flags)
    assert {m.num_heads for m in net.modules() if hasattr(m, "qkv")} == {2, 4}
    sd = ({idiff._their_key(k): v for k, v in net.state_dict().items()} if new_order  # new order: our row layout
          else idiff.state_dict_to_theirs(net.state_dict(), net))
    d = from_improved_diffusion(sd, origin="guided-diffusion", **flags)
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5)), torch.tensor([1, 12, 30])
    with torch.no_grad():
        assert torch.equal(d.denoiser(x, t), net(x, (t - 1).float()))


def test_legacy_qkv_order_is_their_attention(theirs_checkpoint):
    """Their attention ([head][q, k, v][channel] rows, per head softmax(qᵀk/√d)) on their weights equals ours."""
    path, _ = theirs_checkpoint
    sd = torch.load(path, weights_only=True)
    d = from_improved_diffusion(path, **FLAGS)
    block, heads = d.denoiser.middle_block[1], 2
    x = torch.randn(3, 64, 2, 2, generator=torch.Generator().manual_seed(2))
    b, c = x.shape[:2]
    h = block.norm(x.reshape(b, c, -1))
    qkv = F.conv1d(h, sd["middle_block.1.qkv.weight"], sd["middle_block.1.qkv.bias"]).reshape(b * heads, -1, 4)
    q, k, v = qkv.split(c // heads, dim=1)
    w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(c // heads), dim=-1)
    a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, -1)
    want = x.reshape(b, c, -1) + F.conv1d(a, sd["middle_block.1.proj_out.weight"], sd["middle_block.1.proj_out.bias"])
    with torch.no_grad():
        assert torch.allclose(block(x), want.reshape(x.shape), atol=1e-5)


def test_both_backends_give_the_same_denoiser(theirs_checkpoint):
    import jax.numpy as jnp
    from flax import nnx

    path, _ = theirs_checkpoint
    d = from_improved_diffusion(path, **FLAGS)
    twin = from_improved_diffusion(path, backend="numpyro", **FLAGS)
    assert twin.variance == "learned-range"
    x, t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([1, 5, 17, 30])
    with torch.no_grad():
        want = d.denoiser(x, t).numpy()
    apply = nnx.jit(lambda net, x, t: net(x, t))  # one compiled call (an eager U-Net compiles op by op: ~40 s)
    got = np.asarray(apply(twin.denoiser, jnp.asarray(x.numpy()), jnp.asarray(t.numpy(), jnp.int32)))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ schedule, variance
@pytest.mark.parametrize("T", [30, 1000, 4000])
def test_their_schedules_are_ours(T):
    scale = 1000 / T  # their linear: DDPM's range scaled; their cosine: 1 - abar((i + 1)/T) / abar(i/T), capped
    linear = np.linspace(scale * 0.0001, scale * 0.02, T)
    abar = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    cosine = np.minimum([1 - abar[i + 1] / abar[i] for i in range(T)], 0.999)
    np.testing.assert_array_equal(NoiseSchedule.linear(T).betas, linear)
    np.testing.assert_allclose(NoiseSchedule.cosine(T).betas, cosine, rtol=1e-12, atol=0)
    for name in ("linear", "cosine"):
        assert idiff.schedule_fields(dict(noise_schedule=name, diffusion_steps=T)) == dict(schedule=name, T=T, betas=None)


def test_their_variance_types():
    """FIXED_LARGE: β_t with β̃_2 at t = 1; FIXED_SMALL: β̃_t clipped; LEARNED_RANGE: f = (v + 1)/2 between
    log β̃_t (clipped) and log β_t; ours "learned" (sigmoid(2v)) is another model."""
    import jax.numpy as jnp

    from ppl_diffusion.numpyro.diffusion import GaussianDiffusion as JaxDiffusion

    s = NoiseSchedule.linear(30)
    post = s.betas * (1 - s.alphas_cumprod_prev) / (1 - s.alphas_cumprod)
    large = np.log(np.append(post[1], s.betas[1:]))
    small = np.log(np.append(post[1], post[1:]))
    net = torch.nn.Identity()
    assert np.array_equal(GaussianDiffusion(schedule=s, denoiser=net, event_shape=(2,), variance="fixed-large")
                          .p_log_variance, large)
    assert np.array_equal(GaussianDiffusion(schedule=s, denoiser=net, event_shape=(2,), variance="posterior")
                          .p_log_variance, small)
    v = torch.linspace(-1.5, 1.5, 30, dtype=torch.float64)[:, None]
    t = torch.arange(1, 31)
    frac = (v.numpy() + 1) / 2
    want = frac * np.log(s.betas)[:, None] + (1 - frac) * small[:, None]
    d = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(1,), variance="learned-range")
    np.testing.assert_allclose(d.learned_log_variance(v, t).numpy(), want, rtol=1e-12)
    ours = GaussianDiffusion(schedule=s, denoiser=net, event_shape=(1,), variance="learned")
    assert np.abs(ours.learned_log_variance(v, t).numpy() - want).max() > 0.05  # they differ
    twin = JaxDiffusion(schedule=s, denoiser=None, event_shape=(1,), variance="learned-range")
    out = jnp.concatenate([jnp.zeros((30, 1)), jnp.asarray(v.numpy(), jnp.float32)], axis=1)
    _, log_var = twin.mean_log_var(out, jnp.zeros((30, 1)), jnp.asarray(t.numpy()))
    np.testing.assert_allclose(np.asarray(log_var), want, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ export
def test_improved_diffusion_export_round_trip(imported_run, tmp_path):
    run = load_run(imported_run, device="cpu")
    doc = to_improved_diffusion(imported_run, tmp_path / "theirs")
    assert doc["exact"] and doc["flags"]["rescale_timesteps"] and doc["command_line"]["improved-diffusion"] is None
    back = from_improved_diffusion(tmp_path / "theirs" / "model.pt", **doc["flags"])
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 15, 30])
    with torch.no_grad():
        assert torch.equal(back.denoiser(x, t), run.diffusion.denoiser(x, t))
    assert back.variance == run.diffusion.variance and np.array_equal(back.schedule.betas, run.diffusion.schedule.betas)


@pytest.mark.parametrize("variance, differs", [("posterior", None), ("beta", "σ_1² = β_1")])
def test_a_net_trained_here_exports_with_its_step_folded_in(tmp_path, variance, differs):
    """A net that embeds t itself: their code feeds t − 1, so export folds the +1 into the time MLP's first layer."""
    kwargs = dict(in_channels=1, model_channels=64, image_size=8, channel_mult=(1, 1), num_res_blocks=1,
                  attention_resolutions=(4,), num_heads=1)
    config = TrainConfig(data="digits", net="unet", net_config=kwargs, T=30, variance=variance, steps=1)
    torch.manual_seed(4)
    net = UNet(**kwargs, zero_init=False).eval()
    write_run(tmp_path / "run", config, net.state_dict())
    doc = to_improved_diffusion(tmp_path / "run", tmp_path / "theirs")
    assert doc["flags"]["sigma_small"] == (variance == "posterior") and not doc["flags"]["rescale_timesteps"]
    assert doc["exact"] == (differs is None) and all(differs in d for d in doc["differences"])
    back = from_improved_diffusion(tmp_path / "theirs" / "model.pt", **doc["flags"])
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 15, 30])
    with torch.no_grad():
        torch.testing.assert_close(back.denoiser(x, t), net(x, t), atol=2e-5, rtol=1e-4)
    assert back.variance == {"posterior": "posterior", "beta": "fixed-large"}[variance]


def test_fourier_features_refuse_export_and_the_vdm_decoder_is_a_stated_difference(tmp_path):
    """Their UNetModel and diffusers' UNet2DModel have no Fourier features of x_t: export refuses in one line; VDM's
    categorical decoder exports the net, with the decoder named among what their code computes differently."""
    from ppl_diffusion.interop.diffusers import unet_to_diffusers

    kwargs = dict(in_channels=1, model_channels=64, image_size=8, channel_mult=(1, 1), num_res_blocks=1,
                  attention_resolutions=(4,), num_heads=1)
    featured = dict(kwargs, fourier_features=[2, 3])
    config = TrainConfig(data="digits", net="unet", net_config=featured, T=30, variance="posterior", steps=1)
    write_run(tmp_path / "ff", config, UNet(**featured).state_dict())
    with pytest.raises(ValueError, match=r"^the U-Net has Fourier features of x_t \(fourier_features=\[2, 3\]\)") as e:
        to_improved_diffusion(tmp_path / "ff", tmp_path / "theirs-ff")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"UNet2DModel has no Fourier features of its input; no exact export$"):
        unet_to_diffusers(UNet(**featured))
    config = TrainConfig(data="digits", net="unet", net_config=kwargs, T=30, variance="posterior", steps=1,
                         decoder="vdm-categorical")
    write_run(tmp_path / "vdm", config, UNet(**kwargs).state_dict())
    doc = to_improved_diffusion(tmp_path / "vdm", tmp_path / "theirs-vdm")
    assert not doc["exact"] and [d for d in doc["differences"] if "VDM's categorical" in d]


def test_our_embedding_is_theirs_at_their_label():
    """Theirs: [cos(s f_i), sin(s f_i)], f_i = exp(−ln(10⁴) i / half), at s = their (float) step label."""
    t = torch.tensor([1, 2, 30])
    s = (t - 1).float() * (1000 / 30)
    f = torch.exp(-math.log(10000) * torch.arange(16, dtype=torch.float32) / 16)
    want = torch.cat([torch.cos(s[:, None] * f), torch.sin(s[:, None] * f)], dim=1)
    assert torch.equal(timestep_embedding(t, 32, shift=-1.0, scale=1000 / 30), want)


def test_old_configs_load_and_nets_register_by_name():
    from types import SimpleNamespace

    from ppl_diffusion.train import NET_BUILDERS, build_diffusion, register_net

    old = TrainConfig(data="digits", net="mlp", T=10, steps=1).to_dict()
    for key in ("net_config", "betas", "source"):  # a config.json written before these keys existed
        old.pop(key)
    meta = SimpleNamespace(event_shape=(1, 8, 8), decoder="discretized")
    assert build_diffusion(TrainConfig.from_dict(old), meta).T == 10
    register_net("linear-test", lambda event_shape: torch.nn.Conv2d(1, 1, 1))  # builder(event_shape, **net_config)
    try:
        config = TrainConfig(data="digits", net="linear-test", schedule="custom", betas=[0.1, 0.2, 0.3], T=3,
                             steps=1).validate()
        d = build_diffusion(config, meta)
        assert isinstance(d.denoiser, torch.nn.Conv2d) and np.array_equal(d.schedule.betas, [0.1, 0.2, 0.3])
        with pytest.raises(ValueError, match="schedule 'linear' with betas given"):
            TrainConfig(data="digits", net="linear-test", betas=[0.1], steps=1).validate()
        with pytest.raises(ValueError, match="is a U-Net preset"):
            register_net("digits", lambda event_shape: None)
    finally:
        NET_BUILDERS.pop("linear-test")


def test_step_rotation_shifts_the_embedding():
    t = torch.tensor([0.0, 3.0, 29.0], dtype=torch.float64)
    e = timestep_embedding(t, 10, dtype=torch.float64).numpy()
    e2 = timestep_embedding(t + 2.5, 10, dtype=torch.float64).numpy()
    np.testing.assert_allclose(e @ step_rotation(10, 2.5).T, e2, atol=1e-12)


def test_safetensors_round_trip(imported_run, tmp_path):
    run = load_run(imported_run, device="cpu")
    to_safetensors(imported_run, tmp_path / "st")
    back = from_safetensors(tmp_path / "st")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 15, 30])
    with torch.no_grad():
        assert torch.equal(back.denoiser(x, t), run.diffusion.denoiser(x, t))
    assert back.variance == "learned-range" and back.T == 30
    assert main(["import", "safetensors", str(tmp_path / "st"), "--run-dir", str(tmp_path / "run2")]) == 0
    again = load_run(tmp_path / "run2", device="cpu")
    assert again.config == run.config
    with torch.no_grad():
        assert torch.equal(again.diffusion.denoiser(x, t), run.diffusion.denoiser(x, t))


# ------------------------------------------------------------------------------------------------ CLI
def test_respacing_is_recorded_not_applied(theirs_checkpoint, tmp_path, capsys):
    assert main(["import", "improved-diffusion", str(theirs_checkpoint[0]), "--flags",
                 FLAG_STRING + " --timestep_respacing 10", "--run-dir", str(tmp_path / "run"), "--data", "digits"]) == 0
    assert "timestep_respacing '10' is their sampler's setting; the run is the 30-step model" in capsys.readouterr().out
    assert load_run(tmp_path / "run", device="cpu").diffusion.T == 30


def test_imported_run_evaluates_and_samples(imported_run, tmp_path, capsys):
    assert main(["evaluate", str(imported_run), "--max-examples", "4", "--fd-samples", "0", "--no-progress"]) == 0
    result = json.loads((imported_run / "eval.json").read_text())
    assert result["T"] == 30 and result["variance"] == "learned-range" and math.isfinite(result["bpd_ema"])
    assert main(["evaluate", str(imported_run), "--max-examples", "4", "--fd-samples", "0", "--fit-variance", "16",
                 "--no-progress"]) == 0
    assert main(["sample", str(imported_run), "-n", "4", "--steps", "10", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.npz").is_file()


@pytest.mark.slow
def test_imported_run_takes_the_ode_compare_and_numpyro(imported_run, tmp_path):
    assert main(["evaluate", str(imported_run), "--likelihood", "ode", "--max-examples", "2", "--rtol", "1e-3",
                 "--atol", "1e-3", "--no-progress"]) == 0
    assert main(["evaluate", str(imported_run), "--max-examples", "2", "--fd-samples", "0", "--backend", "numpyro",
                 "--no-progress"]) == 0
    assert main(["compare", str(imported_run), "--out", str(tmp_path / "study"), "--estimators",
                 "stochastic-kl", "--replicates", "4", "--batch-size", "4", "--per-t-steps", "3", "--no-progress"]) == 0


def _mlp_run(tmp_path):
    from ppl_diffusion.nets import MLPDenoiser

    config = TrainConfig(data="digits", net="mlp", T=10, steps=1)
    write_run(tmp_path / "mlp", config, MLPDenoiser(dim=64).state_dict())
    return tmp_path / "mlp"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ppl-diffusion: error: "), err
    return err


@pytest.mark.parametrize("flags, match", [
    (FLAG_STRING + " --colour blue", "unknown flag --colour"),
    (FLAG_STRING.replace("--diffusion_steps 30", ""), "missing flag --diffusion_steps"),
    (FLAG_STRING + " --class_cond True", "flag class_cond = True: not supported"),
    (FLAG_STRING + " --learn_sigma False", "'out.2.weight' has shape (2, 32, 3, 3)"),
    (FLAG_STRING + " --num_channels 64", "'time_embed.0.weight' has shape"),
    (FLAG_STRING + " --num_res_blocks 2", "'input_blocks.2.0.op.weight' has no place"),
    (FLAG_STRING + " --diffusion_steps 20", "β_T = 1 >= 1"),
    (FLAG_STRING + " --image_size 16", "data 'digits' has examples of shape [1, 8, 8]"),
    ("--image_size 8 --num_channels", "--num_channels has no value"),
], ids=["unknown", "missing", "class-cond", "learn-sigma", "width", "blocks", "short-linear", "data", "no-value"])
def test_bad_flags_are_one_line(theirs_checkpoint, tmp_path, capsys, flags, match):
    err = _error(capsys, ["import", "improved-diffusion", str(theirs_checkpoint[0]), "--flags", flags, "--run-dir",
                          str(tmp_path / "run"), "--data", "digits"])
    assert match in err, err


@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.update({"label_emb.weight": torch.zeros(1000, 128)}), "'label_emb.weight' is a class embedding"),
    (lambda sd: sd.update({"input_blocks.9.0.weight": torch.zeros(1)}), "'input_blocks.9.0.weight' has no place"),
    (lambda sd: sd.pop("middle_block.1.qkv.bias"), "has no key 'middle_block.1.qkv.bias'"),
    (lambda sd: sd.update({"out.2.bias": torch.zeros(3)}), "'out.2.bias' has shape (3,)"),
], ids=["class-embedding", "unknown-key", "missing-key", "shape"])
def test_bad_keys_are_one_line(theirs_checkpoint, tmp_path, capsys, edit, match):
    sd = torch.load(theirs_checkpoint[0], weights_only=True)
    edit(sd)
    torch.save(sd, tmp_path / "bad.pt")
    err = _error(capsys, ["import", "improved-diffusion", str(tmp_path / "bad.pt"), "--flags", FLAG_STRING,
                          "--run-dir", str(tmp_path / "run"), "--data", "digits"])
    assert match in err, err
    assert not (tmp_path / "run").exists()


def test_other_bad_input_is_one_line(imported_run, theirs_checkpoint, tmp_path, capsys):
    assert "unknown import kind 'diffuser'" in _error(capsys, ["import", "diffuser", "x", "--run-dir", str(tmp_path)])
    assert "unknown export kind 'onnx'" in _error(capsys, ["export", str(imported_run), "--to", "onnx", "--out",
                                                           str(tmp_path / "o")])
    assert "does not exist" in _error(capsys, ["import", "safetensors", str(tmp_path / "none"), "--run-dir",
                                               str(tmp_path / "r")])
    assert "already holds checkpoints" in _error(capsys, ["import", "improved-diffusion", str(theirs_checkpoint[0]),
                                                          "--flags", FLAG_STRING, "--run-dir", str(imported_run),
                                                          "--data", "digits"])
    assert "none.pt does not exist" in _error(capsys, ["import", "improved-diffusion", str(tmp_path / "none.pt"), "--flags",
                                           FLAG_STRING, "--run-dir", str(tmp_path / "r"), "--data", "digits"])
    assert "needs a U-Net denoiser; this run's net is 'mlp'" in _error(capsys, [
        "export", str(_mlp_run(tmp_path)), "--to", "improved-diffusion", "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="flag resblock_updown = True: not supported"):
        idiff.resolve_flags(dict(FLAGS, resblock_updown=True), "guided-diffusion")
    with pytest.raises(ValueError, match="num_heads_upsample = 8 differs"):
        idiff.resolve_flags(dict(FLAGS, num_heads_upsample=8))
    with pytest.raises(ValueError, match="flag image_size = 48 has no default channel_mult"):
        idiff.unet_kwargs(idiff.resolve_flags(dict(FLAGS, image_size=48, channel_mult="")))
