"""SHA-256 manifests of saved folders: every training checkpoint and every saved model folder lists the checksum of each of its files in
`manifest.sha256.json`, written last; loading verifies it and names a damaged, missing or added file.

    write_manifest(folder)          # after everything else is in the folder
    verify_manifest(folder)         # ValueError naming the first file that does not match
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "manifest.sha256.json"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                  if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts)


def write_manifest(folder: str | os.PathLike) -> Path:
    """Record the SHA-256 of every file in `folder` (written through a temporary file, so never half there)."""
    folder = Path(folder)
    manifest = {"algorithm": "sha256", "files": {name: file_sha256(folder / name) for name in _files(folder)}}
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, folder / MANIFEST)
    return folder / MANIFEST


def has_manifest(folder: str | os.PathLike) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def recorded_sha256(folder: str | os.PathLike, name: str) -> str | None:
    """The SHA-256 that `folder`'s manifest records for its file `name` (None if it lists no such file); verify the
    folder first (`verify_manifest`) for the value to describe the file as it is."""
    files = json.loads((Path(folder) / MANIFEST).read_text()).get("files", {})
    return files.get(name)


def verify_manifest(folder: str | os.PathLike, what: str = "") -> None:
    """Raise ValueError if a file of `folder` is missing, added or changed since its manifest was written."""
    folder = Path(folder)
    label = what or str(folder)
    try:
        recorded = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        raise ValueError(f"{label}: no {MANIFEST}, so it cannot be checked (an incomplete save?).") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{label}: {MANIFEST} is damaged ({error}).") from None
    present = _files(folder)
    for name in sorted(set(recorded) - set(present)):
        raise ValueError(f"{label}: {name} is missing (listed in {MANIFEST}).")
    for name in present:
        if name not in recorded:
            raise ValueError(f"{label}: {name} was added after the folder was saved (not in {MANIFEST}).")
        if file_sha256(folder / name) != recorded[name]:
            raise ValueError(f"{label}: {name} is damaged (its SHA-256 differs from {MANIFEST}).")
