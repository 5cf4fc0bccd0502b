"""The arguments that say which data a script reads, shared by train.py and evaluate.py.

`DataSourceArguments` is a dataclass group for `HfArgumentParser`; `resolve_data_source` fills the defaults that
depend on the source (MedMNIST or the user's own images) and refuses combinations that do not go together;
`open_image_data` opens the user's images as the arguments say.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from .image_data import ImageData
from .medmnist_files import check_flag_and_size, flags_2d, flags_3d


def arg(default=None, help: str = "", **metadata):  # noqa: A002 - argparse's own word
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass
class DataSourceArguments:
    """Which data: a MedMNIST flag (and its file's options) or the user's own images (and how to read them)."""

    dataset: str | None = arg(None, "A MedMNIST 2D flag (breastmnist, the default; bloodmnist, ...), a folder of "
                                    "images with one subfolder per class (imagefolder layout, optionally inside "
                                    "train/ validation/ test/), a folder written by DatasetDict.save_to_disk, or a "
                                    "name datasets.load_dataset resolves.",
                              aliases=["--dataset_name", "--dataset-name"])
    train_dir: str | None = arg(None, "Instead of --dataset: a folder of training images, one subfolder per class.")
    validation_dir: str | None = arg(None, "With --train_dir: the validation images (else cut from train).")
    test_dir: str | None = arg(None, "With --train_dir: the test images (else the run has no test split).")
    image_column_name: str = arg("image", "Your data's image column.")
    label_column_name: str = arg("label", "Your data's label column (a ClassLabel, or values to encode as classes).")
    train_val_split: float = arg(0.15, "Your data without a validation split: this stratified fraction of train "
                                       "becomes one (fixed by --seed).")
    num_channels: int | None = arg(None, "Convert every image to 1 (grayscale: ITU-R 601-2 luma, as PIL's 'L') or 3 "
                                         "(RGB; gray repeated) channels, e.g. to fine-tune a grayscale checkpoint on "
                                         "colour images. Default: MedMNIST's own; your data: 3 if any image is "
                                         "colour, else 1.")
    data_dir: str | None = arg(None, "Folder with the official npz files (default: $MEDMNIST_DATA_DIR, then medmnist's "
                                     "own root). A file missing there comes from the bundled copy (breastmnist, 28 px) "
                                     "or is downloaded.")
    image_size: int | None = arg(None, "MedMNIST: the size of the files to read (28 (default), 64, 128, 224); your "
                                       "data: the side images are resized to (default 64). The default recipe trains "
                                       "at this size.")
    no_verify_checksum: bool = arg(False, "Skip the MD5 check of the data file (logged loudly).")


def resolve_data_source(args) -> None:
    """MedMNIST (a flag, breastmnist by default) or the user's own images; the image size's default for each."""
    if args.train_dir is not None and args.dataset is not None:
        raise ValueError(f"--dataset {args.dataset} and --train_dir {args.train_dir}: give one (--train_dir with "
                         "--validation_dir / --test_dir, or --dataset alone).")
    if args.train_dir is None and args.dataset is None:
        args.dataset = "breastmnist"
    if args.num_channels not in (None, 1, 3):
        raise ValueError(f"--num_channels must be 1 (grayscale) or 3 (RGB), got {args.num_channels}.")
    if uses_own_images(args):
        if args.image_size is None:
            args.image_size = 64
        elif args.image_size < 8:
            raise ValueError(f"--image_size must be at least 8 px, got {args.image_size}.")
        if getattr(args, "cross_validation_folds", 0):
            raise ValueError("--cross_validation_folds works on MedMNIST data sets only.")
    else:
        args.dataset, args.image_size = check_flag_and_size(args.dataset, 28 if args.image_size is None
                                                            else args.image_size)
        for name in ("validation_dir", "test_dir"):
            if getattr(args, name) is not None:
                raise ValueError(f"--{name} goes with --train_dir (your own images), not with --dataset "
                                 f"{args.dataset}.")


def uses_own_images(args) -> bool:
    """Whether the run reads the user's own images rather than a MedMNIST data set."""
    return not is_medmnist(args)


def is_medmnist(args) -> bool:
    """Whether the arguments name a MedMNIST flag (rather than the user's own images). A name that is no folder but
    looks like a flag (`...mnist`, or a near miss such as `bloodmnsit`) is taken for one, so that a typo gets
    MedMNIST's "Unknown flag" message with the valid flags instead of a failed data set download."""
    if args.train_dir is not None:
        return False
    name = args.dataset.strip().lower()
    if name in (*flags_2d(), *flags_3d()):
        return True
    if Path(args.dataset).expanduser().exists():
        return False
    return name.endswith(("mnist", "mnist3d")) or bool(difflib.get_close_matches(name, flags_2d(), n=1, cutoff=0.8))


def data_name(args) -> str:
    """How run folders and logs name the data set: the MedMNIST flag, or the folder's (or data set's) name."""
    return Path(args.train_dir or args.dataset).expanduser().name or str(args.dataset)


def open_image_data(args, seed: int) -> ImageData:
    """The user's images as `args` describe them (`ImageDataError` if they cannot be used)."""
    return ImageData.open(args.dataset, args.train_dir, args.validation_dir, args.test_dir, args.image_column_name,
                          args.label_column_name, args.train_val_split, seed, args.num_channels)
