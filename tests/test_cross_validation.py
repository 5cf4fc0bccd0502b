"""K-fold cross-validation: the folds (data.cross_validation), train.py's fold runs, experiments/cross_validate.py."""

import json
import shutil
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data
from data.synthetic import write_synthetic_npz

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import cross_validate  # noqa: E402

LAUNCH = f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no " \
         "--dynamo_backend no"
TRAIN_ARGS = ("--model cnn --dataset breastmnist --no_verify_checksum --num_train_epochs 2 "
              "--per_device_train_batch_size 16 --per_device_eval_batch_size 32")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))


def load(directory, flag="breastmnist", **sizes):
    write_synthetic_npz(directory, flag, seed=0, **sizes)
    return data.load_medmnist(flag, data_dir=directory, verify_checksum=False, cache_dir=directory / "cache")


def image_keys(split) -> list[bytes]:
    return [row["bytes"] for row in split.with_format("arrow")[:].column("image").to_pylist()]


def test_folds_partition_train_and_validation_stratified_and_leave_test_alone(tmp_path):
    dataset = load(tmp_path, n_train=60, n_val=30, n_test=20)  # 90 pooled images, two classes
    pooled = image_keys(dataset["train"]) + image_keys(dataset["validation"])
    pooled_labels = list(dataset["train"]["label"]) + list(dataset["validation"]["label"])
    held_out = []
    for fold in range(3):
        folds = data.cross_validation_split(dataset, num_folds=3, fold=fold)
        train, validation = image_keys(folds["train"]), image_keys(folds["validation"])
        assert len(validation) == 30 and len(train) == 60
        assert not set(train) & set(validation)
        assert sorted(train + validation) == sorted(pooled)
        # Stratified: every fold has the pooled class balance (45 / 45) to within one image.
        assert abs(sum(list(folds["validation"]["label"])) - sum(pooled_labels) / 3) <= 1
        assert image_keys(folds["test"]) == image_keys(dataset["test"])
        assert data.medmnist_info(folds) == data.medmnist_info(dataset)
        held_out += validation
    assert sorted(held_out) == sorted(pooled)  # each image is held out exactly once
    again = data.cross_validation_split(dataset, num_folds=3, fold=1)
    assert image_keys(again["validation"]) == image_keys(data.cross_validation_split(dataset, 3, 1)["validation"])
    other = data.cross_validation_split(dataset, num_folds=3, fold=1, split_seed=1)
    assert image_keys(other["validation"]) != image_keys(again["validation"])


def test_multilabel_folds_and_clear_errors(tmp_path):
    chest = load(tmp_path / "chest", "chestmnist", n_train=20, n_val=10, n_test=10)
    folds = data.cross_validation_split(chest, num_folds=2, fold=0)
    assert len(folds["validation"]) == 15 and np.asarray(folds["validation"]["label"]).shape == (15, 14)
    breast = load(tmp_path / "breast", n_train=6, n_val=2, n_test=4)  # 4 images of each class
    with pytest.raises(ValueError, match="at least 2 folds"):
        data.cross_validation_split(breast, num_folds=1, fold=0)
    with pytest.raises(ValueError, match="pick a fold in 0..2"):
        data.cross_validation_split(breast, num_folds=3, fold=3)
    with pytest.raises(ValueError, match="rarest class has 4.*--cross_validation_folds 4"):
        data.cross_validation_split(breast, num_folds=5, fold=0)


def test_train_py_refuses_half_a_fold_specification():
    from train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--cross_validation_folds", "5"])
    with pytest.raises(SystemExit):
        parse_args(["--cross_validation_folds", "5", "--cross_validation_fold", "5"])
    args = parse_args(["--cross_validation_folds", "5", "--cross_validation_fold", "4"])
    assert args.skip_test  # a fold run never evaluates the test split
    assert args.cross_validation_split_seed == 0  # the partition every run before the option used
    with pytest.raises(SystemExit):  # a partition seed without folds to cut
        parse_args(["--cross_validation_split_seed", "1"])
    with pytest.raises(SystemExit):
        parse_args(["--cross_validation_folds", "5", "--cross_validation_fold", "4", "--cross_validation_split_seed",
                    "-1"])


