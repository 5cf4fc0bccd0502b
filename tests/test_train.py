"""train.py: short real runs on synthetic data (files, TensorBoard, resume, 2 processes, 2 machines, Hub, errors)."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import data
import models
from data.synthetic import write_synthetic_npz
from metric_comparison import assert_same
from models.integrity import write_manifest
from training.arguments import augmentation_config, parse_config_overrides

ROOT = Path(__file__).resolve().parents[1]
SECRET = "hf_secretTOKEN0123456789"
# A small, fast configuration: dropout off so that runs on different process counts can agree.
TINY_VIT = ("image_size=28,patch_size=7,hidden_size=16,num_hidden_layers=1,num_attention_heads=2,attention_head_dim=8,"
            "intermediate_size=32,head_hidden_sizes=[32],hidden_dropout_prob=0,attention_probs_dropout_prob=0,"
            "head_dropout_prob=0,drop_path_rate=0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(data_dir, output_dir, *extra):
    return ["--dataset", "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum", "--output_dir",
            str(output_dir), "--per_device_eval_batch_size", "16", *extra]


def run(command, env=None, timeout=600, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{command}\nSTDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-5000:]}"
    return result


def python_train(*args, **kwargs):
    return run([sys.executable, "train.py", *args], **kwargs)


def accelerate_train(launch_args, *args, **kwargs):
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, "train.py", *args]
    return run(command, env={"ACCELERATE_USE_CPU": "1", **kwargs.pop("env", {})}, **kwargs)


def read_results(output_dir) -> dict:
    return json.loads((Path(output_dir) / "all_results.json").read_text())


@pytest.fixture(scope="module")
def short_run(data_dir, tmp_path_factory):
    """One real 3-epoch run of the CNN, kept for several tests to inspect."""
    output_dir = tmp_path_factory.mktemp("run") / "cnn"
    result = python_train(*train_args(data_dir, output_dir, "--model", "cnn", "--num_train_epochs", "3",
                                      "--per_device_train_batch_size", "16", "--logging_steps", "2",
                                      "--checkpoints_total_limit", "5", "--augmentation", "seed"))
    return output_dir, result


def test_short_run_writes_models_results_and_checkpoints(short_run):
    output_dir, _ = short_run
    for folder in ("best", "last"):
        files = set(os.listdir(output_dir / folder))
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_cnn.py"} <= files
    results = read_results(output_dir)
    assert results["best_epoch"] in (1, 2, 3)
    assert len(results["validation_history"]) == 3
    for key in ("acc", "auc", "acc_ci95", "auc_ci95"):
        assert results["test_metrics"][key] is not None
    assert results["config"]["model"] == "cnn" and results["config"]["num_train_epochs"] == 3
    assert results["hardware"]["num_processes"] == 1
    assert results["wall_clock_seconds"] > 0
    checkpoints = sorted(p.name for p in (output_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_12", "step_18", "step_6"], checkpoints  # 96 / 16 = 6 updates per epoch
    # The synthetic images carry their label: three epochs must beat chance clearly.
    assert results["test_metrics"]["auc"] > 0.8


def test_best_model_loads_with_from_pretrained_and_pipeline(short_run):
    output_dir, _ = short_run
    from transformers import AutoModelForImageClassification, pipeline
    import numpy as np
    from PIL import Image

    model = AutoModelForImageClassification.from_pretrained(output_dir / "best", trust_remote_code=True)
    assert model.config.id2label == {0: "malignant", 1: "normal, benign"}
    classify = pipeline("image-classification", model=str(output_dir / "best"), trust_remote_code=True)
    predictions = classify(Image.fromarray(np.zeros((28, 28), dtype=np.uint8)))
    assert {p["label"] for p in predictions} == {"malignant", "normal, benign"}


def test_evaluate_py_on_best_reproduces_the_runs_test_metrics(short_run, data_dir):
    output_dir, _ = short_run
    run([sys.executable, "evaluate.py", "--model_name_or_path", str(output_dir / "best"), "--dataset", "breastmnist",
         "--data_dir", str(data_dir), "--no_verify_checksum", "--seed", "42"])
    evaluated = json.loads((output_dir / "best-eval-test" / "metrics.json").read_text())["metrics"]
    assert_same(evaluated, read_results(output_dir)["test_metrics"])


def read_log_folder(log_dir):
    """A run's TensorBoard log folder read back: its `EventAccumulator` (every event file in it)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def hparams_dashboard(logdir) -> dict:
    """What TensorBoard's HParams dashboard shows for the runs under `logdir`: {run name: {metric: value}}, through the
    plugin's own backend."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    backend = backend_context.Context(base_plugin.TBContext(
        logdir=str(logdir), multiplexer=multiplexer,
        data_provider=data_provider.MultiplexerDataProvider(multiplexer, str(logdir))))
    request = api_pb2.ListSessionGroupsRequest(allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_RUNNING,
                                                                 api_pb2.STATUS_UNKNOWN],
                                               start_index=0, slice_size=100, include_metrics=True)
    groups = list_session_groups.Handler(context.RequestContext(), backend, "", request).run().session_groups
    return {group.name: {m.name.tag: m.value for m in group.metric_values} for group in groups}


def test_tensorboard_scalars_images_and_hparams_read_back(short_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from training.tracking import HPARAM_METRICS

    output_dir, _ = short_run
    event_files = list((output_dir / "runs").rglob("events.out.tfevents.*"))
    assert event_files, "no TensorBoard event file"
    tags = {"scalars": set(), "images": set(), "tensors": set()}
    values = {}
    for event_file in event_files:
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        accumulator.Reload()
        for kind in tags:
            tags[kind] |= set(accumulator.Tags()[kind])
        for tag in accumulator.Tags()["scalars"]:
            values[tag] = [e.value for e in accumulator.Scalars(tag)]
    for tag in ("train/loss", "train/learning_rate", "train/images_per_second", "validation/acc", "validation/auc"):
        assert tag in tags["scalars"], f"{tag} missing from {sorted(tags['scalars'])}"
    assert len(values["validation/auc"]) == 3
    assert all(v > 0 for v in values["train/images_per_second"])
    assert {"train/augmented_samples", "validation/confusion_matrix"} <= tags["images"], tags["images"]
    # --logging_steps 2, 6 updates an epoch: a log every 2 updates, none twice for a step at an epoch's end.
    log = read_log_folder(output_dir / "runs" / output_dir.name)
    assert [event.step for event in log.Scalars("train/loss")] == list(range(2, 19, 2))

    # The hyperparameters, in the run's own log folder, are linked to the run's final metrics: all_results.json's.
    results = read_results(output_dir)
    assert {path.parent for path in event_files} == {output_dir / "runs" / output_dir.name}  # no other HParams record
    hparams = log.PluginTagToContent("hparams")
    experiment = hparams_metadata.parse_experiment_plugin_data(hparams[hparams_metadata.EXPERIMENT_TAG])
    assert [metric.name.tag for metric in experiment.metric_infos] == list(HPARAM_METRICS)
    start = hparams_metadata.parse_session_start_info_plugin_data(hparams[hparams_metadata.SESSION_START_INFO_TAG])
    assert start.hparams["learning_rate"].number_value == pytest.approx(results["config"]["learning_rate"])
    assert start.hparams["num_train_epochs"].number_value == 3
    assert start.hparams["lr_scheduler_type"].string_value == results["config"]["lr_scheduler_type"]
    end = hparams_metadata.parse_session_end_info_plugin_data(hparams[hparams_metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.STATUS_SUCCESS
    validation, test = results["validation_metrics"], results["test_metrics"]
    expected = {"hparam/validation_acc": validation["acc"], "hparam/validation_auc": validation["auc"],
                "hparam/test_acc": test["acc"], "hparam/test_auc": test["auc"],
                "hparam/best_epoch": results["best_epoch"]}
    assert {tag: log.Scalars(tag)[-1].value for tag in HPARAM_METRICS} == pytest.approx(expected, rel=1e-6)
    assert hparams_dashboard(output_dir / "runs") == {output_dir.name: pytest.approx(expected, rel=1e-6)}


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_every_epoch_logs_its_training_loss_however_few_updates_it_has(data_dir, tmp_path):
    output_dir = tmp_path / "sparse"
    python_train(*train_args(data_dir, output_dir, "--model", "cnn", "--num_train_epochs", "2",
                             "--per_device_train_batch_size", "16", "--logging_steps", "1000", "--skip_test"))
    log = read_log_folder(output_dir / "runs" / output_dir.name)
    assert [event.step for event in log.Scalars("train/loss")] == [6, 12]  # 6 updates an epoch, each epoch's last
    # Without the test split the dashboard gets the validation figures only.
    assert set(hparams_dashboard(output_dir / "runs")[output_dir.name]) == {
        "hparam/validation_acc", "hparam/validation_auc", "hparam/best_epoch"}


def test_resume_from_an_epoch_checkpoint_ends_exactly_like_the_straight_run(short_run, data_dir, tmp_path):
    output_dir, _ = short_run
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(output_dir, resumed_dir)
    # Pretend the run stopped after epoch 1: only its checkpoint survives.
    for name in ("step_12", "step_18"):
        shutil.rmtree(resumed_dir / "checkpoints" / name)
    for name in ("best", "last", "all_results.json"):
        path = resumed_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    # The wall-clock so far travels in the checkpoint: say the first epoch took 1000 s.
    state_file = resumed_dir / "checkpoints" / "step_6" / "trainer_state.json"
    assert json.loads(state_file.read_text())["wall_clock_seconds"] > 0
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "wall_clock_seconds": 1000.0}))
    write_manifest(state_file.parent)  # edited on purpose: its checksums follow
    python_train(*train_args(data_dir, resumed_dir, "--model", "cnn", "--num_train_epochs", "3",
                             "--per_device_train_batch_size", "16", "--logging_steps", "2", "--checkpoints_total_limit",
                             "5", "--augmentation", "seed", "--resume_from_checkpoint", "latest"))
    straight, resumed = read_results(output_dir), read_results(resumed_dir)
    assert resumed["validation_history"] == straight["validation_history"]
    assert resumed["test_metrics"] == straight["test_metrics"]
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert 1000 < resumed["wall_clock_seconds"] < 1000 + 600  # 1000 s carried, plus this short run's own


TWO_PROCESS_MODELS = {
    "vit": ("--model", "vit", "--config_overrides", TINY_VIT),
    # BatchNorm: synchronised over the processes. SGD, as Adam turns the float noise in the gradients of the conv
    # biases before BatchNorm (0 in exact arithmetic) into steps of the learning rate's size.
    "cnn": ("--model", "cnn", "--config_overrides", "conv_channels=[8,8,8,8,8],fc_hidden_sizes=[16]", "--optimizer",
            "sgd", "--learning_rate", "0.1"),
}


@pytest.fixture(scope="module")
def odd_data_dir(tmp_path_factory):
    """Synthetic BreastMNIST with 95 training images: no global batch size of 2 processes divides it."""
    directory = tmp_path_factory.mktemp("odd")
    write_synthetic_npz(directory, "breastmnist", n_train=95, n_val=40, n_test=44, seed=0)
    return directory


# The CNN's synchronised BatchNorm is also tested by tests/test_batch_norm.py (default suite).
@pytest.mark.parametrize("model", ["vit", pytest.param("cnn", marks=pytest.mark.slow)])
def test_two_processes_match_one_process_with_augmentation_and_a_short_last_batch(model, odd_data_dir, tmp_path):
    """Same global batches (95 images: 40 + 40 + 15, the last one cut 8 + 7 and each part's loss weighted by its
    share), identically augmented images: 1 and 2 processes agree up to the order of float sums."""
    data_dir = odd_data_dir
    common = (*TWO_PROCESS_MODELS[model], "--augmentation", "seed", "--num_train_epochs", "2", "--label_smoothing", "0",
              "--warmup_epochs", "0", "--checkpointing_steps", "1000", "--report_to", "none")
    accelerate_train(["--num_processes", "1"], *train_args(data_dir, tmp_path / "one", *common,
                                                           "--per_device_train_batch_size", "40"))
    accelerate_train(["--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port",
                      str(free_port())],
                     *train_args(data_dir, tmp_path / "two", *common, "--per_device_train_batch_size", "20"))
    one, two = read_results(tmp_path / "one"), read_results(tmp_path / "two")
    assert two["hardware"]["num_processes"] == 2
    assert one["global_step"] == two["global_step"] == 6
    for a, b in zip(one["validation_history"], two["validation_history"], strict=True):
        for key in ("acc", "auc", "loss"):
            assert abs(a["metrics"][key] - b["metrics"][key]) < 1e-3, (key, a["metrics"][key], b["metrics"][key])
    weights = [load_file(tmp_path / run / "last" / "model.safetensors") for run in ("one", "two")]
    for name, tensor in weights[0].items():
        assert torch.allclose(tensor.float(), weights[1][name].float(), atol=1e-4), name


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_each_process_draws_its_own_dropout_masks(data_dir, tmp_path):
    """Dropout and stochastic depth come from each process's own random stream (seed + process index): the saved
    random states of the two processes differ, and a rerun saves the same ones."""
    from accelerate.utils import load

    states = []
    for name in ("run", "again"):
        accelerate_train(["--config_file", str(ROOT / "accelerate_configs" / "cpu_2proc.yaml"), "--main_process_port",
                          str(free_port())],
                         *train_args(data_dir, tmp_path / name, "--model", "vit", "--config_overrides", TINY_VIT,
                                     "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
                                     "--report_to", "none"))
        checkpoint = tmp_path / name / "checkpoints" / "step_3"
        states.append([load(checkpoint / f"random_states_{rank}.pkl", map_location="cpu") for rank in (0, 1)])
    assert not torch.equal(states[0][0]["torch_manual_seed"], states[0][1]["torch_manual_seed"])
    for rank in (0, 1):
        assert torch.equal(states[0][rank]["torch_manual_seed"], states[1][rank]["torch_manual_seed"])


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_two_machines_on_localhost_train_together(data_dir, tmp_path):
    port = str(free_port())
    common = ("--model", "cnn", "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--report_to", "none")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "ACCELERATE_USE_CPU": "1"}
    machines = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                   "--main_process_port", port, "train.py",
                   *train_args(data_dir, tmp_path / "run", *common)]
        machines.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    outputs = [m.communicate(timeout=600) for m in machines]
    for machine, (stdout, stderr) in zip(machines, outputs):
        assert machine.returncode == 0, stderr[-5000:]
    results = read_results(tmp_path / "run")
    assert results["hardware"]["num_processes"] == 2
    assert results["global_step"] == 3  # 96 samples / (16 × 2 processes)


def test_push_to_hub_uploads_a_loadable_model_card_and_logs(local_hub, data_dir, tmp_path):
    output_dir = tmp_path / "pushed"
    result = python_train(*train_args(data_dir, output_dir, "--model", "cnn", "--num_train_epochs", "2",
                                      "--per_device_train_batch_size", "32", "--push_to_hub", "--hub_model_id",
                                      "medmnist/cnn-breast", "--hub_token", SECRET),
                          env={"HF_HUB_OFFLINE": "0"})
    files = local_hub.repos["medmnist/cnn-breast"]
    assert {"config.json", "model.safetensors", "modeling_cnn.py", "configuration_cnn.py", "README.md",
            "preprocessor_config.json", "all_results.json"} <= set(files)
    assert any(path.startswith("runs/") and "tfevents" in path for path in files)
    card = files["README.md"].decode()
    assert "| test |" in card and "breastmnist" in card and "cc-by-4.0" in card and "--hub_token ***" in card
    assert len(local_hub.commits) >= 2  # one push per epoch checkpoint (background) and the final one
    # Rebuild the repository from what was committed and load it.
    rebuilt = tmp_path / "rebuilt"
    for path, content in files.items():
        (rebuilt / path).parent.mkdir(parents=True, exist_ok=True)
        (rebuilt / path).write_bytes(content)
    from transformers import AutoModelForImageClassification

    pushed = AutoModelForImageClassification.from_pretrained(rebuilt, trust_remote_code=True).eval()
    local = AutoModelForImageClassification.from_pretrained(output_dir / "best", trust_remote_code=True).eval()
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(pushed(x).logits, local(x).logits, rtol=0, atol=0)
    # The token travels only in the Authorization header: never in the repo, the logs or the run's files.
    assert SECRET in local_hub.tokens
    assert all(SECRET.encode() not in content for content in files.values())
    assert SECRET not in result.stdout + result.stderr
    for path in output_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def train_in_process(argv, capsys) -> tuple[int, str]:
    """Run train.main in this process (fast: no new interpreter) and return its exit code and output."""
    import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--dataset", "nosuchmnist"], "nosuchmnist"),
        (["--dataset", "bloodmnist"], "bloodmnist.npz"),
        (["--model", "vit", "--config_overrides", "patch_size=5"], "does not divide"),
        (["--model", "cnn", "--config_overrides", "depth=3"], "Unknown config override(s) ['depth']"),
        (["--model", "cnn", "--translate", "1.5"], "translate must be in [0, 1], got 1.5"),
        (["--model", "cnn", "--zoom", "1"], "zoom must be in [0, 1), got 1.0"),
        (["--model", "cnn", "--rotation_degrees", "-5"], "rotation_degrees must be >= 0, got -5.0"),
        (["--model", "cnn", "--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1"),
        (["--model", "cnn", "--per_device_eval_batch_size", "-1"], "--per_device_eval_batch_size must be at least 1"),
        (["--model", "cnn", "--num_train_epochs", "0"], "--num_train_epochs must be at least 1, got 0"),
        (["--model", "cnn", "--num_train_epochs", "-1"], "--num_train_epochs must be at least 1, got -1"),
        (["--model", "cnn", "--max_train_steps", "0"], "--max_train_steps must be at least 1"),
        (["--model", "cnn", "--logging_steps", "0"], "--logging_steps must be at least 1"),
        (["--model", "cnn", "--checkpointing_steps", "0"], "--checkpointing_steps must be a number of steps (>= 1)"),
        (["--model", "cnn", "--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1"),
    ],
)
def test_bad_arguments_fail_before_writing_anything(data_dir, tmp_path, capsys, args, message):
    output_dir = tmp_path / "never"
    code, output = train_in_process(train_args(data_dir, output_dir, *args), capsys)
    assert code == 2
    assert message in output
    assert not output_dir.exists()


def test_resuming_a_checkpoint_of_another_model_is_refused(short_run, data_dir, tmp_path, capsys):
    output_dir, _ = short_run
    checkpoint = sorted((output_dir / "checkpoints").iterdir())[0]
    new_dir = tmp_path / "other"
    code, output = train_in_process(train_args(data_dir, new_dir, "--model", "vit", "--config_overrides", TINY_VIT,
                                               "--resume_from_checkpoint", str(checkpoint)), capsys)
    assert code == 2
    assert "was made by model 'cnn'" in output
    assert not new_dir.exists()


def test_non_finite_loss_stops_with_a_clear_message(data_dir, tmp_path):
    result = python_train(*train_args(data_dir, tmp_path / "nan", "--model", "cnn", "--num_train_epochs", "2",
                                      "--per_device_train_batch_size", "16", "--learning_rate", "1e30",
                                      "--optimizer", "sgd", "--max_grad_norm", "0", "--logging_steps", "1",
                                      "--report_to", "none"), check=False)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "non-finite" in result.stdout + result.stderr
    assert not (tmp_path / "nan" / "all_results.json").exists()


def test_skip_test_never_evaluates_the_test_split(short_run, data_dir, tmp_path):
    _, straight = short_run
    assert "Testing" in straight.stdout + straight.stderr  # what a normal run prints, and this one must not
    result = python_train(*train_args(data_dir, tmp_path / "search", "--model", "cnn", "--num_train_epochs", "1",
                                      "--per_device_train_batch_size", "16", "--report_to", "none", "--skip_test"))
    results = read_results(tmp_path / "search")
    assert results["test_metrics"] is None
    assert 0 <= results["validation_metrics"]["acc"] <= 1
    assert "Testing" not in result.stdout + result.stderr


def test_default_recipe_trains_at_the_files_resolution_and_the_seed_recipe_at_72():
    import train

    args = train.parse_args(["--model", "vit_lsa", "--dataset", "breastmnist"])
    assert (args.config_overrides["image_size"], args.config_overrides["patch_size"]) == (28, 4)
    args = train.parse_args(["--model", "vit", "--image_size", "64", "--config_overrides", "patch_size=16"])
    assert (args.config_overrides["image_size"], args.config_overrides["patch_size"]) == (64, 16)  # the user's wins
    args = train.parse_args(["--model", "cnn", "--image_size", "64"])
    assert args.config_overrides["image_size"] == 64
    args = train.parse_args(["--model", "vit_lsa", "--recipe", "seed"])
    assert "image_size" not in args.config_overrides  # the model's own 72 px / patch 6: the seed's geometry
    assert models.build_config("vit_lsa", 1, 2, **args.config_overrides).image_size == 72
    # The convolutional tokenizer needs a power-of-2 patch: 224 / 8 = 28 is not, so the recipe picks 16, for
    # vit_conv_lsa and for any ViT the user gives the tokenizer.
    for model, extra in (("vit_conv_lsa", []), ("vit", ["--config_overrides", "use_convolutional_tokenizer=True"])):
        args = train.parse_args(["--model", model, "--image_size", "224", *extra])
        assert args.config_overrides["patch_size"] == 16
        assert models.build_config(model, 1, 2, **args.config_overrides).num_patches == 14 * 14
    assert train.parse_args(["--model", "vit", "--image_size", "224"]).config_overrides["patch_size"] == 28
    # vit_conv_lsa's default depth is 4 blocks (chosen by cross-validation), the other ViTs' 8; the seed recipe: 8
    assert train.parse_args(["--model", "vit_conv_lsa"]).config_overrides["num_hidden_layers"] == 4
    assert "num_hidden_layers" not in train.parse_args(["--model", "vit_lsa"]).config_overrides
    assert "num_hidden_layers" not in train.parse_args(["--model", "vit_conv_lsa", "--recipe", "seed"]).config_overrides


def test_config_overrides_are_typed_and_take_python_or_json_booleans():
    import train

    text = "use_convolutional_tokenizer=True,use_shifted_patch_tokenization=false,head_hidden_sizes=[256, 128]," \
           "drop_path_rate=0.1,pooling=mean,patch_size=4"
    assert parse_config_overrides(text) == dict(
        use_convolutional_tokenizer=True, use_shifted_patch_tokenization=False, head_hidden_sizes=[256, 128],
        drop_path_rate=0.1, pooling="mean", patch_size=4)
    with pytest.raises(ValueError, match="'pooling' is not key=value"):
        parse_config_overrides("patch_size=4,pooling")


def test_vertical_flip_is_off_unless_asked_and_can_be_turned_off_again():
    import train

    for dataset in ("breastmnist", "bloodmnist"):
        assert train.parse_args(["--model", "cnn", "--dataset", dataset]).vertical_flip is None  # the preset's: off
    assert train.parse_args(["--model", "vit", "--no-vertical_flip"]).vertical_flip is False
    augmentation = augmentation_config(train.parse_args(
        ["--model", "vit", "--dataset", "bloodmnist", "--vertical_flip", "--rotation_degrees", "180"]))
    assert (augmentation.vertical_flip, augmentation.horizontal_flip) == (True, True)  # on top of the preset's
    assert (augmentation.rotation_degrees, augmentation.zoom) == (180.0, 0.0)
    assert not augmentation_config(train.parse_args(["--model", "vit"])).vertical_flip


def test_a_data_sets_own_default_applies_to_that_data_set_only_and_yields_to_the_user(tmp_path):
    import train
    from training import recipes

    for model in ("vit_lsa", "vit", "cnn", "vit_conv_lsa"):
        breast = train.parse_args(["--model", model, "--dataset", "breastmnist"])
        assert (breast.augmentation, breast.zoom) == ("seed", None)  # the preset's zoom, 0.3
        blood = train.parse_args(["--model", model, "--dataset", "bloodmnist"])
        assert (blood.augmentation, blood.zoom) == ("seed", 0.0)  # BloodMNIST's own default: no zoom
        assert train.parse_args(["--model", model, "--dataset", "bloodmnist", "--zoom", "0.3"]).zoom == 0.3
        assert train.parse_args(["--model", model, "--dataset", "bloodmnist", "--recipe", "seed"]).zoom is None
        assert (breast.selection_metric, blood.selection_metric) == ("last", "auc")  # BreastMNIST keeps the last epoch
        assert train.parse_args(["--model", model, "--dataset", "breastmnist", "--selection_metric", "auc"]
                                ).selection_metric == "auc"
    # A recipe file of one's own: the default recipe with another BreastMNIST layer.
    layered = yaml.safe_load((recipes.RECIPES_DIR / "default.yaml").read_text())
    layered["datasets"]["breastmnist"] = {"augmentation": "shift", "repeated_augmentation": 3}
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump(layered))
    args = train.parse_args(["--model", "vit_lsa", "--dataset", "breastmnist", "--recipe", str(recipe)])
    assert (args.augmentation, args.repeated_augmentation) == ("shift", 3)
    assert train.parse_args(["--model", "vit_lsa", "--dataset", "bloodmnist", "--recipe", str(recipe)]
                            ).augmentation == "seed"
    assert train.parse_args(["--model", "vit_lsa", "--dataset", "breastmnist"]).augmentation == "seed"
    args = train.parse_args(["--model", "vit_lsa", "--dataset", "breastmnist", "--recipe", str(recipe),
                             "--augmentation", "strong"])
    assert (args.augmentation, args.repeated_augmentation) == ("strong", 3)
    shift = data.AugmentationConfig.preset("shift")
    assert shift == data.AugmentationConfig(translate=0.1) and shift.has_geometry and not shift.mixes


def test_tensorboard_logging_does_not_change_the_run(short_run, data_dir, tmp_path):
    # The augmented sample grid that TensorBoard shows draws random numbers: they must not come from the training's.
    output_dir, _ = short_run
    python_train(*train_args(data_dir, tmp_path / "quiet", "--model", "cnn", "--num_train_epochs", "3",
                             "--per_device_train_batch_size", "16", "--logging_steps", "2",
                             "--checkpoints_total_limit", "5", "--augmentation", "seed", "--report_to", "none"))
    logged, quiet = read_results(output_dir), read_results(tmp_path / "quiet")
    assert quiet["validation_history"] == logged["validation_history"]


def test_bloodmnist_vit_takes_the_geometry_its_validation_split_chose_at_28_px_only():
    # recipes/default.yaml, chosen_geometry: BloodMNIST's vit on a 14×14 grid at 28 px; every other case keeps the
    # native geometry, and the user's own override still wins.
    import train

    def overrides(*argv):
        return train.parse_args(["--model", *argv]).config_overrides

    blood = overrides("vit", "--dataset", "bloodmnist")
    assert (blood["patch_size"], blood["attention_head_dim"], blood["num_hidden_layers"]) == (2, 16, 4)
    assert (blood["hidden_size"], blood["intermediate_size"]) == (128, 256)
    assert blood["pooling"] == "mean"  # the recipe's other fields are kept
    for other in (overrides("vit", "--dataset", "breastmnist"), overrides("vit_lsa", "--dataset", "bloodmnist"),
                  overrides("vit", "--dataset", "bloodmnist", "--image_size", "64")):
        assert "attention_head_dim" not in other and "num_hidden_layers" not in other
        assert other["patch_size"] == {28: 4, 64: 8}[other["image_size"]]
    assert "attention_head_dim" not in overrides("vit", "--dataset", "bloodmnist", "--recipe", "seed")
    assert overrides("vit", "--dataset", "bloodmnist", "--config_overrides", "patch_size=4")["patch_size"] == 4
