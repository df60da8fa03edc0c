"""Nets by name (ppl_diffusion/nets/build.py): the U-Net sized by the data (both backends), the presets as its named
settings building today's nets, the MLP's settings, honest net_config, and nets found by import path from the CLI
in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ppl_diffusion.nets import (NET_BUILDERS, MLPDenoiser, NetWarning, UNet, build_net, default_attention,
                                default_channel_mult, unet_config, unet_for)
from ppl_diffusion.train import TrainConfig, build_diffusion, load_trained, train

ROOT = Path(__file__).resolve().parent.parent

# The presets as they were written before they became settings of unet_for (kept here literally, so that the
# comparison does not read UNET_PRESETS).
TODAYS_PRESETS = {
    "cifar10": dict(in_channels=3, image_size=32, model_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attention_resolutions=(16,), dropout=0.1),
    "digits": dict(in_channels=1, image_size=8, model_channels=64, channel_mult=(1, 2), num_res_blocks=2,
                   attention_resolutions=(4,), dropout=0.1, use_scale_shift_norm=True),
    "mnist": dict(in_channels=1, image_size=28, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
                  attention_resolutions=(14,), dropout=0.1),
}


def meta(*shape):
    return SimpleNamespace(event_shape=shape, decoder="discretized" if len(shape) == 3 else "gaussian")


# ---------------------------------------------------------------------------------------- U-Net by size
@pytest.mark.parametrize("name, learn_sigma", [("digits", False), ("digits", True), ("mnist", False),
                                               ("cifar10", True)], ids=["digits", "digits-learn_sigma", "mnist",
                                                                        "cifar10-learn_sigma"])
def test_presets_build_todays_nets(name, learn_sigma):
    """By name and by default selection (net auto on data of the preset's shape): the same keys, shapes, weights
    (same seed) and outputs as today's construction, so old checkpoints load and give the same numbers."""
    kw = TODAYS_PRESETS[name]
    shape = (kw["in_channels"], kw["image_size"], kw["image_size"])
    variance = "learned" if learn_sigma else "beta"
    torch.manual_seed(3)
    want = UNet(**kw, learn_sigma=learn_sigma).eval()
    x, t = torch.randn(2, *shape), torch.tensor([1, 7])
    with torch.no_grad():
        out = want(x, t)
    for net in (name, "auto"):
        torch.manual_seed(3)
        got = build_diffusion(TrainConfig(net=net, variance=variance, T=10, steps=1), meta(*shape)).denoiser.eval()
        a, b = want.state_dict(), got.state_dict()
        assert list(a) == list(b) and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
        with torch.no_grad():
            assert torch.equal(got(x, t), out)


def test_the_size_rule():
    """improved-diffusion's create_model at its sizes (channel_mult 32: 1,2,2,2; 64: 1,2,3,4; 256: 1,1,2,2,4,4;
    attention "16,8"), guided-diffusion's 128, and the stated rule between and below."""
    table = {  # size: (channel_mult, attention_resolutions)
        7: ((1,), ()), 12: ((1, 2), (6,)), 15: ((1,), ()), 16: ((1, 2, 2), (8,)), 20: ((1, 2, 2), (10,)),
        24: ((1, 2, 2), (12,)), 32: ((1, 2, 2, 2), (16,)), 48: ((1, 2, 2, 2), (24,)), 64: ((1, 2, 3, 4), (16, 8)),
        96: ((1, 2, 2, 2), (12,)), 128: ((1, 1, 2, 3, 4), (16, 8)), 256: ((1, 1, 2, 2, 4, 4), (16, 8)),
    }
    for size, (mult, attention) in table.items():
        assert default_channel_mult(size) == mult and default_attention(size, mult) == attention, size
        c = unet_config((2, size, size))  # 2 channels: no preset has that shape
        assert (c["channel_mult"], c["attention_resolutions"]) == (mult, attention)
        assert c["model_channels"] == (128 if size >= 32 else 64) and c["num_res_blocks"] == 2
        assert c["use_scale_shift_norm"] and c["dropout"] == 0.1
    assert unet_config((1, 16, 16), channel_mult=[1])["attention_resolutions"] == ()  # follows the levels given


@pytest.mark.parametrize("size", [7, 12, 15, 20])
def test_sizes_that_halve_few_times_build_and_run(size):
    net = unet_for((3, size, size), model_channels=8, num_res_blocks=1).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, size, size), torch.tensor([1, 5])).shape == (2, 3, size, size)


