"""Batched augmentation on the device: uint8 (B, C, H, W) in, normalised float32 (B, C, S, S) out.

Training: every sample draws its own flip, rotation, zoom, crop / translation (and RandAugment op choice), all
fused into one affine matrix per sample and applied with ONE `F.grid_sample` call (on `F.affine_grid`'s grid, built
as a single matrix product) that also does the resize to the model's input size. Colour ops, random erasing and
normalisation are a few tensor ops per batch.
Mixup / cutmix is a separate step (`mix_batch`) because it changes the targets.

Evaluation (`train=False`): exactly the steps of the model's saved `ViTImageProcessor` (see
`models.build_image_processor`): bilinear antialiased resize of the uint8 images with torchvision (the function the
processor calls), then `(x - 255*mean) / (255*std)`. On CPU the result is bit-identical to
`processor(images=pil_images).pixel_values`; on CUDA torchvision resizes uint8 in float and rounds, which can differ
from the CPU's fixed-point kernel by one uint8 step (1 / (255*std) after normalisation) on some pixels.

Per-sample randomness comes from each sample's key (`data.sample_random`): pass `sample_keys` (from (seed, epoch,
place in the epoch)) and an image is augmented the same way whichever batch, process or device draws it; without keys
they are drawn from torch's global RNG. Mixup / cutmix draw their per-batch scalars from the CPU's global RNG.

Why plain torch rather than kornia (installed): measured on this project's 2-core CPU, one thread, batch 128, 28 px
-> 3×72×72, kornia's flip + RandomAffine (after a resize) took 5-6x as long as the fused seed transform here,
kornia's RandAugment(2, 9) about 3x as long as the one here (and it picks the same two ops for the whole batch),
kornia's RandomErasing about 2x. The per-sample RandAugment op choice and the fusion are what is written by hand.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as tvF
from torch import nn

from .sample_random import SampleRandom

FILL_MODES = ("reflection", "zeros", "border")
AUGMENTATION_PRESETS = ("none", "shift", "seed", "strong")  # names for AugmentationConfig.preset (command-line choices)
RANDAUGMENT_MAX_M = 30  # magnitudes on torchvision's 31-bin scale (RandAugment paper: m in 0..30)


@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
    """What `BatchTransform` (and `mix_batch`) do at training time. Every field defaults to "off".

    Attributes:
        horizontal_flip, vertical_flip: flip each sample with probability 1/2.
        rotation_degrees: rotate by U(-d, d) degrees.
        zoom: scale the sampled area by U(1 - zoom, 1 + zoom) (0.3: [0.7, 1.3]; > 1 zooms out, as in Keras).
        crop_scale: random resized crop: area fraction range of the crop, e.g. (0.5, 1.0); None for off.
        crop_ratio: aspect-ratio range of that crop.
        translate: shift by up to this fraction of the side in x and y (pad-and-crop style); 0 for off.
        fill_mode: what appears outside the source image: "reflection" (Keras' default), "zeros" or "border".
        randaugment: (n, m): n ops per sample, each picked independently per sample, at magnitude m in 0..30
            (torchvision's scale); None for off. Ops: identity, brightness, contrast, colour (RGB only),
            sharpness, posterize, solarize, autocontrast, rotate, shear x/y, translate x/y. Not equalize.
        random_erasing: probability to erase one random rectangle (2-33 % of the area) per sample, set to 0 after
            normalisation (the data set's mean colour).
        mixup_alpha, cutmix_alpha: Beta(α, α) parameters; 0 for off. With both on, each batch picks one at random.
        mix_prob: probability that a batch is mixed at all (when an alpha is on).
    """

    horizontal_flip: bool = False
    vertical_flip: bool = False
    rotation_degrees: float = 0.0
    zoom: float = 0.0
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    translate: float = 0.0
    fill_mode: str = "reflection"
    randaugment: tuple[int, int] | None = None
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0

    def __post_init__(self):
        def require(condition, message):
            if not condition:
                raise ValueError(f"AugmentationConfig: {message}")

        require(self.rotation_degrees >= 0, f"rotation_degrees must be >= 0, got {self.rotation_degrees}")
        require(0 <= self.zoom < 1, f"zoom must be in [0, 1), got {self.zoom}")
        require(0 <= self.translate <= 1, f"translate must be in [0, 1], got {self.translate}")
        if self.crop_scale is not None:
            low, high = self.crop_scale
            require(0 < low <= high <= 1, f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
            require(0 < self.crop_ratio[0] <= self.crop_ratio[1], f"bad crop_ratio {self.crop_ratio}")
        require(self.fill_mode in FILL_MODES, f"fill_mode must be one of {FILL_MODES}, got {self.fill_mode!r}")
        if self.randaugment is not None:
            n, m = self.randaugment
            require(n >= 1 and 0 <= m <= RANDAUGMENT_MAX_M,
                    f"randaugment=(n, m) needs n >= 1 and 0 <= m <= 30, got {self.randaugment}")
        for name in ("random_erasing", "mix_prob"):
            require(0 <= getattr(self, name) <= 1, f"{name} must be a probability, got {getattr(self, name)}")
        require(self.mixup_alpha >= 0 and self.cutmix_alpha >= 0, "mixup_alpha and cutmix_alpha must be >= 0")

    @classmethod
    def none(cls) -> AugmentationConfig:
        """No augmentation: training batches get only the resize and normalisation."""
        return cls()

    @classmethod
    def shift(cls) -> AugmentationConfig:
        """Random shifts of up to ±10% of the side only (no flip, rotation or zoom). Tried for `vit_lsa` on
        BreastMNIST: level with the seed's flip / rotation / zoom in cross-validation (README, "Results")."""
        return cls(translate=0.1)

    @classmethod
    def seed(cls) -> AugmentationConfig:
        """The seed notebooks' Keras pipeline: RandomFlip("horizontal"), RandomRotation(0.03) (±0.03 turn = ±10.8°),
        RandomZoom(0.3) (±30 %), reflection fill (Keras' default)."""
        return cls(horizontal_flip=True, rotation_degrees=0.03 * 360, zoom=0.3)

    @classmethod
    def strong(cls) -> AugmentationConfig:
        """A stronger, DeiT-like policy for small data: flip, random resized crop, RandAugment(2, 9),
        random erasing 0.25, and mixup 0.2 / cutmix 1.0 on half of the batches."""
        return cls(
            horizontal_flip=True,
            crop_scale=(0.5, 1.0),
            randaugment=(2, 9),
            random_erasing=0.25,
            mixup_alpha=0.2,
            cutmix_alpha=1.0,
            mix_prob=0.5,
        )

    @classmethod
    def preset(cls, name: str) -> AugmentationConfig:
        """`none`, `shift`, `seed` or `strong` by name (for command lines)."""
        presets = {"none": cls.none, "shift": cls.shift, "seed": cls.seed, "strong": cls.strong}
        if name not in presets:
            raise ValueError(f"Unknown augmentation preset {name!r}; choose one of {', '.join(presets)}.")
        return presets[name]()

    @property
    def has_geometry(self) -> bool:
        """Whether training needs the affine warp (otherwise it is the evaluation resize)."""
        return bool(
            self.horizontal_flip or self.vertical_flip or self.rotation_degrees or self.zoom or self.crop_scale
            or self.translate or self.randaugment
        )

    @property
    def mixes(self) -> bool:
        """Whether `mix_batch` can change anything."""
        return self.mix_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


def processor_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """mean·255 and std·255 as float32 (C, 1, 1), computed exactly as transformers' fused rescale+normalise does."""
    return (
        (torch.tensor([float(m) for m in mean]) * (1.0 / (1 / 255))).view(-1, 1, 1),
        (torch.tensor([float(s) for s in std]) * (1.0 / (1 / 255))).view(-1, 1, 1),
    )


class BatchTransform(nn.Module):
    """uint8 (B, C, H, W) -> normalised float32 (B, C, S, S) on the same device; random per sample when training.

    Args:
        config: the training-time augmentation.
        image_size: the model's input side S.
        mean, std: per-channel statistics in [0, 1] units (as `channel_mean_std` returns and the processor stores).

    Call `transform(images_uint8, train=True, sample_keys=keys)` for training batches (`data.sample_keys`: each
    image's draws then depend only on its key), `train=False` for evaluation (identical to the saved image
    processor). Square images are assumed (MedMNIST).
    """

    def __init__(self, config: AugmentationConfig, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.config = config
        self.image_size = int(image_size)
        scaled_mean, scaled_std = processor_mean_std(mean, std)
        self.register_buffer("mean255", scaled_mean, persistent=False)
        self.register_buffer("std255", scaled_std, persistent=False)
        # Output pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False), with a 1 for the shift.
        centres = (torch.arange(self.image_size, dtype=torch.float32) * 2 + 1) / self.image_size - 1
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("base_grid", torch.stack([xs, ys, torch.ones_like(xs)], -1).view(-1, 3), persistent=False)

    @classmethod
    def for_evaluation(cls, image_size: int, mean: Sequence[float], std: Sequence[float]) -> "BatchTransform":
        """Resize and normalise only, as the saved image processor: validation, test and inference batches."""
        return cls(AugmentationConfig.preset("none"), image_size, mean, std)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, config={self.config}"

    def forward(self, images: torch.Tensor, train: bool = False, sample_keys: torch.Tensor | None = None
                ) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"BatchTransform expects uint8 (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if images.shape[1] != self.mean255.shape[0]:
            raise ValueError(f"images have {images.shape[1]} channels but mean/std have {self.mean255.shape[0]}")
        if self.mean255.device != images.device:  # follow the data (once) rather than fail on a forgotten .to()
            self.to(images.device)
        if train:
            if sample_keys is not None and sample_keys.shape != images.shape[:1]:
                raise ValueError(f"{images.shape[0]} images but sample_keys of shape {tuple(sample_keys.shape)}")
            random = (SampleRandom(sample_keys.to(images.device)) if sample_keys is not None
                      else SampleRandom.from_global_rng(images.shape[0], images.device))
        if not train or not self.config.has_geometry:
            x = self.resize(images).float()
            ops = None
        else:
            ops = self._sample_randaugment(random)
            x = self._warp(images, ops, random)
        if train and ops is not None and ops.colour_choice is not None:
            x = _apply_colour_ops(x, ops)
        x = x.sub_(self.mean255).div_(self.std255)  # same op order as the processor: bit-identical at evaluation
        if train and self.config.random_erasing > 0:
            x = _random_erase(x, self.config.random_erasing, random)
        return x

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """The processor's resize: torchvision bilinear, antialiased, on uint8 (a no-op at the same size)."""
        if images.shape[-2:] == (self.image_size, self.image_size):
            return images
        return tvF.resize(images, [self.image_size, self.image_size], interpolation=tvF.InterpolationMode.BILINEAR,
                          antialias=True)

    # --- training-time geometry -------------------------------------------------------------------------------

    def _warp(self, images: torch.Tensor, ops: _RandAugmentDraw, random: SampleRandom) -> torch.Tensor:
        if images.shape[-1] > self.image_size:  # shrinking: antialias first, then warp at the output size
            images = self.resize(images)
        theta = self._sample_affine(ops, random)
        # = F.affine_grid(theta, ...), as one (2B × 3) @ (3 × S²) GEMM: 0.3 ms instead of 12 ms for 128 × 72² on
        # this CPU (affine_grid runs a batched K=3 matmul); grid_sample reads the permuted grid as fast as a copy.
        size = self.image_size
        grid = torch.mm(theta.reshape(-1, 3), self.base_grid.T).view(-1, 2, size, size).permute(0, 2, 3, 1)
        return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode=self.config.fill_mode,
                             align_corners=False)

    def _sample_affine(self, ops: _RandAugmentDraw, random: SampleRandom) -> torch.Tensor:
        """Per-sample (B, 2, 3) maps from output to input coordinates:
        crop ∘ translation ∘ zoom ∘ rotation ∘ flips ∘ RandAugment geometry."""
        c = self.config
        batch, device = len(random), random.keys.device
        matrix = torch.eye(3, device=device).repeat(batch, 1, 1)
        if ops.geometric is not None:
            matrix = ops.geometric
        flip_x = random.signs() if c.horizontal_flip else torch.ones(batch, device=device)
        flip_y = random.signs() if c.vertical_flip else torch.ones(batch, device=device)
        matrix = _diag(flip_x, flip_y) @ matrix
        if c.rotation_degrees:
            angle = random.uniform(-c.rotation_degrees, c.rotation_degrees)
            matrix = _rotation(torch.deg2rad(angle)) @ matrix
        if c.zoom:
            scale = random.uniform(1 - c.zoom, 1 + c.zoom)
            matrix = _diag(scale, scale) @ matrix
        if c.translate:
            shift = random.uniform(-2 * c.translate, 2 * c.translate, columns=2)  # [-1, 1] spans 2 units
            matrix = _translation(shift[:, 0], shift[:, 1]) @ matrix
        if c.crop_scale is not None:
            matrix = _random_crop_box(random, c.crop_scale, c.crop_ratio) @ matrix
        return matrix[:, :2]

    def _sample_randaugment(self, random: SampleRandom) -> _RandAugmentDraw:
        if self.config.randaugment is None:
            return _RandAugmentDraw(None, None, None, 0.0)
        batch, device = len(random), random.keys.device
        n, m = self.config.randaugment
        colour_ops = [op for op in COLOUR_OPS if self.mean255.shape[0] == 3 or op != "colour"]
        names = colour_ops + list(GEOMETRIC_OPS)
        choice = random.integers(len(names), columns=n)  # with replacement, as torchvision does
        signs = random.signs(columns=n)
        level = m / RANDAUGMENT_MAX_M
        matrix = torch.eye(3, device=device).repeat(batch, 1, 1)
        for slot in range(n):
            for name, (maximum, make) in GEOMETRIC_OPS.items():
                chosen = (choice[:, slot] == names.index(name)).float()
                matrix = make(chosen * signs[:, slot] * maximum * level) @ matrix
        colour_choice = torch.where(choice < len(colour_ops), choice, -1)
        return _RandAugmentDraw(matrix, colour_choice, signs, level, tuple(colour_ops))


@dataclasses.dataclass
class _RandAugmentDraw:
    geometric: torch.Tensor | None  # (B, 3, 3), identity where no geometric op was drawn
    colour_choice: torch.Tensor | None  # (B, n) index into colour_ops, -1 for a geometric op
    signs: torch.Tensor | None  # (B, n) of ±1
    level: float  # m / 30
    colour_ops: tuple[str, ...] = ()


# --- small helpers: random draws and 3×3 matrices -------------------------------------------------------------


def _matrices(a, b, c, d, e, f) -> torch.Tensor:
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, c, d, e, f, zero, zero, one], -1).view(-1, 3, 3)


def _diag(sx, sy):
    zero = torch.zeros_like(sx)
    return _matrices(sx, zero, zero, zero, sy, zero)


def _rotation(radians):
    cos, sin, zero = radians.cos(), radians.sin(), torch.zeros_like(radians)
    return _matrices(cos, -sin, zero, sin, cos, zero)


def _translation(tx, ty):
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _matrices(one, zero, tx, zero, one, ty)


def _shear_x(amount):
    one, zero = torch.ones_like(amount), torch.zeros_like(amount)
    return _matrices(one, amount, zero, zero, one, zero)


def _shear_y(amount):
    one, zero = torch.ones_like(amount), torch.zeros_like(amount)
    return _matrices(one, zero, zero, amount, one, zero)


def _random_crop_box(random: SampleRandom, scale, ratio) -> torch.Tensor:
    """Random resized crop as a matrix: the output square samples a box of the given area / aspect ranges."""
    area = random.uniform(*scale)
    log_ratio = random.uniform(math.log(ratio[0]), math.log(ratio[1]))
    width = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # fractions of the side
    height = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
    cx = random.uniform(-1, 1) * (1 - width)  # keep the box inside the image
    cy = random.uniform(-1, 1) * (1 - height)
    return _translation(cx, cy) @ _diag(width, height)


# RandAugment geometric ops: name -> (magnitude at m=30, matrix builder); magnitudes follow torchvision.
GEOMETRIC_OPS = {
    "rotate": (30.0, lambda degrees: _rotation(torch.deg2rad(degrees))),
    "shear_x": (0.3, _shear_x),
    "shear_y": (0.3, _shear_y),
    "translate_x": (2 * 150 / 331, lambda t: _translation(t, torch.zeros_like(t))),
    "translate_y": (2 * 150 / 331, lambda t: _translation(torch.zeros_like(t), t)),
}
COLOUR_OPS = ("identity", "brightness", "contrast", "colour", "sharpness", "posterize", "solarize", "autocontrast")


# --- RandAugment colour ops on float images in [0, 255] -------------------------------------------------------


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x[:, 0:1] * 0.299 + x[:, 1:2] * 0.587 + x[:, 2:3] * 0.114)


