"""diffusers interop: a random DDPM pipeline saved with save_pretrained loads as a GaussianDiffusion whose schedule,
denoiser and bound terms equal the scheduler's own arrays and closed forms; export round-trips; bad input is one line.
"""

import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from scipy.special import ndtr  # noqa: E402

from ppl_diffusion import noise  # noqa: E402
from ppl_diffusion.diffusion import GaussianDiffusion  # noqa: E402
from ppl_diffusion.infer.bound import variational_bound  # noqa: E402
from ppl_diffusion.interop.diffusers import (  # noqa: E402
    DiffusersDenoiser, from_diffusers, scheduler_betas, to_diffusers, unet_to_diffusers)
from ppl_diffusion.nets.unet import unet_preset  # noqa: E402
from ppl_diffusion.schedule import NoiseSchedule  # noqa: E402

T = 50
SCHEDULE = dict(num_train_timesteps=T, beta_start=0.002, beta_end=0.3, clip_sample=False)


def tiny_unet(seed=0, **kw):
    """A random 8×8×1 UNet2DModel: two levels (8 → 4), attention at 4×4 and in the middle."""
    torch.manual_seed(seed)
    kw = {**dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                 norm_num_groups=4, attention_head_dim=None, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D")), **kw}
    return UNet2DModel(**kw).eval()


def save_pipeline(folder, scheduler=None, **unet_kw):
    DDPMPipeline(unet=tiny_unet(**unet_kw), scheduler=scheduler or DDPMScheduler(**SCHEDULE)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def digits():
    """Four 8×8 digits as 8-bit pixels mapped to [−1, 1], float64 ``[4 x 1 x 8 x 8]``."""
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images[:4] * 255 / 16)[:, None]
    return torch.from_numpy(pixels / 127.5 - 1.0)


# ------------------------------------------------------------------------------------------ schedule
@pytest.mark.parametrize("kw", [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear", beta_end=0.05),
                                dict(beta_schedule="squaredcos_cap_v2"),
                                dict(trained_betas=np.linspace(0.001, 0.2, T).tolist())],
                         ids=["linear", "scaled_linear", "squaredcos_cap_v2", "trained_betas"])
@pytest.mark.parametrize("cls", [DDPMScheduler, DDIMScheduler], ids=["ddpm", "ddim"])
def test_schedule_equals_scheduler(cls, kw):
    scheduler = cls(**{**SCHEDULE, **kw})
    schedule = NoiseSchedule(scheduler_betas(dict(scheduler.config)))
    assert np.array_equal(schedule.betas, scheduler.betas.double().numpy())  # bit for bit
    # ᾱ_t: ours is the float64 product of those betas, the scheduler's a float32 cumprod
    np.testing.assert_allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.double().numpy(), rtol=2e-6)


def test_pipeline_loads(tmp_path):
    records, handler = [], logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)  # diffusers' loggers do not propagate to the root
    try:
        diffusion = from_diffusers(save_pipeline(tmp_path / "p"))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert not [r.getMessage() for r in records if "accelerate" in r.getMessage()]  # no advice on every load
    assert isinstance(diffusion.denoiser, DiffusersDenoiser)
    assert tuple(diffusion.event_shape) == (1, 8, 8) and diffusion.T == T
    assert diffusion.variance == "posterior" and diffusion.decoder.bins == 256  # fixed_small, 8-bit images
    scheduler = DDPMScheduler.from_pretrained(tmp_path / "p" / "scheduler")
    assert np.array_equal(diffusion.schedule.betas, scheduler.betas.double().numpy())
    # a UNet folder and a scheduler folder, given separately
    other = from_diffusers(tmp_path / "p" / "unet", scheduler=tmp_path / "p" / "scheduler", variance="beta")
    assert other.variance == "beta" and np.array_equal(other.schedule.betas, diffusion.schedule.betas)


