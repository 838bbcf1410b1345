"""`lm_eval --model unmask` (unmask/harness/): the unmask_sort task scores what `unmask eval` scores, options
are honoured or refused by name, likelihoods are unmask's, and the .pth hook registers the model."""
from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task builds its documents itself: nothing to fetch

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import lm_eval
from lm_eval.api.instance import Instance
from lm_eval.tasks import TaskManager

import unmask
from unmask.cli import main
from unmask.evaluation import evaluate_sort, sort_task_of
from unmask.harness import TASKS_DIR
from unmask.harness.lm import UnmaskLM
from unmask.harness.tokens import rolling_windows

LIMIT = 32
METRIC = "exact_match,strip"


@pytest.fixture(scope="module")
def task_manager() -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)  # lm-eval's own tasks: 8 s to index


def run_task(task_manager: TaskManager, model_args: str) -> dict:
    """simple_evaluate on unmask_sort's first LIMIT documents, with each sample logged."""
    return lm_eval.simple_evaluate(model="unmask", model_args=model_args, tasks=["unmask_sort"], limit=LIMIT,
                                   batch_size=32, task_manager=task_manager, bootstrap_iters=0, log_samples=True)


def responses(out: dict) -> list[str]:
    samples = sorted(out["samples"]["unmask_sort"], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] for s in samples]


def request(kind: str, *args) -> Instance:
    return Instance(kind, {}, tuple(args), 0)


@pytest.fixture(scope="module")
def lms() -> dict[str, UnmaskLM]:
    return {name: UnmaskLM("sort-mdm" if name == "mdm" else "sort-ar", mc_num=32) for name in ("mdm", "ar")}


@pytest.mark.parametrize("name", ["sort-mdm", "sort-ar"])
def test_unmask_sort_scores_what_unmask_eval_scores(task_manager, name):
    out = run_task(task_manager, f"pretrained={name}")
    model = unmask.load_model(name)
    expected = evaluate_sort(model, sort_task_of(model), limit=LIMIT)
    assert out["results"]["unmask_sort"][METRIC] == expected["accuracy"]
    assert responses(out) == [o.strip() for o in expected["outputs"]]  # the same examples, the same decoding
    assert [s["target"] for s in sorted(out["samples"]["unmask_sort"], key=lambda s: s["doc_id"])] == \
        [ex.answer for ex in sort_task_of(model).test_examples[:LIMIT]]


def test_a_decoding_option_is_honoured(task_manager):
    out = run_task(task_manager, "pretrained=sort-mdm,strategy=low_confidence,steps=6")
    model = unmask.load_model("sort-mdm")
    task = sort_task_of(model)
    expected = evaluate_sort(model, task, limit=LIMIT, strategy="low_confidence", steps=6)
    assert out["results"]["unmask_sort"][METRIC] == expected["accuracy"]
    assert responses(out) == [o.strip() for o in expected["outputs"]]
    assert responses(out) != [o.strip() for o in evaluate_sort(model, task, limit=LIMIT)["outputs"]]  # not dropped
    same = run_task(task_manager, "pretrained=sort-mdm,strategy=threshold,threshold=0.9,cache=dual")
    dual = evaluate_sort(model, task, limit=LIMIT, strategy="threshold", threshold=0.9, cache="dual")
    assert responses(same) == [o.strip() for o in dual["outputs"]]


@pytest.mark.parametrize("args, named", [({"threshhold": 0.9}, "threshhold"), ({"cache": "bogus"}, "cache"),
                                         ({"strategy": "ar"}, "'ar'"), ({"steps": 0}, "steps"),
                                         ({"max_new_tokens": 8}, "max_new_tokens"), ({"mc_num": 0}, "mc_num"),
                                         ({"batch_size": 64, "max_batch_size": 8}, "max_batch_size")])
def test_a_bad_model_argument_is_refused_by_name(args, named):
    with pytest.raises(ValueError, match=named):
        UnmaskLM("sort-mdm", **args)


def test_batch_size_auto_is_32_under_max_batch_size():
    assert UnmaskLM("sort-mdm", batch_size="auto").batch_size == 32
    assert UnmaskLM("sort-mdm", batch_size="auto", max_batch_size=8).batch_size == 8
    assert UnmaskLM("sort-mdm", batch_size="16").batch_size == 16


def test_bad_generation_keywords_are_refused(lms):
    gen = lms["ar"].generate_until
    with pytest.raises(ValueError, match="num_beams"):
        gen([request("generate_until", "sort: 3 1 2", {"until": ["\n"], "num_beams": 4})])
    with pytest.raises(ValueError, match="do_sample is false"):
        gen([request("generate_until", "sort: 3 1 2", {"do_sample": False, "temperature": 0.7})])
    with pytest.raises(ValueError, match="max_gen_toks"):
        gen([request("generate_until", "sort: 3 1 2", {"max_gen_toks": 10_000})])


