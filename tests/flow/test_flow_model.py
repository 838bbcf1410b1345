"""The continuous model: its inputs, its skip term, its noise schedule."""
from __future__ import annotations

import math

import pytest
import torch

from unmask.config import ModelConfig
from unmask.models.checkpoints import load_model, save_model
from unmask.models.flow import FlowInputs
from unmask.models.noise_schedule import GumbelSchedule, alpha_sigma


def test_at_low_noise_the_skip_term_reads_the_token_back(flow_model) -> None:
    """At g_min the prediction is exact by construction, whatever the network's weights."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, flow_model.config.vocab_size, (3, 20), generator=gen)
    alpha, sigma = alpha_sigma(torch.tensor(flow_model.config.g_min))
    z = alpha * flow_model.embeddings()[ids] + sigma * torch.randn(3, 20, 32, generator=gen)
    with torch.no_grad():
        logits = flow_model(ids, flow=FlowInputs(z, torch.full((3, 20), flow_model.config.g_min)))
    assert torch.equal(logits.argmax(-1), ids)


def test_clean_positions_read_their_ids_and_noisy_ones_their_inputs(flow_model) -> None:
    ids = torch.tensor([[5, 6, 7, 8]])
    z = torch.randn(1, 4, 32)
    g = torch.tensor([[-math.inf, -math.inf, 0.0, 0.0]])
    other_ids = torch.tensor([[5, 6, 9, 10]])  # differs only at the noisy positions
    with torch.no_grad():
        a = flow_model(ids, flow=FlowInputs(z, g))
        b = flow_model(other_ids, flow=FlowInputs(z, g))
        c = flow_model(torch.tensor([[5, 11, 7, 8]]), flow=FlowInputs(z, g))  # a clean id changed
    assert torch.allclose(a, b)  # a noisy position's id is never read
    assert not torch.allclose(a[:, 2:], c[:, 2:])  # the prompt conditions the rest


def test_plain_forward_reads_masks_as_pure_noise(flow_model) -> None:
    ids = torch.tensor([[5, 6, 1, 1]])
    with torch.no_grad():
        plain = flow_model(ids)
        explicit = flow_model(ids, flow=FlowInputs(torch.zeros(1, 4, 32), torch.tensor([[-math.inf, -math.inf, 10.0,
                                                                                            10.0]])))
    assert plain.shape == (1, 4, flow_model.config.vocab_size)
    assert torch.allclose(plain, explicit)


def test_embeddings_have_norm_sqrt_d(flow_model) -> None:
    norms = flow_model.embeddings().norm(dim=1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(32)), atol=1e-4)


def test_gumbel_schedule_is_monotone_clamped_and_its_cdf_inverts_it() -> None:
    schedule = GumbelSchedule(-10.0, 10.0)
    t = torch.linspace(0, 1, 101)
    with torch.no_grad():
        g = schedule(t)
        assert bool((g[1:] >= g[:-1]).all()) and float(g.min()) >= -10.0 and float(g.max()) == 10.0
        inside = (g > -10) & (g < 10)
        assert torch.allclose(schedule.cdf(g[inside]), t[inside], atol=1e-4)


def test_the_schedule_fit_moves_its_cdf_towards_the_loss_curve() -> None:
    """Fitted to a cross-entropy that rises around g = 3, the schedule's median moves there."""
    schedule = GumbelSchedule(-10.0, 10.0)
    opt = torch.optim.Adam(schedule.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    for _ in range(400):
        g = schedule(torch.rand(64, generator=gen)).detach()
        ce = 4.0 * torch.sigmoid(g - 3.0)  # the loss curve: half its height at g = 3
        opt.zero_grad()
        schedule.fit_loss(g, ce).backward()
        opt.step()
    with torch.no_grad():
        median = float(schedule(torch.tensor(0.5)))
    assert abs(median - 3.0) < 1.0


def test_a_narrow_diffusion_space_has_its_own_table_and_reads_tokens_back(narrow_flow_model) -> None:
    """embed_dim 8 under dim 32: the table, the noise and the skip term live in 8 dims; the network in 32."""
    model = narrow_flow_model
    table = model.embeddings()
    assert table.shape == (model.config.vocab_size, 8)
    assert torch.allclose(table.norm(dim=1), torch.full((model.config.vocab_size,), math.sqrt(8)), atol=1e-4)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (3, 20), generator=gen)
    alpha, sigma = alpha_sigma(torch.tensor(model.config.g_min))
    z = alpha * table[ids] + sigma * torch.randn(3, 20, 8, generator=gen)
    with torch.no_grad():
        logits = model(ids, flow=FlowInputs(z, torch.full((3, 20), model.config.g_min)))
        plain = model(torch.tensor([[5, 6, model.config.mask_token_id]]))  # masks: zeros of the narrow width
    assert torch.equal(logits.argmax(-1), ids)
    assert plain.shape == (1, 3, model.config.vocab_size)


def test_a_narrow_model_saves_and_loads_back(narrow_flow_model, tmp_path) -> None:
    save_model(narrow_flow_model, narrow_flow_model.tokenizer, tmp_path / "narrow", {"task": "shakespeare"})
    back = load_model(tmp_path / "narrow").eval()
    ids = torch.tensor([[5, 6, 7, narrow_flow_model.config.mask_token_id]])
    with torch.no_grad():
        assert torch.equal(back(ids), narrow_flow_model(ids))
    assert back.config.embed_dim == 8


@pytest.mark.parametrize("kind, width", [("diffusion", 8), ("ar", 8), ("continuous", 0)])
def test_embed_dim_is_refused_where_it_means_nothing(kind, width) -> None:
    with pytest.raises(ValueError, match="embed_dim"):
        ModelConfig(vocab_size=10, kind=kind, embed_dim=width)
