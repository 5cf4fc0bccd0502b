"""`--torch_compile` (training/compilation.py) and `--dataloader_drop_last`: compiled training steps agree with eager
ones, a compiled run saves clean weights and resumes exactly, compiling may change on resume but dropping the last
batch may not, and accelerate's own dynamo setting is taken over rather than compiled twice.

Compiling with inductor on a CPU takes tens of seconds per graph the first time (then its cache answers): those tests
are marked slow; the default run compiles with "aot_eager" (TorchDynamo's capture and AOTAutograd's joint graph,
without code generation)."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import models
from tiny_runs import copy_stopped_after_first_epoch, train_tiny_vit
from training.compilation import compile_for_training, compile_settings, eager
from training.methods import Batch, MethodList, TrainingMethod
from training.optimization import build_optimizer, build_scheduler, training_loss
from training.run_records import check_output_dir, write_run_config
from training.trainer import training_step

# Dropout and stochastic depth off: compiled code draws its random numbers differently from eager code.
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, head_dropout_prob=0.0, drop_path_rate=0.0)


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class GradientRecorder(TrainingMethod):
    """Keeps a copy of every gradient after the backward pass (`training_step` zeroes them after the update)."""

    name = "gradient_recorder"

    def __init__(self):
        self.gradients = []

    def after_backward(self, step):
        self.gradients.append({name: p.grad.clone() for name, p in step.model.named_parameters()})


def train_steps(model, batches, accelerator):
    """The losses and gradients of `training_step` on `batches`, and the parameters after them (clipped SGD: an
    update linear in the gradients, where Adam's division by sqrt(v) would magnify float noise in near-zero
    gradients into visible weight differences)."""
    optimizer = build_optimizer(SimpleNamespace(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.05),
                                model)
    scheduler = build_scheduler("constant", optimizer, 0, len(batches))
    recorder = GradientRecorder()
    losses = []
    for pixel_values, labels in batches:
        loss = training_step(model, Batch(pixel_values, labels, labels), accelerator=accelerator, optimizer=optimizer,
                             scheduler=scheduler, methods=MethodList([recorder]),
                             task_loss=lambda logits, targets: training_loss(logits, targets, False, 0.1),
                             clipped_parameters=list(model.parameters()), max_grad_norm=1.0)
        losses.append(loss.detach())
    return losses, recorder.gradients, {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_training_steps_agree_with_eager_ones(backend):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    eager_model = models.build_model("vit_lsa", 1, 2, **NO_DROPOUT, image_size=28, patch_size=7, hidden_size=16,
                                     num_hidden_layers=1, num_attention_heads=2, attention_head_dim=8,
                                     intermediate_size=32, pooling="mean", head_hidden_sizes=[32])
    compiled_model = compile_for_training(copy.deepcopy(eager_model), backend)
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 1, 28, 28, generator=generator), torch.randint(0, 2, (16,), generator=generator))
               for _ in range(3)]
    before = graphs_compiled()
    compiled = train_steps(compiled_model, batches, accelerator)
    assert graphs_compiled() == before + 1  # compiled: one graph, the same batch shape three times
    expected = train_steps(eager_model, batches, accelerator)
    tolerance = dict(rtol=1e-4, atol=1e-5)  # fp32; inductor fuses and reorders sums, so not to the bit
    for step in range(3):
        torch.testing.assert_close(compiled[0][step], expected[0][step], **tolerance)
        torch.testing.assert_close(compiled[1][step], expected[1][step], **tolerance)
    torch.testing.assert_close(compiled[2], expected[2], **tolerance)
    assert compiled[2].keys() == dict(eager_model.named_parameters()).keys()  # compiled in place: the same names


def test_compiled_modules_run_eagerly_inside_eager():
    torch.manual_seed(0)
    model = compile_for_training(models.build_model("cnn", 1, 2), "aot_eager")
    images = torch.randn(4, 1, 28, 28)
    expected = model(pixel_values=images).logits  # compiled in train mode
    before = graphs_compiled()
    with eager():
        model.eval()  # a mode, grad mode and batch size the compiled graph has not seen: it would recompile
        with torch.no_grad():
            model(pixel_values=images[:3])
        model.train()
        torch.testing.assert_close(model(pixel_values=images).logits, expected, rtol=1e-5, atol=1e-6)
    assert graphs_compiled() == before


def fake_accelerator(backend: str, mode: str = "default"):
    from accelerate.utils import TorchDynamoPlugin

    return SimpleNamespace(state=SimpleNamespace(dynamo_plugin=TorchDynamoPlugin(backend=backend, mode=mode)),
                           is_main_process=True)


def test_accelerates_dynamo_setting_is_taken_over_not_compiled_twice():
    from accelerate.utils import DynamoBackend

    # Launched with accelerate's dynamo setting and no --torch_compile: train.py compiles, as --torch_compile would.
    args = SimpleNamespace(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
    accelerator = fake_accelerator("inductor", "reduce-overhead")
    assert compile_settings(args, accelerator) == ("inductor", "reduce-overhead")
    assert args.torch_compile and accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    # With --torch_compile too: its own settings, and accelerate's compile still switched off.
    args = SimpleNamespace(torch_compile=True, torch_compile_backend="aot_eager", torch_compile_mode=None)
    accelerator = fake_accelerator("inductor")
    assert compile_settings(args, accelerator) == ("aot_eager", None)
    assert accelerator.state.dynamo_plugin.backend == DynamoBackend.NO
    # Neither: an eager run.
    args = SimpleNamespace(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
    assert compile_settings(args, fake_accelerator("no")) is None and not args.torch_compile


def test_a_real_accelerator_with_dynamo_prepares_the_module_itself():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    try:
        accelerator = Accelerator(cpu=True, dynamo_backend="inductor")
        args = SimpleNamespace(torch_compile=False, torch_compile_backend=None, torch_compile_mode=None)
        compile_settings(args, accelerator)
        model = models.build_model("cnn", 1, 2)
        prepared = accelerator.prepare(model)
        assert prepared is model  # not a torch.compile wrapper, whose state dict keys start with _orig_mod.
        assert not any("_orig_mod" in key for key in accelerator.get_state_dict(prepared))
    finally:
        AcceleratorState._reset_state(True)


def test_bad_compile_arguments_are_refused(capsys):
    import train

    for argv, message in ((["--torch_compile_mode", "reduce-overhead"], "without --torch_compile"),
                          (["--torch_compile_backend", "inductor"], "without --torch_compile"),
                          (["--torch_compile", "--torch_compile_backend", "nope"], "expected e.g."),
                          (["--torch_compile", "--torch_compile_mode", "fastest"], "invalid choice")):
        with pytest.raises(SystemExit) as exit_info:
            train.parse_args(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    args = train.parse_args(["--torch_compile"])
    assert (args.torch_compile_backend, args.torch_compile_mode) == ("inductor", None)  # recorded as resolved


def test_resuming_may_switch_compiling_but_not_dropping_the_last_batch(tmp_path):
    import train

    args = train.parse_args(["--output_dir", str(tmp_path)])
    recorded = vars(args).copy()
    write_run_config(tmp_path, recorded)
    compiled = {**recorded, "torch_compile": True, "torch_compile_backend": "inductor",
                "torch_compile_mode": "reduce-overhead"}
    check_output_dir(tmp_path, compiled, resume=True, overwrite=False)  # an eager run's checkpoint resumes compiled
    with pytest.raises(ValueError, match="--dataloader_drop_last False there, True here"):
        check_output_dir(tmp_path, {**compiled, "dataloader_drop_last": True}, resume=True, overwrite=False)


def test_dataloader_drop_last_drops_the_incomplete_batch(data_dir, tmp_path):
    # 96 training images in batches of 40: two full batches and one of 16, which is dropped.
    run = train_tiny_vit(data_dir, tmp_path / "run", "--dataloader_drop_last", epochs=2, batch_size=40)
    results = json.loads((run / "all_results.json").read_text())
    assert [entry["step"] for entry in results["validation_history"]] == [2, 4]
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]
    assert results["config"]["dataloader_drop_last"] is True


def test_a_batch_larger_than_the_data_with_drop_last_is_refused_before_anything_is_written(data_dir, tmp_path, capsys):
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--model", "cnn", "--dataset", "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum",
                    "--output_dir", str(tmp_path / "run"), "--per_device_train_batch_size", "128",
                    "--dataloader_drop_last", "--report_to", "none"])
    assert exit_info.value.code == 2
    assert "--per_device_train_batch_size 128 with --dataloader_drop_last" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def compiled_run(data_dir, output_dir, *extra):
    """A 2-epoch tiny `vit_lsa` run compiled with inductor; its log, with TorchDynamo's (every graph it compiles), in
    `<output_dir>.log` beside the run folder."""
    return train_tiny_vit(data_dir, output_dir, "--torch_compile", *extra, epochs=2, env={"TORCH_LOGS": "dynamo"},
                          stderr_log=output_dir.with_name(output_dir.name + ".log"))


@pytest.fixture(scope="module")
def straight_compiled_run(data_dir, tmp_path_factory):
    return compiled_run(data_dir, tmp_path_factory.mktemp("compiled") / "run")


@pytest.mark.slow  # compiles with inductor: about a minute on a 2-core CPU the first time
def test_a_compiled_run_saves_clean_weights_and_compiles_the_training_step_only(straight_compiled_run):
    from transformers import AutoModelForImageClassification

    run = straight_compiled_run
    log = run.with_name(run.name + ".log").read_text()
    assert "calling compiler function inductor" in log  # compiled...
    assert "[0/0]" in log and "[0/1]" not in log  # ...once: one batch shape, validation eager (no recompilation)
    for path in run.rglob("*.safetensors"):  # best/, last/ and the checkpoints' model and best weights
        assert not any("_orig_mod" in key for key in load_file(path)), path
    model = AutoModelForImageClassification.from_pretrained(run / "best")
    saved = load_file(run / "best" / "model.safetensors")
    assert all(torch.equal(model.state_dict()[key], saved[key]) for key in saved)
    results = json.loads((run / "all_results.json").read_text())
    assert results["config"]["torch_compile"] and results["config"]["torch_compile_backend"] == "inductor"
    assert results["hardware"]["torch_compile"] == "inductor" and "compiled" in results["hardware"]["description"]


@pytest.mark.slow
def test_a_compiled_run_resumes_exactly(straight_compiled_run, data_dir, tmp_path):
    # Stopped after its first epoch's checkpoint, then resumed compiled: the same kernels on the same inputs, so the
    # same weights to the bit (CPU, one thread).
    resumed = copy_stopped_after_first_epoch(straight_compiled_run, tmp_path / "resumed")
    compiled_run(data_dir, resumed, "--resume_from_checkpoint", "latest")
    straight, again = (json.loads((run / "all_results.json").read_text())
                       for run in (straight_compiled_run, resumed))
    assert again["validation_history"] == straight["validation_history"]
    for folder in ("best", "last"):
        a, b = (load_file(run / folder / "model.safetensors") for run in (straight_compiled_run, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