def test_until_cuts_the_text_and_ends_the_row_early(lms):
    lm = lms["ar"]
    calls = []
    hook = lm.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        free = lm.generate_until([request("generate_until", "sort: 31 7 18 2 64", {"until": []})])
        free_calls, calls[:] = len(calls), []
        cut = lm.generate_until([request("generate_until", "sort: 31 7 18 2 64", {"until": [" "]})])
    finally:
        hook.remove()
    assert free == ["2 7 18 31 64"] and cut == ["2"]
    assert len(calls) < free_calls / 3  # stopped after "2 ", not decoded to EOS


def test_sampling_keywords_reach_the_decoder(lms):
    lm = lms["mdm"]
    ctx = "sort: 31 7 18 2 64 5 90 41"
    greedy = lm.generate_until([request("generate_until", ctx, {"until": []})] * 4)
    hot = lm.generate_until([request("generate_until", ctx, {"do_sample": True, "temperature": 5.0, "seed": 3})] * 4)
    again = lm.generate_until([request("generate_until", ctx, {"do_sample": True, "temperature": 5.0, "seed": 3})] * 4)
    assert len(set(greedy)) == 1 and hot == again and hot != greedy


@pytest.mark.parametrize("name", ["mdm", "ar"])
def test_loglikelihood_is_unmask_loglikelihood(lms, name):
    lm = lms[name]
    tok = lm.model.tokenizer
    ctx, cont = "sort: 31 7 18 2 64", "2 7 18 31 64"
    [(logprob, _)] = lm.loglikelihood([request("loglikelihood", ctx, cont)])
    expected = unmask.loglikelihood(lm.model, tok.encode(ctx) + [tok.sep_token_id], tok.encode(cont), mc_num=32,
                                    seed=0)
    assert logprob == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("name", ["mdm", "ar"])
def test_is_greedy_by_hand_on_one_token(lms, name):
    lm = lms[name]
    model, tok = lm.model, lm.model.tokenizer
    ctx = "sort: 31 7 18 2 64"
    ids = tok.encode(ctx) + [tok.sep_token_id]
    with torch.no_grad():  # the one-token greedy choice: AR's next token, diffusion's argmax at the one mask
        seq = ids if name == "ar" else ids + [model.mask_token_id]
        logits = model(torch.tensor([seq]))[0, -1]
    chars = [c for c in tok.chars if tok.encode(c)[0] != int(logits.argmax())]
    best = tok.decode([int(logits.argmax())])
    results = lm.loglikelihood([request("loglikelihood", ctx, best), request("loglikelihood", ctx, chars[5])])
    assert [greedy for _, greedy in results] == [True, False]
    if name == "ar":  # and on a longer continuation: the greedy answer is greedy, a changed one is not
        [(_, yes), (_, no)] = lm.loglikelihood([request("loglikelihood", ctx, "2 7 18 31 64"),
                                                request("loglikelihood", ctx, "2 7 18 64 31")])
        assert yes and not no


def test_rolling_loglikelihood_of_an_ar_model_is_the_exact_sum(lms):
    lm = lms["ar"]
    model, text = lm.model, "sort: 9 4 77 1"
    tokens = model.tokenizer.encode(text)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([[model.eos_token_id] + tokens[:-1]]))[0].float(), -1)
    expected = float(logp.gather(-1, torch.tensor(tokens)[:, None]).sum())
    [got] = lm.loglikelihood_rolling([request("loglikelihood_rolling", text)])
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", ["mdm", "ar"])
def test_rolling_windows_score_each_token_once_within_the_context(lms, name):
    model = lms[name].model
    text = "sort: 5 81 3 40 " * 40  # 640 tokens: three windows of a 256-token model
    windows = list(rolling_windows(model, text))
    assert len(windows) == 3
    assert sum((cont for _, cont in windows), []) == model.tokenizer.encode(text)
    assert all(len(ctx) + len(cont) <= model.config.max_seq_len for ctx, cont in windows)
    assert windows[0][0] == ([] if name == "mdm" else [model.eos_token_id])


def test_importing_the_adapter_registers_it():
    from lm_eval.api.registry import get_model

    assert get_model("unmask") is UnmaskLM


def test_the_pth_hook_registers_unmask_in_a_fresh_interpreter(tmp_path):
    """As the lm_eval command sees it: nothing imported unmask, and lm-eval's own models are still there."""
    code = ("import sys\n"
            "from lm_eval.api.registry import get_model, model_registry\n"
            "assert 'unmask' not in sys.modules and 'torch' not in sys.modules, 'the hook imported too much'\n"
            "cls = get_model('unmask')\n"
            "assert 'hf' in model_registry and 'vllm' in model_registry, 'lm-eval lost its own models'\n"
            "print(cls.__module__, cls.__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"is unmask installed (pip install -e .)? {done.stderr[-2000:]}"
    assert done.stdout.split() == ["unmask.harness.lm", "UnmaskLM"]


def test_lm_eval_tasks_prints_the_include_path(capsys):
    assert main(["lm-eval-tasks"]) == 0
    folder = capsys.readouterr().out.strip()
    assert os.path.isfile(os.path.join(folder, "unmask_sort", "unmask_sort.yaml"))
