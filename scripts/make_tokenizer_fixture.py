#!/usr/bin/env python3
"""Regenerates tests/fixtures/tokenizer/: tokenizer references for
tests/test_tokenizer.c.

Usage: HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_tokenizer_fixture.py \
           [MODEL.gguf] [OUT_DIR] [--llama-cpp]
       HF_HUB_OFFLINE=1 .venv/bin/python scripts/make_tokenizer_fixture.py --gemma3 \
           [GEMMA.gguf] [OUT_DIR]        (gemma3_corpus.json alone)

Files written (all JSON; every one opens with "magic", "version" and
"generator"):

  smollm2_corpus.json   a deterministic corpus (ASCII, accents, CJK, emoji
                        with ZWJ and skin tones, code, digit and whitespace
                        runs, contractions, text spelling special tokens,
                        Unicode spaces, chat-templated prompts) with the ids
                        of the transformers tokenizer loaded from the GGUF:
                        "special" = tok(text, add_special_tokens=False),
                        "plain" = the same with split_special_tokens=True
                        (present only where it differs from "special").
                        "decode" holds id sequences (random, so some split
                        a UTF-8 character) with tok.decode(ids,
                        skip_special_tokens=False).
  smollm2_tokenizer.json that transformers tokenizer saved as tokenizer.json.
  spm_bpe.gguf          a SentencePiece BPE model (byte_fallback) trained
                        here on generated multilingual text, as GGUF
                        metadata (tokenizer.ggml.model "llama").
  spm_corpus.json       texts with sentencepiece's own ids ("ids") and
                        sentencepiece's decode of them; "hf_ids" where
                        transformers (built from the same GGUF metadata the
                        way it loads a GGUF) disagrees.
  bpe_variants/*.json   tiny byte-level BPE tokenizer.json files trained
                        here with `tokenizers` (Digits + ByteLevel with
                        "a b" merge strings; Split with the Llama-3 regex;
                        Split with the Qwen2 regex) and their ids.
  gemma3_corpus.json    (with --gemma3; needs models/gemma-3-270m-q4_k_m.gguf,
                        scripts/fetch-model.sh gemma3-270m) ids only: for
                        every text of smollm2_corpus.json (by index, same
                        order) and for extra Gemma-specific texts (spelled
                        here), the ids of transformers' tokenizer loaded
                        from the Gemma 3 GGUF: "special" and "plain" as
                        above ("plain" only where it differs).
  llama_cpp_comparison.json (with --llama-cpp) llama-cpp-python's
                        tokenizer against transformers on the SmolLM2
                        corpus, every disagreement listed.
"""
import hashlib
import json
import os
import random
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GENERATOR = "scripts/make_tokenizer_fixture.py"
VERSION = 1
SEED = 20250301

ROOT = Path(__file__).resolve().parent.parent


def header(kind, **extra):
    return {"magic": "PBTOK", "version": VERSION, "generator": GENERATOR, "kind": kind, **extra}


# ---------------------------------------------------------------- corpus

