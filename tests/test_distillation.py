"""Distillation from a trained teacher (training/distillation.py, train.py --teacher_model_name_or_path)."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import data
import models
from tiny_runs import train_tiny_vit
from training.methods.distillation import Teacher, TeacherEnsemble, distillation_loss
from training.hub import model_card


@pytest.fixture(scope="module")
def info(data_dir):
    return data.medmnist_info(data.load_medmnist("breastmnist", data_dir=data_dir, verify_checksum=False))


def save_teacher(folder: Path, num_labels: int, label_names, mean=(0.3,), std=(0.2,), seed=0) -> Path:
    """An (untrained) CNN saved as a training run's `best/` folder: model, config and image processor."""
    torch.manual_seed(seed)
    model = models.build_model("cnn", 1, num_labels, label_names=label_names, image_size=28)
    model.save_pretrained(folder)
    models.build_image_processor(28, mean, std).save_pretrained(folder)
    return folder


def test_teacher_sees_the_batch_normalised_with_its_own_statistics(tmp_path, info):
    teacher = Teacher(str(save_teacher(tmp_path / "teacher", 2, info.label_names)), info)
    teacher.adapt_inputs([0.5], [0.25], torch.device("cpu"))
    images = torch.rand(6, 1, 28, 28)
    student_inputs = (images - 0.5) / 0.25
    expected = teacher.model(pixel_values=(images - 0.3) / 0.2).logits
    torch.testing.assert_close(teacher(student_inputs), expected, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_an_ensemble_of_teachers_gives_the_mean_of_their_logits(tmp_path, info):
    first = str(save_teacher(tmp_path / "first", 2, info.label_names, seed=1))
    second = str(save_teacher(tmp_path / "second", 2, info.label_names, mean=(0.6,), std=(0.3,), seed=2))
    student_inputs = torch.randn(6, 1, 28, 28)
    cpu = torch.device("cpu")
    members = [Teacher(path, info).adapt_inputs([0.5], [0.25], cpu) for path in (first, second)]
    ensemble = TeacherEnsemble([first, second], info).adapt_inputs([0.5], [0.25], cpu)
    expected = (members[0](student_inputs) + members[1](student_inputs)) / 2
    assert not torch.allclose(members[0](student_inputs), members[1](student_inputs))
    torch.testing.assert_close(ensemble(student_inputs), expected)
    alone = TeacherEnsemble([first], info).adapt_inputs([0.5], [0.25], cpu)
    torch.testing.assert_close(alone(student_inputs), members[0](student_inputs))
    with pytest.raises(ValueError, match="at least one"):
        TeacherEnsemble([], info)


def test_hard_distillation_is_cross_entropy_on_the_teachers_class():
    student, teacher = torch.randn(8, 3), torch.randn(8, 3)
    assert distillation_loss(student, teacher, "hard", 1.0, False) == pytest.approx(
        F.cross_entropy(student, teacher.argmax(-1)).item())
    multilabel = distillation_loss(student, teacher, "hard", 1.0, True)
    assert multilabel == pytest.approx(F.binary_cross_entropy_with_logits(student, (teacher > 0).float()).item())


def test_soft_distillation_vanishes_only_when_the_student_matches_the_teacher():
    teacher = torch.randn(8, 3)
    same = teacher.clone().requires_grad_()
    loss = distillation_loss(same, teacher, "soft", 2.0, False)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert same.grad.abs().max() < 1e-6
    other = torch.randn(8, 3)
    # T² · KL(softmax(t / T) ‖ softmax(s / T)), written out.
    p = F.softmax(teacher / 2, dim=-1)
    expected = 4 * (p * (p.log() - F.log_softmax(other / 2, dim=-1))).sum(-1).mean()
    assert distillation_loss(other, teacher, "soft", 2.0, False).item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_teacher_for_another_data_set_is_refused_before_anything_is_written(tmp_path, data_dir, capsys):
    import train

    teacher = save_teacher(tmp_path / "blood_teacher", 8, [f"cell {i}" for i in range(8)])
    output_dir = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--model", "vit", "--dataset", "breastmnist", "--data_dir", str(data_dir), "--no_verify_checksum",
                    "--output_dir", str(output_dir), "--teacher_model_name_or_path", str(teacher)])
    output = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "The teacher" in output.out + output.err and "predicts 8 labels" in output.out + output.err
    assert not output_dir.exists()


def train_and_load(data_dir, output_dir, *extra):
    """The tiny run's last weights and its all_results.json."""
    run = train_tiny_vit(data_dir, output_dir, *extra, epochs=2, batch_size=16)
    return load_file(run / "last" / "model.safetensors"), json.loads((run / "all_results.json").read_text())


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_the_teachers_predictions_enter_the_loss_with_weight_alpha(tmp_path, data_dir, info):
    teacher = str(save_teacher(tmp_path / "teacher", 2, info.label_names, seed=1))
    plain, _ = train_and_load(data_dir, tmp_path / "plain")
    alpha0, _ = train_and_load(data_dir, tmp_path / "alpha0", "--teacher_model_name_or_path", teacher,
                               "--distillation_alpha", "0")
    distilled, results = train_and_load(data_dir, tmp_path / "distilled", "--teacher_model_name_or_path", teacher,
                                        "--distillation_alpha", "1", "--distillation_type", "soft")
    # alpha 0: the teacher runs but the weights are exactly those of a run without it (same seed, same batches).
    assert all(torch.equal(plain[k], alpha0[k]) for k in plain)
    assert any(not torch.equal(plain[k], distilled[k]) for k in plain)
    assert results["teacher"] == teacher and results["config"]["distillation_alpha"] == 1.0
    assert f"Distilled from the teacher `{teacher}`" in model_card(results)


@pytest.mark.slow  # minutes of real runs; `python -m pytest -m slow`
def test_several_teachers_teach_as_one_and_are_all_recorded(tmp_path, data_dir, info):
    first = str(save_teacher(tmp_path / "first", 2, info.label_names, seed=1))
    second = str(save_teacher(tmp_path / "second", 2, info.label_names, seed=2))
    soft = ("--distillation_alpha", "1", "--distillation_type", "soft")
    one, _ = train_and_load(data_dir, tmp_path / "one", "--teacher_model_name_or_path", first, *soft)
    both, results = train_and_load(data_dir, tmp_path / "both", "--teacher_model_name_or_path", first, second, *soft)
    assert any(not torch.equal(one[k], both[k]) for k in one)  # the second teacher changed what was learnt
    assert results["teacher"] == [first, second]
    assert results["config"]["teacher_model_name_or_path"] == [first, second]
    assert f"the teachers `{first}`, `{second}`" in model_card(results)
