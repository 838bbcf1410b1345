"""Each block-diffusion family's own decoding, as unmask decoders, reproduces the generations its own code
recorded (tests/data/reference/*/reference_generate.json), token for token, with the exact cache and
without; every other rule's exact cache gives its uncached tokens; batches decode as rows alone.

Forward counts: ours are at most the families' own (the exact cache folds SDAR's and Fast-dLLM v2's
separate cache-writing pass into the next block's first step; a row ends once its asked tokens are final)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import unmask

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference"
REMASKING = {"low_confidence_dynamic": "dynamic", "low_confidence_static": "static", "sequential": "sequential"}


def recorded(name: str) -> dict:
    return json.loads((REFERENCE / name / "reference_generate.json").read_text())


def generated(model, prompt: list[int], n: int, **options) -> tuple[list[int], int, bool]:
    out = unmask.generate(model, torch.tensor([prompt]), max_new_tokens=n, **options)
    return out.token_ids[0, :out.lengths[0]].tolist(), out.nfe, out.finished[0]


@pytest.fixture(scope="module")
def sdar():
    return unmask.load_model(REFERENCE / "sdar-tiny")


@pytest.mark.parametrize("cache", ["exact", "none"])
def test_sdar_block_diffusion_generate_is_reproduced(sdar, cache):
    ref = recorded("sdar-tiny")
    for key, run in ref["runs"].items():
        a, gen = run["args"], run["generated_ids"]
        options = dict(strategy="sdar", remasking=REMASKING[a["remasking_strategy"]], block_size=a["block_length"],
                       block_steps=a["denoising_steps"], threshold=a["confidence_threshold"],
                       temperature=a["temperature"], top_k=a["top_k"], cache=cache)
        stops = a["stopping_criteria_idx"]
        if stops:  # SDAR stops after the block holding a stop id: the answer up to it is the same
            model = dataclasses.replace(sdar.config, eos_token_id=stops[0])
            stopped = unmask.load_model(REFERENCE / "sdar-tiny")
            stopped.config, stopped.eos_token_id = model, stops[0]
            ours, nfe, finished = generated(stopped, ref["prompt"], len(gen), **options)
            assert finished and ours == gen[:gen.index(stops[0])], key
            continue
        ours, nfe, _ = generated(sdar, ref["prompt"], len(gen), stop_at_eos=False, **options)
        assert ours == gen, key
        if cache == "exact":
            assert nfe == run["nfe"]["denoise"], key  # SDAR's store_kv passes ride along


@pytest.mark.parametrize("cache", ["exact", "none"])
def test_fast_dllm_v2_batch_sample_and_generate_are_reproduced(cache):
    model = unmask.load_model(REFERENCE / "fastdllm-v2-tiny")
    runs = [r for r in recorded("fastdllm-v2-tiny")["runs"].values() if not r["args"]["use_block_cache"]]
    assert len(runs) == 6
    for run in runs:
        a = run["args"]
        for i, prompt in enumerate(run["prompts"]):
            gen = run["output_ids"][str(i)][len(prompt):]  # incl. the next block's first token, as they return it
            ours, nfe, _ = generated(model, prompt, len(gen), stop_at_eos=False, strategy="fast_dllm_v2",
                                     threshold=a["threshold"], sub_block=a["small_block_size"], cache=cache)
            assert ours == gen, (a, i)
            if cache == "exact" and len(run["prompts"]) == 1:
                assert nfe == run["nfe"]["total"] - 1  # the prompt's prefill rides along with its first step


@pytest.mark.parametrize("cache", ["exact", "none"])
def test_llada2_generate_is_reproduced(cache):
    model = unmask.load_model(REFERENCE / "llada2-mini-tiny")
    ref = recorded("llada2-mini-tiny")
    for key, run in ref["runs"].items():
        a, gen = run["args"], run["generated_ids"]
        ours, nfe, _ = generated(model, ref["prompt"], a["gen_length"], strategy="llada2", threshold=a["threshold"],
                                 block_size=a["block_length"], block_steps=a["steps"], cache=cache)
        eos = a["eos_id"]
        assert ours == (gen[:gen.index(eos)] if eos in gen else gen), key
        assert nfe <= run["nfe"]["total"], key


@pytest.mark.parametrize("name", ["sdar-tiny", "fastdllm-v2-tiny", "llada2-mini-tiny"])
def test_every_rule_with_the_exact_cache_gives_its_uncached_tokens(name):
    model = unmask.load_model(REFERENCE / name)
    prompt = recorded(name)["prompt"]
    rules = [{}, {"strategy": "low_confidence"}, {"strategy": "threshold", "threshold": 0.6},
             {"strategy": "factor"}, {"strategy": "random", "seed": 3},
             {"strategy": "low_confidence", "steps": 8, "block_size": 8}]
    for rule in rules:
        exact = generated(model, prompt, 20, stop_at_eos=False, cache="exact", **rule)
        none = generated(model, prompt, 20, stop_at_eos=False, cache="none", **rule)
        assert exact[0] == none[0] and exact[1] == none[1], rule  # same tokens, same passes (each over less)


@pytest.mark.parametrize("name", ["sdar-tiny", "fastdllm-v2-tiny", "llada2-mini-tiny"])
def test_a_batch_decodes_as_its_rows_alone(name):
    """The native decoder (the folder's default), prompts of different lengths and grid offsets together."""
    model = unmask.load_model(REFERENCE / name)
    prompts = [[5, 105, 108, 36, 37, 127, 12, 69, 92, 125, 97, 81, 46], [73, 126, 79, 4, 81, 64], list(range(10, 26))]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[model.pad_token_id or 0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[False] * (width - len(p)) + [True] * len(p) for p in prompts])
    batch = unmask.generate(model, ids, prompt_mask=mask, max_new_tokens=19, stop_at_eos=False)
    for i, p in enumerate(prompts):
        assert batch.token_ids[i, :batch.lengths[i]].tolist() == generated(model, p, 19, stop_at_eos=False)[0]


def test_family_options_are_checked_by_name():
    fdv2 = unmask.load_model(REFERENCE / "fastdllm-v2-tiny")
    sdar = unmask.load_model(REFERENCE / "sdar-tiny")
    llada2 = unmask.load_model(REFERENCE / "llada2-mini-tiny")
    prompt = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="fixed at 8"):
        unmask.generate(fdv2, prompt, strategy="fast_dllm_v2", block_size=16)
    with pytest.raises(ValueError, match="sub_block"):
        unmask.generate(fdv2, prompt, sub_block=16)
    with pytest.raises(ValueError, match="remasking"):
        unmask.generate(llada2, prompt, strategy="llada2", remasking="sequential")
    with pytest.raises(ValueError, match="block_steps"):
        unmask.generate(sdar, prompt, strategy="fast_dllm_v2", block_steps=2)
    with pytest.raises(ValueError, match="context"):
        unmask.generate(llada2, prompt, max_new_tokens=250, block_size=48)  # the grid would end at 288 > 256
    # an option of the folder's own decoder adjusts it; the default is that decoder
    a = generated(sdar, [5, 6, 7], 12, stop_at_eos=False, block_steps=2)
    assert a == generated(sdar, [5, 6, 7], 12, stop_at_eos=False, strategy="sdar", block_steps=2)