def test_shapes_the_u_net_cannot_take_are_one_line():
    with pytest.raises(ValueError, match=r"square images; the data's are 16x20 .*crop or pad them to 16x16 or 20x20"):
        build_net("auto", (1, 16, 20))
    with pytest.raises(ValueError, match=r"2\^2 = 4; use fewer levels or pad"):
        build_net("auto", (1, 18, 18), {"channel_mult": [1, 2, 2]})
    with pytest.raises(ValueError, match=r"net 'unet' takes images .* shape \[5\]: use --net mlp"):
        build_net("unet", (5,), {"model_channels": 8})


def test_flax_twin_of_a_size_the_presets_do_not_have():
    """unet_for on both backends (3x12x12, 2 levels, attention at 6): the same parameters, and for the same weights
    the same outputs; flax_twin of the PyTorch net builds the same net."""
    pytest.importorskip("flax")
    import jax.numpy as jnp

    from ppl_diffusion.numpyro import nets as jnets
    from ppl_diffusion.numpyro.convert import flax_twin, load_torch_state

    torch.manual_seed(0)
    net = unet_for((3, 12, 12), model_channels=16, dropout=0.0, learn_sigma=True).eval()
    for p in net.parameters():  # away from the zero init, so that every layer counts
        torch.nn.init.normal_(p, std=0.05)
    twin = jnets.unet_for((3, 12, 12), model_channels=16, dropout=0.0, learn_sigma=True)
    load_torch_state(twin, net.state_dict())
    twin.eval()
    x, t = torch.randn(4, 3, 12, 12), torch.tensor([1, 5, 9, 2])
    with torch.no_grad():
        want = net(x, t).numpy()
    for flax_net in (twin, flax_twin(net)):
        got = np.asarray(flax_net(jnp.asarray(x.numpy()), jnp.asarray(t.numpy())))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    assert twin.num_parameters == net.num_parameters


# ---------------------------------------------------------------------------------------- MLP and honest settings
def test_mlp_width_and_depth_are_settings():
    default = build_diffusion(TrainConfig(data="eight_gaussians", net="mlp", T=10, steps=1), meta(2)).denoiser
    wide = build_diffusion(TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 512, "depth": 2},
                                       T=10, steps=1), meta(2)).denoiser
    assert (default.inp.out_features, len(default.blocks)) == (128, 3)
    assert (wide.inp.out_features, len(wide.blocks)) == (512, 2)
    # inp, time MLP (2 layers), out and per block LayerNorm + 3 Linear: the count at width w, depth d
    w, d, D, e = 512, 2, 2, 64
    assert wide.num_parameters == (D * w + w) + (e * w + w) + (w * w + w) + d * (2 * w + 3 * (w * w + w)) \
        + 2 * w + (w * D + D)


def test_mlp_narrower_than_the_data_warns():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_net("mlp", (1, 16, 16))
        build_net("mlp", (1, 16, 16), {"width": 256})
        build_net("mlp", (2,))
    narrow = [w for w in caught if issubclass(w.category, NetWarning)]
    assert len(narrow) == 1 and "width 128 is below the data's D = 256" in str(narrow[0].message)


