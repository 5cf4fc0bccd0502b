"""The throughput benchmark's quick mode (so it does not rot), the fused attention's bf16 logits against the
written-out fp32 reference, and the CPU allocator settings the benchmark uses."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.modeling_vit import MedViTSelfAttention

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("throughput_benchmark", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

@pytest.mark.slow  # the benchmark's own smoke run: half a minute
def test_quick_mode_runs_both_pipelines_and_reports(benchmark, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "throughput.json"
    assert benchmark.main(["--quick", "--synthetic", "--cache_dir", str(tmp_path / "cache"), "--no_tune_allocator",
                           "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = {(r["model"], r["dtype"], r["pipeline"].split()[0]) for r in record["results"]}
    assert rows == {(m, d, p) for m in ("vit_lsa", "vit") for d in ("bf16", "fp32") for p in ("ours", "anchor")}
    for row in record["results"]:
        assert row["images_per_second_best"] > 0 and row["training_gflop_per_image"] > row["forward_gflop_per_image"] > 0
        assert row["peak_tflops"] > 0 and row["fraction_of_peak"] > 0
    assert {(r["model"], r["ours_dtype"], r["anchor_dtype"]) for r in record["ratios"]} >= {
        ("vit_lsa", "bf16", "bf16"), ("vit_lsa", "fp32", "fp32")}
    printed = capsys.readouterr().out
    assert "ours / anchor" in printed and "img/s best" in printed

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