@pytest.fixture(scope="module")
def cross_validation(tmp_path_factory):
    """Two real 2-fold cross-validations of a 2-epoch CNN, run by the script, two folds at a time."""
    root = tmp_path_factory.mktemp("cv")
    write_synthetic_npz(root / "data", "breastmnist", n_train=48, n_val=24, n_test=16, seed=0)
    log = root / "results" / "cv.json"
    common = ["--folds", "2", "--data_dir", str(root / "data"), "--runs_dir", str(root / "runs"), "--launch", LAUNCH]
    with pytest.MonkeyPatch.context() as patch:
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(key, "1")
        patch.setenv("HF_DATASETS_CACHE", str(root / "cache"))
        assert cross_validate.main([str(log), "plain", "--train_args", TRAIN_ARGS, "--jobs", "2", *common]) == 0
        assert cross_validate.main([str(log), "smoothed", "--train_args", TRAIN_ARGS + " --label_smoothing 0.2",
                                    *common]) == 0
    return root, log, common


@pytest.fixture(scope="module")
def other_partition(cross_validation):
    """`plain` again, cut into folds with --split_seed 1: the same recipe and seed on another partition."""
    root, log, common = cross_validation
    with pytest.MonkeyPatch.context() as patch:
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(key, "1")
        patch.setenv("HF_DATASETS_CACHE", str(root / "cache"))
        split_log = root / "results" / "cv-split1.json"
        assert cross_validate.main([str(split_log), "plain-split1", "--train_args", TRAIN_ARGS, "--split_seed", "1",
                                    "--jobs", "2", *common]) == 0
    return root / "runs" / "plain-split1", json.loads(split_log.read_text())["settings"][0]


@pytest.mark.slow  # runs every fold of a setting through the script
def test_script_records_each_fold_and_the_mean_over_folds(cross_validation):
    root, log_path, _ = cross_validation
    log = json.loads(log_path.read_text())
    assert [s["name"] for s in log["settings"]] == ["plain", "smoothed"]
    for setting in log["settings"]:
        assert len(setting["fold_runs"]) == 2
        for key, figure in setting["summary"].items():
            values = [run[key] for run in setting["fold_runs"]]
            assert figure["mean"] == pytest.approx(statistics.fmean(values))
            assert figure["std"] == pytest.approx(statistics.stdev(values))
    assert log["settings"][1]["resolved"]["label_smoothing"] == 0.2
    plain, smoothed = log["settings"]
    differences = [s["validation_auc_last20_mean"] - p["validation_auc_last20_mean"]
                   for s, p in zip(smoothed["fold_runs"], plain["fold_runs"])]
    paired = cross_validate.paired_difference(smoothed, plain)
    mean, std = statistics.fmean(differences), statistics.stdev(differences)
    half_width = 12.706 * std / 2**0.5  # t(0.975, 1 degree of freedom): two folds
    assert (paired["mean"], paired["std"]) == pytest.approx((mean, std))
    assert paired["ci95"] == pytest.approx([mean - half_width, mean + half_width])
    assert (f"{paired['mean']:+.3f} ± {paired['std']:.3f} [{paired['ci95'][0]:+.3f}, {paired['ci95'][1]:+.3f}]"
            in cross_validate.summary_lines(log)[-1])
    # against the second setting instead: the first row now carries the difference, the reference's row none
    lines = cross_validate.summary_lines(log, "smoothed")
    reverse = cross_validate.paired_difference(plain, smoothed)
    assert reverse["mean"] == pytest.approx(-paired["mean"]) and "smoothed's" in lines[0]
    assert lines[2].endswith(f"{reverse['mean']:+.3f} ± {reverse['std']:.3f} [{reverse['ci95'][0]:+.3f}, "
                             f"{reverse['ci95'][1]:+.3f}]") and lines[-1].endswith("| ")
    with pytest.raises(ValueError, match="'nope' is not a setting of the log; its settings: plain, smoothed"):
        cross_validate.summary_lines(log, "nope")
    for fold in range(2):
        results = json.loads((root / "runs" / "plain" / f"fold{fold}" / "all_results.json").read_text())
        assert results["test_metrics"] is None
        assert (results["config"]["cross_validation_folds"], results["config"]["cross_validation_fold"]) == (2, fold)
    assert (log_path.with_suffix(".png")).stat().st_size > 10_000


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_script_skips_finished_folds_and_replaces_a_setting_in_place(cross_validation, capsys):
    root, log_path, common = cross_validation
    before = (root / "runs" / "plain" / "fold0" / "all_results.json").stat().st_mtime_ns
    assert cross_validate.main([str(log_path), "plain", "--train_args", TRAIN_ARGS, *common]) == 0
    assert (root / "runs" / "plain" / "fold0" / "all_results.json").stat().st_mtime_ns == before
    log = json.loads(log_path.read_text())
    assert [s["name"] for s in log["settings"]] == ["plain", "smoothed"]
    printed = capsys.readouterr().out
    assert "plain | 2 |" in printed and "smoothed | 2 |" in printed


