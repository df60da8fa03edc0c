"""Same seed, same bits in every fresh process: MKL's vector-math kernels chosen once, in one thread.

PyTorch computes ``cos``, ``sin``, ``exp``, ``log``, ``log2``, ``log10``, ``sqrt``, ``tanh``, ``tan``, ``erf``,
``erfc``, ``erfinv``, ``acos``, ``asin``, ``atan`` and ``trunc`` of contiguous float32 / float64 CPU tensors with
MKL's vector math library (VML: ``vmsCos``, ``vmdCos``, ...; ATen's ``cpu/vml.h``, reached from the
``IMPLEMENT_FLOAT_KERNEL`` / ``IMPLEMENT_COMPLEX_KERNEL`` kernels of ``native/cpu/UnaryOpsKernel.cpp``, which run
``TensorIterator.for_each`` with a grain of 2048 elements). A call on up to 2048 elements runs in the calling
thread; a larger one is split by ``at::parallel_for`` over the OpenMP threads, each calling VML on its chunk
(seen with gdb on torch 2.13: ``torch.cos`` of 2049 float32 values is ``vmsCos`` on 1025 and on 1024 values in
two threads). oneMKL 2024.2, the version in the PyTorch wheels, picks each VML function's kernel (instruction
set and accuracy) lazily, per function and precision, on the function's first call; when that first call runs
on several threads at once, one thread can compute its chunk with a less accurate kernel (pytorch/pytorch
#188792; the fix proposed there, #188791, is the warm-up below). Later calls are right. So a fresh process
computed the 8-Gaussians toy's ``torch.cos`` of 12,000 angles with different bits about half the time, and a
training run then ended in one of two states; ``OMP_NUM_THREADS=1`` hides it.

:func:`~ppl_diffusion.determinism.warm_up` calls each of these functions once on one element, in float32 and float64, so in one thread,
and runs when ``ppl_diffusion`` is imported (its ``__init__`` imports this module first), before any call
large enough to be split. Every later call, ours or Pyro's or an optimizer's, forward or backward, then finds
its kernel chosen: no call site changes, autograd is untouched, and later calls give the bits they gave
before. Its cost is paid once per process (about a millisecond); a training step pays nothing.

A program that computes one of these functions on a large tensor *before* importing ``ppl_diffusion`` is not
protected; call :func:`~ppl_diffusion.determinism.warm_up` first. The data sets do not depend on it: none of them evaluates a
transcendental function with torch (the 8-Gaussians centres are exact constants; sklearn's toys use NumPy,
single-threaded). The NumPyro backend does not use MKL: XLA compiles ``jnp.cos`` and friends into the program
itself, so a compiled program gives the same bits for the same inputs in every process.
"""

from __future__ import annotations

import torch

__all__ = ["VML_FUNCTIONS", "warm_up"]

#: The functions PyTorch hands to MKL VML (those libtorch_cpu exports vms*/vmd* entry points for), by torch name.
VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
                 "sqrt", "tan", "tanh", "trunc")

_warm = False


def warm_up() -> None:
    """Call every function of :data:`~ppl_diffusion.determinism.VML_FUNCTIONS` once on a one-element float32 and float64 CPU tensor (in
    the calling thread), so that MKL chooses each kernel before any multi-threaded call; idempotent.

    Importing ``ppl_diffusion`` calls it; call it yourself only before importing ``ppl_diffusion`` in a program
    that computes these functions on large tensors first.

    Example:

    >>> import torch
    >>> from ppl_diffusion.determinism import warm_up
    >>> warm_up()  # already done on import: returns at once
    >>> x = torch.linspace(0, 100, 12_000)  # large enough to be split over threads
    >>> torch.equal(torch.cos(x), torch.cat([torch.cos(x[:6000]), torch.cos(x[6000:])]))
    True
    """
    global _warm
    if _warm:
        return
    with torch.no_grad():
        for dtype in (torch.float32, torch.float64):
            x = torch.full((1,), 0.5, dtype=dtype)  # inside every function's domain (erfinv, acos, asin, log)
            for name in VML_FUNCTIONS:
                getattr(torch, name)(x)
    _warm = True


warm_up()
