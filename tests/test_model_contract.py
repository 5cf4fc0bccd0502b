"""The models behave like transformers' own vision models: the Auto classes, saving and loading (checkpoints of the
layout before the base-model split too), `return_dict`, hidden states and attentions, attention implementations,
gradient checkpointing, dtypes, `torch.compile`, head re-initialisation and `Trainer`. Tiny sizes, every family."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForImageClassification

import models

LEGACY_CHECKPOINTS = Path(__file__).parent / "fixtures" / "main_checkpoints"


def fixed_pixels(size: int, channels: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.linspace(-2, 2, batch * channels * size * size).reshape(batch, channels, size, size)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_a_checkpoint_of_the_flat_layout_loads_with_the_same_logits(name):
    """Saved before the base model existed (keys `embeddings.*`, `layers.*`, `head.norm.*`, `features.*`): the
    registered key renaming maps them onto `vit.*` / `cnn.*`, and the logits are those the old code computed."""
    expected = torch.tensor(json.loads((LEGACY_CHECKPOINTS / "expected_logits.json").read_text())[name])
    model, info = AutoModelForImageClassification.from_pretrained(LEGACY_CHECKPOINTS / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with torch.no_grad():
        logits = model.eval()(fixed_pixels(model.config.image_size)).logits
    assert torch.equal(logits, expected)
    base, info = AutoModel.from_pretrained(LEGACY_CHECKPOINTS / name, output_loading_info=True)
    assert type(base).__name__ in ("MedViTModel", "MedCNNModel") and not info["missing_keys"]
    with torch.no_grad():
        torch.testing.assert_close(base.eval()(fixed_pixels(model.config.image_size)).pooler_output,
                                   model.base_model(fixed_pixels(model.config.image_size)).pooler_output,
                                   rtol=0, atol=0)
