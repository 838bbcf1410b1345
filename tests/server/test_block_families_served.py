"""The block-diffusion families served: `unmask serve` on each reference folder (given a word-level
tokenizer, as the folders hold none) answers every request with the tokens `unmask.generate` gives it
alone, for the folder's own decoder and for other rules, several requests in flight at once."""
from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

import unmask
from test_server import complete_together, start_server

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference"
PROMPTS = [[5, 105, 108, 36, 37, 127, 12, 69, 92, 125, 97, 81, 46], [73, 126, 79, 4, 81, 64], list(range(10, 26))]


def with_tokenizer(name: str, tmp: Path) -> Path:
    folder = tmp / name
    shutil.copytree(REFERENCE / name, folder)
    vocab = {f"t{i}": i for i in range(160)}
    tok = Tokenizer(WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("name, extra", [("sdar-tiny", {"remasking": "sequential", "block_steps": 2}),
                                         ("fastdllm-v2-tiny", {"sub_block": 2}),
                                         ("llada2-mini-tiny", {"block_size": 8, "block_steps": 4})])
def test_each_family_served_answers_as_generate_alone(name, extra, tmp_path):
    folder = with_tokenizer(name, tmp_path)
    model = unmask.load_model(folder)
    cases = [(p, opts) for p in PROMPTS for opts in ({}, extra, {"strategy": "threshold", "threshold": 0.7})]
    for base, served in start_server(str(folder)):
        texts = complete_together(base, served, cases, max_tokens=18)
        for (prompt, opts), text in zip(cases, texts):
            out = unmask.generate(model, torch.tensor([prompt]), max_new_tokens=18, **opts)
            assert text and text == model.tokenizer.decode(out.token_ids[0, :out.lengths[0]].tolist()), (prompt, opts)
        bad = httpx.post(base + "/v1/completions", json={"model": served, "prompt": PROMPTS[0], "remasking": "x"})
        assert bad.status_code == 400 and "remasking" in bad.json()["error"]["message"]
