"""Models: shapes, SPT and LSA mechanics, from_pretrained round trip, pipeline, learning, bad input."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models.modeling_vit import (ConvolutionalTokenizer, MedViTPooler, MedViTSelfAttention, ShiftedPatchTokenization,
                                 patchify)

# Small ViT geometries keep the tests fast; the default (seed) geometry is exercised once below.
TINY_VIT = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, attention_head_dim=8, intermediate_size=32)


def tiny_overrides(name: str, image_size: int) -> dict:
    if name == "cnn":
        return dict(image_size=image_size)
    return dict(TINY_VIT, image_size=image_size, patch_size=4, head_hidden_sizes=[32])


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("image_size", [28, 64])
def test_output_shapes(name, channels, image_size):
    model = models.build_model(name, channels, 5, **tiny_overrides(name, image_size)).eval()
    out = model(torch.randn(2, channels, image_size, image_size))
    assert out.logits.shape == (2, 5)
    assert out.loss is None


@pytest.mark.parametrize("name", ["vit", "vit_lsa"])
def test_default_vit_geometry_is_the_seeds(name):
    model = models.build_model(name, 3, 8).eval()
    c = model.config
    assert (c.image_size, c.patch_size, c.hidden_size, c.num_hidden_layers) == (72, 6, 64, 8)
    assert (c.num_attention_heads, c.attention_head_dim, c.intermediate_size) == (4, 64, 128)
    assert (c.pooling, c.head_hidden_sizes, c.head_dropout_prob) == ("flatten", [2048, 1024], 0.5)
    assert c.use_shifted_patch_tokenization == c.use_locality_self_attention == (name == "vit_lsa")
    assert model(torch.randn(2, 3, 72, 72)).logits.shape == (2, 8)
    # The seed head's first layer reads all 144 tokens × 64 features.
    assert model.head.mlp[1].in_features == 144 * 64


def test_cnn_default_is_the_medmnist_getting_started_network():
    model = models.build_model("cnn", 1, 2)
    convs = [m for m in model.cnn.features.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 64, 64, 64]
    assert [c.padding for c in convs] == [(0, 0)] * 4 + [(1, 1)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(1024, 128), (128, 128), (128, 2)]


def test_spt_moves_a_known_pixel_into_each_diagonal_copy():
    config = models.build_config("vit_lsa", 1, 2, image_size=4, patch_size=2, hidden_size=8)
    spt = ShiftedPatchTokenization(config)
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 2, 2] = 1.0
    shifted = spt.shifted_images(image)
    assert shifted.shape == (1, 5, 4, 4)
    # Copy order: original, right-down, left-down, right-up, left-up (shift = half a patch = 1 pixel).
    expected_positions = [(2, 2), (3, 3), (3, 1), (1, 3), (1, 1)]
    for copy, (row, col) in enumerate(expected_positions):
        nonzero = shifted[0, copy].nonzero().tolist()
        assert nonzero == [[row, col]], f"copy {copy}: expected pixel at {(row, col)}, found {nonzero}"
    # Zero fill: a pixel on the top-left corner leaves the image in the left/up shifted copies.
    corner = torch.zeros(1, 1, 4, 4)
    corner[0, 0, 0, 0] = 1.0
    assert spt.shifted_images(corner)[0, 2:].sum() == 0
    # Patchify: the left-up copy's pixel (1, 1) sits in patch 0 (top-left), at in-patch row 1, column 1, channel 4.
    patches = patchify(shifted, 2)
    assert patches.shape == (1, 4, 2 * 2 * 5)
    assert patches[0, 0, (1 * 2 + 1) * 5 + 4] == 1.0
    # The right-down copy's pixel (3, 3) sits in patch 3 (bottom-right) at in-patch (1, 1), channel 1.
    assert patches[0, 3, (1 * 2 + 1) * 5 + 1] == 1.0
    assert patches.sum() == 5


def make_attention(lsa: bool) -> MedViTSelfAttention:
    return models.build_model("vit_lsa" if lsa else "vit", 1, 2, **TINY_VIT, image_size=16, patch_size=4).vit.layers[0].attention.eval()


def test_lsa_masks_the_diagonal_and_rows_sum_to_one():
    attention = make_attention(lsa=True)
    probs = attention.attention_probabilities(torch.randn(3, 10, 16))
    assert probs.shape == (3, 2, 10, 10)
    assert torch.all(torch.diagonal(probs, dim1=-2, dim2=-1) == 0)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 10))


def test_lsa_temperature_is_trainable_and_starts_at_sqrt_head_dim():
    attention = make_attention(lsa=True).train()
    assert isinstance(attention.temperature, torch.nn.Parameter)
    torch.testing.assert_close(attention.temperature.detach(), torch.full((2,), 8**0.5))
    attention(torch.randn(2, 10, 16))[0].sum().backward()
    assert attention.temperature.grad is not None and attention.temperature.grad.abs().sum() > 0


def test_vanilla_attention_has_no_mask_and_fixed_scale():
    attention = make_attention(lsa=False)
    assert attention.temperature is None
    x = torch.randn(2, 10, 16)
    probs = attention.attention_probabilities(x)
    assert torch.all(torch.diagonal(probs, dim1=-2, dim2=-1) > 0)
    q, k, _ = attention._queries_keys_values(x)
    torch.testing.assert_close(probs, ((q @ k.transpose(-2, -1)) / 8**0.5).softmax(-1))


@pytest.mark.parametrize("lsa", [False, True])
def test_fused_attention_equals_the_written_out_softmax(lsa):
    attention = make_attention(lsa)
    x = torch.randn(2, 10, 16)
    _, _, v = attention._queries_keys_values(x)
    context = (attention.attention_probabilities(x) @ v).transpose(1, 2).reshape(2, 10, -1)
    torch.testing.assert_close(attention(x)[0], attention.output(context), atol=1e-5, rtol=1e-5)


CONV_TOKENIZER = dict(use_shifted_patch_tokenization=False, use_convolutional_tokenizer=True)


@pytest.mark.parametrize("image_size, patch_size", [(28, 4), (64, 8), (28, 2)])
def test_convolutional_tokenizer_keeps_the_patch_grid_and_is_local(image_size, patch_size):
    model = models.build_model("vit_lsa", 1, 2, **dict(TINY_VIT, image_size=image_size, patch_size=patch_size),
                               **CONV_TOKENIZER).eval()
    tokenizer = model.vit.embeddings.tokenizer
    assert isinstance(tokenizer, ConvolutionalTokenizer)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in tokenizer.modules()) == patch_size.bit_length() - 1
    grid = image_size // patch_size
    image = torch.randn(1, 1, image_size, image_size)
    moved = image.clone()
    moved[..., -1, -1] += 10.0  # the bottom-right pixel
    with torch.no_grad():
        tokens, tokens_moved = tokenizer(image), tokenizer(moved)
    assert tokens.shape == (1, grid * grid, 16)
    changed = (tokens - tokens_moved).abs().amax(dim=-1).view(grid, grid) > 0
    assert changed[-1, -1] and not changed[0, 0]  # a token sees its neighbourhood, not the whole image
    assert model(image).logits.shape == (1, 2)


def test_convolutional_tokenizer_is_he_initialised_and_loads_back(tmp_path):
    torch.manual_seed(0)
    model = models.build_model("vit", 1, 2, **dict(TINY_VIT, image_size=28, patch_size=4),
                               use_convolutional_tokenizer=True)
    first, second = [m for m in model.vit.embeddings.tokenizer.modules() if isinstance(m, torch.nn.Conv2d)]
    # He: std sqrt(2 / fan_in), fan_in 1·3·3 and 16·3·3; the generic init would give 0.02.
    assert first.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.3)
    assert second.weight.std().item() == pytest.approx((2 / 144) ** 0.5, rel=0.1)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_convolutional_tokenizer_batch_norm_normalises_each_block_and_saves_its_statistics(tmp_path):
    model = models.build_model("vit_conv_lsa", 1, 2, **dict(TINY_VIT, image_size=28, patch_size=4),
                               convolutional_tokenizer_batch_norm=True)
    norms = [m for m in model.vit.embeddings.tokenizer.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 2
    model.train()
    with torch.no_grad():
        model(5.0 + 3.0 * torch.randn(8, 1, 28, 28))  # far from zero mean, unit variance
        first_conv = model.vit.embeddings.tokenizer.blocks[0]
        features = norms[0](first_conv(5.0 + 3.0 * torch.randn(64, 1, 28, 28)))
    # in training mode each channel leaves the BatchNorm at mean 0, std 1; the running statistics moved
    assert features.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (features.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    assert norms[0].running_mean.abs().sum() > 0 and norms[0].num_batches_tracked == 2
    model.eval().save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    image = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(loaded(image).logits, model(image).logits)
    with pytest.raises(ValueError, match="needs the convolutional tokenizer"):
        models.build_model("vit", 1, 2, image_size=28, patch_size=4, convolutional_tokenizer_batch_norm=True)


def test_vit_conv_lsa_is_the_convolutional_tokenizer_with_lsa_at_every_default_geometry():
    from training.recipes import native_geometry

    model = models.build_model("vit_conv_lsa", 3, 8)  # the config defaults: the seed's 72 px, patch 8
    assert isinstance(model.vit.embeddings.tokenizer, ConvolutionalTokenizer)
    assert model.config.use_locality_self_attention and not model.config.use_shifted_patch_tokenization
    assert model.config.num_patches == 81
    for image_size in (28, 64, 128, 224):  # every MedMNIST resolution, at the default recipe's geometry
        config = models.build_config("vit_conv_lsa", 1, 2, **native_geometry("vit_conv_lsa", image_size))
        assert config.image_size == image_size and 7 <= config.image_size // config.patch_size <= 14


def test_convolutional_tokenizer_refuses_spt_and_odd_patch_sizes():
    with pytest.raises(ValueError, match=r"one tokenizer.*use_shifted_patch_tokenization=False"):
        models.build_model("vit_lsa", 1, 2, image_size=28, patch_size=4, use_convolutional_tokenizer=True)
    with pytest.raises(ValueError, match=r"power-of-2 patch_size.*got 7.*\[1, 2, 4\]"):
        models.build_model("vit", 1, 2, image_size=28, patch_size=7, use_convolutional_tokenizer=True)


def test_attention_pooling_weights_tokens_by_a_learned_score():
    config = models.build_config("vit", 1, 2, **dict(TINY_VIT, image_size=28, patch_size=4), pooling="attention",
                                 head_hidden_sizes=[], head_dropout_prob=0.0)
    pooler = MedViTPooler(config).eval()
    torch.manual_seed(0)
    tokens = torch.randn(2, 49, 16)
    with torch.no_grad():
        pooler.attention_pool.weight.zero_()
        pooler.attention_pool.bias.zero_()  # equal scores: the plain mean
        torch.testing.assert_close(pooler(tokens), tokens.mean(dim=1))
        tokens[:, 5, 0] += 100.0  # one token whose feature 0 is the largest ...
        pooler.attention_pool.weight[0, 0] = 100.0  # ... and a score that reads feature 0: that token alone
        torch.testing.assert_close(pooler(tokens), tokens[:, 5], atol=1e-4, rtol=1e-4)
    model = models.build_model("vit_conv_lsa", 1, 2, **dict(TINY_VIT, image_size=28, patch_size=4),
                               pooling="attention")
    assert model(torch.randn(3, 1, 28, 28)).logits.shape == (3, 2)


def test_multi_label_uses_bce_and_single_label_uses_cross_entropy():
    model = models.build_model("cnn", 3, 4, problem_type="multi_label_classification").eval()
    x = torch.randn(3, 3, 28, 28)
    targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.float32)
    out = model(x, labels=targets)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, targets))
    model = models.build_model("cnn", 3, 4).eval()
    labels = torch.tensor([0, 3, 1])
    out = model(x, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))


def test_grayscale_model_takes_rgb_input_as_luma():
    model = models.build_model("cnn", 1, 2).eval()
    gray = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(model(gray.expand(-1, 3, -1, -1)).logits, model(gray).logits)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_each_model_learns_a_fixed_batch(name):
    torch.manual_seed(0)
    overrides = tiny_overrides(name, 28)
    if name != "cnn":
        overrides.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, head_dropout_prob=0.0)
    model = models.build_model(name, 1, 3, **overrides).train()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 3, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = model(x, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


LOAD_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from transformers import AutoModelForImageClassification, pipeline
    from PIL import Image

    image = Image.fromarray(np.arange(30 * 30, dtype=np.uint8).reshape(30, 30))
    report = {}
    for path in sys.argv[1:]:
        model = AutoModelForImageClassification.from_pretrained(path, trust_remote_code=True).eval()
        with torch.no_grad():
            torch.save(model(torch.load(path + "/inputs.pt")).logits, path + "/logits_fresh.pt")
        classify = pipeline("image-classification", model=path, trust_remote_code=True)
        report[path] = classify(image)
    assert "models" not in sys.modules, "loading must not need the project package"
    print(json.dumps(report))
    """
)
# (model, channels)
CHECKPOINT_CASES = [("cnn", 1), ("vit", 3), ("vit_lsa", 1), ("vit_conv_lsa", 3)]


