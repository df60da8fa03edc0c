"""Activation checkpointing (rematerialisation): a network call whose activations are recomputed in the backward
pass instead of being kept, and the names of the levels at which the package does it.

:func:`~ppl_diffusion.nets.remat.checkpoint_call` is ``torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)``: only the call's
inputs are saved, and its forward is run again when the backward pass reaches it. The recomputation is the same
arithmetic, so the gradients equal the stored path's bit for bit on a CPU (tested). torch restores its global
random state for the recomputation (``nn.Dropout`` draws the same mask); a random source of its own registers a
*recompute context* here (:func:`~ppl_diffusion.nets.remat.register_recompute_context`): the data-parallel trainer's dropout masks, drawn
from the step's own generator (:class:`ppl_diffusion.infer.draws.BatchDraws`), are replayed that way.

Levels (:data:`~ppl_diffusion.nets.remat.CHECKPOINTING`, the ``checkpoint_activations`` option of
:class:`~ppl_diffusion.diffusion.GaussianDiffusion` and ``--checkpoint-activations``):

==========  ===================================================================================================
``none``    every activation kept (the default; the fastest).
``steps``   each step's denoiser call in the full-chain programs (the model of ``Trace_ELBO``,
            ``TraceMeanField_ELBO`` and IWAE over all T steps): the backward pass keeps T calls' inputs and outputs
            instead of T calls' activations, and recomputes one call at a time (about 1.3× the time).
``blocks``  ``steps``, and inside the U-Net each residual / attention block (improved-diffusion's ``use_checkpoint``,
            :attr:`ppl_diffusion.nets.unet.UNet.use_checkpoint`), in every program: for a large net at a large batch,
            where even one call's activations are too many. U-Nets only.
==========  ===================================================================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["CHECKPOINTING", "checkpoint_call", "register_recompute_context"]

#: The levels of activation checkpointing, by name (see the module docstring).
CHECKPOINTING = ("none", "steps", "blocks")

# Each: a function called when a checkpointed forward starts, returning (forward context, recompute context).
_RECOMPUTE_CONTEXTS: list[Callable[[], tuple]] = []


def check_checkpointing(level) -> str:
    """``level`` checked to be a name of :data:`~ppl_diffusion.nets.remat.CHECKPOINTING`; a one-line ``ValueError`` otherwise."""
    if level not in CHECKPOINTING:
        raise ValueError(f"unknown checkpoint_activations {level!r}; choose one of {', '.join(CHECKPOINTING)} "
                         "(--checkpoint-activations)")
    return level


def register_recompute_context(make: Callable[[], tuple]) -> None:
    """Register ``make()`` → ``(forward_context, recompute_context)``, called as each checkpointed call starts; the
    recomputation in the backward pass runs inside ``recompute_context`` (e.g. a random source put back in the
    state it had in the forward pass).

    :param make: a callable of no argument returning two context managers.

    Example:

    >>> import contextlib
    >>> import torch
    >>> from ppl_diffusion.nets import remat
    >>> from ppl_diffusion.nets.remat import checkpoint_call, register_recompute_context
    >>> entered = []
    >>> @contextlib.contextmanager
    ... def recomputing():
    ...     entered.append("recompute")
    ...     yield
    >>> def make():
    ...     return contextlib.nullcontext(), recomputing()
    >>> register_recompute_context(make)
    >>> x = torch.ones(3, requires_grad=True)
    >>> checkpoint_call(torch.sin, x).sum().backward()
    >>> entered  # the backward pass ran the forward again inside it
    ['recompute']
    >>> remat._RECOMPUTE_CONTEXTS.remove(make)  # (this example only: unregister it again)
    """
    if make not in _RECOMPUTE_CONTEXTS:
        _RECOMPUTE_CONTEXTS.append(make)


def _contexts():
    pairs = [make() for make in _RECOMPUTE_CONTEXTS]
    forward, recompute = contextlib.ExitStack(), contextlib.ExitStack()

    @contextlib.contextmanager
    def enter(stack, which):
        with stack:
            for pair in pairs:
                stack.enter_context(pair[which])
            yield

    return enter(forward, 0), enter(recompute, 1)


def checkpoint_call(fn, *args):
    """``fn(*args)`` with its activations recomputed in the backward pass (``use_reentrant=False``); a plain call
    where no gradient is being recorded.

    :param fn: the function (e.g. a block of a network).
    :param args: its arguments (tensors).
    :returns: ``fn(*args)``.

    Example:

    >>> import torch
    >>> from ppl_diffusion.nets.remat import checkpoint_call
    >>> _ = torch.manual_seed(0)
    >>> layer = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(3, 4)
    >>> layer(x).sum().backward()
    >>> stored = [p.grad.clone() for p in layer.parameters()]
    >>> layer.zero_grad()
    >>> checkpoint_call(layer, x).sum().backward()  # the same gradients, activations recomputed
    >>> all(torch.equal(a, p.grad) for a, p in zip(stored, layer.parameters()))
    True
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False, context_fn=_contexts)
