"""Synthetic MedMNIST files: writes small npz files in the official MedMNIST layout (`train_images`, `val_labels`,
...) with a learnable signal, for the tests and the benchmarks, which must not depend on the real data.

    from data.synthetic import synthetic_medmnist
    synthetic = synthetic_medmnist(tmp_path, "bloodmnist")
    dataset = synthetic.load(cache_dir=tmp_path / "cache")      # = load_medmnist(..., verify_checksum=False)

Each image is noise plus one bright square per (positive) label at a label-specific position, and a label-specific
brightness and, for RGB, tint, so a tiny model trained for a few steps gets well above chance. The MD5 does not match
`medmnist.INFO`: load with `verify_checksum=False` (what `SyntheticMedMNIST.load_kwargs` contains).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from medmnist.info import INFO

from .loading import load_medmnist

SPLIT_PREFIXES = ("train", "val", "test")


def _label_count(flag: str) -> int:
    return len(INFO[flag]["label"])


def _is_multilabel(flag: str) -> bool:
    return INFO[flag]["task"].startswith("multi-label")


def synthetic_arrays(flag: str, size: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×S×S or N×S×S×3, labels uint8 N×1 or N×L) for one split."""
    num_labels, channels = _label_count(flag), int(INFO[flag]["n_channels"])
    if _is_multilabel(flag):
        labels = (rng.random((n, num_labels)) < 0.3).astype(np.uint8)
    else:
        labels = (np.arange(n) % num_labels)[rng.permutation(n)].astype(np.uint8)[:, None]  # every class present
    grid = math.ceil(math.sqrt(num_labels))
    cell = size // grid
    half = max(1, cell // 3)
    images = rng.normal(70.0, 20.0, (n, size, size, channels))
    for label in range(num_labels):
        members = labels[:, label] == 1 if _is_multilabel(flag) else labels[:, 0] == label
        row, col = divmod(label, grid)
        cy, cx = row * cell + cell // 2, col * cell + cell // 2
        images[members, cy - half: cy + half + 1, cx - half: cx + half + 1, :] += 130.0
        if not _is_multilabel(flag):
            images[members] += 40.0 * label / max(1, num_labels - 1)  # a global cue as well
            if channels == 3:
                images[members, :, :, label % 3] += 25.0
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return (images[..., 0] if channels == 1 else images), labels


def write_synthetic_npz(
    directory, flag: str = "breastmnist", size: int = 28, n_train: int = 64, n_val: int = 32, n_test: int = 32,
    seed: int = 0,
) -> Path:
    """Write `<directory>/<flag>[_<size>].npz` in the official layout and return its path."""
    if flag not in INFO or INFO[flag]["python_class"].endswith("3D"):
        raise ValueError(f"{flag!r} is not a 2D medmnist flag")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in zip(SPLIT_PREFIXES, (n_train, n_val, n_test)):
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = synthetic_arrays(flag, size, n, rng)
    path = directory / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


@dataclasses.dataclass(frozen=True)
class SyntheticMedMNIST:
    """A written synthetic file and what callers need to load it."""

    path: Path
    flag: str
    size: int
    num_labels: int
    num_channels: int
    is_multilabel: bool

    @property
    def data_dir(self) -> Path:
        return self.path.parent

    @property
    def load_kwargs(self) -> dict:
        """Keyword arguments for `data.load_medmnist` (the MD5 check must be skipped)."""
        return {"flag": self.flag, "size": self.size, "data_dir": str(self.data_dir), "verify_checksum": False}

    def arrays(self) -> dict[str, np.ndarray]:
        """The raw arrays, as written (keys `train_images`, `val_labels`, ...)."""
        with np.load(self.path) as npz:
            return {key: npz[key] for key in npz.files}

    def load(self, cache_dir=None, **kwargs):
        """`data.load_medmnist` on this file."""
        return load_medmnist(**self.load_kwargs, cache_dir=None if cache_dir is None else str(cache_dir), **kwargs)


def synthetic_medmnist(directory, flag: str = "breastmnist", size: int = 28, **kwargs) -> SyntheticMedMNIST:
    """`write_synthetic_npz` plus the metadata and load arguments callers need."""
    path = write_synthetic_npz(directory, flag=flag, size=size, **kwargs)
    return SyntheticMedMNIST(
        path=path, flag=flag, size=size, num_labels=_label_count(flag), num_channels=int(INFO[flag]["n_channels"]),
        is_multilabel=_is_multilabel(flag),
    )