def _blend(x, base, factor):
    return (base + factor.view(-1, 1, 1, 1) * (x - base)).clamp_(0, 255)


def _sharpness_base(x):
    """PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13, as a 3×3 box sum plus 4× the centre
    (avg_pool2d: several times faster than a depthwise conv2d on CPU)."""
    box_sum = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1) * 9
    return (box_sum + 4 * x) / 13


def _colour_op(name: str, x: torch.Tensor, signed: torch.Tensor, level: float) -> torch.Tensor:
    """One colour op on a sub-batch; `signed` is the per-sample ±1 (ops without a sign ignore it)."""
    factor = 1 + signed * 0.9 * level  # torchvision: brightness/contrast/colour/sharpness in 1 ± 0.9·m/30
    if name == "identity":
        return x
    if name == "brightness":
        return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 255)
    if name == "contrast":
        return _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if name == "colour":
        return _blend(x, _grayscale(x), factor)
    if name == "sharpness":
        return _blend(x, _sharpness_base(x), factor)
    if name == "posterize":
        step = 2.0 ** round(level * 4)  # 8 bits at m=0 down to 4 bits at m=30
        return torch.floor(x / step) * step
    if name == "solarize":
        threshold = 255.0 * (1 - level)
        return torch.where(x >= threshold, 255.0 - x, x)
    if name == "autocontrast":
        low = x.amin(dim=(2, 3), keepdim=True)
        high = x.amax(dim=(2, 3), keepdim=True)
        scale = torch.where(high > low, 255.0 / (high - low).clamp_min(1e-6), torch.ones_like(high))
        return ((x - low) * scale).clamp_(0, 255)
    raise ValueError(f"unknown colour op {name!r}")


