"""Index samplers for FixMatch batches, driven by one explicit torch.Generator (reproducible and
checkpointable: the generator's state is the sampler's state, plus the unlabelled cursor)."""

from __future__ import annotations

import numpy as np
import torch


def labelled_batch(y: np.ndarray, batch_size: int, generator: torch.Generator, oversample: bool) -> np.ndarray:
    """Indices into the labelled set for one batch, drawn with replacement.

    With ``oversample`` each class is drawn with equal probability (the rare anomaly class is
    oversampled to half the batch on average); without it, every labelled image is equally likely.
    """
    n = len(y)
    if n == 0:
        raise ValueError("the labelled set is empty: label at least one anomaly and one nominal image")
    weights = torch.ones(n, dtype=torch.float64)
    if oversample:
        y_t = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        counts = torch.bincount(y_t, minlength=2).double()
        present = counts > 0
        weights = (1.0 / counts.clamp(min=1))[y_t] / present.sum()
    idx = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    return idx.numpy()


class UnlabelledStream:
    """Epochs of random permutations over ``n`` unlabelled images, served in fixed-size chunks.

    State is ``(permutation, cursor)`` and the generator; both are saved in checkpoints.
    """

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n = n
        self.generator = generator
        self.permutation = torch.randperm(n, generator=generator) if n else torch.empty(0, dtype=torch.int64)
        self.cursor = 0

    def next(self, count: int) -> np.ndarray:
        if self.n == 0 or count == 0:
            return np.empty(0, dtype=np.int64)
        out = []
        remaining = count
        while remaining:
            if self.cursor >= self.n:
                self.permutation = torch.randperm(self.n, generator=self.generator)
                self.cursor = 0
            take = min(remaining, self.n - self.cursor)
            out.append(self.permutation[self.cursor : self.cursor + take])
            self.cursor += take
            remaining -= take
        return torch.cat(out).numpy()

    def state(self) -> dict[str, torch.Tensor]:
        return {"permutation": self.permutation.clone(), "cursor": torch.tensor(self.cursor)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if len(state["permutation"]) != self.n:
            raise ValueError(
                f"checkpoint was made with {len(state['permutation'])} unlabelled images, this run has {self.n}"
            )
        self.permutation = state["permutation"].clone()
        self.cursor = int(state["cursor"])
