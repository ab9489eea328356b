#!/usr/bin/env python3
"""Draws the baseline ratios of `mmsb-bench --json` runs as an SVG bar chart (no plotting library needed).

    scripts/bench_plot.py run1.json run2.json run3.json -o docs/img/bench_ratios.svg

Each bar is the median over the runs of one `*_ratio` key (mmsb's figure divided by the baseline measured in the
same run); the whiskers span the runs' minimum and maximum; a dashed line marks the target where bench_table.py
knows one. The x axis is logarithmic, centred on 1 (parity with the baseline).
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_table import TARGETS  # noqa: E402  (the same targets as the tables)


def load(paths):
    runs = []
    for p in paths:
        try:
            runs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            sys.exit(f"bench_plot.py: cannot read {p}: {e}")
    return runs


def esc(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="JSON files written by mmsb-bench --json")
    ap.add_argument("-o", "--output", required=True, help="SVG file to write")
    ap.add_argument("--title", default="mmsb vs. baselines measured in the same run (median of runs)")
    args = ap.parse_args()
    runs = load(args.runs)
    keys = sorted({k for r in runs for k in r if k.endswith("_ratio")})
    if not keys:
        sys.exit("bench_plot.py: no *_ratio keys in the runs")
    rows = []
    for k in keys:
        values = [r[k] for r in runs if k in r and isinstance(r[k], (int, float)) and r[k] > 0]
        if values:
            rows.append((k, statistics.median(values), min(values), max(values)))

    lo = min(min(r[2] for r in rows), 0.1)
    hi = max(max(r[3] for r in rows), 10.0)
    lmin, lmax = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    left, width, bar, gap, top = 330, 520, 18, 10, 50
    height = top + len(rows) * (bar + gap) + 50

    def x(v):
        return left + (math.log10(v) - lmin) / (lmax - lmin) * width

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="22" font-size="14" font-weight="bold">{esc(args.title)}</text>']
    for e in range(lmin, lmax + 1):
        xv = x(10 ** e)
        out.append(f'<line x1="{xv:.1f}" y1="{top - 8}" x2="{xv:.1f}" y2="{height - 40}" stroke="#ddd"/>')
        out.append(f'<text x="{xv:.1f}" y="{height - 24}" text-anchor="middle">{10 ** e:g}</text>')
    out.append(f'<line x1="{x(1):.1f}" y1="{top - 8}" x2="{x(1):.1f}" y2="{height - 40}" stroke="#444"/>')
    out.append(f'<text x="{left + width / 2:.0f}" y="{height - 8}" text-anchor="middle">'
               'ratio (log scale; 1 = the baseline)</text>')
    for i, (k, med, mn, mx) in enumerate(rows):
        y = top + i * (bar + gap)
        x0, x1 = sorted((x(1), x(med)))
        out.append(f'<text x="{left - 8}" y="{y + bar - 4}" text-anchor="end">{esc(k)}</text>')
        out.append(f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{bar}" fill="#4a7ab8"/>')
        out.append(f'<line x1="{x(mn):.1f}" y1="{y + bar / 2}" x2="{x(mx):.1f}" y2="{y + bar / 2}" '
                   'stroke="black"/>')
        out.append(f'<text x="{max(x1, x(mx)) + 4:.1f}" y="{y + bar - 4}">{med:.3g}</text>')
        target = TARGETS.get(k)
        if target:
            value = float(target[0].split()[-1].replace(",", ""))  # "<= 1.5" -> 1.5
            tx = x(value)
            out.append(f'<line x1="{tx:.1f}" y1="{y - 2}" x2="{tx:.1f}" y2="{y + bar + 2}" stroke="#c33" '
                       'stroke-width="2" stroke-dasharray="3,2"/>')
    out.append(f'<text x="10" y="{height - 8}" fill="#c33">dashed: target</text>')
    out.append("</svg>")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
