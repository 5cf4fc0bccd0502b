"""The throughput benchmark's quick mode at both geometries (so it does not rot), its models at the recipe's
geometry, its records and the README table made from them; the fused attention's bf16 logits against the
written-out fp32 reference, and the CPU allocator settings the benchmark uses."""

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
import training.trainer
from models.modeling_vit import MedViTSelfAttention
from training.recipes import recipe_defaults

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def benchmark():
    return load_script("throughput")


@pytest.fixture(scope="module")
def table_script():
    return load_script("throughput_table")


def test_options_defaults_and_the_step_imported_from_training(benchmark):
    args = benchmark.parse_args([])
    assert args.geometry == "default" and args.models == ["vit_lsa", "vit"] and args.warmup >= 5
    assert benchmark.parse_args(["--models", "vit_conv_lsa", "--geometry", "seed"]).models == ["vit_conv_lsa"]
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--quick", "--results"])  # a smoke run is not a result
    # The measured step is train.py's own, not a copy.
    assert benchmark.training_step is training.trainer.training_step
    assert benchmark.make_batch is training.trainer.make_batch


@pytest.mark.parametrize("name, dataset, channels", [("vit_lsa", "breastmnist", 1), ("vit", "bloodmnist", 3),
                                                     ("vit_conv_lsa", "breastmnist", 1)])
