"""Vision Transformer for small images, with optional Shifted Patch Tokenization (SPT) and Locality Self-Attention
(LSA) from Lee, Lee & Song (2021), "Vision Transformer for Small-Size Datasets"."""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.conversion_mapping import register_checkpoint_conversion_mapping
from transformers.core_model_loading import WeightRenaming
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput, MaskedImageModelingOutput
from transformers.utils import can_return_tuple

from .base_model_layout import BaseModelLayoutMixin
from .configuration_vit import MedViTConfig
from .cpu_layout import channels_last_on_low_precision_cpu
from .input_checks import prepare_pixel_values


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p · W/p, p · p · C): patches in row-major order, each flattened as (row, column, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    patches = images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return patches.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, shape: torch.Size) -> torch.Tensor:
    """The inverse of `patchify`: (B, N, p · p · C) -> (B, C, H, W) of `shape`."""
    b, c, h, w = shape
    p = patch_size
    images = patches.reshape(b, h // p, w // p, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return images.reshape(b, c, h, w)


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
        hidden_states = pixel_values
        for module in self.blocks:
            hidden_states = module(hidden_states)
            if isinstance(module, nn.Conv2d):
                hidden_states = channels_last_on_low_precision_cpu(hidden_states)
        return hidden_states.flatten(2).transpose(1, 2)


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

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of the tokenizer's weights, which the model casts its inputs to."""
        return next(self.tokenizer.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(pixel_values)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)
        return self.dropout(tokens + self.position_embeddings)


class MedViTSelfAttention(nn.Module):
    """Multi-head self-attention, computed by torch's fused `scaled_dot_product_attention` (`"sdpa"`, the default) or
    written out (`"eager"`), as `config._attn_implementation` says; the eager path also returns the probabilities.

    With LSA the queries are divided by a learned per-head temperature τ (initialised at sqrt(d_head), so the first
    step equals plain attention's 1/sqrt(d) scale) and a boolean mask removes the diagonal: softmax(q·kᵀ/τ) over
    the other tokens only. Both paths apply the temperature and the mask; the fused kernel takes the mask, so LSA
    costs no extra pass over the scores.
    """

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.config = config
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
        """The softmax both paths compute, without dropout: (B, heads, N, N), LSA's diagonal exactly 0."""
        q, k, _ = self._queries_keys_values(hidden_states)
        mask, scale = self._mask_and_scale(q.shape[2], q.device)
        return eager_attention_probabilities(q, k, mask, scale)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the attention block's output (B, N, hidden_size), the attention probabilities (B, heads, N, N) when
        `output_attentions`, else None). `output_attentions` computes the eager path, as transformers does."""
        q, k, v = self._queries_keys_values(hidden_states)
        mask, scale = self._mask_and_scale(q.shape[2], q.device)
        dropout = self.attention_dropout if self.training else 0.0
        probabilities = None
        if output_attentions or self.config._attn_implementation == "eager":
            probabilities = F.dropout(eager_attention_probabilities(q, k, mask, scale), p=dropout,
                                      training=self.training)
            context = torch.matmul(probabilities, v)
        elif q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            context = cpu_low_precision_attention(q, k, v, mask, scale, dropout)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)
        b, _, n, _ = context.shape
        output = self.output_dropout(self.output(context.transpose(1, 2).reshape(b, n, -1)))
        return output, (probabilities if output_attentions else None)


def cpu_low_precision_attention(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                                mask: torch.Tensor | None, scale: float, dropout: float) -> torch.Tensor:
    """softmax(q·kᵀ · scale, over the keys where `mask` is True) · v for bf16 / fp16 inputs on a CPU, (B, heads, N, d).

    torch's fused CPU kernel for `scaled_dot_product_attention` is slow in bf16: measured on a Xeon with AMX and
    AVX-512 BF16 (torch 2.14, B 128, 4 heads, 49 tokens of 64), forward and backward took 84 ms in bf16 against 21 ms
    in fp32. So with heads of 32 dimensions and more the attention is written out as three batched products, the mask
    as an additive -inf bias inside the first (`baddbmm`), the softmax in torch's kernel (it computes in fp32 and
    rounds its output): 21 ms. With narrower heads the products are too thin to pay for the (N, N) scores written to
    memory, and the fused kernel runs in fp32 instead (BloodMNIST's ViT, 196 tokens of 16: 72 ms against 131 written
    out; the attention's inputs and output are the only fp32 tensors).
    """
    batch, heads, tokens, head_dim = queries.shape
    if head_dim < 32:
        with torch.autocast(queries.device.type, enabled=False):
            context = F.scaled_dot_product_attention(queries.float(), keys.float(), values.float(), attn_mask=mask,
                                                     dropout_p=dropout, scale=scale)
        return context.to(queries.dtype)
    queries, keys, values = (x.reshape(batch * heads, tokens, head_dim) for x in (queries, keys, values))
    if mask is None:
        scores = torch.bmm(queries, keys.transpose(1, 2)) * scale
    else:
        bias = torch.zeros(mask.shape, dtype=queries.dtype, device=queries.device).masked_fill_(~mask, float("-inf"))
        scores = torch.baddbmm(bias, queries, keys.transpose(1, 2), alpha=scale)
    probabilities = F.dropout(scores.softmax(dim=-1), p=dropout, training=dropout > 0)
    return torch.bmm(probabilities, values).view(batch, heads, tokens, head_dim)


def eager_attention_probabilities(
    queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """softmax(q·kᵀ · scale) over the keys where `mask` is True (all when None), in float32 as transformers' eager
    attention, then back to the queries' dtype: (B, heads, N, N)."""
    scores = torch.matmul(queries, keys.transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1, dtype=torch.float32).to(queries.dtype)


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


class MedViTLayer(GradientCheckpointingLayer):
    """Pre-norm block: x + DropPath(Attention(LN(x))), then x + DropPath(MLP(LN(x))). Returns (hidden states,
    attention probabilities or None); `model.gradient_checkpointing_enable()` recomputes it in the backward pass."""

    def __init__(self, config: MedViTConfig, drop_path_rate: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MedViTSelfAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MedViTMLP(config)
        self.drop_path = DropPath(drop_path_rate)

    def forward(
        self, hidden_states: torch.Tensor, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attention_output, attentions = self.attention(self.attention_norm(hidden_states), output_attentions)
        hidden_states = hidden_states + self.drop_path(attention_output)
        return hidden_states + self.drop_path(self.mlp(self.mlp_norm(hidden_states))), attentions


class MedViTPooler(nn.Module):
    """Reads the final-normed tokens as one vector per image, as `config.pooling` says: `"flatten"` (all tokens
    flattened, (B, N · hidden_size)), `"mean"`, `"cls"` (the CLS token) or `"attention"` (CCT's SeqPool: one linear
    score per token, softmax over the tokens, the weighted mean), (B, hidden_size) each. Attention pooling learns
    which tokens matter instead of averaging all of them equally."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        self.pooling = config.pooling
        self.attention_pool = nn.Linear(config.hidden_size, 1) if config.pooling == "attention" else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.pooling == "flatten":
            return hidden_states.flatten(1)
        if self.pooling == "mean":
            return hidden_states.mean(dim=1)
        if self.pooling == "attention":
            weights = self.attention_pool(hidden_states).softmax(dim=1)  # (B, N, 1): one weight per token
            return (weights * hidden_states).sum(dim=1)
        return hidden_states[:, 0]  # "cls"


class MedViTHead(nn.Module):
    """The classification head on the pooled features: dropout, GELU MLP `head_hidden_sizes` (each followed by
    dropout), linear classifier to `num_labels`."""

    def __init__(self, config: MedViTConfig):
        super().__init__()
        width = config.hidden_size * (config.num_patches if config.pooling == "flatten" else 1)
        layers = [nn.Dropout(config.head_dropout_prob)]
        for hidden_width in config.head_hidden_sizes:
            layers += [nn.Linear(width, hidden_width), nn.GELU(), nn.Dropout(config.head_dropout_prob)]
            width = hidden_width
        self.mlp = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, config.num_labels)

    def forward(self, pooled_output: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mlp(pooled_output))


class MedViTPreTrainedModel(BaseModelLayoutMixin, PreTrainedModel):
    """Weight initialisation and the transformers capabilities shared by the ViT models."""

    config: MedViTConfig
    config_class = MedViTConfig
    base_model_prefix = "vit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MedViTEmbeddings", "MedViTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False
    # `MedViTSelfAttention` reads `config._attn_implementation` at every call, so `set_attn_implementation` takes effect
    # at once (transformers otherwise guesses this from the module's source).
    _can_set_attn_implementation_cached_value = True

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


class MedViTModel(MedViTPreTrainedModel):
    """
    The bare pre-norm Vision Transformer: embeddings (plain, SPT or convolutional tokens, position embeddings),
    `num_hidden_layers` blocks, the final LayerNorm and the pooling `config.pooling`.

    Takes `pixel_values` (B, C, H, W), cast to the weights' dtype, and returns a `BaseModelOutputWithPooling`:
    `last_hidden_state` (B, tokens, hidden_size) after the final LayerNorm (CLS first when `pooling="cls"`),
    `pooler_output` the pooled features, and with `output_hidden_states=True` the tokens after the embeddings and
    after each block, with `output_attentions=True` each block's attention probabilities (B, heads, tokens, tokens);
    with LSA their diagonal is exactly 0.

    Args:
        config: the model's configuration.
        add_pooling_layer: whether to pool (`pooler_output` is None without it).
        initialize: False when a task model builds it as its base model and initialises the whole model itself.
    """

    def __init__(self, config: MedViTConfig, add_pooling_layer: bool = True, initialize: bool = True):
        super().__init__(config)
        self.embeddings = MedViTEmbeddings(config)
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList([MedViTLayer(config, rate) for rate in drop_path_rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = MedViTPooler(config) if add_pooling_layer else None
        self._defer_weight_initialization = not initialize
        self.post_init()
        self._defer_weight_initialization = False

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.tokenizer

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        pixel_values = prepare_pixel_values(pixel_values.to(self.embeddings.weight_dtype), self.config)
        hidden_states = self.embeddings(pixel_values)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attentions = layer(hidden_states, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attentions,)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output,
                                          hidden_states=all_hidden_states, attentions=all_attentions)


class MedViTForImageClassification(MedViTPreTrainedModel):
    """
    A pre-norm Vision Transformer classifier: the base model `vit` ([`MedViTModel`]) and the head `head` (dropout,
    MLP, classifier) on its pooled features. `config.use_shifted_patch_tokenization` and
    `config.use_locality_self_attention` switch on SPT and LSA (together: the ViT for small-size data sets).

    Takes `pixel_values` (B, C, H, W) normalised as the saved image processor does, optional `labels` (class indices,
    or a float multi-hot matrix for multi-label flags) and returns an `ImageClassifierOutput` (a tuple with
    `return_dict=False`): `loss`, `logits`, and as the base model returns them `hidden_states` and `attentions`.
    """

    # A saved `MedViTForMaskedImageModeling` holds the pre-trained encoder and MAE's decoder, which it does not use.
    _keys_to_ignore_on_load_unexpected = [r"^mask_token$", r"^decoder_"]

    def __init__(self, config: MedViTConfig):
        super().__init__(config)
        self.vit = MedViTModel(config, initialize=False)
        self.head = MedViTHead(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        pixel_values = prepare_pixel_values(pixel_values, self.config)
        outputs = self.vit(pixel_values, output_attentions=output_attentions,
                           output_hidden_states=output_hidden_states, return_dict=True)
        logits = self.head(outputs.pooler_output)
        hidden_states, attentions = outputs.hidden_states, outputs.attentions
        loss = self.loss_function(labels, logits, self.config) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)


class MedViTForMaskedImageModeling(MedViTPreTrainedModel):
    """
    Masked-autoencoder pre-training of the ViT (He, Chen, Xie, Li, Dollár & Girshick 2022, "Masked Autoencoders Are
    Scalable Vision Learners"): the base model `vit` ([`MedViTModel`], its pooling unused) as the encoder, plus MAE's
    decoder. A saved model loads into [`MedViTForImageClassification`], which takes the encoder and initialises its
    head anew: pre-train, then fine-tune.

    The hidden patches' pixels are set to 0 (the data set's mean after normalisation) before tokenizing, so that the
    tokenizer cannot see them: SPT's shifted copies would otherwise carry a hidden patch's edges into its neighbours'
    tokens, and the convolutional tokenizer's 3×3 convolutions and max-pools its content (SimMIM's way of masking a
    tokenizer that mixes pixels across patches). The encoder (tokenizer, position embeddings, transformer blocks,
    final LayerNorm) runs on the visible tokens only; the decoder (a linear map, a mask token, its own position
    embeddings, `config.mae_decoder_num_hidden_layers` plain-attention blocks without dropout, a LayerNorm, a linear
    map to pixels) sees every position and predicts each patch's pixels, normalised per patch when
    `config.mae_norm_pix_loss` (MAE's `norm_pix_loss`). The loss is their mean squared error over the hidden patches.

    Takes `pixel_values` (B, C, H, W) and optionally `bool_masked_pos` (B, num_patches), True where a patch is hidden
    (the same number in every image); without it a mask hiding `round(config.mae_mask_ratio · num_patches)` patches
    of every image is drawn from the global RNG. Returns a `MaskedImageModelingOutput`: `loss`, `reconstruction`
    (B, C, H, W) the decoder's prediction of every patch (in the target's space: per-patch normalised when
    `config.mae_norm_pix_loss`), and as asked the encoder's `hidden_states` and `attentions` (visible tokens only).

    Args:
        config: the model's configuration.
        vit: an existing base model to pre-train in place (e.g. a classifier's `vit`); a new one when None. Its
            weights are kept as they are; only the decoder is initialised.
    """

    def __init__(self, config: MedViTConfig, vit: MedViTModel | None = None):
        super().__init__(config)
        self.vit = vit if vit is not None else MedViTModel(config, add_pooling_layer=False, initialize=False)
        width = config.mae_decoder_hidden_size or config.hidden_size
        # The decoder's blocks: plain attention as in MAE, no dropout, no stochastic depth.
        decoder_config = copy.deepcopy(config)
        decoder_config.hidden_size = width
        decoder_config.use_locality_self_attention = False
        decoder_config.hidden_dropout_prob = decoder_config.attention_probs_dropout_prob = 0.0
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.decoder_position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches, width))
        self.decoder_layers = nn.ModuleList(
            [MedViTLayer(decoder_config, 0.0) for _ in range(config.mae_decoder_num_hidden_layers)])
        self.decoder_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.decoder_prediction = nn.Linear(width, config.patch_size**2 * config.num_channels)
        self.post_init()

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`save_pretrained`, with an `auto_map` that also names the base model and the classifier (in the same code
        file), so that `AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True)` fine-tunes the
        pre-trained encoder anywhere."""
        module = type(self).__module__.split(".")[-1]
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}),
                                "AutoModel": f"{module}.MedViTModel",
                                "AutoModelForImageClassification": f"{module}.MedViTForImageClassification"}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def _init_weights(self, module):
        """The encoder as the classifier initialises it; the decoder in one step, when the model itself is reached
        (its mask token, position embeddings, then its linear maps and blocks), so that a given `vit` keeps its
        weights and the decoder's draws do not depend on it."""
        if module is self:
            std = self.config.initializer_range
            init.trunc_normal_(self.mask_token, mean=0.0, std=std)
            init.trunc_normal_(self.decoder_position_embeddings, mean=0.0, std=std)
            for part in [self.decoder_embed, self.decoder_prediction, *self.decoder_layers.modules()]:
                super()._init_weights(part)
        elif not any(module is part for part in self._decoder_modules()):
            super()._init_weights(module)

    def _decoder_modules(self):
        for part in (self.decoder_embed, self.decoder_layers, self.decoder_norm, self.decoder_prediction):
            yield from part.modules()

    def random_masking(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """(B, N) bool, True where a patch is hidden: exactly round(mae_mask_ratio · N) per image, drawn from the
        global RNG."""
        num_patches = self.config.num_patches
        num_masked = round(self.config.mae_mask_ratio * num_patches)
        ranks = torch.rand(batch_size, num_patches, device=device).argsort(dim=1)
        return ranks < num_masked

    def reconstruction_target(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, N, p·p·C) float32: what the decoder predicts, each patch's pixels (normalised per patch when
        `config.mae_norm_pix_loss`)."""
        target = patchify(pixel_values.float(), self.config.patch_size)
        if self.config.mae_norm_pix_loss:
            target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return target

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MaskedImageModelingOutput:
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        if output_hidden_states is None:
            output_hidden_states = getattr(self.config, "output_hidden_states", False)
        embeddings = self.vit.embeddings
        pixel_values = prepare_pixel_values(pixel_values.to(embeddings.weight_dtype), self.config)
        p, num_patches = self.config.patch_size, self.config.num_patches
        batch, _, height, width = pixel_values.shape
        if bool_masked_pos is None:
            bool_masked_pos = self.random_masking(batch, pixel_values.device)
        masked = bool_masked_pos.to(device=pixel_values.device, dtype=torch.bool)  # (B, N)
        num_visible = num_patches - int(masked[0].sum())
        if masked.shape != (batch, num_patches) or bool((masked.sum(dim=1) != num_patches - num_visible).any()):
            raise ValueError(f"bool_masked_pos must be (batch, {num_patches}) with the same number of hidden patches "
                             f"in every image; got shape {tuple(masked.shape)}, hidden counts "
                             f"{masked.sum(dim=1).tolist()}.")
        grid = masked.view(batch, 1, height // p, width // p).float()
        pixel_mask = F.interpolate(grid, scale_factor=p, mode="nearest").bool()  # (B, 1, H, W)
        hidden_pixels = pixel_values.masked_fill(pixel_mask, 0.0)

        # The encoder, on the visible tokens (in ascending grid order) and the CLS token if the model has one.
        first_grid_token = 1 if embeddings.cls_token is not None else 0
        tokens = embeddings.tokenizer(hidden_pixels) + embeddings.position_embeddings[:, first_grid_token:]
        visible_index = (~masked).nonzero()[:, 1].view(batch, num_visible)
        tokens = tokens.gather(1, visible_index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        if embeddings.cls_token is not None:
            cls = embeddings.cls_token + embeddings.position_embeddings[:, :1]
            tokens = torch.cat([cls.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        tokens = embeddings.dropout(tokens)
        all_hidden_states = (tokens,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.vit.layers:
            tokens, attentions = layer(tokens, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (tokens,)
            if output_attentions:
                all_attentions += (attentions,)
        tokens = self.vit.layernorm(tokens)[:, first_grid_token:]

        # The decoder: visible tokens back in place, the mask token everywhere else.
        decoded = self.mask_token.to(tokens.dtype).expand(batch, num_patches, -1).clone()
        decoded = decoded.scatter(1, visible_index.unsqueeze(-1).expand(-1, -1, decoded.shape[-1]),
                                  self.decoder_embed(tokens).to(decoded.dtype))
        decoded = decoded + self.decoder_position_embeddings
        for layer in self.decoder_layers:
            decoded, _ = layer(decoded)
        prediction = self.decoder_prediction(self.decoder_norm(decoded)).float()  # (B, N, p·p·C)

        per_patch = (prediction - self.reconstruction_target(pixel_values)).pow(2).mean(dim=-1)
        loss = (per_patch * masked).sum() / masked.sum()
        return MaskedImageModelingOutput(loss=loss, reconstruction=unpatchify(prediction, p, pixel_values.shape),
                                         hidden_states=all_hidden_states, attentions=all_attentions)

    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor,
                    bool_masked_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(the images with their hidden patches blanked, the images with the hidden patches as predicted), both
        (B, C, H, W) in the model's input space, to look at: a normalised prediction is put back on each patch's true
        mean and standard deviation (as in MAE's figures), so what it shows is the predicted texture."""
        p = self.config.patch_size
        if bool_masked_pos is None:
            bool_masked_pos = self.random_masking(pixel_values.shape[0], pixel_values.device)
        prediction = patchify(self(pixel_values, bool_masked_pos=bool_masked_pos).reconstruction, p)
        patches = patchify(pixel_values.float(), p)
        if self.config.mae_norm_pix_loss:
            prediction = (prediction * (patches.var(dim=-1, keepdim=True) + 1e-6).sqrt()
                          + patches.mean(dim=-1, keepdim=True))
        hidden = bool_masked_pos.unsqueeze(-1)
        blanked = unpatchify(patches.masked_fill(hidden, 0.0), p, pixel_values.shape)
        filled = unpatchify(torch.where(hidden, prediction, patches), p, pixel_values.shape)
        return blanked, filled



# Checkpoints saved before the base model existed hold the classifier's modules at the top level: `embeddings.*`,
# `layers.*`, `head.norm.*` (the final LayerNorm) and `head.attention_pool.*`. `from_pretrained` renames their keys.
register_checkpoint_conversion_mapping("MedViTForImageClassification", [
    WeightRenaming(r"^embeddings\.", "vit.embeddings."),
    WeightRenaming(r"^layers\.", "vit.layers."),
    WeightRenaming(r"^head\.norm\.", "vit.layernorm."),
    WeightRenaming(r"^head\.attention_pool\.", "vit.pooler.attention_pool."),
], overwrite=True)
register_checkpoint_conversion_mapping("MedViTModel", [
    WeightRenaming(r"^head\.norm\.", "layernorm."),
    WeightRenaming(r"^head\.attention_pool\.", "pooler.attention_pool."),
], overwrite=True)


__all__ = [
    "MedViTForImageClassification",
    "MedViTForMaskedImageModeling",
    "MedViTModel",
    "MedViTPreTrainedModel",
    "patchify",
    "unpatchify",
]
