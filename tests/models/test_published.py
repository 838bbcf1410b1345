"""Published checkpoints (LLaDA, Dream) load onto our Transformer and match their reference code.

The folders under tests/data/reference were written by the models' own modeling code
(random weights); their README gives the agreement expected: logits within 1e-4, tokens identical.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import unmask

REFERENCE = Path(__file__).resolve().parent.parent / "data" / "reference"
FOLDERS = ["llada-tiny", "llada-tiny-gqa", "dream-tiny"]


@pytest.mark.parametrize("name", FOLDERS)
def test_logits_match_reference(name: str) -> None:
    model = unmask.load_model(REFERENCE / name)
    ref = load_file(REFERENCE / name / "reference.safetensors")
    logits = model(ref["input_ids"])
    assert logits.shape == ref["logits"].shape
    assert torch.allclose(logits, ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llada-tiny", "llada-tiny-gqa"])
def test_low_confidence_reproduces_llada_generate(name: str) -> None:
    model = unmask.load_model(REFERENCE / name)
    recorded = json.loads((REFERENCE / name / "reference_generate.json").read_text())
    prompt = torch.tensor([recorded.pop("prompt")])
    assert recorded, "the reference file holds no sequences"
    for key, expected in recorded.items():
        gen, rest = key.removeprefix("llada_low_confidence_gen").split("_block")
        block, steps = rest.split("_steps")
        out = unmask.generate(model, prompt, strategy="low_confidence", max_new_tokens=int(gen),
                              block_size=int(block), steps=int(steps), temperature=0, stop_at_eos=False)
        assert out.token_ids[0].tolist() == expected, key


def test_special_ids_come_from_config() -> None:
    model = unmask.load_model(REFERENCE / "dream-tiny")
    assert (model.mask_token_id, model.eos_token_id, model.pad_token_id) == (127, 126, 125)
    assert model.config.logits_shift


def test_sharded_folder_loads_the_same(tmp_path: Path) -> None:
    src = REFERENCE / "llada-tiny"
    state = load_file(src / "model.safetensors")
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for shard, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(src / "config.json", tmp_path / "config.json")
    ids = load_file(src / "reference.safetensors")["input_ids"]
    assert torch.equal(unmask.load_model(tmp_path)(ids), unmask.load_model(src)(ids))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    src = REFERENCE / "llada-tiny"
    state = load_file(src / "model.safetensors")
    state.pop("model.transformer.ln_f.weight")
    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(src / "config.json", tmp_path / "config.json")
    with pytest.raises(ValueError, match="norm.weight"):
        unmask.load_model(tmp_path)


def test_unknown_architecture_is_refused(tmp_path: Path) -> None:
    config = json.loads((REFERENCE / "llada-tiny" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    with pytest.raises(ValueError, match="unsupported architecture 'mamba'"):
        unmask.load_model(tmp_path)
