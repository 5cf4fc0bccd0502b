"""experiments/run_results.py end to end: real `accelerate launch train.py` runs on synthetic data, aggregated."""

import json
import statistics
import sys
from pathlib import Path

import pytest

from data.synthetic import write_synthetic_npz

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import run_results  # noqa: E402

pytestmark = pytest.mark.slow  # end-to-end sweeps of experiments/run_results.py (about 1.5 minutes)

TRAIN_ARGS = ("--no_verify_checksum --num_train_epochs 1 --per_device_train_batch_size 16 "
              "--per_device_eval_batch_size 32 --report_to none --checkpoints_total_limit 1")
LAUNCH = f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no " \
         "--dynamo_backend no"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    write_synthetic_npz(root / "data", "breastmnist", n_train=64, n_val=32, n_test=40, seed=0)
    argv = ["--datasets", "breastmnist", "--models", "cnn", "vit_lsa+distilled", "--seeds", "0", "1",
            "--data_dir", str(root / "data"),
            "--runs_dir", str(root / "runs"), "--results_dir", str(root / "results"), "--jobs", "2",
            "--launch", LAUNCH, "--train_args", TRAIN_ARGS, "--distillation_args", "--distillation_type soft"]
    with pytest.MonkeyPatch.context() as patch:
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            patch.setenv(key, "1")
        patch.setenv("HF_DATASETS_CACHE", str(root / "cache"))
        run_results.main(argv)
    return root, argv


