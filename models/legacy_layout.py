"""Weights saved before the models had base models (`embeddings.*` where the layout now has `vit.embeddings.*`, ...)
load into the current layout.

`from_pretrained` renames them through the conversion mappings the modeling files register with transformers; a
plain `load_state_dict` (resuming a training checkpoint with accelerate, a checkpoint's best weights, a method's
saved state) does not, so `accept_legacy_state_dicts` adds the same renamings as a pre-hook of the model's
`load_state_dict`, and `rename_legacy_keys` applies them to a state dict.
"""

from __future__ import annotations

import re

from torch import nn
from transformers.conversion_mapping import get_checkpoint_conversion_mapping


def _renamings(model: nn.Module) -> list[tuple[re.Pattern, str]]:
    pairs = []
    for renaming in get_checkpoint_conversion_mapping(type(model).__name__) or []:
        for source, target in zip(renaming.source_patterns, renaming.target_patterns):
            pairs.append((re.compile(source), target))
    return pairs


def rename_legacy_keys(model: nn.Module, state_dict: dict, prefix: str = "") -> dict:
    """`state_dict` with every key of the earlier layout renamed to the current one (others unchanged)."""
    renamings = _renamings(model)
    if not renamings:
        return state_dict
    renamed = {}
    for key, value in state_dict.items():
        local = key[len(prefix):] if key.startswith(prefix) else None
        if local is not None:
            for pattern, target in renamings:
                if pattern.search(local):
                    key = prefix + pattern.sub(target, local, count=1)
                    break
        renamed[key] = value
    return renamed


def accept_legacy_state_dicts(model: nn.Module) -> nn.Module:
    """Make `model.load_state_dict` accept weights of the earlier layout too; returns the model."""
    if not _renamings(model):
        return model

    def rename(module, state_dict, prefix, *_):
        if any(key.startswith(prefix + "vit.") or key.startswith(prefix + "cnn.") for key in state_dict):
            return  # the current layout
        converted = rename_legacy_keys(module, dict(state_dict), prefix)
        state_dict.clear()
        state_dict.update(converted)

    model.register_load_state_dict_pre_hook(rename)
    return model
