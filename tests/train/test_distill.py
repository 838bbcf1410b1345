"""Distillation (D2F, SDTT) and the mask-rate curriculum: the noisy states, the targets, the loop."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import unmask
from unmask.config import TrainConfig
from unmask.data.batch import make_batch
from unmask.models.transformer import Transformer
from unmask.train.distill import (answer_blocks, d2f_loss, monotone_block_ratios, monotone_state, sdtt_loss,
                                  semi_ar_state, two_step_targets)
from unmask.data import get_task
from unmask.models.checkpoints import save_model
from unmask.tokenizers import CharTokenizer
from unmask.train.loop import build_model, curriculum_t_max, evaluate_loss, round_of, train
from unmask.train.recipes import get_recipe

from tests.conftest import MASK, random_model


def sequence_batch(prompt_lens=(3, 5), answer_lens=(10, 7)):
    rows = [list(range(10, 10 + p + a)) for p, a in zip(prompt_lens, answer_lens)]
    return make_batch(rows, list(prompt_lens), pad_id=0)


def as_student(teacher: Transformer, **config) -> Transformer:
    student = Transformer(dataclasses.replace(teacher.config, **config))
    student.load_state_dict(teacher.state_dict())
    return student


def test_answer_blocks_count_from_the_first_answer_token():
    batch = sequence_batch()
    block, n_blocks = answer_blocks(batch, 4)
    assert block[0].tolist()[:7] == [-1, -1, -1, 0, 0, 0, 0] and block[0, 12].item() == 2
    assert block[1].tolist()[:10] == [-1] * 5 + [0, 0, 0, 0, 1]
    assert n_blocks.tolist() == [3, 2]  # 10 answer tokens in blocks of 4, then 7


def test_monotone_ratios_never_decrease_and_start_anywhere():
    r = monotone_block_ratios(2000, 6, torch.Generator().manual_seed(0))
    assert r.shape == (2000, 6) and bool((r >= 0).all() and (r <= 1).all())
    assert bool((r[:, 1:] >= r[:, :-1]).all())
    # the frontier block is seen at every stage, nearly fully masked included
    assert float(r[:, 0].min()) < 0.05 and float(r[:, 0].max()) > 0.95


def test_d2f_loss_is_zero_when_the_student_sees_what_the_teacher_sees():
    teacher = random_model("diffusion")
    batch = sequence_batch()
    same = d2f_loss(as_student(teacher), teacher, batch, MASK, 4, torch.Generator().manual_seed(1))
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-5)


def test_d2f_loss_trains_the_block_causal_student_only():
    teacher = random_model("diffusion")
    student = as_student(teacher, kind="block-diffusion", block_size=4)
    loss = d2f_loss(student, teacher, sequence_batch(), MASK, 4, torch.Generator().manual_seed(1))
    assert float(loss.detach()) > 1e-3  # the student cannot see later blocks: its predictions differ
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in student.parameters())


def test_d2f_data_term_is_the_cross_entropy_to_the_true_tokens_on_the_masked_positions():
    teacher = random_model("diffusion")
    batch = sequence_batch()
    student = as_student(teacher)  # sees what the teacher sees: the KL part is 0, what is left is the data term
    with_ce = d2f_loss(student, teacher, batch, MASK, 4, torch.Generator().manual_seed(1), ce_weight=0.5)
    noisy, masked = monotone_state(batch, MASK, 4, torch.Generator().manual_seed(1))  # the loss's own state
    assert bool(masked.any())
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(teacher(noisy, valid=batch.valid)[masked], batch.ids[masked])
    assert float(with_ce.detach()) == pytest.approx(0.5 * float(ce), rel=1e-4)
    with pytest.raises(ValueError, match="ce_weight"):
        dataclasses.replace(get_recipe("sort-d2f"), ce_weight=-1.0)


def test_semi_ar_state_is_a_state_of_block_by_block_decoding():
    batch = sequence_batch(prompt_lens=(3, 5, 2), answer_lens=(10, 7, 1))
    block, _ = answer_blocks(batch, 4)
    for seed in range(20):
        noisy, open_ = semi_ar_state(batch, MASK, 4, torch.Generator().manual_seed(seed))
        for row in range(3):
            current = block[row][open_[row]].unique()
            assert current.numel() == 1  # at least one masked position, all in one block
            c = int(current)
            target = batch.target[row]
            assert bool((noisy[row][target & (block[row] < c)] != MASK).all())  # earlier blocks clean
            assert bool((noisy[row][target & (block[row] > c)] == MASK).all())  # later blocks all masked
            assert bool((noisy[row][~target] == batch.ids[row][~target]).all())  # prompt and padding kept


def test_two_step_targets_commit_the_surest_tokens_then_look_again():
    teacher = random_model("diffusion")
    batch = sequence_batch()
    noisy, open_ = semi_ar_state(batch, MASK, 4, torch.Generator().manual_seed(3))
    first = torch.log_softmax(teacher(noisy, valid=batch.valid), dim=-1)
    # no commit: the second look is the first; commit everything: the first look everywhere
    assert torch.allclose(two_step_targets(teacher, noisy, open_, batch.valid, 0), first, atol=1e-5)
    assert torch.allclose(two_step_targets(teacher, noisy, open_, batch.valid, 100)[open_], first[open_], atol=1e-5)
    one = two_step_targets(teacher, noisy, open_, batch.valid, 1)
    for row in range(2):
        conf = first[row].max(dim=-1).values.masked_fill(~open_[row], float("-inf"))
        surest = int(conf.argmax())
        assert torch.allclose(one[row, surest], first[row, surest], atol=1e-5)
        committed = noisy[row].clone()
        committed[surest] = first[row, surest].argmax()
        second = torch.log_softmax(teacher(committed[None], valid=batch.valid[row:row + 1]), dim=-1)[0]
        others = open_[row].clone()
        others[surest] = False
        assert torch.allclose(one[row][others], second[others], atol=1e-5)


def test_sdtt_loss_is_zero_for_a_copy_when_the_teacher_takes_no_extra_step():
    teacher = random_model("diffusion")
    loss = sdtt_loss(as_student(teacher), teacher, sequence_batch(), MASK, 4, 0, torch.Generator().manual_seed(0))
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-5)


def test_sdtt_data_term_is_the_cross_entropy_to_the_true_tokens_of_the_current_block():
    teacher = random_model("diffusion")
    batch = sequence_batch()
    loss = sdtt_loss(as_student(teacher), teacher, batch, MASK, 4, 0, torch.Generator().manual_seed(0), ce_weight=2.0)
    noisy, open_ = semi_ar_state(batch, MASK, 4, torch.Generator().manual_seed(0))  # the loss's own state
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(teacher(noisy, valid=batch.valid)[open_], batch.ids[open_])
    assert float(loss.detach()) == pytest.approx(2.0 * float(ce), rel=1e-4)  # the KL part is 0, as above


def test_curriculum_grows_the_largest_mask_rate_to_one():
    cfg = dataclasses.replace(get_recipe("tiny-sort-mdm"), steps=100, curriculum_steps=50, curriculum_start=0.2)
    assert [curriculum_t_max(s, cfg) for s in (0, 25, 50, 99)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert curriculum_t_max(0, get_recipe("tiny-sort-mdm")) == 1.0


def test_rounds_split_the_steps_evenly():
    cfg = dataclasses.replace(get_recipe("tiny-sort-mdm"), steps=10, rounds=2)
    assert [round_of(s, cfg) for s in range(10)] == [0] * 5 + [1] * 5
    with pytest.raises(ValueError, match="at least 1"):
        dataclasses.replace(cfg, rounds=0)
    with pytest.raises(ValueError, match="curriculum_start"):
        dataclasses.replace(cfg, curriculum_start=0.0)


def distill_recipe(teacher_dir, objective: str, **overrides) -> TrainConfig:
    tiny = get_recipe("tiny-sort-mdm")
    kind = {"d2f": dict(kind="block-diffusion", block_size=4), "sdtt": {}}[objective]
    return dataclasses.replace(tiny, name=f"tiny-{objective}", objective=objective, teacher=str(teacher_dir),
                               model=dataclasses.replace(tiny.model, **kind), lr=3e-3, **overrides)


def sharp_teacher(folder) -> Transformer:
    """A random tiny-sort-shaped bidirectional model with confident, context-hungry predictions."""
    tok = CharTokenizer()
    model = build_model(get_recipe("tiny-sort-mdm"), tok)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(mod.weight, std=0.2)
    save_model(model, tok, folder, {"task": "sort"})
    return unmask.load_model(folder)


def test_d2f_training_brings_the_student_closer_to_its_teacher(tmp_path):
    teacher = sharp_teacher(tmp_path / "teacher")
    cfg = distill_recipe(tmp_path / "teacher", "d2f", steps=30, eval_every=30)
    task = get_task(cfg.task, **cfg.task_options)
    before = evaluate_loss(as_student(teacher, kind="block-diffusion", block_size=4), cfg, CharTokenizer(), task, teacher)
    result = train(cfg, tmp_path / "student", progress=False)
    assert result.eval_loss < 0.7 * before
    student = unmask.load_model(tmp_path / "student")
    assert student.config.kind == "block-diffusion" and student.config.block_size == 4
    assert json.loads((tmp_path / "student" / "config.json").read_text())["teacher"] == str(tmp_path / "teacher")


def test_sdtt_rounds_resume_exactly_and_keep_each_round(trained_mdm, tmp_path):
    """A run stopped in round 2 resumes with round 2's teacher (round 1's student): same weights as straight."""
    cfg = distill_recipe(trained_mdm[0], "sdtt", steps=8, rounds=2, distill_block=8, save_every=3, eval_every=8)
    straight = train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "resumed", stop_after=6, progress=False)
    resumed = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert resumed.losses == straight.losses[6:]
    a, b = (unmask.load_model(tmp_path / d).state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert unmask.load_model(tmp_path / "straight" / "round-1").config.kind == "diffusion"


def test_a_teacher_of_another_shape_is_refused(trained_mdm, tmp_path):
    cfg = distill_recipe(trained_mdm[0], "d2f")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dim=48))
    with pytest.raises(ValueError, match="does not fit the model's shape"):
        train(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match="distils from a teacher"):
        train(dataclasses.replace(cfg, teacher=None), tmp_path, progress=False)


def test_a_second_stage_starts_from_its_init_not_the_teacher(trained_mdm, tmp_path):
    """init: the student starts from a first stage's weights (with lr 0 it keeps them) and records it."""
    first = distill_recipe(trained_mdm[0], "d2f", steps=3, eval_every=3, save_every=3)
    train(first, tmp_path / "first", progress=False)
    second = dataclasses.replace(first, steps=2, lr=0.0, ce_weight=1.0, init=str(tmp_path / "first"))
    train(second, tmp_path / "second", progress=False)
    a, b = (unmask.load_model(tmp_path / d) for d in ("first", "second"))
    teacher = unmask.load_model(trained_mdm[0]).state_dict()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not all(torch.equal(teacher[k], b.state_dict()[k]) for k in teacher)
    assert b.meta["init"] == str(tmp_path / "first") and b.meta["teacher"] == str(trained_mdm[0])


def test_an_init_of_another_shape_is_refused(trained_mdm, tmp_path):
    cfg = distill_recipe(trained_mdm[0], "d2f", steps=1, init=str(trained_mdm[0]))
    cfg = dataclasses.replace(cfg, teacher=None, objective="mdm", model=dataclasses.replace(cfg.model, dim=48))
    with pytest.raises(ValueError, match="init .* does not fit the model's shape"):
        train(cfg, tmp_path, progress=False)