def test_script_refuses_folds_of_another_split(cross_validation, capsys):
    root, log_path, common = cross_validation
    common = [arg if arg != "2" else "3" for arg in common]  # --folds 3: the fold runs on disk are of 2 folds
    (root / "runs" / "plain" / "fold2").mkdir()
    (root / "runs" / "plain" / "fold2" / "all_results.json").write_text(
        (root / "runs" / "plain" / "fold1" / "all_results.json").read_text())
    assert cross_validate.main([str(log_path), "plain", "--collect_only", *common]) == 2
    assert "is not fold 0 of 3" in capsys.readouterr().err


@pytest.mark.slow
def test_settings_run_at_the_same_time_both_reach_the_log(cross_validation):
    """Two cross_validate.py processes sharing a log (one setting each): the one that finishes last must keep what
    the other wrote while it trained."""
    import subprocess
    import time

    root, log_path, common = cross_validation
    script = ROOT / "experiments" / "cross_validate.py"
    running = subprocess.Popen([sys.executable, str(script), str(log_path), "late", "--train_args", TRAIN_ARGS,
                                "--jobs", "2", *common], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (root / "runs" / "late" / "fold0.log").exists() and running.poll() is None:
        time.sleep(0.1)  # its folds are training now
    shutil.copytree(root / "runs" / "plain", root / "runs" / "copied")
    assert cross_validate.main([str(log_path), "copied", "--collect_only", *common]) == 0
    output, _ = running.communicate(timeout=600)
    assert running.returncode == 0, output
    names = [s["name"] for s in json.loads(log_path.read_text())["settings"]]
    assert {"plain", "smoothed", "copied", "late"} <= set(names)


def test_flip_averaging_check_rebuilds_each_held_out_fold_and_refuses_other_runs(cross_validation, tmp_path, capsys):
    import flip_averaging

    root, _, _ = cross_validation
    rows = flip_averaging.main([str(root / "runs" / "plain")])
    assert [(r["fold"], r["checkpoint"]) for r in rows] == [("fold0", "best"), ("fold0", "last"),
                                                            ("fold1", "best"), ("fold1", "last")]
    for row in rows:
        if row["checkpoint"] == "best":  # as trained: exactly what train.py measured on that fold at its best epoch
            recorded = json.loads((root / "runs" / "plain" / row["fold"] / "all_results.json").read_text())
            assert row["as_trained"] == pytest.approx((recorded["validation_metrics"]["acc"],
                                                       recorded["validation_metrics"]["auc"]))
    # (The synthetic folds are separated perfectly, flip or not; the flip itself is tested in test_models.py.)
    assert "best: flip − as trained over 2 folds" in capsys.readouterr().out

    # --data_dir: the runs' own data folder gone (moved), the same figures from the folder named instead.
    recorded_dir = Path(json.loads((root / "runs" / "plain" / "fold0" / "run_config.json").read_text())["data_dir"])
    moved = shutil.move(recorded_dir, tmp_path / "moved_data")
    try:
        assert flip_averaging.main([str(root / "runs" / "plain"), "--data_dir", str(moved)]) == rows
    finally:
        shutil.move(moved, recorded_dir)

    official = tmp_path / "official" / "fold0"
    official.mkdir(parents=True)
    (official / "run_config.json").write_text(json.dumps({"dataset": "breastmnist", "cross_validation_folds": 0}))
    with pytest.raises(SystemExit, match="not a cross-validation fold run"):
        flip_averaging.main([str(official.parent)])
    with pytest.raises(SystemExit, match="No fold<i>/run_config.json"):
        flip_averaging.main([str(tmp_path)])


def test_fold_ensemble_scores_each_model_and_their_mean_logits_on_its_own_held_out_fold(cross_validation, tmp_path):

    import fold_ensemble

    root, _, _ = cross_validation
    plain, smoothed = root / "runs" / "plain", root / "runs" / "smoothed"
    figures = fold_ensemble.main([str(plain), str(smoothed), "--checkpoint", "best"])
    assert list(figures) == ["plain", "smoothed", "ensemble (mean logits)"]
    for fold in range(2):  # each model: exactly what train.py measured on that fold at its best epoch
        for setting in (plain, smoothed):
            recorded = json.loads((setting / f"fold{fold}" / "all_results.json").read_text())["validation_metrics"]
            assert figures[setting.name][fold] == pytest.approx((recorded["acc"], recorded["auc"]))
    # One model twice: the mean of its logits is that model.
    twice = fold_ensemble.main([str(plain), str(plain)])["ensemble (mean logits)"]
    assert [x for pair in twice for x in pair] == pytest.approx([x for pair in figures["plain"] for x in pair])

    # A setting whose folds come from another split cannot join: its models saw the others' held-out images.
    other = tmp_path / "other_split"
    shutil.copytree(plain, other)
    for fold in range(2):
        config_path = other / f"fold{fold}" / "run_config.json"
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "cross_validation_folds": 3}))
    with pytest.raises(SystemExit, match="an ensemble needs models of the same fold"):
        fold_ensemble.main([str(plain), str(other)])


