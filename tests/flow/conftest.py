"""A random continuous model, and a tiny one trained once per session."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import unmask
from unmask.config import ModelConfig
from unmask.models.checkpoints import attach
from unmask.models.flow import FlowTransformer
from unmask.tokenizers import CharTokenizer

MASK, EOS, PAD = 1, 2, 0


def random_flow(seed: int = 0, std: float = 0.2, **overrides) -> FlowTransformer:
    """A small random continuous model in eval mode (weights wider than the training init, so its predictions
    are well separated and decoding is insensitive to float round-off)."""
    tok = CharTokenizer()
    fields = dict(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, kind="continuous", max_seq_len=128,
                  mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
    fields.update(overrides)
    torch.manual_seed(seed)
    model = FlowTransformer(ModelConfig(**fields))
    for mod in model.modules():
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            nn.init.normal_(mod.weight, std=std)
    return attach(model.eval(), tok, name="random-flow", meta={"task": "shakespeare"})


@pytest.fixture
def flow_model() -> FlowTransformer:
    return random_flow()


@pytest.fixture(scope="session")
def trained_flow(tmp_path_factory):
    """(folder, TrainResult) of tiny-shakespeare-flow trained straight through its 20 steps."""
    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    folder = tmp_path_factory.mktemp("tiny-shakespeare-flow")
    return folder, train(get_recipe("tiny-shakespeare-flow"), folder, progress=False)


@pytest.fixture(scope="session")
def flow_trained_model(trained_flow):
    return unmask.load_model(trained_flow[0])
