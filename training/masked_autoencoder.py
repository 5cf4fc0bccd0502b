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

import torch
import torch.nn.functional as F
from torch import nn

from models.modeling_vit import MedViTForImageClassification, MedViTLayer, patchify


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
        # The encoder: the classifier's own modules (shared, trained in place), not its head's pooling and classifier,
        # which MAE does not use (DistributedDataParallel requires every parameter of the module to get a gradient).
        self.embeddings, self.layers, self.final_norm = model.embeddings, model.layers, model.head.norm
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
            tokens = layer(tokens)
        tokens = self.final_norm(tokens)[:, first_grid_token:]

        # The decoder: visible tokens back in place, the mask token everywhere else.
        decoded = self.mask_token.to(tokens.dtype).expand(batch, self.num_patches, -1).clone()
        decoded = decoded.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, decoded.shape[-1]),
                                  self.decoder_embed(tokens).to(decoded.dtype))
        decoded = decoded + self.decoder_position_embeddings
        for layer in self.decoder_layers:
            decoded = layer(decoded)
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