@pytest.mark.slow  # about a minute: trains teachers and students on two partitions
def test_distilled_folds_learn_from_their_own_folds_teacher_and_no_other(cross_validation, other_partition, tmp_path):
    import subprocess

    root, _, common = cross_validation
    teachers = root / "runs" / "plain"
    train_args = f"{TRAIN_ARGS} --teacher_model_name_or_path {teachers}/fold{{fold}}/best --distillation_type soft"
    assert cross_validate.main([str(tmp_path / "cv.json"), "distilled", "--train_args", train_args, *common]) == 0
    for fold in range(2):
        result = json.loads((root / "runs" / "distilled" / f"fold{fold}" / "all_results.json").read_text())
        assert result["teacher"] == str(teachers / f"fold{fold}" / "best")

    # Fold 1's teacher for fold 0, fold 0's teacher of another partition, or a teacher with no record of its split,
    # even beside fold 0's own teacher (each member of an ensemble is checked): refused before anything is written.
    shutil.copytree(teachers / "fold0" / "best", tmp_path / "unknown" / "best")
    wanted = "not --dataset breastmnist --cross_validation_folds 2 --cross_validation_fold 0 " \
             "--cross_validation_split_seed 0"
    refusals = ((teachers / "fold1" / "best", f"--cross_validation_fold 1 --cross_validation_split_seed 0, {wanted}"),
                (other_partition[0] / "fold0" / "best",
                 f"--cross_validation_fold 0 --cross_validation_split_seed 1, {wanted}"),
                (tmp_path / "unknown" / "best", "there is no run_config.json beside it"))
    for teacher, message in refusals:
        output_dir = tmp_path / f"refused-{teacher.parent.parent.name}-{teacher.parent.name}"
        command = [sys.executable, "train.py", *TRAIN_ARGS.split(), "--data_dir", str(root / "data"),
                   "--cross_validation_folds", "2", "--cross_validation_fold", "0", "--output_dir", str(output_dir),
                   "--teacher_model_name_or_path", str(teachers / "fold0" / "best"), str(teacher)]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2, result.stderr[-2000:]
        assert message in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
        assert not output_dir.exists()


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_repeated_cross_validation_pairs_only_folds_of_the_same_partition(cross_validation, other_partition, tmp_path,
                                                                          capsys):
    root, log_path, common = cross_validation
    split_runs, split1 = other_partition
    for fold in range(2):
        config = json.loads((split_runs / f"fold{fold}" / "all_results.json").read_text())["config"]
        assert (config["cross_validation_fold"], config["cross_validation_split_seed"]) == (fold, 1)
    assert cross_validate.split_seed_of(split1["fold_runs"]) == 1
    settings = {s["name"]: s for s in json.loads(log_path.read_text())["settings"]}
    plain, smoothed = settings["plain"], settings["smoothed"]
    # The same recipe and seed on other held-out images: other validation losses.
    losses = {name: [[epoch["metrics"]["loss"] for epoch in json.loads(
        (root / "runs" / name / f"fold{fold}" / "all_results.json").read_text())["validation_history"]]
        for fold in range(2)] for name in ("plain", "plain-split1")}
    assert losses["plain"] != losses["plain-split1"]
    # Fold i of one partition is not fold i of another: no paired difference, in the table or pooled.
    assert cross_validate.paired_difference(split1, plain) is None
    log = {"what": "test", "settings": [plain, smoothed, split1]}
    with pytest.raises(ValueError, match=r"cut into folds differently \(split seeds \[1\] against \[0\]\)"):
        cross_validate.pooled_difference(log, ["plain-split1"], ["plain"])
    # Like partitions on both sides pool fold by fold: (smoothed + split1) / 2 − (plain + split1) / 2.
    pooled = cross_validate.pooled_difference(log, ["smoothed", "plain-split1"], ["plain", "plain-split1"])
    key = "validation_auc_last20_mean"
    halves = [(s[key] - p[key]) / 2 for s, p in zip(smoothed["fold_runs"], plain["fold_runs"])]
    assert pooled[key]["per_fold"] == pytest.approx(halves)
    # --progress pairs like partitions too, and collecting the runs as partition 0 is refused.
    progress = ["--folds", "2", "--runs_dir", str(root / "runs")]
    assert cross_validate.main([str(log_path), "--progress", "plain-split1", "plain", *progress]) == 2
    assert "cut into folds differently" in capsys.readouterr().err
    assert cross_validate.main([str(tmp_path / "log.json"), "plain-split1", "--collect_only", *common]) == 2
    assert "was cut with --split_seed 1, not 0" in capsys.readouterr().err


