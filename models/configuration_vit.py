"""Configuration of the Vision Transformer, with optional Shifted Patch Tokenization and Locality Self-Attention."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

POOLING_CHOICES = ("flatten", "mean", "cls", "attention")


def power_of_two_patch_sizes(image_size: int) -> list[int]:
    """The patch sizes the convolutional tokenizer can use at this image size (each block halves the grid)."""
    return [2**k for k in range(8) if image_size % 2**k == 0]


@strict
class MedViTConfig(PreTrainedConfig):
    r"""
    Configuration of [`MedViTForImageClassification`]: a pre-norm Vision Transformer for small images. Two flags turn
    it into the ViT for small-size data sets of Lee, Lee & Song (2021): `use_shifted_patch_tokenization` (SPT) and
    `use_locality_self_attention` (LSA); each can be used alone. The defaults are the seed notebooks' geometry.

    Args:
        image_size (`int`, defaults to 72):
            Height and width of the images the model receives (the data pipeline resizes to it).
        patch_size (`int`, defaults to 6):
            Side of the square patches; must divide `image_size`. 72 / 6 gives 144 tokens.
        num_channels (`int`, defaults to 3):
            Number of input channels.
        hidden_size (`int`, defaults to 64):
            Width of the token embeddings (the seed's "projection dim").
        num_hidden_layers (`int`, defaults to 8):
            Number of transformer blocks.
        num_attention_heads (`int`, defaults to 4):
            Number of attention heads.
        attention_head_dim (`int`, defaults to 64):
            Width of each head's queries, keys and values (the seed's Keras `key_dim`); the attention's inner width is
            `num_attention_heads * attention_head_dim`, independent of `hidden_size`.
        intermediate_size (`int`, defaults to 128):
            Hidden width of each block's GELU MLP.
        hidden_dropout_prob (`float`, defaults to 0.1):
            Dropout after the embeddings, the attention output projection and in the MLP.
        attention_probs_dropout_prob (`float`, defaults to 0.1):
            Dropout on the attention probabilities.
        drop_path_rate (`float`, defaults to 0.0):
            Stochastic depth: the probability of skipping a block's residual branch grows linearly from 0 in the first
            block to this value in the last.
        layer_norm_eps (`float`, defaults to 1e-6):
            Epsilon of every LayerNorm.
        pooling (`str`, defaults to `"flatten"`):
            How the head reads the tokens: `"flatten"` (the seed's head: final LayerNorm, all tokens flattened,
            dropout, MLP `head_hidden_sizes` with GELU and dropout, classifier), `"mean"` (mean of the tokens),
            `"cls"` (a learned CLS token is prepended and read out) or `"attention"` (the Compact Convolutional
            Transformer's sequence pooling: a learned linear score per token, softmax over the tokens, the weighted
            mean).
        head_hidden_sizes (`list[int]`, defaults to `[2048, 1024]`):
            Hidden widths of the head's MLP; empty for a single linear classifier.
        head_dropout_prob (`float`, defaults to 0.5):
            Dropout before and inside the head's MLP.
        use_shifted_patch_tokenization (`bool`, defaults to `False`):
            SPT: concatenate the image with four copies shifted by half a patch diagonally (5·C channels) before
            patchifying, then LayerNorm and a linear projection.
        use_locality_self_attention (`bool`, defaults to `False`):
            LSA: mask the diagonal of the attention scores (no token attends to itself) and learn one temperature per
            head, initialised at sqrt(attention_head_dim), in place of the fixed 1/sqrt(d) scale.
        use_convolutional_tokenizer (`bool`, defaults to `False`):
            The Compact Convolutional Transformer's tokenizer (Hassani et al. 2021, "Escaping the Big Data Paradigm
            with Compact Transformers"): log2(`patch_size`) blocks of 3×3 convolution (`hidden_size` channels), ReLU
            and 3×3 max-pooling with stride 2, in place of the patch projection; the token grid stays
            `image_size / patch_size` square. `patch_size` must then be a power of 2; excludes SPT.
        convolutional_tokenizer_batch_norm (`bool`, defaults to `False`):
            BatchNorm after each of the convolutional tokenizer's convolutions (before the ReLU), as in the
            convolutional stems of Xiao et al. (2021), "Early Convolutions Help Transformers See Better". Needs
            `use_convolutional_tokenizer`.
        test_time_horizontal_flip (`bool`, deprecated):
            No longer a field: test-time flip averaging is an option of the evaluation (`metrics.predict`,
            `evaluate.py --flip_averaging`), and the model ignores this attribute. A checkpoint saved with it true
            keeps it (evaluation then averages, as the model used to); false is dropped.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the truncated-normal initialisation of weights and embeddings.
        mae_mask_ratio (`float`, defaults to 0.75):
            [`MedViTForMaskedImageModeling`]: the fraction of patches hidden from the encoder in every image when no
            `bool_masked_pos` is given (MAE: 0.75).
        mae_norm_pix_loss (`bool`, defaults to `True`):
            [`MedViTForMaskedImageModeling`]: reconstruct each hidden patch's pixels normalised by the patch's own
            mean and standard deviation (MAE's `norm_pix_loss`: texture and edges), else the pixels as the model sees
            them (brightness too).
        mae_decoder_hidden_size (`int`, *optional*):
            [`MedViTForMaskedImageModeling`]: width of the decoder; `hidden_size` when None.
        mae_decoder_num_hidden_layers (`int`, defaults to 1):
            [`MedViTForMaskedImageModeling`]: transformer blocks of the decoder (MAE: 8 at width 512 for ViT-L; one
            suffices for a 64-wide model on small images).
    """

    model_type = "medmnist_vit"

    image_size: int = 72
    patch_size: int = 6
    num_channels: int = 3
    hidden_size: int = 64
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    attention_head_dim: int = 64
    intermediate_size: int = 128
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    drop_path_rate: float | int = 0.0
    layer_norm_eps: float = 1e-6
    pooling: str = "flatten"
    head_hidden_sizes: list[int] | tuple[int, ...] = (2048, 1024)
    head_dropout_prob: float | int = 0.5
    use_shifted_patch_tokenization: bool = False
    use_locality_self_attention: bool = False
    use_convolutional_tokenizer: bool = False
    convolutional_tokenizer_batch_norm: bool = False
    initializer_range: float = 0.02
    mae_mask_ratio: float = 0.75
    mae_norm_pix_loss: bool = True
    mae_decoder_hidden_size: int | None = None
    mae_decoder_num_hidden_layers: int = 1

    def __post_init__(self, **kwargs):
        self.head_hidden_sizes = list(self.head_hidden_sizes)
        # Deprecated (see the docstring): kept only when true, so that evaluation can still read it.
        if not kwargs.get("test_time_horizontal_flip", True):
            kwargs.pop("test_time_horizontal_flip")
        super().__post_init__(**kwargs)

    def validate_geometry(self):
        """Part of `@strict` validation: patches must tile the image and the pooling must be known."""
        if self.patch_size < 1 or self.image_size % self.patch_size != 0:
            divisors = [p for p in range(1, self.image_size + 1) if self.image_size % p == 0]
            raise ValueError(
                f"patch_size={self.patch_size} does not divide image_size={self.image_size}: the patches must tile "
                f"the image. Patch sizes allowed for image_size={self.image_size}: {divisors}; or change image_size."
            )
        if self.use_convolutional_tokenizer:
            if self.use_shifted_patch_tokenization:
                raise ValueError(
                    "use_convolutional_tokenizer=True and use_shifted_patch_tokenization=True: a model has one "
                    "tokenizer. Set use_shifted_patch_tokenization=False (model `vit_lsa` sets it True by default)."
                )
            if self.patch_size & (self.patch_size - 1):
                powers = power_of_two_patch_sizes(self.image_size)
                raise ValueError(
                    f"use_convolutional_tokenizer=True needs a power-of-2 patch_size (each block halves the grid); "
                    f"got {self.patch_size}. Allowed for image_size={self.image_size}: {powers}."
                )
        if self.convolutional_tokenizer_batch_norm and not self.use_convolutional_tokenizer:
            raise ValueError(
                "convolutional_tokenizer_batch_norm=True needs the convolutional tokenizer: set "
                "use_convolutional_tokenizer=True as well (or use the model `vit_conv_lsa`)."
            )
        if not 0.0 < self.mae_mask_ratio < 1.0:
            raise ValueError(f"mae_mask_ratio must lie in (0, 1) (MAE: 0.75), got {self.mae_mask_ratio}.")
        if self.pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling={self.pooling!r} is unknown; allowed: {', '.join(POOLING_CHOICES)}.")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


__all__ = ["MedViTConfig", "power_of_two_patch_sizes"]
