"""The `unmask` command line: JSON outputs and one-line errors (exit 2, no traceback) for user mistakes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unmask.cli import main
from unmask.models import checkpoints


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, command: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"unmask {command}: error:"), err
    assert "Traceback" not in err


@pytest.fixture()
def mdm_dir(trained_mdm):
    return str(trained_mdm[0])


@pytest.fixture()
def ar_dir(trained_ar):
    return str(trained_ar[0])


def test_bad_model_name(capsys):
    code, out, err = run(capsys, "generate", "--model", "no-such-model", "--prompt", "sort: 3 1")
    assert_user_error(code, err, "generate")
    assert "no-such-model" in err and out == ""


def test_empty_prompt(capsys, mdm_dir):
    code, _, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "")
    assert_user_error(code, err, "generate")
    assert "empty" in err


def test_overlong_prompt(capsys, mdm_dir):
    """A prompt that does not fit the model's context (256) with the new tokens is refused."""
    code, _, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "9 " * 150)
    assert_user_error(code, err, "generate")
    assert "context" in err


def test_prompt_with_unknown_character(capsys, mdm_dir):
    code, _, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "sort: 3 \u00e9")
    assert_user_error(code, err, "generate")


def test_unknown_strategy(capsys, mdm_dir):
    code, _, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "sort: 3 1", "--strategy", "nope")
    assert_user_error(code, err, "generate")
    assert "low_confidence" in err, "the known strategies are listed"


def test_diffusion_strategy_on_ar_model(capsys, ar_dir):
    code, _, err = run(capsys, "generate", "--model", ar_dir, "--prompt", "sort: 3 1", "--strategy", "low_confidence")
    assert_user_error(code, err, "generate")
    assert "'ar'" in err


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--block-size", "-1"), ("--temperature", "-1")])
def test_bad_sampling_flags(capsys, mdm_dir, flag, value):
    code, _, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "sort: 3 1", flag, value)
    assert_user_error(code, err, "generate")