def test_default_geometry_is_the_recipes_for_both_pipelines(benchmark, name, dataset, channels):
    """Ours is built with the default recipe's config overrides for the data set (BloodMNIST's vit: a 14×14 grid),
    augments as the recipe says (BloodMNIST: no zoom), and the anchor has the same input size, grid and widths."""
    expected = recipe_defaults("default", name, image_size=28, dataset=dataset)["config_overrides"]
    settings = benchmark.recipe_settings(name, "default", dataset, 28)
    model = benchmark.ours_model(name, settings, channels, 4)
    assert {key: getattr(model.config, key) for key in expected} == expected
    assert (model.config.image_size, model.config.patch_size) == (28, expected["patch_size"])
    assert settings.augmentation.zoom == (0.0 if dataset == "bloodmnist" else 0.3)
    assert settings.label_smoothing == 0.1 and settings.optimizer.weight_decay == 0.05
    spec = benchmark.anchor_spec(name, model.config)
    if name == "vit_conv_lsa":
        assert spec is None  # no matching vit-pytorch model: n/a
        return
    kwargs = spec["kwargs"]
    assert (kwargs["image_size"], kwargs["patch_size"]) == (28, expected["patch_size"])
    assert (kwargs["dim"], kwargs["depth"], kwargs["heads"], kwargs["dim_head"], kwargs["mlp_dim"]) == (
        model.config.hidden_size, model.config.num_hidden_layers, model.config.num_attention_heads,
        model.config.attention_head_dim, model.config.intermediate_size)
    assert kwargs["pool"] == "mean" and kwargs["dropout"] == 0
    anchor = benchmark.anchor_model(name, model.config, channels, 4)
    grid = (28 // expected["patch_size"]) ** 2
    cls_tokens = 1 if name == "vit_lsa" else 0  # vit_for_small_dataset keeps its CLS token when mean-pooling
    assert anchor.pos_embedding.numel() == (grid + cls_tokens) * model.config.hidden_size
    assert anchor(torch.zeros(2, channels, 28, 28)).shape == (2, 4)


def test_seed_geometry_is_the_models_own(benchmark):
    settings = benchmark.recipe_settings("vit_lsa", "seed", "bloodmnist", 28)
    model = benchmark.ours_model("vit_lsa", settings, 1, 2)
    assert (model.config.image_size, model.config.patch_size, model.config.pooling) == (72, 6, "flatten")
    assert settings.augmentation.zoom == 0.3 and settings.label_smoothing == 0.0
    kwargs = benchmark.anchor_spec("vit_lsa", model.config)["kwargs"]
    assert (kwargs["image_size"], kwargs["patch_size"], kwargs["pool"], kwargs["dropout"]) == (72, 6, "cls", 0.1)


@pytest.fixture(scope="module", params=["default", pytest.param("seed", marks=pytest.mark.slow)])
def quick_record(request, benchmark, tmp_path_factory):
    """(geometry, record, printed output) of a quick run: vit_lsa (with its anchor) and vit_conv_lsa (none), fp32,
    batch 2, synthetic data (on 2 shared cores: 5-20 s at the default geometry, 10-30 s at the seed's)."""
    directory = tmp_path_factory.mktemp(f"throughput-{request.param}")
    out, printed = directory / "throughput.json", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert benchmark.main(["--quick", "--synthetic", "--geometry", request.param, "--models", "vit_lsa",
                               "vit_conv_lsa", "--dtype", "fp32", "--batch_size", "2", "--steps", "1",
                               "--cache_dir", str(directory / "cache"), "--no_tune_allocator",
                               "--json", str(out)]) == 0
    return request.param, json.loads(out.read_text()), printed.getvalue()


def test_quick_run_at_each_geometry(quick_record):
    geometry, record, printed = quick_record
    size = 28 if geometry == "default" else 72
    assert record["geometry"] == geometry and record["date"] and record["command"].startswith("python benchmarks/")
    assert record["device"].startswith("cpu-") and record["machine"]
    assert {(r["model"], r["pipeline"].split()[0]) for r in record["results"]} == {
        ("vit_lsa", "ours"), ("vit_lsa", "anchor"), ("vit_conv_lsa", "ours")}
    for row in record["results"]:
        assert row["image_size"] == size and row["images_per_second_best"] > 0
        assert row["images_per_second_median"] > 0 and row["fraction_of_peak"] > 0
    lsa = record["models"]["vit_lsa"]
    assert lsa["config"]["image_size"] == lsa["anchor"]["kwargs"]["image_size"] == size
    assert lsa["config_overrides"] == recipe_defaults(geometry, "vit_lsa", 28, "breastmnist")["config_overrides"]
    assert record["models"]["vit_conv_lsa"]["anchor"] is None
    assert {r["model"] for r in record["ratios"]} == {"vit_lsa"}  # no anchor, no ratio
    assert "vit_conv_lsa anchor n/a" in printed and "img/s best" in printed


def test_table_renders_a_quick_runs_record(quick_record, table_script, tmp_path, capsys):
    geometry, record, _ = quick_record
    record = json.loads(json.dumps(record))
    for row in record["results"]:  # one run each: make the medians differ from the best runs
        if row["pipeline"].startswith("ours"):
            row["images_per_second_median"] = row["images_per_second_best"] / 2
    path = tmp_path / "throughput.json"
    path.write_text(json.dumps(record))
    assert table_script.main([str(path)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and "ours / anchor" in table and record["command"] in table
    size, patch = (28, 4) if geometry == "default" else (72, 6)
    lsa = rows[0].split(" | ")
    ours = next(r for r in record["results"] if r["model"] == "vit_lsa" and r["pipeline"].startswith("ours"))
    theirs = next(r for r in record["results"] if r["model"] == "vit_lsa" and r["pipeline"].startswith("anchor"))
    assert lsa[1] == f"{geometry}, {size} px / {patch}" and lsa[2] == "fp32"
    assert lsa[5] == f"{ours['images_per_second_best'] / theirs['images_per_second_best']:.2f}× " \
                     f"({ours['images_per_second_median'] / theirs['images_per_second_median']:.2f}×)"
    assert rows[1].split(" | ")[4:6] == ["n/a", "n/a"]  # vit_conv_lsa: no anchor


def test_results_file_keeps_one_record_per_geometry_and_device_names(benchmark, tmp_path, monkeypatch):
    path = tmp_path / "throughput_cpu-x.json"
    record = lambda geometry, value: {"geometry": geometry, "dataset": "breastmnist", "size": 28, "v": value}  # noqa
    for geometry, value in (("seed", 1), ("default", 2), ("seed", 3)):
        benchmark.add_to_results(record(geometry, value), path)
    assert [(r["geometry"], r["v"]) for r in benchmark.read_records(path)] == [("default", 2), ("seed", 3)]
    for name, expected in (("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cpu-intel-xeon-platinum-8481c"),
                           ("AMD EPYC 7B13 64-Core Processor", "cpu-amd-epyc-7b13")):
        monkeypatch.setattr(benchmark, "cpu_name", lambda: name)
        assert benchmark.device_slug(torch.device("cpu")) == expected


@pytest.mark.slow  # the benchmark's own smoke run: half a minute
def test_quick_mode_runs_both_pipelines_and_reports(benchmark, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "throughput.json"
    assert benchmark.main(["--quick", "--synthetic", "--cache_dir", str(tmp_path / "cache"), "--no_tune_allocator",
                           "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["geometry"] == "default"
    rows = {(r["model"], r["dtype"], r["pipeline"].split()[0]) for r in record["results"]}
    assert rows == {(m, d, p) for m in ("vit_lsa", "vit") for d in ("bf16", "fp32") for p in ("ours", "anchor")}
    for row in record["results"]:
        assert row["images_per_second_best"] > 0 and row["training_gflop_per_image"] > row["forward_gflop_per_image"] > 0
        assert row["peak_tflops"] > 0 and row["fraction_of_peak"] > 0
    assert {(r["model"], r["ours_dtype"], r["anchor_dtype"]) for r in record["ratios"]} >= {
        ("vit_lsa", "bf16", "bf16"), ("vit_lsa", "fp32", "fp32")}
    printed = capsys.readouterr().out
    assert "ours / anchor" in printed and "img/s best" in printed

def test_the_step_profile_takes_the_benchmarks_options_and_reports_dtypes_and_casts(tmp_path, capsys):
    """benchmarks/profile_step.py: its own options, every other one the benchmark's (here --quick, --synthetic,
    --models, --dtype); per operator the dtypes it ran in, and the step's casts (none in fp32, both ways in bf16)."""
    profile_step = load_script("profile_step")
    assert profile_step.main(["--quick", "--synthetic", "--cache_dir", str(tmp_path / "cache"), "--models", "vit",
                              "--dtype", "fp32", "bf16", "--profiled", "1", "--rows", "5"]) == 0
    printed = capsys.readouterr().out
    fp32, bf16 = printed.split("== vit, default geometry, bf16")
    assert "default geometry, fp32" in fp32 and "batch 8" in fp32
    assert "casts between floating dtypes in one step: none" in fp32
    assert "fp32->bf16" in bf16 and "bf16->fp32" in bf16 and "bf16 " in bf16.split("casts")[0]


def reference_attention_forward(self, hidden_states, output_attentions=False):
    """The attention as plain fp32 ops: the written-out softmax of `attention_probabilities`, then the values."""
    probs = self.attention_probabilities(hidden_states.float())
    _, _, v = self._queries_keys_values(hidden_states.float())
    context = probs @ v
    b, _, n, _ = context.shape
    return self.output_dropout(self.output(context.transpose(1, 2).reshape(b, n, -1))), (
        probs if output_attentions else None)

@pytest.mark.parametrize("name", ["vit_lsa", "vit"])
def test_fused_bf16_logits_match_the_written_out_fp32_reference(name, monkeypatch):
    """Evaluation: the fused SDPA (with the LSA mask) under bf16 autocast vs the written-out softmax in fp32
    (measured: 0.7 % of the logits' scale apart; a missing LSA mask or a wrong scale is far outside 5 %)."""
    torch.manual_seed(0)
    model = models.build_model(name, 1, 2, head_hidden_sizes=[256]).eval()
    pixel_values = torch.randn(8, 1, 72, 72)
    with torch.no_grad():
        fast_fp32 = model(pixel_values=pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast_bf16 = model(pixel_values=pixel_values).logits.float()
        monkeypatch.setattr(MedViTSelfAttention, "forward", reference_attention_forward)
        reference = model(pixel_values=pixel_values).logits
    torch.testing.assert_close(fast_fp32, reference, atol=1e-5, rtol=1e-5)
    scale = reference.abs().max().item()
    torch.testing.assert_close(fast_bf16, reference, atol=0.05 * scale, rtol=0.05)

def test_cpu_allocator_tuning_and_restoring_in_a_fresh_process():
    code = ("from training.performance import restore_cpu_allocator, tune_cpu_allocator; import sys; "
            "sys.exit(0 if tune_cpu_allocator() and restore_cpu_allocator() else 1)")
    expected = 0 if sys.platform.startswith("linux") else 1
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == expected