WORDS = {
    "en": "the quick brown fox jumps over lazy dog hello world model token patch layer residual attention "
    "Transformer GPU don't I'M they'll we've she'd you're it's CAN'T Won't O'Neil rock'n'roll".split(),
    "fr": "élève café naïve où déjà être français garçon Noël cœur".split(),
    "de": "Straße groß Übung Äpfel müssen Fußgänger ÖL".split(),
    "es": "niño año mañana señor ¿qué? ¡hola! pingüino".split(),
    "ru": "привет мир ёжик Москва СЪЕЗД".split(),
    "el": "γειά σου κόσμε Ωμέγα ΣΊΣΥΦΟΣ".split(),
    "ar": "مرحبا بالعالم العربية".split(),
    "he": "שלום עולם".split(),
    "hi": "नमस्ते दुनिया हिन्दी".split(),
    "zh": "你好 世界 中文 分词器 测试".split(),
    "ja": "こんにちは 世界 カタカナ 漢字とかな".split(),
    "ko": "안녕하세요 세계 한국어".split(),
    "th": "สวัสดี ชาวโลก".split(),
}
EMOJI = ["😀", "👍", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🧑🏿‍🚀", "✨", "🤖", "🔥🔥🔥"]
PUNCT = [".", ",", "!", "?", "...", "—", "–", "-", "(", ")", "[", "]", "{", "}", "\"", "'", "`", ":", ";",
         "@", "#", "$", "%", "^", "&", "*", "+", "=", "<", ">", "/", "\\", "|", "~", "_", "«", "»", "“", "”",
         "‘", "’", "•", "€", "£", "¥", "§", "°", "±", "×", "÷", "→", "∀", "∑", "√", "∞"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\n\n\n", "\r\n", " \n", "\t\t", "    ", " \t ", "\u00a0",
          "\u3000", "\u2003", "\u2009", "\u202f", "\u205f", "\u1680", "\u2028", "\u2029", "\u0085", "\u000b",
          "\u000c", "\u200b", "\ufeff", "\u180e"]
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>", "<file_sep>", "<empty_output>",
            "<|im_end", "< |im_start| >", "<|im_start|", "|im_start|>", "<<|im_start|>>", "<|im_start|><|im_end|>",
            "<|IM_START|>", "<|im_start|>assistant", "<jupyter_text>", "<jupyter_code>"]
DIGITS = ["1", "12", "123", "1234", "1234567", "0", "007", "3.14159", "1,000,000", "2025-03-01", "12:30",
          "1e-10", "0x1F", "٣٤٥", "१२३", "½", "²", "Ⅻ", "①", "１２３"]
CODE = [
    "def f(x):\n    return x * 2\n",
    "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
    "#include <stdio.h>\nint main(void) { printf(\"hi\\n\"); }",
    "if x != None and y >= 3: print(f'{x!r}')",
    "const re = /\\s+(?!\\S)/g; // regex",
    "SELECT * FROM t WHERE id = 42;",
    "<div class=\"a\">&nbsp;</div>",
    "```python\nimport torch\n```",
    "    indented\n        more\n\ttab",
    "x+=1;y-=2;z*=3;w/=4;",
    "{\"key\": [1, 2, {\"n\": null}]}",
    "a_b_c __init__ self.__dict__",
]
TRICKY = [
    "", " ", "  ", "\n", "\t", "a", "A", "'", "''", "'s", "'S", "'ll", "I'M", "don't", "DON'T", "they'll",
    "we've", "she'd", "you're", "it's", "'re 're", "x's", " 's", "s'", "' s", "hello world", "hello  world",
    "hello   world", "hello\nworld", "hello \nworld", "hello  \n  world", "trailing ", "trailing  ",
    "trailing   ", " leading", "  leading", "\n\n\nx", "x\n\n\n", " \n \n ", "a\tb", "a\t\tb", "a \tb",
    "1", "12", "123", "1234", "1234567", " 1", " 12", "a1b2c3", "v1.2.3", "10,000.50", "1 2 3", "1\n2",
    "café", "cafe\u0301", "naïve", "Straße", "STRASSE", "niño", "ﬁ ligature", "Å Å", "e\u0301\u0301",
    "你好世界", "日本語のテキスト", "한국어 텍스트", "😀", "😀😀", " 😀", "👨‍👩‍👧‍👦", "👍🏽", "🏳️‍🌈",
    "a😀b", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end", "< |im_start| >",
    "<|im_start|>user\nhi<|im_end|>", " <|im_start|> ", "x<|im_start|>y", "<|im_start|><|im_start|>",
    "<|endoftext|><|endoftext|>", "<filename>a.py<file_sep>", "<reponame>", "<repo_name>",
    "!!!", "?!", "...", "—", "a—b", "(a)", "[1]", "{x}", "\"quoted\"", "«guillemets»", "\u00a0",
    "a\u00a0b", "a\u3000b", "a\u2003b", "a\u200bb", "a\ufeffb", "\u0085", "a\u0085b", "\u2028", "x\u2029y",
    "\u000b\u000c", "a\u180eb", "\x00", "a\x00b", "\x7f", "\x01\x02\x03", "\u00ad", "\ufffd", "\U0010fffd",
    "\ue000", "\U0001d400\U0001d401", "\U0001f600\U0001f3fb", "ǅ Ǆ ǆ", "ß ẞ", "İstanbul", "ıi",
    "\u0640", "\u0300a", "a\u20dd", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "Ⅻ", "①②③", "٣٤٥", "१२३", "½¼", "x²", "１２３", "ＡＢＣ",
    "supercalifragilisticexpialidocious", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "a" * 200, "ab" * 150, " " * 40, "\n" * 30, "=" * 80, "-" * 64, "0" * 50, "😀" * 20,
    "\U0001e4d0\U0001e4d1", "\U00011f04\U00011f05", "\U0001e030",
]


