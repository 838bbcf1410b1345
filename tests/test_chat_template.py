"""Chat templates render as Hugging Face renders them; char models have a built-in one.

The reference folders carry no tokenizer files, so the published case is a tmp folder: the
llada-tiny weights plus a tiny `tokenizer.json` and a `tokenizer_config.json` holding the chat
template of LLaDA-8B-Instruct's release (copied below), with its special tokens.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import unmask
from unmask.chat_template import ChatTemplate, TemplateMissing, load_chat_template
from unmask.tokenizers import CharTokenizer

REFERENCE = Path(__file__).resolve().parent / "data" / "reference"

# LLaDA-8B-Instruct's tokenizer_config.json `chat_template` (it always ends with the assistant header).
LLADA_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
# The same, in the common form that honours add_generation_prompt and refuses unknown roles; its line
# breaks after block tags vanish (trim_blocks), as under Hugging Face.
STRICT_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}\n"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Sort 3 1 2  "}]
EXPECTED = ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nSort 3 1 2<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")


def write_tokenizer_config(folder: Path, template, **extra) -> None:
    config = {"bos_token": "<|startoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True},
              "chat_template": template, **extra}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def test_llada_template_renders_like_hugging_face(tmp_path: Path) -> None:
    write_tokenizer_config(tmp_path, LLADA_TEMPLATE)
    assert load_chat_template(tmp_path).render(CHAT) == EXPECTED


def test_add_generation_prompt_and_raise_exception(tmp_path: Path) -> None:
    template = ChatTemplate(STRICT_TEMPLATE)
    user = [{"role": "user", "content": "hi"}]
    head = "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
    assert template.render(user, add_generation_prompt=False) == head
    assert template.render(user) == head + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    with pytest.raises(ValueError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])


def test_template_file_and_named_templates(tmp_path: Path) -> None:
    write_tokenizer_config(tmp_path, [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}])
    assert load_chat_template(tmp_path).render(CHAT) == "D"
    (tmp_path / "chat_template.jinja").write_text("{{ eos_token }}{{ messages | length }}")
    assert load_chat_template(tmp_path).render(CHAT) == "<|endoftext|>2"  # the .jinja file wins


def test_bad_templates_and_messages_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not parse"):
        ChatTemplate("{% for m in messages %}")
    template = ChatTemplate(LLADA_TEMPLATE)
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(ValueError, match="message"):
            template.render(bad)
    assert load_chat_template(tmp_path) is None


def published_folder_with_tokenizer(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    for name in ("config.json", "model.safetensors"):
        shutil.copy(REFERENCE / "llada-tiny" / name, folder / name)
    words = ["[UNK]", "Be", "brief.", "Sort", "3", "1", "2", "system", "user", "assistant"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_published_folder_offers_its_template(tmp_path: Path) -> None:
    folder = published_folder_with_tokenizer(tmp_path)
    write_tokenizer_config(folder, LLADA_TEMPLATE)
    model = unmask.load_model(folder)
    text = model.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert text == EXPECTED
    ids = model.tokenizer.encode(text)
    special_id = {t: i for i, t in enumerate(SPECIALS, start=10)}
    assert ids[0] == special_id["<|startoftext|>"] and ids[-1] == special_id["<|end_header_id|>"]
    config = json.loads((folder / "config.json").read_text())
    assert (model.mask_token_id, model.eos_token_id) == (config["mask_token_id"], config["eos_token_id"])


def test_missing_template_is_a_clear_error(tmp_path: Path) -> None:
    model = unmask.load_model(published_folder_with_tokenizer(tmp_path))
    with pytest.raises(TemplateMissing, match="no chat template"):
        model.tokenizer.apply_chat_template(CHAT)


def test_char_models_use_the_last_user_message() -> None:
    tok = CharTokenizer()
    chat = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "sort: 9 4"},
            {"role": "assistant", "content": "4 9"}, {"role": "user", "content": "sort: 47 3 91"}]
    assert tok.apply_chat_template(chat) == "sort: 47 3 91"
    assert unmask.load_model("sort-mdm").tokenizer.apply_chat_template(chat, add_generation_prompt=False) == \
        "sort: 47 3 91"
    with pytest.raises(ValueError, match="no user message"):
        tok.apply_chat_template([{"role": "system", "content": "x"}])


def test_a_template_survives_pickling_as_the_server_engine_process_needs():
    import pickle

    from unmask.chat_template import CHAR_CHAT_TEMPLATE, ChatTemplate

    t = ChatTemplate(CHAR_CHAT_TEMPLATE, {"bos_token": "<s>"}, origin="test template")
    back = pickle.loads(pickle.dumps(t))
    messages = [{"role": "user", "content": "sort: 3 1"}]
    assert back.render(messages) == t.render(messages) and back.origin == "test template"
