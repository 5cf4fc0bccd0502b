"""Where a training step's time goes: train.py's own step (as `benchmarks/throughput.py` builds it) under
`torch.profiler`, per operator, with the dtypes each operator ran in and the casts between precisions.

    .venv/bin/python benchmarks/profile_step.py --models vit_lsa --dtype bf16                 # default geometry
    .venv/bin/python benchmarks/profile_step.py --models vit --dataset bloodmnist --dtype fp32 bf16
    .venv/bin/python benchmarks/profile_step.py --models vit_lsa --geometry seed --by_shape

The step, data and options are `benchmarks/throughput.py`'s (ours only). For each model and dtype: images/s over `--steps` steps after `--warmup`, then `--profiled` steps under the profiler: the
operators by self time (ms per step, share of the step, calls per step, the dtypes of their tensor inputs), and the
casts (`aten::_to_copy` between floating dtypes: how many per step, MB moved, which direction). The dtypes come from a
`TorchDispatchMode` over one more step, which sees every aten call with its arguments.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (the benchmark's data, recipe settings and train.py's step)

SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
         torch.int64: "i64", torch.int32: "i32", torch.bool: "bool", torch.uint8: "u8"}


class DtypeRecorder(TorchDispatchMode):
    """Counts, per aten operator, the dtypes of its tensor inputs, and the floating-point casts with their bytes."""

    def __init__(self):
        super().__init__()
        self.dtypes = collections.defaultdict(collections.Counter)
        self.casts = collections.Counter()  # (from, to) -> count
        self.cast_bytes = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        name = f"aten::{func.overloadpacket.__name__}"
        self.dtypes[name].update({"/".join(sorted({SHORT.get(t.dtype, str(t.dtype)) for t in tensors})) or "-": 1})
        out = func(*args, **kwargs)
        if name == "aten::_to_copy" and tensors and isinstance(out, torch.Tensor):
            source, target = tensors[0].dtype, out.dtype
            if source != target and source.is_floating_point and target.is_floating_point:
                key = f"{SHORT.get(source)}->{SHORT.get(target)}"
                self.casts[key] += 1
                self.cast_bytes[key] += out.numel() * out.element_size()
        return out


def profile_dtype(name: str, dtype: str, split, mean, std, args) -> None:
    from torch.profiler import ProfilerActivity, profile

    settings = throughput.recipe_settings(name, args.geometry, args.dataset, args.size)
    accelerator = throughput.make_accelerator(dtype, torch.device(args.device))
    _, steps = throughput.ours(name, settings, accelerator, split, mean, std, args)
    for _ in range(args.warmup):
        next(steps)
    images, seconds = throughput.run_steps(steps, args.steps, torch.device(args.device))
    print(f"\n== {name}, {args.geometry} geometry, {dtype}: {images / seconds:.1f} img/s "
          f"({1000 * seconds / args.steps:.1f} ms a step over {args.steps} steps)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as profiler:
        for _ in range(args.profiled):
            next(steps)
    recorder = DtypeRecorder()
    with recorder:
        next(steps)
    events = profiler.key_averages(group_by_input_shape=args.by_shape)
    total = sum(event.self_cpu_time_total for event in events)
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:args.rows]
    print(f"{'operator':<48}{'ms/step':>9}{'share':>7}{'calls':>7}  dtypes (calls)" + ("  shapes" if args.by_shape else ""))
    for event in rows:
        dtypes = ", ".join(f"{k} {v}" for k, v in recorder.dtypes.get(event.key, collections.Counter()).most_common(3))
        shapes = f"  {str(event.input_shapes)[:70]}" if args.by_shape else ""
        print(f"{event.key[:47]:<48}{event.self_cpu_time_total / 1000 / args.profiled:>9.2f}"
              f"{100 * event.self_cpu_time_total / total:>6.1f}%{event.count / args.profiled:>7.0f}  {dtypes}{shapes}")
    casts = ", ".join(f"{k}: {n} ({recorder.cast_bytes[k] / 1e6:.1f} MB)" for k, n in recorder.casts.most_common())
    print(f"casts between floating dtypes in one step: {casts or 'none'}")
    steps.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Every other option is benchmarks/throughput.py's (--models, --dtype, "
                                            "--geometry, --dataset, --steps, --warmup, --threads, --compile, ...).")
    add = parser.add_argument
    add("--profiled", type=int, default=3, help="steps under the profiler")
    add("--rows", type=int, default=25)
    add("--by_shape", action="store_true", help="one row per operator and input shapes")
    own, rest = parser.parse_known_args(argv)
    args = argparse.Namespace(**vars(throughput.parse_args(rest)), **vars(own))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cpu" and not args.no_tune_allocator:
        throughput.tune_cpu_allocator()
    split, source = throughput.load_training_split(args)
    mean, std = throughput.data.channel_mean_std(split.images)
    print(f"{args.dataset} ({source}), batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{throughput.machine_description(torch.device(args.device))}")
    for name in args.models:
        for dtype in args.dtype:
            profile_dtype(name, dtype, split, mean, std, args)
    throughput.reset_accelerate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
