"""Exercise 2.2 (2024): the distillation loss, the frozen teacher, and the pairing with the baseline."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import ex1_cnn
import ex2_distill
import training
from data import Dataset, Split
from conftest import ROOT, assert_resumes_to_the_uninterrupted_run, cifar_images
from ex2_distill import Distillation, distillation_loss
from models import CifarResNet


def test_the_loss_is_its_formula_by_hand():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    temperature, alpha = 2.0, 0.7
    ps = [math.exp(v / temperature) for v in (2.0, 0.0, -1.0)]
    pt = [math.exp(v / temperature) for v in (1.0, 1.0, 0.0)]
    ps, pt = [p / sum(ps) for p in ps], [p / sum(pt) for p in pt]
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(math.exp(2.0) / (math.exp(2.0) + 1 + math.exp(-1.0)))
    expected = (1 - alpha) * ce + alpha * temperature ** 2 * kl
    assert distillation_loss(s, t, y, temperature, alpha).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_cross_entropy_and_needs_no_teacher():
    s, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    assert torch.equal(distillation_loss(s, None, y, 4.0, 0.0), F.cross_entropy(s, y))


def test_t_squared_keeps_the_soft_terms_gradient_scale():
    """The soft term's gradient shrinks as 1/T^2; times T^2 it stays the same as T grows."""
    torch.manual_seed(0)
    t = torch.randn(8, 10)
    norms = []
    for temperature in (8.0, 16.0, 32.0):
        s = torch.randn(8, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
        loss = distillation_loss(s, t, torch.zeros(8, dtype=torch.long), temperature, 1.0)
        loss.backward()
        norms.append(s.grad.norm().item())
    assert norms[0] == pytest.approx(norms[1], rel=0.05) == pytest.approx(norms[2], rel=0.05)


def tiny_data(n_train=24, n_val=8, n_test=8):
    x, y = cifar_images(n_train + n_val + n_test, seed=3)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(y).long()
    a, b = n_train, n_train + n_val
    return Dataset(Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]), "synthetic",
                   tuple(str(c) for c in range(10)))


def test_the_teacher_is_never_updated_and_stays_in_eval_mode():
    torch.manual_seed(0)
    teacher, student = CifarResNet(1, width=4), CifarResNet(1, width=4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    criterion = Distillation(teacher, 2.0, 0.9)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    data = tiny_data()
    x = data.train.x.float() / 255
    training.train_one_epoch(student, [(x[:12], data.train.y[:12]), (x[12:], data.train.y[12:])], optimizer,
                             criterion=criterion)
    assert not teacher.training and student.training
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in teacher.parameters())
    metrics = criterion.epoch_metrics()
    assert metrics["teacher_seconds"] > 0 and metrics["train_ce"] > 0


def tiny_config():
    baseline, _ = ex2_distill.published_cnn_run(True, ex2_distill.STUDENT_BLOCKS, 0)
    _, teacher = ex2_distill.published_cnn_run(**ex2_distill.TEACHER_RUN)
    student = {**baseline["config"], "epochs": 2, "batch_size": 8, "width": 4, "blocks": 1}
    return ex2_distill.run_config(student, teacher, 2.0, 0.9), student


def first_batch_and_init(train, config, data, tmp_path, monkeypatch):
    """The model's weights and the first batch a run trains on; the run is stopped there."""
    seen = {}

    def stop(model, batches, *args, **kwargs):
        seen["init"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["x"], seen["y"] = next(iter(batches))
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "train_one_epoch", stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, data, torch.device("cpu"), str(tmp_path), progress=False)
    monkeypatch.undo()
    return seen


def test_a_distilled_run_starts_from_its_baselines_initialization_and_batches(tmp_path, monkeypatch):
    """Same seed, same recipe: the same initial weights, the same shuffled and augmented batch, so
    a distilled student and its published baseline differ only in the loss."""
    config, student = tiny_config()
    data = tiny_data()
    distilled = first_batch_and_init(ex2_distill.train, config, data, tmp_path / "kd", monkeypatch)
    alone = first_batch_and_init(ex1_cnn.train, student, data, tmp_path / "alone", monkeypatch)
    assert torch.equal(distilled["x"], alone["x"]) and torch.equal(distilled["y"], alone["y"])
    assert all(torch.equal(distilled["init"][k], v) for k, v in alone["init"].items())


