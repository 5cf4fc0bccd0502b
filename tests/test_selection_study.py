"""`train.py --save_validation_predictions` and `experiments/selection_study.py` (checkpoint-selection rules judged
on held-out halves): real tiny runs, and runs written by hand where the right answer is known."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tiny_runs import train_tiny_vit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import selection_study  # noqa: E402
from metrics import read_epoch_predictions, write_epoch_predictions  # noqa: E402
from metrics.modules.medmnist_definitions import get_acc, get_auc  # noqa: E402

pytestmark = pytest.mark.slow  # trains cross-validation folds for experiments/selection_study.py


@pytest.fixture(scope="module")
def saved_run(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("selection")
    with_predictions = train_tiny_vit(data_dir, root / "with", "--save_validation_predictions", epochs=4)
    without = train_tiny_vit(data_dir, root / "without", epochs=4)
    return with_predictions, without


def test_saved_predictions_are_the_logged_validation_and_change_nothing_else(saved_run):
    run, plain = saved_run
    history = json.loads((run / "all_results.json").read_text())["validation_history"]
    epochs, logits, labels = read_epoch_predictions(run / "validation_predictions")
    assert epochs.tolist() == [1, 2, 3, 4] and logits.shape[:2] == (4, 40)
    task = "binary-class"
    for entry, epoch_logits in zip(history, logits):
        scores = selection_study.logits_to_scores(epoch_logits, task)
        assert get_acc(scores, labels, task) == pytest.approx(entry["metrics"]["acc"], abs=1e-12)
        assert get_auc(scores, labels, task) == pytest.approx(entry["metrics"]["auc"], abs=1e-9)
    losses = np.stack([selection_study.validation_loss(x, labels, False, per_sample=True) for x in logits]).mean(axis=1)
    assert losses == pytest.approx([h["metrics"]["loss"] for h in history], rel=1e-5)
    assert json.loads((plain / "all_results.json").read_text())["validation_history"] == history
    assert not (plain / "validation_predictions").exists()


def test_study_of_real_runs_writes_every_rule(saved_run, tmp_path):
    run, _ = saved_run
    output = tmp_path / "study.json"
    selection_study.main([str(run), str(run), "--splits", "3", "--output", str(output)])
    result = json.loads(output.read_text())
    assert set(result["summary"]) == set(selection_study.RULES)
    assert all(r["rules"]["last"]["mean_chosen_epoch"] == 4 for r in result["runs"])
    # The same run twice: every paired difference is exactly 0.
    assert result["summary"]["last"]["auc_minus_auc"]["mean"] == 0 and result["summary"]["last"]["auc_minus_auc"]["std"] == 0


def fake_run(folder: Path, good_epoch: int, epochs: int = 6, n: int = 60, seed: int = 0, also_good=()) -> Path:
    """A run whose held-out predictions are perfect at `good_epoch` (and `also_good`) and noise at every other."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2).reshape(-1, 1)
    for epoch in range(1, epochs + 1):
        if epoch == good_epoch or epoch in also_good:
            logits = np.where(np.eye(2)[labels[:, 0]] == 1, 3.0, -3.0)
        else:
            logits = rng.normal(size=(n, 2))
        write_epoch_predictions(folder / "validation_predictions", epoch, logits, labels)
    (folder / "run_config.json").write_text(json.dumps({"dataset": "breastmnist"}))
    return folder


def test_rules_pick_the_epoch_that_is_best_on_their_half(tmp_path):
    runs = [fake_run(tmp_path / f"run{i}", good_epoch=3, seed=i) for i in range(3)]
    studies = [selection_study.study_run(run, splits=5, seed=0) for run in runs]
    for study in studies:
        assert study["rules"]["auc"]["mean_chosen_epoch"] == 3 and study["rules"]["auc"]["auc"] == 1.0
        assert study["rules"]["acc"]["acc"] == 1.0 and study["rules"]["loss"]["mean_chosen_epoch"] == 3
        assert study["rules"]["last"]["mean_chosen_epoch"] == 6 and study["rules"]["last"]["auc"] < 0.9
    summary = selection_study.compare(studies, "auc")
    assert summary["last"]["auc_minus_auc"]["ci95"][1] < 0
    # Equal best epochs: the first is kept, as train.py keeps it.
    tied = selection_study.study_run(fake_run(tmp_path / "tied", good_epoch=2, also_good=(4,)), splits=3, seed=0)
    assert tied["rules"]["auc"]["mean_chosen_epoch"] == 2 and tied["rules"]["acc"]["mean_chosen_epoch"] == 2


@pytest.mark.parametrize("task,classes", [("binary-class", 2), ("multi-class", 4), ("multi-label, binary-class", 3)])
def test_vectorised_acc_and_auc_equal_the_metric_definitions(task, classes):
    rng = np.random.default_rng(1)
    scores = np.round(rng.random((5, 30, classes)), 1)  # rounded: many ties
    if task != "multi-label, binary-class":
        scores /= scores.sum(axis=-1, keepdims=True) + 1e-9
    labels = rng.integers(0, 2, (30, classes)) if task.startswith("multi-label") else rng.integers(0, classes, 30)
    if task == "multi-label, binary-class":
        labels[:, 0] = 1  # a label with positives only: its AUC is undefined, so is the mean
    aucs = selection_study.auc_by_epoch(scores, labels, task)
    accs = selection_study.acc_by_epoch(scores, labels, task)
    for e in range(5):
        assert accs[e] == pytest.approx(get_acc(scores[e], labels, task), abs=1e-12)
        expected = get_auc(scores[e], labels, task)
        assert (np.isnan(aucs[e]) and np.isnan(expected)) or aucs[e] == pytest.approx(expected, abs=1e-12)


def test_halves_are_disjoint_complete_and_stratified():
    labels = np.array([0] * 7 + [1] * 20 + [2] * 3).reshape(-1, 1)
    first, second = selection_study.stratified_halves(labels, "multi-class", np.random.default_rng(0))
    assert sorted(np.concatenate([first, second]).tolist()) == list(range(30))
    for c in (0, 1, 2):
        assert abs(np.sum(labels[first] == c) - np.sum(labels[second] == c)) <= 1


def test_runs_without_predictions_or_of_two_splits_are_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "run_config.json").write_text(json.dumps({"dataset": "breastmnist"}))
    with pytest.raises(SystemExit, match="--save_validation_predictions"):
        selection_study.main([str(tmp_path / "empty")])
    mixed = fake_run(tmp_path / "mixed", good_epoch=1, epochs=2)
    write_epoch_predictions(mixed / "validation_predictions", 3, np.zeros((10, 2)), np.zeros((10, 1), dtype=int))
    with pytest.raises(SystemExit, match="another split"):
        selection_study.main([str(mixed)])
