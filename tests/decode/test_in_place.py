"""ICE in-place reasoning: the template is written into the canvas and never overwritten; answer-first
exit commits the whole answer section (never a mask left in it) and stops; rows decide alone, so a batch
decodes as its rows do alone; a model without an answer section refuses both, by name."""
from __future__ import annotations

import pytest
import torch

import unmask
from unmask.data.arith import ArithTask
from unmask.decode.spec import resolve
from unmask.evaluation import prompt_for

PROMPTS = ["sum: 47 3 91", "sum: 5 60", "sum: 12 88 7 40"]
RULES = [{}, {"strategy": "threshold", "threshold": 0.3}, {"strategy": "threshold", "cache": "dual"},
         {"strategy": "factor", "cache": "prefix"}, {"strategy": "low_confidence", "steps": 13},
         {"strategy": "random", "seed": 2}, {"strategy": "threshold", "early_commit": 2.0}]


@pytest.fixture(scope="module", params=["own-column", "shifted"])
def adder(request, tmp_path_factory):
    """A tiny adder scoring each token at its own column, and one adapted from AR (`arith-mdm`'s way:
    Dream-style shifted logits, column i - 1 scores token i)."""
    import dataclasses

    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    recipe = get_recipe("tiny-arith-mdm")
    if request.param == "shifted":
        recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, logits_shift=True))
    folder = tmp_path_factory.mktemp(f"tiny-arith-mdm-{request.param}")
    train(recipe, folder, progress=False)
    return unmask.load_model(folder)


def decode(model, prompt: str, **options) -> tuple[list[int], int]:
    ids, n = prompt_for(model, prompt)
    out = unmask.generate(model, torch.tensor([ids]), max_new_tokens=n, **options)
    return out.token_ids[0, :out.lengths[0]].tolist(), out.nfe


@pytest.mark.parametrize("rule", RULES)
def test_template_tokens_are_never_overwritten(adder, rule):
    task = ArithTask()
    tok = adder.tokenizer
    for prompt in PROMPTS:
        out, _ = decode(adder, prompt, template=True, stop_at_eos=False, **rule)
        template = task.template(len(task.terms(prompt)))
        fixed = [(i, c) for i, c in enumerate(template) if c != "_"]
        assert all(out[i] == tok.encode(c)[0] for i, c in fixed), (prompt, rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("tau", [0.01, 0.5, 0.99])
def test_answer_exit_never_leaves_a_mask_in_the_answer(adder, rule, tau):
    task = ArithTask()
    for prompt in PROMPTS:
        for pool in ("mean", "min"):
            out, nfe = decode(adder, prompt, answer_exit=tau, answer_exit_pool=pool, stop_at_eos=False, **rule)
            assert len(out) == task.max_window and adder.mask_token_id not in out[task.answer_start:], (rule, tau)
    # a threshold every step reaches exits after the first step
    assert decode(adder, PROMPTS[0], answer_exit=0.001)[1] == 1


@pytest.mark.parametrize("options", [{"template": True}, {"answer_exit": 0.4}, {"template": True, "answer_exit": 0.6},
                                     {"template": True, "answer_exit": 0.5, "strategy": "threshold", "cache": "dual"}])
def test_a_batch_decodes_as_its_rows_alone(adder, options):
    rows = [prompt_for(adder, p)[0] for p in PROMPTS]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[adder.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    batch = unmask.generate(adder, ids, prompt_mask=mask, max_new_tokens=ArithTask().max_window, **options)
    for i, p in enumerate(PROMPTS):
        assert batch.token_ids[i, :batch.lengths[i]].tolist() == decode(adder, p, **options)[0]
        assert batch.solo_nfe[i] == decode(adder, p, **options)[1]


def test_models_without_an_answer_section_refuse_by_name(adder):
    sorter = unmask.load_model("sort-mdm")
    prompt = torch.tensor([prompt_for(sorter, "sort: 5 1 3 9")[0]])
    for name, value in (("answer_exit", 0.9), ("template", True)):
        with pytest.raises(ValueError, match=name):
            unmask.generate(sorter, prompt, max_new_tokens=48, **{name: value})
    ids = torch.tensor([prompt_for(adder, "sum: 1 2")[0]])
    with pytest.raises(ValueError, match="max_new_tokens must be at least"):
        unmask.generate(adder, ids, max_new_tokens=10, answer_exit=0.9)
    with pytest.raises(ValueError, match="answer_exit"):
        unmask.generate(adder, ids, max_new_tokens=40, answer_exit_pool="min")
    with pytest.raises(ValueError, match="template: the prompt must be 'sum:' and 2 to 4 numbers"):
        unmask.generate(adder, torch.tensor([prompt_for(adder, "sum: 1")[0]]), max_new_tokens=40, template=True)
    with pytest.raises(ValueError, match="template does not go with this model's default strategy 'ar'"):
        unmask.generate(unmask.load_model("sort-ar"), prompt, max_new_tokens=8, template=True)


def test_arith_mdm_decodes_with_its_template_by_default_where_the_prompt_fits():
    """The benchmark backs the template for arith-mdm, so its default decoding writes it; a prompt or window
    that cannot take it decodes without it (the user never asked for it), and naming a strategy opts out."""
    adder = unmask.load_model("arith-mdm")
    fits, window = prompt_for(adder, "sum: 47 3 91")
    fast = {"strategy": "threshold", "threshold": 0.9, "confidence": "entropy", "cache": "dual", "block_size": window}
    default = unmask.generate(adder, torch.tensor([fits]), max_new_tokens=window)
    assert torch.equal(default.token_ids, unmask.generate(adder, torch.tensor([fits]), max_new_tokens=window,
                                                           template=True, **fast).token_ids)
    too_many = torch.tensor([prompt_for(adder, "sum: 1 2 3 4 5 6")[0]])
    unmask.generate(adder, too_many, max_new_tokens=window)  # decoded, without the template
    unmask.generate(adder, torch.tensor([fits]), max_new_tokens=12)
    with pytest.raises(ValueError, match="template: the prompt must be"):
        unmask.generate(adder, too_many, max_new_tokens=window, template=True)
    assert resolve(adder.config, {}).template and not resolve(adder.config, {"template": False}).template
    assert not resolve(adder.config, {"strategy": "threshold"}).template
