#!/usr/bin/env python3
"""Expected chat-template renders for tests/test_chat_template.c.

Renders every tests/fixtures/chat_templates/*.jinja (real chat templates,
copied as test data; their sources are listed in TEMPLATES) for a set of
(system, user) inputs with transformers' own renderer
(transformers.utils.chat_template_utils.render_jinja_template: the function
apply_chat_template(..., tokenize=False, add_generation_prompt=True) calls,
with its globals raise_exception, strftime_now, tojson) and writes
tests/fixtures/chat_templates/renders.json.

--from-gguf MODEL.gguf first (re)writes HuggingFaceTB-SmolLM2-135M-Instruct.jinja
from the GGUF's tokenizer.chat_template (gguf package).

Dates: Llama-3.2's template calls strftime_now("%d %b %Y") (today's date);
patchbay renders the template's literal fallback "26 Jul 2024" instead so a
prompt set tokenizes the same every day, so those cases pass
date_string="26 Jul 2024" (a variable the template itself honours).

Refusals: a case whose template raises (Gemma-2: "System role not
supported") expects a refusal; so does a case with a system message for a
template in SYSTEM_REFUSED, which drops system messages silently (the
original Phi-3-mini template), where patchbay refuses rather than lose the
prompt; transformers' render is kept beside it as "transformers".
"""
import argparse
import json
import pathlib
import sys

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIR = ROOT / "tests" / "fixtures" / "chat_templates"
MAGIC = "patchbay-chat-template-renders"
VERSION = 1

