"""The `arith` task: `sum: 47 3 91 12` -> `153`, a task where a written chain of steps helps.

With reasoning (`reasoning=True`) the answer is preceded by the running sums, each step fixed-width so
every position of the chain has one role: `047+03=050 050+91=141 141+12=153`, padded with spaces to the
longest chain, then `#`, then the answer and EOS fill. The answer section therefore sits at a fixed
place (after `reasoning_length` + 1 tokens), which in-place decoding and answer-first early exit rely on
(unmask/decode/in_place.py); an AR model reads the same text, so it is trained on it too. Without reasoning (the
contrast model) the answer follows the prompt at once.

Examples are a pure function of (seed, index); the held-out split is fixed, and no training example
repeats a held-out prompt.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from unmask.data.batch import Batch, make_batch
from unmask.data.sort import Example
from unmask.tokenizers import Tokenizer

TEST_SEED = "arith-heldout-v1"
MARKER = "#"  # between the reasoning section and the answer section
STEP_WIDTH = len("000+00=000")


@dataclass
class ArithTask:
    """Sums of `min_terms`..`max_terms` integers in 0..`max_value` (two digits, so partial sums fit three)."""

    min_terms: int = 2
    max_terms: int = 4
    max_value: int = 99
    reasoning: bool = True
    # The answer section: the sum's digits, then EOS fill. 7 tokens is what the bundled models were trained on
    # (the encoder once filled one past a 6-token section; decoders now get the trained canvas exactly).
    answer_window: int = 7
    n_test: int = 1000
    name: str = "arith"

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms or not 0 < self.max_value <= 99:
            raise ValueError("arith needs 2 <= min_terms <= max_terms and 0 < max_value <= 99")

    @property
    def reasoning_length(self) -> int:
        """The reasoning section's fixed length: the longest chain (steps of STEP_WIDTH, one space between)."""
        return (self.max_terms - 1) * (STEP_WIDTH + 1) - 1 if self.reasoning else 0

    @property
    def answer_start(self) -> int:
        """Offset of the answer section in the generated canvas (after the reasoning and the marker)."""
        return self.reasoning_length + 1 if self.reasoning else 0

    @property
    def max_window(self) -> int:
        """The generated canvas: reasoning, marker and answer section (the default generation length)."""
        return self.answer_start + self.answer_window

    @staticmethod
    def chain(values: list[int]) -> str:
        steps, total = [], values[0]
        for v in values[1:]:
            steps.append(f"{total:03d}+{v:02d}={total + v:03d}")
            total += v
        return " ".join(steps)

    def target(self, values: list[int], fixed: bool = True) -> str:
        """The text after the prompt; `fixed`: the chain padded so the answer sits at its fixed place (the
        diffusion canvas), else the bare chain (what an AR model writes)."""
        answer = str(sum(values))
        if not self.reasoning:
            return answer
        chain = self.chain(values)
        return (chain.ljust(self.reasoning_length) if fixed else chain) + MARKER + answer

    def template(self, n_terms: int) -> str:
        """The scaffolding of a chain of `n_terms` (ICE's template tokens): operators, `=`, spaces and the
        marker at their places, `_` where the model writes digits; the answer section open."""
        chain = " ".join(["___+__=___"] * (n_terms - 1))
        return chain.ljust(self.reasoning_length) + MARKER + "_" * self.answer_window

    def example(self, rng: random.Random) -> Example:
        values = [rng.randint(0, self.max_value) for _ in range(rng.randint(self.min_terms, self.max_terms))]
        return Example("sum: " + " ".join(map(str, values)), self.target(values))

    @staticmethod
    def terms(prompt: str) -> list[int] | None:
        body = prompt.strip()
        if not body.startswith("sum:"):
            return None
        words = body[len("sum:"):].split()
        return [int(w) for w in words] if words and all(w.isdigit() for w in words) else None

    def unfamiliar(self, prompt: str) -> str | None:
        """Why a prompt lies outside what a model of this task was trained on (one sentence), or None."""
        values = self.terms(prompt)
        if values is None:
            return "the prompt is not 'sum:' and whole numbers, the form this model was trained on"
        if not self.min_terms <= len(values) <= self.max_terms:
            return (f"the prompt has {len(values)} numbers; this model was trained on {self.min_terms} to "
                    f"{self.max_terms}, so its answer may well be wrong")
        if any(v > self.max_value for v in values):
            return f"the prompt has numbers above {self.max_value}, the largest this model was trained on"
        return None

    @cached_property
    def test_examples(self) -> list[Example]:
        rng = random.Random(TEST_SEED)
        return [self.example(rng) for _ in range(self.n_test)]

    @cached_property
    def _test_prompts(self) -> frozenset[str]:
        return frozenset(e.prompt for e in self.test_examples)

    def train_examples(self, seed: str, n: int) -> list[Example]:
        rng = random.Random(seed)
        out: list[Example] = []
        while len(out) < n:
            ex = self.example(rng)
            if ex.prompt not in self._test_prompts:
                out.append(ex)
        return out

    @staticmethod
    def prompt_ids(tok: Tokenizer, prompt: str) -> list[int]:
        """Prompt tokens as the model sees them: the text, then [SEP]."""
        return tok.encode(prompt) + [tok.sep_token_id]

    def encode(self, tok: Tokenizer, ex: Example, fill: bool) -> tuple[list[int], int]:
        prompt = self.prompt_ids(tok, ex.prompt)
        text = ex.answer if fill else self.target(self.terms(ex.prompt), fixed=False)  # AR: no padding
        answer = tok.encode(text) + [tok.eos_token_id]
        if fill:  # diffusion: EOS fills the canvas to its fixed end, exactly the window a decoder is given
            answer += [tok.eos_token_id] * (self.max_window - len(answer))
        return prompt + answer, len(prompt)

    def batch(self, tok: Tokenizer, examples: list[Example], fill: bool) -> Batch:
        encoded = [self.encode(tok, ex, fill) for ex in examples]
        return make_batch([s for s, _ in encoded], [p for _, p in encoded], tok.pad_token_id)

    def train_batch(self, tok: Tokenizer, batch_size: int, seed: str, *, diffusion: bool, seq_len: int = 0) -> Batch:
        return self.batch(tok, self.train_examples(seed, batch_size), fill=diffusion)

    def eval_batch(self, tok: Tokenizer, batch_size: int, index: int, *, diffusion: bool, seq_len: int = 0) -> Batch:
        examples = self.test_examples[index * batch_size:(index + 1) * batch_size]
        return self.batch(tok, examples or self.test_examples[:batch_size], fill=diffusion)

    def answer_of(self, prediction: str) -> str:
        """The answer in a decoded canvas: after the marker (reasoning models), else all of it."""
        if self.reasoning:
            return prediction.split(MARKER, 1)[1].strip() if MARKER in prediction else ""
        return prediction.strip()

    def score(self, prediction: str, example: Example) -> bool:
        return self.answer_of(prediction) == self.answer_of(example.answer)
