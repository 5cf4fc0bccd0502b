"""Atomic training checkpoints (`accelerator.save_state`) with rotation that never deletes the best one.

A checkpoint is written to `checkpoints/.tmp-<name>` and renamed to `checkpoints/<name>` only when complete, so a
crash while saving leaves the previous checkpoints intact. `<name>` is `step_<global step>`; `trainer_state.json`
inside holds what accelerate does not save (epoch, step, best metric so far, the history of validation metrics), and
`best_model.safetensors` the weights of the best model so far, so that a resumed run ends exactly as a straight one.

Masked-autoencoder pre-training (`train.py --mae_epochs`) is checkpointed the same way after each of its epochs, as
`checkpoints/mae_epoch_<epoch>` (the autoencoder with its decoder, its optimizer, data order and random states, and
`mae_scheduler.pt`): `latest` resumes the newest supervised checkpoint, or else the newest pre-training one, so a
long pre-training can be stopped and continued too.
"""

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.integrity import has_manifest, verify_manifest, write_manifest

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"
BEST_WEIGHTS = "best_model.safetensors"
MAE_SCHEDULER = "mae_scheduler.pt"
METHOD_STATE_PREFIX = "method_"  # + <method name>.safetensors: a training method's state (training/methods)
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
MAE_CHECKPOINT_PATTERN = re.compile(r"^mae_epoch_(\d+)$")


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path, pattern: re.Pattern = CHECKPOINT_PATTERN) -> list[Path]:
    """Complete checkpoints, oldest first: the supervised ones, or with `MAE_CHECKPOINT_PATTERN` the pre-training ones."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if pattern.match(p.name) and (p / TRAINER_STATE).is_file() and has_manifest(p)]
    return sorted(found, key=lambda p: int(pattern.match(p.name).group(1)))


def has_checkpoint(output_dir: str | Path) -> bool:
    """Whether `--resume_from_checkpoint latest` has something to resume under output_dir."""
    return bool(list_checkpoints(output_dir) or list_checkpoints(output_dir, MAE_CHECKPOINT_PATTERN))


def is_mae_state(trainer_state: dict) -> bool:
    """Whether a checkpoint's trainer state is a pre-training one (`save_mae_checkpoint`)."""
    return trainer_state.get("stage") == "mae"


def _tensor_writer(tensors: dict[str, torch.Tensor]):
    return lambda path: save_file({k: v.detach().contiguous() for k, v in tensors.items()}, path)


