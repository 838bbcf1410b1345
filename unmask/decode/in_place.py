"""ICE in-place reasoning (Thinking Inside the Mask): the canvas as a reasoning section and an answer section.

A model trained with its answer at a fixed place (the `arith` task with reasoning: the chain of running
sums, padded to a fixed length, then `#`, then the answer) is decoded on one canvas holding both
sections. Two per-request choices build on that layout:

template     the task's scaffolding for the prompt (operators, `=`, spaces and the marker at the places the
             chain of this many numbers needs) is written into the canvas before decoding; the rules
             only ever commit masked positions, so those tokens are never overwritten.
answer_exit  answer-first early exit: once the answer section's masked positions reach this confidence
             (the mean of their proposals' probabilities, or with `answer_exit_pool='min'` each one's),
             they are all committed at once and the row stops, the reasoning left as it is (masks shown
             as `_`). A row whose answer section is already decoded stops too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from unmask.decode.sampling import token_probability
from unmask.decode.spec import Decoding


@dataclass(frozen=True)
class AnswerLayout:
    start: int  # offset of the answer section in the generated canvas
    end: int
    canvas: torch.Tensor | None  # (N,) the canvas to start from (template tokens; mask ids where open), or None


def answer_layout(model: torch.nn.Module, prompt: torch.Tensor, d: Decoding) -> AnswerLayout | None:
    """The layout a request with `template` or `answer_exit` decodes on; ValueError if the model has none."""
    if not d.template and d.answer_exit is None:
        return None
    from unmask.data.arith import ArithTask  # the layout is the task's (imported late: data imports decoding)
    from unmask.evaluation import sort_task_of

    task = sort_task_of(model)
    arith = isinstance(task, ArithTask) and task.reasoning
    values = task.terms(model.tokenizer.decode(prompt.tolist())) if arith else None
    fits = values is not None and task.min_terms <= len(values) <= task.max_terms
    # The model's default template (not one the request asked for) applies only where prompt and window fit it.
    template = d.template and ("template" in d.given or (fits and d.max_new_tokens >= task.max_window))
    if not template and d.answer_exit is None:
        return None
    which = d.namer("template" if template else "answer_exit")
    if not arith:
        raise ValueError(f"{which} needs a model trained with a reasoning section and an answer at a fixed place "
                         f"(e.g. arith-mdm); this one has none")
    if d.max_new_tokens < task.max_window:
        raise ValueError(f"{which} decodes the whole canvas of reasoning and answer: {d.namer('max_new_tokens')} must be at least "
                         f"{task.max_window}, not {d.max_new_tokens}")
    canvas = None
    if template:
        if not fits:
            raise ValueError(f"{which}: the prompt must be 'sum:' and {task.min_terms} to {task.max_terms} numbers")
        tok = model.tokenizer
        text = task.template(len(values))
        ids = [model.mask_token_id if c == "_" else tok.encode(c)[0] for c in text]
        ids += [model.mask_token_id] * (d.max_new_tokens - len(ids))
        canvas = torch.tensor(ids, dtype=torch.long, device=prompt.device)
    return AnswerLayout(task.answer_start, task.max_window, canvas)


class AnswerExit:
    """Decides, after each step, whether a row commits its answer section and stops."""

    def __init__(self, layout: AnswerLayout, prompt_len: int, threshold: float, pool: str = "mean") -> None:
        self.lo, self.hi = prompt_len + layout.start, prompt_len + layout.end  # canvas columns of the answer
        self.threshold, self.pool = threshold, pool

    def decide(self, x: torch.Tensor, mask_id: int, span: tuple[int, int], x0: torch.Tensor,
               logits: torch.Tensor) -> torch.Tensor | None:
        """The answer section's committed tokens if the row exits now, else None.

        x `# (T,)` the canvas after this step's commits; span: the block this step scored, its proposals x0
        `# (Lb,)` and their logits `# (Lb, V)`. The exit is judged only when the block holds the answer."""
        s, e = span
        if not (s <= self.lo and self.hi <= e):
            return None
        answer = x[self.lo:self.hi].clone()
        masked = answer == mask_id
        if not bool(masked.any()):
            return answer  # decoded already: nothing left to wait for
        at = slice(self.lo - s, self.hi - s)
        conf = token_probability(logits[at][None], x0[at][None])[0][masked]  # (m,)
        pooled = conf.min() if self.pool == "min" else conf.mean()
        if float(pooled) < self.threshold:
            return None
        answer[masked] = x0[at][masked]
        return answer