@pytest.mark.parametrize("net, config, expected", [
    ("mlp", {"widht": 512}, r"net 'mlp' has no setting widht; its settings are width \(--width\), depth"),
    ("mlp", {"channel_mult": [1, 2]}, r"no setting channel_mult \(--channel-mult\)"),
    ("digits", {"width": 512}, r"net 'digits' has no setting width \(--width\); its settings are in_channels"),
    ("mlp", {"learn_sigma": True}, r"drop it: the variance decides it"),
    ("mlp", {"width": (1, 2)}, r"MLPDenoiser\(width=\[1, 2\]\)"),
], ids=["misspelled", "u-net-key-for-mlp", "mlp-key-for-preset", "learn-sigma", "bad-value"])
def test_settings_a_net_does_not_take_are_refused(net, config, expected):
    data = "eight_gaussians" if net == "mlp" else "digits"
    shape = (2,) if net == "mlp" else (1, 8, 8)
    with pytest.raises(ValueError, match=expected):
        build_diffusion(TrainConfig(data=data, net=net, net_config=config, T=10, steps=1).validate(), meta(*shape))


def test_auto_checks_its_settings_against_the_net_it_picks():
    config = TrainConfig(data="eight_gaussians", net_config={"channel_mult": [1]}, T=10, steps=1).validate()
    with pytest.raises(ValueError, match=r"net 'auto' builds the MLP for examples of shape \[2\]"):
        build_diffusion(config, meta(2))


def test_unknown_net_names_and_import_paths_are_one_line():
    with pytest.raises(ValueError, match=r"unknown net 'nosuch'; choose one of auto, unet, mlp.*package.module:build"):
        TrainConfig(net="nosuch", steps=1).validate()
    with pytest.raises(ValueError, match=r"cannot import module 'nosuch_module' .*PYTHONPATH"):
        TrainConfig(net="nosuch_module:build", steps=1).validate()
    with pytest.raises(ValueError, match=r"module 'math' has no attribute 'nosuch'"):
        TrainConfig(net="math:nosuch", steps=1).validate()
    with pytest.raises(ValueError, match=r"trains on --backend pyro only"):
        TrainConfig(net="math:sqrt", backend="numpyro", steps=1).validate()


def test_net_config_round_trips_through_config_json(tmp_path):
    """Tuples become lists as config.json holds them, so the same settings resume (no spurious difference)."""
    config = TrainConfig(data="eight_gaussians", net="mlp", net_config={"width": 16, "depth": 1}, T=5, steps=2,
                         batch_size=8, warmup_steps=0, log_every=1)
    train(config, tmp_path / "r", progress=False)
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["net"] == "mlp" and saved["net_config"] == {"width": 16, "depth": 1}
    again = TrainConfig(**{**config.to_dict(), "steps": 3})
    assert train(again, tmp_path / "r", resume=True, progress=False).step == 3
    assert TrainConfig(net_config={"channel_mult": (1, 2)}).net_config == {"channel_mult": [1, 2]}


# ---------------------------------------------------------------------------------------- old run folders
def test_old_config_json_files_still_load(tmp_path):
    """config.json as earlier versions wrote it: net "digits" (the old default), "unet" with the UNet's keyword
    arguments (what imports write; UNet's own defaults for the rest), and "diffusers" (the old name of the diffusers
    adapter, now an import path) build the nets they built."""
    old = TrainConfig(data="digits", net="digits", T=10, steps=1).to_dict()
    torch.manual_seed(1)
    want = UNet(**TODAYS_PRESETS["digits"])
    torch.manual_seed(1)
    got = build_diffusion(TrainConfig.from_dict(old), meta(1, 8, 8)).denoiser
    assert all(torch.equal(a, b) for a, b in zip(want.state_dict().values(), got.state_dict().values()))

    kwargs = dict(in_channels=1, model_channels=16, image_size=8, channel_mult=[1, 1], num_res_blocks=1,
                  attention_resolutions=[4], num_heads=1)  # dropout, scale-shift and groups at UNet's defaults
    net = build_diffusion(TrainConfig(data="digits", net="unet", net_config=kwargs, T=10, steps=1),
                          meta(1, 8, 8)).denoiser
    ref = UNet(**kwargs)
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert net.input_blocks[1][0].out_layers[2].p == 0.0 and not net.input_blocks[1][0].scale_shift

    pytest.importorskip("diffusers")
    unet = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=[32, 32], layers_per_block=1,
                down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
                norm_num_groups=8)
    cfg = TrainConfig(data="digits", net="diffusers", net_config={"unet": unet, "prediction_type": "epsilon"},
                      schedule="custom", betas=[0.1] * 4, T=4, steps=None)
    den = build_diffusion(cfg, meta(1, 8, 8)).denoiser
    assert type(den).__name__ == "DiffusersDenoiser" and den.unet.config.sample_size == 8


