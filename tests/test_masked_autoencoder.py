"""MAE pre-training (models.MedViTForMaskedImageModeling, training/methods/masked_autoencoder.py,
train.py --mae_epochs)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import models
from tiny_runs import TINY_VIT, train_tiny_vit
from models.modeling_vit import MedViTForMaskedImageModeling, patchify, unpatchify
from training.methods.masked_autoencoder import check_config, masked_image_model


def tiny_vit(model="vit_lsa", pooling="mean", **overrides):
    return models.build_model(model, 1, 2, image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                              attention_head_dim=8, intermediate_size=32, pooling=pooling, head_hidden_sizes=[],
                              drop_path_rate=0.0, **overrides)


def encoder_tokens(autoencoder, pixels, seed):
    """The encoder's output (after its final LayerNorm) in one forward pass with the mask drawn from `seed`."""
    captured = []
    hook = autoencoder.vit.layernorm.register_forward_hook(lambda module, inputs, output: captured.append(output))
    torch.manual_seed(seed)
    loss = autoencoder(pixels).loss
    hook.remove()
    return captured[0], loss


@pytest.mark.parametrize("model,pooling,overrides", [
    ("vit_lsa", "mean", {}), ("vit_lsa", "cls", {}), ("vit", "mean", {}), ("vit_conv_lsa", "mean", {}),
    ("vit_conv_lsa", "mean", {"convolutional_tokenizer_batch_norm": True})])
def test_masked_patches_never_reach_the_encoder(model, pooling, overrides):
    autoencoder = masked_image_model(tiny_vit(model, pooling, **overrides), mask_ratio=0.5).eval()
    pixels = torch.randn(2, 1, 16, 16)
    torch.manual_seed(0)
    masked = autoencoder.random_masking(2, pixels.device)  # the mask the forward passes below draw
    assert masked.sum(dim=1).tolist() == [8, 8]
    hidden_patch = int(masked[0].nonzero()[0])
    visible_patch = int((~masked[0]).nonzero()[0])

    def changed(patch):
        other = pixels.clone()
        row, column = divmod(patch, 4)
        other[0, :, 4 * row:4 * row + 4, 4 * column:4 * column + 4] += 3.0 * torch.randn(1, 4, 4)
        return other

    tokens, loss = encoder_tokens(autoencoder, pixels, seed=0)
    # A masked patch's pixels change only the loss's target, never what the encoder sees (SPT's shifted copies, or
    # the convolutional tokenizer's 3×3 kernels and pools, would carry them into the neighbouring tokens if the
    # pixels were not blanked first).
    tokens_hidden_changed, loss_hidden_changed = encoder_tokens(autoencoder, changed(hidden_patch), seed=0)
    torch.testing.assert_close(tokens_hidden_changed, tokens)
    assert not torch.isclose(loss_hidden_changed, loss)
    tokens_visible_changed, _ = encoder_tokens(autoencoder, changed(visible_patch), seed=0)
    assert not torch.allclose(tokens_visible_changed, tokens)
    assert tokens.shape == (2, 8 + (pooling == "cls"), 16)  # the encoder ran on the visible tokens only


def test_the_reconstruction_loss_falls_and_only_the_encoder_stays_in_the_classifier():
    torch.manual_seed(0)
    classifier = tiny_vit()
    autoencoder = masked_image_model(classifier, mask_ratio=0.75)
    # Images with structure to learn: smooth gradients in random directions.
    ramp = torch.linspace(-1, 1, 16)
    directions = torch.randn(32, 2, 1, 1)
    pixels = (directions[:, :1] * ramp.view(1, 16, 1) + directions[:, 1:] * ramp.view(1, 1, 16))  # (32, 1, 16, 16)
    optimizer = torch.optim.AdamW(autoencoder.parameters(), lr=3e-3)
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    losses = []
    for _ in range(60):
        loss = autoencoder(pixels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses
    after = classifier.state_dict()
    assert after.keys() == before.keys()  # no decoder weights in the classifier
    assert not torch.equal(after["vit.embeddings.tokenizer.projection.weight"],
                           before["vit.embeddings.tokenizer.projection.weight"])
    torch.testing.assert_close(after["head.classifier.weight"], before["head.classifier.weight"])  # no labels used


def tiny_masked_image_model(mask_ratio: float):
    config = models.MedViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2,
                                 attention_head_dim=8, intermediate_size=32, pooling="mean",
                                 use_shifted_patch_tokenization=True, use_locality_self_attention=True,
                                 mae_mask_ratio=mask_ratio)
    return MedViTForMaskedImageModeling(config).eval()


