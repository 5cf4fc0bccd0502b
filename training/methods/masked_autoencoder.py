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
under a mean squared error. The decoder is a training-only module: after pre-training it is dropped and the
classifier keeps the encoder's weights.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

import data
from models.modeling_vit import MedViTForImageClassification, MedViTLayer, patchify

from ..checkpointing import MAE_SCHEDULER, read_trainer_state, save_mae_checkpoint
from ..optimization import build_optimizer, build_scheduler
from .base import TrainingMethod

logger = logging.getLogger(__name__)


class MaskedAutoencoder(nn.Module):
    """A classifier's encoder plus MAE's decoder; `forward(pixel_values)` returns the reconstruction loss.

    Args:
        model: the `MedViTForImageClassification` to pre-train (its weights are trained in place).
        mask_ratio: the fraction of patches hidden from the encoder in every image (MAE: 0.75).
        decoder_layers: transformer blocks of the decoder (MAE: 8 at width 512 for ViT-L; one suffices for
            a 64-wide model on 28-px images).
        normalize_target: predict each patch's pixels normalised by the patch's own mean and standard deviation
            (MAE's `norm_pix_loss`: texture and edges), or else the pixels as the model sees them (brightness too).
    """

    def __init__(self, model: MedViTForImageClassification, mask_ratio: float = 0.75, decoder_layers: int = 1,
                 normalize_target: bool = True):
        super().__init__()
        config = model.config
        self.check_config(config, mask_ratio)
        # The encoder: the base model's own modules (shared, trained in place), not its pooling nor the classifier's
        # head, which MAE does not use (DistributedDataParallel requires every parameter of the module to get a
        # gradient).
        encoder = model.base_model
        self.embeddings, self.layers, self.final_norm = encoder.embeddings, encoder.layers, encoder.layernorm
        self.mask_ratio = mask_ratio
        self.normalize_target = normalize_target
        self.patch_size = config.patch_size
        self.num_patches = config.num_patches
        width = config.hidden_size
        # The decoder's blocks: plain attention as in MAE, no dropout.
        decoder_config = copy.deepcopy(config)
        decoder_config.use_locality_self_attention = False
        decoder_config.hidden_dropout_prob = decoder_config.attention_probs_dropout_prob = 0.0
        self.decoder_embed = nn.Linear(width, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_position_embeddings = nn.Parameter(torch.zeros(1, self.num_patches, width))
        self.decoder_layers = nn.ModuleList([MedViTLayer(decoder_config, 0.0) for _ in range(decoder_layers)])
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_prediction = nn.Linear(width, self.patch_size**2 * config.num_channels)
        for parameter in (self.mask_token, self.decoder_position_embeddings):
            nn.init.trunc_normal_(parameter, std=config.initializer_range)
        for module in [self.decoder_embed, self.decoder_prediction, *self.decoder_layers.modules()]:
            model._init_weights(module)  # the classifier's own initialisation, module by module

    @staticmethod
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

    def random_masking(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, N) bool, True where a patch is hidden: exactly round(mask_ratio · N) per image, drawn from the global
        RNG (seeded by train.py)."""
        num_masked = round(self.mask_ratio * self.num_patches)
        ranks = torch.rand(batch_size, self.num_patches, device=device).argsort(dim=1)
        return ranks < num_masked

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The mean squared error of the predicted pixels over the hidden patches (a scalar)."""
        prediction, target, masked = self.predict(pixel_values)
        per_patch = (prediction - target).pow(2).mean(dim=-1)
        return (per_patch * masked).sum() / masked.sum()

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the images with their hidden patches blanked, the images with the hidden patches as predicted), both
        (B, C, H, W) in the model's input space, to look at: a normalised prediction is put back on each patch's true
        mean and standard deviation (as in MAE's figures), so what it shows is the predicted texture."""
        prediction, _, masked = self.predict(pixel_values)
        p = self.patch_size
        patches = patchify(pixel_values.float(), p)
        if self.normalize_target:
            prediction = (prediction * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
                          + patches.mean(dim=-1, keepdim=True))
        hidden = masked.unsqueeze(-1)
        blanked = unpatchify(patches.masked_fill(hidden, 0.0), p, pixel_values.shape)
        filled = unpatchify(torch.where(hidden, prediction, patches), p, pixel_values.shape)
        return blanked, filled

    def predict(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction, target, mask): the decoder's (B, N, p·p·C) pixels for every patch, the target they are
        compared with, and the (B, N) bool mask of the patches hidden from the encoder this time."""
        p = self.patch_size
        batch, _, height, width = pixel_values.shape
        masked = self.random_masking(batch, pixel_values.device)  # (B, N)
        grid = masked.view(batch, 1, height // p, width // p).float()
        pixel_mask = F.interpolate(grid, scale_factor=p, mode="nearest").bool()  # (B, 1, H, W)
        hidden_pixels = pixel_values.masked_fill(pixel_mask, 0.0)

        embeddings = self.embeddings
        first_grid_token = 1 if embeddings.cls_token is not None else 0
        tokens = embeddings.tokenizer(hidden_pixels) + embeddings.position_embeddings[:, first_grid_token:]
        num_visible = self.num_patches - int(masked[0].sum())
        visible_index = (~masked).nonzero()[:, 1].view(batch, num_visible)  # ascending grid order
        tokens = tokens.gather(1, visible_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if embeddings.cls_token is not None:
            cls = embeddings.cls_token + embeddings.position_embeddings[:, :1]
            tokens = torch.cat([cls.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = embeddings.dropout(tokens)
        for layer in self.layers:
            tokens, _ = layer(tokens)
        tokens = self.final_norm(tokens)[:, first_grid_token:]

        # The decoder: visible tokens back in place, the mask token everywhere else.
        decoded = self.mask_token.to(tokens.dtype).expand(batch, self.num_patches, -1).clone()
        decoded = decoded.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, decoded.shape[-1]),
                                  self.decoder_embed(tokens).to(decoded.dtype))
        decoded = decoded + self.decoder_position_embeddings
        for layer in self.decoder_layers:
            decoded, _ = layer(decoded)
        prediction = self.decoder_prediction(self.decoder_norm(decoded)).float()  # (B, N, p·p·C)

        target = patchify(pixel_values.float(), p)
        if self.normalize_target:
            target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return prediction, target, masked


def unpatchify(patches: torch.Tensor, patch_size: int, shape: torch.Size) -> torch.Tensor:
    """The inverse of `patchify`: (B, N, p · p · C) -> (B, C, H, W) of `shape`."""
    b, c, h, w = shape
    p = patch_size
    images = patches.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(b, c, h, w)


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
        MaskedAutoencoder.check_config(run.model.config, self.mask_ratio)

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
        autoencoder = MaskedAutoencoder(run.model, self.mask_ratio,
                                        normalize_target=self.target == "patch_normalized").to(accelerator.device)
        loader = data.training_loader(len(run.train_split), args.per_device_train_batch_size, seed=args.seed + 1,
                                      num_processes=accelerator.num_processes)
        optimizer = build_optimizer(args, autoencoder)
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
                loss = autoencoder(run.train_transform(images, train=True, sample_keys=keys)) * samples["share"]
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
