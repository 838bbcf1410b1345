"""OpenAI's request fields against `unmask serve`, with the official openai client: each honoured, or refused
with a 400 naming it."""
from __future__ import annotations

import httpx
import openai
import pytest
import torch

import unmask
from unmask.evaluation import prompt_for
from test_server import start_server

PROMPT = "sort: 47 3 91 12 5 60 8 33 71 2"


@pytest.fixture(scope="module")
def served():
    for base, name in start_server("sort-mdm"):
        yield base, name, openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)


def alone(text: str, **options) -> str:
    model = unmask.load_model("sort-mdm")
    ids, default_new = prompt_for(model, text)
    out = unmask.generate(model, torch.tensor([ids]), max_new_tokens=options.pop("max_new_tokens", default_new),
                          **options)
    return model.tokenizer.decode(out.sequences[0])


def test_stop_cuts_the_answer_and_ends_the_request_early(served):
    base, name, client = served
    vanilla = {"strategy": "low_confidence", "block_size": 8}  # one token per pass: what stop saves shows
    full = client.completions.create(model=name, prompt=PROMPT, extra_body=vanilla)
    cut = client.completions.create(model=name, prompt=PROMPT, stop=[" 12"], extra_body=vanilla)
    answer = full.choices[0].text
    assert " 12" in answer and cut.choices[0].text == answer[:answer.index(" 12")]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.model_extra["forward_passes"] < full.usage.model_extra["forward_passes"]
    with_lp = client.completions.create(model=name, prompt=PROMPT, stop=[" 12"], logprobs=0, extra_body=vanilla)
    assert "".join(with_lp.choices[0].logprobs.tokens) == cut.choices[0].text  # logprobs cut with the text
    streamed = client.completions.create(model=name, prompt=PROMPT, stop=" 12", stream=True, extra_body=vanilla)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text


def test_n_choices_and_prompt_lists_each_answer_as_alone(served):
    _, name, client = served
    res = client.completions.create(model=name, prompt=["sort: 5 1 3", "sort: 9 2"], n=2)
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    texts = [c.text for c in res.choices]
    assert texts == [alone("sort: 5 1 3")] * 2 + [alone("sort: 9 2")] * 2  # greedy: the n copies agree
    sampled = client.completions.create(model=name, prompt="sort: 5 1 3", n=3, temperature=1.0, seed=4,
                                        extra_body={"strategy": "random"})
    assert len(sampled.choices) == 3
    assert [c.text for c in sampled.choices] == [alone("sort: 5 1 3", strategy="random", temperature=1.0, seed=s)
                                                 for s in (4, 5, 6)]


def test_token_id_prompts_equal_their_text(served):
    _, name, client = served
    ids, _ = prompt_for(unmask.load_model("sort-mdm"), "sort: 8 6 7")
    by_ids = client.completions.create(model=name, prompt=ids)
    assert by_ids.choices[0].text == alone("sort: 8 6 7")
    assert by_ids.usage.prompt_tokens == len(ids)


def test_chat_parts_roles_and_max_completion_tokens(served):
    _, name, client = served
    res = client.chat.completions.create(model=name, max_completion_tokens=12, messages=[
        {"role": "developer", "content": "sort the list"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "sort: 6 2 4"}]}])
    assert res.choices[0].message.content == alone("sort: 6 2 4", max_new_tokens=12)
    with pytest.raises(openai.BadRequestError, match="max_completion_tokens"):
        client.chat.completions.create(model=name, max_tokens=8, max_completion_tokens=12,
                                       messages=[{"role": "user", "content": "sort: 6 2 4"}])