def test_masked_image_modeling_with_a_given_mask_and_with_a_drawn_one():
    torch.manual_seed(0)
    model = tiny_masked_image_model(mask_ratio=0.25)
    pixels = torch.randn(2, 1, 16, 16)
    given = torch.zeros(2, 16, dtype=torch.bool)
    given[0, [0, 5, 9]] = given[1, [2, 3, 15]] = True
    output = model(pixels, bool_masked_pos=given, output_hidden_states=True)
    assert output.reconstruction.shape == pixels.shape and torch.isfinite(output.loss)
    assert output.hidden_states[-1].shape == (2, 13, 16)  # the encoder saw the 13 visible patches only
    # The loss: the mean squared error over the given hidden patches, of the per-patch normalised target.
    error = (patchify(output.reconstruction, 4) - model.reconstruction_target(pixels)).pow(2).mean(dim=-1)
    torch.testing.assert_close(output.loss, error[given].mean())
    # Without a mask one is drawn with config.mae_mask_ratio (4 of the 16 patches) from the global RNG.
    torch.manual_seed(1)
    drawn = model(pixels, output_hidden_states=True)
    assert drawn.hidden_states[-1].shape == (2, 12, 16) and torch.isfinite(drawn.loss)
    torch.manual_seed(1)
    torch.testing.assert_close(drawn.loss, model(pixels, bool_masked_pos=model.random_masking(2, "cpu")).loss)
    uneven = given.clone()
    uneven[0, 1] = True
    with pytest.raises(ValueError, match="same number of hidden patches"):
        model(pixels, bool_masked_pos=uneven)


def test_pre_training_keeps_the_classifier_and_the_parameter_order_of_the_first_mae_implementation():
    """What keeps the pre-training losses of earlier runs: building the model around a classifier changes none of the
    classifier's weights, and the parameters come in the order the optimizer and the gradient clipping saw them."""
    torch.manual_seed(0)
    classifier = tiny_vit()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    autoencoder = masked_image_model(classifier)
    assert autoencoder.vit is classifier.vit
    assert all(torch.equal(v, before[k]) for k, v in classifier.state_dict().items())
    names = [name for name, _ in autoencoder.named_parameters()]
    vit = [name for name in names if name.startswith("vit.")]
    assert names[:2] == ["mask_token", "decoder_position_embeddings"]
    assert names[2:2 + len(vit)] == vit == ["vit." + name for name, _ in classifier.vit.named_parameters()]
    assert [name.split(".")[0] for name in names[2 + len(vit):]] == (
        ["decoder_embed"] * 2 + ["decoder_layers"] * 12 + ["decoder_norm"] * 2 + ["decoder_prediction"] * 2)


def test_unpatchify_inverts_patchify():
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(images, 2), 2, images.shape), images)