def make_corpus(rng):
    texts = list(TRICKY)
    texts += CODE
    texts += [d for d in DIGITS] + [" " + d for d in DIGITS]
    texts += SPECIALS + [" " + s for s in SPECIALS] + [s + " " for s in SPECIALS] + [s + "\n" for s in SPECIALS]
    texts += [w for ws in WORDS.values() for w in ws]
    texts += ["x" + s + "y" for s in SPACES] + [s for s in SPACES] + ["a" + s for s in SPACES] + [s + "b" for s in SPACES]
    langs = list(WORDS)
    pools = [
        lambda: rng.choice(WORDS[rng.choice(langs)]),
        lambda: rng.choice(WORDS["en"]),
        lambda: rng.choice(EMOJI),
        lambda: rng.choice(PUNCT),
        lambda: rng.choice(DIGITS),
        lambda: str(rng.randrange(10 ** rng.randrange(1, 12))),
        lambda: rng.choice(SPECIALS),
        lambda: rng.choice(CODE),
        lambda: rng.choice(SPACES),
        lambda: "".join(chr(rng.choice([rng.randrange(0x20, 0x7f), rng.randrange(0xa0, 0x250),
                                        rng.randrange(0x370, 0x530), rng.randrange(0x3040, 0x30ff),
                                        rng.randrange(0x4e00, 0x9fff), rng.randrange(0xac00, 0xd7a3),
                                        rng.randrange(0x1f300, 0x1f64f), rng.randrange(0x2000, 0x206f)]))
                        for _ in range(rng.randrange(1, 8))),
    ]
    weights = [6, 10, 2, 4, 2, 1, 1, 1, 4, 2]
    seps = [" ", " ", " ", "", "\n", "  ", "\t", ", ", ". ", "\n\n"]
    while len(texts) < 2300:
        n = rng.randrange(1, 25)
        parts = []
        for _ in range(n):
            parts.append(rng.choices(pools, weights)[0]())
            parts.append(rng.choice(seps))
        text = "".join(parts)
        if rng.random() < 0.3:
            text = text.upper() if rng.random() < 0.5 else text.capitalize()
        if rng.random() < 0.15:
            text += rng.choice([" ", "  ", "\n", " \n", "\t"])
        texts.append(text)
    return texts


def chat_prompts(tok, rng):
    users = ["What is the capital of France?", "Write a haiku about the sea.", "¿Cómo estás?",
             "Explain <|im_start|> tokens.", "  leading spaces", "Translate 123 to words", "你好",
             "Summarise:\n\n- a\n- b\n", "I'M fine, don't worry; they'll come."]
    out = []
    data = ROOT / "data" / "refusal_pairs.json"
    if data.exists():
        pairs = json.loads(data.read_text())
        for item in pairs if isinstance(pairs, list) else pairs.get("pairs", []):
            if isinstance(item, dict):
                for value in item.values():
                    if isinstance(value, str):
                        users.append(value)
    for i, user in enumerate(users):
        messages = [{"role": "user", "content": user}]
        if i % 2:
            messages.insert(0, {"role": "system", "content": "You are a helpful assistant."})
        out.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        out.append(tok.apply_chat_template(messages + [{"role": "assistant", "content": "Sure! 42 🙂"}],
                                           tokenize=False))
    return out


