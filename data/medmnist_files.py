"""Locate, verify and (where the network allows) download the official MedMNIST npz files.

Where a file is looked for, first match wins:

1. the `data_dir` argument;
2. the directory in the environment variable `MEDMNIST_DATA_DIR`;
3. `medmnist`'s own default root (`~/.medmnist`).

Only the first of these that is set is searched. If the file is not there, the copy bundled with the project
(`data/bundled/`: the official 28 px `breastmnist.npz`) is used when there is one, and only then is the file
downloaded into that folder. Every file, the bundled one included, is checked against the MD5 in `medmnist.INFO`.

Files keep the names `medmnist` gives them: `bloodmnist.npz` for 28 px, `bloodmnist_64.npz` etc. for larger sizes.
Every error here is a `MedMNISTDataError` (a `ValueError`) whose message says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

from medmnist.info import DEFAULT_ROOT, HOMEPAGE, INFO

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "MEDMNIST_DATA_DIR"
SIZES = (28, 64, 128, 224)
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"  # official files that travel with the project
DOWNLOAD_TIMEOUT_S = 60  # medmnist/torchvision open URLs without a timeout; do not hang forever on a dead network


class MedMNISTDataError(ValueError):
    """A MedMNIST file or argument problem, with a message meant for the person running the script."""


def flags_2d() -> tuple[str, ...]:
    """All 2D MedMNIST flags, in `medmnist.INFO` order."""
    return tuple(flag for flag, info in INFO.items() if not info["python_class"].endswith("3D"))


def flags_3d() -> tuple[str, ...]:
    """The 3D flags, which this project does not load."""
    return tuple(flag for flag, info in INFO.items() if info["python_class"].endswith("3D"))


def check_flag_and_size(flag: str, size: int) -> tuple[str, int]:
    """Normalise and validate a (flag, size) pair; raise `MedMNISTDataError` listing the valid values."""
    if not isinstance(flag, str):
        raise MedMNISTDataError(f"The MedMNIST flag must be a string, got {flag!r}.")
    normalised = flag.strip().lower()
    if normalised in flags_3d():
        raise MedMNISTDataError(
            f"{flag!r} is a 3D MedMNIST data set; this project handles 2D images only. "
            f"2D flags: {', '.join(flags_2d())}."
        )
    if normalised not in flags_2d():
        raise MedMNISTDataError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(flags_2d())}.")
    if isinstance(size, bool) or not isinstance(size, int) or size not in SIZES:
        raise MedMNISTDataError(f"Unknown MedMNIST image size {size!r}. Valid sizes: {', '.join(map(str, SIZES))}.")
    return normalised, size


def _suffix(size: int) -> str:
    """medmnist's `size_flag`: empty for 28 px, `_64` etc. otherwise (also the suffix of the INFO keys)."""
    return "" if size == 28 else f"_{size}"


def npz_filename(flag: str, size: int = 28) -> str:
    """The file name `medmnist` uses: `bloodmnist.npz`, `bloodmnist_64.npz`, ..."""
    flag, size = check_flag_and_size(flag, size)
    return f"{flag}{_suffix(size)}.npz"


def expected_md5(flag: str, size: int = 28) -> str:
    """The MD5 that `medmnist.INFO` records for this file."""
    flag, size = check_flag_and_size(flag, size)
    return INFO[flag][f"MD5{_suffix(size)}"]


def file_url(flag: str, size: int = 28) -> str:
    """The download URL that `medmnist.INFO` records for this file."""
    flag, size = check_flag_and_size(flag, size)
    return INFO[flag][f"url{_suffix(size)}"]


def bundled_npz(flag: str, size: int = 28) -> Path | None:
    """The copy of this file bundled with the project (`data/bundled/`), or None if none is bundled."""
    path = BUNDLED_DIR / npz_filename(flag, size)
    return path if path.is_file() else None


def is_bundled(path: str | os.PathLike) -> bool:
    """Whether `path` is a file of the project's own bundled folder (for error messages that say how to restore it)."""
    return Path(path).resolve().parent == BUNDLED_DIR


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The directory to read npz files from and where that choice came from (for error messages)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser(), f"${DATA_DIR_ENV}"
    if DEFAULT_ROOT is None:  # medmnist could not create ~/.medmnist at import
        return Path("~/.medmnist").expanduser(), "medmnist's default root"
    return Path(DEFAULT_ROOT), "medmnist's default root"


