"""Atheris fuzz target of the chat-template path (`native._chat`, `Tokenizer.apply_chat_template`).

Each input is a conversation (roles, contents, add_generation_prompt) and either one of three real
templates (ChatML as SmolLM2 uses it, Llama 3's, and Qwen2.5's with its default system turn) or a
template read from the input itself (see `parse`). Properties:
- rendering either succeeds or raises `ChatTemplateError` (malformed messages, a template that does
  not compile or fails to render), never anything else;
- every content segment is the core of a message (its text without outer whitespace);
- with a real template, the segments joined equal the plain sandboxed rendering of the conversation
  (what Hugging Face transformers and llama.cpp's reference tokenise);
- with the demo model's tokenizer and its ChatML template, content never contributes a control token:
  the conversation's control tokens are those of the same conversation with every content "x".

Run by `make fuzz` (native/Makefile), or: python native/fuzz/fuzz_chat.py CORPUS_DIR [libFuzzer flags].
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import jinja2.sandbox

    from native._chat import ALLOWED_ROLES, ChatTemplateError, render_segments
    from native.tokenizer import Tokenizer

from tests.engine.conftest import MODEL_INSTALL_HINT, find_model_path

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>'"
    " + '\n' }}"
    "{%- elif message.role == 'tool' %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}{{- '\n<tool_response>\n' }}{{- message.content }}"
    "{{- '\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\n' }}{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
TEMPLATES = (CHATML, LLAMA3, QWEN25)
ROLES = (*sorted(ALLOWED_ROLES), "User", "")  # two that must be refused
CONTROL_TYPE = 3
BOS, EOS = "<s>", "</s>"


def _model_path() -> Path:
    path = find_model_path()
    if path is None or not path.is_file():
        raise SystemExit(f"fuzz_chat: the demo model is missing: {MODEL_INSTALL_HINT}")
    return path


TOKENIZER = Tokenizer(_model_path())
CONTROL_IDS = frozenset(i for i, kind in enumerate(TOKENIZER._vocab.types) if kind == CONTROL_TYPE)
PLAIN = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
PLAIN_TEMPLATES = tuple(PLAIN.from_string(source) for source in TEMPLATES)


def parse(data: bytes) -> tuple[int, bool, str, list[dict[str, str]]]:
    """Byte 0 picks the template (the last choice: the input's own, the first 0xff-separated part
    after the header), bit 0 of byte 1 add_generation_prompt; each further part is a message, its
    first byte the role and the rest its content. UTF-8 decoding replaces what is not UTF-8."""
    choice = data[0] % (len(TEMPLATES) + 1)
    add_generation_prompt = bool(data[1] & 1)
    parts = data[2:].split(b"\xff")
    source = TEMPLATES[choice] if choice < len(TEMPLATES) else parts.pop(0).decode("utf-8", errors="replace")
    messages = [
        {"role": ROLES[part[0] % len(ROLES)], "content": part[1:].decode("utf-8", errors="replace")}
        for part in parts[:6]
        if part
    ]
    return choice, add_generation_prompt, source, messages


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    choice, add_generation_prompt, source, messages = parse(data)
    try:
        segments = render_segments(
            source, messages, add_generation_prompt=add_generation_prompt, bos_token=BOS, eos_token=EOS
        )
    except ChatTemplateError:
        return
    cores = {message["content"].strip() for message in messages}
    for segment in segments:
        if segment.is_content and segment.text not in cores:
            raise AssertionError(f"content segment {segment.text!r} is no message's content")
    if choice == len(TEMPLATES):
        return
    text = PLAIN_TEMPLATES[choice].render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=BOS, eos_token=EOS
    )
    joined = "".join(segment.text for segment in segments)
    if joined != text:
        raise AssertionError(f"segments {joined!r} differ from the plain rendering {text!r}")
    if TEMPLATES[choice] != CHATML:
        return
    # the demo model's own template is ChatML
    ids = TOKENIZER.apply_chat_template(messages, add_generation_prompt)
    benign = [{"role": message["role"], "content": "x"} for message in messages]
    expected = TOKENIZER.apply_chat_template(benign, add_generation_prompt)
    if [i for i in ids if i in CONTROL_IDS] != [i for i in expected if i in CONTROL_IDS]:
        raise AssertionError(f"content added or removed control tokens: {messages!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
