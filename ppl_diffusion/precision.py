"""Mixed precision: the denoiser's forward in bfloat16, everything around it in float32 / float64.

A model's ``precision`` is one of :data:`PRECISIONS`:

=========  ==================================================================================================
``fp32``   every operation in the data's dtype (float32): the reference, and the default.
``bf16``   the **network call only** under ``torch.autocast(device_type, dtype=torch.bfloat16)`` (matrix
           products and convolutions in bfloat16, 8-bit mantissa, float32 accumulation), its output cast back
           to the data's dtype right after. The schedule, the closed forms, the KLs, the discretized decoder's
           log-CDF differences, the bound's sums, Adam and the EMA stay in float32 / float64, and the master
           weights stay float32. On the NumPyro backend the Flax nets compute in ``jnp.bfloat16`` with
           float32 parameters (``dtype`` / ``param_dtype``) and return float32.
=========  ==================================================================================================

:class:`ppl_diffusion.diffusion.GaussianDiffusion` holds the precision (``GaussianDiffusion(precision="bf16")``) and
applies it in its one call of the denoiser (``denoiser_output``), so every program, estimator, the evaluator
and sampling use it unchanged. On a CPU, bfloat16 is fast only with AVX-512-BF16 or AMX instructions
(:func:`cpu_has_bf16`), on a GPU from Ampere on; elsewhere it is emulated and slower than float32, and so is
JAX's CPU backend (XLA): it still runs, with one :class:`PrecisionWarning`. The default is fp32 everywhere;
``benchmarks/results/precision.md`` has bf16's speed and its bias of the digits bound, and why.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import warnings

import torch

#: The precisions a model computes its denoiser call in (the table above).
PRECISIONS = ("fp32", "bf16")


class PrecisionWarning(RuntimeWarning):
    """bf16 asked for where it is emulated (slow); given once per process and kind of device. The CLI prints
    it as one line.

    Example: silence it where emulation is expected.

    >>> import warnings
    >>> from ppl_diffusion.precision import PrecisionWarning, autocast
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore", PrecisionWarning)
    ...     context = autocast("bf16", "cpu")
    >>> issubclass(PrecisionWarning, RuntimeWarning)
    True
    """

_warned: set[str] = set()  # the warnings already given, one each per process


def check_precision(precision) -> str:
    """``precision`` if it is known; else a one-line ``ValueError`` naming it and the choices.

    :param str precision: one of :data:`PRECISIONS`.

    Example:

    >>> from ppl_diffusion.precision import check_precision
    >>> check_precision("bf16")
    'bf16'
    >>> check_precision("fp16")
    Traceback (most recent call last):
    ...
    ValueError: unknown precision 'fp16'; choose one of ['fp32', 'bf16'] (--precision)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)} (--precision)")
    return precision


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool | None:
    """Whether this CPU computes bfloat16 natively: the Linux ``/proc/cpuinfo`` flags ``avx512_bf16`` or
    ``amx_bf16`` (x86), ``bf16`` (aarch64). ``None`` when the flags cannot be read (not Linux).

    Example:

    >>> from ppl_diffusion.precision import cpu_has_bf16
    >>> cpu_has_bf16() in (True, False, None)
    True
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = set()
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    if platform.machine().lower() in ("aarch64", "arm64"):
        return "bf16" in flags
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _warn_if_emulated(device_type: str) -> None:
    if device_type in _warned:
        return
    if device_type == "cpu" and not cpu_has_bf16():
        where = "this CPU (" + ("could not read its instruction flags" if cpu_has_bf16() is None
                                else "it has no AVX-512-BF16 / AMX") + ")"
    elif device_type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        where = "this GPU (bfloat16 needs compute capability 8.0, Ampere, or newer)"
    else:
        return
    _warned.add(device_type)
    warnings.warn(f"precision bf16 on {where}: bfloat16 is emulated and slower than fp32; it still runs "
                  "(pass --precision fp32 for speed)", PrecisionWarning, stacklevel=3)


def autocast(precision: str, device_type: str):
    """The context in which a denoiser runs at ``precision`` on a device of type ``device_type`` (``"cpu"``,
    ``"cuda"``, ...): ``torch.autocast(device_type, dtype=torch.bfloat16)`` for ``"bf16"``, nothing for ``"fp32"``.
    The caller casts the network's output back to float32 (see
    :meth:`~ppl_diffusion.diffusion.GaussianDiffusion.denoiser_output`). Warns once (:class:`PrecisionWarning`) where
    bfloat16 is emulated.

    :param str precision: one of :data:`PRECISIONS`.
    :param str device_type: the device type of the tensors, ``"cpu"`` or ``"cuda"``.

    Example: a matrix product under ``"bf16"`` is computed in bfloat16.

    >>> import torch, warnings
    >>> from ppl_diffusion.precision import autocast
    >>> a = torch.ones(2, 2)
    >>> with autocast("fp32", "cpu"):
    ...     (a @ a).dtype
    torch.float32
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # a PrecisionWarning on a CPU without bfloat16 instructions
    ...     with autocast("bf16", "cpu"):
    ...         (a @ a).dtype
    torch.bfloat16
    """
    if check_precision(precision) == "fp32":
        return contextlib.nullcontext()
    if not torch.amp.is_autocast_available(device_type):
        raise ValueError(f"precision bf16: torch has no autocast for device type {device_type!r}; "
                         "use --precision fp32 there")
    _warn_if_emulated(device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16)


def jax_dtype(precision: str):
    """The Flax nets' compute dtype for ``precision``: ``None`` (that of the parameters, float32) or
    ``jnp.bfloat16``; warns once when JAX runs on a CPU, where XLA emulates bfloat16 (measured 0.91× the
    float32 speed for the digits U-Net, ``benchmarks/results/precision.md``).

    :param str precision: one of :data:`PRECISIONS`.

    Example:

    >>> from ppl_diffusion.precision import jax_dtype
    >>> jax_dtype("fp32") is None
    True
    """
    if check_precision(precision) == "fp32":
        return None
    import jax
    import jax.numpy as jnp

    if "jax-cpu" not in _warned and jax.default_backend() == "cpu":
        _warned.add("jax-cpu")
        warnings.warn("precision bf16 on JAX's CPU backend: XLA emulates bfloat16 there, no faster than fp32; it "
                      "still runs (pass --precision fp32, or use --backend pyro for bf16 on a CPU)", PrecisionWarning,
                      stacklevel=2)
    return jnp.bfloat16


__all__ = ["PRECISIONS", "PrecisionWarning", "autocast", "check_precision", "cpu_has_bf16", "jax_dtype"]