def test_checks_on_saved_fold_models_rebuild_the_runs_own_partition(cross_validation, other_partition):
    import fold_ensemble
    from accelerate import Accelerator
    from flip_averaging import held_out_fold

    root, _, _ = cross_validation
    split_runs, _ = other_partition
    dataset = data.load_medmnist("breastmnist", data_dir=root / "data", verify_checksum=False,
                                 cache_dir=root / "cache")
    accelerator = Accelerator(cpu=True)
    for run, split_seed in ((root / "runs" / "plain" / "fold0", 0), (split_runs / "fold0", 1)):
        rebuilt, _ = held_out_fold(run, accelerator)
        for seed in (0, 1):  # its own partition's held-out images, not the other's
            expected = data.DeviceSplit.from_dataset(data.cross_validation_split(dataset, 2, 0, seed)["validation"])
            assert torch.equal(rebuilt.images, expected.images) == (seed == split_seed)
    # An ensemble of fold models needs one partition: each model of another has seen the held-out images.
    with pytest.raises(SystemExit, match="an ensemble needs models of the same fold"):
        fold_ensemble.main([str(root / "runs" / "plain"), str(split_runs)])


def fake_setting(name: str, aucs: list[float], accs: list[float]) -> dict:
    """A log setting with the figures pooled_difference reads (and the curves the chart draws)."""
    runs = [{"name": f"{name}/fold{fold}", "validation_auc_last20_mean": auc, "validation_acc_last20_mean": acc,
             "validation_auc_per_epoch": [auc] * 3} for fold, (auc, acc) in enumerate(zip(aucs, accs))]
    summary = {key: {"mean": 0.0, "std": 0.0} for key in cross_validate.FIGURES}
    return {"name": name, "folds": len(aucs), "summary": summary, "fold_runs": runs}


