"""Training methods are plug-ins: one defined here, outside train.py and the training loop, changes training as its
hooks say; and a run can be given as a config file whose values the command line overrides."""

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import train
from training.arguments import public_config
from training import methods as training_methods
from training.methods import TrainingMethod

CNN_RUN = ["--model", "cnn", "--dataset", "breastmnist", "--no_verify_checksum", "--num_train_epochs", "1",
           "--learning_rate", "0.02", "--warmup_epochs", "0", "--lr_scheduler_type", "constant",
           "--per_device_train_batch_size", "32", "--report_to", "none", "--skip_test"]


@dataclasses.dataclass
class WeightPenaltyArguments:
    _argument_group_name = "weight penalty (a plug-in defined in a test)"
    weight_penalty: float = 0.0


class WeightPenalty(TrainingMethod):
    """Adds `penalty` × the squared norm of the weights to every batch's loss, and counts its updates (its state)."""

    name = "weight_penalty"
    arguments = WeightPenaltyArguments

    def __init__(self, penalty: float):
        self.penalty, self.updates, self.model = penalty, 0, None

    @classmethod
    def from_arguments(cls, args):
        return cls(args.weight_penalty) if args.weight_penalty > 0 else None

    def setup(self, run):
        self.model = run.model

    def loss(self, loss, outputs, batch):
        return loss + self.penalty * sum(p.pow(2).sum() for p in self.model.parameters())

    def after_update(self, model):
        self.updates += 1

    def state_dict(self):
        return {"updates": torch.tensor(self.updates)}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])

    def record(self):
        return {"weight_penalty_updates": self.updates}


def weight_norm(run_dir) -> float:
    weights = load_file(run_dir / "last" / "model.safetensors")
    return sum(float(t.float().pow(2).sum()) for name, t in weights.items() if name.endswith("weight"))


def test_a_plug_in_method_changes_training_without_touching_the_loop(data_dir, tmp_path):
    methods = [*training_methods.METHODS, WeightPenalty]
    common = [*CNN_RUN, "--data_dir", str(data_dir)]
    train.main([*common, "--output_dir", str(tmp_path / "plain")], methods=methods)
    train.main([*common, "--output_dir", str(tmp_path / "penalised"), "--weight_penalty", "1"], methods=methods)
    plain = json.loads((tmp_path / "plain" / "all_results.json").read_text())
    penalised = json.loads((tmp_path / "penalised" / "all_results.json").read_text())
    # Off unless asked; on, its loss term shrinks the weights, its hook ran once per update, and it is recorded.
    assert plain["methods"] == [] and "weight_penalty_updates" not in plain
    assert penalised["methods"] == ["weight_penalty"]
    assert penalised["weight_penalty_updates"] == penalised["global_step"] > 0
    assert weight_norm(tmp_path / "penalised") < 0.5 * weight_norm(tmp_path / "plain")
    # Its state is a tensor file in every checkpoint.
    checkpoint = sorted((tmp_path / "penalised" / "checkpoints").iterdir())[-1]
    assert int(load_file(checkpoint / "method_weight_penalty.safetensors")["updates"]) == penalised["global_step"]
    # Without the plug-in in the list its argument does not exist.
    with pytest.raises(SystemExit):
        train.parse_args([*common, "--weight_penalty", "0.05"])


def test_a_config_file_sets_arguments_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model": "vit", "dataset": "bloodmnist", "learning_rate": 3.0e-4,
                                      "config_overrides": {"head_hidden_sizes": [64, 32], "pooling": "cls"},
                                      "teacher_model_name_or_path": ["a", "b"], "vertical_flip": True}))
    args = train.parse_args([str(config), "--learning_rate", "1e-4"])
    assert (args.model, args.dataset, args.learning_rate, args.vertical_flip) == ("vit", "bloodmnist", 1e-4, True)
    assert args.teacher_model_name_or_path == ["a", "b"]
    assert args.config_overrides["head_hidden_sizes"] == [64, 32] and args.config_overrides["pooling"] == "cls"
    assert args.num_train_epochs == 100  # unset: the recipe's
    assert train.parse_args(["--config", str(config)]).learning_rate == 3e-4
    # A run's own run_config.json is a config file too.
    as_json = tmp_path / "run_config.json"
    as_json.write_text(json.dumps(public_config(args)))  # what train.py writes to run_config.json
    again = train.parse_args([str(as_json)])
    assert vars(again) == vars(args)
    # Values are checked like flags; unknown names are refused with the file's name.
    for content, message in (({"model": "resnet"}, "invalid choice"), ({"learnin_rate": 1}, "unknown arguments"),
                             ({"num_train_epochs": "many"}, "invalid int value")):
        config.write_text(yaml.safe_dump(content))
        with pytest.raises(SystemExit):
            train.parse_args([str(config)])
        assert message in capsys.readouterr().err


