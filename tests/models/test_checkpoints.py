"""Model folders: save/load round trip, name resolution and the bundled-model listing."""
from __future__ import annotations

import json

import pytest
import torch

import unmask
from conftest import random_model, random_prompt
from unmask.models import checkpoints
from unmask.models.checkpoints import ModelNotFound, bundled_models, resolve, save_model
from unmask.tokenizers import CharTokenizer


@pytest.mark.parametrize("kind, tied", [("diffusion", False), ("ar", False), ("block-diffusion", False),
                                        ("diffusion", True)])
def test_save_then_load_is_identical(tmp_path, kind, tied):
    """A saved folder loads back with the same weights, config, special ids and logits."""
    model = random_model(kind, seed=4, tie_embeddings=tied)
    save_model(model, CharTokenizer(), tmp_path, {"task": "sort", "params": 123})
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    loaded = unmask.load_model(tmp_path)
    assert not loaded.training
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if tied:
        assert loaded.head.weight is loaded.embed.weight
    x = random_prompt(10, seed=1, batch=2)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert (loaded.mask_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 0)
    assert loaded.task == "sort" and loaded.meta["params"] == 123
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("sort: 3 1")) == "sort: 3 1"


def test_trained_folder_loads_and_generates(mdm_model, trained_mdm):
    """A folder written by training loads with its task and tokenizer and decodes text."""
    assert mdm_model.task == "sort" and mdm_model.config.kind == "diffusion"
    meta = json.loads((trained_mdm[0] / "config.json").read_text())
    assert meta["format"] == "unmask" and meta["recipe"] == "tiny-sort-mdm" and meta["train_steps"] == 20
    tok = mdm_model.tokenizer
    ids = torch.tensor([tok.encode("sort: 3 1") + [tok.sep_token_id]])
    out = unmask.generate(mdm_model, ids, max_new_tokens=8)
    assert isinstance(tok.decode(out.sequences[0]), str)


def test_unknown_model_name_is_a_clear_error(tmp_path):
    """A name that is neither bundled nor a model folder raises ModelNotFound (a ValueError)."""
    with pytest.raises(ModelNotFound, match="no model named"):
        unmask.load_model("definitely-not-a-model")
    with pytest.raises(ValueError):
        unmask.load_model(tmp_path)  # exists, but has no config.json


def test_bundled_models_lists_folders(tmp_path, monkeypatch):
    """bundled_models() lists every folder with a config in the bundled directory; names resolve."""
    monkeypatch.setattr(checkpoints, "BUNDLED_DIR", tmp_path)
    assert bundled_models() == []
    save_model(random_model("ar"), CharTokenizer(), tmp_path / "b-model", {"task": "sort", "params": 7})
    save_model(random_model("diffusion"), CharTokenizer(), tmp_path / "a-model", {"task": "shakespeare"})
    (tmp_path / "not-a-model").mkdir()
    infos = bundled_models()
    assert [m.name for m in infos] == ["a-model", "b-model"]
    assert (infos[0].kind, infos[0].task, infos[0].params) == ("diffusion", "shakespeare", 0)
    assert (infos[1].kind, infos[1].task, infos[1].params) == ("ar", "sort", 7)
    assert resolve("b-model") == tmp_path / "b-model"
    assert unmask.load_model("b-model").config.kind == "ar"
    with pytest.raises(ModelNotFound, match="a-model, b-model"):
        resolve("c-model")


def test_char_tokenizer_round_trip_and_errors():
    """Text round-trips; special ids are dropped on decode (a mask shows as '_'); unknown chars fail."""
    tok = CharTokenizer()
    text = "To be, or not to be?\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode([tok.pad_token_id, tok.mask_token_id, tok.eos_token_id, tok.sep_token_id]) == "_"
    with pytest.raises(ValueError, match="not in this model's vocabulary"):
        tok.encode("café")


def test_a_temporary_file_left_by_a_killed_writer_is_removed_by_the_next_save(tmp_path):
    dead = tmp_path / ".model.safetensors.999999999.x1y2"  # no such pid
    live = tmp_path / f".model.safetensors.{1}.a1b2"  # pid 1 exists: a writer still at work
    dead.write_bytes(b"half a checkpoint")
    live.write_bytes(b"in progress")
    save_model(random_model("ar", seed=1), CharTokenizer(), tmp_path)
    assert not dead.exists() and live.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".config.json.")]


@pytest.mark.parametrize("breakage, message", [
    (lambda folder: (folder / "config.json").write_text(json.dumps({"format": "unmask"})), "no 'model' section"),
    (lambda folder: (folder / "config.json").write_text("{not json"), "is not valid JSON"),
    (lambda folder: save_model(random_model("ar", seed=1, dim=48), CharTokenizer(), folder.parent / "other")
     or (folder / "model.safetensors").write_bytes((folder.parent / "other" / "model.safetensors").read_bytes()),
     "does not fit"),
])
def test_a_broken_folder_is_one_sentence_not_a_traceback(tmp_path, breakage, message, capsys):
    folder = tmp_path / "m"
    save_model(random_model("ar", seed=1), CharTokenizer(), folder)
    breakage(folder)
    with pytest.raises(ValueError, match=message) as err:
        unmask.load_model(folder)
    assert "\n" not in str(err.value)
    from unmask.cli import main
    assert main(["generate", "--model", str(folder), "--prompt", "sort: 3 1"]) == 2
    assert message in capsys.readouterr().err
