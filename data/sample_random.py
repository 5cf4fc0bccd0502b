"""Random numbers that belong to a sample, not to the process that draws them.

Each training sample gets a 32-bit key from (seed, epoch, its place in the epoch's order); every random number its
augmentation needs is a hash of (key, a counter), as in counter-based generators (SplitMix, Philox). The numbers an
image gets therefore do not depend on the batch it lands in, on how many processes share the global batch, on the
device, or on how often a run was interrupted and resumed: 1 and 2 processes augment every image identically.

The hash is a 32-bit integer finaliser (xor-shift / multiply, constants with good avalanche) computed in int64 with
every product below 2**63, so it is exact on every device.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B  # < 2**27: (x < 2**32) * multiplier never overflows int64
_GOLDEN = 0x9E3779B9  # 2**32 / golden ratio: the counter step (SplitMix's Weyl sequence)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A bijection of [0, 2**32) that scatters nearby inputs across the range."""
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    x = (((x >> 16) ^ x) * _MULTIPLIER) & _MASK
    return (x >> 16) ^ x


def epoch_key(seed: int, epoch: int) -> int:
    """A 32-bit value that mixes (seed, epoch) so that e.g. (0, 1) and (1, 0) are unrelated."""
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1, np.uint32)[0])


def sample_keys(seed: int, epoch: int, positions: torch.Tensor) -> torch.Tensor:
    """int64 (B,) keys of the samples at `positions` (their places in epoch `epoch`'s order) for `seed`."""
    positions = torch.as_tensor(positions, dtype=torch.int64)
    return _mix32(_mix32((positions & _MASK) ^ epoch_key(seed, epoch)))


class SampleRandom:
    """Per-sample random draws from per-sample keys; each call uses the next counter value(s).

    Two objects made from the same keys return the same numbers for the same sequence of calls, whatever the other
    samples of the batch are: the draws of sample i depend only on keys[i] and on how many draws came before.
    """

    def __init__(self, keys: torch.Tensor):
        if keys.dtype != torch.int64 or keys.ndim != 1:
            raise ValueError(f"keys must be int64 (B,), got {keys.dtype} {tuple(keys.shape)}")
        self.keys = keys
        self.counter = 0

    @classmethod
    def from_global_rng(cls, batch: int, device) -> SampleRandom:
        """Keys drawn from torch's global RNG: for callers that do not track samples (benchmarks, one-off batches)."""
        return cls(torch.randint(0, _MASK + 1, (batch,), device=device, dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def bits(self, columns: int | None = None) -> torch.Tensor:
        """Uniform 32-bit integers: (B,) or (B, columns)."""
        count = 1 if columns is None else columns
        counters = torch.arange(self.counter + 1, self.counter + 1 + count, device=self.keys.device)
        self.counter += count
        values = _mix32((self.keys[:, None] + counters * _GOLDEN) & _MASK)
        return values[:, 0] if columns is None else values

    def uniform(self, low: float = 0.0, high: float = 1.0, columns: int | None = None) -> torch.Tensor:
        """float32 uniform in [low, high): 24 random bits, exactly representable."""
        unit = (self.bits(columns) >> 8).to(torch.float32) * (1.0 / (1 << 24))
        return unit * (high - low) + low

    def integers(self, high: int, columns: int | None = None) -> torch.Tensor:
        """int64 in [0, high) (high ≤ 2**16: the modulo bias is below 2**-16)."""
        return self.bits(columns) % int(high)

    def signs(self, columns: int | None = None) -> torch.Tensor:
        """float32 ±1 with probability 1/2 each."""
        return ((self.bits(columns) >> 31) * 2 - 1).to(torch.float32)