def locate_npz(
    flag: str, size: int = 28, data_dir: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Path of the official npz file for (flag, size): from the data folder, else the bundled copy, else downloaded.

    The folder is `data_dir`, else `$MEDMNIST_DATA_DIR`, else medmnist's root; a missing file is downloaded into it
    through `medmnist` unless the project bundles that file (`bundled_npz`). Raises `MedMNISTDataError` saying where it looked, which file and URL it needs and how to place it when the file
    is absent and cannot be downloaded (or `download=False`).
    """
    flag, size = check_flag_and_size(flag, size)
    directory, origin = resolve_data_dir(data_dir)
    path = directory / npz_filename(flag, size)
    if path.is_file():
        return path
    if path.exists():
        raise MedMNISTDataError(f"{path} exists but is not a regular file; expected the npz file {path.name} there.")
    bundled = bundled_npz(flag, size)
    if bundled is not None:
        logger.info("%s is not in %s (from %s): using the copy bundled with the project, %s",
                    path.name, directory, origin, bundled)
        return bundled

    reason = "downloading is disabled (download=False)"
    if download:
        created = [d for d in (directory, *directory.parents) if not d.exists()]  # deepest first
        try:
            _download_with_medmnist(flag, size, directory)
        except Exception as error:  # noqa: BLE001 - any failure becomes the same actionable message
            reason = f"the download failed: {_root_cause(error)}"
            for folder in created:  # leave no empty folders behind at a mistyped path
                with contextlib.suppress(OSError):
                    folder.rmdir()
        else:
            if path.is_file():
                return path
            reason = "the download finished without producing the file"
    raise MedMNISTDataError(
        f"MedMNIST file {path.name} ({flag}, {size} px) not found in {directory} (from {origin}); {reason}.\n"
        f"  Get it from {file_url(flag, size)}\n"
        f"  (MD5 {expected_md5(flag, size)}, see {HOMEPAGE}) and place it, under exactly that name, at\n"
        f"  {path}\n"
        f"  or pass data_dir=... / set ${DATA_DIR_ENV} to the folder that holds it."
    )


def _root_cause(error: BaseException) -> str:
    """The innermost exception's message: medmnist hides the network error behind a generic RuntimeError."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return f"{type(error).__name__}: {error}".strip()


def _download_with_medmnist(flag: str, size: int, directory: Path) -> None:
    """Download through medmnist's own `download()` (its URL, MD5 check and torchvision downloader).

    The file lands in a private temporary folder first and is renamed into place, so an interrupted download never
    leaves a partial `*.npz` behind and two processes downloading at once do not corrupt each other.
    """
    import medmnist

    directory.mkdir(parents=True, exist_ok=True)
    dataset_class = getattr(medmnist, INFO[flag]["python_class"])
    # Not `dataset_class(download=True)`: its __init__ would also load a whole split into memory.
    downloader = dataset_class.__new__(dataset_class)
    downloader.info = INFO[flag]
    downloader.size, downloader.size_flag = size, _suffix(size)
    name = npz_filename(flag, size)
    logger.info("Downloading %s from %s into %s", name, file_url(flag, size), directory)
    previous_timeout = socket.getdefaulttimeout()
    with tempfile.TemporaryDirectory(prefix=".download-", dir=directory) as staging:
        downloader.root = staging
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            downloader.download()
        finally:
            socket.setdefaulttimeout(previous_timeout)
        os.replace(Path(staging) / name, directory / name)


def file_md5(path: str | os.PathLike, memo_dir: str | os.PathLike | None = None) -> str:
    """MD5 of a file, read in 1 MiB chunks.

    With `memo_dir`, the result is remembered there keyed by (real path, size, mtime), so the 224 px files (gigabytes)
    are hashed once, not on every load. A file rewritten in place keeps neither its size nor its mtime in practice.
    """
    path = Path(path)
    stat = path.stat()
    memo_file = None
    key = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if memo_dir is not None:
        digest = hashlib.sha1(key["path"].encode()).hexdigest()[:16]
        memo_file = Path(memo_dir) / "md5" / f"{path.name}-{digest}.json"
        try:
            memo = json.loads(memo_file.read_text())
            if {k: memo.get(k) for k in key} == key:
                return memo["md5"]
        except (OSError, ValueError, KeyError):
            pass
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            md5.update(chunk)
    result = md5.hexdigest()
    if memo_file is not None:
        try:
            memo_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo_file.with_name(f".{memo_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps({**key, "md5": result}))
            os.replace(tmp, memo_file)
        except OSError:  # a read-only cache only costs a re-hash next time
            pass
    return result


def verify_npz_checksum(
    path: str | os.PathLike,
    flag: str,
    size: int = 28,
    verify_checksum: bool = True,
    memo_dir: str | os.PathLike | None = None,
) -> str:
    """Return the file's actual MD5; raise `MedMNISTDataError` if it differs from `medmnist.INFO`.

    `verify_checksum=False` skips the comparison (for synthetic or re-packed files) and logs a warning saying so.
    """
    path = Path(path)
    actual = file_md5(path, memo_dir)
    expected = expected_md5(flag, size)
    if actual == expected:
        return actual
    if not verify_checksum:
        logger.warning(
            "MD5 check SKIPPED for %s (verify_checksum=False): actual %s, medmnist.INFO expects %s.",
            path, actual, expected,
        )
        return actual
    raise MedMNISTDataError(
        f"MD5 mismatch for {path}: expected {expected} (medmnist.INFO[{flag!r}]), got {actual} "
        f"({path.stat().st_size} bytes). The file is truncated, corrupt or not the official release. "
        + repair_hint(path, flag, size) + ", or skip the check to use it anyway (--no_verify_checksum on the command "
        "line, verify_checksum=False in Python)."
    )


def repair_hint(path: str | os.PathLike, flag: str, size: int = 28) -> str:
    """How to replace a damaged file: restore the bundled copy from the project, or download the file again."""
    if is_bundled(path):
        return (f"It is the copy bundled with the project: restore it (`git checkout -- data/bundled/{Path(path).name}` "
                f"in the project's folder, or a fresh copy of the project), or pass data_dir=... / --data_dir to a "
                f"folder that holds an intact {Path(path).name}")
    return f"Delete it and download it again from {file_url(flag, size)}"

