"""Layer-wise learning-rate decay (`train.py --layer_decay`): each parameter's share of the peak rate by depth, and
a real run whose saved optimizer carries those shares through the scheduler."""

import argparse

import torch
from tiny_runs import TINY_VIT, checkpoints_in_order, train_tiny_vit

import models
import train


def tiny_vit(num_layers: int):
    return models.build_model("vit_lsa", 1, 2, image_size=28, patch_size=7, hidden_size=16,
                              num_hidden_layers=num_layers, attention_head_dim=8, intermediate_size=32,
                              pooling="mean", head_hidden_sizes=[])


def lr_and_weight_decay_of(optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (group["lr"], group["weight_decay"]) for group in optimizer.param_groups for p in group["params"]}


def test_each_parameter_gets_decay_to_the_power_of_its_distance_from_the_head():
    model = tiny_vit(num_layers=3)
    args = argparse.Namespace(learning_rate=1e-3, weight_decay=0.05, optimizer="adamw")
    optimizer = train.build_optimizer(args, model, layer_decay=0.5)
    settings = lr_and_weight_decay_of(optimizer)
    assert len(settings) == sum(1 for _ in model.parameters())  # every parameter exactly once
    expected_power = {"embeddings": 4, "layers.0": 3, "layers.1": 2, "layers.2": 1, "head": 0}
    for name, p in model.named_parameters():
        prefix = next(k for k in expected_power if name.startswith(k + "."))
        lr, weight_decay = settings[id(p)]
        assert lr == 1e-3 * 0.5 ** expected_power[prefix], name
        skips_decay = p.ndim < 2 or name.endswith("position_embeddings")
        assert weight_decay == (0.0 if skips_decay else 0.05), name
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the logged rate is the peak one


def test_without_decay_the_groups_are_the_two_weight_decay_groups():
    model = tiny_vit(num_layers=2)
    args = argparse.Namespace(learning_rate=1e-3, weight_decay=0.05, optimizer="adamw")
    optimizer = train.build_optimizer(args, model)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-3, 0.05), (1e-3, 0.0)]


def test_a_run_with_layer_decay_schedules_each_depth_from_its_own_peak(data_dir, tmp_path):
    run = train_tiny_vit(data_dir, tmp_path / "decay", "--layer_decay", "0.5", "--learning_rate", "2e-3",
                         "--warmup_epochs", "0", "--lr_scheduler", "constant", epochs=1)
    state = torch.load(checkpoints_in_order(run)[-1] / "optimizer.bin", weights_only=False)
    # TINY_VIT has one block: head 1, the block 0.5, the embeddings 0.25 of the peak, with and without weight decay.
    assert "num_hidden_layers=1" in TINY_VIT
    peaks = sorted({round(group["initial_lr"], 12) for group in state["param_groups"]}, reverse=True)
    assert peaks == [2e-3, 1e-3, 5e-4]
    assert all(group["lr"] == group["initial_lr"] for group in state["param_groups"])  # constant schedule