def test_sweep_writes_table_json_and_chart_from_the_runs(sweep):
    root, _ = sweep
    results = json.loads((root / "results" / "results.json").read_text())
    row, distilled_row = results["rows"]
    assert (row["dataset"], row["model"], row["seeds"]) == ("breastmnist", "cnn", [0, 1])
    runs = [json.loads((root / "runs" / f"breastmnist-cnn-seed{s}" / "all_results.json").read_text()) for s in (0, 1)]
    accs = [r["test_metrics"]["acc"] for r in runs]
    assert row["test_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert row["test_acc"]["std"] == pytest.approx(statistics.stdev(accs))
    assert [r["seed"] for r in row["runs"]] == [0, 1]
    assert row["num_epochs"] == [1]  # TRAIN_ARGS' --num_train_epochs, read back from each run's config
    assert all(r["config"]["seed"] == s for r, s in zip(runs, (0, 1)))
    table = (root / "results" / "RESULTS.md").read_text()
    assert f"| breastmnist | cnn | 2 | {row['test_acc']['mean']:.4f}" in table
    assert "0.76" in table  # the seed notebooks' BreastMNIST CNN accuracy beside ours
    assert "× " in table and ", fp32, torch " in table  # hardware per row; accelerate's precision "no" is fp32
    assert (root / "results" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each distilled run learned from the CNN of its own seed, after that CNN had finished.
    assert (distilled_row["model"], distilled_row["seeds"]) == ("vit_lsa+distilled", [0, 1])
    for seed in (0, 1):
        run = json.loads((root / "runs" / f"breastmnist-vit_lsa-distilled-seed{seed}" / "all_results.json").read_text())
        teacher = root / "runs" / f"breastmnist-cnn-seed{seed}" / "best"
        assert run["teacher"] == str(teacher) and run["config"]["distillation_type"] == "soft"
        assert run["model_name"] == "vit_lsa"
    assert f"| breastmnist | vit_lsa+distilled | 2 | {distilled_row['test_acc']['mean']:.4f}" in table
    assert "| 0.8397 |" in table  # compared with the seed notebooks' ViT + SPT + LSA


def test_sweep_skips_finished_runs(sweep, capsys):
    root, argv = sweep
    stamp = (root / "runs" / "breastmnist-cnn-seed0" / "all_results.json").stat().st_mtime_ns
    run_results.main(argv)
    assert "[skip] breastmnist-cnn-seed0" in capsys.readouterr().out
    assert (root / "runs" / "breastmnist-cnn-seed0" / "all_results.json").stat().st_mtime_ns == stamp


def test_a_failed_run_makes_the_sweep_fail_with_its_log(sweep):
    root, argv = sweep
    argv = [*argv, "--seeds", "7", "--train_args", TRAIN_ARGS + " --learning_rate -1"]
    with pytest.raises(SystemExit, match="breastmnist-cnn-seed7.*FAILED"):
        run_results.main(argv)


def test_a_launcher_that_is_not_installed_fails_the_sweep_with_a_message(sweep):
    root, argv = sweep
    with pytest.raises(SystemExit, match="breastmnist-cnn-seed8: FAILED, cannot start 'no-such-launcher'"):
        run_results.main([*argv, "--seeds", "8", "--launch", "no-such-launcher launch"])


def test_collect_ignores_search_runs_without_test_metrics(sweep, capsys):
    root, argv = sweep
    search = json.loads((root / "runs" / "breastmnist-cnn-seed0" / "all_results.json").read_text())
    search["test_metrics"] = None  # what `train.py --skip_test` writes
    (root / "runs" / "breastmnist-cnn-seed5").mkdir()
    (root / "runs" / "breastmnist-cnn-seed5" / "all_results.json").write_text(json.dumps(search))
    run_results.main([*argv, "--seeds", "0", "1", "5", "--collect_only"])
    assert "[ignored] breastmnist-cnn-seed5" in capsys.readouterr().out
    row = json.loads((root / "results" / "results.json").read_text())["rows"][0]
    assert (row["model"], row["seeds"]) == ("cnn", [0, 1])


def test_search_log_records_skip_test_runs_and_refuses_tested_ones(sweep, tmp_path, capsys):
    import search_log
    import train

    root, _ = sweep
    search_run = tmp_path / "search"
    train.main(["--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(root / "data"), "--no_verify_checksum",
                "--output_dir", str(search_run), "--num_train_epochs", "3", "--per_device_train_batch_size", "16",
                "--report_to", "none", "--skip_test", "--seed", "3"])
    log = tmp_path / "search.json"
    assert search_log.main([str(log), f"S={search_run}"]) == 0
    assert search_log.main([str(log), f"S={search_run}"]) == 0  # the same name again replaces, never duplicates
    (entry,) = json.loads(log.read_text())["runs"]
    history = json.loads((search_run / "all_results.json").read_text())["validation_history"]
    assert entry["validation_auc_per_epoch"] == [h["metrics"]["auc"] for h in history]
    assert entry["validation_auc_last20_mean"] == pytest.approx(statistics.fmean(entry["validation_auc_per_epoch"]))
    assert entry["resolved"]["seed"] == 3 and entry["resolved"]["num_train_epochs"] == 3
    tested = root / "runs" / "breastmnist-cnn-seed0"
    assert search_log.main([str(log), f"T={tested}"]) == 2
    assert "evaluated the test split" in capsys.readouterr().err
    assert [run["name"] for run in json.loads(log.read_text())["runs"]] == ["S"]
    # --discard_test records it (here in a log of its own), its test figures dropped: nothing of them reaches the log.
    discarded_log = tmp_path / "discarded.json"
    assert search_log.main([str(discarded_log), f"T={tested}", "--discard_test"]) == 0
    (entry,) = json.loads(discarded_log.read_text())["runs"]
    assert entry["name"] == "T" and entry["test_metrics"] is None and entry["test_discarded_unread"] is True
    assert json.loads((tested / "all_results.json").read_text())["test_metrics"]["acc"] is not None
    assert {key for key in entry if "test" in key} == {"test_metrics", "test_discarded_unread"}

    # The same setting with another seed is summarised with it; another learning rate is another setting.
    train.main(["--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(root / "data"), "--no_verify_checksum",
                "--output_dir", str(tmp_path / "search4"), "--num_train_epochs", "3",
                "--per_device_train_batch_size", "16", "--report_to", "none", "--skip_test", "--seed", "4"])
    assert search_log.main([str(log), f"S4={tmp_path / 'search4'}", "--summary"]) == 0
    runs = json.loads(log.read_text())["runs"]
    (row,) = search_log.summarize(runs)
    assert row["names"] == ["S", "S4"] and row["seeds"] == [3, 4]
    assert row["validation_auc_at_best"][0] == pytest.approx(statistics.fmean(r["validation_auc_at_best"] for r in runs))
    other = {**runs[1], "resolved": {**runs[1]["resolved"], "learning_rate": 0.5}}
    assert len(search_log.summarize([runs[0], other])) == 2
    pretrained = {**runs[1], "resolved": {**runs[1]["resolved"], "mae_epochs": 20}}
    assert len(search_log.summarize([runs[0], pretrained])) == 2
    # Entries logged before --num_epochs took the name --num_train_epochs count under the new name.
    resolved = {k: v for k, v in runs[1]["resolved"].items() if k != "num_train_epochs"}
    logged_before = {**runs[1], "resolved": {**resolved, "num_epochs": 3}}
    assert len(search_log.summarize([runs[0], logged_before])) == 1
    assert len(search_log.summarize([runs[0], {**logged_before, "resolved": {**resolved, "num_epochs": 9}}])) == 2
    assert "S, S4 (2 runs)" in capsys.readouterr().out


def test_a_side_sweep_writes_its_table_beside_its_runs_not_over_the_projects(tmp_path):
    side = run_results.parse_args(["--runs_dir", str(tmp_path / "runs-side")])
    assert Path(side.results_dir) == tmp_path / "runs-side" / "results_table"
    assert Path(run_results.parse_args([]).results_dir) == ROOT / "results"
    explicit = run_results.parse_args(["--runs_dir", str(tmp_path), "--results_dir", str(tmp_path / "table")])
    assert Path(explicit.results_dir) == tmp_path / "table"


def test_update_replaces_only_the_rows_it_collects_and_keeps_the_others(sweep, tmp_path, capsys):
    """A fresh clone has no runs: --update must keep the table's other rows, and the table names both commands."""
    root, argv = sweep
    table = tmp_path / "table"
    run_results.main([*argv, "--collect_only", "--results_dir", str(table)])
    full = json.loads((table / "results.json").read_text())
    assert [r["model"] for r in full["rows"]] == ["cnn", "vit_lsa+distilled"]

    run_results.main([*argv, "--collect_only", "--results_dir", str(table), "--models", "cnn", "--seeds", "0",
                      "--update"])
    updated = json.loads((table / "results.json").read_text())
    cnn, distilled = updated["rows"]
    assert (cnn["model"], cnn["seeds"]) == ("cnn", [0])  # replaced where it stood
    assert distilled == full["rows"][1]  # kept exactly
    assert len(updated["commands"]) == 2 and "--update" in updated["commands"][1]
    markdown = (table / "RESULTS.md").read_text()
    assert updated["commands"][0] in markdown and updated["commands"][1] in markdown
    assert "| breastmnist | vit_lsa+distilled | 2 |" in markdown
    run_results.main([*argv, "--collect_only", "--results_dir", str(table), "--models", "cnn", "--seeds", "0",
                      "--update"])  # the same command again (e.g. to redraw the chart) is listed once
    assert json.loads((table / "results.json").read_text())["commands"] == updated["commands"]

    # Without --update the same command drops the other row, and says so.
    capsys.readouterr()
    run_results.main([*argv, "--collect_only", "--results_dir", str(table), "--models", "cnn"])
    assert "now dropped: breastmnist/vit_lsa+distilled" in capsys.readouterr().out
    assert [r["model"] for r in json.loads((table / "results.json").read_text())["rows"]] == ["cnn"]


def test_an_ensemble_distilled_run_learns_from_the_cnns_of_every_seed_of_the_sweep(tmp_path):
    args = run_results.parse_args(["--models", "cnn", "vit_conv_lsa+ensemble_distilled", "--seeds", "0", "1", "2",
                                   "--runs_dir", str(tmp_path), "--distillation_args", "--distillation_type soft"])
    command = run_results.train_command(args, "breastmnist", "vit_conv_lsa+ensemble_distilled", 1, tmp_path / "out")
    assert command[command.index("--model") + 1] == "vit_conv_lsa"
    start = command.index("--teacher_model_name_or_path") + 1
    assert command[start:start + 4] == [str(tmp_path / f"breastmnist-cnn-seed{k}" / "best") for k in (0, 1, 2)] + [
        "--distillation_type"]
    assert run_results.run_name("breastmnist", "vit_conv_lsa+ensemble_distilled", 1) == \
        "breastmnist-vit_conv_lsa-ensemble_distilled-seed1"
    single = run_results.train_command(args, "breastmnist", "vit_conv_lsa+distilled", 1, tmp_path / "out")
    assert single[single.index("--teacher_model_name_or_path") + 1:][:2] == [
        str(tmp_path / "breastmnist-cnn-seed1" / "best"), "--distillation_type"]


def test_resume_continues_an_interrupted_run_from_its_newest_checkpoint(sweep, tmp_path):
    import shutil

    root, argv = sweep
    run = tmp_path / "runs" / "breastmnist-cnn-seed1"
    shutil.copytree(root / "runs" / run.name, run)
    straight = json.loads((run / "all_results.json").read_text())
    for name in ("all_results.json", "best", "last"):  # stopped after its last checkpoint, before the end
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (tmp_path / "runs" / f"{run.name}.log").write_text("the part before\n")
    run_results.main([*argv, "--models", "cnn", "--seeds", "1", "--runs_dir", str(tmp_path / "runs"),
                      "--results_dir", str(tmp_path / "results"), "--resume"])
    resumed = json.loads((run / "all_results.json").read_text())
    assert resumed["validation_history"] == straight["validation_history"]
    assert resumed["test_metrics"] == straight["test_metrics"]
    log = (tmp_path / "runs" / f"{run.name}.log").read_text()
    assert log.startswith("the part before\n") and "--resume_from_checkpoint latest" in log
    assert "Resumed from" in log