def test_stream_options_include_usage_ends_with_a_usage_chunk(served):
    _, name, client = served
    chunks = list(client.completions.create(model=name, prompt="sort: 5 1 3", stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.model_extra["forward_passes"] >= 1


def test_unknown_fields_are_ignored_and_unhonoured_ones_refused(served):
    base, name, client = served
    assert client.completions.create(model=name, prompt="sort: 5 1 3", extra_body={"frobnicate": 1}).choices
    for field, value in (("best_of", 3), ("suffix", "x")):
        with pytest.raises(openai.BadRequestError, match=field):
            client.completions.create(model=name, prompt="sort: 5 1 3", extra_body={field: value})
    with pytest.raises(openai.BadRequestError, match="echo"):  # completions only
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "5 1 3"}],
                                       extra_body={"echo": True})


def test_models_tokenize_detokenize_version(served):
    base, name, _ = served
    model = httpx.get(base + "/v1/models").json()["data"][0]
    assert model["id"] == name and model["max_model_len"] == unmask.load_model("sort-mdm").config.max_seq_len
    ids = httpx.post(base + "/tokenize", json={"model": name, "prompt": "sort: 3 1"}).json()["tokens"]
    assert ids == prompt_for(unmask.load_model("sort-mdm"), "sort: 3 1")[0]
    assert httpx.post(base + "/detokenize", json={"tokens": ids}).json()["prompt"].startswith("sort: 3 1")
    assert httpx.get(base + "/version").json()["version"] == unmask.__version__


def test_served_model_name_chat_template_and_dtype(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("sort: {{ messages[-1]['content'] }}")
    for base, _ in start_server("sort-mdm", "--served-model-name", "sorter", "--chat-template", str(template),
                                "--dtype", "float32"):
        assert httpx.get(base + "/v1/models").json()["data"][0]["id"] == "sorter"
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        res = client.chat.completions.create(model="sorter", messages=[{"role": "user", "content": "6 2 4"}])
        assert res.choices[0].message.content == alone("sort: 6 2 4")
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="sort-mdm", prompt="sort: 1 2")


def test_a_broken_chat_template_stops_serve_with_one_sentence(tmp_path, capsys):
    from unmask.cli import main

    template = tmp_path / "bad.jinja"
    template.write_text("{% if %}")
    assert main(["serve", "--model", "sort-mdm", "--chat-template", str(template)]) == 2
    assert "does not parse" in capsys.readouterr().err


def test_a_prompt_outside_the_training_task_is_answered_with_a_warning(served):
    base, name, _ = served
    r = httpx.post(base + "/v1/completions", json={"model": name, "prompt": "sort: 31 7 18"})
    assert r.status_code == 200 and "has 3 numbers; this model was trained on 4 to" in r.headers["x-unmask-warning"]
    assert r.json()["warnings"] == [r.headers["x-unmask-warning"]]
    fine = httpx.post(base + "/v1/completions", json={"model": name, "prompt": "sort: 31 7 18 2 64"})
    assert "x-unmask-warning" not in fine.headers and "warnings" not in fine.json()


@pytest.mark.parametrize("model_name, extra", [("sort-ar", {}), ("sort-mdm", {}), ("sort-mdm", {"strategy": "verifier"}),
                                               ("sort-d2f", {}), ("sort-isd", {"strategy": "isd"})])
