"""Dense relative localization (training/relative_localization.py, train.py --relative_localization_weight)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import models
from tiny_runs import checkpoints_in_order, copy_stopped_after_first_epoch, train_tiny_vit
from training.relative_localization import RelativeLocalizationHead


def test_targets_are_the_row_and_column_distances_over_the_grid_side(monkeypatch):
    head = RelativeLocalizationHead(hidden_size=4, grid_size=3, num_pairs=3)
    # Pairs on a 3×3 grid: (0,0)-(2,2), (1,2)-(1,0), (2,1)-(0,1).
    first, second = torch.tensor([[0, 5, 7]]), torch.tensor([[8, 3, 1]])
    monkeypatch.setattr(torch, "randint", lambda *args, **kwargs: torch.stack([first, second]))
    torch.nn.init.zeros_(head.mlp[-1].weight)
    torch.nn.init.zeros_(head.mlp[-1].bias)  # predicts (0, 0): the loss is the mean target
    captured = {}
    head.mlp.register_forward_pre_hook(lambda module, inputs: captured.setdefault("pairs", inputs[0]))
    tokens = torch.arange(9.0).view(1, 9, 1).expand(1, 9, 4)
    loss = head(tokens)
    expected = torch.tensor([[2, 2], [0, 2], [2, 0]]) / 3  # |Δrow| / k, |Δcolumn| / k
    assert loss.item() == pytest.approx(expected.abs().mean().item())
    # Each pair is (token of `first`, token of `second`), concatenated.
    torch.testing.assert_close(captured["pairs"][0, :, 0], first[0].float())
    torch.testing.assert_close(captured["pairs"][0, :, 4], second[0].float())


def learn(tokens: torch.Tensor, steps: int = 300) -> float:
    torch.manual_seed(0)
    head = RelativeLocalizationHead(hidden_size=tokens.shape[-1], grid_size=4, num_pairs=64, mlp_width=64)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = head(tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.stack([head(tokens) for _ in range(20)]).mean().item()


def test_distances_are_learnable_from_tokens_that_know_their_place_and_not_from_blank_ones():
    knows_place = torch.eye(16).expand(8, 16, 16)  # token i is the one-hot vector of its grid cell
    blank = torch.ones(8, 16, 16)
    assert learn(knows_place) < 0.05
    assert learn(blank) > 0.15  # the best constant guess misses by the mean distance from its median


def test_the_loss_trains_the_tokens():
    tokens = torch.randn(2, 16, 8, requires_grad=True)
    RelativeLocalizationHead(8, 4)(tokens).backward()
    assert tokens.grad.abs().sum() > 0


def test_wrong_token_count_is_refused():
    with pytest.raises(ValueError, match="expected 4×4 = 16 tokens, got 17"):
        RelativeLocalizationHead(8, 4)(torch.zeros(2, 17, 8))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_the_vit_returns_every_layers_tokens_on_request(pooling):
    model = models.build_model("vit_lsa", 1, 2, image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                               attention_head_dim=8, intermediate_size=32, pooling=pooling).eval()
    pixels = torch.randn(3, 1, 16, 16)
    assert model(pixel_values=pixels).hidden_states is None
    outputs = model(pixel_values=pixels, output_hidden_states=True)
    tokens = 16 + (pooling == "cls")
    assert [tuple(h.shape) for h in outputs.hidden_states] == [(3, tokens, 16)] * 3  # embeddings + 2 layers
    torch.testing.assert_close(model.head(outputs.hidden_states[-1]), outputs.logits)


@pytest.fixture(scope="module")
def drloc_run(data_dir, tmp_path_factory):
    return train_tiny_vit(data_dir, tmp_path_factory.mktemp("drloc") / "run", "--relative_localization_weight", "0.5")


def test_the_regressor_is_trained_and_checkpointed_but_not_in_the_saved_model(drloc_run, data_dir, tmp_path):
    plain = train_tiny_vit(data_dir, tmp_path / "plain")
    saved, plain_saved = (load_file(run / "last" / "model.safetensors") for run in (drloc_run, plain))
    assert saved.keys() == plain_saved.keys()  # no regressor weights in the model folder
    assert any(not torch.equal(saved[k], plain_saved[k]) for k in saved)  # the loss changed the training
    checkpoints = checkpoints_in_order(drloc_run)
    first, last = (load_file(c / "model_1.safetensors") for c in (checkpoints[0], checkpoints[-1]))
    assert any(k.startswith("mlp.") for k in last)
    assert any(not torch.equal(first[k], last[k]) for k in last)  # the regressor learns
    config = json.loads((drloc_run / "run_config.json").read_text())
    assert config["relative_localization_weight"] == 0.5


def test_resuming_restores_the_regressor(drloc_run, data_dir, tmp_path):
    resumed = copy_stopped_after_first_epoch(drloc_run, tmp_path / "resumed")
    train_tiny_vit(data_dir, resumed, "--relative_localization_weight", "0.5", "--resume_from_checkpoint", "latest")
    straight, again = (load_file(run / "last" / "model.safetensors") for run in (drloc_run, resumed))
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_bad_values_are_refused(capsys):
    import train

    for argv, message in ((["--relative_localization_weight", "-1"], "must be >= 0"),
                          (["--relative_localization_pairs", "0"], "pairs >= 1"),
                          (["--model", "cnn", "--relative_localization_weight", "0.1"], "needs a token grid")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err