def test_round_trip_in_a_fresh_process_and_pipeline(tmp_path):
    labels = ["malignant", "benign", "other"]
    expected = {}
    for name, channels in CHECKPOINT_CASES:
        model = models.build_model(name, channels, 3, label_names=labels, **tiny_overrides(name, 28)).eval()
        checkpoint = tmp_path / name
        model.save_pretrained(checkpoint)
        models.build_image_processor(28, [0.4] * channels, [0.25] * channels).save_pretrained(checkpoint)
        saved = set(os.listdir(checkpoint))
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= saved
        assert any(f.startswith("modeling_") for f in saved), saved
        assert "auto_map" in json.loads((checkpoint / "config.json").read_text())
        inputs = torch.randn(4, channels, 28, 28)
        torch.save(inputs, checkpoint / "inputs.pt")
        with torch.no_grad():
            expected[str(checkpoint)] = model(inputs).logits

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, *expected],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for path, logits in expected.items():
        torch.testing.assert_close(torch.load(Path(path) / "logits_fresh.pt"), logits, rtol=0, atol=0)
        assert sorted(p["label"] for p in report[path]) == sorted(labels)
        assert abs(sum(p["score"] for p in report[path]) - 1) < 1e-4


def test_bad_model_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet'.*cnn, vit, vit_lsa"):
        models.build_model("resnet", 3, 2)


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match=r"patch_size=6 does not divide image_size=28.*\[1, 2, 4, 7, 14, 28\]"):
        models.build_model("vit_lsa", 1, 2, image_size=28)


def test_unknown_override_lists_the_fields():
    with pytest.raises(ValueError, match=r"Unknown config override\(s\) \['patchsize'\].*patch_size"):
        models.build_model("vit", 1, 2, patchsize=4)


def test_cnn_refuses_too_small_images():
    with pytest.raises(ValueError, match="image_size >= 16"):
        models.build_model("cnn", 1, 2, image_size=12)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_input_that_does_not_fit_the_config_is_a_clear_error(name):
    model = models.build_model(name, 3, 2, **tiny_overrides(name, 28)).eval()
    with pytest.raises(ValueError, match=r"shape \(2, 1, 28, 28\).*expects \(batch, 3, 28, 28\)"):
        model(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"shape \(2, 3, 32, 32\).*Resize the images to 28 px"):
        model(torch.randn(2, 3, 32, 32))