def test_a_preset_run_resumes_under_the_default_net():
    """Before net "auto" became the default, the default was "digits": a digits run resumes without --net (auto
    builds the digits preset on the digits), but not as another net."""
    from ppl_diffusion.train.run_dir import _config_diff

    saved = TrainConfig(data="digits", net="digits", T=10, steps=1).to_dict()
    assert _config_diff(saved, TrainConfig(data="digits", T=10, steps=2)) == []
    assert _config_diff(saved, TrainConfig(data="digits", net="mlp", T=10, steps=2)) == [
        "net: saved 'digits', now 'mlp'"]


# ---------------------------------------------------------------------------------------- the CLI, fresh processes
BUILDER_MODULE = '''
import torch
from torch import nn


class Tiny(nn.Module):
    """eps(x_t, t) = MLP([x_t, t / 10])."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x_t, t):
        h = torch.cat([x_t.reshape(len(x_t), -1), t[:, None].to(x_t.dtype) / 10], dim=1)
        return self.net(h).reshape(x_t.shape)


def tiny(event_shape, *, hidden=32):
    dim = 1
    for n in event_shape:
        dim *= n
    return Tiny(dim, hidden)
'''


def cli(*argv, path=(), check=True):
    """``ppl-diffusion argv`` in a fresh process, with ``path`` on its PYTHONPATH."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, path), str(ROOT)]))
    done = subprocess.run([sys.executable, "-m", "ppl_diffusion", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_a_module_builder_net_trains_and_loads_in_fresh_processes(tmp_path, monkeypatch, capsys):
    """Trained in one process and evaluated in another, each finding mynets:tiny on its PYTHONPATH through the
    import path recorded in config.json; without the module on the path, one line naming it and the fix."""
    from ppl_diffusion.cli import main

    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "mynets.py").write_text(BUILDER_MODULE)
    run_dir = tmp_path / "run"
    cli("train", "--data", "eight_gaussians", "--net", "mynets:tiny", "--net-config", '{"hidden": 24}', "--T", "10",
        "--steps", "3", "--batch-size", "16", "--warmup-steps", "0", "--no-progress", "--run-dir", run_dir,
        path=[tmp_path / "nets"])
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["net"] == "mynets:tiny" and saved["net_config"] == {"hidden": 24}
    out = cli("evaluate", run_dir, "--no-progress", "--max-examples", "8", path=[tmp_path / "nets"]).stdout
    assert "bits/dim" in out
    assert main(["sample", str(run_dir), "-n", "4"]) == 2  # this process has no mynets on its path
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot import module 'mynets'" in err[0] and "PYTHONPATH" in err[0], err
    monkeypatch.syspath_prepend(str(tmp_path / "nets"))
    assert main(["sample", str(run_dir), "-n", "4"]) == 0 and (run_dir / "samples-ema.npz").is_file()


@pytest.mark.parametrize("extra, expected", [
    (["--net-config", '{"hiden": 3}'], "net 'mynets:tiny' has no setting hiden; its settings are hidden"),
    (["--channel-mult", "1,2"], "no setting channel_mult (--channel-mult)"),
    (["--width", "8", "--net-config", '{"width": 8}'], "--width and --net-config both set width"),
], ids=["misspelled", "flag-of-another-net", "twice"])
def test_net_settings_are_refused_before_the_run_starts(extra, expected, tmp_path, monkeypatch, capsys):
    from ppl_diffusion.cli import main

    (tmp_path / "mynets.py").write_text(BUILDER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["train", "--data", "eight_gaussians", "--net", "mynets:tiny", *extra, "--steps", "1", "--run-dir",
            str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_run_of_custom_settings_rebuilds_them_in_a_fresh_process(tmp_path):
    from ppl_diffusion.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--data", "eight_gaussians", "--net", "mlp", "--width", "48", "--depth", "2", "--dropout",
                 "0.1", "--T", "10", "--steps", "2", "--batch-size", "8", "--no-progress",
                 "--run-dir", str(run_dir)]) == 0
    probe = ("import sys; from ppl_diffusion.sampling import load_run; n = load_run(sys.argv[1], device='cpu')"
             ".diffusion.denoiser; print(n.inp.out_features, len(n.blocks), n.blocks[0].drop.p)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", probe, str(run_dir)], capture_output=True, text=True, env=env)
    assert done.stdout.split() == ["48", "2", "0.1"], done.stderr


def test_a_registered_net_says_so_when_a_fresh_process_loads_it(tmp_path):
    from ppl_diffusion.nets import register_net

    register_net("tiny-registered", lambda event_shape, width=8: MLPDenoiser(2, width=width))
    try:
        train(TrainConfig(data="eight_gaussians", net="tiny-registered", T=5, steps=1, batch_size=8),
              tmp_path / "run", progress=False)
        assert isinstance(load_trained(tmp_path / "run").denoiser, MLPDenoiser)  # in this process it loads
    finally:
        NET_BUILDERS.pop("tiny-registered")
    err = cli("evaluate", tmp_path / "run", "--no-progress", check=False).stderr.strip().splitlines()
    assert len(err) == 1 and "net 'tiny-registered' is not known in this process" in err[0], err
    assert "register_net" in err[0] and "package.module:builder" in err[0] and "different configuration" not in err[0]


def _image_folder(root: Path, n: int = 40, size: int = 16) -> Path:
    """``n`` grayscale PNGs of ``size`` pixels: a white square of side 4..8 at a random place on black."""
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.zeros((size, size), np.uint8)
        side = int(rng.integers(4, 9))
        r, c = rng.integers(0, size - side + 1, 2)
        a[r:r + side, c:c + side] = 255
        Image.fromarray(a).save(root / f"{i:03d}.png")
    return root


def test_an_image_folder_of_16_pixels_gets_a_u_net_by_default(tmp_path, capsys):
    """No --net: a 16x16 folder trains the U-Net of the size rule (here narrowed by --channels), no MLP warning;
    with --net mlp the CLI warns in one line that the width is below D."""
    from ppl_diffusion.cli import _one_line_warning, main

    images = _image_folder(tmp_path / "images", n=8)
    run_dir = tmp_path / "run"
    common = ["--data", "image_folder", "--data-root", str(images), "--T", "10", "--steps", "2", "--batch-size", "4",
              "--no-progress"]
    assert main(["train", *common, "--channels", "4", "--res-blocks", "1", "--run-dir", str(run_dir)]) == 0
    assert "warning" not in capsys.readouterr().err
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["net"] == "auto" and saved["net_config"] == {"model_channels": 4, "num_res_blocks": 1}
    net = load_trained(run_dir).denoiser
    assert isinstance(net, UNet) and (net.image_size, net.channel_mult, net.attention_resolutions) == (16, (1, 2, 2),
                                                                                                       (8,))
    with pytest.warns(NetWarning) as caught:
        assert main(["train", *common, "--net", "mlp", "--run-dir", str(tmp_path / "mlp")]) == 0
    w = caught[0]
    assert _one_line_warning(w.message, w.category, w.filename, w.lineno) == (
        "ppl-diffusion: warning: the MLP's width 128 is below the data's D = 256 dimensions (1x16x16): every hidden "
        "layer is narrower than x_t; pass --width 512 (width >= D), or use the U-Net for square images (--net auto)\n")


@pytest.mark.slow
def test_an_image_folder_of_16_pixels_trains_below_8_bits_per_dim(tmp_path):
    """The issue's case: 16x16 PNGs, no --net. A short run (60 steps of a narrow U-Net, T = 100) scores well below
    8 bits/dim, a uniform code over 256 levels (measured: 3.99 raw, 4.03 EMA; an MLP of width 128 gave 9-11)."""
    images = _image_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    cli("train", "--data", "image_folder", "--data-root", images, "--channels", "8", "--res-blocks", "1", "--T", "100",
        "--steps", "60", "--batch-size", "16", "--lr", "2e-3", "--warmup-steps", "5", "--ema-decay", "0.9",
        "--no-progress", "--run-dir", run_dir)
    cli("evaluate", run_dir, "--no-progress")
    result = json.loads((run_dir / "eval.json").read_text())
    assert result["bpd"] < 8 and result["bpd_ema"] < 8, (result["bpd"], result["bpd_ema"])


def test_describe_net_names_the_settings_the_net_is_built_with():
    """net_settings: the size rule's or the preset's U-Net settings, the MLP's defaults under the given ones, a
    builder's settings as given; each U-Net built from them equals the one build_net makes."""
    from ppl_diffusion.nets.build import describe_net, net_settings

    for name, shape, config in [("auto", (1, 16, 16), {"model_channels": 16}), ("auto", (3, 12, 12), None),
                                ("digits", (1, 8, 8), {"dropout": 0.0}), ("mnist", (1, 28, 28), None)]:
        settings = net_settings(name, shape, config)
        rebuilt = UNet(in_channels=shape[0], image_size=shape[1], **settings)
        built = build_net(name, shape, config)
        assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
            (k, v.shape) for k, v in built.state_dict().items()], name
        assert (rebuilt.channel_mult, rebuilt.attention_resolutions) == (built.channel_mult,
                                                                         built.attention_resolutions)
    assert describe_net("auto", (1, 12, 12), {"model_channels": 8}, parameters=1234) == (
        "net auto: U-Net (model_channels=8, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(6,), "
        "dropout=0.1, use_scale_shift_norm=True), 1,234 parameters")
    assert describe_net("mlp", (2,), {"width": 64}) == (
        "net mlp: MLP (width=64, depth=3, emb_dim=64, dropout=0.0, zero_init=True)")
    assert describe_net("mynets:tiny", (2,), {"width": 8}) == "net mynets:tiny: (width=8)"
    assert describe_net("mynets:tiny", (2,), None, parameters=12) == "net mynets:tiny, 12 parameters"
    assert describe_net("unet", (1, 8, 8), {"model_channels": 8}) == "net unet: U-Net (model_channels=8)"


def test_unet_class_defaults_that_do_not_fit_name_the_flags_and_auto():
    """--net unet on 8x8 digits keeps the class's attention at 16 pixels: the error says which defaults were taken."""
    with pytest.raises(ValueError, match=r"\[16\] is not the size of any level.*defaults for the settings not given "
                                         r"\(--channel-mult, --attention not given\).*--net auto"):
        build_net("unet", (1, 8, 8), dict(model_channels=8))
    assert build_net("unet", (1, 8, 8), dict(model_channels=8, attention_resolutions=(4,))) is not None


@pytest.mark.parametrize("dropout", [1.0, -0.1, "0.1"])
def test_dropout_outside_0_1_names_the_flag(dropout):
    with pytest.raises(ValueError, match=r"^dropout \(--dropout\) = .*must lie in \[0, 1\); pass e.g. 0.1"):
        build_net("auto", (1, 8, 8), dict(dropout=dropout))
