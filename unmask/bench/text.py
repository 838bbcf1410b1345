"""The text half of `unmask bench`: batch-1 speed at 64/128/256 new tokens on Shakespeare.

Text has no exact answer, so quality is the AR twin's negative log-likelihood of each sample
(nats per character, given its prompt): the same judge scores every setting, AR included.
A degenerate sample (e.g. all spaces) can score well, so distinct-character counts go beside it.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from unmask.bench.settings import Setting
from unmask.evaluation import task_of
from unmask.generation import generate
from unmask.models.checkpoints import load_model

TEXT_MODELS = {"ar": "shakespeare-ar", "diffusion": "shakespeare-mdm"}
GEN_LENGTHS = (64, 128, 256)
PROMPT_CHARS = 32


@torch.no_grad()
def judge_nll(judge: torch.nn.Module, prompt: torch.Tensor, sample: list[int]) -> float | None:
    """Mean NLL (nats/token) the causal `judge` gives `sample` after `prompt` `# (1, P)`."""
    if not sample:
        return None
    ids = torch.cat([prompt, torch.tensor([sample], dtype=torch.long)], dim=1)  # (1, P+N)
    logits = judge(ids)[:, prompt.shape[1] - 1:-1]  # (1, N, V): position i predicts token i+1
    return float(F.cross_entropy(logits[0], ids[0, prompt.shape[1]:]))


def text_prompts(model: torch.nn.Module, k: int) -> torch.Tensor:
    """The first characters of k consecutive held-out windows `# (k, PROMPT_CHARS)`."""
    task = task_of(model)
    return task.eval_batch(model.tokenizer, k, 0, seq_len=PROMPT_CHARS).ids


def run_text(settings: list[Setting], *, quick: bool, progress: bool,
             models: dict[str, str] | None = None) -> dict[str, Any]:
    """Per setting and new-token count: latency, tokens/s, NFE and the judge's NLL, settings interleaved."""
    names = {**TEXT_MODELS, **(models or {})}
    loaded = {role: load_model(path) for role, path in names.items()}
    judge = loaded["ar"]
    k = 2 if quick else 5
    prompts = text_prompts(judge, k)
    for s in settings:  # warm-up: every code path once, untimed
        generate(loaded[s.model], prompts[:1], max_new_tokens=max(GEN_LENGTHS), **s.gen_kwargs())
    calls: dict[tuple[str, int], list[dict[str, Any]]] = {(s.key, n): [] for s in settings for n in GEN_LENGTHS}
    jobs = [(n, i) for n in GEN_LENGTHS for i in range(k)]
    for j, (n, i) in enumerate(tqdm(jobs, desc="text", disable=not progress, file=sys.stderr, leave=False)):
        for s in settings[j % len(settings):] + settings[:j % len(settings)]:
            prompt = prompts[i:i + 1]
            t0 = time.perf_counter()
            out = generate(loaded[s.model], prompt, max_new_tokens=n, **s.gen_kwargs())
            dt = time.perf_counter() - t0
            sample = out.sequences[0]
            calls[(s.key, n)].append({"seconds": dt, "tokens": len(sample), "nfe": out.nfe,
                                      "nll": judge_nll(judge, prompt, sample), "distinct": len(set(sample))})
    rows = []
    for s in settings:
        cells = []
        for n in GEN_LENGTHS:
            c = calls[(s.key, n)]
            secs, toks = sum(x["seconds"] for x in c), sum(x["tokens"] for x in c)
            nlls = [x["nll"] for x in c if x["nll"] is not None]
            cells.append({"new_tokens": n, "n": len(c), "latency_s_mean": secs / len(c),
                          "tokens_per_second": toks / secs if secs else 0.0,
                          "nfe_mean": sum(x["nfe"] for x in c) / len(c),
                          "tokens_per_forward": toks / max(1, sum(x["nfe"] for x in c)),
                          "judge_nll": sum(nlls) / len(nlls) if nlls else None,
                          "distinct_chars_mean": sum(x["distinct"] for x in c) / len(c)})
        rows.append({"key": s.key, "label": s.label, "model": s.model, "options": s.options, "lengths": cells})
    return {"models": names, "prompts": k, "prompt_chars": PROMPT_CHARS, "gen_lengths": list(GEN_LENGTHS),
            "judge": names["ar"], "settings": rows}
