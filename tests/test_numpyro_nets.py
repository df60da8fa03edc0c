"""The Flax NNX U-Net against the PyTorch one: same outputs, gradients, parameter counts and errors; weights
converted both ways (state dicts, exactly); dropout and zero initialisation."""

import re

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
pytest.importorskip("flax")

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from ppl_diffusion.nets import MLPDenoiser as TorchMLP  # noqa: E402
from ppl_diffusion.nets.unet import UNET_PRESETS  # noqa: E402
from ppl_diffusion.nets.unet import UNet as TorchUNet  # noqa: E402
from ppl_diffusion.nets.unet import unet_preset as torch_preset  # noqa: E402
from ppl_diffusion.numpyro.convert import (  # noqa: E402
    flax_twin, from_torch, load_torch_state, params_from_torch_state, to_torch, torch_state_from_params)
from ppl_diffusion.numpyro.nets import MLPDenoiser, UNet, unet_preset  # noqa: E402

SMALL = dict(in_channels=1, image_size=8, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attention_resolutions=(4,))
# One compiled forward per net structure (nnx.jit caches on the graph), shared by the tests.
apply = nnx.jit(lambda net, x, t: net(x, t))

# Float32 agreement. The two nets sum the same products in different orders (im2col vs XLA convolutions,
# two-pass GroupNorm statistics in both), so each output carries rounding errors of a few ulps per layer,
# compounded over the ~30 layers on a path through the digits net: measured 15–30 ulps of the output scale
# (float32 eps = 1.2e-7 → 2–4e-6 at scale 1). TOL = 2e-5 relative to the output scale is ~170 ulps; a wrong
# layout (a transposed kernel, "SAME" stride-2 padding, a mis-split attention head) errs by O(scale).
TOL = 2e-5


def _pair(name, **overrides):
    torch.manual_seed(0)
    tnet = torch_preset(name, zero_init=False, **overrides).eval()
    return tnet, flax_twin(tnet)


def _inputs(net, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, net.in_channels, net.image_size, net.image_size, generator=g)
    return x, torch.randint(1, 1001, (n,), generator=g)


def _j(a):
    return jnp.asarray(a.numpy())


def _params(net):
    return nnx.to_pure_dict(nnx.state(net, nnx.Param))


def _check_twin(name, overrides, tnet, jnet, x, want, got):
    """Same attributes and parameter count; outputs equal to float32 precision; exact round trip of weights."""
    assert jnet.num_parameters == tnet.num_parameters
    assert (jnet.in_channels, jnet.model_channels, jnet.image_size, jnet.eps_channels, jnet.out_channels,
            jnet.learn_sigma) == (tnet.in_channels, tnet.model_channels, tnet.image_size, tnet.eps_channels,
                                  tnet.out_channels, tnet.learn_sigma)
    assert got.shape == want.shape == (x.shape[0], tnet.out_channels, tnet.image_size, tnet.image_size)
    scale, err = np.abs(want).max(), np.abs(got - want).max()
    print(f"{name} {overrides}: max |flax - torch| = {err:.2e} at output scale {scale:.2f}")
    assert scale > 0.1 and err <= TOL * scale
    # Round trip torch → flax → torch: the same keys in the same order, the same bits.
    back = torch_state_from_params(jnet, _params(jnet))
    assert list(back) == list(tnet.state_dict())
    for k, v in tnet.state_dict().items():
        assert back[k].dtype == torch.float32 and torch.equal(back[k], v), k
    fresh = TorchUNet(**{**UNET_PRESETS[name], **overrides})
    to_torch(jnet, fresh)  # strict load_state_dict
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tnet.state_dict().values()))


# The digits preset itself is checked with its input gradient below (one compilation for both).
CASES = [("digits", dict(learn_sigma=True, num_head_channels=32)),
         ("digits", dict(use_scale_shift_norm=False, num_heads=4)), ("mnist", {}), ("cifar10", {})]


@pytest.mark.parametrize("name, overrides", CASES, ids=[f"{n}-{'-'.join(f'{k}={v}' for k, v in o.items()) or 'preset'}"
                                                        for n, o in CASES])