def write_json(path, obj):
    path.write_text(json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")


def smollm2(model, out, rng, llama_cpp):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    texts = make_corpus(rng) + chat_prompts(tok, rng)
    cases = []
    for text in texts:
        special = tok(text, add_special_tokens=False)["input_ids"]
        plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        case = {"text": text, "special": special}
        if plain != special:
            case["plain"] = plain
        cases.append(case)
    vocab = len(tok)
    decodes = []
    for i in range(300):
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(0, 12))]
        if i % 3 == 0:  # pieces of real text, which split multi-byte characters less often
            src = cases[rng.randrange(len(cases))]["special"]
            a = rng.randrange(len(src) + 1)
            ids = src[a:a + rng.randrange(1, 10)]
        decodes.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})
    write_json(out / "smollm2_corpus.json", {
        **header("byte-level-bpe corpus", model=model.name,
                 reference="transformers %s AutoTokenizer.from_pretrained(gguf_file=...)" % __import__("transformers").__version__),
        "cases": cases, "decode": decodes})
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        (out / "smollm2_tokenizer.json").write_text(
            json.dumps(json.loads(Path(tmp, "tokenizer.json").read_text()), ensure_ascii=False,
                       separators=(",", ":")))
    print("smollm2: %d cases, %d with plain != special, %d decodes" %
          (len(cases), sum("plain" in c for c in cases), len(decodes)))
    if llama_cpp:
        compare_llama_cpp(model, out, cases)


def compare_llama_cpp(model, out, cases):
    """llama.cpp's "smollm" pre-tokenizer isolates every digit before the
    GPT-2 regex (the Digits(individual_digits=True) + ByteLevel of SmolLM2's
    own tokenizer.json), while transformers' GGUF loader uses ByteLevel's
    GPT-2 regex alone. Each disagreement is checked against that
    explanation by re-encoding with tokenizers and Digits + ByteLevel."""
    from llama_cpp import Llama
    import llama_cpp
    from tokenizers import Tokenizer, pre_tokenizers
    llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
    digits = Tokenizer.from_str((out / "smollm2_tokenizer.json").read_text())
    digits.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False)])
    diffs, unexplained = [], []
    for c in cases:
        for mode, special in (("special", True), ("plain", False)):
            want = c.get(mode, c["special"])
            got = llm.tokenize(c["text"].encode("utf-8"), add_bos=False, special=special)
            if got != want:
                digits.encode_special_tokens = not special
                item = {"text": c["text"], "mode": mode, "transformers": want, "llama_cpp": got}
                diffs.append(item)
                if digits.encode(c["text"], add_special_tokens=False).ids != got:
                    unexplained.append(item)
    write_json(out / "llama_cpp_comparison.json", {
        **header("llama.cpp comparison", llama_cpp_python=llama_cpp.__version__, compared=2 * len(cases),
                 disagreements=len(diffs), unexplained=len(unexplained),
                 explanation="llama.cpp's 'smollm' pre-tokenizer splits every \\p{N} character off before the "
                             "GPT-2 regex (SmolLM2's original Digits(individual_digits=True) + ByteLevel); "
                             "transformers' GGUF loader applies the GPT-2 regex alone, so ' 12', '  1', "
                             "'\\n\\n4', ' \u00bd' split differently. Every listed disagreement equals "
                             "tokenizers with Digits + ByteLevel unless it is under 'unexplained_cases'."),
        "examples": diffs[:40], "unexplained_cases": unexplained})
    print("llama.cpp: %d of %d comparisons disagree, %d not explained by the Digits pre-tokenizer" %
          (len(diffs), 2 * len(cases), len(unexplained)))


# ---------------------------------------------------------------- SentencePiece

def spm_training_text(rng):
    lines = []
    for _ in range(3000):
        lang = rng.choice(["en", "en", "en", "fr", "de", "es", "ru", "el", "zh", "ja"])
        words = [rng.choice(WORDS[lang]) for _ in range(rng.randrange(3, 15))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), rng.choice(DIGITS))
        lines.append(" ".join(words))
    return lines