def test_compare_pools_seeds_fold_by_fold_before_pairing(tmp_path, capsys):
    # Two seeds of a recipe against two seeds of its reference, three folds: per fold the mean of each pair, then
    # the paired difference. Seed 0 alone gains +0.02 on every fold; seed 1 alone loses on two: pooled, less.
    log = {"what": "test", "settings": [
        fake_setting("ref-s0", [0.80, 0.90, 0.70], [0.80, 0.80, 0.80]),
        fake_setting("ref-s1", [0.82, 0.88, 0.72], [0.82, 0.80, 0.78]),
        fake_setting("new-s0", [0.82, 0.92, 0.72], [0.81, 0.80, 0.80]),
        fake_setting("new-s1", [0.81, 0.90, 0.71], [0.82, 0.79, 0.78]),
    ]}
    pooled = cross_validate.pooled_difference(log, ["new-s0", "new-s1"], ["ref-s0", "ref-s1"])
    auc_per_fold = [(0.82 + 0.81) / 2 - (0.80 + 0.82) / 2, (0.92 + 0.90) / 2 - (0.90 + 0.88) / 2,
                    (0.72 + 0.71) / 2 - (0.70 + 0.72) / 2]
    mean, std = statistics.fmean(auc_per_fold), statistics.stdev(auc_per_fold)
    half_width = 4.303 * std / 3**0.5  # t(0.975, 2 degrees of freedom): three folds
    auc = pooled["validation_auc_last20_mean"]
    assert auc["per_fold"] == pytest.approx(auc_per_fold)
    assert (auc["mean"], auc["std"]) == pytest.approx((mean, std))
    assert auc["ci95"] == pytest.approx([mean - half_width, mean + half_width])
    acc_per_fold = [0.815 - 0.81, 0.795 - 0.80, 0.79 - 0.79]
    assert pooled["validation_acc_last20_mean"]["per_fold"] == pytest.approx(acc_per_fold)
    # one setting per group is the plain paired difference
    single = cross_validate.pooled_difference(log, ["new-s0"], ["ref-s0"])["validation_auc_last20_mean"]
    plain = cross_validate.paired_difference(log["settings"][2], log["settings"][0])
    assert single["mean"] == pytest.approx(plain["mean"]) and single["ci95"] == pytest.approx(plain["ci95"])

    # the command line prints the pooled figures after the table, and refuses names or fold counts that do not fit
    path = tmp_path / "log.json"
    path.write_text(json.dumps(log))
    assert cross_validate.main([str(path), "--compare", "new-s0,new-s1", "ref-s0,ref-s1"]) == 0
    out = capsys.readouterr().out
    assert "pooled: mean of new-s0 + new-s1 − mean of ref-s0 + ref-s1" in out
    assert (f"validation_auc_last20_mean: {mean:+.4f} ± {std:.4f} [{mean - half_width:+.4f}, "
            f"{mean + half_width:+.4f}]") in out
    assert cross_validate.main([str(path), "--compare", "new-s0,new-s2", "ref-s0"]) == 2
    assert "--compare: new-s2 not in the log; its settings: ref-s0, ref-s1, new-s0, new-s1." in capsys.readouterr().err
    log["settings"].append(fake_setting("two-folds", [0.8, 0.9], [0.8, 0.8]))
    path.write_text(json.dumps(log))
    assert cross_validate.main([str(path), "--compare", "two-folds", "ref-s0"]) == 2
    assert "different fold counts ([2, 3])" in capsys.readouterr().err


