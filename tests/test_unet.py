"""The U-Net denoiser: shapes, zero initialisation, time conditioning, gradients, presets, bad input."""

import json
import math

import numpy as np
import pytest
import torch

from ppl_diffusion.nets import UNET_PRESETS, UNet, unet_preset


def small(**kw):
    """A tiny U-Net on 8×8×1 images (two levels, attention at 4×4), fast enough for every test."""
    kw = {**dict(in_channels=1, image_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(4,)), **kw}
    return UNet(**kw)


def steps(n, T=1000):
    """t in 1..T, as the diffusion passes it."""
    return torch.randint(1, T + 1, (n,), dtype=torch.long)


@pytest.fixture(scope="module")
def cifar10():
    return unet_preset("cifar10")


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["eps", "eps+v"])
@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_preset_output_shape(name, learn_sigma):
    net = unet_preset(name, learn_sigma=learn_sigma)
    c, s = net.in_channels, net.image_size
    x = torch.randn(2, c, s, s)
    out = net(x, steps(2))
    assert out.shape == (2, (2 if learn_sigma else 1) * c, s, s)
    assert net.out_channels == out.shape[1] and net.eps_channels == c


def test_cifar10_parameter_count_matches_ddpm(cifar10):
    count = cifar10.num_parameters
    print(f"cifar10 U-Net: {count:,} parameters (DDPM reports 35.7M)")
    assert abs(count / 35.7e6 - 1) < 0.01, count


def test_digits_parameter_count_matches_improved_diffusion_peer():
    count = unet_preset("digits", learn_sigma=True).num_parameters
    print(f"digits U-Net with learned sigma: {count:,} parameters (improved-diffusion peer: 4.3M)")
    assert abs(count / 4.3e6 - 1) < 0.01, count


def test_cifar10_forward_batch_one(cifar10):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert cifar10(x, steps(1)).shape == x.shape


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_zero_initialised_output_is_exactly_zero(name):
    net = unet_preset(name)
    s = net.image_size
    out = net(torch.randn(2, 1, s, s), steps(2))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("scale_shift", [False, True], ids=["add", "scale-shift"])
def test_time_conditioning_changes_the_output(scale_shift):
    # With zero_init every residual branch starts at 0, so t has no effect until trained: use default init.
    net = small(zero_init=False, use_scale_shift_norm=scale_shift).eval()
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.tensor([1, 1], dtype=torch.long))
    b = net(x, torch.tensor([500, 500], dtype=torch.long))
    c = net(x, torch.tensor([1, 1], dtype=torch.long))
    assert torch.equal(a, c)
    assert (a - b).abs().max() > 1e-4


def test_output_depends_on_each_example_own_step():
    net = small(zero_init=False).eval()
    x = torch.randn(1, 1, 8, 8).expand(2, 1, 8, 8)
    out = net(x, torch.tensor([3, 700], dtype=torch.long))
    assert (out[0] - out[1]).abs().max() > 1e-4
    assert torch.allclose(out[0], net(x[:1], torch.tensor([3]))[0], atol=1e-5)


def test_accepts_first_and_last_step():
    net = small()
    out = net(torch.randn(2, 1, 8, 8), torch.tensor([1, 1000], dtype=torch.long))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("scale_shift", [False, True], ids=["add", "scale-shift"])
def test_gradients_reach_every_parameter(scale_shift):
    net = small(zero_init=False, use_scale_shift_norm=scale_shift, dropout=0.1, learn_sigma=True).train()
    net(torch.randn(4, 1, 8, 8), steps(4)).square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"no gradient for {dead}"


def test_zero_init_still_trains_the_output_layer():
    net = small()
    net(torch.randn(4, 1, 8, 8), steps(4)).sub(1.0).square().mean().backward()
    assert net.out[-1].weight.grad.abs().sum() > 0 and net.out[-1].bias.grad.abs().sum() > 0


def test_dropout_is_off_in_eval_mode():
    net = small(zero_init=False, dropout=0.5)
    x, t = torch.randn(2, 1, 8, 8), steps(2)
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


def test_group_norm_keeps_two_channels_a_group():
    # One channel per group would subtract the time embedding that ResBlock adds before its second norm.
    groups = {m.num_channels: m.num_groups for m in small().modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {16: 8, 32: 16, 48: 24, 64: 32}
    groups = {m.num_channels: m.num_groups for m in unet_preset("cifar10").modules()
              if isinstance(m, torch.nn.GroupNorm)}
    assert set(groups.values()) == {32}  # DDPM's GroupNorm(32) everywhere


def test_small_channel_counts_and_several_heads():
    net = small(model_channels=12, num_groups=32, num_heads=3)  # GroupNorm falls back to 6 groups of 2
    assert net(torch.randn(2, 1, 8, 8), steps(2)).shape == (2, 1, 8, 8)
    net = small(num_head_channels=8, out_channels=3)
    assert net(torch.randn(2, 1, 8, 8), steps(2)).shape == (2, 3, 8, 8)


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 8, 8), (1, 8, 8), (2, 1, 8, 4)],
                         ids=["size", "channels", "no-batch", "not-square"])
