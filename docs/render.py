"""Renders every figure of README.md and docs/*.md from committed JSON.

A figure is a number quoted from a result. In the Markdown it sits between two HTML comments, which
GitHub does not show, so a page stays readable as it is:

    <!-- figure: results/pretrained/avae_color_mnist_conv/robustness.json adversarial_accuracy.digit.0.1 percent -->67 %<!-- /figure -->

The opening comment names a JSON file (relative to the repository root), a key path into it and a format.
Key path segments are separated by dots; a key that itself holds dots (an epsilon such as "0.1") is
matched whole, longest key first, and an integer segment indexes a list. Formats:

    percent, percent1, percent2     value x 100 with 0, 1 or 2 decimals, then " %"
    points, points1                 value x 100 with 0 or 1 decimals, no unit (for tables in %)
    <a Python format spec>          for example .1f, .3f, ,d, ,.0f, .2f, applied to the value as is

A JSON null renders as "n/a" (a placeholder file waiting for its run).

    python docs/render.py            rewrite every page's figures from their JSON
    python docs/render.py --check    change nothing; list the figures that disagree with their JSON, exit 1 if any
    python docs/render.py --find 0.743 [--tolerance 0.0005]
                                     which committed JSON values equal a number (to write a new figure's marker)

Numbers with no committed JSON are not typed into the pages: they cite the results file that holds them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent

FIGURE = re.compile(r"<!-- figure: (?P<file>\S+) (?P<key>\S+) (?P<fmt>\S+) -->(?P<text>.*?)<!-- /figure -->", re.DOTALL)


def pages(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md"] + sorted((root / "docs").glob("*.md"))


def lookup(data, key: str):
    """The value at a dotted key path; a key holding dots is matched whole, longest first."""
    parts = key.split(".")
    node = data
    i = 0
    while i < len(parts):
        if isinstance(node, list):
            node = node[int(parts[i])]
            i += 1
            continue
        if not isinstance(node, dict):
            raise KeyError(f"{key}: {'.'.join(parts[:i])} is not an object")
        for j in range(len(parts), i, -1):
            candidate = ".".join(parts[i:j])
            if candidate in node:
                node = node[candidate]
                i = j
                break
        else:
            raise KeyError(f"{key}: no key {parts[i]!r} after {'.'.join(parts[:i]) or 'the top'}")
    return node


def format_value(value, fmt: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number: {value!r}")
    match = re.fullmatch(r"(percent|points)(\d?)", fmt)
    if match:
        decimals = int(match.group(2) or 0)
        text = f"{value * 100:.{decimals}f}"
        if text.startswith("-") and float(text) == 0:
            text = text[1:]
        return text + (" %" if match.group(1) == "percent" else "")
    return format(value, fmt)


_cache: dict[pathlib.Path, object] = {}


def load(root: pathlib.Path, name: str):
    path = (root / name).resolve()
    if path not in _cache:
        _cache[path] = json.loads(path.read_text())
    return _cache[path]


def render_text(text: str, root: pathlib.Path = ROOT) -> str:
    """The page with every figure filled from its JSON (raises if a file, key or format is wrong)."""

    def fill(match: re.Match) -> str:
        value = lookup(load(root, match["file"]), match["key"])
        rendered = format_value(value, match["fmt"])
        return f"<!-- figure: {match['file']} {match['key']} {match['fmt']} -->{rendered}<!-- /figure -->"

    return FIGURE.sub(fill, text)


def drift(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """One line per figure of the page that disagrees with its JSON."""
    lines = []
    text = path.read_text()
    for match in FIGURE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        try:
            expected = format_value(lookup(load(root, match["file"]), match["key"]), match["fmt"])
        except (OSError, KeyError, ValueError, IndexError, json.JSONDecodeError) as error:
            lines.append(f"{path.relative_to(root)}:{line}: {match['file']} {match['key']}: {error}")
            continue
        if match["text"] != expected:
            lines.append(
                f"{path.relative_to(root)}:{line}: {match['text']!r}, but {match['file']} {match['key']} "
                f"gives {expected!r}"
            )
    return lines


def check(root: pathlib.Path = ROOT) -> list[str]:
    _cache.clear()
    return [line for page in pages(root) for line in drift(page, root)]


def render(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Rewrites the pages whose figures changed; returns them."""
    _cache.clear()
    changed = []
    for page in pages(root):
        text = page.read_text()
        new = render_text(text, root)
        if new != text:
            page.write_text(new)
            changed.append(page)
    return changed


def committed_json(root: pathlib.Path = ROOT) -> list[str]:
    out = subprocess.run(["git", "ls-files", "*.json"], cwd=root, capture_output=True, text=True, check=True)
    return [name for name in out.stdout.split() if not name.startswith("tests/")]


def find(number: float, tolerance: float, root: pathlib.Path = ROOT) -> list[str]:
    """`file key value` for every committed JSON number within tolerance of number."""
    hits = []

    def walk(node, prefix, name):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key), name)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{prefix}.{index}" if prefix else str(index), name)
        elif isinstance(node, (int, float)) and not isinstance(node, bool) and abs(node - number) <= tolerance:
            hits.append(f"{name} {prefix} {node}")

    for name in committed_json(root):
        try:
            walk(json.loads((root / name).read_text()), "", name)
        except (OSError, json.JSONDecodeError):
            continue
    return hits


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    parser.add_argument("--find", type=float, help="list committed JSON values equal to this number")
    parser.add_argument("--tolerance", type=float, default=0.0005)
    args = parser.parse_args(argv)
    if args.find is not None:
        print("\n".join(find(args.find, args.tolerance)))
        return 0
    if args.check:
        problems = check()
        print("\n".join(problems) if problems else "every figure agrees with its JSON")
        return 1 if problems else 0
    changed = render()
    print("\n".join(f"rendered {page.relative_to(ROOT)}" for page in changed) or "nothing to change")
    return 0


if __name__ == "__main__":
    sys.exit(main())
