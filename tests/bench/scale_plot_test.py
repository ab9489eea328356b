#!/usr/bin/env python3
"""scripts/scale_plot.py on real `mmsb-bench graph --json` runs and a peer written alike.

Usage: scale_plot_test.py SCALE_PLOT_PY MMSB_BENCH
Checks that every implementation gets one line per figure with a point per size, x growing with the size, the point
at the median of the runs, and that bad input fails with a message instead of a plot.
"""
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

SVG = "{http://www.w3.org/2000/svg}"


def fail(message):
    sys.exit(f"scale_plot_test: FAIL: {message}")


def main():
    script, bench = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = []
        for leaves in (64, 512):
            out = subprocess.run([bench, "graph", "--shape", "tree", "--nodes", str(leaves), "--full-waves", "3",
                                  "--small-waves", "3", "--impl", "mmsb,tbb", "--json"],
                                 capture_output=True, text=True, check=True).stdout
            path = tmp / f"tree{leaves}.json"
            path.write_text(out)
            runs.append(path)
            nodes = json.loads(out)["nodes"]
        # A peer's three runs at one size, one JSON document per line: the plotted point must be their median.
        peer = tmp / "peer.json"
        peer.write_text("".join(
            json.dumps({"shape": "tree", "nodes": nodes, "Peer": {"build_ns_per_node": v, "bytes_per_node": v,
                                                                  "full_wave_ns_per_node": v}}) + "\n"
            for v in (10.0, 1000.0, 100.0)))
        # A second peer with one run of 100 at that size: the first peer's point must sit exactly on it.
        single = tmp / "single.json"
        single.write_text(json.dumps({"shape": "tree", "nodes": nodes, "Single": {
            "build_ns_per_node": 100.0, "bytes_per_node": 100.0, "full_wave_ns_per_node": 100.0}}))
        peer_small = tmp / "peer_small.json"
        peer_small.write_text("".join(
            json.dumps({"shape": "tree", "nodes": 10, name: {"build_ns_per_node": 1.0, "bytes_per_node": 1.0,
                                                             "full_wave_ns_per_node": 1.0}}) + "\n"
            for name in ("Peer", "Single")))
        svg = tmp / "plot.svg"
        inputs = [*map(str, runs), str(peer), str(single), str(peer_small)]
        subprocess.run([sys.executable, script, *inputs, "-o", str(svg)], check=True)
        lines = ET.parse(svg).getroot().findall(f".//{SVG}polyline")
        seen = {(l.get("data-impl"), l.get("data-figure")) for l in lines}
        for impl in ("mmsb", "oneTBB", "Peer"):
            for figure in ("build_ns_per_node", "bytes_per_node", "full_wave_ns_per_node"):
                if (impl, figure) not in seen:
                    fail(f"no line for {impl} {figure}; lines: {sorted(seen)}")
        for line in lines:
            points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
            if len(points) != 2:
                fail(f"{line.get('data-impl')} {line.get('data-figure')}: {len(points)} points, expected 2 sizes")
            if not points[0][0] < points[1][0]:
                fail("x does not grow with the number of nodes")

        def points_of(impl):
            line = next(l for l in lines if l.get("data-impl") == impl and l.get("data-figure") == "bytes_per_node")
            return [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        peer_points, single_points = points_of("Peer"), points_of("Single")
        if abs(peer_points[1][1] - single_points[1][1]) > 0.05:
            fail(f"the point of runs 10, 1000, 100 is not at their median 100: y {peer_points[1][1]} vs "
                 f"{single_points[1][1]}")
        if not peer_points[1][1] < peer_points[0][1]:
            fail("a larger value is not drawn higher")
        bad = tmp / "bad.json"
        bad.write_text("{not json")
        result = subprocess.run([sys.executable, script, str(bad), "-o", str(tmp / "x.svg")], capture_output=True,
                                text=True)
        if result.returncode == 0 or "not JSON" not in result.stderr:
            fail(f"malformed input was accepted: {result.returncode} {result.stderr!r}")
        result = subprocess.run([sys.executable, script, str(runs[0]), "--shape", "lattice", "-o", str(tmp / "y.svg")],
                                capture_output=True, text=True)
        if result.returncode == 0 or "no runs of shape 'lattice'" not in result.stderr:
            fail(f"a shape without runs did not fail clearly: {result.returncode} {result.stderr!r}")
    print("scale_plot_test: ok")


if __name__ == "__main__":
    main()
