"""Knowledge distillation from a trained teacher (Hinton et al. 2015; DeiT, Touvron et al. 2021).

The student learns from the labels and from a frozen teacher's predictions on the same augmented batch:

    loss = (1 − α) · task_loss(student, labels) + α · distillation_loss(student, teacher)

`hard`: cross-entropy against the teacher's predicted class (DeiT's choice: it beat soft targets there).
`soft`: KL divergence between the softened distributions, softmax(z / T), scaled by T² so that gradients keep
their size as T changes. A convolutional teacher hands its locality prior to a ViT student through its
predictions, which is what a ViT trained on a few hundred images lacks. Several teachers (e.g. CNNs of several
seeds) teach as one, through the mean of their logits.
"""

import dataclasses
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from models.checkpoint_fit import load_for_inference

from ..run_records import RUN_CONFIG, read_run_config, run_split
from .base import Batch, TrainingMethod

DISTILLATION_TYPES = ("hard", "soft")


class Teacher:
    """A trained model, frozen, that sees the student's augmented batch in its own input geometry.

    Args:
        name_or_path: a `save_pretrained` folder (e.g. `runs/<run>/best`) or a Hub id.
        info: the `MedMNISTInfo` of the data set; the teacher must fit it (channels, labels, task), else
            `CheckpointError` says how it does not.
    """

    def __init__(self, name_or_path: str, info, trust_remote_code: bool = False):
        checkpoint = load_for_inference(name_or_path, info, name=f"The teacher {name_or_path!r}",
                                        trust_remote_code=trust_remote_code)
        self.model = checkpoint.model.requires_grad_(False)
        self.image_size, self.mean, self.std = checkpoint.image_size, checkpoint.mean, checkpoint.std
        self.scale = self.shift = None

    def adapt_inputs(self, student_mean, student_std, device: torch.device) -> "Teacher":
        """Inputs normalised as (x − student_mean) / student_std are re-normalised with the teacher's statistics."""
        view = lambda values: torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)  # noqa: E731
        self.scale = view(student_std) / view(self.std)
        self.shift = (view(student_mean) - view(self.mean)) / view(self.std)
        self.model.to(device)
        return self

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher logits (float32) for a batch of student inputs."""
        inputs = pixel_values.float() * self.scale + self.shift
        if inputs.shape[-1] != self.image_size:
            inputs = F.interpolate(inputs, size=(self.image_size, self.image_size), mode="bilinear",
                                   align_corners=False, antialias=True)
        return self.model(pixel_values=inputs).logits.float()


class TeacherEnsemble:
    """Several `Teacher`s whose logits are averaged; with one, exactly that teacher.

    Args:
        names_or_paths: one or more `save_pretrained` folders or Hub ids (each as `Teacher` takes it).
        info: the `MedMNISTInfo` of the data set, which every teacher must fit.
    """

    def __init__(self, names_or_paths: list[str], info, trust_remote_code: bool = False):
        if not names_or_paths:
            raise ValueError("--teacher_model_name_or_path needs at least one trained model.")
        self.members = [Teacher(name_or_path, info, trust_remote_code) for name_or_path in names_or_paths]

    def adapt_inputs(self, student_mean, student_std, device: torch.device) -> "TeacherEnsemble":
        for member in self.members:
            member.adapt_inputs(student_mean, student_std, device)
        return self

    @torch.no_grad()
    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The members' mean logits (float32) for a batch of student inputs."""
        return torch.stack([member(pixel_values) for member in self.members]).mean(dim=0)


def teacher_record(names_or_paths: list[str] | None) -> str | list[str] | None:
    """What a run's results record as its teacher: the one path as a string (as runs with one teacher always have),
    the list when several teach."""
    if not names_or_paths:
        return None
    return names_or_paths[0] if len(names_or_paths) == 1 else list(names_or_paths)