LLAMA = {"bos_token": "<s>", "eos_token": "</s>"}
# file -> (expected format, expected default system prompt, special tokens, source of the text)
TEMPLATES = {
    "HuggingFaceTB-SmolLM2-135M-Instruct.jinja": (
        "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
        "tokenizer.chat_template of models/SmolLM2-135M-Instruct.Q4_1.gguf (this script, --from-gguf)"),
    "Qwen-Qwen2.5-0.5B-Instruct.jinja": (
        "chatml", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
        {"bos_token": None, "eos_token": "<|im_end|>"},
        "Qwen/Qwen2.5-0.5B-Instruct tokenizer_config.json (rev 7ae5576), as quoted in guidance-ai/guidance chat.py"),
    "Qwen-Qwen2-7B-Instruct.jinja": (
        "chatml", "You are a helpful assistant.",
        {"bos_token": None, "eos_token": "<|im_end|>"},
        "Qwen2-Instruct tokenizer_config.json chat_template (raw newlines inside the literal)"),
    "meta-llama-Meta-Llama-3-8B-Instruct.jinja": (
        "llama3", None, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json (05/2024), as quoted in guidance-ai/guidance"),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": (
        "llama3", None, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja (sha256 5816fce1..., as llama.cpp's LFS pointer)"),
    "meta-llama-Llama-3.3-70B-Instruct.jinja": (
        "llama3", None, {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "llama.cpp models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja (the Llama-3.1 template's layout)"),
    "meta-llama-Llama-2-7b-chat-hf.jinja": (
        "llama2", None, LLAMA,
        "meta-llama/Llama-2-7b-chat-hf tokenizer_config.json (05/2024), as quoted in guidance-ai/guidance"),
    "mistralai-Mistral-7B-Instruct-v0.1.jinja": (
        "llama2", None, LLAMA, "Mistral-7B-Instruct-v0.1 original template (huggingface swift-jinja tests)"),
    "mistralai-Mistral-7B-Instruct-v0.2-original.jinja": (
        "llama2", None, LLAMA, "Mistral-7B-Instruct-v0.2 original template (llama.cpp tests/test-chat-template.cpp)"),
    "mistralai-Mistral-7B-Instruct-v0.2.jinja": (
        "llama2", None, LLAMA,
        "mistralai/Mistral-7B-Instruct-v0.2 tokenizer_config.json (05/2024, system-aware), as quoted in guidance-ai/guidance"),
    "mistralai-Mistral-Large-Instruct-2407.jinja": (
        "llama2", None, LLAMA,
        "Mistral-Large-Instruct-2407 template (v3 tokenizer: \"[INST] \" ... \"[/INST]\", as Mistral-7B-Instruct-v0.3)"),
    "gemma-2-2b-it.jinja": (
        "gemma", None, {"bos_token": "<bos>", "eos_token": "<eos>"},
        "llama.cpp models/templates/google-gemma-2-2b-it.jinja (sha256 ecd6ae51..., as llama.cpp's LFS pointer)"),
    "google-gemma-3-it.jinja": (
        "gemma3", None, {"bos_token": "<bos>", "eos_token": "<eos>"},
        "google/gemma-3 (-270m-it, -1b-it, ...) tokenizer_config.json chat_template, as quoted (JSON-escaped) in "
        "the Berkeley Function Calling Leaderboard's Gemma handler (bfcl/model_handler/local_inference/gemma.py); "
        "the Gemma 3 270M GGUF carries no tokenizer.chat_template"),
    "Qwen-Qwen3-0.6B.jinja": (
        "qwen3", None, {"bos_token": None, "eos_token": "<|im_end|>"},
        "llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja (llama-cpp-python 0.3.36 sdist, vendor/llama.cpp); "
        "rendered without enable_thinking, transformers' default"),
    "microsoft-Phi-3.5-mini-instruct.jinja": (
        "phi3", None, {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
        "llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja (llama-cpp-python 0.3.36 sdist, "
        "vendor/llama.cpp; sdist sha256 832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e); "
        "a system turn only for non-empty content"),
    "microsoft-Phi-3-mini-4k-instruct.jinja": (
        "phi3", None, {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
        "tokenizer.chat_template of llama.cpp models/ggml-vocab-phi-3.gguf (same sdist): the original Phi-3-mini "
        "template, BOS, no system branch, the user turn ends with the generation prompt"),
    "allenai-OLMo-2-1124-7B-Instruct.jinja": (
        "olmo2", None, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
        "allenai/OLMo-2-1124-7B-SFT tokenizer_config.json chat_template (the Tulu 3 template with bos_token, used by "
        "the OLMo-2-*-Instruct models), as quoted identically in several public repositories"),
    "allenai-tulu-3.jinja": (
        "olmo2", None, {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
        "the OLMo-2 template above without its leading {{ bos_token }} (Tulu 3's own template): exercises BOS "
        "detection"),
}

# Templates that accept a system message but drop it without a word (no
# system branch). transformers renders them as if none were given;
# patchbay refuses rather than lose the caller's prompt, so every case with
# a system message (even "") expects a refusal. file -> why
SYSTEM_REFUSED = {
    "microsoft-Phi-3-mini-4k-instruct.jinja": "the template ignores system messages (no system branch)",
}

CASES = [
    (None, "What is the capital of France?"),
    ("", "Hello"),
    ("You are a pirate.", "Tell me a joke."),
    ("  Be brief.\n", "  leading and trailing spaces  "),
    (None, "Line one\nLine two\n\n"),
    ("Système : réponds en français 😀", "Ünïcödé — 日本語 ✓"),
    (None, "\u3000full-width space and no-break space\u00a0"),
    ("multi\nline\nsystem", "\ttab\tseparated\t"),
    (None, "quote ' and \" and {{ braces }} and [INST] <|im_end|> text"),
    (None, ""),
    ("", "   "),
    ("\n System with edges \n", "Ask:\n\n- one\n- two\r\n\ttabbed  "),
    (None, "<start_of_turn> and <end_of_turn> and <think>x</think> typed by the user"),
    ("Réponds brièvement.", "\u00a0Quelle heure est-il ? ⏰\u2003"),
]


def render(text, tokens, system, user):
    messages = ([] if system is None else [{"role": "system", "content": system}]) + [{"role": "user", "content": user}]
    kwargs = dict(tokens)
    if "strftime_now" in text:
        kwargs["date_string"] = "26 Jul 2024"
    try:
        out = render_jinja_template(conversations=[messages], chat_template=text, add_generation_prompt=True, **kwargs)
    except Exception as e:  # the template raises (e.g. Gemma: "System role not supported")
        return None, str(e)
    rendered = out[0] if isinstance(out, tuple) else out
    if isinstance(rendered, list):
        rendered = rendered[0]
    return rendered, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from-gguf", help="rewrite the SmolLM2 template from this GGUF's tokenizer.chat_template")
    args = ap.parse_args()
    if args.from_gguf:
        import gguf
        reader = gguf.GGUFReader(args.from_gguf)
        field = reader.fields["tokenizer.chat_template"]
        text = bytes(field.parts[field.data[0]]).decode("utf-8")
        (DIR / "HuggingFaceTB-SmolLM2-135M-Instruct.jinja").write_text(text, encoding="utf-8")
    templates = []
    for name, (fmt, default_system, tokens, source) in TEMPLATES.items():
        text = (DIR / name).read_text(encoding="utf-8")
        cases = []
        for system, user in CASES:
            expected, error = render(text, tokens, system, user)
            case = {"system": system, "user": user, "expected": expected, "error": error}
            if system is not None and name in SYSTEM_REFUSED and expected is not None:
                # keep what transformers renders beside the refusal, for the record
                case.update(expected=None, error="refused by patchbay: " + SYSTEM_REFUSED[name],
                            transformers=expected)
            cases.append(case)
        templates.append({"file": name, "source": source, "format": fmt, "default_system": default_system,
                          "bos_token": tokens["bos_token"], "cases": cases})
    out = {"magic": MAGIC, "version": VERSION, "generator": "scripts/make_chat_template_fixture.py",
           "renderer": "transformers.utils.chat_template_utils.render_jinja_template (add_generation_prompt=True)",
           "templates": templates}
    path = DIR / "renders.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(len(t["cases"]) for t in templates)
    print(f"wrote {path.relative_to(ROOT)}: {len(templates)} templates, {n} cases", file=sys.stderr)


if __name__ == "__main__":
    main()
