"""Write a MedMNIST data set as a folder of PNG files in the `imagefolder` layout: <split>/<class>/<index>.png.

    python -m data.export_images breastmnist my_images        # the bundled 28 px BreastMNIST, as image files

What your own data should look like, made from data you already have: train.py and evaluate.py read such a folder
with `--dataset my_images` exactly as they read any user's images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import PIL.Image
from tqdm.auto import tqdm

from .loading import load_medmnist
from .medmnist_files import MedMNISTDataError


def export_images(flag: str, output_dir: str | Path, size: int = 28, data_dir: str | None = None) -> dict[str, int]:
    """Every image of every split as <output_dir>/<split>/<class name>/<index>.png; returns the count per split."""
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; choose a new folder.")
    dataset = load_medmnist(flag, size=size, data_dir=data_dir)
    counts = {}
    for split_name, split in dataset.items():
        label_feature = split.features["label"]
        if not hasattr(label_feature, "names"):
            raise MedMNISTDataError(f"{flag} is multi-label: an image folder holds one class per image.")
        for index, record in enumerate(tqdm(split, desc=f"Writing {split_name}", leave=False)):
            folder = output_dir / split_name / label_feature.names[record["label"]].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            image = record["image"]
            PIL.Image.fromarray(np.asarray(image)).save(folder / f"{index:05d}.png")
        counts[split_name] = len(split)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flag", help="MedMNIST 2D flag, e.g. breastmnist")
    parser.add_argument("output_dir", help="a new (or empty) folder")
    parser.add_argument("--size", type=int, default=28, help="MedMNIST file size (28, 64, 128, 224)")
    parser.add_argument("--data_dir", default=None, help="folder with the npz files (default: as train.py)")
    args = parser.parse_args(argv)
    try:
        counts = export_images(args.flag, args.output_dir, args.size, args.data_dir)
    except (MedMNISTDataError, FileExistsError) as error:
        sys.exit(f"export_images: error: {error}")
    print(f"Wrote {sum(counts.values())} images to {args.output_dir}: "
          + ", ".join(f"{name} {count}" for name, count in counts.items()))


if __name__ == "__main__":
    main()
