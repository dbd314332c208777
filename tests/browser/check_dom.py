#!/usr/bin/env python3
"""Checks the DOM of report.html as headless Chromium rendered it (--dump-dom).

usage: check_dom.py DOM.html [--patterns] [--tokens N] NAME=ROWSxCOLS ...

Every <svg class="heatmap"> must hold exactly data-rows x data-cols
<rect class="cell"> elements, each with a <title> naming a hook
("blocks.L.<hook>"); the heatmaps must be exactly the NAMEs given, with
those sizes; the page's script must have run to its end (body
data-script="ok"); no element may load anything from outside the file.

Scales: each heatmap's legend ends at ±its own data-range (the largest
|effect| of its component). Prompts: section#prompts shows N tokens
(<span class="tok">) in all. Exports (the page opened with #export-all):
each heatmap's SVG link holds a standalone SVG (its style inside, the same
cells) and its PNG link a PNG of twice the SVG's size; body data-png
counts every PNG. Prints what it checked; exits 1 on any failure.

--patterns: the page is patterns.html (forward --html): the heatmaps are
<svg id="pattern-NAME">, each holding only the cells on and below its
diagonal (rows (rows + 1) / 2 of them), its legend ending at 1, and the
tokens are those of section#prompt."""
import base64
import struct
import sys
import urllib.parse
from html.parser import HTMLParser


class Dom(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.heatmaps = {}      # id -> {"rows", "cols", "cells", "titles"}
        self.current = None     # the heatmap being read
        self.in_cell = False
        self.in_title = False
        self.title = ""
        self.body_script = None
        self.body_png = None
        self.external = []
        self.exports = {}       # (format, heatmap id) -> href
        self.in_prompts = False
        self.tokens = 0
        self.in_scale = False
        self.has_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        export = tag == "a" and ("export-svg" in classes or "export-png" in classes)
        for key in ("src", "href", "xlink:href", "data", "poster"):
            value = a.get(key) or ""
            if value and not value.startswith("#") and not (export and value.startswith("data:image/")):
                self.external.append(f"<{tag} {key}={value!r}>")
        if export:
            self.exports[(classes[0][7:], a.get("data-for", "")[8:])] = a.get("href", "")
        if tag == "body":
            self.body_script = a.get("data-script")
            self.body_png = a.get("data-png")
        if tag == "section":
            self.in_prompts = a.get("id") in ("prompts", "prompt")
        if tag == "span" and self.in_prompts and "tok" in classes:
            self.tokens += 1
        if tag == "style" and self.current is not None:
            self.has_style = True
        if tag == "svg" and "heatmap" in classes:
            hid = a.get("id", "")
            self.current = {"rows": int(a["data-rows"]), "cols": int(a["data-cols"]), "cells": 0, "titles": [],
                            "range": float(a.get("data-range", "1")), "width": int(a["width"]),
                            "height": int(a["height"]), "scale_max": ""}
            self.heatmaps[hid] = self.current
        elif tag == "rect" and self.current is not None and classes == ["cell"]:
            self.current["cells"] += 1
            self.in_cell = True
        elif tag == "title" and self.in_cell:
            self.in_title = True
            self.title = ""
        elif tag == "text" and self.current is not None and "scale-max" in classes:
            self.in_scale = True

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None
        elif tag == "section":
            self.in_prompts = False
        elif tag == "rect":
            self.in_cell = False
        elif tag == "text":
            self.in_scale = False
        elif tag == "title" and self.in_title:
            self.in_title = False
            self.current["titles"].append(self.title)

    def handle_data(self, data):
        if self.in_title:
            self.title += data
        if self.in_scale:
            self.current["scale_max"] += data


def check_exports(dom, hid, h):
    """The failures of one heatmap's SVG and PNG downloads."""
    failures = []
    prefix = "data:image/svg+xml;charset=utf-8,"
    href = dom.exports.get(("svg", hid[8:]), "")
    if not href.startswith(prefix):
        return [f"{hid}: no SVG export (href {href[:40]!r})"]
    standalone = Dom()
    standalone.feed(urllib.parse.unquote(href[len(prefix):]))
    got = standalone.heatmaps.get(hid)
    if not got or got["cells"] != h["cells"] or not standalone.has_style:
        failures.append(f"{hid}: the exported SVG has {got and got['cells']} cells (want {h['cells']}), "
                        f"style inside: {standalone.has_style}")
    prefix = "data:image/png;base64,"
    href = dom.exports.get(("png", hid[8:]), "")
    png = base64.b64decode(href[len(prefix):]) if href.startswith(prefix) else b""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        return failures + [f"{hid}: no PNG export (href {href[:40]!r})"]
    width, height = struct.unpack(">II", png[16:24])
    if (width, height) != (2 * h["width"], 2 * h["height"]):
        failures.append(f"{hid}: PNG {width}x{height}, expected twice the SVG's {h['width']}x{h['height']}")
    print(f"  {hid}: SVG export {len(href)} chars, PNG {width}x{height} ({len(png)} bytes)")
    return failures


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    dom = Dom()
    with open(sys.argv[1], encoding="utf-8") as f:
        dom.feed(f.read())
    expected = {}
    args = sys.argv[2:]
    want_tokens = None
    patterns = args[:1] == ["--patterns"]
    if patterns:
        args = args[1:]
    if args[:1] == ["--tokens"]:
        want_tokens = int(args[1])
        args = args[2:]
    for arg in args:
        name, size = arg.split("=")
        rows, cols = size.split("x")
        expected[("pattern-" if patterns else "heatmap-") + name] = (int(rows), int(cols))
    failures = []
    if sorted(dom.heatmaps) != sorted(expected):
        failures.append(f"heatmaps {sorted(dom.heatmaps)}, expected {sorted(expected)}")
    for hid, h in sorted(dom.heatmaps.items()):
        want = expected.get(hid)
        line = f"{hid}: data-rows {h['rows']} data-cols {h['cols']}, {h['cells']} cells"
        if patterns and h["cells"] != h["rows"] * (h["rows"] + 1) // 2:
            failures.append(line + " (cells != rows (rows + 1) / 2: not the lower triangle)")
        elif not patterns and h["cells"] != h["rows"] * h["cols"]:
            failures.append(line + " (cells != rows x cols)")
        if want and (h["rows"], h["cols"]) != want:
            failures.append(line + f" (expected {want[0]} x {want[1]})")
        untitled = [t for t in h["titles"] if not t.startswith("blocks.")]
        if len(h["titles"]) != h["cells"] or untitled:
            failures.append(f"{hid}: {len(h['titles'])} tooltips for {h['cells']} cells, bad: {untitled[:3]}")
        scale = "1" if patterns else "%+.3g" % (h["range"] if h["range"] > 0 else 1)
        if h["scale_max"] != scale:
            failures.append(f"{hid}: legend ends at {h['scale_max']!r}, its data-range {h['range']} says {scale!r}")
        print(f"  {line}, scale ±{h['range']:.4g}")
        failures += check_exports(dom, hid, h)
    if dom.body_png != str(len(dom.heatmaps)):
        failures.append(f"body data-png={dom.body_png!r}: not every PNG was rendered ({len(dom.heatmaps)} heatmaps)")
    if want_tokens is not None:
        print(f"  prompts: {dom.tokens} tokens shown")
        if dom.tokens != want_tokens:
            failures.append(f"section#prompts shows {dom.tokens} tokens, expected {want_tokens}")
    if dom.body_script != "ok":
        failures.append(f"the page's script did not run to its end (body data-script={dom.body_script!r})")
    if dom.external:
        failures.append("external references: " + ", ".join(dom.external[:5]))
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
