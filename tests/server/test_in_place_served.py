"""ICE over HTTP: `template`, `answer_exit` and `answer_exit_pool` as request fields of `unmask serve`
arith-mdm, requests in flight together answering as `unmask.generate` does alone; the model's default
template where the prompt fits it; a template the prompt cannot take refused with a 400 naming it."""
from __future__ import annotations


import httpx
import torch

import unmask
from unmask.evaluation import prompt_for
from test_server import complete_together, start_server

PROMPTS = ["sum: 47 3 91 12", "sum: 5 60", "sum: 12 88 7"]
OPTIONS = [{}, {"template": False}, {"strategy": "low_confidence", "template": True, "answer_exit": 0.9},
           {"answer_exit": 0.99, "answer_exit_pool": "min"}, {"strategy": "threshold", "cache": "dual", "template": True}]


def test_served_in_place_requests_answer_as_generate_alone():
    model = unmask.load_model("arith-mdm")
    cases = [(p, o) for p in PROMPTS for o in OPTIONS]
    for base, served in start_server("arith-mdm"):
        texts = complete_together(base, served, cases, max_tokens=40)
        for (prompt, options), text in zip(cases, texts):
            ids, _ = prompt_for(model, prompt)
            out = unmask.generate(model, torch.tensor([ids]), max_new_tokens=40, **options)
            assert "#" in text and text == model.tokenizer.decode(out.sequences[0]), (prompt, options)
        bad = httpx.post(base + "/v1/completions", json={"model": served, "prompt": "sum: 1 2 3 4 5 6",
                                                         "max_tokens": 40, "template": True}, timeout=60)
        assert bad.status_code == 400 and "template" in bad.json()["error"]["message"]
        fine = httpx.post(base + "/v1/completions", json={"model": served, "prompt": "sum: 1 2 3 4 5 6",
                                                          "max_tokens": 40}, timeout=60)
        assert fine.status_code == 200  # the default template, which this prompt cannot take, is left out
