"""Training images per second: this project's full training step against the conventional PyTorch pipeline, side
by side in one run, at the same geometry and batch size.

    .venv/bin/python benchmarks/throughput.py                            # vit_lsa and vit, bf16 and fp32, CPU
    .venv/bin/python benchmarks/throughput.py --geometry seed            # the seed's 72 px, patch 6
    .venv/bin/python benchmarks/throughput.py --models vit_lsa vit vit_conv_lsa --results  # into results/
    .venv/bin/python benchmarks/throughput.py --models vit_lsa --dtype fp32 --workers 0 1 2
    .venv/bin/python benchmarks/throughput.py --device cuda --steps 50   # on a GPU (see the README)
    .venv/bin/python benchmarks/throughput.py --quick                    # smoke test: batch 8, 2 steps
    .venv/bin/python benchmarks/throughput_table.py results/throughput_*.json   # the README's Markdown table

Geometry (`--geometry`): each model is built as the recipe of that name builds it for `--dataset` and the file size
`--size` (`training.recipes.recipe_defaults(...)["config_overrides"]`), and both pipelines augment as that recipe
says (its preset with the data set's overrides, through train.py's own `training.arguments.augmentation_config`):

- `default` (the default): the project's default recipe. At 28 px: the file's own resolution, patch 4 (a 7×7 grid),
  mean-pooled tokens into one linear layer, no dropout, stochastic depth 0.1; BloodMNIST's `vit` a 14×14 grid (patch
  2, heads of 16, 4 blocks, hidden 128, MLP 256); `vit_conv_lsa` 4 blocks. The seed's flip / rotation / zoom
  augmentation (BloodMNIST: no zoom); AdamW, weight decay 0.05, label smoothing 0.1.
- `seed`: the seed notebooks' recipe: the models' config defaults (72×72 input, patch 6, dim 64, depth 8, 4 heads of
  64, MLP 128, dropout 0.1, all 144 tokens flattened into an MLP 2048 → 1024 head; `vit_conv_lsa` patch 8), flip /
  rotation ±10.8° / zoom ±30 %, AdamW, weight decay 1e-4, no label smoothing.

Ours: exactly the step train.py runs (`training.trainer.make_batch` and `training_step`, imported): `DeviceSplit`
batches by index from a prepared `training_loader`, `BatchTransform(<augmentation>, <image size>)` on the device, the
model's forward under accelerate's mixed precision (`Accelerator(mixed_precision="bf16")` wraps the forward in
autocast), `train.training_loss`, `accelerator.backward`, `accelerator.clip_grad_norm_(1.0)`, the recipe's optimiser
(`build_optimizer`, with the fused update where train.py uses it), a cosine scheduler.

The anchor, what a researcher would write instead: lucidrains' `vit-pytorch` built from ours' config, so at the same
geometry (image_size, patch_size, dim = hidden_size, depth = num_hidden_layers, heads = num_attention_heads,
dim_head = attention_head_dim, mlp_dim = intermediate_size, dropout = emb_dropout = hidden_dropout_prob, and
`pool="mean"` where ours mean-pools): `vit_for_small_dataset.ViT` (SPT + LSA) for `vit_lsa`, `vit.ViT` for `vit`; a
torch `DataLoader` over the training images as PIL images with per-sample torchvision transforms (resize to the
model's input size, then the same augmentation, to tensor, normalise: `benchmarks/data_pipeline.py`'s conventional
pipeline), AdamW with the same weight decay and label smoothing, `torch.autocast` for bf16. Its worker count is swept
(`--workers`) and the best is taken. Differences that remain:

- Heads. `seed`: ours flattens all 144 tokens into an MLP 2048 → 1024 (about 10 % more FLOPs per image and 19 M more
  parameters for AdamW, which the GFLOP/img column shows); vit-pytorch has no flatten pooling, so its head is the CLS
  token, a LayerNorm and one linear layer. `default`: both mean-pool into one linear layer, but
  `vit_for_small_dataset.ViT` keeps its CLS token when mean-pooling (one token more than ours' 49).
- vit-pytorch has no stochastic depth (ours: drop_path 0.1 at `default`, a per-sample mask on each residual branch:
  the same matrix products, a few more element-wise ones); `vit.ViT` layer-norms each patch before and after its
  projection; vit-pytorch's SPT shifts by one pixel, ours by half a patch (same cost).
- `vit_conv_lsa` has no anchor (n/a, left out of the ratios): vit-pytorch's `cct.CCT` has the same convolutional
  tokenizer, but its attention ties heads × head width to the embedding width (4 heads of 16 at width 64 against
  ours' 4 of 64), it has no LSA, a post-norm MLP and sequence pooling: a cheaper, different transformer.

Both see the same images (the real training split of `--dataset`), the same batch size (`--batch_size`, 128 as the
default recipe's; the seed recipe's is 256), full batches only (`drop_last`), and the same process settings
(threads, and, on CPU, `training.performance.tune_cpu_allocator()` unless `--no_tune_allocator`). Every pipeline
runs `--warmup` untimed steps (default 5) after it is built, in each dtype: oneDNN's first bf16 steps (kernel
selection and code generation) are far slower than the later ones. Runs are interleaved (`--repeats`), so a burst of
load from elsewhere hits every pipeline alike; the best and the median run are reported. Model FLOPs per image are
the matrix products of one forward and backward (`torch.utils.flop_counter.FlopCounterMode`, attention counted
through its written-out form); the peak is the best matrix-product rate measured on this device in the step's dtype
(`torch.mm` / `F.linear`, square sizes). On a CPU without AMX / AVX-512 BF16, bf16 is emulated and far slower than
fp32 for both pipelines (train.py warns).

Output: `--json PATH` writes the run's record (command, machine, device, date, geometry, each model's config
overrides, config and anchor, and per pipeline and dtype the img/s of every run, best and median, FLOPs and % of
peak); `--results` adds it to `results/throughput_<device>.json` (`<device>`: `cpu-<cpu name>` or
`cuda-<gpu name>`), replacing an earlier record of the same geometry and data set.
`benchmarks/throughput_table.py` turns such files into the README's Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import functools
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import data  # noqa: E402
import models  # noqa: E402
from training.arguments import AUGMENTATION_OVERRIDES, augmentation_config  # noqa: E402
from training.methods import MethodList  # noqa: E402
from training.optimization import build_optimizer, build_scheduler, fused_optimizer_pays, training_loss  # noqa: E402
from training.recipes import recipe_defaults  # noqa: E402
from training.trainer import make_batch, training_step  # noqa: E402
from data_pipeline import SHARED_DATA_DIR, PerSampleDataset, per_sample_transform  # noqa: E402
from throughput_table import best_row, read_records  # noqa: E402
from training.performance import restore_cpu_allocator, tune_cpu_allocator  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
MODELS = ("vit_lsa", "vit", "vit_conv_lsa")
DEFAULT_MODELS = ("vit_lsa", "vit")
# --geometry: the recipe (recipes/<name>.yaml) whose model geometry, augmentation and optimiser both pipelines use.
GEOMETRIES = ("default", "seed")
# The anchor for each model: vit-pytorch's module and class (None: no matching model, anchor n/a).
ANCHORS = {"vit_lsa": ("vit_pytorch.vit_for_small_dataset", "ViT"), "vit": ("vit_pytorch.vit", "ViT"),
           "vit_conv_lsa": None}
RESULTS_DIR = ROOT / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS),
        help="models to measure (vit_conv_lsa: ours only, no anchor)")
    add("--geometry", choices=GEOMETRIES, default="default",
        help="default: the default recipe's geometry and augmentation for --dataset and --size (28 px, patch 4, "
             "...); seed: the seed's 72 px, patch 6 and the models' config defaults")
    add("--dtype", nargs="+", choices=tuple(DTYPES), default=["bf16", "fp32"],
        help="precisions to measure (ours: accelerate's mixed_precision; anchor: torch.autocast)")
    add("--batch_size", type=int, default=128)
    add("--steps", type=int, default=8, help="timed training steps per run")
    add("--warmup", type=int, default=5, help="untimed steps of every pipeline in every dtype before its first run "
                                              "(oneDNN's first bf16 steps are slow; more with --compile)")
    add("--repeats", type=int, default=3, help="interleaved timed runs per pipeline")
    add("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts tried for the anchor "
                                                                "(each kept alive through the run)")
    add("--dataset", default="breastmnist", help="MedMNIST flag whose training split feeds both pipelines (and "
                                                 "whose recipe layer --geometry default uses)")
    add("--size", type=int, default=28, help="MedMNIST file size (source images; --geometry seed resizes to 72)")
    add("--data_dir", default=None, help=f"npz folder (default: {SHARED_DATA_DIR} if present, else "
                                          "$MEDMNIST_DATA_DIR)")
    add("--cache_dir", default=None, help="Arrow cache (default: $HF_DATASETS_CACHE/medmnist)")
    add("--synthetic", action="store_true", help="a synthetic file instead of the real data")
    add("--device", default="cpu", help="cpu or cuda (cuda: written for, not yet run on, a GPU)")
    add("--compile", action="store_true", help="ours: model.compile() (torch.compile in place; clean state dict)")
    add("--compile_anchor", action="store_true", help="the anchor: torch.compile too")
    add("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    add("--no_tune_allocator", action="store_true", help="keep glibc malloc's defaults (CPU)")
    add("--skip_anchor", action="store_true")
    add("--no_peak", action="store_true", help="skip the matrix-product peak measurement")
    add("--seed", type=int, default=0)
    add("--json", default=None, help="write the run's record to this file")
    add("--results", action="store_true", help="add the run's record to results/throughput_<device>.json "
                                               "(replacing one of the same geometry and data set)")
    add("--quick", action="store_true", help="smoke test: batch 8, 2 steps, one run, synthetic data if none")
    args = parser.parse_args(argv)
    if args.quick:
        if args.results:
            parser.error("--results with --quick: a smoke run's figures are not results (use --json PATH)")
        args.batch_size = min(args.batch_size, 8)
        args.steps, args.warmup, args.repeats = min(args.steps, 2), 1, 1
        args.workers = args.workers[:1]
    return args


# --- data -----------------------------------------------------------------------------------------------------


def load_training_split(args):
    """(DeviceSplit of the training images on the device, source description)."""
    data_dir = args.data_dir or (str(SHARED_DATA_DIR) if SHARED_DATA_DIR.is_dir() else None)
    dataset, source = None, "official file"
    if not args.synthetic:
        try:
            dataset = data.load_medmnist(args.dataset, args.size, data_dir=data_dir, cache_dir=args.cache_dir)
        except data.MedMNISTDataError as error:
            if not args.quick:
                raise
            print(f"[quick] real data unavailable ({str(error).splitlines()[0]}); using a synthetic file")
    if dataset is None:
        from data.synthetic import synthetic_medmnist

        directory = Path(tempfile.mkdtemp(prefix="medmnist-throughput-"))
        source = "synthetic file"
        dataset = synthetic_medmnist(directory, args.dataset, args.size, n_train=max(64, 4 * args.batch_size),
                                     n_val=8, n_test=8).load(cache_dir=directory / "cache")
    return data.DeviceSplit.from_dataset(dataset["train"], args.device), source


# --- the geometry: the recipe's model config, augmentation and optimiser -------------------------------------


def recipe_settings(name: str, geometry: str, dataset: str, size: int) -> SimpleNamespace:
    """What recipe `geometry` trains `name` with on `dataset`'s `size` px file: the model's config overrides, the
    augmentation (train.py's `augmentation_config` on the recipe's values), the optimiser and the label smoothing."""
    values = recipe_defaults(geometry, name, image_size=size, dataset=dataset)
    augmentation = augmentation_config(SimpleNamespace(**{**dict.fromkeys(AUGMENTATION_OVERRIDES), **values}))
    optimizer = SimpleNamespace(optimizer=values["optimizer"], learning_rate=values["learning_rate"],
                                weight_decay=values["weight_decay"], momentum=0.9)
    return SimpleNamespace(config_overrides=values["config_overrides"], augmentation=augmentation,
                           optimizer=optimizer, lr_scheduler_type=values["lr_scheduler_type"],
                           label_smoothing=values["label_smoothing"])


def ours_model(name: str, settings: SimpleNamespace, channels: int, num_labels: int):
    """This project's model as train.py builds it: `models.build_model` with the recipe's config overrides."""
    return models.build_model(name, channels, num_labels, **settings.config_overrides)


def anchor_spec(name: str, config) -> dict | None:
    """vit-pytorch's class and keyword arguments for ours' `config`: the same geometry (None: no anchor)."""
    if ANCHORS[name] is None:
        return None
    module, cls = ANCHORS[name]
    kwargs = {"image_size": config.image_size, "patch_size": config.patch_size, "dim": config.hidden_size,
              "depth": config.num_hidden_layers, "heads": config.num_attention_heads,
              "dim_head": config.attention_head_dim, "mlp_dim": config.intermediate_size,
              "dropout": config.hidden_dropout_prob, "emb_dropout": config.hidden_dropout_prob,
              "pool": "mean" if config.pooling == "mean" else "cls"}
    return {"class": f"{module}.{cls}", "kwargs": kwargs}


def anchor_model(name: str, config, channels: int, num_classes: int):
    """lucidrains' vit-pytorch at ours' geometry (`anchor_spec`)."""
    import importlib

    spec = anchor_spec(name, config)
    module, cls = spec["class"].rsplit(".", 1)
    return getattr(importlib.import_module(module), cls)(num_classes=num_classes, channels=channels, **spec["kwargs"])


# --- the two training steps -----------------------------------------------------------------------------------


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def make_accelerator(dtype: str, device: torch.device):
    from accelerate import Accelerator, DataLoaderConfiguration

    reset_accelerate()
    return Accelerator(mixed_precision=MIXED_PRECISION[dtype], cpu=device.type == "cpu",
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def ours(name: str, settings: SimpleNamespace, accelerator, split, mean, std, args):
    """(model, step iterator): train.py's training step, one full step per `next()`, yielding the batch size."""
    from accelerate.utils import set_seed

    set_seed(args.seed)
    model = ours_model(name, settings, split.num_channels, split.num_labels)
    reference = copy.deepcopy(model)  # for the FLOP count (an uncompiled, unwrapped copy)
    if args.compile:
        model.compile()
    augmentation = settings.augmentation
    transform = data.BatchTransform(augmentation, model.config.image_size, mean, std).to(accelerator.device)
    loader = data.training_loader(len(split), args.batch_size, seed=args.seed, drop_last=True,
                                  num_processes=accelerator.num_processes)
    optimizer = build_optimizer(settings.optimizer, model, fused=fused_optimizer_pays(accelerator))
    scheduler = build_scheduler(settings.lr_scheduler_type, optimizer, 10, 10**6)
    model, optimizer, scheduler, loader = accelerator.prepare(model, optimizer, scheduler, loader)
    model.train()
    task_loss = functools.partial(training_loss, multilabel=split.is_multilabel,
                                  label_smoothing=settings.label_smoothing)

    def steps():  # train.py's own step function, with no training method switched on
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            for samples in loader:
                batch = make_batch(split, samples, transform, augmentation, split.num_labels, args.seed, epoch)
                training_step(model, batch, accelerator=accelerator, optimizer=optimizer, scheduler=scheduler,
                              methods=MethodList([]), task_loss=task_loss, clipped_parameters=list(model.parameters()),
                              max_grad_norm=1.0)
                yield len(samples["indices"])
            epoch += 1

    return reference, steps()


