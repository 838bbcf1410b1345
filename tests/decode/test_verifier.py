"""AR-verifier guided diffusion: the rule is enforced, every mask is filled, batches equal single rows."""
from __future__ import annotations

import pytest
import torch

import unmask
from conftest import MASK, VOCAB, left_pad, random_model, random_prompt
from unmask.decode.strategies.verifier import Verifier


class FixedAR(torch.nn.Module):
    """An 'AR model' whose next-token distribution puts probability q[j] on whatever token is proposed at j+1."""

    def __init__(self, template):
        super().__init__()
        self.template = template
        self.config, self.mask_token_id = template.config, template.mask_token_id
        self.eos_token_id, self.pad_token_id = template.eos_token_id, template.pad_token_id
        self.q: torch.Tensor | None = None  # (B, T) probability of the token at each position

    def forward(self, ids, positions=None, valid=None):
        B, T = ids.shape
        logits = torch.full((B, T, VOCAB), -30.0)
        nxt = torch.cat([ids[:, 1:], ids[:, -1:]], dim=1)  # the token this position predicts
        q = self.q[:, 1:T + 1] if self.q.shape[1] > T else torch.cat([self.q[:, 1:], self.q[:, -1:]], 1)
        # two-way split: p(next) = q, the rest on one other token
        logits.scatter_(-1, nxt.unsqueeze(-1), torch.log(q).unsqueeze(-1))
        other = (nxt + 1) % VOCAB
        logits.scatter_(-1, other.unsqueeze(-1), torch.log1p(-q.clamp(max=0.999)).unsqueeze(-1))
        return logits


def review(rule: str, q_block: list[float], commit: list[bool], conf: list[float]):
    ar = FixedAR(random_model("ar", seed=0))
    v = Verifier(accept=0.5, verifier_rule=rule)
    P, Lb = 3, len(q_block)
    x = torch.cat([torch.tensor([[10, 11, 12]]), torch.full((1, Lb), MASK)], dim=1)
    ar.q = torch.tensor([[0.9] * P + q_block])
    x0 = torch.arange(20, 20 + Lb)[None]
    c = torch.tensor([conf], dtype=torch.float64)
    draft = x.clone()
    draft[:, P:] = x0
    scores = ar(draft)[:, P - 1:P + Lb - 1]  # (1, Lb, V): the verifier's view of each block position
    keep, new_x0 = v.review(scores, x0, c, torch.tensor([commit]))
    return keep[0].tolist(), new_x0[0].tolist()


def test_prob_rule_rejects_each_unlikely_commit():
    keep, x0 = review("prob", [0.9, 0.2, 0.8, 0.1], [True, True, True, False], [0.9, 0.8, 0.7, 0.6])
    assert keep == [True, False, True, False] and x0 == [20, 21, 22, 23]


def test_first_rule_rejects_from_the_first_unlikely_commit_on():
    keep, _ = review("first", [0.9, 0.2, 0.8, 0.9], [True, True, True, True], [0.9, 0.8, 0.7, 0.6])
    assert keep == [True, False, False, False]


def test_all_rejected_commits_the_verifiers_own_choice_at_the_first_mask():
    """No rejected proposal gets in: the first masked position takes the verifier's argmax instead."""
    keep, x0 = review("prob", [0.1, 0.2, 0.3], [True, True, False], [0.5, 0.8, 0.9])
    assert keep == [True, False, False]
    assert x0[0] == 21  # FixedAR puts the rest of its mass (0.9) on proposal + 1: its own choice


@pytest.fixture(scope="module")
def pair():
    return random_model("diffusion", seed=8), random_model("ar", seed=9, dim=16, n_layers=1)


def test_verifier_decoding_fills_every_mask_and_batches_like_rows(pair):
    mdm, ar = pair
    rows = [random_prompt(n, seed=n)[0] for n in (4, 7)]
    ids, mask = left_pad(rows)
    kw = dict(strategy="verifier", verifier=ar, threshold=0.2, accept=0.05, max_new_tokens=16, block_size=8,
              stop_at_eos=False)
    out = unmask.generate(mdm, ids, prompt_mask=mask, **kw)
    assert not bool((out.token_ids == MASK).any())
    for i, r in enumerate(rows):
        assert torch.equal(out.token_ids[i], unmask.generate(mdm, r[None], **kw).token_ids[0])


def test_a_stricter_verifier_takes_more_steps(pair):
    mdm, ar = pair
    prompt = random_prompt(5, seed=2)
    kw = dict(strategy="verifier", verifier=ar, threshold=0.05, max_new_tokens=16, block_size=16, stop_at_eos=False)
    loose = unmask.generate(mdm, prompt, accept=0.001, **kw)
    strict = unmask.generate(mdm, prompt, accept=0.9, **kw)
    assert strict.nfe > loose.nfe


def test_verifier_options_are_checked(pair):
    mdm, ar = pair
    prompt = random_prompt(5, seed=2)
    with pytest.raises(ValueError, match="unknown verifier_rule 'vote'"):
        unmask.generate(mdm, prompt, strategy="verifier", verifier=ar, verifier_rule="vote")
    with pytest.raises(ValueError, match="must be an autoregressive model"):
        unmask.generate(mdm, prompt, strategy="verifier", verifier=mdm)
    with pytest.raises(ValueError, match="share the model's tokenizer"):
        unmask.generate(mdm, prompt, strategy="verifier", verifier=random_model("ar", vocab_size=50))


def test_verifier_decoding_stops_at_eos(pair):
    """A row whose proposals reach EOS ends there: nothing from the EOS on is returned, batches included."""
    mdm, ar = pair

    class EosAt(torch.nn.Module):  # the dLLM proposes EOS (surely) at one position of row 0
        def __init__(self):
            super().__init__()
            for name in ("config", "tokenizer", "mask_token_id", "eos_token_id", "pad_token_id"):
                setattr(self, name, getattr(mdm, name))

        def forward(self, ids, positions=None, **kw):
            logits = mdm(ids, positions, **kw)
            logits[0][positions[0] == 6, mdm.eos_token_id] += 50.0
            return logits

    prompt = random_prompt(4, seed=3, batch=2)
    out = unmask.generate(EosAt(), prompt, strategy="verifier", verifier=ar, threshold=0.3, accept=1e-6,
                          max_new_tokens=16, block_size=8)
    assert out.lengths[0] == 2 and out.finished[0]
    assert mdm.eos_token_id not in out.token_ids[0].tolist() and not bool((out.token_ids == MASK).any())
