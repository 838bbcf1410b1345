"""Shared fixtures: random-weight models of every kind (a continuous one too) and tiny models trained once per session.

The suite must stay light on CPU: one thread, tiny shapes, tiny recipes.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch
import torch.nn as nn

import unmask
from unmask.config import ModelConfig
from unmask.models.checkpoints import attach
from unmask.models.flow import FlowTransformer
from unmask.models.transformer import Transformer
from unmask.tokenizers import CharTokenizer

torch.set_num_threads(1)

MASK, EOS, PAD = 1, 2, 0
VOCAB = 100


def random_model(kind: str = "diffusion", *, seed: int = 0, std: float = 0.2, never_mask: bool = True,
                 **overrides) -> Transformer:
    """A small random Transformer in eval mode with tokenizer and special ids attached.

    Weights are drawn with a larger std than the training init so logits (and confidences)
    are well separated: greedy decoding is then insensitive to float round-off.
    never_mask: zero the [MASK] row of the output head, so (like a trained model) it never
    proposes the mask id: its logit is 0 while the best of 99 others is far above.
    """
    fields = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, kind=kind, max_seq_len=128,
                  mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)
    if kind == "block-diffusion":
        fields["block_size"] = 4
    fields.update(overrides)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**fields))
    if std is not None:
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=std)
    if never_mask:
        with torch.no_grad():
            model.head.weight[fields["mask_token_id"]] = 0.0
    return attach(model.eval(), CharTokenizer(), name=f"random-{kind}", meta={"task": "sort"})


def random_prompt(length: int, *, seed: int, batch: int = 1, low: int = 4) -> torch.Tensor:
    """Prompt ids `# (batch, length)` avoiding the special ids (0..3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, VOCAB, (batch, length), generator=g)


def left_pad(rows: list[torch.Tensor], pad_id: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D prompts as one left-padded batch and its validity mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return ids, mask


@pytest.fixture(scope="session")
def trained_mdm(tmp_path_factory):
    """(folder, TrainResult) of tiny-sort-mdm trained straight through its 20 steps."""
    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    folder = tmp_path_factory.mktemp("tiny-sort-mdm")
    return folder, train(get_recipe("tiny-sort-mdm"), folder, progress=False)


@pytest.fixture(scope="session")
def trained_ar(tmp_path_factory):
    """(folder, TrainResult) of tiny-sort-ar trained straight through its 20 steps."""
    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    folder = tmp_path_factory.mktemp("tiny-sort-ar")
    return folder, train(get_recipe("tiny-sort-ar"), folder, progress=False)


@pytest.fixture(scope="session")
def mdm_model(trained_mdm):
    return unmask.load_model(trained_mdm[0])


@pytest.fixture(scope="session")
def ar_model(trained_ar):
    return unmask.load_model(trained_ar[0])


def random_flow(seed: int = 0, std: float = 0.2, **overrides) -> FlowTransformer:
    """A small random continuous model in eval mode (weights wider than the training init, so its predictions
    are well separated and decoding is insensitive to float round-off)."""
    tok = CharTokenizer()  # a character model: the text tests decode what it writes
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


@pytest.fixture
def narrow_flow_model() -> FlowTransformer:
    """A random continuous model whose diffusion space (8 dims) is narrower than the network (32)."""
    return random_flow(embed_dim=8)


@pytest.fixture(scope="session")
def trained_flow(tmp_path_factory):
    """(folder, TrainResult) of tiny-shakespeare-flow trained straight through its 20 steps."""
    from unmask.train.loop import train
    from unmask.train.recipes import get_recipe

    folder = tmp_path_factory.mktemp("tiny-shakespeare-flow")
    return folder, train(get_recipe("tiny-shakespeare-flow"), folder, progress=False)