def _worker_init(_worker_id: int):
    # The workers are forked from this (large, allocator-tuned) process: without this they copy its freed heap.
    restore_cpu_allocator()


def anchor(name: str, config, settings: SimpleNamespace, dtype: str, workers: int, images_nhwc, labels, mean, std,
           args):
    """(model, step iterator): the conventional loop at ours' geometry (`config`), one step per `next()`, yielding
    the batch size."""
    from torch.utils.data import DataLoader

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = anchor_model(name, config, images_nhwc.shape[-1], int(labels.max()) + 1).to(device).train()
    reference = copy.deepcopy(model)
    if args.compile_anchor:
        model = torch.compile(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.optimizer.learning_rate,
                                  weight_decay=settings.optimizer.weight_decay)
    dataset = PerSampleDataset(images_nhwc, labels,
                               per_sample_transform(settings.augmentation, config.image_size, mean, std))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(args.seed), worker_init_fn=_worker_init)
    autocast = dtype != "fp32"

    def steps():
        while True:
            for pixel_values, targets in loader:
                pixel_values = pixel_values.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True).long().view(-1)
                with torch.autocast(device.type, dtype=DTYPES[dtype], enabled=autocast):
                    logits = model(pixel_values)
                loss = F.cross_entropy(logits.float(), targets, label_smoothing=settings.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                yield len(targets)

    return reference, steps()

# --- measurements ---------------------------------------------------------------------------------------------


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(iterator, steps: int, device: torch.device) -> tuple[int, float]:
    """(images, seconds) of `steps` training steps."""
    synchronize(device)
    start = time.perf_counter()
    images = sum(next(iterator) for _ in range(steps))
    synchronize(device)
    return images, time.perf_counter() - start


def training_flops(forward, model, example: torch.Tensor) -> tuple[float, float]:
    """(forward, forward + backward) matrix-product FLOPs per image of `model`, counted in fp32 on the CPU with
    the attention written out (the fused kernels' FLOPs are not all registered with the counter)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).float().cpu().train()
    example = example.float().cpu()
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward_counter:
            logits = forward(model, example)
        with FlopCounterMode(display=False) as backward_counter:
            logits.float().sum().backward()
    batch = example.shape[0]
    forward_flops = forward_counter.get_total_flops() / batch
    return forward_flops, forward_flops + backward_counter.get_total_flops() / batch


def matmul_peak(device: torch.device, dtype: torch.dtype, quick: bool) -> dict:
    """The best matrix-product rate (FLOP/s) of `torch.mm` and `F.linear` on square matrices, growing the size
    while one product is predicted to take under ~2 s (bf16 without hardware support is slow on some CPUs)."""
    sizes = [256] if quick else ([4096, 8192] if device.type == "cuda" else [512, 1024, 2048, 4096])
    best = {"flops": 0.0, "size": None, "op": None}
    for size in sizes:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        longest = 0.0
        for op_name, op in (("mm", torch.mm), ("linear", F.linear)):
            op(a, b)
            synchronize(device)
            runs, elapsed = 0, 0.0
            while runs < 3 or (elapsed < 0.5 and runs < 50):
                start = time.perf_counter()
                op(a, b)
                synchronize(device)
                seconds = time.perf_counter() - start
                elapsed, runs = elapsed + seconds, runs + 1
                rate = 2 * size**3 / seconds
                if rate > best["flops"]:
                    best = {"flops": rate, "size": size, "op": op_name}
                if seconds > 1.0:
                    break
            longest = max(longest, elapsed / runs)
        if longest * 8 > 2.0:  # the next size costs 8× as much
            break
    return best


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    capability = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({capability}), "
            f"{torch.get_num_threads()} threads")


def slug(text: str) -> str:
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def device_slug(device: torch.device) -> str:
    """`cpu-<short cpu name>` or `cuda-<gpu name>`, for file names: `cpu-intel-xeon-platinum-8481c`,
    `cpu-amd-epyc-7b13`, `cuda-nvidia-h200`."""
    if device.type == "cuda":
        return f"cuda-{slug(torch.cuda.get_device_name(device))}"
    name = re.sub(r"\((R|TM|tm|r)\)", " ", cpu_name()).split("@")[0]
    name = re.sub(r"\b(CPU|Processor|\d+-Core)\b", " ", name, flags=re.IGNORECASE)
    return f"{device.type}-{slug(name) or slug(platform.machine())}"


def peak_memory_gb() -> float:
    """Peak resident memory of this process (Linux: ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --- main -----------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = device.type == "cpu" and not args.no_tune_allocator and tune_cpu_allocator()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    try:
        split, source = load_training_split(args)
    except data.MedMNISTDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if len(split) < args.batch_size:
        print(f"error: {len(split)} training images, fewer than one batch of {args.batch_size}", file=sys.stderr)
        return 2
    try:
        settings = {name: recipe_settings(name, args.geometry, args.dataset, args.size) for name in args.models}
        configs = {name: models.build_config(name, split.num_channels, split.num_labels,
                                             **settings[name].config_overrides) for name in args.models}
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    mean, std = data.channel_mean_std(split.images)
    images_nhwc = split.images.cpu().permute(0, 2, 3, 1).numpy()
    labels = split.labels.cpu().numpy()

    print(f"{args.dataset} train split ({source}, {len(split)} images {split.images.shape[-1]} px), batch "
          f"{args.batch_size}, {args.warmup} warm-up steps, {args.steps} timed steps × {args.repeats} interleaved "
          f"runs; geometry {args.geometry}:")
    for name in args.models:
        config, spec = configs[name], anchor_spec(name, configs[name])
        print(f"  {name}: {config.image_size} px, patch {config.patch_size}, {config.pooling} pooling, "
              f"overrides {settings[name].config_overrides}; anchor: {spec['class'] if spec else 'n/a'}")
    print(f"machine: {machine_description(device)}; glibc allocator tuned: {bool(allocator)}; "
          f"load average at start: {load_average()}")

    results = []
    for dtype in args.dtype:
        accelerator = make_accelerator(dtype, device)
        runners = []  # [name, pipeline, workers, iterator, flops per image (forward, training), setup seconds]
        for name in args.models:
            config = configs[name]
            example = torch.zeros(2, split.num_channels, config.image_size, config.image_size)
            start = time.perf_counter()
            reference, iterator = ours(name, settings[name], accelerator, split, mean, std, args)
            for _ in range(args.warmup):
                next(iterator)
            flops = training_flops(lambda m, x: m(pixel_values=x).logits, reference, example)
            runners.append([name, "ours (train.py step)", "-", iterator, flops, time.perf_counter() - start])
            if args.skip_anchor or anchor_spec(name, config) is None:
                continue
            for workers in args.workers:
                start = time.perf_counter()
                reference, iterator = anchor(name, config, settings[name], dtype, workers, images_nhwc, labels, mean,
                                             std, args)
                for _ in range(args.warmup):
                    next(iterator)
                flops = training_flops(lambda m, x: m(x), reference, example)
                runners.append([name, "anchor (vit-pytorch + DataLoader)", str(workers), iterator, flops,
                                time.perf_counter() - start])
        rates = [[] for _ in runners]
        for _ in range(args.repeats):
            for index, runner in enumerate(runners):
                images, seconds = run_steps(runner[3], args.steps, device)
                rates[index].append(images / seconds)
        peak = None if args.no_peak else matmul_peak(device, DTYPES[dtype], args.quick)
        for runner, runner_rates in zip(runners, rates):
            name, pipeline, workers, _, (forward_flops, train_flops), warmup_seconds = runner
            best, median = max(runner_rates), statistics.median(runner_rates)
            achieved = best * train_flops
            results.append({
                "model": name, "dtype": dtype, "pipeline": pipeline, "workers": workers,
                "image_size": configs[name].image_size,
                "images_per_second_best": best, "images_per_second_median": median, "runs": runner_rates,
                "forward_gflop_per_image": forward_flops / 1e9, "training_gflop_per_image": train_flops / 1e9,
                "achieved_tflops": achieved / 1e12,
                "peak_tflops": None if peak is None else peak["flops"] / 1e12,
                "fraction_of_peak": None if not peak or not peak["flops"] else achieved / peak["flops"],
                "peak_measured_with": peak, "setup_and_warmup_seconds": warmup_seconds,
            })
        for runner in runners:
            runner[3].close()  # frees the anchor's DataLoader, which ends its worker processes
        del runners
        print(f"  {dtype}: done (load average {load_average()}, peak memory {peak_memory_gb():.1f} GB)")
    reset_accelerate()

    print_table(results)
    summary = ratios(results)
    for line in summary["lines"]:
        print(line)
    print(f"load average at the end: {load_average()}")
    if args.json or args.results:
        record = {
            "command": " ".join(["python", "benchmarks/throughput.py", *argv]),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": machine_description(device), "device": device_slug(device), "geometry": args.geometry,
            "dataset": args.dataset, "size": args.size, "allocator_tuned": bool(allocator), "source": source,
            "models": {name: model_record(name, settings[name], configs[name]) for name in args.models},
            "args": vars(args), "results": results, "ratios": summary["ratios"],
            "load_average_end": load_average(), "peak_memory_gb": peak_memory_gb(),
        }
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2, default=str))
        if args.results:
            path = add_to_results(record, RESULTS_DIR / f"throughput_{record['device']}.json")
            print(f"record added to {path}")
    return 0


