"""The batch stream: which training examples each optimizer step sees."""

from __future__ import annotations

import torch

__all__ = ["BatchStream"]


class BatchStream:
    """Minibatch indices from successive random permutations of 0..N−1, with a checkpointable state.

    Each epoch is a permutation drawn from the stream's own generator (seeded by ``seed``); a batch that runs past
    the end of one continues in the next, so every example is seen once per epoch.

    :param int n: N, the number of training examples.
    :param int seed: the seed of the permutations.

    Example:

    >>> import torch
    >>> from ppl_diffusion.train import BatchStream
    >>> stream = BatchStream(5, seed=0)
    >>> stream.next(3), stream.next(3)  # the second batch ends the first epoch and starts the next
    (tensor([4, 0, 1]), tensor([3, 2, 3]))
    >>> saved = stream.state_dict()
    >>> ahead = stream.next(4)
    >>> stream.load_state_dict(saved)  # as a resumed run does
    >>> torch.equal(stream.next(4), ahead)
    True
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        """The indices ``LongTensor[batch_size]`` of the next batch."""
        parts, need = [], batch_size
        while need > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        """The stream's position: N, the generator's state, the permutation and the place in it."""
        return {"n": self.n, "generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict`'s position; a one-line ``ValueError`` if it was saved for another N."""
        if int(state["n"]) != self.n:
            raise ValueError(f"batch order saved for {state['n']} training examples, the data has {self.n}")
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])