def test_needed_difference_is_the_smallest_that_passes_and_none_when_nothing_can():
    # Two folds of five clearly negative: however large the three left, the spread grows as fast as the mean.
    assert cross_validate.needed_on_each_remaining_fold([-0.02, -0.03], 5) is None
    assert cross_validate.needed_on_each_remaining_fold([-0.0001, 0.0], 5) is None  # nor barely at or below 0
    rng = np.random.default_rng(0)
    for _ in range(2000):  # nor do unequal values: alike is the easiest way
        assert cross_validate.lower_bound([-0.02, -0.03, *rng.uniform(-1, 1, 3)]) <= 0
    # Two positive folds: a common x for the other three exists, and it is the smallest on the grid that passes.
    needed = cross_validate.needed_on_each_remaining_fold([0.03, 0.02], 5)
    assert needed is not None and 0 < needed < 0.03
    assert cross_validate.lower_bound([0.03, 0.02] + [needed] * 3) > 0
    assert cross_validate.lower_bound([0.03, 0.02] + [needed - 1e-4] * 3) <= 0
    # Every fold done: the verdict is the interval's own.
    assert cross_validate.needed_on_each_remaining_fold([0.01, 0.02, 0.015], 3) == float("-inf")
    assert cross_validate.needed_on_each_remaining_fold([0.01, -0.02, 0.015], 3) is None


def test_progress_pairs_the_folds_a_running_setting_has_finished(cross_validation, capsys):
    root, log_path, _ = cross_validation
    log = json.loads(log_path.read_text())
    plain, smoothed = ({s["name"]: s for s in log["settings"]}[name] for name in ("plain", "smoothed"))
    # A setting still running: only its fold 1 is finished (smoothed's, copied), and it is not in the log.
    (root / "runs" / "running").mkdir()
    shutil.copytree(root / "runs" / "smoothed" / "fold1", root / "runs" / "running" / "fold1")
    progress = ["--folds", "2", "--runs_dir", str(root / "runs")]
    assert cross_validate.main([str(log_path), "--progress", "running", "plain", *progress]) == 0
    out = capsys.readouterr().out
    assert "folds finished by all: 1 of 2 (fold1)" in out
    difference = (smoothed["fold_runs"][1]["validation_auc_last20_mean"]
                  - plain["fold_runs"][1]["validation_auc_last20_mean"])
    assert f"validation_auc_last20_mean: mean {difference:+.4f} (folds {difference:+.4f})" in out
    assert ("no longer possible" in out) == (cross_validate.needed_on_each_remaining_fold([difference], 2) is None)
    assert json.loads(log_path.read_text()) == log  # read-only
    # Both recorded settings: every fold, and the verdict is the interval's.
    assert cross_validate.main([str(log_path), "--progress", "smoothed", "plain", *progress]) == 0
    assert "folds finished by all: 2 of 2 (fold0, fold1)" in capsys.readouterr().out
    assert cross_validate.main([str(log_path), "--progress", "nowhere", "plain", *progress]) == 2
    assert "nowhere is neither in the log nor a folder of" in capsys.readouterr().err