def spm(out, rng):
    import sentencepiece as spm_lib
    import gguf
    lines = spm_training_text(rng)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "m")
        # Llama-2's settings: BPE, byte fallback, digits split, no
        # normalisation, whitespace kept as is, a dummy prefix space.
        spm_lib.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_prefix=prefix, model_type="bpe", vocab_size=700,
            byte_fallback=True, split_digits=True, character_coverage=0.995,
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
            allow_whitespace_only_pieces=True, user_defined_symbols=["<tool>"], bos_id=1, eos_id=2, unk_id=0,
            pad_id=-1, num_threads=1, minloglevel=2, seed_sentencepiece_size=100000)
        sp = spm_lib.SentencePieceProcessor(model_file=prefix + ".model")
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    types = []
    for i in range(n):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        elif tokens[i] == "<tool>":
            types.append(4)
        else:
            types.append(1)
    w = gguf.GGUFWriter(str(out / "spm_bpe.gguf"), "llama")
    w.add_name("patchbay tokenizer fixture (%s)" % GENERATOR)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_space_prefix(True)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # transformers' own way of building a tokenizer from this metadata.
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    backend, _ = convert_gguf_tokenizer("llama", {"tokenizer_type": "llama", "tokens": tokens, "scores": scores,
                                                  "token_type": types, "add_prefix_space": True})
    texts = [
        "", " ", "hello", " hello", "  hello", "hello world", "hello  world", "hello\nworld", "trailing ",
        "café au lait", "Straße", "привет мир", "你好世界", "未知的字符", "😀", "emoji 👍🏽 here",
        "12345", "3.14159", "<tool>", "a<tool>b", " <tool> ", "<s>", "</s>", "<unk>", "\t\ttabs",
        "\u2581", "▁▁x", "x\u2581y", "\x00", "Ωμέγα σου", "¿qué? ¡hola!", "ÉCOLE", "ß", "ǅ",
    ]
    langs = list(WORDS)
    while len(texts) < 400:
        parts = []
        for _ in range(rng.randrange(1, 12)):
            r = rng.random()
            if r < 0.6:
                parts.append(rng.choice(WORDS[rng.choice(langs)]))
            elif r < 0.7:
                parts.append(rng.choice(EMOJI))
            elif r < 0.8:
                parts.append(rng.choice(PUNCT))
            elif r < 0.9:
                parts.append(rng.choice(DIGITS))
            else:
                parts.append(rng.choice(["<tool>", "\n", "\t", "  "]))
            parts.append(rng.choice([" ", " ", "", "  ", "\n"]))
        texts.append("".join(parts))
    cases = []
    disagreements = 0
    for text in texts:
        ids = sp.encode(text)
        case = {"text": text, "ids": ids, "decoded": sp.decode(ids)}
        hf = backend.encode(text, add_special_tokens=False).ids
        if hf != ids:
            case["hf_ids"] = hf
            disagreements += 1
        hf_text = backend.decode(ids, skip_special_tokens=False)
        if hf_text != case["decoded"]:
            case["hf_decoded"] = hf_text
        cases.append(case)
    write_json(out / "spm_corpus.json", {
        **header("sentencepiece bpe corpus", model="spm_bpe.gguf",
                 reference="sentencepiece %s SentencePieceProcessor.encode" % spm_lib.__version__,
                 vocab_size=n), "cases": cases})
    print("spm: vocab %d, %d cases, transformers disagrees on %d, decode on %d" %
          (n, len(cases), disagreements, sum("hf_decoded" in c for c in cases)))


