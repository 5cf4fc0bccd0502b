"""experiments/compare_sweeps.py on real tiny train.py runs: one sweep finished, one still running."""

import json
import statistics
import sys

import pytest
from PIL import Image

from tiny_runs import ROOT, copy_stopped_after_first_epoch, train_tiny_vit

sys.path.insert(0, str(ROOT / "experiments"))
import compare_sweeps  # noqa: E402

pytestmark = pytest.mark.slow  # trains the sweeps experiments/compare_sweeps.py compares


@pytest.fixture(scope="module")
def sweeps(data_dir, tmp_path_factory):
    """`finished`: seeds 0 and 1, 3 epochs each; `running`: seed 0 as it was after its first epoch."""
    root = tmp_path_factory.mktemp("sweeps")
    for seed in (0, 1):
        train_tiny_vit(data_dir, root / "finished" / f"run-seed{seed}", "--seed", str(seed))
    copy_stopped_after_first_epoch(root / "finished" / "run-seed0", root / "running" / "run-seed0")
    (root / "finished" / "results").mkdir()  # run_results.py's own output folder: not a run
    return root


def validation(run, epoch):
    history = json.loads((run / "all_results.json").read_text())["validation_history"]
    return next(entry["metrics"] for entry in history if entry["epoch"] == epoch)


def test_means_per_epoch_and_at_the_chosen_epoch(sweeps):
    finished = compare_sweeps.load_sweep(sweeps / "finished")
    assert sorted(finished) == ["run-seed0", "run-seed1"]
    runs = [sweeps / "finished" / name for name in finished]
    curve = compare_sweeps.mean_curve(finished)
    assert list(curve) == [1, 2, 3]
    for epoch in curve:
        values = [validation(run, epoch)["auc"] for run in runs]
        assert curve[epoch]["runs"] == 2
        assert curve[epoch]["auc"] == pytest.approx((statistics.fmean(values), min(values), max(values)))
    chosen = [json.loads((run / "all_results.json").read_text())["validation_metrics"] for run in runs]
    assert compare_sweeps.chosen_means(finished) == pytest.approx(
        {metric: statistics.fmean(c[metric] for c in chosen) for metric in ("acc", "auc")})

    running = compare_sweeps.load_sweep(sweeps / "running")  # read from its epoch-1 checkpoint
    assert list(compare_sweeps.mean_curve(running)) == [1]
    assert compare_sweeps.chosen_means(running) is None


def test_the_table_and_the_plot(sweeps, tmp_path, capsys):
    plot = tmp_path / "curves.png"
    code = compare_sweeps.main([f"done={sweeps / 'finished'}", f"going={sweeps / 'running'}", "--plot", str(plot)])
    assert code == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    first = compare_sweeps.mean_curve(compare_sweeps.load_sweep(sweeps / "finished"))[1]["acc"][0]
    ours = validation(sweeps / "finished" / "run-seed0", 1)["acc"]
    assert f"{ours - first:+.4f}" in rows["1"]
    assert rows["3"].endswith("|  |  |  |  |")  # the running sweep has not got there
    assert "going: 0 of 1 runs finished" in out and "done: chosen epoch, mean over 2 runs" in out
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 100


def test_clear_errors(sweeps, tmp_path, capsys):
    assert compare_sweeps.main([f"x={tmp_path / 'missing'}"]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty" / "not-a-run").mkdir(parents=True)
    assert compare_sweeps.main([f"x={tmp_path / 'empty'}"]) == 2
    assert "no runs in it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare_sweeps.main([str(sweeps / "finished")])  # no NAME=
    assert "expected NAME=FOLDER" in capsys.readouterr().err