def _apply_colour_ops(x: torch.Tensor, ops: _RandAugmentDraw) -> torch.Tensor:
    """Apply each sample's drawn colour ops, op by op on the sub-batch that drew it (a few ops per batch)."""
    for slot in range(ops.colour_choice.shape[1]):
        for index, name in enumerate(ops.colour_ops):
            if name == "identity":
                continue
            members = (ops.colour_choice[:, slot] == index).nonzero().squeeze(1)
            if members.numel():
                x[members] = _colour_op(name, x[members], ops.signs[members, slot], ops.level)
    return x


# --- random erasing and mixup / cutmix ------------------------------------------------------------------------


def _random_erase(x: torch.Tensor, probability: float, random: SampleRandom, scale=(0.02, 0.33), ratio=(0.3, 3.3)
                  ) -> torch.Tensor:
    """Per sample, with the given probability, set one random rectangle to 0 (timm/torchvision-style, 'const')."""
    _, _, height, width = x.shape
    device = x.device
    area = random.uniform(*scale)
    log_ratio = random.uniform(math.log(ratio[0]), math.log(ratio[1]))
    box_h = ((area * log_ratio.exp()).sqrt() * height).clamp(1, height)
    box_w = ((area / log_ratio.exp()).sqrt() * width).clamp(1, width)
    top = random.uniform() * (height - box_h)
    left = random.uniform() * (width - box_w)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    erase = (random.uniform() < probability).view(-1, 1)
    row_in = (rows >= top.floor().view(-1, 1)) & (rows < (top + box_h).floor().view(-1, 1)) & erase  # (B, H)
    col_in = (cols >= left.floor().view(-1, 1)) & (cols < (left + box_w).floor().view(-1, 1))  # (B, W)
    keep = ~(row_in[:, None, :, None] & col_in[:, None, None, :])
    return x.mul_(keep.to(x.dtype))  # a float multiply: ~10x faster than masked_fill_ with a broadcast mask on CPU


