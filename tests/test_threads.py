"""The CPU thread rule: small models on one thread unless the user says otherwise."""
from __future__ import annotations

import pytest
import torch

from unmask.config import ModelConfig
from unmask.models.transformer import Transformer
from unmask.threads import SMALL_MODEL_PARAMS, choose_threads, n_params


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def small_model() -> Transformer:
    model = Transformer(ModelConfig(vocab_size=20, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=64,
                                    max_seq_len=32))
    assert n_params(model) < SMALL_MODEL_PARAMS
    return model


def test_small_model_gets_one_thread(small_model, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    assert choose_threads(small_model) == 1 and torch.get_num_threads() == 1


def test_explicit_request_wins(small_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads(small_model, 2) == 2 and torch.get_num_threads() == 2


def test_user_environment_is_respected(small_model, monkeypatch):
    """OMP_NUM_THREADS set by the user is their choice: the rule leaves torch's count alone."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert choose_threads(small_model) == 2


def test_large_model_keeps_the_default(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    big = Transformer(ModelConfig(vocab_size=100, dim=512, n_layers=4, n_heads=8, n_kv_heads=8, ffn_hidden=1408,
                                  max_seq_len=32))
    assert n_params(big) >= SMALL_MODEL_PARAMS
    assert choose_threads(big) == 2


def test_zero_threads_is_refused(small_model):
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(small_model, 0)
