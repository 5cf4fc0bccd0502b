"""Test-time flip averaging as an option of the evaluation: the model's forward ignores the former config field
(`test_time_horizontal_flip`), and `metrics.predict(..., flip_averaging=True)` gives what the in-model averaging
gave; evaluate.py's side is in test_evaluate.py."""

import json

import pytest
import torch
from accelerate import Accelerator

import data
import metrics
import models
from test_models import tiny_overrides

LEGACY_FIELD = "test_time_horizontal_flip"


def twin_models(name):
    """(a model built without the former field, one built with it true), with the same weights, in eval mode."""
    torch.manual_seed(0)
    plain = models.build_model(name, 3, 4, **tiny_overrides(name, 28))
    legacy = type(plain)(type(plain.config).from_dict({**plain.config.to_dict(), LEGACY_FIELD: True}))
    legacy.load_state_dict(plain.state_dict())
    return plain.eval(), legacy.eval()


def old_in_model_logits(model, pixel_values):
    """The forward's former averaging, copied as the reference: the batch and its mirror images in one pass, then
    the mean of each image's two logits."""
    doubled = torch.cat([pixel_values, pixel_values.flip(-1)])
    original, mirrored = model(doubled).logits.chunk(2)
    return (original + mirrored) / 2


@pytest.mark.parametrize("name", ["cnn", "vit_lsa"])
def test_the_forward_ignores_the_former_config_field(name):
    plain, legacy = twin_models(name)
    assert getattr(legacy.config, LEGACY_FIELD) is True  # kept on the config, for the evaluation to read
    images = torch.randn(5, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(legacy(images).logits, plain(images).logits)
        out = legacy(images, output_hidden_states=True)
    assert out.hidden_states[0].shape[0] == 5


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_new_configs_do_not_save_the_field_and_a_false_one_is_dropped(name, tmp_path):
    new = models.build_model(name, 3, 4, **tiny_overrides(name, 28)).config
    for config in (new, type(new).from_dict({**new.to_dict(), LEGACY_FIELD: False})):
        assert not hasattr(config, LEGACY_FIELD)
        config.save_pretrained(tmp_path)
        assert LEGACY_FIELD not in json.loads((tmp_path / "config.json").read_text())
    _, legacy = twin_models(name)
    legacy.config.save_pretrained(tmp_path)  # a checkpoint saved with it true keeps it, so it still averages
    assert json.loads((tmp_path / "config.json").read_text())[LEGACY_FIELD] is True
    assert metrics.legacy_flip_averaging(type(legacy.config).from_pretrained(tmp_path))


@pytest.mark.parametrize("name", ["cnn", "vit_lsa"])
def test_predict_averages_as_the_model_used_to_and_is_unchanged_without_it(name):
    plain, _ = twin_models(name)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (7, 3, 28, 28), dtype=torch.uint8, generator=generator)
    split = data.DeviceSplit(images, torch.arange(7) % 4, 4, False)
    transform = data.BatchTransform.for_evaluation(28, [0.5] * 3, [0.25] * 3)
    accelerator = Accelerator(cpu=True)
    pixels = transform(images, train=False)
    with torch.no_grad():
        reference = old_in_model_logits(plain, pixels)
        as_given = plain(pixels).logits
        direct = metrics.flip_averaged_logits(plain, pixels)
    assert torch.equal(direct, reference)
    assert not torch.allclose(reference, as_given)  # the mirror images do change the answer
    for flip, expected in ((True, reference), (False, as_given)):
        scores, labels, logits = metrics.predict(plain, split, transform, accelerator, 7, "multi-class",
                                                 return_logits=True, flip_averaging=flip)
        assert torch.equal(torch.from_numpy(logits), expected), flip
    assert plain.training is False


def test_train_maps_the_former_config_override_to_its_flip_averaging_option():
    import train

    args = train.parse_args(["--model", "cnn", "--config_overrides", f"{LEGACY_FIELD}=true,image_size=28"])
    assert args.flip_averaging is True and args.config_overrides == {"image_size": 28}
    assert train.parse_args(["--model", "cnn", "--config_overrides", f"{LEGACY_FIELD}=false"]).flip_averaging is False
    assert train.parse_args(["--model", "vit", "--flip_averaging"]).flip_averaging is True
    assert train.parse_args(["--model", "vit"]).flip_averaging is False
