#!/usr/bin/env python3
"""Turns several `mmsb-bench --json` outputs into the Markdown table of docs/benchmarks.md.

Usage: scripts/bench_table.py run1.json run2.json run3.json
Each input value is already a median of repetitions; the table shows every run and the median across runs, next to
the target the issue set for that key (if any).
"""
import json
import statistics
import sys

# key -> (target text, predicate on the whole result dict)
TARGETS = {
    "alloc_free_4k_ns": ("< 50", lambda r: r["alloc_free_4k_ns"] < 50),
    "diff_4k_1pct_vs_memcmp_ratio": ("<= 2", lambda r: r["diff_4k_1pct_vs_memcmp_ratio"] <= 2),
    "gpu_upload_ratio": ("<= 1.1", lambda r: r["gpu_upload_ratio"] <= 1.1),
    "gpu_upload_vs_copy_ratio": (">= 0.5", lambda r: r["gpu_upload_vs_copy_ratio"] >= 0.5),
    "apply_4k_1pct_vs_memcpy_ratio": ("<= 1", lambda r: r["apply_4k_1pct_vs_memcpy_ratio"] <= 1),
    "commits_per_s_1t": (">= 5,000,000", lambda r: r["commits_per_s_1t"] >= 5e6),
    "hop_vs_tbb_ratio": ("<= 1.5", lambda r: r["hop_vs_tbb_ratio"] <= 1.5),
    "scaling_2t": (">= 1.7", lambda r: r["scaling_2t"] >= 1.7),
    "cycle_check_10k_ms": ("< 1", lambda r: r["cycle_check_10k_ms"] < 1),
    "deltas_per_s_batch": (">= 10,000,000", lambda r: r["deltas_per_s_batch"] >= 1e7),
    "llm_tok_per_s_f32": (">= 12,000", lambda r: r["llm_tok_per_s_f32"] >= 12000),
    "llm_lora_swap_us": ("< 1000", lambda r: r["llm_lora_swap_us"] < 1000),
    "llm_f32_vs_direct_ratio": (">= 0.9", lambda r: r["llm_f32_vs_direct_ratio"] >= 0.9),
    "log_commits_per_s": (">= 1,000,000", lambda r: r["log_commits_per_s"] >= 1e6),
    "replay_commits_per_s": (">= 1,000,000", lambda r: r["replay_commits_per_s"] >= 1e6),
    "group_commit_factor": (">= 8", lambda r: r["group_commit_factor"] >= 8),
    "llm_paged_tok_s_ratio": (">= 0.8", lambda r: r["llm_paged_tok_s_ratio"] >= 0.8),
    "llm_sync_loads_ratio": ("<= 0.1", lambda r: r["llm_sync_loads_ratio"] <= 0.1),
}


def fmt(value):
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.3f}"
    return f"{value:.4f}"


def main(paths):
    if not paths:
        sys.exit(__doc__)
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    keys = sorted(set().union(*runs))
    medians = {k: statistics.median(r[k] for r in runs if k in r) for k in keys}
    header = "| key | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | target | met |"
    print(header)
    print("|" + " --- |" * (len(runs) + 4))
    for k in keys:
        cells = [fmt(r[k]) if k in r else "—" for r in runs]
        target, check = TARGETS.get(k, ("", None))
        met = ""
        if check is not None:
            try:
                met = "yes" if check(medians) else "**no**"
            except KeyError:
                met = ""
        print(f"| `{k}` | " + " | ".join(cells) + f" | {fmt(medians[k])} | {target} | {met} |")


if __name__ == "__main__":
    main(sys.argv[1:])
