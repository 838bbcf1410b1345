"""Distillation objectives: a student learns from a frozen teacher's predictions on noisy sequences.

d2f   (Discrete Diffusion Forcing) a block-causal student matches a bidirectional teacher given the
      same noisy sequence, whose per-block mask ratios grow along the answer: the states pipelined
      decoding meets, where earlier blocks are further along than later ones.
sdtt  (self-distillation through time) a student learns in one denoising step what the teacher does
      in two: the teacher commits its `step_tokens` surest masked tokens of the current block, looks
      again, and the student matches both looks at once. Each round doubles the step.
Both may add a data term (`ce_weight`): the student's cross-entropy to the true tokens where it is taught.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unmask.data.batch import Batch
from unmask.train.objectives import mask_tokens


def masked_kl(student_logits: torch.Tensor, teacher_logp: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) averaged over the positions in `where` `# (B, L)`; logits `# (B, L, V)`."""
    if not bool(where.any()):
        return student_logits.sum() * 0  # keeps the graph: a step with nothing to learn
    student_logp = F.log_softmax(student_logits[where].float(), dim=-1)  # (N, V)
    return F.kl_div(student_logp, teacher_logp[where], log_target=True, reduction="batchmean")


def with_data_term(student_logits: torch.Tensor, teacher_logp: torch.Tensor, where: torch.Tensor,
                   truth: torch.Tensor, ce_weight: float) -> torch.Tensor:
    """masked_kl, plus ce_weight times the student's cross-entropy to the true tokens `# (B, L)` there."""
    loss = masked_kl(student_logits, teacher_logp, where)
    if ce_weight and bool(where.any()):
        loss = loss + ce_weight * F.cross_entropy(student_logits[where].float(), truth[where])
    return loss


def answer_blocks(batch: Batch, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's block counted from its row's first answer token (-1 before it) `# (B, L)`,
    and each row's number of answer blocks `# (B,)`."""
    B, L = batch.ids.shape
    first = batch.target.float().argmax(dim=1)  # (B,)
    n_answer = batch.target.sum(dim=1)  # (B,)
    offset = torch.arange(L)[None, :] - first[:, None]  # (B, L)
    block = torch.where(offset >= 0, torch.div(offset, block_size, rounding_mode="floor"), -1)
    return block, torch.div(n_answer + block_size - 1, block_size, rounding_mode="floor")


def monotone_block_ratios(n_rows: int, n_blocks: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mask ratios `# (B, n_blocks)`, non-decreasing along each row: the first block's ~ U(0, 1), so a
    frontier block is seen at every stage, and the later ones sorted draws between it and 1."""
    first = torch.rand(n_rows, 1, generator=generator)
    later = torch.rand(n_rows, max(n_blocks - 1, 0), generator=generator).sort(dim=1).values
    return torch.cat([first, first + (1 - first) * later], dim=1)


def monotone_state(batch: Batch, mask_id: int, block_size: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """A state of pipelined decoding: the answer's blocks masked at monotone ratios (`monotone_block_ratios`).

    Returns (noisy ids `# (B, L)`, masked `# (B, L)`).
    """
    block, n_blocks = answer_blocks(batch, block_size)
    nb = int(n_blocks.max())
    ratios = monotone_block_ratios(batch.ids.shape[0], nb, generator)  # (B, nb)
    t = ratios.gather(1, block.clamp(0, nb - 1))  # (B, L); prompt and padding are never masked anyway
    return mask_tokens(batch, mask_id, t, generator)


def d2f_loss(student: torch.nn.Module, teacher: torch.nn.Module, batch: Batch, mask_id: int, block_size: int,
             generator: torch.Generator | None = None, ce_weight: float = 0.0) -> torch.Tensor:
    """D2F asymmetric distillation. The student's attention (block-causal) is its config's; the
    teacher sees the same noisy sequence with its own full attention.

    ce_weight > 0 adds the student's cross-entropy to the true tokens on the same masked positions: the
    teacher's answers are not always right, and the data term lets the student be right where it is not."""
    noisy, masked = monotone_state(batch, mask_id, block_size, generator)
    with torch.no_grad():
        teacher_logp = F.log_softmax(teacher(noisy, valid=batch.valid).float(), dim=-1)  # (B, L, V)
    return with_data_term(student(noisy, valid=batch.valid), teacher_logp, masked, batch.ids, ce_weight)


def semi_ar_state(batch: Batch, mask_id: int, block_size: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A state of block-by-block decoding: per row a random current block, earlier answer blocks clean,
    later ones all [MASK], the current one masked at a ratio ~ U(0, 1) (at least one position).

    Returns (noisy ids `# (B, L)`, the current block's masked positions `# (B, L)`).
    """
    block, n_blocks = answer_blocks(batch, block_size)
    B, L = batch.ids.shape
    current = (torch.rand(B, generator=generator) * n_blocks).long().clamp(max=n_blocks - 1)  # (B,)
    in_block = (block == current[:, None]) & batch.target
    ratio = torch.rand(B, 1, generator=generator)
    open_ = in_block & (torch.rand(B, L, generator=generator) < ratio)
    # a row left with nothing masked gets one random position of its block masked
    pick = torch.rand(B, L, generator=generator).masked_fill(~in_block, -1.0).argmax(dim=1)  # (B,)
    forced = torch.zeros_like(open_).scatter_(1, pick[:, None], True) & in_block
    open_ = torch.where(open_.any(dim=1, keepdim=True), open_, forced)
    later = (block > current[:, None]) & batch.target
    noisy = torch.where(open_ | later, torch.full_like(batch.ids, mask_id), batch.ids)
    return noisy, open_


@torch.no_grad()
def two_step_targets(teacher: torch.nn.Module, noisy: torch.Tensor, open_: torch.Tensor, valid: torch.Tensor,
                     step_tokens: int) -> torch.Tensor:
    """The teacher's log-probabilities `# (B, L, V)` after two low-confidence steps from `noisy`: its
    first look where the first step committed, its second look everywhere else."""
    first = F.log_softmax(teacher(noisy, valid=valid).float(), dim=-1)  # (B, L, V)
    conf, guess = first.max(dim=-1)  # (B, L)
    conf = conf.masked_fill(~open_, float("-inf"))
    n = open_.sum(dim=1).clamp(max=step_tokens)  # (B,)
    rank = conf.argsort(dim=1, descending=True).argsort(dim=1)  # each position's rank by confidence
    commit = open_ & (rank < n[:, None])
    second = F.log_softmax(teacher(torch.where(commit, guess, noisy), valid=valid).float(), dim=-1)
    return torch.where(commit[..., None], first, second)


def sdtt_loss(student: torch.nn.Module, teacher: torch.nn.Module, batch: Batch, mask_id: int, block_size: int,
              step_tokens: int, generator: torch.Generator | None = None, ce_weight: float = 0.0) -> torch.Tensor:
    """Self-distillation through time for block-by-block low-confidence decoding: KL to the teacher's
    two-step result on the current block's masked positions, from one student look (plus, with
    ce_weight > 0, the data term d2f_loss describes)."""
    noisy, open_ = semi_ar_state(batch, mask_id, block_size, generator)
    target = two_step_targets(teacher, noisy, open_, batch.valid, step_tokens)
    return with_data_term(student(noisy, valid=batch.valid), target, open_, batch.ids, ce_weight)
