"""Sampling a continuous model through the one decoding core: against a plain loop, batched against alone,
refusals, and the model generated, evaluated and served like any other."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

import unmask
from unmask.models.flow import FlowInputs
from unmask.models.noise_schedule import alpha_sigma


@torch.no_grad()
def reference_ddim(model, prompt: list[int], n: int, steps: int, seed: int) -> list[int]:
    """The deterministic sampler written out as one loop over full-sequence forwards (no engine, no paging)."""
    gen = torch.Generator().manual_seed(seed)
    P = len(prompt)
    table = model.embeddings()
    ids = torch.tensor([prompt + [model.mask_token_id] * n])
    levels = model.schedule(1 - torch.arange(steps + 1, dtype=torch.float32) / steps)
    z = torch.randn(n, table.shape[1], generator=gen)
    estimate = None
    for k in range(steps):
        zf = torch.zeros(1, P + n, table.shape[1])
        zf[0, P:] = z
        g = torch.full((1, P + n), -math.inf)
        g[0, P:] = levels[k]
        sc = None
        if estimate is not None:
            sc = torch.zeros_like(zf)
            sc[0, P:] = estimate
        logits = model(ids, flow=FlowInputs(zf, g, sc))[0, P:]
        if k + 1 == steps:
            return logits.argmax(-1).tolist()
        x_hat = torch.softmax(logits, -1) @ table
        a_t, s_t = alpha_sigma(levels[k])
        a_s, s_s = alpha_sigma(levels[k + 1])
        z = a_s * x_hat + s_s * (z - a_t * x_hat) / s_t
        estimate = x_hat


def test_the_engine_gives_the_plain_loops_tokens(flow_model) -> None:
    prompt = [10, 11, 12, 13, 14]
    out = unmask.generate(flow_model, torch.tensor([prompt]), max_new_tokens=12, steps=6, seed=3, stop_at_eos=False)
    assert out.token_ids[0].tolist() == reference_ddim(flow_model, prompt, 12, 6, 3)
    assert out.nfe == 6


@pytest.mark.parametrize("sampler", ["ode", "sde"])
def test_a_batch_gives_each_row_what_it_gets_alone(flow_model, sampler) -> None:
    prompts = [torch.tensor([10, 11, 12]), torch.tensor([20, 21, 22, 23, 24, 25, 26]), torch.tensor([30])]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):], mask[i, width - len(p):] = p, True
    opts = dict(max_new_tokens=10, steps=5, sampler=sampler, seed=7, stop_at_eos=False)
    batched = unmask.generate(flow_model, ids, prompt_mask=mask, **opts)
    for i, p in enumerate(prompts):
        alone = unmask.generate(flow_model, p[None], **{**opts, "seed": 7 + i})
        assert batched.token_ids[i].tolist() == alone.token_ids[0].tolist()


def test_seeds_decide_the_sample(flow_model) -> None:
    prompt = torch.tensor([[10, 11, 12]])
    a = unmask.generate(flow_model, prompt, max_new_tokens=16, steps=4, seed=1, stop_at_eos=False)
    b = unmask.generate(flow_model, prompt, max_new_tokens=16, steps=4, seed=1, stop_at_eos=False)
    c = unmask.generate(flow_model, prompt, max_new_tokens=16, steps=4, seed=2, stop_at_eos=False)
    assert torch.equal(a.token_ids, b.token_ids) and not torch.equal(a.token_ids, c.token_ids)


@pytest.mark.parametrize("options, words", [
    ({"strategy": "low_confidence"}, "use strategy 'flow'"),
    ({"cache": "dual"}, "no strategy for this model.s kind .continuous. takes it"),
    ({"threshold": 0.9}, "continuous .embedding-space. diffusion model: use strategy .flow., not .threshold."),
    ({"sampler": "euler"}, "unknown --sampler"),
])
def test_what_a_continuous_model_cannot_honour_is_refused(flow_model, options, words) -> None:
    from unmask.decode.spec import flag_name

    with pytest.raises(ValueError, match=words):
        unmask.generate(flow_model, torch.tensor([[5, 6]]), namer=flag_name, **options)


def test_flow_options_are_refused_on_a_masked_diffusion_model(mdm_model) -> None:
    with pytest.raises(ValueError, match="needs a continuous"):
        unmask.generate(mdm_model, torch.tensor([[5, 6]]), strategy="flow")
    with pytest.raises(ValueError, match="sampler"):
        unmask.generate(mdm_model, torch.tensor([[5, 6]]), sampler="ode")


def test_no_per_token_scores_for_a_continuous_model(flow_model) -> None:
    with pytest.raises(ValueError, match="no per-token log-probabilities"):
        unmask.loglikelihood(flow_model, [5, 6], [7, 8])


def test_generate_and_eval_on_the_command_line(trained_flow) -> None:
    folder = str(trained_flow[0])
    run = subprocess.run([sys.executable, "-m", "unmask", "generate", "--model", folder, "--prompt", "ROMEO:",
                          "--max-new-tokens", "20", "--steps", "8", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["nfe"] == 8 and len(out["token_ids"]) <= 20
    run = subprocess.run([sys.executable, "-m", "unmask", "eval", "--model", folder, "--limit", "2", "--batch-size",
                          "2", "--ode-steps", "16", "--json"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    res = json.loads(run.stdout)
    assert res["loss_kind"] == "ode-bound" and res["loss"] > 0 and res["ode_steps"] == 16
    assert abs(res["bits_per_token"] - res["loss"] / math.log(2)) < 1e-9
    terms = res["reconstruction_per_token"] + res["prior_per_token"] - res["volume_per_token"] + res["noise_per_token"]
    assert abs(terms - res["loss"]) < 1e-6
    bad = subprocess.run([sys.executable, "-m", "unmask", "eval", "--model", folder, "--strategy", "flow"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "do not apply" in bad.stderr


def test_served_answers_equal_generate_alone(trained_flow) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))
    from test_server import complete_together, start_server  # the server tests' helpers

    folder = str(trained_flow[0])
    model = unmask.load_model(folder)
    cases = [("ROMEO:", {"steps": 6}), ("JULIET: O", {"steps": 4, "sampler": "sde"}), ("To be", {"steps": 5})]
    for base, served in start_server(folder):
        texts = complete_together(base, served, cases, max_tokens=16, seed=11)
        for (prompt, opts), text in zip(cases, texts):
            ids = torch.tensor([model.tokenizer.encode(prompt)])
            out = unmask.generate(model, ids, max_new_tokens=16, seed=11, **opts)
            assert text == model.tokenizer.decode(out.token_ids[0, :out.lengths[0]].tolist()), (prompt, opts)
        echo = httpx.post(base + "/v1/completions", json={"model": served, "prompt": "ROMEO", "max_tokens": 4,
                                                          "echo": True, "logprobs": 1})
        assert echo.status_code == 400 and "per-token" in echo.json()["error"]["message"]


def test_a_narrow_diffusion_space_decodes_like_the_plain_loop(narrow_flow_model) -> None:
    prompt = [10, 11, 12]
    out = unmask.generate(narrow_flow_model, torch.tensor([prompt]), max_new_tokens=9, steps=5, seed=2,
                          stop_at_eos=False)
    assert out.token_ids[0].tolist() == reference_ddim(narrow_flow_model, prompt, 9, 5, 2)