def test_unet_twin_computes_the_same_and_converts_back_exactly(name, overrides):
    tnet, jnet = _pair(name, **overrides)
    x, t = _inputs(tnet)
    with torch.no_grad():
        want = tnet(x, t).numpy()
    _check_twin(name, overrides, tnet, jnet, x, want, np.asarray(apply(jnet, _j(x), _j(t))))


def _outputs_and_input_gradients(tnet, jnet, x, t, w):
    """Both nets' outputs at (x, t) and the gradients of Σ w·output in x: (torch out, torch grad, flax out, flax
    grad), NumPy arrays."""
    x = x.detach().requires_grad_(True)
    out = tnet(x, t)
    (out * w).sum().backward()
    graphdef, state = nnx.split(jnet)

    def loss(xx):
        y = nnx.merge(graphdef, state)(xx, _j(t))
        return (y * _j(w)).sum(), y

    (_, got), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(_j(x.detach()))
    return out.detach().numpy(), x.grad.numpy(), np.asarray(got), np.asarray(g)


def test_digits_preset_output_and_input_gradient_agree():
    tnet, jnet = _pair("digits")
    x, t = _inputs(tnet, n=4, seed=1)
    w = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    out, want, got, g = _outputs_and_input_gradients(tnet, jnet, x, t, w)
    _check_twin("digits", {}, tnet, jnet, x, out, got)
    err = np.abs(np.asarray(g) - want).max()
    print(f"digits d loss / d x_t: max |flax - torch| = {err:.2e} at scale {np.abs(want).max():.2f}")
    assert err <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_zero_initialised_output_is_exactly_zero(name):
    net = unet_preset(name)
    net.eval()  # the structure of the twins above: their compiled forward is reused
    x, t = _inputs(net)
    assert np.all(np.asarray(apply(net, _j(x), _j(t))) == 0)


def test_dropout_is_on_in_train_mode_and_off_in_eval():
    # The digits preset (dropout 0.1); training after construction, as torch. Eval shares the compiled forward.
    net = unet_preset("digits", zero_init=False, rngs=nnx.Rngs(3))
    x, t = _inputs(net)
    a, b = apply(net, _j(x), _j(t)), apply(net, _j(x), _j(t))
    assert np.abs(np.asarray(a - b)).max() > 1e-3
    net.eval()
    a, b = apply(net, _j(x), _j(t)), apply(net, _j(x), _j(t))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    net.train()
    assert not np.array_equal(np.asarray(apply(net, _j(x), _j(t))), np.asarray(apply(net, _j(x), _j(t))))


def _torch_error(fn):
    with pytest.raises(ValueError) as e:
        fn()
    return str(e.value)


BAD = [dict(model_channels=0), dict(in_channels=1.5), dict(num_heads=0), dict(channel_mult=()),
       dict(channel_mult=(1, 0)), dict(dropout=1.0), dict(image_size=6, channel_mult=(1, 2, 2)),
       dict(attention_resolutions=(3,)), dict(num_heads=3), dict(num_head_channels=24)]


@pytest.mark.parametrize("bad", BAD, ids=[str(b) for b in BAD])
def test_bad_constructor_arguments_raise_the_torch_errors(bad):
    message = _torch_error(lambda: TorchUNet(**{**SMALL, **bad}))
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        UNet(**{**SMALL, **bad})


def test_bad_inputs_and_presets_raise_the_torch_errors():
    tnet, jnet = TorchUNet(**SMALL), UNet(**SMALL)
    for x, t in [(torch.zeros(2, 1, 8), torch.ones(2, dtype=torch.long)),
                 (torch.zeros(2, 3, 8, 8), torch.ones(2, dtype=torch.long)),
                 (torch.zeros(2, 1, 16, 16), torch.ones(2, dtype=torch.long)),
                 (torch.zeros(2, 1, 8, 8), torch.ones(3, dtype=torch.long)),
                 (torch.zeros(2, 1, 8, 8), torch.ones(2, 1, dtype=torch.long)),
                 (torch.zeros(2, 1, 8, 8), 5)]:
        message = _torch_error(lambda: tnet(x, t))
        with pytest.raises(ValueError, match=re.escape(message) + "$"):
            jnet(_j(x), _j(t) if torch.is_tensor(t) else t)
    message = _torch_error(lambda: torch_preset("imagenet"))
    with pytest.raises(ValueError, match=re.escape(message)):
        unet_preset("imagenet")


