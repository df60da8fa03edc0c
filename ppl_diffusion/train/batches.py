"""The batch stream: which training examples each optimizer step sees."""

from __future__ import annotations

import torch


class BatchStream:
    """Minibatch indices from successive random permutations of 0..N−1, with a checkpointable state."""

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(n, generator=self.generator)
        self.pos = 0

    def next(self, batch_size: int) -> torch.Tensor:
        parts, need = [], batch_size
        while need > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = min(need, self.n - self.pos)
            parts.append(self.perm[self.pos:self.pos + take])
            self.pos, need = self.pos + take, need - take
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"n": self.n, "generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n:
            raise ValueError(f"batch order saved for {state['n']} training examples, the data has {self.n}")
        self.generator.set_state(state["generator"])
        self.perm, self.pos = state["perm"].clone(), int(state["pos"])

