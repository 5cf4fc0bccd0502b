"""Dense relative localization (DRLoc), an auxiliary self-supervised loss for Vision Transformers trained on small
data sets (Liu, Sangineto, Bi, Sebe, Lepri & De Nadai, "Efficient Training of Visual Transformers with Small
Datasets", NeurIPS 2021).

For each image, `num_pairs` pairs of output tokens are drawn at random from the final k×k token grid; a small MLP
reads each pair (the two embeddings concatenated) and regresses how far apart the two tokens sit,
(|Δrow| / k, |Δcolumn| / k), under an L1 loss. The classifier loss becomes CE + weight · L_drloc. Solving it needs
embeddings that know where they are and what surrounds them: the spatial knowledge a CNN is built with and a ViT
must learn from few images. The MLP is a training-only module: it is never part of the saved model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RelativeLocalizationHead(nn.Module):
    """The DRLoc regressor and its loss.

    Args:
        hidden_size: width of the transformer's tokens.
        grid_size: k, the side of the square token grid (image_size // patch_size).
        num_pairs: token pairs drawn per image and step (the paper draws 32 to 64).
        mlp_width: width of the MLP's two hidden layers (the paper: 512; 256 here: a 64-wide model needs less).
    """

    def __init__(self, hidden_size: int, grid_size: int, num_pairs: int = 32, mlp_width: int = 256):
        super().__init__()
        if grid_size < 2:
            raise ValueError(f"relative localization needs a token grid of at least 2×2, got {grid_size}×{grid_size}.")
        self.grid_size = grid_size
        self.num_pairs = num_pairs
        self.mlp = nn.Sequential(
            nn.Linear(2 * hidden_size, mlp_width), nn.ReLU(),
            nn.Linear(mlp_width, mlp_width), nn.ReLU(),
            nn.Linear(mlp_width, 2),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """L1 loss of the predicted against the true normalised distances of random token pairs.

        Args:
            tokens: (B, k·k, D) final token embeddings in row-major grid order (no CLS token).
        """
        batch, num_tokens, _ = tokens.shape
        k = self.grid_size
        if num_tokens != k * k:
            raise ValueError(f"expected {k}×{k} = {k * k} tokens, got {num_tokens}.")
        # Two random token indices per pair, drawn from the global RNG (seeded, and saved with every checkpoint).
        first, second = torch.randint(num_tokens, (2, batch, self.num_pairs), device=tokens.device)
        rows = torch.arange(batch, device=tokens.device).unsqueeze(1)
        pairs = torch.cat([tokens[rows, first], tokens[rows, second]], dim=-1)  # (B, m, 2D)
        target = torch.stack([(first // k - second // k).abs(), (first % k - second % k).abs()], dim=-1)
        prediction = self.mlp(pairs).float()
        return F.l1_loss(prediction, target.float() / k)