def test_logprobs_one_finite_value_per_token_and_exact_for_ar(model_name, extra):
    """AR: the log-probabilities sum to unmask.loglikelihood of the answer. Diffusion: each token's
    log-probability at the step it was committed (greedy: it is its step's likeliest)."""
    text = "sort: 31 7 18 2 64"
    for base, name in start_server(model_name):
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        res = client.completions.create(model=name, prompt=text, logprobs=2, extra_body=extra)
        lp = res.choices[0].logprobs
        assert "".join(lp.tokens) == res.choices[0].text and len(lp.token_logprobs) == len(lp.tokens) > 0
        assert all(v <= 0 and v == v for v in lp.token_logprobs)
        assert all(len(alts) == 2 and max(alts.values()) == pytest.approx(v) for alts, v in
                   zip(lp.top_logprobs, lp.token_logprobs))
        chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": text}],
                                              logprobs=True, top_logprobs=1, extra_body=extra)
        content = chat.choices[0].logprobs.content
        assert [c.token for c in content] == lp.tokens and len(content[0].top_logprobs) == 1
        if model_name == "sort-ar":
            model = unmask.load_model(model_name)
            ids, _ = prompt_for(model, text)
            answer = model.tokenizer.encode(res.choices[0].text)
            assert sum(lp.token_logprobs) == pytest.approx(unmask.loglikelihood(model, ids, answer), abs=1e-4)
        streamed = [c.choices[0] for c in client.completions.create(model=name, prompt=text, logprobs=2, stream=True,
                                                                     extra_body=extra) if c.choices]
        entries = [(t, v) for c in streamed if c.logprobs for t, v in zip(c.logprobs.tokens, c.logprobs.token_logprobs)]
        assert entries == list(zip(lp.tokens, lp.token_logprobs))  # each token once, in the chunk that completes it
        assert [o for c in streamed if c.logprobs for o in c.logprobs.text_offset] == lp.text_offset
        chat_stream = client.chat.completions.create(model=name, messages=[{"role": "user", "content": text}],
                                                     logprobs=True, stream=True, extra_body=extra)
        assert [e.token for c in chat_stream if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content] == lp.tokens
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            client.completions.create(model=name, prompt=text, logprobs=21)


@pytest.mark.parametrize("model_name", ["sort-ar", "sort-mdm"])
def test_echo_with_logprobs_scores_the_prompt_as_unmask_loglikelihood(model_name):
    """AR: each prompt token from those before it (the first is null), summing exactly to
    unmask.loglikelihood; diffusion: each token's share of the Monte Carlo estimate, at the request's seed."""
    text = "sort: 31 7 18 2 64"
    model = unmask.load_model(model_name)
    ids, _ = prompt_for(model, text)
    for base, name in start_server(model_name):
        client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
        res = client.completions.create(model=name, prompt=text, echo=True, max_tokens=0, logprobs=1, seed=3)
        choice, lp = res.choices[0], res.choices[0].logprobs
        assert choice.text == text and choice.finish_reason == "length" and res.usage.completion_tokens == 0
        assert len(lp.token_logprobs) == len(ids) and "".join(lp.tokens) == model.tokenizer.decode(ids)
        if model_name == "sort-ar":
            assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
            assert sum(lp.token_logprobs[1:]) == unmask.loglikelihood(model, ids[:1], ids[1:])
            assert res.usage.model_extra["forward_passes"] == 1
        else:
            assert sum(lp.token_logprobs) == pytest.approx(unmask.loglikelihood(model, [], ids, seed=3), abs=1e-9)
            assert sum(lp.token_logprobs) != pytest.approx(unmask.loglikelihood(model, [], ids, seed=4), abs=1e-3)
            assert res.usage.model_extra["forward_passes"] == 128 // 32
        # echo with an answer: the prompt, then the answer as without echo (and its logprobs after the prompt's)
        plain = client.completions.create(model=name, prompt=text, logprobs=0)
        both = client.completions.create(model=name, prompt=text, echo=True, logprobs=0, seed=3)
        assert both.choices[0].text == text + plain.choices[0].text
        assert both.choices[0].logprobs.token_logprobs == lp.token_logprobs + plain.choices[0].logprobs.token_logprobs
        chunks = [c.choices[0] for c in client.completions.create(model=name, prompt=text, echo=True, stream=True)
                  if c.choices]
        assert chunks[0].text == text and "".join(c.text for c in chunks) == both.choices[0].text
        assert client.completions.create(model=name, prompt=text, echo=True).choices[0].logprobs is None
        with pytest.raises(openai.BadRequestError, match="max_tokens"):  # nothing to do without echo
            client.completions.create(model=name, prompt=text, max_tokens=0)