def model_record(name: str, settings: SimpleNamespace, config) -> dict:
    """How `name` was built and trained in this run: the recipe's config overrides, the resulting config's
    geometry and regularisation fields, the augmentation, the optimiser and the anchor (None: n/a)."""
    return {"config_overrides": settings.config_overrides,
            "config": {field: getattr(config, field) for field in models.config_field_names(name)},
            "augmentation": dataclasses.asdict(settings.augmentation), "optimizer": vars(settings.optimizer),
            "label_smoothing": settings.label_smoothing, "anchor": anchor_spec(name, config)}


def add_to_results(record: dict, path: Path) -> Path:
    """Add `record` to the results file `path`, replacing a record of the same geometry, data set and file size."""
    key = lambda r: (r.get("geometry", "seed"), r.get("dataset"), r.get("size"))  # noqa: E731
    records = [r for r in (read_records(path) if path.exists() else []) if key(r) != key(record)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"records": records + [record]}, indent=2, default=str))
    return path


def print_table(results):
    header = (f"\n{'model':<14}{'dtype':<6}{'pipeline':<35}{'workers':>8}{'img/s best':>12}{'median':>9}"
              f"{'GFLOP/img':>11}{'TFLOP/s':>9}{'% peak':>8}")
    print(header)
    print("-" * (len(header) - 1))
    for r in results:
        peak = "n/a" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}"
        print(f"{r['model']:<14}{r['dtype']:<6}{r['pipeline']:<35}{r['workers']:>8}"
              f"{r['images_per_second_best']:>12.1f}{r['images_per_second_median']:>9.1f}"
              f"{r['training_gflop_per_image']:>11.2f}{r['achieved_tflops']:>9.3f}{peak:>8}")
    peaks = {r["dtype"]: r["peak_measured_with"] for r in results if r["peak_measured_with"]}
    for dtype, peak in peaks.items():
        print(f"peak {dtype}: {peak['flops'] / 1e12:.3f} TFLOP/s ({peak['op']} {peak['size']}×{peak['size']})")