def test_converter_mismatch_errors_are_one_line_naming_the_layer():
    tnet = TorchUNet(**SMALL)
    wide = UNet(**{**SMALL, "model_channels": 32})
    for state, layer in [(tnet.state_dict(), "time_embed.0"),
                         ({k: v for k, v in tnet.state_dict().items() if k != "middle_block.1.qkv.weight"},
                          "middle_block.1.qkv"),
                         ({**tnet.state_dict(), "extra.weight": torch.zeros(1)}, "extra")]:
        with pytest.raises(ValueError) as e:
            params_from_torch_state(wide if layer == "time_embed.0" else UNet(**SMALL), state)
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"layer {layer}:") and "build the Flax UNet" in message
    with pytest.raises(TypeError, match="PyTorch UNet"):
        from_torch(UNet(**SMALL), TorchMLP(4))


def test_mlp_converters_and_dispatch():
    torch.manual_seed(1)
    tnet = TorchMLP(6, width=32, depth=2, dropout=0.1, zero_init=False).eval()
    jnet = flax_twin(tnet)
    assert isinstance(jnet, MLPDenoiser) and jnet.blocks[0].drop.deterministic
    x, t = torch.randn(5, 6), torch.randint(1, 1000, (5,))
    with torch.no_grad():
        want = tnet(x, t).numpy()
    assert np.abs(np.asarray(apply(jnet, _j(x), _j(t))) - want).max() <= TOL * np.abs(want).max()
    other = MLPDenoiser(6, width=32, depth=2)
    load_torch_state(other, tnet.state_dict())
    back = TorchMLP(6, width=32, depth=2)
    to_torch(other, back)
    sd = torch_state_from_params(other, _params(other))
    assert list(sd) == list(tnet.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), tnet.state_dict().values()))
    with pytest.raises(ValueError, match="^layer blocks.1.norm: .*same dim, width and depth$"):
        from_torch(MLPDenoiser(6, width=32, depth=1), tnet)  # unexpected keys: the torch net is deeper


def test_fourier_features_twin_computes_the_same_with_its_input_gradient():
    """A three-channel U-Net with VDM's Fourier features (n = 6, 7): flax_twin reads the setting, the outputs and
    d loss / d x_t agree (the features' channel order and their sin/cos derivatives), the weights round-trip."""
    from ppl_diffusion.nets.embedding import fourier_features as torch_features
    from ppl_diffusion.numpyro.nets import fourier_features

    torch.manual_seed(0)
    tnet = TorchUNet(**{**SMALL, "in_channels": 3}, fourier_features=(6, 7), zero_init=False).eval()
    jnet = flax_twin(tnet)
    assert jnet.fourier_features == (6, 7) and jnet.num_parameters == tnet.num_parameters
    x, t = _inputs(tnet, n=3, seed=3)
    x = x * 0.9  # data-scale inputs: the phases 2^7·2π·x stay within float32's exact range
    with jax.enable_x64(True):  # the features alone, in float64: the same numbers, order included
        xd = x.double()
        assert np.allclose(np.asarray(fourier_features(jnp.asarray(xd.numpy()), (6, 7))),
                           torch_features(xd, (6, 7)).numpy(), rtol=0, atol=1e-12)
    w = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    want, grad, got, g = _outputs_and_input_gradients(tnet, jnet, x, t, w)
    # sin(2^7·2π·x) turns ~800 times per unit of x: float32 rounding of the angle (~1e-5 rad) is the tolerance's
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert np.abs(g - grad).max() <= 1e-3 * np.abs(grad).max()
    back = torch_state_from_params(jnet, _params(jnet))
    assert all(torch.equal(back[k], v) for k, v in tnet.state_dict().items())
