#!/usr/bin/env python3
"""Checks the DOM of report.html as headless Chromium rendered it (--dump-dom).

usage: check_dom.py DOM.html NAME=ROWSxCOLS ...

Every <svg class="heatmap"> must hold exactly data-rows x data-cols
<rect class="cell"> elements, each with a <title> naming a hook
("blocks.L.<hook>"); the heatmaps must be exactly the NAMEs given, with
those sizes; the page's script must have run to its end (body
data-script="ok"); no element may load anything from outside the file.
Prints what it checked; exits 1 on the first failure."""
import sys
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
        self.external = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("src", "href", "xlink:href", "data", "poster"):
            value = a.get(key) or ""
            if value and not value.startswith("#"):
                self.external.append(f"<{tag} {key}={value!r}>")
        if tag == "body":
            self.body_script = a.get("data-script")
        if tag == "svg" and "heatmap" in (a.get("class") or "").split():
            hid = a.get("id", "")
            self.current = {"rows": int(a["data-rows"]), "cols": int(a["data-cols"]), "cells": 0, "titles": []}
            self.heatmaps[hid] = self.current
        elif tag == "rect" and self.current is not None and (a.get("class") or "").split() == ["cell"]:
            self.current["cells"] += 1
            self.in_cell = True
        elif tag == "title" and self.in_cell:
            self.in_title = True
            self.title = ""

    def handle_endtag(self, tag):
        if tag == "svg":
            self.current = None
        elif tag == "rect":
            self.in_cell = False
        elif tag == "title" and self.in_title:
            self.in_title = False
            self.current["titles"].append(self.title)

    def handle_data(self, data):
        if self.in_title:
            self.title += data


def main():
    if len(sys.argv) < 3:
        print(__doc__)
        return 2
    dom = Dom()
    with open(sys.argv[1], encoding="utf-8") as f:
        dom.feed(f.read())
    expected = {}
    for arg in sys.argv[2:]:
        name, size = arg.split("=")
        rows, cols = size.split("x")
        expected["heatmap-" + name] = (int(rows), int(cols))
    failures = []
    if sorted(dom.heatmaps) != sorted(expected):
        failures.append(f"heatmaps {sorted(dom.heatmaps)}, expected {sorted(expected)}")
    for hid, h in sorted(dom.heatmaps.items()):
        want = expected.get(hid)
        line = f"{hid}: data-rows {h['rows']} data-cols {h['cols']}, {h['cells']} cells"
        if h["cells"] != h["rows"] * h["cols"]:
            failures.append(line + " (cells != rows x cols)")
        if want and (h["rows"], h["cols"]) != want:
            failures.append(line + f" (expected {want[0]} x {want[1]})")
        untitled = [t for t in h["titles"] if not t.startswith("blocks.")]
        if len(h["titles"]) != h["cells"] or untitled:
            failures.append(f"{hid}: {len(h['titles'])} tooltips for {h['cells']} cells, bad: {untitled[:3]}")
        print("  " + line)
    if dom.body_script != "ok":
        failures.append(f"the page's script did not run to its end (body data-script={dom.body_script!r})")
    if dom.external:
        failures.append("external references: " + ", ".join(dom.external[:5]))
    for f in failures:
        print("FAIL: " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
