"""Tokenizers: a character-level one for the bundled models, `tokenizer.json` for the rest.

Both expose the same small surface: `encode`, `decode`, `vocab_size`, the special
ids (`mask_token_id`, `eos_token_id`, `pad_token_id`, `sep_token_id`) and
`apply_chat_template(messages)`. Special ids are read from here (or from a model's config)
and nowhere else.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, Sequence

from unmask.chat_template import CHAR_CHAT_TEMPLATE, ChatTemplate, TemplateMissing, load_chat_template

SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[EOS]", "[SEP]")
DEFAULT_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))  # newline + printable ASCII
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int
    mask_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    sep_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str: ...


class CharTokenizer:
    """One id per character, after the four special tokens [PAD] [MASK] [EOS] [SEP]."""

    def __init__(self, chars: str = DEFAULT_CHARS) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("tokenizer characters must be unique")
        self.chars = chars
        self.specials = SPECIAL_TOKENS
        self._id_of = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self.pad_token_id, self.mask_token_id, self.eos_token_id, self.sep_token_id = range(4)
        self.vocab_size = len(SPECIAL_TOKENS) + len(chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._id_of[c] for c in text]
        except KeyError as err:
            raise ValueError(f"character {err.args[0]!r} is not in this model's vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids; special tokens are dropped (a mask left in shows as '_')."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.mask_token_id:
                out.append("_")
            elif i >= len(SPECIAL_TOKENS):
                out.append(self.chars[i - len(SPECIAL_TOKENS)])
        return "".join(out)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat: the last user message's content (see `CHAR_CHAT_TEMPLATE`)."""
        if getattr(self, "chat_template", None) is None:  # unless `unmask serve --chat-template` gave one
            self.chat_template = ChatTemplate(CHAR_CHAT_TEMPLATE, origin="built-in character-model chat template")
        return self.chat_template.render(messages, add_generation_prompt)

    def save(self, folder: str | Path) -> None:
        spec = {"type": "unmask-char", "specials": list(self.specials), "chars": self.chars}
        Path(folder, TOKENIZER_FILE).write_text(json.dumps(spec, indent=1))


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library; special ids come from the model config."""

    def __init__(self, path: str | Path, *, mask_token_id: int | None = None, eos_token_id: int | None = None,
                 pad_token_id: int | None = None, sep_token_id: int | None = None,
                 chat_template: ChatTemplate | None = None) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        self.vocab_size = self._tok.get_vocab_size()
        self.mask_token_id, self.eos_token_id = mask_token_id, eos_token_id
        self.pad_token_id, self.sep_token_id = pad_token_id, sep_token_id
        self.chat_template = chat_template

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat rendered by the folder's template (Hugging Face conventions: `unmask.chat_template`)."""
        if self.chat_template is None:
            raise TemplateMissing("this model has no chat template: its folder has neither chat_template.jinja "
                                  "nor a chat_template in tokenizer_config.json")
        return self.chat_template.render(messages, add_generation_prompt)


def load_tokenizer(folder: str | Path, **special_ids: int | None) -> Tokenizer:
    """The tokenizer saved in a model folder: ours (character level) or a `tokenizers` JSON."""
    path = Path(folder, TOKENIZER_FILE)
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {TOKENIZER_FILE}")
    spec = json.loads(path.read_text())
    if spec.get("type") == "unmask-char":
        return CharTokenizer(spec["chars"])
    return HFTokenizer(path, chat_template=load_chat_template(folder), **special_ids)


