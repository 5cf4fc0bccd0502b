"""`--torch_compile`: the model's training forward and backward compiled with `torch.compile`, for small models whose
GPU step is bound by kernel launches (mode "reduce-overhead" replays each step as one CUDA graph).

    settings = compile_settings(args, accelerator)      # (backend, mode) or None; takes over accelerate's own compile
    compile_for_training(accelerator.unwrap_model(model), *settings)
    with eager():                                        # validation and test
        ...

The model is compiled in place (`nn.Module.compile`): it stays the same module, so its state dict keys, the
checkpoints accelerate saves, `save_pretrained`, `unwrap_model` and resuming are as without compiling (no
`_orig_mod.` prefixes, which a `torch.compile(model)` wrapper would add). Shapes are static (`dynamic=False`): each
batch shape gets its own graph, so an epoch's last, shorter batch compiles once more unless `--dataloader_drop_last`.
"""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_BACKEND = "inductor"


def compile_backends() -> tuple[list[str], list[str]]:
    """(every backend `torch.compile` knows here, the ones worth naming: the usual ones plus "eager" and "aot_eager",
    which compile nothing and serve to debug)."""
    import torch._dynamo

    return (sorted(torch._dynamo.list_backends(exclude_tags=())),
            sorted({*torch._dynamo.list_backends(), "eager", "aot_eager"}))


def check_compile_arguments(args) -> None:
    """ValueError for a `--torch_compile_*` setting that cannot take effect; fills in the default backend, so that the
    run's records name the backend it compiled with."""
    if not args.torch_compile:
        given = [f"--{name} {getattr(args, name)}" for name in ("torch_compile_backend", "torch_compile_mode")
                 if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} without --torch_compile: the model is not compiled. Add "
                             "--torch_compile, or leave these out.")
        return
    args.torch_compile_backend = args.torch_compile_backend or DEFAULT_BACKEND
    known, usual = compile_backends()
    if args.torch_compile_backend not in known:
        raise ValueError(f"--torch_compile_backend {args.torch_compile_backend!r} is not a torch.compile backend "
                         f"here; expected e.g. {', '.join(usual)} (default {DEFAULT_BACKEND}).")


def compile_settings(args, accelerator) -> tuple[str, str | None] | None:
    """(backend, mode) to compile the model with, or None for an eager run.

    A launch with accelerate's dynamo setting (`accelerate launch --dynamo_backend inductor`, or its config file)
    would wrap the model in `torch.compile` inside `accelerator.prepare`, and the wrapper's `_orig_mod.` prefix would
    reach the checkpoints. That setting is switched off here, before `prepare`, so the model is compiled once, by
    train.py, in place: with --torch_compile's own backend and mode when given, else with accelerate's (and `args`
    then records it as --torch_compile). Call before `accelerator.prepare(model)`; every process decides alike."""
    from accelerate.utils import DynamoBackend

    plugin = accelerator.state.dynamo_plugin
    if plugin.backend != DynamoBackend.NO:
        accelerate_backend, accelerate_mode = plugin.backend.value.lower(), plugin.mode
        plugin.backend = DynamoBackend.NO
        if args.torch_compile:
            message = (f"accelerate's dynamo setting (backend {accelerate_backend}, mode {accelerate_mode}) is "
                       f"switched off: --torch_compile compiles the model once, in place, with backend "
                       f"{args.torch_compile_backend} and mode {args.torch_compile_mode or 'default'}.")
        else:
            args.torch_compile, args.torch_compile_backend = True, accelerate_backend
            args.torch_compile_mode = accelerate_mode if accelerate_mode in COMPILE_MODES else None
            message = (f"accelerate launch asked for torch.compile (backend {accelerate_backend}, mode "
                       f"{accelerate_mode}): train.py compiles the model itself, in place, as --torch_compile "
                       f"--torch_compile_backend {accelerate_backend} would, so that checkpoints keep the weights' "
                       "names; accelerate's own compile is switched off. Use --torch_compile instead.")
        if accelerator.is_main_process:
            logger.warning(message)
    return (args.torch_compile_backend, args.torch_compile_mode) if args.torch_compile else None


def compile_for_training(model: torch.nn.Module, backend: str = DEFAULT_BACKEND,
                         mode: str | None = None) -> torch.nn.Module:
    """`model` compiled in place with static shapes (compilation happens at its first call, per batch shape);
    returns `model` itself. Pass the unwrapped module (`accelerator.unwrap_model`): a DDP wrapper around it then
    calls the compiled forward."""
    # dynamic=False: one graph per batch shape, and CUDA graphs ("reduce-overhead") need static shapes anyway.
    model.compile(backend=backend, mode=mode, dynamic=False)
    return model


@contextlib.contextmanager
def eager():
    """Run compiled modules eagerly inside the block (`torch.compiler.set_stance("force_eager")`).

    Evaluation is a small part of a run's time; compiling it too would add graphs for eval mode, no_grad and the
    evaluation batch sizes (and CUDA graphs' memory for each), for little gain."""
    with torch.compiler.set_stance("force_eager"):
        yield