def check_teacher_held_out_the_same_fold(name_or_path: str, dataset: str, folds: int, fold: int,
                                         split_seed: int = 0) -> None:
    """A cross-validation fold run may only learn from a teacher trained on the same fold's training part: any other
    teacher (the official splits, another fold, another partition into folds) has seen this fold's held-out images,
    and its predictions would leak them into the student's validation figures. Checked against the `run_config.json`
    that train.py writes beside `best` and `last`; a ValueError says what is wrong otherwise."""
    run_config = Path(name_or_path).parent / RUN_CONFIG
    wanted = (f"--dataset {dataset} --cross_validation_folds {folds} --cross_validation_fold {fold} "
              f"--cross_validation_split_seed {split_seed}")
    fix = (f"Use a teacher that train.py trained with {wanted}, e.g. runs/cv/<teacher setting>/fold{fold}/best "
           "(in experiments/cross_validate.py --train_args, write fold{fold} and each fold gets its own).")
    if not run_config.is_file():
        raise ValueError(f"--teacher_model_name_or_path {name_or_path!r} for cross-validation fold {fold}: there is no "
                         f"run_config.json beside it, so nothing shows that it never saw this fold's held-out "
                         f"images. {fix}")
    found = run_split(read_run_config(run_config.parent))
    if found != (dataset, folds, fold, split_seed):
        raise ValueError(f"--teacher_model_name_or_path {name_or_path!r} was trained with --dataset {found[0]} "
                         f"--cross_validation_folds {found[1]} --cross_validation_fold {found[2]} "
                         f"--cross_validation_split_seed {found[3]}, not {wanted}: it has seen this fold's held-out "
                         f"images. {fix}")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, temperature: float,
                      multilabel: bool) -> torch.Tensor:
    """The student's loss against the teacher's predictions (`kind` hard or soft, as the module docstring says)."""
    student_logits = student_logits.float()
    if kind == "hard":
        if multilabel:
            return F.binary_cross_entropy_with_logits(student_logits, (teacher_logits > 0).float())
        return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))
    t = temperature
    if multilabel:
        return F.binary_cross_entropy_with_logits(student_logits / t, torch.sigmoid(teacher_logits / t)) * t * t
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


@dataclasses.dataclass
class DistillationArguments:
    """Knowledge distillation from trained teachers (training/methods/distillation.py)."""

    _argument_group_name = "distillation (learn from a trained teacher's predictions as well as from the labels)"
    teacher_model_name_or_path: list[str] | None = dataclasses.field(default=None, metadata={"help": (
        "Distil from this trained model (a runs/<run>/best folder or Hub id, trained on the same data set): the loss "
        "becomes (1 - alpha) * task loss + alpha * distillation loss. Several: they teach as one, the mean of their "
        "logits (an ensemble, e.g. CNNs of several seeds).")})
    distillation_type: Literal["hard", "soft"] = dataclasses.field(default="hard", metadata={"help": (
        "hard: cross-entropy on the teacher's predicted class (DeiT); soft: KL on softmax(logits / T).")})
    distillation_alpha: float = dataclasses.field(default=0.5, metadata={"help": "Weight of the distillation loss, "
                                                                                 "in [0, 1]."})
    distillation_temperature: float = dataclasses.field(default=1.0, metadata={"help": "T of soft distillation."})


class Distillation(TrainingMethod):
    """The student's loss mixed with its loss against a frozen teacher ensemble's logits on the same batch."""

    name = "distillation"
    arguments = DistillationArguments

    def __init__(self, teachers: list[str], kind: str, alpha: float, temperature: float):
        if not 0.0 <= alpha <= 1.0 or temperature <= 0:
            raise ValueError(f"--distillation_alpha must lie in [0, 1] (got {alpha}) and --distillation_temperature "
                             f"must be positive (got {temperature}).")
        self.teachers, self.kind, self.alpha, self.temperature = list(teachers), kind, alpha, temperature
        self.teacher = self.accelerator = self.multilabel = None

    @classmethod
    def from_arguments(cls, args) -> "Distillation | None":
        if not args.teacher_model_name_or_path:
            return None
        return cls(args.teacher_model_name_or_path, args.distillation_type, args.distillation_alpha,
                   args.distillation_temperature)

    def check(self, run) -> None:
        args = run.args
        if args.cross_validation_folds:
            for teacher in self.teachers:
                check_teacher_held_out_the_same_fold(teacher, args.dataset, args.cross_validation_folds,
                                                     args.cross_validation_fold, args.cross_validation_split_seed)
        # A teacher that does not fit the data, or whose code would have to run: ValueError.
        self.teacher = TeacherEnsemble(self.teachers, run.info, run.args.trust_remote_code)
        self.multilabel = run.info.is_multilabel

    def setup(self, run) -> None:
        self.accelerator = run.accelerator
        self.teacher.adapt_inputs(run.mean, run.std, run.accelerator.device)

    def on_batch(self, batch: Batch) -> None:
        with self.accelerator.autocast():
            batch.extras["teacher_logits"] = self.teacher(batch.pixel_values)

    def loss(self, loss, outputs, batch: Batch):
        distilled = distillation_loss(outputs.logits, batch.extras["teacher_logits"], self.kind, self.temperature,
                                      self.multilabel)
        return (1 - self.alpha) * loss + self.alpha * distilled

    def record(self) -> dict:
        return {"teacher": teacher_record(self.teachers)}