def ratios(results) -> dict:
    """Ours against the anchor's best worker count: per dtype, and against the anchor's bf16 (the anchor's fastest).
    Models without an anchor are left out."""
    lines, table = ["\nours / anchor (anchor at its best worker count; best runs, medians in brackets):"], []
    models_seen = list(dict.fromkeys(r["model"] for r in results))
    dtypes_seen = list(dict.fromkeys(r["dtype"] for r in results))
    for model in models_seen:
        for ours_dtype in dtypes_seen:
            mine = best_row(results, model, ours_dtype, True)
            for anchor_dtype in dtypes_seen:
                theirs = best_row(results, model, anchor_dtype, False)
                if mine is None or theirs is None:
                    continue
                ratio = mine["images_per_second_best"] / theirs["images_per_second_best"]
                median_ratio = mine["images_per_second_median"] / theirs["images_per_second_median"]
                table.append({"model": model, "ours_dtype": ours_dtype, "anchor_dtype": anchor_dtype,
                              "anchor_workers": theirs["workers"], "ratio_best": ratio, "ratio_median": median_ratio})
                lines.append(f"  {model:<12} ours {ours_dtype} / anchor {anchor_dtype} ({theirs['workers']} workers): "
                             f"{ratio:.2f}x ({median_ratio:.2f}x)")
        if not any(best_row(results, model, dtype, False) for dtype in dtypes_seen):
            lines.append(f"  {model:<12} anchor n/a")
    return {"lines": lines, "ratios": table}


if __name__ == "__main__":
    sys.exit(main())
