#!/usr/bin/env python3
"""Draws cost per node against graph size (log-log) from `mmsb-bench graph --json` runs, as an SVG.

    scripts/scale_plot.py runs/*.json -o docs/img/scale_per_node.svg [--shape tree]

Each input file holds one or more JSON documents as `mmsb-bench graph --json` writes them: "shape", "nodes" and
one object per implementation ("mmsb", "oneTBB", or a peer measured outside the repository written the same way,
e.g. "Taskflow") with "build_ns_per_node", "bytes_per_node" and "full_wave_ns_per_node". The plot has one panel per
figure, one line per implementation, a point per size at the median of the runs of that size; the whiskers span the
runs' minimum and maximum. Both axes are logarithmic: a flat line means a cost per node that does not grow with N.
No plotting library is needed.
"""
import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

FIGURES = [("build_ns_per_node", "build, ns per node"), ("bytes_per_node", "resident bytes per node"),
           ("full_wave_ns_per_node", "full wave, ns per node")]
COLOURS = ["#4a7ab8", "#c8553d", "#3d9a50", "#8a5fb8", "#b8860b"]


def documents(path):
    """Every JSON document in the file (pretty-printed ones and one-per-line ones alike)."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        sys.exit(f"scale_plot.py: cannot read {path}: {e}")
    decoder, at, docs = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return docs
        try:
            doc, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError as e:
            sys.exit(f"scale_plot.py: {path} is not JSON at offset {at}: {e.msg}")
        docs.append(doc)


def shape_name(description):
    """"fan-in tree of 1000 leaves, fan-in 8" -> "tree" (mmsb-bench's descriptions; peers may write the name)."""
    words = description.replace(",", " ").split()
    return next((name for name in ("chain", "tree", "lattice", "random") if name in words), description)


def collect(paths, shape):
    """{implementation: {figure: {nodes: [values]}}} for the runs of the given shape."""
    points = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for path in paths:
        for doc in documents(path):
            if not isinstance(doc, dict) or "nodes" not in doc:
                sys.exit(f"scale_plot.py: {path}: a document without \"nodes\" is not a graph run")
            if shape_name(str(doc.get("shape", ""))) != shape:
                continue
            for impl, figures in doc.items():
                if not isinstance(figures, dict):
                    continue
                for key, _ in FIGURES:
                    value = figures.get(key)
                    if isinstance(value, (int, float)) and value > 0:
                        points[impl][key][int(doc["nodes"])].append(float(value))
    return points


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def decades(values):
    return math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)) + 1e-9)


def panel(out, left, top, size, key, title, points, impls):
    xs = [n for impl in impls for n in points[impl][key]]
    ys = [v for impl in impls for vals in points[impl][key].values() for v in vals]
    if not xs:
        return
    (x0, x1), (y0, y1) = decades(xs), decades(ys)
    y1 = max(y1, y0 + 1)
    x1 = max(x1, x0 + 1)

    def px(n):
        return left + (math.log10(n) - x0) / (x1 - x0) * size

    def py(v):
        return top + size - (math.log10(v) - y0) / (y1 - y0) * size

    out.append(f'<text x="{left + size / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">{esc(title)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#888"/>')
    for e in range(x0, x1 + 1):
        out.append(f'<line x1="{px(10 ** e):.1f}" y1="{top}" x2="{px(10 ** e):.1f}" y2="{top + size}" stroke="#eee"/>')
        out.append(f'<text x="{px(10 ** e):.1f}" y="{top + size + 16}" text-anchor="middle">10^{e}</text>')
    for e in range(y0, y1 + 1):
        out.append(f'<line x1="{left}" y1="{py(10 ** e):.1f}" x2="{left + size}" y2="{py(10 ** e):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{py(10 ** e) + 4:.1f}" text-anchor="end">{10 ** e:g}</text>')
    out.append(f'<text x="{left + size / 2}" y="{top + size + 34}" text-anchor="middle">nodes</text>')
    for i, impl in enumerate(impls):
        series = sorted(points[impl][key].items())
        if not series:
            continue
        colour = COLOURS[i % len(COLOURS)]
        line = " ".join(f"{px(n):.1f},{py(statistics.median(v)):.1f}" for n, v in series)
        out.append(f'<polyline class="series" data-impl="{esc(impl)}" data-figure="{key}" points="{line}" '
                   f'fill="none" stroke="{colour}" stroke-width="2"/>')
        for n, v in series:
            cx = px(n)
            out.append(f'<line x1="{cx:.1f}" y1="{py(min(v)):.1f}" x2="{cx:.1f}" y2="{py(max(v)):.1f}" stroke="{colour}"/>')
            out.append(f'<circle cx="{cx:.1f}" cy="{py(statistics.median(v)):.1f}" r="3" fill="{colour}"/>')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="files of `mmsb-bench graph --json` output (and peers written alike)")
    ap.add_argument("-o", "--output", required=True, help="SVG file to write")
    ap.add_argument("--shape", default="tree", help="which shape's runs to draw (chain, tree, lattice, random)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    points = collect(args.runs, args.shape)
    impls = sorted(points, key=lambda i: (i != "mmsb", i != "oneTBB", i))
    if not impls:
        sys.exit(f"scale_plot.py: no runs of shape '{args.shape}' in the files given")
    size, gap, left, top = 260, 90, 70, 60
    width = left + len(FIGURES) * (size + gap)
    height = top + size + 80
    title = args.title or f"{args.shape}: cost per node against nodes (log-log, median of runs)"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           'font-size="12">', '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="14" font-weight="bold">{esc(title)}</text>']
    for i, (key, label) in enumerate(FIGURES):
        panel(out, left + i * (size + gap), top, size, key, label, points, impls)
    for i, impl in enumerate(impls):
        x = left + i * 120
        out.append(f'<rect x="{x}" y="{height - 22}" width="14" height="4" fill="{COLOURS[i % len(COLOURS)]}"/>')
        out.append(f'<text x="{x + 20}" y="{height - 16}">{esc(impl)}</text>')
    out.append("</svg>")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