def test_ddpm_port_conventions_load(tmp_path):
    """google/ddpm-* ports keep DDPM's TF conventions (sin first, frequency shift 1, GroupNorm eps 1e-6, TF-style
    asymmetric downsampling padding) and DDPM's CIFAR-10 sampler (fixed_large, clip_sample); the adapter calls
    the UNet as it is, so they import exactly; the UNet and scheduler configs side by side in one folder also load."""
    kw = dict(flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, downsample_padding=0)
    scheduler = DDPMScheduler(num_train_timesteps=T, variance_type="fixed_large", clip_sample=True)
    save_pipeline(tmp_path / "p", scheduler, **kw)
    flat = tmp_path / "flat"
    shutil.copytree(tmp_path / "p" / "unet", flat)
    shutil.copy(tmp_path / "p" / "scheduler" / "scheduler_config.json", flat)
    diffusion = from_diffusers(flat)
    assert diffusion.variance == "beta" and diffusion.denoiser.scheduler_config["clip_sample"] is True
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 1])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.predict_eps(x, t), tiny_unet(**kw)(x, 0).sample, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ denoiser
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_denoiser_equals_scheduler_prediction(tmp_path, prediction_type):
    scheduler = DDPMScheduler(**SCHEDULE, prediction_type=prediction_type)
    diffusion = from_diffusers(save_pipeline(tmp_path / "p", scheduler))
    unet = tiny_unet()
    torch.manual_seed(1)
    x_t = torch.randn(3, 1, 8, 8)
    for t in (1, 2, 17, T):
        steps = torch.full((3,), t)
        with torch.no_grad():
            out = unet(x_t, t - 1).sample  # diffusers' timestep is t − 1
            eps = diffusion.predict_eps(x_t, steps)
            x0 = diffusion.predict_x0(x_t, steps)
        if prediction_type == "epsilon":
            torch.testing.assert_close(eps, out, rtol=0, atol=0)
        # x̂_0 as the scheduler forms it from the raw output (clip_sample off)
        want = scheduler.step(out, t - 1, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
        torch.testing.assert_close(x0, want, rtol=1e-5, atol=2e-5)


# ------------------------------------------------------------------------------------------ the bound
def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)) summed over the event, float64 ``[B]``."""
    return (0.5 * (torch.log(v2 / v1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0)).flatten(1).sum(-1)


def discretized_nll(x0, mean, var):
    """−log P(x_0) of N(mean, var) over 256 bins on [−1, 1] (edge bins open), by hand with scipy, ``[B]``."""
    x, m, s = x0.numpy(), mean.numpy(), np.sqrt(var.numpy())
    hi = np.where(x > 1 - 1e-6, np.inf, (x + 1 / 255 - m) / s)
    lo = np.where(x < -1 + 1e-6, -np.inf, (x - 1 / 255 - m) / s)
    return torch.from_numpy(-np.log(ndtr(hi) - ndtr(lo)).reshape(len(x), -1).sum(-1))


@pytest.mark.parametrize("variance_type", ["fixed_small", "fixed_large"])
def test_bound_terms_equal_scheduler_closed_forms(tmp_path, digits, variance_type):
    scheduler = DDPMScheduler(**SCHEDULE, variance_type=variance_type)
    diffusion = from_diffusers(save_pipeline(tmp_path / "p", scheduler)).double()
    unet = tiny_unet().double()
    seed, steps = 3, [1, 2, 17, T]
    with torch.no_grad():
        bound = variational_bound(diffusion, digits, seed=seed, timesteps=steps)
    ac = scheduler.alphas_cumprod.double()  # the scheduler's own ᾱ, indexed by its 0-based timestep
    index = np.arange(len(digits))
    for t in steps:
        s = t - 1
        eps = torch.from_numpy(noise.normal(seed, index, t, (1, 8, 8), stream=noise.XT, dtype=np.float64))
        x_t = scheduler.add_noise(digits, eps, torch.full((len(digits),), s))
        with torch.no_grad():
            out = unet(x_t, s).sample
        x0_hat = scheduler.step(out, s, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
        a_t, a_prev = ac[s], (ac[s - 1] if s > 0 else torch.tensor(1.0, dtype=torch.float64))
        beta = 1 - a_t / a_prev
        c0, ct = a_prev.sqrt() * beta / (1 - a_t), (1 - beta).sqrt() * (1 - a_prev) / (1 - a_t)
        if t == 1:  # decoder: our convention, σ_1² = β̃_2 ("posterior") or β_1 ("beta"), from the scheduler's arrays
            var = scheduler._get_variance(1, variance_type="fixed_small") if variance_type == "fixed_small" \
                else scheduler.betas[0]
            want = discretized_nll(digits, c0 * x0_hat + ct * x_t, var.double().expand_as(digits))
        else:
            q_var = scheduler._get_variance(s, variance_type="fixed_small").double()
            p_var = scheduler._get_variance(s).double()
            want = gaussian_kl(c0 * digits + ct * x_t, q_var, c0 * x0_hat + ct * x_t, p_var)
        # rtol: the scheduler forms β_t = 1 − ᾱ_t/ᾱ_{t−1} in float32, a cancellation of ~6e-8/β_t (3e-5 at t = 2;
        # measured 1.3e-5 there, ≤ 4e-6 elsewhere); ours is float64 throughout
        torch.testing.assert_close(bound.terms[:, t - 1], want, rtol=5e-5, atol=1e-8, msg=f"L_{t - 1}")
    m, v = ac[-1].sqrt() * digits, 1 - ac[-1]  # prior term KL(q(x_T|x_0) || N(0, I))
    torch.testing.assert_close(bound.prior_term, gaussian_kl(m, v, torch.zeros(()), torch.ones(())), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------------ export
@pytest.mark.parametrize("cls, kw", [(DDPMScheduler, dict(prediction_type="v_prediction", variance_type="fixed_large",
                                                           clip_sample=True)),
                                     (DDIMScheduler, dict(beta_schedule="squaredcos_cap_v2"))],
                         ids=["ddpm-v-large", "ddim-cosine"])
def test_round_trip(tmp_path, cls, kw):
    scheduler = cls(**{**SCHEDULE, **kw})
    diffusion = from_diffusers(save_pipeline(tmp_path / "a", scheduler))
    to_diffusers(diffusion, tmp_path / "b")
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / p / "unet" / "diffusion_pytorch_model.safetensors") for p in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    written = DDPMScheduler.from_pretrained(tmp_path / "b" / "scheduler")
    assert torch.equal(written.betas, scheduler.betas) and written.config.trained_betas is None  # beta_schedule kept
    assert written.config.prediction_type == scheduler.config.prediction_type
    assert written.config.clip_sample == scheduler.config.clip_sample
    back = from_diffusers(tmp_path / "b")
    assert back.variance == diffusion.variance and np.array_equal(back.schedule.betas, diffusion.schedule.betas)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, T])
    with torch.no_grad():
        torch.testing.assert_close(back.predict_eps(x, t), diffusion.predict_eps(x, t), rtol=0, atol=0)


def small_unet(**kw):
    return unet_preset("digits", **{**dict(model_channels=16, num_groups=8, zero_init=False), **kw}).eval()


@pytest.mark.parametrize("kw", [{}, dict(use_scale_shift_norm=False, num_heads=2)], ids=["scale-shift", "add-2heads"])
def test_our_unet_exports_exactly(tmp_path, kw):
    net = small_unet(**kw)
    torch.manual_seed(2)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 17, T])
    with torch.no_grad():  # the off-by-one in t is folded into the time MLP: exact at t = 1 in float64
        unet = unet_to_diffusers(net.double())
        torch.testing.assert_close(unet(x.double()[:1], 0).sample, net(x.double()[:1], t[:1]), rtol=0, atol=1e-12)
    net = net.float()
    diffusion = GaussianDiffusion(schedule=NoiseSchedule.linear(T), denoiser=net, event_shape=(1, 8, 8),
                                  decoder="discretized", variance="beta")
    back = from_diffusers(to_diffusers(diffusion, tmp_path / "p"))
    assert back.variance == "beta"
    np.testing.assert_allclose(back.schedule.betas, diffusion.schedule.betas, rtol=6e-8)  # float32 trained_betas
    with torch.no_grad():  # beyond t = 1 diffusers' float32 sinusoid features set the agreement
        torch.testing.assert_close(back.predict_eps(x, t), net(x, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kw, match", [(dict(learn_sigma=True), "learn_sigma"),
                                       (dict(channel_mult=(2, 2)), r"channel_mult\[0\]"),
                                       (dict(num_groups=32), "GroupNorm"),
                                       (dict(num_heads=4, attention_resolutions=(8, 4)), "head widths")],
                         ids=["learned", "mult", "groups", "heads"])
def test_unexportable_unet_is_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        unet_to_diffusers(small_unet(**kw))
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ bad input
def edit(folder, sub, name, **changes):
    path = folder / sub / name
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return save_pipeline(tmp_path_factory.mktemp("pipe") / "p")


@pytest.mark.parametrize("change, match", [
    (("scheduler", "scheduler_config.json", dict(prediction_type="flow")), "prediction_type = 'flow'"),
    (("scheduler", "scheduler_config.json", dict(beta_schedule="sigmoid")), "beta_schedule = 'sigmoid'"),
    (("scheduler", "scheduler_config.json", dict(variance_type="learned_range")), "variance='posterior'"),
    (("scheduler", "scheduler_config.json", dict(rescale_betas_zero_snr=True)), "rescale_betas_zero_snr"),
    (("scheduler", "scheduler_config.json", dict(_class_name="EulerDiscreteScheduler")), "EulerDiscreteScheduler"),
    (("unet", "config.json", dict(num_class_embeds=10)), "num_class_embeds = 10"),
    (("unet", "config.json", dict(class_embed_type="timestep")), "class_embed_type"),
    (("unet", "config.json", dict(_class_name="UNet2DConditionModel")), "UNet2DConditionModel"),
    (("unet", "config.json", dict(time_embedding_type="fourier")), "fourier"),
], ids=["prediction", "beta-schedule", "learned-range", "zero-snr", "scheduler-class", "class-embeds",
        "class-embed-type", "cross-attention", "fourier"])
def test_bad_config_is_one_line(tmp_path, saved, change, match):
    folder = tmp_path / "p"
    shutil.copytree(saved, folder)
    edit(folder, *change[:2], **change[2])
    with pytest.raises(ValueError, match=match) as e:
        from_diffusers(folder)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("remove, match", [("scheduler/scheduler_config.json", "scheduler_config.json not found"),
                                           ("unet/diffusion_pytorch_model.safetensors", "no weights"),
                                           ("unet", "neither a unet/")], ids=["scheduler", "weights", "unet"])
def test_missing_file_is_one_line(tmp_path, saved, remove, match):
    folder = tmp_path / "p"
    shutil.copytree(saved, folder)
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ValueError, match=match) as e:
        from_diffusers(folder)
    assert "\n" not in str(e.value)


def test_learned_range_imports_mean_with_fixed_variance(tmp_path):
    scheduler = DDPMScheduler(**SCHEDULE, variance_type="learned_range")
    diffusion = from_diffusers(save_pipeline(tmp_path / "p", scheduler, out_channels=2), variance="posterior")
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 3])
    with torch.no_grad():
        torch.testing.assert_close(diffusion.predict_eps(x, t), tiny_unet(out_channels=2)(x, 2).sample[:, :1])
    with pytest.raises(ValueError, match="learned variance"):
        to_diffusers(diffusion, tmp_path / "out")
    assert math.isfinite(float(diffusion.p_log_variance[0]))


# ------------------------------------------------------------------------------------------ run folders and the CLI
def test_import_diffusers_writes_a_run_every_command_loads(tmp_path):
    """`ppl-diffusion import diffusers DIR --run-dir RUN --data digits`: the run's model is the pipeline's (same
    ε̂), `evaluate` scores it, and `export --to diffusers` writes the same UNet weights back."""
    from ppl_diffusion.cli import main
    from ppl_diffusion.sampling import load_run

    folder = save_pipeline(tmp_path / "pipe")
    run = tmp_path / "run"
    assert main(["import", "diffusers", str(folder), "--run-dir", str(run), "--data", "digits"]) == 0
    ours = load_run(run, device="cpu").diffusion
    direct = from_diffusers(folder)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([1, 17, T])
    with torch.no_grad():
        torch.testing.assert_close(ours.predict_eps(x, t), direct.predict_eps(x, t))
    np.testing.assert_array_equal(ours.schedule.betas, direct.schedule.betas)
    assert ours.variance == direct.variance
    assert main(["evaluate", str(run), "--max-examples", "4", "--fd-samples", "0", "--no-progress"]) == 0
    assert main(["export", str(run), "--to", "diffusers", "--out", str(tmp_path / "back")]) == 0
    back = UNet2DModel.from_pretrained(str(tmp_path / "back" / "unet"), local_files_only=True)
    for k, v in tiny_unet().state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)


def test_import_diffusers_refuses_flags_and_other_data(tmp_path):
    from ppl_diffusion.interop import import_diffusers

    folder = save_pipeline(tmp_path / "pipe")
    with pytest.raises(ValueError, match="--flags is for improved-diffusion"):
        import_diffusers(folder, tmp_path / "r1", flags="--image_size 8", data="digits")
    with pytest.raises(ValueError, match=r"takes examples of shape \[1, 8, 8\] but data 'eight_gaussians'"):
        import_diffusers(folder, tmp_path / "r2", data="eight_gaussians")