def test_wrong_input_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"expects x_t of shape \[N x 1 x 8 x 8\]"):
        small()(torch.randn(shape), steps(shape[0]))


@pytest.mark.parametrize("t", [torch.tensor(5), torch.tensor([1, 2, 3]), torch.ones(2, 1, dtype=torch.long)],
                         ids=["scalar", "wrong-batch", "2-d"])
def test_wrong_timestep_shape_is_refused(t):
    with pytest.raises(ValueError, match="expects t of shape"):
        small()(torch.randn(2, 1, 8, 8), t)


def test_image_size_not_divisible_by_the_levels_is_refused():
    with pytest.raises(ValueError, match=r"image_size=28.*4 levels.*2\^3 = 8"):
        UNet(in_channels=1, image_size=28, model_channels=16, channel_mult=(1, 2, 2, 2))


@pytest.mark.parametrize("kw, match", [
    (dict(attention_resolutions=(16,)), r"\[16\] is not the size of any level; the levels are \[8, 4\]"),
    (dict(model_channels=16, num_heads=3), "does not split evenly"),
    (dict(dropout=1.0), "dropout"),
    (dict(channel_mult=()), "channel_mult"),
    (dict(model_channels=0), "model_channels"),
], ids=["attention", "heads", "dropout", "no-levels", "channels"])
def test_bad_configuration_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        small(**kw)


def test_presets_and_overrides():
    assert set(UNET_PRESETS) == {"cifar10", "digits", "mnist"}
    net = unet_preset("digits", learn_sigma=True, dropout=0.0)
    assert net.out_channels == 2 and net.image_size == 8


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown U-Net preset 'imagenet'; known presets: cifar10, digits, mnist"):
        unet_preset("imagenet")


# ---------------------------------------------------------------------------------------- Fourier features of x_t
def test_fourier_features_are_vdms_sin_and_cos_in_its_channel_order():
    from ppl_diffusion.nets.embedding import fourier_features

    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    out = fourier_features(x, (2, 3, 6))
    assert out.shape == (3, 2 * 2 * 3, 4, 4)
    # VDM's Base2FourierFeatures: channel c and exponent n at c·F + i, the sines first, then the cosines.
    for c in range(2):
        for i, n in enumerate((2, 3, 6)):
            angle = 2.0 ** n * 2 * math.pi * x[:, c]
            assert torch.allclose(out[:, c * 3 + i], torch.sin(angle), rtol=0, atol=1e-12)
            assert torch.allclose(out[:, 6 + c * 3 + i], torch.cos(angle), rtol=0, atol=1e-12)


def test_without_fourier_features_a_preset_is_the_same_net(name="digits"):
    """Off by default: the preset built with fourier_features=() or None has the state dict (names, shapes, values
    from the same seed) and the outputs of the preset as it was, so old checkpoints load; on, only the first conv
    reads more channels."""
    torch.manual_seed(0)
    old = unet_preset(name, zero_init=False).eval()
    for off in ((), None):
        torch.manual_seed(0)
        new = unet_preset(name, zero_init=False, fourier_features=off).eval()
        assert new.fourier_features == ()
        a, b = old.state_dict(), new.state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    c, s = old.in_channels, old.image_size
    x, t = torch.randn(2, c, s, s), steps(2)
    with torch.no_grad():
        assert torch.equal(old(x, t), new(x, t))
    on = unet_preset(name, fourier_features=[6, 7]).state_dict()
    changed = [k for k in a if a[k].shape != on[k].shape]
    assert list(on) == list(a) and changed == ["input_blocks.0.0.weight"]
    assert on["input_blocks.0.0.weight"].shape[1] == 5 * c


def test_fourier_features_feed_the_first_conv_and_pass_gradients_to_x_t():
    net = small(zero_init=False, fourier_features=(2, 3)).eval()
    conv = net.input_blocks[0][0]
    assert conv.in_channels == 5
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    t = steps(2)
    out = net(x, t)
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():  # the four feature channels (1..4) reach the output
        conv.weight[:, 1:] = 0.0
        assert (net(x, t) - out).abs().max() > 1e-4


