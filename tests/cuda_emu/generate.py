#!/usr/bin/env python3
"""Rewrites one cuda/*.cu kernel file into host C++ for the CPU emulator
(tests/cuda_emu/README.md). Usage: generate.py INPUT.cu OUTPUT.cpp

Three rewrites, nothing else; any other use of the constructs they cover
stops the build with an error naming the line, so that a kernel edit the
emulator does not understand cannot be skipped silently:

  1. kernel<<<grid, block[, shared_bytes[, stream]]>>>(args...);
       -> pb_emu_launch(kernel, ::pb_emu::make_config(grid, block, ...), args...);
  2. extern __shared__ T name[];
       -> T *const name = (T *)::pb_emu::dynamic_shared();
  3. __shared__ T name[dims];   or   __shared__ T name;
       -> PB_EMU_SHARED(T, name, [dims]);   (per-block storage, emulator.h)

Everything else (qualifiers, intrinsics, dim3, threadIdx, ...) comes from the
fake CUDA headers in this folder. Python 3 standard library only.
"""
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# a plain type: optional qualifiers, one or two words, optional pointer stars
TYPE = r"(?:(?:const|volatile|unsigned|signed|long|short)\s+)*" + IDENT + r"(?:\s*\*)*"
DYNAMIC_SHARED = re.compile(r"extern\s+__shared__\s+(" + TYPE + r")\s+(" + IDENT + r")\s*\[\s*\]\s*;")
STATIC_SHARED = re.compile(r"(?<![A-Za-z0-9_])__shared__\s+(" + TYPE + r")\s+(" + IDENT + r")\s*((?:\[[^\];]+\]\s*)*);")


def fail(path, text, pos, what):
    line = text.count("\n", 0, pos) + 1
    sys.exit(f"{path}:{line}: cuda_emu generator: {what}")


def matching(text, open_pos, path):
    """Index of the bracket closing the one at open_pos ('(' only), skipping
    string and character literals."""
    depth = 0
    i = open_pos
    while i < len(text):
        c = text[i]
        if c in "\"'":
            end = i + 1
            while end < len(text) and text[end] != c:
                end += 2 if text[end] == "\\" else 1
            i = end
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    fail(path, text, open_pos, "unbalanced parentheses")


def split_top_level(text):
    """Splits on commas outside (), [] and {}."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def rewrite_launches(text, path):
    out, pos = [], 0
    while True:
        start = text.find("<<<", pos)
        if start < 0:
            out.append(text[pos:])
            return "".join(out)
        name = re.search(r"(" + IDENT + r")\s*$", text[pos:start])
        if not name:
            fail(path, text, start, "'<<<' not preceded by a kernel name")
        name_start = pos + name.start(1)
        end = text.find(">>>", start)
        if end < 0:
            fail(path, text, start, "'<<<' without '>>>'")
        config = split_top_level(text[start + 3:end])
        if not 2 <= len(config) <= 4 or any(not part for part in config):
            fail(path, text, start, f"launch configuration needs 2 to 4 arguments, got {len(config)}")
        paren = end + 3
        while paren < len(text) and text[paren].isspace():
            paren += 1
        if paren >= len(text) or text[paren] != "(":
            fail(path, text, end, "'>>>' not followed by the kernel's argument list")
        close = matching(text, paren, path)
        after = close + 1
        while after < len(text) and text[after].isspace():
            after += 1
        if after >= len(text) or text[after] != ";":
            fail(path, text, close, "a launch must be a statement of its own (';' after the arguments)")
        # The original text is kept (line breaks included) so that #line
        # numbers stay right.
        args = text[paren + 1:close]
        out.append(text[pos:name_start])
        out.append(f"pb_emu_launch({name.group(1)}, ::pb_emu::make_config({text[start + 3:end]})")
        out.append(f", {args})" if args.strip() else ")")
        pos = close + 1


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: generate.py INPUT.cu OUTPUT.cpp")
    path, output = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        text = f.read()

    text = rewrite_launches(text, path)
    text = DYNAMIC_SHARED.sub(lambda m: f"{m.group(1)} *const {m.group(2)} = ({m.group(1)} *)::pb_emu::dynamic_shared();",
                              text)
    text = STATIC_SHARED.sub(lambda m: f"PB_EMU_SHARED({m.group(1)}, {m.group(2)}, {m.group(3).strip()});", text)

    # Whatever is left of these is a form the rules above do not cover.
    for token in ("<<<", ">>>", "__shared__"):
        at = text.find(token)
        if at >= 0:
            fail(path, text, at, f"'{token}' in a form the generator does not understand")

    with open(output, "w", encoding="utf-8") as f:
        f.write(f"/* Generated by tests/cuda_emu/generate.py from {path}: do not edit. */\n")
        f.write('#include "emulator.h"\n')
        f.write(f'#line 1 "{path}"\n')
        f.write(text)


if __name__ == "__main__":
    main()