def test_hugging_face_argument_names_and_the_old_ones_parse_alike(capsys):
    common = ["--model", "cnn", "--output_dir", "runs/x"]
    new = train.parse_args([*common, "--num_train_epochs", "3", "--lr_scheduler_type", "linear", "--dataset_name",
                            "bloodmnist"])
    old = train.parse_args([*common, "--num_epochs", "3", "--lr_scheduler", "linear", "--dataset", "bloodmnist"])
    assert vars(old) == vars(new)
    assert (new.num_train_epochs, new.lr_scheduler_type, new.dataset) == (3, "linear", "bloodmnist")
    assert not {"num_epochs", "lr_scheduler", "dataset_name"} & set(vars(new))  # one field each, the HF name
    assert train.parse_args([*common, "--num-epochs", "4"]).num_train_epochs == 4  # the old hyphenated spelling
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--num_train_epochs NUM_TRAIN_EPOCHS" in shown and "--lr_scheduler_type SCHEDULE" in shown
    assert "--dataset DATASET, --dataset_name DATASET" in shown


def test_a_config_file_takes_the_old_and_the_new_argument_names(tmp_path, capsys):
    from training import recipes

    written = {"model": "cnn", "num_epochs": 4, "lr_scheduler": "linear", "dataset_name": "bloodmnist"}
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(yaml.safe_dump(written))
    new.write_text(yaml.safe_dump({"model": "cnn", "num_train_epochs": 4, "lr_scheduler_type": "linear",
                                   "dataset": "bloodmnist"}))
    args = train.parse_args([str(new)])
    assert vars(train.parse_args([str(old)])) == vars(args)
    assert (args.num_train_epochs, args.lr_scheduler_type, args.dataset) == (4, "linear", "bloodmnist")
    # A run_config.json written before the renaming: its old keys replay the same run.
    recorded = tmp_path / "run_config.json"
    recorded.write_text(json.dumps({"num_epochs" if k == "num_train_epochs" else "lr_scheduler"
                                    if k == "lr_scheduler_type" else k: v for k, v in vars(args).items()}))
    assert vars(train.parse_args(["--config", str(recorded)])) == vars(args)
    # Both names of one argument with different values: refused, naming both.
    old.write_text(yaml.safe_dump({**written, "num_train_epochs": 5}))
    with pytest.raises(SystemExit):
        train.parse_args([str(old)])
    assert "num_epochs: 4 and num_train_epochs: 5 name the same argument" in capsys.readouterr().err
    # A recipe file of one's own with the old names gives the same defaults as the shipped one.
    layered = (recipes.RECIPES_DIR / "seed.yaml").read_text()
    mine = tmp_path / "mine.yaml"
    mine.write_text(layered.replace("num_train_epochs:", "num_epochs:").replace("lr_scheduler_type:", "lr_scheduler:"))
    assert "num_epochs: 100" in mine.read_text()
    for model in ("cnn", "vit"):
        shipped = train.parse_args(["--model", model, "--recipe", "seed", "--output_dir", "runs/x"])
        assert vars(train.parse_args(["--model", model, "--recipe", str(mine), "--output_dir", "runs/x"])) == {
            **vars(shipped), "recipe": str(mine)}


def test_help_shows_the_groups(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    shown = capsys.readouterr().out
    for group in ("model:", "data:", "training (unset values come from the recipe):", "distillation",
                  "masked-autoencoder pre-training", "sharpness-aware minimisation", "weight averaging"):
        assert group in shown