@pytest.mark.parametrize("bad, match", [
    ([17], r"integer in 0\.\.16.*got 17"), ([-1], "got -1"), ([2.0], "got 2.0"), ([2, 2], "appears twice"),
    ("auto", "resolved from the data's grey levels"), (3, "pass a list of integer exponents"),
], ids=["too-high", "negative", "float", "twice", "auto", "scalar"])
def test_bad_fourier_exponents_are_refused_in_one_line(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        small(fourier_features=bad)
    assert "\n" not in str(e.value)


def test_the_frequency_rule_gives_vdms_exponents_for_8_bit_data_and_2_3_for_the_digits():
    from ppl_diffusion.data import load_dataset
    from ppl_diffusion.nets.embedding import fourier_exponents

    assert fourier_exponents(2 / 255) == (6, 7)  # VDM's for CIFAR-10
    spacing = load_dataset("digits").level_spacing
    assert spacing == pytest.approx(0.125) and fourier_exponents(spacing) == (2, 3)
    for spacing in (2 / 255, 0.125, 2 / 15, 0.3):  # the top frequency turns by about one period per level step
        n = fourier_exponents(spacing)[1]
        assert 2 ** -0.5 <= 2 ** n * spacing <= 2 ** 0.5
    for bad in (0.0, -1.0, float("nan"), 1e-9):
        with pytest.raises(ValueError, match="spacing"):
            fourier_exponents(bad)


def _levels(values) -> "Dataset":
    from ppl_diffusion.data import Dataset, to_model_space

    pixels = torch.tensor(values, dtype=torch.uint8).repeat(4, 1).reshape(-1, 1, 2, 2)
    x = to_model_space(pixels)
    return Dataset("mine", x, x[:1], (1, 2, 2), 256, "discretized")


def test_auto_fourier_features_say_why_and_warn_on_uneven_levels():
    """auto reads the mean spacing of the levels (the rule above); for uneven levels it warns and names the exponents
    of the closest pair, which resolve them (the same rule at the closest gap)."""
    from ppl_diffusion.nets.embedding import fourier_exponents
    from ppl_diffusion.train.config import fourier_choice

    exponents, reason, warning = fourier_choice(_levels([0, 85, 170, 255]))  # even: 2/3 apart in model space
    assert exponents == list(fourier_exponents(2 / 3)) == [0, 1] and warning is None
    assert "4 grey levels" in reason and "Δ = 0.6667" in reason
    exponents, reason, warning = fourier_choice(_levels([0, 10, 128, 255]))  # closest two 10/127.5 apart
    assert exponents == [0, 1] and "unevenly spaced" in warning
    assert f"--fourier-features {','.join(map(str, fourier_exponents(10 / 127.5)))}" in warning
    assert fourier_exponents(10 / 127.5) == (3, 4)


def test_train_prints_the_auto_fourier_choice(tmp_path, capsys):
    from ppl_diffusion.cli import _one_line_warning, main

    write = __import__("PIL.Image", fromlist=["Image"]).fromarray
    (tmp_path / "png").mkdir()
    for i in range(12):  # 4 uneven grey levels
        write(np.tile(np.array([[0, 10], [128, 255]], np.uint8), (2, 2))[:, ::(-1) ** i]).save(tmp_path / "png" / f"{i}.png")
    from ppl_diffusion.nets import NetWarning

    with pytest.warns(NetWarning, match="unevenly spaced") as record:
        assert main(["train", "--data", "image_folder", "--data-root", str(tmp_path / "png"), "--net", "unet",
                     "--channels", "8", "--channel-mult", "1", "--res-blocks", "1", "--attention", "none",
                     "--fourier-features", "auto", "--T", "4", "--steps", "1", "--batch-size", "2", "--no-progress",
                     "--warmup-steps", "0", "--ema-decay", "0", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "fourier_features auto = 0,1: 4 grey levels in the training data" in out, out
    w = next(w for w in record if "unevenly" in str(w.message))  # shown by the CLI as one line, without source
    line = _one_line_warning(w.message, w.category, w.filename, w.lineno)
    assert line.startswith("ppl-diffusion: warning: --fourier-features auto: the 4 grey levels") and line.count("\n") == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["net_config"]["fourier_features"] == [0, 1]


FEATURES_SCRIPT = r"""
import hashlib, torch
from ppl_diffusion.nets.embedding import fourier_features
from ppl_diffusion.nets.unet import UNet
torch.manual_seed(0)
x = torch.rand(128, 1, 8, 8) * 2 - 1  # 8,192 elements: torch splits sin and cos over the threads (VML per chunk)
h = hashlib.sha256(fourier_features(x, (2, 3, 6, 7)).numpy().tobytes())
net = UNet(in_channels=1, model_channels=8, image_size=8, channel_mult=(1, 2), num_res_blocks=1,
           attention_resolutions=(4,), num_groups=4, zero_init=False, fourier_features=(2, 3))
x.requires_grad_(True)
net(x, torch.arange(1, 129)).square().sum().backward()
for t in (x.grad, *(p.grad for p in net.parameters())):
    h.update(t.numpy().tobytes())
print(h.hexdigest())
"""


def test_fourier_features_and_their_gradients_have_the_same_bits_in_fresh_processes():
    """sin and cos of a large CPU tensor run in MKL's vector-math library on several threads, whose kernels
    ppl_diffusion.determinism chooses at import: three new processes on 2 threads give the features of 8,192 values
    and a U-Net's gradients through them with the same bits."""
    import sys

    from .test_determinism import run_concurrently

    outputs = run_concurrently([([sys.executable, "-c", FEATURES_SCRIPT], 2)] * 3)
    assert len({out.strip() for out in outputs}) == 1 and len(outputs[0].strip()) == 64, outputs
