"""Sharpness-aware minimisation (training/methods/sam.py, --sam_rho) and the weights' moving average (--ema_decay)."""

import pytest
import torch
from safetensors.torch import load_file

from tiny_runs import checkpoints_in_order, copy_stopped_after_first_epoch, train_tiny_vit
from training.methods import sam


def test_ascend_steps_rho_along_the_global_gradient_and_descend_restores_exactly():
    torch.manual_seed(0)
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    a.grad, b.grad = torch.randn(3, 4), torch.randn(5)
    before = [a.detach().clone(), b.detach().clone()]
    norm = torch.cat([a.grad.flatten(), b.grad.flatten()]).norm()
    perturbation = sam.ascend([a, b], rho=0.1)
    step = torch.cat([(a - before[0]).flatten(), (b - before[1]).flatten()])
    assert step.norm().item() == pytest.approx(0.1, rel=1e-5)
    torch.testing.assert_close(a - before[0], 0.1 * a.grad / norm)
    sam.descend(perturbation)
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


@pytest.mark.parametrize("gradient", [0.0, float("inf"), float("nan")])
def test_a_zero_or_non_finite_gradient_moves_nothing(gradient):
    w = torch.ones(4, requires_grad=True)
    w.grad = torch.full((4,), gradient)
    assert sam.ascend([w], rho=0.05) == []
    assert torch.equal(w, torch.ones(4))


def test_the_update_uses_the_gradient_at_the_perturbed_point():
    # L(w) = ½ wᵀAw: the SAM gradient is A(w + ρ Aw / ‖Aw‖), not Aw.
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    loss = lambda: 0.5 * w @ A @ w  # noqa: E731
    loss().backward()
    g = A @ w.detach()
    perturbation = sam.ascend([w], rho=0.5)
    w.grad = None
    loss().backward()
    sam.descend(perturbation)
    torch.testing.assert_close(w.grad, A @ (w.detach() + 0.5 * g / g.norm()))
    assert torch.equal(w.detach(), torch.tensor([1.0, -2.0]))


@pytest.fixture(scope="module")
def ema_run(data_dir, tmp_path_factory):
    return train_tiny_vit(data_dir, tmp_path_factory.mktemp("ema") / "run", "--ema_decay", "0.8", "--sam_rho", "0.05")


def test_the_saved_model_is_the_moving_average_not_the_raw_weights(ema_run):
    last_checkpoint = checkpoints_in_order(ema_run)[-1]
    raw = load_file(last_checkpoint / "model.safetensors")
    averaged = load_file(last_checkpoint / "method_ema.safetensors")  # a tensor file, never a pickle
    assert not list(last_checkpoint.glob("custom_checkpoint_*"))
    saved = load_file(ema_run / "last" / "model.safetensors")
    assert averaged["n_averaged"].item() == 9  # 3 epochs × 3 updates
    assert all(torch.equal(saved[k], averaged[f"module.{k}"]) for k in saved)
    assert any(not torch.equal(saved[k], raw[k]) for k in saved)


def test_sam_changes_the_updates(ema_run, data_dir, tmp_path):
    plain = load_file(train_tiny_vit(data_dir, tmp_path / "plain", "--ema_decay", "0.8") / "last" / "model.safetensors")
    with_sam = load_file(ema_run / "last" / "model.safetensors")
    assert any(not torch.equal(plain[k], with_sam[k]) for k in plain)


def test_resuming_restores_the_moving_average(ema_run, data_dir, tmp_path):
    resumed = copy_stopped_after_first_epoch(ema_run, tmp_path / "resumed")
    train_tiny_vit(data_dir, resumed, "--ema_decay", "0.8", "--sam_rho", "0.05", "--resume_from_checkpoint", "latest")
    straight, again = (load_file(run / "last" / "model.safetensors") for run in (ema_run, resumed))
    assert all(torch.equal(straight[k], again[k]) for k in straight)


def test_bad_values_are_refused(capsys):
    import train

    for argv, message in ((["--sam_rho", "-1"], "--sam_rho must be >= 0"), (["--ema_decay", "1"], "in [0, 1)"),
                          (["--sam_rho", "0.05", "--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1")):
        with pytest.raises(SystemExit):
            train.parse_args(argv)
        assert message in capsys.readouterr().err
