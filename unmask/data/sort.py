"""The `sort` task: `sort: 47 3 91` -> `3 47 91`.

Examples are a pure function of (seed, index), so any batch can be rebuilt from its step
number alone (exact resume, data-parallel ranks). The held-out split is fixed and no
training example repeats a held-out prompt.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from functools import cached_property

from unmask.data.batch import Batch, make_batch
from unmask.tokenizers import Tokenizer

TEST_SEED = "sort-heldout-v1"


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclass
class SortTask:
    """Lists of `min_len`..`max_len` integers in 0..`max_value`; answers padded with EOS to a random window."""

    min_len: int = 4
    max_len: int = 24
    max_value: int = 99
    max_window: int = 128  # answer + EOS fill, so a diffusion model can decode any window up to this
    # Training fill reaches this window instead (0: max_window), while max_window stays the default
    # generation length: a model that has seen long windows still answers when asked for a long output.
    fill_window: int = 0
    n_test: int = 1000
    name: str = "sort"

    def __post_init__(self) -> None:
        if self.fill_window < 0:
            raise ValueError(f"fill_window must be 0 (max_window) or a window length, not {self.fill_window}")

    def same_questions(self, other: "SortTask") -> bool:
        """The same held-out split and default generation length; the training fill may differ."""
        return dataclasses.replace(self, fill_window=0) == dataclasses.replace(other, fill_window=0)

    def unfamiliar(self, prompt: str) -> str | None:
        """Why a prompt lies outside what a model of this task was trained on (one sentence), or None.

        Such a model answers anything, but out of range its answer is often wrong (sort-ar answers
        'sort: 31 7 18' with '7 7 18 31'): a user should be told, not left with a silent wrong answer."""
        body = prompt.strip()
        if not body.startswith("sort:"):
            return "the prompt does not start with 'sort:', the form this model was trained on"
        words = body[len("sort:"):].split()
        if not all(w.isdigit() for w in words):
            return "the list holds something other than whole numbers, which this model was never shown"
        if not self.min_len <= len(words) <= self.max_len:
            return (f"the list has {len(words)} numbers; this model was trained on {self.min_len} to "
                    f"{self.max_len}, so its answer may well be wrong")
        if any(int(w) > self.max_value for w in words):
            return f"the list has numbers above {self.max_value}, the largest this model was trained on"
        return None

    def example(self, rng: random.Random) -> Example:
        values = [rng.randint(0, self.max_value) for _ in range(rng.randint(self.min_len, self.max_len))]
        return Example("sort: " + " ".join(map(str, values)), " ".join(map(str, sorted(values))))

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

    def encode(self, tok: Tokenizer, ex: Example, rng: random.Random, fill: bool) -> tuple[list[int], int]:
        prompt = self.prompt_ids(tok, ex.prompt)
        answer = tok.encode(ex.answer) + [tok.eos_token_id]
        if fill:  # diffusion: EOS fills a window of random length after the answer (LLaDA's SFT padding)
            answer += [tok.eos_token_id] * rng.randint(0, max(0, (self.fill_window or self.max_window) - len(answer)))
        return prompt + answer, len(prompt)

    def batch(self, tok: Tokenizer, examples: list[Example], seed: str, fill: bool) -> Batch:
        rng = random.Random(seed + "-fill")
        encoded = [self.encode(tok, ex, rng, fill) for ex in examples]
        return make_batch([s for s, _ in encoded], [p for _, p in encoded], tok.pad_token_id)

    def train_batch(self, tok: Tokenizer, batch_size: int, seed: str, *, diffusion: bool, seq_len: int = 0) -> Batch:
        return self.batch(tok, self.train_examples(seed, batch_size), seed, fill=diffusion)

    def eval_batch(self, tok: Tokenizer, batch_size: int, index: int, *, diffusion: bool, seq_len: int = 0) -> Batch:
        examples = self.test_examples[index * batch_size:(index + 1) * batch_size]
        return self.batch(tok, examples or self.test_examples[:batch_size], f"eval-{index}", fill=diffusion)

    @staticmethod
    def score(prediction: str, example: Example) -> bool:
        return prediction.strip() == example.answer