def test_a_distillation_run_resumed_after_a_kill_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    config, _ = tiny_config()
    assert_resumes_to_the_uninterrupted_run(ex2_distill.train, config, tiny_data(), tmp_path, monkeypatch)


def test_plot_only_redraws_the_committed_tables_without_data(tmp_path):
    ex2_distill.main(ex2_distill.get_args(["--plot-only", "--fig-dir", str(tmp_path)]))
    for name in ("ex2_distill_select", "ex2_distill_table"):
        with open(os.path.join(ROOT, "figures", f"{name}.md")) as f:
            assert (tmp_path / f"{name}.md").read_text() == f.read()


def test_select_candidates_read_validation_only_and_the_short_study_is_paired():
    """--select's candidates are a selection (never the test set); --short pairs, per student and
    seed, a distilled run with the same student alone (alpha 0), identical otherwise."""
    import ex2_distill
    select = ex2_distill.select_configs(ex2_distill.get_args(["--select"]))
    assert select and all(c["selection"] is True for c in select)
    short = ex2_distill.short_configs(ex2_distill.get_args(["--short"]))
    assert len(short) == 2 * len(ex2_distill.SHORT_STUDENTS) * ex2_distill.SHORT_SEEDS
    for distilled, alone in zip(short[::2], short[1::2]):
        assert distilled["alpha"] > 0 and alone["alpha"] == 0 and "selection" not in distilled
        assert {k: v for k, v in distilled.items() if k != "alpha"} == {k: v for k, v in alone.items()
                                                                        if k != "alpha"}


def test_a_resume_with_another_teacher_is_refused_and_the_record_names_its_teacher():
    """A distilled run's meta holds its teacher's SHA-256; a resume under another teacher file
    (the published best.pt re-saved with other weights) would mix two teachers in one run."""
    import ex2_distill
    from lab.runs import resume_problem
    _, sha = ex2_distill.load_teacher(torch.device("cpu"))
    assert len(sha) == 64
    then = {"data": "d", "hardware": "h", "teacher_sha256": sha}
    assert resume_problem(then, dict(then)) is None
    problem = resume_problem(then, {**then, "teacher_sha256": "0" * 64})
    assert "its teacher is not the file it started with" in problem
    assert resume_problem({"data": "d", "hardware": "h"}, then) is None  # a start of older code


def test_a_distilled_student_is_set_against_the_student_alone_on_its_own_schedule(tmp_path):
    """A 2-epoch distillation is not compared with the 8-epoch published baseline: its pair is a
    run alone (alpha 0) on the same 2 epochs, and without one the table says so."""
    import glob
    import json
    args = ex2_distill.get_args(["--epochs", "2", "--seeds", "1"])
    config = ex2_distill.main_configs(args)[0]
    runs = tmp_path / "runs"
    committed = sorted(glob.glob(os.path.join(ROOT, "results", "ex2_distill", "kd-res_n5_*_e8_s0_*")))[0]
    record = json.loads(open(os.path.join(committed, "metrics.json")).read())

    def write(config, test_acc):
        folder = runs / ex2_distill.run_name(config)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({**record, "config": config, "test_acc": test_acc}))

    write(config, 0.5)
    students = {"residual": ex2_distill.runs.collect([config], [str(runs)], ex2_distill.run_name)}
    table = ex2_distill.main_table(students, [config], [str(runs)])
    assert "no run of the student alone on this schedule" in table
    alone_row = next(line for line in table.splitlines() if line.startswith("| residual-32 alone"))
    assert "| - | - |" in alone_row  # not the published 8-epoch run's numbers
    write({**config, "alpha": 0.0}, 0.25)
    table = ex2_distill.main_table(students, [config], [str(runs)])
    assert "no run of the student alone" not in table and "+0.250" in table
