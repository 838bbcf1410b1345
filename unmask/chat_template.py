"""Chat templates: a list of `{"role", "content"}` messages rendered to prompt text, as Hugging Face does it.

A published folder's template is the Jinja source in `chat_template.jinja`, else the `chat_template`
of `tokenizer_config.json` (a string, or a list of named templates of which "default" is used).
It renders under Hugging Face's conventions, so a released template gives the text its authors
trained on: a sandboxed environment with `trim_blocks` and `lstrip_blocks`; the variables
`messages`, `add_generation_prompt` and the tokenizer_config's special tokens (`bos_token`,
`eos_token`, ...); the `raise_exception(message)` helper, `strftime_now(format)` and a `tojson`
filter that keeps non-ASCII text. (Hugging Face's `{% generation %}` training tag is not supported.)
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# The bundled character-level models have no dialogue format: each was trained on one kind of
# prompt (a sort request, a passage to continue). Their chat prompt is the last user message's
# content, verbatim; system messages and earlier turns are dropped, and add_generation_prompt adds
# nothing. The task's own framing (sort's [SEP]) is then added as for any prompt (`prompt_for`).
CHAR_CHAT_TEMPLATE = (
    "{%- set users = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- if not users -%}{{ raise_exception('the chat has no user message to use as the prompt') }}{%- endif -%}"
    "{{- users[-1]['content'] -}}"
)


class TemplateMissing(ValueError):
    pass


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """One compiled template plus the special-token strings it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, Any] | None = None, *, origin: str = "chat template"
                 ) -> None:
        from jinja2.exceptions import TemplateSyntaxError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except TemplateSyntaxError as err:
            raise ValueError(f"the {origin} does not parse: {err.message} (line {err.lineno})") from None
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self.origin = origin

    # Pickled as its source (a compiled jinja template cannot be): the server's engine process gets the
    # model, tokenizer and template by pickling.
    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "special_tokens": self.special_tokens, "origin": self.origin}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["source"], state["special_tokens"], origin=state["origin"])

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        from jinja2.exceptions import TemplateError

        checked = check_messages(messages)
        try:
            return self._template.render(messages=checked, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **self.special_tokens)
        except TemplateError as err:
            raise ValueError(f"the {self.origin} refused these messages: {err}") from None


def check_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as plain dicts; ValueError unless each has a string role and string content."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} needs a string 'role' and a string 'content'")
    return [dict(m) for m in messages]


def token_text(value: Any) -> Any:
    """A special token as text: tokenizer_config stores either the string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    if isinstance(value, list):
        return [token_text(v) for v in value]
    return value


def special_tokens_of(tokenizer_config: dict[str, Any]) -> dict[str, Any]:
    """The special-token variables Hugging Face passes to a template (bos_token, eos_token, ...)."""
    out = {k: token_text(v) for k, v in tokenizer_config.items() if k.endswith("_token") and v is not None}
    if "additional_special_tokens" in tokenizer_config:
        out["additional_special_tokens"] = token_text(tokenizer_config["additional_special_tokens"])
    return {k: v for k, v in out.items() if isinstance(v, (str, list))}


def template_source(raw: Any, origin: str) -> str:
    """The template text from tokenizer_config's `chat_template`: a string or a list of {name, template}."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        named = {t.get("name"): t.get("template") for t in raw if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{origin} has a chat_template that is neither a string nor a list holding a 'default' one")


def load_chat_template(folder: str | Path) -> ChatTemplate | None:
    """The folder's chat template (chat_template.jinja, else tokenizer_config.json); None if it has none."""
    folder = Path(folder)
    config_path = folder / TOKENIZER_CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    specials = special_tokens_of(config)
    jinja_path = folder / CHAT_TEMPLATE_FILE
    if jinja_path.exists():
        return ChatTemplate(jinja_path.read_text(), specials, origin=f"chat template in {jinja_path}")
    if config.get("chat_template") is not None:
        origin = f"chat template in {config_path}"
        return ChatTemplate(template_source(config["chat_template"], str(config_path)), specials, origin=origin)
    return None
