"""Block decoding of one request: semi-autoregressive blocks, a pluggable step rule, any cache.

The answer is cut into blocks of `block_size`; each step proposes a token for every position of the
current block (LLaDA's Gumbel-max at the request's temperature), the step rule scores the proposals and
picks which to commit, and the block is done when it holds no mask. On top of any rule and cache:
Prophet's early commit (commit every mask the step scored once the answer has settled) and, for the
`verifier` rule, a small AR model that reads the step's draft in the same engine step and vets the commits.

With stop_at_eos the row ends as soon as its committed prefix holds an EOS: everything before it is
final, so the answer is what decoding every block would give, in fewer passes.
"""
from __future__ import annotations

import torch

from unmask.decode.early_commit import EarlyCommit
from unmask.decode.in_place import AnswerExit, answer_layout
from unmask.decode.rows.base import MAIN, Row, Work, final_prefix
from unmask.decode.rows.block_cache import BlockColumns
from unmask.decode.sampling import gumbel_argmax
from unmask.decode.schedule import block_spans, steps_per_block
from unmask.decode.spec import Decoding
from unmask.decode.strategies.base import Strategy
from unmask.decode.window import Window

SCORE, VERIFY, DONE = "score", "verify", "done"


class BlockRow(Row):
    def __init__(self, model: torch.nn.Module, prompt: torch.Tensor, d: Decoding, strategy: Strategy,
                 generator: torch.Generator | None) -> None:
        super().__init__(d.max_new_tokens, model.eos_token_id, d.stop_at_eos)
        cfg = model.config
        self.mask_id = model.mask_token_id
        self.P = prompt.numel()
        self.T, self.spans, self.budgets, model_block = self.layout(cfg, d)
        masks = torch.full((self.T - self.P,), self.mask_id, dtype=torch.long, device=prompt.device)
        ice = answer_layout(model, prompt, d)  # ICE: a template and / or the answer section's place
        if ice is not None and ice.canvas is not None:
            masks = ice.canvas
        self.x = torch.cat([prompt, masks])  # (T,)
        self.answer_exit = AnswerExit(ice, self.P, d.answer_exit, d.answer_exit_pool) if d.answer_exit else None
        self.strategy, self.generator, self.temperature = strategy, generator, d.temperature
        self.top_k, self.top_p = d.top_k, d.top_p
        self.early = EarlyCommit(d.early_commit, d.early_commit_pool) if d.early_commit is not None else None
        self.shift = bool(cfg.logits_shift)
        self.columns = BlockColumns(d.cache, d.refresh_every, self.T, self.shift, model_block, self.mask_id)
        # The attention's block: a flexible family (SDAR, LLaDA2) attends with the request's block length.
        self.attention_block = d.block_size if getattr(cfg, "flexible_blocks", False) else None
        self.verifier = d.verifier_name()
        self.footprint = {MAIN: self.T, **({self.verifier: self.T} if self.verifier else {})}
        self.block, self.step, self.phase = 0, 0, SCORE
        self.steps_used: list[int] = []
        self.verified = 0  # verifier slot columns [0, verified) hold final keys and values
        self.ran: Work | None = None
        self.pending: tuple | None = None  # (x0, conf, commit, window) awaiting the verifier's verdict
        self.begin_block()

    def layout(self, cfg, d: Decoding) -> tuple[int, list[tuple[int, int]], list[int], int | None]:
        """(canvas length, decode blocks [s, e), steps per block, the model's attention block): the answer's
        `max_new_tokens` cut into blocks of `block_size` from the prompt's end."""
        N = d.max_new_tokens
        block = min(d.block_size, N)
        spans = [(self.P + s, self.P + e) for s, e in block_spans(N, block)]
        model_block = d.block_size if getattr(cfg, "flexible_blocks", False) else cfg.block_size
        return self.P + N, spans, steps_per_block(N, block, d.steps), model_block

    def begin_block(self) -> None:
        s, e = self.spans[self.block]
        self.strategy.begin_block((self.x[s:e] == self.mask_id)[None], self.budgets[self.block])

    def work(self) -> Work | None:
        if self.done or self.phase == DONE:
            return None
        if self.phase == VERIFY:
            return self.verifier_work()
        span = self.spans[self.block]
        lo, hi, cols, keys = self.columns.next(self.x, span, self.step)
        ids = self.x[lo:hi] if cols is None else self.x[cols]
        self.ran = Work(ids, lo, keys, cols, block_size=self.attention_block)
        return self.ran

    def take(self, logits: torch.Tensor) -> None:
        if self.phase == VERIFY:
            self.take_verdict(logits)
            return
        self.passes += 1
        window = Window(logits, self.ran.start, self.ran.cols, self.T, self.shift)
        s, e = self.spans[self.block]
        self.columns.ran((s, e))
        masked = (self.x[s:e] == self.mask_id)[None]  # (1, Lb)
        block_logits = window.at(s, e)[None]  # (1, Lb, V)
        x0 = gumbel_argmax(block_logits, self.temperature, self.generator, forbid=self.mask_id, top_k=self.top_k,
                           top_p=self.top_p)  # (1, Lb)
        conf = self.strategy.confidence(block_logits, x0, self.generator).masked_fill(~masked, float("-inf"))
        commit = self.strategy.select(self.step, conf, masked) & masked
        if self.strategy.uses_verifier:
            self.pending, self.phase = (x0, conf, commit, window), VERIFY
            return
        self.commit(commit[0], x0[0], window)

    def verifier_work(self) -> Work:
        """The verifier reads the draft: final tokens, and the dLLM's proposal at every masked position."""
        x0, conf, _, _ = self.pending
        s, e = self.spans[self.block]
        draft = self.x[:e].clone()
        masked = torch.isfinite(conf[0])
        draft[s:e][masked] = x0[0][masked]
        lo = min(self.verified, s - 1)  # column s-1 predicts the block's first token
        return Work(draft[lo:e], lo, e, model=self.verifier)

    def take_verdict(self, logits: torch.Tensor) -> None:
        self.verifier_passes += 1
        x0, conf, commit, window = self.pending
        s, e = self.spans[self.block]
        lo = min(self.verified, s - 1)
        scores = logits[s - 1 - lo:e - 1 - lo][None]  # (1, Lb, V): the verifier's view of each block position
        keep, x0 = self.strategy.review(scores, x0, conf, commit)
        self.verified = s  # the prompt and finished blocks are final: their keys stay
        self.pending = None
        self.commit(keep[0], x0[0], window)

    def commit(self, commit: torch.Tensor, x0: torch.Tensor, window: Window) -> None:
        s, e = self.spans[self.block]
        block = self.x[s:e]  # a view: committing into it updates x
        block[commit] = x0[commit]
        if self.noting:
            idx = commit.nonzero()[:, 0]
            self.note((s - self.P + idx).tolist(), x0[idx], window.at(s, e)[idx])
        if self.early is not None:
            self.commit_all(window)
        if self.answer_exit is not None and self.exit_with_answer(x0, window):
            return
        self.step += 1
        self.phase = DONE
        if bool((block == self.mask_id).any()):
            if self.step > block.numel():  # every rule commits at least one token per step
                raise RuntimeError(f"strategy {self.strategy.name!r} made no progress on a block of {block.numel()}")
        else:
            self.next_block()
        self.settle()

    def commit_all(self, window: Window) -> None:
        """Prophet: once the answer has settled, commit every mask this step scored, each to its proposal."""
        targets = window.targets
        answer = targets >= self.P
        cols = targets[answer]  # (W,)
        logits = window.logits[answer]  # (W, V)
        masked = self.x[cols] == self.mask_id  # (W,)
        progress = 1 - (self.x[self.P:] == self.mask_id).sum() / (self.T - self.P)
        if not bool(self.early.fires(logits[None], masked[None], progress[None])[0]):
            return
        x0 = gumbel_argmax(logits[None], self.temperature, self.generator, forbid=self.mask_id, top_k=self.top_k,
                           top_p=self.top_p)[0]  # (W,)
        self.note((cols[masked] - self.P).tolist(), x0[masked], logits[masked])
        self.x[cols] = torch.where(masked, x0, self.x[cols])

    def exit_with_answer(self, x0: torch.Tensor, window) -> bool:
        """ICE: commit the answer section and end the row, if its confidence says so (decode/in_place.py)."""
        s, e = self.spans[self.block]
        ex = self.answer_exit
        answer = ex.decide(self.x, self.mask_id, (s, e), x0, window.at(s, e))
        if answer is None:
            return False
        newly = (self.x[ex.lo:ex.hi] == self.mask_id).nonzero()[:, 0]
        self.x[ex.lo:ex.hi] = answer
        self.note((ex.lo - self.P + newly).tolist(), answer[newly], window.at(ex.lo, ex.hi)[newly])
        self.step += 1
        self.phase = DONE
        self.steps_used.append(self.step)
        self.extend(self.x[self.P + len(self.final):ex.hi].tolist())  # the reasoning as it stands, masks and all
        if not self.done:
            self.finish("stop")
        return True

    def next_block(self) -> None:
        """Move past the finished block and any later one early commit already filled."""
        self.steps_used.append(self.step)
        self.block, self.step = self.block + 1, 0
        while self.block < len(self.spans) and not self.has_masks(self.block):
            self.steps_used.append(0)
            self.block += 1
        if self.block < len(self.spans):
            self.begin_block()

    def has_masks(self, k: int) -> bool:
        s, e = self.spans[k]
        return bool((self.x[s:e] == self.mask_id).any())

    def settle(self) -> None:
        """Report the committed prefix; end at EOS or once every block is full."""
        self.extend(final_prefix(self.x, self.P + len(self.final), self.mask_id))
        if not self.done and self.block == len(self.spans):
            self.finish("length")

    def next_step(self) -> None:
        if self.phase == DONE:
            self.phase = SCORE