def save_checkpoint(
    accelerator, output_dir: str | Path, trainer_state: dict, keep_last: int, best_weights: dict | None,
    method_states: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Save the full training state atomically; keep the `keep_last` newest and the best. Call on every process.

    `method_states` ({method name: tensors}) go to `method_<name>.safetensors`, read back by `read_method_states`."""
    final = checkpoint_dir(output_dir) / f"step_{trainer_state['global_step']}"
    files = {f"{METHOD_STATE_PREFIX}{name}.safetensors": _tensor_writer(tensors)
             for name, tensors in (method_states or {}).items()}
    if best_weights is not None:
        files[BEST_WEIGHTS] = _tensor_writer(best_weights)
    save_atomically(accelerator, final, trainer_state, files)
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep_last, trainer_state.get("best_checkpoint"))
    accelerator.wait_for_everyone()
    return final


def save_mae_checkpoint(accelerator, output_dir: str | Path, mae_state: dict, scheduler, keep_last: int) -> Path:
    """Save the pre-training state after epoch `mae_state['epoch']` atomically (the autoencoder, optimizer and loader
    must be the ones `accelerator.prepare` holds); keep the `keep_last` newest. Call on every process."""
    final = checkpoint_dir(output_dir) / f"mae_epoch_{mae_state['epoch']}"
    save_atomically(accelerator, final, {**mae_state, "stage": "mae"},
                    {MAE_SCHEDULER: lambda path: torch.save(scheduler.state_dict(), path)})
    if accelerator.is_main_process:
        prune_checkpoints(output_dir, keep_last, None, MAE_CHECKPOINT_PATTERN)
    accelerator.wait_for_everyone()
    return final


def save_atomically(accelerator, final: Path, trainer_state: dict, extra_files: dict) -> None:
    """accelerate's state, then `extra_files` ({name: write(path)}, main process), then the trainer state, into a
    temporary folder renamed to `final` only when complete."""
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, write in extra_files.items():
            write(tmp / name)
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2))
        # The manifest is written last: a folder without it is never taken for a checkpoint.
        write_manifest(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


def prune_checkpoints(output_dir: str | Path, keep_last: int, best_name: str | None,
                      pattern: re.Pattern = CHECKPOINT_PATTERN) -> None:
    checkpoints = list_checkpoints(output_dir, pattern)
    for old in checkpoints[: max(len(checkpoints) - keep_last, 0)]:
        if old.name != best_name:
            shutil.rmtree(old)


def resolve_checkpoint(resume_from: str, output_dir: str | Path) -> Path:
    """`latest` -> the newest complete checkpoint under output_dir (a supervised one if any, else a pre-training one);
    otherwise a checkpoint folder path."""
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir) or list_checkpoints(output_dir, MAE_CHECKPOINT_PATTERN)
        for checkpoint in reversed(checkpoints):  # the newest that verifies
            try:
                verify_manifest(checkpoint)
            except ValueError as error:
                logger.warning(f"--resume_from_checkpoint latest: skipping {checkpoint.name}: {error}")
                continue
            return checkpoint
        raise ValueError(
            f"--resume_from_checkpoint latest: no complete, intact checkpoint under {checkpoint_dir(output_dir)}"
            f"{' (each failed its check, see the warnings above)' if checkpoints else ''}. Pass the --output_dir of "
            "the run to resume, or a checkpoint folder."
        )
    path = Path(resume_from)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {resume_from}: not a complete checkpoint (no {TRAINER_STATE} in it). "
            "Checkpoints are the folders output_dir/checkpoints/step_<N> (or mae_epoch_<N>), or use 'latest'."
        )
    verify_manifest(path, f"--resume_from_checkpoint {resume_from}")
    return path


def read_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint) / TRAINER_STATE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error}): the checkpoint is damaged. "
                         "Resume from an older checkpoint (pass its folder) or start a new --output_dir.") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a trainer state: the checkpoint is damaged.")
    return state


def read_best_weights(checkpoint: Path) -> dict[str, torch.Tensor] | None:
    path = checkpoint / BEST_WEIGHTS
    return load_file(path) if path.is_file() else None


def read_method_states(checkpoint: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{method name: tensors} of the training methods' states saved in a checkpoint."""
    return {path.name[len(METHOD_STATE_PREFIX):-len(".safetensors")]: load_file(path)
            for path in sorted(Path(checkpoint).glob(f"{METHOD_STATE_PREFIX}*.safetensors"))}


def check_checkpoint_files(checkpoint: Path, num_processes: int) -> None:
    """Refuse (ValueError naming the file) a checkpoint that lacks a file resuming needs or holds one that does not
    load as plain tensors and numbers. Pickled files are read the restricted way (`weights_only`): a file that would
    run code when unpickled is refused, never executed. accelerate itself only logs a missing random state and goes
    on, which would change every later random draw."""
    from accelerate.utils import load

    checkpoint = Path(checkpoint)
    needed = ["model.safetensors", "optimizer.bin", "scheduler.bin",
              *(f"random_states_{index}.pkl" for index in range(num_processes))]
    optional = [path.name for path in sorted(checkpoint.glob("*.safetensors")) if path.name not in needed]
    for name in [*needed, *optional]:
        path = checkpoint / name
        if not path.is_file():
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: {name} is missing, so the run cannot continue "
                             "exactly. Resume from an older checkpoint (pass its folder) or start a new --output_dir.")
        try:
            load_file(path) if name.endswith(".safetensors") else load(path, map_location="cpu")
        except Exception as error:  # noqa: BLE001 - UnpicklingError, SafetensorError, EOFError, RuntimeError, ...
            raise ValueError(f"--resume_from_checkpoint {checkpoint}: {name} cannot be loaded safely "
                             f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); it is damaged or holds "
                             "more than tensors. Resume from an older checkpoint or start a new --output_dir.") from None