# ---------------------------------------------------------------- tokenizer.json variants

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def bpe_variants(out, rng, smollm2_texts, only=None):
    from tokenizers import Tokenizer, Regex, models, normalizers, pre_tokenizers, decoders, trainers, AddedToken
    out = out / "bpe_variants"
    out.mkdir(exist_ok=True)
    train = spm_training_text(rng) + CODE * 20 + smollm2_texts[:500]
    variants = {
        "digits_bytelevel": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                    pre_tokenizers.ByteLevel(add_prefix_space=False)]),
        "llama3_split": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                         use_regex=False)]),
        "qwen2_split": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                        use_regex=False)]),
        # GPT-NeoX's shape: an NFC normaliser before byte-level BPE
        "nfc_bytelevel": pre_tokenizers.ByteLevel(add_prefix_space=False),
    }
    for name, pre in variants.items():
        if only and name not in only:
            continue
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre
        if name == "nfc_bytelevel":
            tk.normalizer = normalizers.NFC()
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|end|>", "<|start|>"], show_progress=False)
        tk.train_from_iterator(train, trainer)
        tk.add_tokens([AddedToken("<think>", special=False, normalized=False)])
        js = json.loads(tk.to_str())
        if name == "digits_bytelevel":  # the older "a b" spelling of merges
            js["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in js["model"]["merges"]]
        (out / (name + ".json")).write_text(json.dumps(js, ensure_ascii=False, separators=(",", ":")))
        tk = Tokenizer.from_str(json.dumps(js))
        texts = smollm2_texts[::3] + ["<|end|><think>x</think>", "1234567", "I'M they'll"]
        if name == "nfc_bytelevel":
            texts += VOCAB_EXTRA
        cases = [{"text": t, "special": tk.encode(t, add_special_tokens=False).ids} for t in texts]
        write_json(out / (name + "_corpus.json"),
                   {**header("tokenizer.json corpus", tokenizer=name + ".json",
                             reference="tokenizers Tokenizer.encode"), "cases": cases})
        print("variant %s: %d cases" % (name, len(cases)))


GEMMA3_EXTRA = [
    "<start_of_turn>user\nHello!<end_of_turn>\n<start_of_turn>model\n",
    "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>", "<end_of_turn>", "<start_of_turn>user", " <start_of_turn> ", "x<end_of_turn>y",
    "<bos>", "<eos>", "<pad>", "<unk>", "<mask>", "[multimodal]", "<start_of_image>", "<end_of_image>",
    "<unused0>", "<unused6241>", "<start_of_turn", "<Start_Of_Turn>",
    "<table><tr><td>1</td></tr></table>", "<b>bold</b> <i>it</i>", "<div>x</div>", "<s>", "</s>",
    " ", "  ", "   ", "    ", " " * 31, " " * 32, " " * 33, " " * 70, "a" + " " * 35 + "b",
    " leading", "  leading", "   three", "trailing  ", "a b", "a  b", "a   b  c    d",
    "\n", "\n\n", "\n" * 31, "\n" * 32, "\n" * 45, "x\n\ny", "x \n y", " \n\n ", "\r\n\r\n",
    "\t", "\t\t", "\t" * 31, "\t" * 40, "\t \t", "a\tb\t\tc", " \t\n \t\n",
    "def f():\n    return 1\n\n\nclass A:\n\tpass\n",
    "😀", "👨‍👩‍👧‍👦", "🏳️‍🌈 🇫🇷", "你好，世界！", "日本語のテキストです。", "한국어 텍스트", "ภาษาไทย",
    "\U0001f9ff\U0001fae8", "\U0001d54f\U0001d550", "\U00010348\U00011000", "\U000e0041", "\ue000\uf8ff",
    "\U0010fffd", "\U0001e4d0\U0001e4d1", "\x00", "a\x00b", "\x01\x02\x7f", "\u00ad\u200b\ufeff",
    "\u2581", "\u2581\u2581x", "x\u2581 y", "<0x41>", "<0x0A>", "\u0300\u0301", "\U0001f600" * 5,
]


def gemma3(model, out):
    from transformers import AutoTokenizer
    import transformers
    tok = AutoTokenizer.from_pretrained(str(model.parent), gguf_file=model.name)
    corpus = json.loads((out / "smollm2_corpus.json").read_text())
    texts = [c["text"] for c in corpus["cases"]]

    def ids(text):
        special = tok(text, add_special_tokens=False)["input_ids"]
        plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        case = {"special": special}
        if plain != special:
            case["plain"] = plain
        return case

    cases = [ids(t) for t in texts]
    extra = [{"text": t, **ids(t)} for t in GEMMA3_EXTRA]
    write_json(out / "gemma3_corpus.json", {
        **header("sentencepiece-bpe corpus", model=model.name, vocab_size=len(tok),
                 texts="smollm2_corpus.json cases, by index",
                 reference="transformers %s AutoTokenizer.from_pretrained(gguf_file=...) (%s)" %
                           (transformers.__version__, type(tok).__name__)),
        "cases": cases, "extra": extra})
    print("gemma3: %d corpus cases + %d extra, %d with plain != special" %
          (len(cases), len(extra), sum("plain" in c for c in cases + extra)))


# ---------------------------------------------------------------- vocab-only GGUFs

# The vocabulary-only GGUFs llama.cpp ships for its tokenizer tests
# (scripts/fetch-model.sh vocab puts them under models/vocab/), each with the
# texts and ids llama.cpp's convert_hf_to_gguf_update.py wrote from the
# original Hugging Face tokenizer (.inp/.out; none for gpt-neox).
VOCABS = {"gpt2": "ggml-vocab-gpt-2.gguf", "gpt_neox": "ggml-vocab-gpt-neox.gguf", "phi3": "ggml-vocab-phi-3.gguf"}

VOCAB_EXTRA = [
    "<|endoftext|>", "x<|endoftext|>y", " <|endoftext|> ", "<|padding|>", "<|end|>", "<|user|>\nHi<|end|>\n<|assistant|>\n",
    "<|system|>\nBe terse.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", "<s>", "</s>", "<unk>", "<|end",
    " ", "  ", "   ", " " * 23, " " * 24, " " * 25, " " * 50, "a  b", "a   b    c", "  leading", "trailing   ",
    "\n  x", "x  \n", "\t  \t",
    # NFC: decomposed forms (the GPT-NeoX tokenizer normalises to NFC)
    "e\u0301le\u0300ve", "A\u030angstro\u0308m", "\u1100\u1161\u11a8", "n\u0303o", "\u0041\u030a\u0301",
    "\u212b", "\u2126", "\ufb01", "\u00c5", "Cafe\u0301 cre\u0300me bru\u0302le\u0301e",
    "\u0300\u0301", "x\u0327\u0301", "\u0915\u093c", "\u30ab\u3099",
]


def vocab_reference(name, path):
    """transformers' tokenizer loaded from the GGUF (GPT-2, Phi-3); for
    GPT-NeoX, which transformers cannot load from a GGUF, a `tokenizers`
    tokenizer built from the GGUF's vocabulary and merges with the
    structure of EleutherAI's 20B tokenizer.json: NFC normaliser, byte-level
    pre-tokenizer without a prefix space, <|endoftext|> and <|padding|> as
    special tokens, the 23 runs of 2 to 24 spaces (ids 50254..50276) as
    normalised added tokens, and llama.cpp's padding tokens after them."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if name != "gpt_neox":
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return tok, "transformers AutoTokenizer.from_pretrained(gguf_file=...) (%s)" % type(tok).__name__
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    r = GGUFReader(str(path))
    field = r.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    field = r.fields["tokenizer.ggml.merges"]
    merges = [tuple(bytes(field.parts[i]).decode("utf-8").split(" ", 1)) for i in field.data]
    base = {t: i for i, t in enumerate(tokens[:50254])}
    bpe = Tokenizer(models.BPE(vocab=base, merges=merges, unk_token=None, fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens([AddedToken(tokens[0], special=True, normalized=False),
                            AddedToken(tokens[1], special=True, normalized=False)])
    spaces = [AddedToken(tokens[i], special=False, normalized=True) for i in range(50254, 50277)]
    bpe.add_tokens(spaces)
    # llama.cpp pads the vocabulary to the embedding's 50432 rows with
    # user-defined "[PAD<id>]" tokens; kept, as a GGUF reader sees them
    bpe.add_tokens([AddedToken(t, special=False, normalized=False) for t in tokens[50277:]])
    assert [bpe.token_to_id(t) for t in tokens[50254:]] == list(range(50254, len(tokens)))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=tokens[0], eos_token=tokens[0])
    return tok, ("tokenizers Tokenizer from the GGUF vocabulary and merges with the 20B tokenizer.json "
                 "structure (NFC, ByteLevel add_prefix_space=false, added tokens 0, 1 special and "
                 "50254..50276 normalized)")


def llama_cpp_cases(path):
    """llama.cpp's .inp/.out pairs: texts and the original tokenizer's ids."""
    inp, out = Path(str(path) + ".inp"), Path(str(path) + ".out")
    if not inp.exists():
        return []
    texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    lines = out.read_text(encoding="utf-8").split("\n")
    return [{"text": t, "ids": [int(x) for x in lines[i].split()]} for i, t in enumerate(texts)]


def vocab_corpora(vocab_dir, out):
    import transformers
    corpus = json.loads((out / "smollm2_corpus.json").read_text())
    texts = [c["text"] for c in corpus["cases"]]
    for name, file in VOCABS.items():
        path = vocab_dir / file
        tok, how = vocab_reference(name, path)

        def ids(text):
            special = tok(text, add_special_tokens=False)["input_ids"]
            plain = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            case = {"special": special}
            if plain != special:
                case["plain"] = plain
            return case

        upstream = llama_cpp_cases(path)
        for c in upstream:  # the reference agrees with the original tokenizer where llama.cpp recorded it
            got = tok(c["text"], add_special_tokens=False)["input_ids"]
            assert got == c["ids"], (name, c["text"], got, c["ids"])
        cases = [ids(t) for t in texts]
        extra = [{"text": t, **ids(t)} for t in VOCAB_EXTRA]
        # A token the GGUF marks user-defined (a plain added token, which
        # split_special_tokens leaves whole) that transformers still splits
        # there: for Phi-3, "</s>", which LlamaTokenizer first registers as
        # its default EOS (special) before the GGUF's types make it plain.
        quirks = []
        from gguf import GGUFReader
        r = GGUFReader(str(path))
        field, types = r.fields["tokenizer.ggml.tokens"], r.fields["tokenizer.ggml.token_type"]
        for i, part in enumerate(field.data):
            if int(types.parts[types.data[i]][0]) != 4:
                continue
            t = bytes(field.parts[part]).decode("utf-8").replace("\u2581", " ")
            if tok(t, add_special_tokens=False, split_special_tokens=True)["input_ids"] != [i]:
                quirks.append({"text": t, "parse_special": 0,
                               "why": "user-defined in the GGUF, yet split by transformers under "
                                      "split_special_tokens (registered as a special token first)"})
        write_json(out / ("vocab_%s_corpus.json" % name), {
            **header("vocabulary-only corpus", vocab=file, vocab_size=len(tok),
                     vocab_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                     texts="smollm2_corpus.json cases, by index",
                     reference="transformers %s; %s" % (transformers.__version__, how),
                     llama_cpp="texts and ids of llama.cpp's %s.inp/.out (the original Hugging Face tokenizer), "
                               "equal to the reference" % file if upstream else None),
            "cases": cases, "extra": extra, "llama_cpp": upstream, "reference_quirks": quirks})
        print("%s: %d corpus cases + %d extra + %d llama.cpp cases (all equal to the reference), "
              "%d with plain != special, reference quirks %s" % (name, len(cases), len(extra), len(upstream),
                                            sum("plain" in c for c in cases + extra),
                                            [q["text"] for q in quirks]))


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--vocab" in sys.argv:
        vocab_dir = Path(args[0] if args else ROOT / "models" / "vocab").resolve()
        out = Path(args[1] if len(args) > 1 else ROOT / "tests" / "fixtures" / "tokenizer")
        vocab_corpora(vocab_dir, out)
        bpe_variants(out, random.Random(SEED + 2), make_corpus(random.Random(SEED)), only=["nfc_bytelevel"])
        return
    if "--gemma3" in sys.argv:
        model = Path(args[0] if args else ROOT / "models" / "gemma-3-270m-q4_k_m.gguf").resolve()
        out = Path(args[1] if len(args) > 1 else ROOT / "tests" / "fixtures" / "tokenizer")
        gemma3(model, out)
        return
    model = Path(args[0] if args else ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf").resolve()
    out = Path(args[1] if len(args) > 1 else ROOT / "tests" / "fixtures" / "tokenizer")
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    smollm2(model, out, rng, "--llama-cpp" in sys.argv)
    spm(out, random.Random(SEED + 1))
    bpe_variants(out, random.Random(SEED + 2), make_corpus(random.Random(SEED)))


if __name__ == "__main__":
    main()