@pytest.mark.parametrize("normalize_target", [True, False])
def test_reconstruct_keeps_the_visible_patches_and_shows_the_predicted_hidden_ones(normalize_target):
    torch.manual_seed(0)
    autoencoder = masked_image_model(tiny_vit(), mask_ratio=0.75, normalize_target=normalize_target).eval()
    pixels = torch.randn(3, 1, 16, 16)
    torch.manual_seed(1)
    blanked, filled = autoencoder.reconstruct(pixels)
    torch.manual_seed(1)  # the same mask again
    masked = autoencoder.random_masking(3, pixels.device)
    prediction = patchify(autoencoder(pixels, bool_masked_pos=masked).reconstruction, 4)
    assert masked.sum(dim=1).tolist() == [12, 12, 12]  # 0.75 of the 4 × 4 patches
    hidden = torch.nn.functional.interpolate(masked.view(3, 1, 4, 4).float(), scale_factor=4).bool()
    assert torch.equal(blanked[~hidden], pixels[~hidden]) and bool((blanked[hidden] == 0).all())
    assert torch.equal(filled[~hidden], pixels[~hidden])
    shown, true = patchify(filled, 4)[masked], patchify(pixels, 4)[masked]
    if normalize_target:  # the predicted texture, on each patch's true mean and standard deviation
        shown = (shown - true.mean(dim=-1, keepdim=True)) / (true.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(shown, prediction[masked])


@pytest.mark.parametrize("model,message", [("cnn", "needs a ViT"), ("vit_lsa", "pooling=flatten")])
def test_models_without_a_pooling_vit_are_refused(model, message):
    built = models.build_model(model, 1, 2, image_size=16,
                               **({} if model == "cnn" else {"patch_size": 4, "pooling": "flatten"}))
    with pytest.raises(ValueError, match=message):
        check_config(built.config, 0.75)
    with pytest.raises(ValueError, match="must lie in"):
        check_config(tiny_vit().config, 1.0)


@pytest.fixture(scope="module")
def mae_run(data_dir, tmp_path_factory):
    return train_tiny_vit(data_dir, tmp_path_factory.mktemp("mae") / "run", "--mae_epochs", "3", "--report_to",
                          "tensorboard", epochs=2)


def test_train_py_pretrains_then_trains_and_saves_the_plain_classifier(mae_run, data_dir, tmp_path):
    plain = train_tiny_vit(data_dir, tmp_path / "plain", epochs=2)
    saved, plain_saved = (load_file(run / "last" / "model.safetensors") for run in (mae_run, plain))
    assert saved.keys() == plain_saved.keys()  # the decoder is not part of the saved model
    assert any(not torch.equal(saved[k], plain_saved[k]) for k in saved)
    results = json.loads((mae_run / "all_results.json").read_text())
    assert len(results["mae_losses"]) == 3 and all(0 < loss < 10 for loss in results["mae_losses"])
    assert "mae_losses" not in json.loads((plain / "all_results.json").read_text())  # off: no pre-training record
    assert json.loads((mae_run / "run_config.json").read_text())["mae_epochs"] == 3
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = []
    for event_file in (mae_run / "runs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "pretrain/mae_loss" in accumulator.Tags()["scalars"]:
            logged += [(e.step, e.value) for e in accumulator.Scalars("pretrain/mae_loss")]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert [value for _, value in logged] == pytest.approx(results["mae_losses"])
    # The reconstruction grid: 3 rows (images, hidden patches blanked, predicted) of 8 images of 28 px, 2 px apart.
    pictures = []
    for event_file in (mae_run / "runs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
        accumulator.Reload()
        if "pretrain/mae_reconstructions" in accumulator.Tags()["images"]:
            pictures += accumulator.Images("pretrain/mae_reconstructions")
    assert [(p.step, p.height, p.width) for p in pictures] == [(3, 3 * 30 + 2, 8 * 30 + 2)]


def test_the_mae_folder_loads_as_a_masked_image_model_and_as_a_classifier_with_a_new_head(mae_run):
    from transformers import AutoModelForImageClassification, AutoModelForMaskedImageModeling

    from models.integrity import verify_manifest

    folder = mae_run / "mae"
    verify_manifest(folder)
    assert (folder / "preprocessor_config.json").is_file()
    saved = load_file(folder / "model.safetensors")
    pretrained = AutoModelForMaskedImageModeling.from_pretrained(folder)
    assert isinstance(pretrained, MedViTForMaskedImageModeling)
    assert all(torch.equal(v, pretrained.state_dict()[k]) for k, v in saved.items())
    classifier, loading = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert isinstance(classifier, models.MedViTForImageClassification)
    encoder = {k: v for k, v in saved.items() if k.startswith("vit.")}
    assert encoder and all(torch.equal(v, classifier.state_dict()[k]) for k, v in encoder.items())
    assert loading["missing_keys"] == {"head.classifier.weight", "head.classifier.bias"}  # newly initialised
    # The supervised stage went on from this encoder: its tokenizer moved on from there, its head is another one.
    trained = load_file(mae_run / "last" / "model.safetensors")
    key = "vit.embeddings.tokenizer.projection.weight"
    assert not torch.equal(trained[key], saved[key])


def test_a_run_stopped_during_pre_training_resumes_it_and_ends_like_the_straight_run(mae_run, data_dir, tmp_path):
    """The run as it was after its first MAE epoch (checkpoint mae_epoch_1; nothing supervised yet) resumed with
    `latest`: the decoder, optimizer, schedule, data order and random state come back, so the rest is identical."""
    import train
    from training.checkpointing import MAE_CHECKPOINT_PATTERN, has_checkpoint, list_checkpoints

    assert [p.name for p in list_checkpoints(mae_run, MAE_CHECKPOINT_PATTERN)] == [f"mae_epoch_{i}" for i in (1, 2, 3)]
    stopped = tmp_path / "stopped"
    shutil.copytree(mae_run, stopped)
    for path in (*list_checkpoints(stopped), *list_checkpoints(stopped, MAE_CHECKPOINT_PATTERN)[1:],
                 stopped / "best", stopped / "last", stopped / "runs"):
        shutil.rmtree(path)
    (stopped / "all_results.json").unlink()  # run_config.json stays: it is written before pre-training starts
    recorded = (stopped / "run_config.json").read_text()
    assert has_checkpoint(stopped)
    # Other MAE settings than the checkpoint's: refused before anything is written.
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--model", "vit_lsa", "--dataset", "breastmnist", "--data_dir", str(data_dir),
                    "--no_verify_checksum", "--output_dir", str(stopped), "--config_overrides", TINY_VIT,
                    "--mae_epochs", "4", "--resume_from_checkpoint", "latest"])
    assert exit_info.value.code == 2
    assert (stopped / "run_config.json").read_text() == recorded

    train_tiny_vit(data_dir, stopped, "--mae_epochs", "3", "--resume_from_checkpoint", "latest", epochs=2)
    straight, resumed = (json.loads((run / "all_results.json").read_text()) for run in (mae_run, stopped))
    assert resumed["mae_losses"] == straight["mae_losses"]
    assert resumed["validation_history"] == straight["validation_history"]
    weights, again = (load_file(run / "last" / "model.safetensors") for run in (mae_run, stopped))
    assert all(torch.equal(weights[k], again[k]) for k in weights)


def test_train_py_refuses_bad_mae_arguments(data_dir, tmp_path, capsys):
    import train

    for argv, message in ((["--mae_epochs", "-1"], "--mae_epochs must be >= 0"),):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err
    for argv, message in ((["--model", "cnn"], "needs a ViT"),
                          (["--config_overrides", "pooling=flatten"], "pooling=flatten"),
                          (["--mae_mask_ratio", "0"], "must lie in (0, 1)")):
        output_dir = tmp_path / "never"
        with pytest.raises(SystemExit) as exit_info:
            train.main(["--dataset", "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum",
                        "--output_dir", str(output_dir), "--mae_epochs", "1", *argv])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().out
        assert not output_dir.exists()


def test_two_processes_pretrain_and_train_together(data_dir, tmp_path):
    """DistributedDataParallel over the autoencoder, then over the classifier: every parameter it wraps must get a
    gradient, and the autoencoder's wrapper must be gone before the classifier's."""
    import socket

    from tiny_runs import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = train_tiny_vit(data_dir, tmp_path / "two", "--mae_epochs", "2", epochs=2, batch_size=16,
                         launch_args=["--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"),
                                      "--main_process_port", str(port)])
    results = json.loads((run / "all_results.json").read_text())
    assert results["hardware"]["num_processes"] == 2
    assert len(results["mae_losses"]) == 2
    assert len(results["validation_history"]) == 2


def test_the_pixel_target_sees_brightness_and_the_normalised_one_does_not():
    torch.manual_seed(0)
    classifier = tiny_vit()
    pixels = torch.randn(2, 1, 16, 16)
    torch.manual_seed(1)
    masked = masked_image_model(classifier, mask_ratio=0.5).random_masking(2, pixels.device)
    row, column = divmod(int(masked[0].nonzero()[0]), 4)
    brighter = pixels.clone()
    brighter[0, :, 4 * row:4 * row + 4, 4 * column:4 * column + 4] += 2.0  # a hidden patch, brighter throughout
    for normalize_target, changes in ((True, False), (False, True)):
        autoencoder = masked_image_model(classifier, mask_ratio=0.5, normalize_target=normalize_target).eval()
        _, loss = encoder_tokens(autoencoder, pixels, seed=1)
        _, loss_brighter = encoder_tokens(autoencoder, brighter, seed=1)
        assert bool(not torch.isclose(loss, loss_brighter)) == changes, (normalize_target, loss, loss_brighter)