def test_unknown_recipe(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--recipe", "no-such-recipe", "--out", str(tmp_path))
    assert_user_error(code, err, "train")
    assert "tiny-sort-mdm" in err, "the known recipes are listed"


@pytest.mark.parametrize("flag, value", [("--port", "0"), ("--max-running", "0"), ("--keep-alive", "0")])
def test_bad_serve_flags(capsys, mdm_dir, flag, value):
    """Refused before a model loads or a port opens."""
    code, _, err = run(capsys, "serve", "--model", mdm_dir, flag, value)
    assert_user_error(code, err, "serve")
    assert flag in err


def test_eval_bad_limit(capsys, mdm_dir):
    code, _, err = run(capsys, "eval", "--model", mdm_dir, "--limit", "0", "--json")
    assert_user_error(code, err, "eval")


@pytest.mark.parametrize("model, draws, says", [
    ("shakespeare-mdm", "0", "--draws must be at least 1"),
    ("shakespeare-ar", "2", "likelihood is exact"),
    ("MDM", "2", "scored by its answers"),  # a sort model: nothing to average
])
def test_eval_draws_mistakes(capsys, mdm_dir, model, draws, says):
    code, _, err = run(capsys, "eval", "--model", mdm_dir if model == "MDM" else model, "--draws", draws,
                       "--limit", "1", "--json")
    assert_user_error(code, err, "eval")
    assert says in err


@pytest.mark.parametrize("which", ["mdm", "ar"])
def test_generate_json(capsys, mdm_dir, ar_dir, which):
    """`generate --json` prints exactly one JSON object with the documented keys."""
    folder = mdm_dir if which == "mdm" else ar_dir
    code, out, _ = run(capsys, "generate", "--model", folder, "--prompt", "sort: 3 1", "--json",
                       "--max-new-tokens", "8")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert set(record) == {"text", "token_ids", "nfe", "seconds", "tokens_per_second"}
    assert isinstance(record["text"], str) and all(isinstance(t, int) for t in record["token_ids"])
    assert len(record["token_ids"]) <= 8 and 1 <= record["nfe"] <= 8
    assert record["seconds"] > 0 and record["tokens_per_second"] >= 0


def test_a_switch_turns_a_models_default_off(capsys):
    """arith-mdm decodes with its template by default; `--no-template` decodes the bare canvas instead, the
    same tokens as naming the default's other options without it."""
    prompt = ("generate", "--model", "arith-mdm", "--prompt", "sum: 47 3 91 12", "--json")
    fast = ("--strategy", "threshold", "--threshold", "0.9", "--confidence", "entropy", "--cache", "dual")
    records = []
    for flags in (("--no-template",), fast, ("--template",), fast + ("--template",)):
        code, out, _ = run(capsys, *prompt, *flags)
        assert code == 0
        records.append(json.loads(out))
    assert records[0]["token_ids"] == records[1]["token_ids"] and records[0]["nfe"] == records[1]["nfe"]
    assert records[2] == {**records[3], "seconds": records[2]["seconds"],
                          "tokens_per_second": records[2]["tokens_per_second"]}


def test_generate_plain_text(capsys, mdm_dir):
    """Without --json the prompt and completion go to stdout, the speed line to stderr."""
    code, out, err = run(capsys, "generate", "--model", mdm_dir, "--prompt", "sort: 3 1", "--max-new-tokens", "8")
    assert code == 0
    assert out.startswith("sort: 3 1\n")
    assert "forward passes" in err


def test_eval_json(capsys, mdm_dir):
    """`eval --json --limit 4` prints one JSON object with the documented fields."""
    code, out, _ = run(capsys, "eval", "--model", mdm_dir, "--json", "--limit", "4")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for key in ("task", "model", "strategy", "n", "accuracy", "nfe_mean", "tokens_per_forward",
                "tokens_per_second", "seconds"):
        assert key in result, key
    assert result["task"] == "sort" and result["strategy"] == "threshold" and result["n"] == 4  # the default
    assert 0 <= result["accuracy"] <= 1
    assert result["nfe_mean"] > 0 and result["tokens_per_forward"] > 0 and result["seconds"] > 0
    assert "outputs" not in result


def test_train_command_writes_a_model(capsys, tmp_path):
    """`train --recipe tiny-sort-ar --max-steps 2` trains, reports on stderr and leaves a loadable folder."""
    import unmask

    code, out, err = run(capsys, "train", "--recipe", "tiny-sort-ar", "--max-steps", "2", "--out", str(tmp_path))
    assert code == 0, err
    assert "to step 2" in err and "held-out loss" in err
    assert unmask.load_model(tmp_path).meta["train_steps"] == 2
    code, _, err = run(capsys, "train", "--recipe", "tiny-sort-ar", "--max-steps", "0", "--out", str(tmp_path))
    assert_user_error(code, err, "train")


def test_train_init_starts_a_second_stage(capsys, tmp_path):
    """`train --init FOLDER` starts from that model and records it; an init that does not exist is refused."""
    import unmask

    run(capsys, "train", "--recipe", "tiny-sort-ar", "--max-steps", "2", "--out", str(tmp_path / "first"))
    code, _, err = run(capsys, "train", "--recipe", "tiny-sort-ar", "--max-steps", "1", "--init",
                       str(tmp_path / "first"), "--out", str(tmp_path / "second"))
    assert code == 0, err
    assert unmask.load_model(tmp_path / "second").meta["init"] == str(tmp_path / "first")
    code, _, err = run(capsys, "train", "--recipe", "tiny-sort-ar", "--max-steps", "1", "--init",
                       str(tmp_path / "missing"), "--out", str(tmp_path / "third"))
    assert_user_error(code, err, "train")
    assert not (tmp_path / "third" / "model.safetensors").exists()


def test_eval_json_ar(capsys, ar_dir):
    """`eval` of an AR model defaults to the 'ar' strategy."""
    code, out, _ = run(capsys, "eval", "--model", ar_dir, "--json", "--limit", "2")
    result = json.loads(out)
    assert code == 0 and result["strategy"] == "ar" and result["n"] == 2


def test_models_json(capsys, tmp_path, monkeypatch):
    """`models --json` prints a JSON list of the bundled models (here a temporary bundle)."""
    monkeypatch.setattr(checkpoints, "BUNDLED_DIR", tmp_path)
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and json.loads(out) == []
    from conftest import random_model
    from unmask.tokenizers import CharTokenizer

    checkpoints.save_model(random_model("ar"), CharTokenizer(), tmp_path / "tiny", {"task": "sort", "params": 5})
    code, out, _ = run(capsys, "models", "--json")
    listed = json.loads(out)
    assert code == 0 and isinstance(listed, list)
    assert [(m["name"], m["kind"], m["task"], m["params"], m["path"]) for m in listed] == [
        ("tiny", "ar", "sort", 5, str(tmp_path / "tiny"))]


def test_real_process_exit_code_and_stderr():
    """The installed entry point itself: a user mistake exits 2 with one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "unmask.cli", "generate", "--model", "no-such-model",
                           "--prompt", "x"], capture_output=True, text=True, timeout=60)
    assert_user_error(proc.returncode, proc.stderr, "generate")
    assert proc.stdout == ""


def test_bad_threads(capsys, mdm_dir):
    code, _, err = run(capsys, "eval", "--model", mdm_dir, "--threads", "0", "--json")
    assert_user_error(code, err, "eval")
    assert "--threads" in err


def test_eval_validation_split(capsys, mdm_dir):
    """`--split validation` scores fresh training-distribution examples, not the held-out ones."""
    code, out, _ = run(capsys, "eval", "--model", mdm_dir, "--json", "--limit", "3", "--split", "validation")
    assert code == 0
    result = json.loads(out)
    assert result["split"] == "validation" and result["n"] == 3


def test_early_commit_flags(capsys, mdm_dir):
    base = ("generate", "--model", mdm_dir, "--prompt", "sort: 3 1", "--json", "--strategy", "low_confidence")
    code, out, _ = run(capsys, *base, "--early-commit", "5", "--early-commit-pool", "min")
    assert code == 0 and "[MASK]" not in json.loads(out)["text"]
    code, _, err = run(capsys, *base, "--early-commit-pool", "min")
    assert_user_error(code, err, "generate")
    assert "--early-commit" in err
    code, _, err = run(capsys, *base, "--early-commit", "5,4")
    assert_user_error(code, err, "generate")


def test_d2f_flags_reach_the_pipeline(capsys):
    """--add/--activate/--threshold set the D2F pipeline's tau_add/tau_act/tau_conf: the CLI returns what
    `unmask.generate` returns with those options, and --add alone picks strategy d2f."""
    import torch

    import unmask
    from unmask.evaluation import prompt_for

    model = unmask.load_model("sort-d2f")
    prompt = "sort: 47 3 91 12 8 60 5"
    ids, max_new = prompt_for(model, prompt)
    for flags, options in ((("--add", "0.5", "--activate", "0.99", "--threshold", "0.6"),
                            {"add": 0.5, "activate": 0.99, "threshold": 0.6}),
                           (("--add", "0.9"), {"add": 0.9})):
        code, out, _ = run(capsys, "generate", "--model", "sort-d2f", "--prompt", prompt, "--json", *flags)
        assert code == 0
        want = unmask.generate(model, torch.tensor([ids]), strategy="d2f", max_new_tokens=max_new, **options)
        got = json.loads(out)
        assert got["token_ids"] == want.sequences[0] and got["nfe"] == want.nfe
    code, _, err = run(capsys, "generate", "--model", "sort-d2f", "--prompt", prompt, "--strategy", "threshold",
                       "--add", "0.5")
    assert_user_error(code, err, "generate")
    code, _, err = run(capsys, "generate", "--model", "sort-d2f", "--prompt", prompt, "--activate", "0")
    assert_user_error(code, err, "generate")


def test_generate_warns_on_a_prompt_outside_the_training_task(capsys):
    from unmask.cli import main

    assert main(["generate", "--model", "sort-ar", "--prompt", "sort: 31 7 18"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning:") and "has 3 numbers; this model was trained on 4 to" in err
    assert main(["generate", "--model", "sort-ar", "--prompt", "sort: 31 7 18 999"]) == 0
    assert "above 99" in capsys.readouterr().err
    assert main(["generate", "--model", "sort-ar", "--prompt", "sort: 31 7 18 2"]) == 0
    assert "warning" not in capsys.readouterr().err
