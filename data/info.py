"""`MedMNISTInfo`: what a script needs to know about a MedMNIST data set, recoverable from the loaded `DatasetDict`.

`load_medmnist` stores the flag, size, file and checksum in every split's `datasets.DatasetInfo` (`dataset_name`,
`config_name`, `download_checksums`) next to the description and licence, so the information survives `map`,
`select`, `save_to_disk` and friends; everything else comes from `medmnist.INFO`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import datasets
from medmnist.info import HOMEPAGE, INFO

from .medmnist_files import MedMNISTDataError, check_flag_and_size, expected_md5, file_url

CITATION = """@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and Pfister,
          Hanspeter and Ni, Bingbing},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}, publisher={Nature Publishing Group UK}
}"""


@dataclasses.dataclass(frozen=True)
class MedMNISTInfo:
    """Metadata of one MedMNIST data set at one size.

    Attributes:
        flag: medmnist flag, e.g. `bloodmnist`.
        size: image side in pixels (28, 64, 128 or 224).
        task: medmnist's task string: `binary-class`, `multi-class`, `multi-label, binary-class`,
            `ordinal-regression`.
        num_channels: 1 (grayscale) or 3 (RGB).
        label_names: label names ordered by index.
        num_labels: number of classes, or of binary labels for a multi-label flag.
        is_multilabel: whether each sample carries `num_labels` independent binary labels.
        description, license: from `medmnist.INFO`.
        file_path: the npz file the data came from (None for `medmnist_info("flag")`).
        md5: the actual MD5 of that file (None without a file).
        url: the official download URL; expected_md5: the MD5 `medmnist.INFO` records.
        source: "medmnist" for the official files, "images" for a user's own (`data.ImageData`: no file, MD5,
            URL or known licence).
    """

    flag: str
    size: int
    task: str
    num_channels: int
    label_names: list[str]
    num_labels: int
    is_multilabel: bool
    description: str
    license: str
    file_path: str | None
    md5: str | None
    url: str
    expected_md5: str
    source: str = "medmnist"

    @property
    def problem_type(self) -> str:
        """The transformers `problem_type` for this task (selects the loss in `build_model`)."""
        return "multi_label_classification" if self.is_multilabel else "single_label_classification"

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def checksum_verified(self) -> bool:
        """Whether the file is byte-identical to the official release."""
        return self.md5 is not None and self.md5 == self.expected_md5

    @classmethod
    def from_flag(cls, flag: str, size: int = 28, file_path=None, md5: str | None = None) -> MedMNISTInfo:
        """Build from `medmnist.INFO` (and, optionally, the file actually read)."""
        flag, size = check_flag_and_size(flag, size)
        entry = INFO[flag]
        label_names = [entry["label"][str(i)] for i in range(len(entry["label"]))]
        return cls(
            flag=flag,
            size=size,
            task=entry["task"],
            num_channels=int(entry["n_channels"]),
            label_names=label_names,
            num_labels=len(label_names),
            is_multilabel=entry["task"].startswith("multi-label"),
            description=entry["description"],
            license=entry["license"],
            file_path=None if file_path is None else os.fspath(file_path),
            md5=md5,
            url=file_url(flag, size),
            expected_md5=expected_md5(flag, size),
        )

    def to_dataset_info(self, features: datasets.Features) -> datasets.DatasetInfo:
        """A `datasets.DatasetInfo` carrying this metadata (see `medmnist_info` for the reverse)."""
        info = datasets.DatasetInfo(
            description=self.description,
            citation=CITATION,
            homepage=HOMEPAGE,
            license=self.license,
            features=features,
            builder_name="medmnist",
            dataset_name=self.flag,
            config_name=f"{self.flag}_{self.size}",
        )
        set_file_record(info, self.file_path, self.md5)
        return info


def set_file_record(info: datasets.DatasetInfo, file_path, md5: str | None) -> None:
    """Record the source file and its actual MD5 in `info.download_checksums` (in place)."""
    if file_path is None:
        info.download_checksums = None
        return
    path = Path(file_path)
    size = path.stat().st_size if path.exists() else None
    info.download_checksums = {os.fspath(path): {"num_bytes": size, "checksum": md5}}


def medmnist_info(flag_or_dataset, size: int | None = None) -> MedMNISTInfo:
    """`MedMNISTInfo` for a flag (`size` defaults to 28) or for a `Dataset` / `DatasetDict` from `load_medmnist`."""
    if isinstance(flag_or_dataset, str):
        return MedMNISTInfo.from_flag(flag_or_dataset, 28 if size is None else size)
    if isinstance(flag_or_dataset, datasets.DatasetDict):
        infos = {name: medmnist_info(split) for name, split in flag_or_dataset.items()}
        if not infos:
            raise MedMNISTDataError("The DatasetDict has no splits, so it carries no MedMNIST metadata.")
        first = next(iter(infos.values()))
        if any(other != first for other in infos.values()):
            raise MedMNISTDataError(f"The splits of this DatasetDict come from different MedMNIST files: {infos}")
        return first
    if isinstance(flag_or_dataset, datasets.Dataset):
        info = flag_or_dataset.info
        flag, config = info.dataset_name, info.config_name or ""
        prefix = f"{flag}_"
        if info.builder_name != "medmnist" or not flag or not config.startswith(prefix):
            raise MedMNISTDataError(
                "This dataset carries no MedMNIST metadata (it was not made by data.load_medmnist): "
                f"builder_name={info.builder_name!r}, dataset_name={flag!r}, config_name={info.config_name!r}."
            )
        (file_path, record), = (info.download_checksums or {None: {"checksum": None}}).items()
        return MedMNISTInfo.from_flag(flag, int(config[len(prefix):]), file_path, record.get("checksum"))
    raise TypeError(f"medmnist_info expects a flag, a Dataset or a DatasetDict, got {type(flag_or_dataset).__name__}.")