def targets_from_labels(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """float32 (B, L) targets: one-hot for int64 class indices, the 0/1 matrix as is for multi-label data."""
    if labels.ndim == 2:
        return labels.float()
    return F.one_hot(labels.long(), num_labels).float()


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, num_labels: int, config: AugmentationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix a normalised batch with its reverse; returns (images, soft targets (B, num_labels)).

    One λ ~ Beta(α, α) per batch (timm's "batch" mode); cutmix pastes one box, λ corrected to the box's area.
    A batch that is not mixed (mix_prob, or both alphas 0) still gets float targets, so the loss is always a
    soft-target cross-entropy (or BCE for multi-label data).
    """
    targets = targets_from_labels(labels, num_labels)
    if not config.mixes or torch.rand(()).item() >= config.mix_prob:
        return images, targets
    use_cutmix = config.cutmix_alpha > 0 and (config.mixup_alpha <= 0 or torch.rand(()).item() < 0.5)
    alpha = config.cutmix_alpha if use_cutmix else config.mixup_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = images.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut = math.sqrt(1 - lam)
        box_h, box_w = int(height * cut), int(width * cut)
        cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
        top, bottom = max(cy - box_h // 2, 0), min(cy + box_h // 2, height)
        left, right = max(cx - box_w // 2, 0), min(cx + box_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1 - (bottom - top) * (right - left) / (height * width)
    else:
        images = images * lam + partner * (1 - lam)
    return images, targets * lam + targets.flip(0) * (1 - lam)
