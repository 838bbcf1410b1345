"""Attention rules of each model kind, and that padding is never attended."""
from __future__ import annotations

import pytest
import torch

from conftest import left_pad, random_model, random_prompt
from unmask.config import ModelConfig
from unmask.models.transformer import attention_mask

L = 12


def logits_after_change(model, pos: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = random_prompt(L, seed=seed)
    y = x.clone()
    y[0, pos] = 4 + (int(x[0, pos]) - 4 + 17) % 96  # a different ordinary token
    with torch.no_grad():
        return model(x)[0], model(y)[0]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(dim=-1)  # per position


@pytest.mark.parametrize("pos", [3, 7, 11])
def test_causal_future_token_never_changes_the_past(pos):
    """Causal (AR) model: logits before `pos` ignore token `pos`; logits from `pos` on depend on it."""
    a, b = logits_after_change(random_model("ar"), pos)
    d = max_diff(a, b)
    assert torch.allclose(a[:pos], b[:pos], atol=1e-6, rtol=0)
    assert bool((d[pos:] > 1e-3).all()), d


@pytest.mark.parametrize("pos", [1, 5, 10])
def test_block_causal_sees_own_and_earlier_blocks_only(pos):
    """Block-diffusion (block 4): a token in block j changes nothing in blocks < j, everything in blocks >= j."""
    model = random_model("block-diffusion")
    a, b = logits_after_change(model, pos)
    d = max_diff(a, b)
    first = (pos // 4) * 4
    assert torch.allclose(a[:first], b[:first], atol=1e-6, rtol=0)
    assert bool((d[first:] > 1e-3).all()), d  # includes earlier tokens of the same block


@pytest.mark.parametrize("pos", [0, 6, 11])
def test_bidirectional_every_position_sees_every_token(pos):
    """Diffusion model: changing any token changes the logits of every position, earlier ones included."""
    a, b = logits_after_change(random_model("diffusion"), pos)
    assert bool((max_diff(a, b) > 1e-3).all())


def test_attention_mask_rules():
    """The boolean mask follows each kind's rule on RoPE positions; padded keys are hidden."""
    pos = torch.arange(8)[None]
    causal = attention_mask("causal", pos, pos, None)[0, 0]
    assert torch.equal(causal, torch.tril(torch.ones(8, 8, dtype=torch.bool)))
    block = attention_mask("block-causal", pos, pos, None, block_size=3)[0, 0]
    for i in range(8):
        for j in range(8):
            assert bool(block[i, j]) == (j // 3 <= i // 3)
    assert attention_mask("bidirectional", pos, pos, None) is None
    assert attention_mask("bidirectional", pos, pos, torch.ones(1, 8, dtype=torch.bool)) is None
    with pytest.raises(ValueError):
        attention_mask("sideways", pos, pos, None)


@pytest.mark.parametrize("kind", ["bidirectional", "causal", "block-causal"])
def test_attention_mask_hides_padding_keys(kind):
    """No real query ever attends a padding key; a padding query sees at least itself."""
    valid = torch.tensor([[False, False, True, True, True, True, True]])
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    m = attention_mask(kind, pos, pos, valid, block_size=2)[0, 0]
    assert not bool(m[2:, :2].any())
    assert bool(m.any(dim=1).all())
    assert bool(m[2:, 2].all()), "every real query sees the first real token"


@pytest.mark.parametrize("kind", ["diffusion", "ar", "block-diffusion"])
def test_padding_is_invisible_to_real_tokens(kind):
    """A left-padded row gives the same logits as its prompt alone, whatever the padding ids are."""
    model = random_model(kind)
    short, long = random_prompt(5, seed=1)[0], random_prompt(9, seed=2)[0]
    ids, mask = left_pad([short, long])
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        padded = model(ids, pos, valid=mask)
        alone = model(short[None])
        junk = ids.clone()
        junk[0, :4] = torch.tensor([50, 60, 70, 80])
        padded_junk = model(junk, pos, valid=mask)
        full = model(long[None])
    assert torch.allclose(padded[0, 4:], alone[0], atol=1e-5)
    assert torch.allclose(padded_junk[0, 4:], padded[0, 4:], atol=1e-6)
    assert torch.allclose(padded[1], full[0], atol=1e-5)


def test_forward_rejects_positions_beyond_context():
    """Asking for a position past max_seq_len is a clear ValueError, not an index error."""
    model = random_model("diffusion", max_seq_len=16)
    with pytest.raises(ValueError, match="context"):
        model(torch.ones(1, 17, dtype=torch.long))


def test_config_validation():
    """Bad shapes and kinds are refused when the config is built."""
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=10, dim=30, n_heads=4)
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=10, kind="block-diffusion")
    with pytest.raises(ValueError):
        ModelConfig(vocab_size=10, kind="encoder")
    cfg = ModelConfig(vocab_size=10, dim=32, n_heads=4, kind="ar")
    assert ModelConfig.from_dict({**cfg.to_dict(), "unknown": 1}) == cfg
    assert cfg.attention == "causal" and cfg.n_kv_heads == 4
