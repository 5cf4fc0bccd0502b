"""Vision Transformer for small images, with optional Shifted Patch Tokenization (SPT) and Locality Self-Attention
(LSA) from Lee, Lee & Song (2021), "Vision Transformer for Small-Size Datasets"."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_vit import MedViTConfig
from .input_checks import prepare_pixel_values
from .flip_averaging import average_over_mirror_images, with_mirror_images


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p · W/p, p · p · C): patches in row-major order, each flattened as (row, column, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // p) * (w // p), p * p * c)


class PatchEmbedding(nn.Module):
    """The vanilla tokenizer: non-overlapping p×p patches, each projected linearly (a strided convolution)."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ShiftedPatchTokenization(nn.Module):
    """SPT: the image and four copies shifted by half a patch diagonally (zero fill) are stacked along channels
    (5·C), cut into patches, flattened, layer-normed and projected. Each token then sees its neighbours' edges."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.shift = config.patch_size // 2
        patch_dim = 5 * config.num_channels * config.patch_size**2
        self.norm = nn.LayerNorm(patch_dim, eps=config.layer_norm_eps)
        self.projection = nn.Linear(patch_dim, config.hidden_size)

    def shifted_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 5C, H, W): [original, right-down, left-down, right-up, left-up]."""
        s = self.shift
        # F.pad takes (left, right, top, bottom); padding one side by s and cropping the other by s moves the content.
        shifts = [(s, -s, s, -s), (-s, s, s, -s), (s, -s, -s, s), (-s, s, -s, s)]
        return torch.cat([pixel_values] + [F.pad(pixel_values, pad) for pad in shifts], dim=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = patchify(self.shifted_images(pixel_values), self.patch_size)
        return self.projection(self.norm(patches))


class HeInitConv2d(nn.Conv2d):
    """A Conv2d that `_init_weights` gives He initialisation (it feeds a ReLU), not the generic std 0.02: with that
    the features would shrink ~5× per block and the position embeddings would swamp them."""


class ConvolutionalTokenizer(nn.Module):
    """CCT's tokenizer: [3×3 conv, (BatchNorm,) ReLU, 3×3 max-pool stride 2] × log2(p), so a p×p patch grid becomes
    one token per patch as with the other tokenizers, but built from overlapping local filters, as a CNN's first
    layers are."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        blocks, channels = [], config.num_channels
        for _ in range(config.patch_size.bit_length() - 1):  # log2(patch_size)
            blocks.append(HeInitConv2d(channels, config.hidden_size, kernel_size=3, padding=1, bias=False))
            if config.convolutional_tokenizer_batch_norm:
                blocks.append(nn.BatchNorm2d(config.hidden_size))
            blocks += [nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
            channels = config.hidden_size
        self.blocks = nn.Sequential(*blocks)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.blocks(pixel_values).flatten(2).transpose(1, 2)


class MedViTEmbeddings(nn.Module):
    """Tokens (plain, SPT or convolutional), an optional CLS token, learned position embeddings and dropout."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        if config.use_shifted_patch_tokenization:
            self.tokenizer = ShiftedPatchTokenization(config)
        elif config.use_convolutional_tokenizer:
            self.tokenizer = ConvolutionalTokenizer(config)
        else:
            self.tokenizer = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.pooling == "cls" else None
        num_tokens = config.num_patches + (1 if config.pooling == "cls" else 0)
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_tokens, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(pixel_values)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.dropout(tokens + self.position_embeddings)


class MedViTSelfAttention(nn.Module):
    """Multi-head self-attention through torch's fused `scaled_dot_product_attention`.

    With LSA the queries are divided by a learned per-head temperature τ (initialised at sqrt(d_head), so the first
    step equals plain attention's 1/sqrt(d) scale) and a boolean mask removes the diagonal: softmax(q·kᵀ/τ) over
    the other tokens only. The mask is handed to the fused kernel, so LSA costs no extra pass over the scores.
    """

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.attention_head_dim
        inner_dim = self.num_heads * self.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * inner_dim)
        self.output = nn.Linear(inner_dim, config.hidden_size)
        self.attention_dropout = config.attention_probs_dropout_prob
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.use_locality_self_attention = config.use_locality_self_attention
        self.temperature = nn.Parameter(torch.empty(self.num_heads)) if self.use_locality_self_attention else None

    def _queries_keys_values(self, hidden_states: torch.Tensor):
        b, n, _ = hidden_states.shape
        q, k, v = self.qkv(hidden_states).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.use_locality_self_attention:
            q = q * (1.0 / self.temperature).to(q.dtype).view(1, -1, 1, 1)
        return q, k, v

    def _mask_and_scale(self, num_tokens: int, device: torch.device):
        """(attention mask, score scale): LSA's scale already sits in the queries; True in the mask = may attend."""
        if not self.use_locality_self_attention:
            return None, 1.0 / math.sqrt(self.head_dim)
        mask = ~torch.eye(num_tokens, dtype=torch.bool, device=device)
        return mask, 1.0

    def attention_probabilities(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The softmax the fused kernel computes, written out: (B, heads, N, N). For inspection and tests."""
        q, k, _ = self._queries_keys_values(hidden_states)
        mask, scale = self._mask_and_scale(q.shape[2], q.device)
        scores = (q @ k.transpose(-2, -1)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores.softmax(dim=-1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self._queries_keys_values(hidden_states)
        mask, scale = self._mask_and_scale(q.shape[2], q.device)
        dropout = self.attention_dropout if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
        b, _, n, _ = context.shape
        return self.output_dropout(self.output(context.transpose(1, 2).reshape(b, n, -1)))


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole samples, scaling the kept ones by 1/(1 - p)."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class MedViTMLP(nn.Sequential):
    def __init__(self, config: MedViTConfig):
        super().__init__(
            nn.Linear(config.hidden_size, config.intermediate_size),
            nn.GELU(),
            nn.Dropout(config.hidden_dropout_prob),
            nn.Linear(config.intermediate_size, config.hidden_size),
            nn.Dropout(config.hidden_dropout_prob),
        )


class MedViTLayer(nn.Module):
    """Pre-norm block: x + DropPath(Attention(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, config: MedViTConfig, drop_path_rate: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MedViTSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MedViTMLP(config)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.drop_path(self.attention(self.attention_norm(hidden_states)))
        return hidden_states + self.drop_path(self.mlp(self.mlp_norm(hidden_states)))


class MedViTHead(nn.Module):
    """Final LayerNorm, pooling (flatten / mean / cls / attention), dropout, GELU MLP `head_hidden_sizes`, classifier.

    Attention pooling (CCT's SeqPool) scores each token with one linear unit and takes the softmax-weighted mean:
    the model learns which tokens matter instead of averaging all of them equally."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.pooling = config.pooling
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention_pool = nn.Linear(config.hidden_size, 1) if config.pooling == "attention" else None
        width = config.hidden_size * (config.num_patches if config.pooling == "flatten" else 1)
        layers = [nn.Dropout(config.head_dropout_prob)]
        for hidden_width in config.head_hidden_sizes:
            layers += [nn.Linear(width, hidden_width), nn.GELU(), nn.Dropout(config.head_dropout_prob)]
            width = hidden_width
        self.mlp = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.norm(hidden_states)
        if self.pooling == "flatten":
            pooled = hidden_states.flatten(1)
        elif self.pooling == "mean":
            pooled = hidden_states.mean(dim=1)
        elif self.pooling == "attention":
            weights = self.attention_pool(hidden_states).softmax(dim=1)  # (B, N, 1): one weight per token
            pooled = (weights * hidden_states).sum(dim=1)
        else:  # "cls"
            pooled = hidden_states[:, 0]
        return self.classifier(self.mlp(pooled))


class MedViTPreTrainedModel(PreTrainedModel):
    config: MedViTConfig
    config_class = MedViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, HeInitConv2d):
            init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            super()._init_weights(module)  # transformers' own: weight 1, bias 0 and the running statistics reset
        elif isinstance(module, MedViTEmbeddings):
            init.trunc_normal_(module.position_embeddings, mean=0.0, std=std)
            if module.cls_token is not None:
                init.trunc_normal_(module.cls_token, mean=0.0, std=std)
        elif isinstance(module, MedViTSelfAttention) and module.temperature is not None:
            init.constant_(module.temperature, math.sqrt(module.head_dim))


class MedViTForImageClassification(MedViTPreTrainedModel):
    """
    A pre-norm Vision Transformer classifier; `config.use_shifted_patch_tokenization` and
    `config.use_locality_self_attention` switch on SPT and LSA (together: the ViT for small-size data sets).

    Takes `pixel_values` (B, C, H, W) normalised as the saved image processor does, optional `labels` (class indices,
    or a float multi-hot matrix for multi-label flags) and returns an `ImageClassifierOutput`.
    """

    def __init__(self, config: MedViTConfig):
        super().__init__(config)
        self.embeddings = MedViTEmbeddings(config)
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([MedViTLayer(config, rate) for rate in drop_path_rates])
        self.head = MedViTHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        """`output_hidden_states=True` also returns the tokens after the embeddings and after each layer,
        (B, tokens, hidden_size) each (CLS first when `pooling="cls"`)."""
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        pixel_values = prepare_pixel_values(pixel_values, self.config)
        batch_size = pixel_values.shape[0]
        mirror = self.config.test_time_horizontal_flip and not self.training
        if mirror:
            pixel_values = with_mirror_images(pixel_values)
        hidden_states = self.embeddings(pixel_values)
        all_hidden_states = [hidden_states[:batch_size]]  # the images as given, not their mirror images
        for layer in self.layers:
            hidden_states = layer(hidden_states)
            all_hidden_states.append(hidden_states[:batch_size])
        logits = self.head(hidden_states)
        if mirror:
            logits = average_over_mirror_images(logits)
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits,
                                     hidden_states=tuple(all_hidden_states) if output_hidden_states else None)


__all__ = ["MedViTForImageClassification", "MedViTPreTrainedModel"]
