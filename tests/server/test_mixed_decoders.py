"""64 concurrent HTTP requests mixing every decoder over three `unmask serve` processes: each answer is
what `unmask.generate` gives that prompt and those options alone, and an option its decoder does not
take is a 400 naming it."""
from __future__ import annotations

import concurrent.futures
import itertools

import httpx
import pytest
import torch

import unmask
from unmask.evaluation import prompt_for
from test_server import start_server

# (model, extra body fields): verifier, early commit, threshold with each cache, factor, d2f, isd, AR.
CASES = [
    ("sort-mdm", {"strategy": "verifier"}),
    ("sort-mdm", {"strategy": "verifier", "accept": 0.5, "cache": "dual"}),
    ("sort-mdm", {"strategy": "low_confidence", "early_commit": True}),
    ("sort-mdm", {"strategy": "threshold", "early_commit": True, "cache": "prefix"}),
    ("sort-mdm", {"strategy": "threshold", "cache": "none"}),
    ("sort-mdm", {"strategy": "threshold", "cache": "prefix"}),
    ("sort-mdm", {"strategy": "threshold", "cache": "dual"}),
    ("sort-mdm", {"strategy": "threshold", "cache": "delayed", "refresh_every": 2}),
    ("sort-mdm", {"strategy": "factor", "cache": "dual"}),
    ("sort-mdm", {"strategy": "random", "seed": 7, "temperature": 0.5}),
    ("sort-d2f", {}),
    ("sort-d2f", {"strategy": "threshold", "cache": "exact"}),
    ("sort-isd", {"strategy": "isd"}),
    ("sort-isd", {"strategy": "ar", "temperature": 0.8, "top_k": 5, "seed": 3}),
]

REFUSED = [
    ("sort-mdm", {"strategy": "threshold", "accept": 0.5}, "accept"),
    ("sort-mdm", {"strategy": "threshold", "top_k": 5}, "top_k"),
    ("sort-isd", {"strategy": "isd", "early_commit": True}, "early_commit"),
    ("sort-d2f", {"strategy": "d2f", "factor": 1.0}, "factor"),
]


@pytest.fixture(scope="module")
def servers():
    starts = {m: start_server(m) for m in ("sort-mdm", "sort-d2f", "sort-isd")}
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # start the three side by side
        bases = dict(zip(starts, pool.map(lambda g: next(g)[0], starts.values())))
    yield bases
    for g in starts.values():
        next(g, None)  # SIGTERM, and check the clean exit


def prompts(n: int) -> list[str]:
    return [f"sort: {(17 * i) % 100} {(5 * i + 3) % 100} {(29 * i + 11) % 100}" for i in range(n)]


def test_64_mixed_requests_each_answer_as_generate_alone(servers):
    jobs = [(m, extra, p) for (m, extra), p in zip(itertools.cycle(CASES), prompts(64))]

    def ask(job):
        model, extra, prompt = job
        r = httpx.post(servers[model] + "/v1/completions", timeout=120,
                       json={"model": model, "prompt": prompt, **extra})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(ask, jobs))
    models = {m: unmask.load_model(m) for m in servers}
    verifier = unmask.load_model("sort-ar-small")
    for (model_name, extra, prompt), answer in zip(jobs, answers):
        model = models[model_name]
        ids, default_new = prompt_for(model, prompt)
        options = {k: v for k, v in extra.items()}
        if options.get("strategy") == "verifier":
            options["verifier"] = verifier
        out = unmask.generate(model, torch.tensor([ids]), max_new_tokens=default_new, **options)
        assert answer == model.tokenizer.decode(out.sequences[0]), (model_name, extra, prompt)


@pytest.mark.parametrize("model,extra,field", REFUSED)
def test_an_option_the_decoder_does_not_take_is_a_400_naming_it(servers, model, extra, field):
    r = httpx.post(servers[model] + "/v1/completions", timeout=30,
                   json={"model": model, "prompt": "sort: 3 1 2", **extra})
    assert r.status_code == 400, r.text
    assert field in r.json()["error"]["message"]
