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


TINY_VIT = dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, attention_head_dim=4, intermediate_size=16,
                image_size=8, patch_size=4, head_hidden_sizes=[8])
TINY = {
    "cnn": dict(image_size=16, conv_channels=[2, 2, 4, 4, 4], fc_hidden_sizes=[8]),
    "vit": TINY_VIT,
    "vit_lsa": TINY_VIT,
    "vit_conv_lsa": dict(TINY_VIT, pooling="attention", convolutional_tokenizer_batch_norm=True),
}
VITS = [name for name in models.MODEL_NAMES if name != "cnn"]
NO_DROPOUT = {"vit": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, head_dropout_prob=0.0,
                          drop_path_rate=0.0)}


def tiny_model(name: str, seed: int = 0, num_labels: int = 3, **overrides):
    torch.manual_seed(seed)
    return models.build_model(name, 1, num_labels, **{**TINY[name], **overrides})


def no_dropout(name: str) -> dict:
    return {} if name == "cnn" else NO_DROPOUT["vit"]


def test_every_family_is_covered():
    assert set(TINY) == set(models.MODEL_NAMES)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_save_and_load_in_a_fresh_process_with_the_shipped_code(name, tmp_path):
    """`save_pretrained` writes the code and an `auto_map` (AutoModel for a base model); a process that never
    imports this project loads the classifier with `trust_remote_code` and computes the same logits."""
    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size)
    with torch.no_grad():
        expected = model(pixels).logits
    model.save_pretrained(tmp_path / "saved")
    torch.save(pixels, tmp_path / "pixels.pt")
    auto_map = json.loads((tmp_path / "saved" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"].endswith(f".{type(model).__name__}")
    model.base_model.save_pretrained(tmp_path / "base")
    base_auto_map = json.loads((tmp_path / "base" / "config.json").read_text())["auto_map"]
    assert base_auto_map["AutoModel"].endswith(f".{type(model.base_model).__name__}")
    script = textwrap.dedent(f"""
        import sys, torch
        from transformers import AutoModelForImageClassification
        model = AutoModelForImageClassification.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        assert "models" not in sys.modules and type(model).__module__.startswith("transformers_modules")
        with torch.no_grad():
            logits = model.eval()(torch.load({str(tmp_path / "pixels.pt")!r})).logits
        torch.save(logits, {str(tmp_path / "out.pt")!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, env=env, capture_output=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_both_key_layouts_on_disk_load(name, tmp_path):
    """`save_pretrained` writes the weights under the modules' own names, as `state_dict()` has them; with
    transformers' `save_original_format=True` the renamings are reversed. Both load back."""
    from safetensors.torch import load_file

    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size)
    model.save_pretrained(tmp_path / "default")
    assert load_file(tmp_path / "default" / "model.safetensors").keys() == model.state_dict().keys()
    for original_format in (True, False):
        folder = tmp_path / str(original_format)
        model.save_pretrained(folder, save_original_format=original_format)
        loaded, info = type(model).from_pretrained(folder, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"]
        with torch.no_grad():
            assert torch.equal(loaded.eval()(pixels).logits, model(pixels).logits)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_return_dict_false_gives_transformers_tuple(name):
    model = tiny_model(name).eval()
    pixels, labels = fixed_pixels(model.config.image_size), torch.tensor([0, 2])
    with torch.no_grad():
        output = model(pixels, labels=labels, output_hidden_states=True)
        as_tuple = model(pixels, labels=labels, output_hidden_states=True, return_dict=False)
        base_tuple = model.base_model(pixels, return_dict=False)
    assert isinstance(as_tuple, tuple) and not isinstance(as_tuple, dict)
    loss, logits, hidden_states = as_tuple  # transformers' order, the Nones left out
    assert torch.equal(loss, output.loss) and torch.equal(logits, output.logits)
    assert all(torch.equal(a, b) for a, b in zip(hidden_states, output.hidden_states))
    last_hidden_state, pooler_output = base_tuple
    assert torch.equal(last_hidden_state, model.base_model(pixels).last_hidden_state)
    assert torch.equal(pooler_output, model.base_model(pixels).pooler_output)


@pytest.mark.parametrize("name", VITS)
def test_hidden_states_and_attentions(name):
    model = tiny_model(name).eval()
    config = model.config
    pixels = fixed_pixels(config.image_size, batch=3)
    with torch.no_grad():
        output = model.vit(pixels, output_hidden_states=True, output_attentions=True)
        plain = model.vit(pixels)
    tokens = config.num_patches
    assert len(output.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (3, tokens, config.hidden_size) for h in output.hidden_states)
    torch.testing.assert_close(output.hidden_states[0], model.vit.embeddings(pixels), rtol=0, atol=0)
    torch.testing.assert_close(output.last_hidden_state, model.vit.layernorm(output.hidden_states[-1]))
    assert len(output.attentions) == config.num_hidden_layers
    assert all(a.shape == (3, config.num_attention_heads, tokens, tokens) for a in output.attentions)
    for attentions in output.attentions:
        torch.testing.assert_close(attentions.sum(-1), torch.ones(3, config.num_attention_heads, tokens))
        diagonal = torch.diagonal(attentions, dim1=-2, dim2=-1)
        assert torch.all(diagonal == 0) if config.use_locality_self_attention else torch.all(diagonal > 0)
    torch.testing.assert_close(output.last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-5)
    assert plain.attentions is None and plain.hidden_states is None
    classified = model(pixels, output_attentions=True, output_hidden_states=True)
    assert len(classified.attentions) == config.num_hidden_layers and len(classified.hidden_states) == 3


def test_cnn_hidden_states_are_the_feature_maps_of_each_block():
    model = tiny_model("cnn").eval()
    with torch.no_grad():
        output = model.cnn(fixed_pixels(16), output_hidden_states=True)
    assert [tuple(h.shape[1:]) for h in output.hidden_states] == [(2, 14, 14), (2, 6, 6), (4, 4, 4), (4, 2, 2),
                                                                  (4, 1, 1)]
    assert torch.equal(output.hidden_states[-1], output.last_hidden_state)
    assert torch.equal(output.pooler_output, output.last_hidden_state.flatten(1))


@pytest.mark.parametrize("name", VITS)
def test_eager_and_sdpa_attention_agree(name, tmp_path):
    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size)
    assert model.config._attn_implementation == "sdpa"
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                      lambda *args, **kwargs: calls.append(1) or fused(*args, **kwargs))
        sdpa = model(pixels).logits
        assert len(calls) == model.config.num_hidden_layers
        model.set_attn_implementation("eager")
        eager = model(pixels).logits
        assert len(calls) == model.config.num_hidden_layers  # the eager path does not call the fused kernel
    torch.testing.assert_close(eager, sdpa, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).logits, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(name):
    model = tiny_model(name, **no_dropout(name)).train()
    pixels, labels = fixed_pixels(model.config.image_size), torch.tensor([0, 2])
    if name == "cnn":  # nothing to recompute that would save memory; BatchNorm would count its statistics twice
        with pytest.raises(ValueError, match="does not support"):
            model.gradient_checkpointing_enable()
        return

    def loss_and_gradients():
        model.zero_grad()
        loss = model(pixels, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients()
    model.gradient_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.vit.layers)
    calls = []
    hook = model.vit.layers[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))
    checkpointed_loss, checkpointed_gradients = loss_and_gradients()
    hook.remove()
    assert len(calls) == 2  # the block ran again in the backward pass
    assert torch.equal(checkpointed_loss, loss) and checkpointed_gradients.keys() == gradients.keys()
    for key in gradients:
        torch.testing.assert_close(checkpointed_gradients[key], gradients[key], rtol=0, atol=0)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_bf16_model_takes_fp32_pixels_and_is_close_to_fp32(name):
    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size)
    with torch.no_grad():
        fp32 = model(pixels).logits
        bf16 = model.to(torch.bfloat16)(pixels).logits
    assert bf16.dtype == torch.bfloat16
    torch.testing.assert_close(bf16.float(), fp32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_a_batch_of_one(name):
    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size, batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model(pixels[1:2]).logits, model(pixels).logits[1:2], rtol=1e-5, atol=1e-5)
    model.train()
    assert model(pixels[:1], labels=torch.tensor([1])).loss.isfinite()


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_num_parameters_counts_the_base_model_and_the_head(name):
    model = tiny_model(name)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(model.base_model_prefix + "."))
    assert model.base_model.num_parameters() + head == model.num_parameters() and head > 0
    assert model.base_model is getattr(model, model.base_model_prefix)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_ignore_mismatched_sizes_reinitialises_only_the_classifier(name, tmp_path):
    model = tiny_model(name)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        type(model).from_pretrained(tmp_path, num_labels=5)
    loaded, info = type(model).from_pretrained(tmp_path, num_labels=5, ignore_mismatched_sizes=True,
                                               output_loading_info=True)
    classifier = "head.classifier" if name != "cnn" else "classifier"
    assert {key for key, *_ in info["mismatched_keys"]} == {f"{classifier}.weight", f"{classifier}.bias"}
    assert loaded.get_submodule(classifier).out_features == 5
    original = model.state_dict()
    for key, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, original[key]) == (not key.startswith(classifier + ".")) or "bias" in key


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_compiled_forward_equals_eager(name):
    model = tiny_model(name).eval()
    pixels = fixed_pixels(model.config.image_size)
    with torch.no_grad():
        expected = model(pixels).logits
        compiled = torch.compile(model, backend="aot_eager")(pixels).logits
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_a_few_trainer_steps(name, tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model(name, **no_dropout(name))
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    samples = [{"pixel_values": torch.randn(1, size, size, generator=generator), "labels": i % 3} for i in range(12)]
    arguments = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=12, num_train_epochs=8,
                                  learning_rate=3e-3, report_to="none", use_cpu=True, logging_steps=1,
                                  save_strategy="no", seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=arguments, train_dataset=samples)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]
