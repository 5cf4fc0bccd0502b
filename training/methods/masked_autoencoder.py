"""Masked-autoencoder pre-training of a ViT on its own training images (He, Chen, Xie, Li, Dollár & Girshick 2022,
"Masked Autoencoders Are Scalable Vision Learners"), the self-supervised stage `train.py --mae_epochs` runs before
the supervised one. No labels and no other data are used: the model is still trained from scratch.

Each step hides a random `mask_ratio` of the patches of every image. The masked patches' pixels are set to 0 (the
data set's mean after normalisation) before tokenizing, so that the tokenizer cannot see them: SPT's shifted copies
would otherwise carry a masked patch's edges into its neighbours' tokens, and the convolutional tokenizer's 3×3
convolutions and max-pools (`vit_conv_lsa`) its content (SimMIM's way of masking a tokenizer that mixes pixels
across patches; a visible token next to a hidden patch sees zeros there). The encoder (the classifier's own
tokenizer, position embeddings, transformer blocks and final LayerNorm) runs on the visible tokens only; a small
decoder (a linear map, a mask token, its own position embeddings, one transformer block, a linear map to pixels)
sees every position and predicts each masked patch's pixels (by default normalised per patch, MAE's `norm_pix_loss`)
under a mean squared error. The model is `models.MedViTForMaskedImageModeling` around the classifier's own base
model; after pre-training it is saved as `output_dir/mae` (a model folder with the run's image processor, which
`MedViTForImageClassification.from_pretrained` or `train.py --model_name_or_path` fine-tunes) and the classifier
goes on with the pre-trained encoder.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Literal

import torch
from tqdm.auto import tqdm

import data
from models.modeling_vit import MedViTForImageClassification, MedViTForMaskedImageModeling

from ..checkpointing import MAE_SCHEDULER, read_trainer_state, save_mae_checkpoint
from ..optimization import build_optimizer, build_scheduler, fused_optimizer_pays
from .base import TrainingMethod

logger = logging.getLogger(__name__)
MAE_FOLDER = "mae"  # output_dir/mae: the pre-trained MedViTForMaskedImageModeling and the run's image processor


def check_config(config, mask_ratio: float) -> None:
    """Raise ValueError, saying what to change, if this model cannot be pre-trained so."""
    if getattr(config, "model_type", None) != "medmnist_vit":
        raise ValueError("MAE pre-training (--mae_epochs) needs a ViT: --model vit, vit_lsa or vit_conv_lsa.")
    if config.pooling == "flatten":
        # The head reads every token in its place; MAE's encoder sees only the visible ones.
        raise ValueError("MAE pre-training (--mae_epochs) needs a head that pools the tokens: pooling mean, "
                         "attention or cls, not pooling=flatten.")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"--mae_mask_ratio must lie in (0, 1) (MAE: 0.75), got {mask_ratio}.")


def masked_image_model(model: MedViTForImageClassification, mask_ratio: float = 0.75,
                       normalize_target: bool = True) -> MedViTForMaskedImageModeling:
    """A `MedViTForMaskedImageModeling` around the classifier's base model (shared: pre-training trains the
    classifier's encoder in place) with a new decoder; its config is the classifier's with the MAE settings."""
    check_config(model.config, mask_ratio)
    config = copy.deepcopy(model.config)
    config.mae_mask_ratio, config.mae_norm_pix_loss = mask_ratio, normalize_target
    return MedViTForMaskedImageModeling(config, vit=model.base_model)


@dataclasses.dataclass
class MaskedAutoencoderArguments:
    """Masked-autoencoder pre-training before the supervised stage (training/methods/masked_autoencoder.py)."""

    _argument_group_name = "masked-autoencoder pre-training (ViTs; self-supervised, on the training images)"
    mae_epochs: int | None = dataclasses.field(default=None, metadata={"help": (
        "First pre-train the encoder as a masked autoencoder (MAE, He et al. 2022) on the training images for this "
        "many epochs, without labels, then train as usual; 0 = off. Default: the recipe's.")})
    mae_mask_ratio: float = dataclasses.field(default=0.75, metadata={"help": "Fraction of patches hidden."})
    mae_target: Literal["patch_normalized", "pixels"] = dataclasses.field(default="patch_normalized", metadata={
        "help": "What MAE reconstructs: each hidden patch's pixels normalised by its own mean and std (MAE's default: "
                "texture and edges) or the pixels as the model sees them (brightness too)."})


class MaskedAutoencoderPretraining(TrainingMethod):
    """`mae_epochs` of MAE pre-training on the (augmented) training images before the supervised loop.

    It trains the classifier's tokenizer, position embeddings and blocks in place; the decoder is dropped afterwards.
    Same optimizer, peak learning rate and weight decay as the supervised stage; warm-up over 10% of the steps, then
    cosine. Checkpointed after every epoch as `checkpoints/mae_epoch_<n>` (stage "mae"), which `latest` resumes when
    no supervised checkpoint exists yet.
    """

    name = "mae"
    arguments = MaskedAutoencoderArguments

    def __init__(self, epochs: int, mask_ratio: float, target: str):
        self.epochs, self.mask_ratio, self.target = epochs, mask_ratio, target
        self.losses: list[float] = []
        self.pictures = None  # (originals, hidden patches blanked, hidden patches predicted), to look at
        self.resume_from = None

    @classmethod
    def from_arguments(cls, args) -> "MaskedAutoencoderPretraining | None":
        if args.mae_epochs is not None and args.mae_epochs < 0:
            raise ValueError(f"--mae_epochs must be >= 0 (0 = no pre-training), got {args.mae_epochs}.")
        return cls(args.mae_epochs, args.mae_mask_ratio, args.mae_target) if args.mae_epochs else None

    def settings(self) -> dict:
        """What a pre-training checkpoint must share with the run that resumes it."""
        return {"epochs": self.epochs, "mask_ratio": self.mask_ratio, "target": self.target}

    def check(self, run) -> None:
        check_config(run.model.config, self.mask_ratio)

    def resume_stage(self, checkpoint, state: dict) -> None:
        """Continue an interrupted pre-training from `checkpoint` (its settings must be this run's)."""
        saved = state["mae_settings"]
        if saved != self.settings():
            raise ValueError(
                f"--resume_from_checkpoint {checkpoint}: MAE pre-training checkpoint made with --mae_epochs "
                f"{saved['epochs']} --mae_mask_ratio {saved['mask_ratio']} --mae_target {saved['target']}, this run "
                f"has {self.epochs}, {self.mask_ratio}, {self.target}; resume with the same settings, or start a new "
                "--output_dir.")
        self.resume_from = checkpoint

    def before_training(self, run) -> None:
        args, accelerator = run.args, run.accelerator
        autoencoder = masked_image_model(run.model, self.mask_ratio,
                                         normalize_target=self.target == "patch_normalized").to(accelerator.device)
        # The classifier's pooling has no part in pre-training; frozen meanwhile, as DistributedDataParallel requires
        # every trainable parameter of the module to get a gradient.
        pooler = run.model.base_model.pooler
        frozen = [p for p in pooler.parameters() if p.requires_grad] if pooler is not None else []
        for parameter in frozen:
            parameter.requires_grad_(False)
        loader = data.training_loader(len(run.train_split), args.per_device_train_batch_size, seed=args.seed + 1,
                                      num_processes=accelerator.num_processes)
        optimizer = build_optimizer(args, autoencoder, fused=fused_optimizer_pays(accelerator))
        autoencoder, optimizer, loader = accelerator.prepare(autoencoder, optimizer, loader)
        steps = self.epochs * len(loader)
        scheduler = build_scheduler("cosine", optimizer, round(0.1 * steps), steps)
        if self.resume_from is not None:
            accelerator.load_state(str(self.resume_from))
            scheduler.load_state_dict(torch.load(self.resume_from / MAE_SCHEDULER, weights_only=True))
            self.losses = read_trainer_state(self.resume_from)["mae_losses"]
            if accelerator.is_main_process:
                logger.info(f"Resumed MAE pre-training from {self.resume_from}: epoch {len(self.losses)}")
        progress = tqdm(total=steps, initial=len(self.losses) * len(loader), desc="MAE pre-training",
                        disable=not accelerator.is_local_main_process)
        autoencoder.train()
        for epoch in range(len(self.losses), self.epochs):
            loader.set_epoch(epoch)
            epoch_loss = torch.zeros((), device=accelerator.device)
            for samples in loader:
                images, _ = run.train_split.batch(samples["indices"])
                keys = data.sample_keys(args.seed + 1, epoch, samples["positions"])
                loss = autoencoder(run.train_transform(images, train=True, sample_keys=keys)).loss * samples["share"]
                accelerator.backward(loss)
                if args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(autoencoder.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                epoch_loss += loss.detach()
                progress.update(1)
            mean_loss = accelerator.reduce(epoch_loss, reduction="mean").item() / len(loader)
            if not math.isfinite(mean_loss):
                raise RuntimeError(f"MAE pre-training loss became {mean_loss} in epoch {epoch + 1}: lower "
                                   "--learning_rate.")
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            self.losses.append(mean_loss)
            save_mae_checkpoint(accelerator, run.output_dir, {
                **run.identity, "mae_settings": self.settings(), "epoch": epoch + 1, "mae_losses": self.losses,
                "wall_clock_seconds": run.wall_clock()}, scheduler, args.checkpoints_total_limit)
        progress.close()
        if accelerator.is_main_process:
            logger.info(f"MAE pre-training: {self.epochs} epochs, final reconstruction loss {self.losses[-1]:.4f}")
        # From a forked RNG and in eval mode (no stochastic depth): looking must not change what the run trains on.
        originals = run.train_transform(run.train_split.images[:8], train=False)
        autoencoder.eval()
        with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
            self.pictures = (originals, *accelerator.unwrap_model(autoencoder).reconstruct(originals))
        # The pre-trained model as a folder of its own (`from_pretrained` of the classifier takes its encoder).
        from ..trainer import save_model_folder  # the trainer imports the methods

        save_model_folder(accelerator, autoencoder, run.processor, run.output_dir / MAE_FOLDER)
        accelerator.wait_for_everyone()
        for parameter in frozen:
            parameter.requires_grad_(True)
        # Forget the autoencoder, its optimizer and loader: only the supervised stage's objects are checkpointed.
        accelerator.free_memory()

    def log_start(self, accelerator, writer, to_pixels) -> None:
        for epoch, loss in enumerate(self.losses):
            accelerator.log({"pretrain/mae_loss": loss}, step=epoch + 1)
        if writer is not None and self.pictures is not None:
            import torchvision

            # Rows: training images; their hidden patches blanked; the hidden patches as the decoder predicts them.
            writer.add_image("pretrain/mae_reconstructions", torchvision.utils.make_grid(
                to_pixels(torch.cat(self.pictures)), nrow=len(self.pictures[0])), len(self.losses))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"losses": torch.tensor(self.losses, dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.losses = state["losses"].tolist()

    def record(self) -> dict:
        return {"mae_losses": self.losses}
