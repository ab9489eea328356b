#!/usr/bin/env python3
"""Measure mmsb-llm against llama.cpp's llama-bench on the same GGUF file, alternating them.

Each round runs llama-bench for a prompt of N tokens (ppN) and for N decoded tokens (tgN), then every mmsb-llm
binary given (`mmsb-llm bench --engine-only -p N -n N`). It prints one JSON line of medians over the rounds:
wall-clock tokens per second and tokens per CPU second of each program, and mmsb / llama.cpp ratios per CPU second.

Tokens per CPU second is the fair figure on a shared machine: a program that waits for a core is not charged for
the wait. llama-bench reports only wall time, so its CPU time per repetition is taken as (CPU time of a run with
R + 2 repetitions - CPU time of a run with R) / 2, which cancels loading and warm-up. mmsb-llm reports its own.

llama.cpp is a peer built outside this repository from its public sources; nothing of it is used here but the
llama-bench program named on the command line.

Example (two mmsb builds, base and new, against llama.cpp, 3 rounds, one thread):
  scripts/llm_vs_llamacpp.py models/s110m-f32.gguf --llama-bench ~/llama.cpp/build/bin/llama-bench \\
      --mmsb /tmp/base/mmsb-llm --mmsb build/release/llm/mmsb-llm --rounds 3 --repeat 3
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys


def children_cpu_s():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_json(command):
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        sys.exit(f"error: cannot run {command[0]}: no such program")
    except subprocess.CalledProcessError as failure:
        sys.exit(f"error: {' '.join(command)} exited with {failure.returncode}:\n{failure.stderr.strip()}")
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        sys.exit(f"error: {command[0]} printed no JSON; its output began: {out[:200]!r}")


def llama_bench(args, prompt, decode, repetitions):
    """Returns (CPU seconds the run took, its mean wall tokens per second)."""
    before = children_cpu_s()
    report = run_json([args.llama_bench, "-m", args.model, "-p", str(prompt), "-n", str(decode), "-t",
                       str(args.threads), "-r", str(repetitions), "-o", "json"])
    return children_cpu_s() - before, report[0]["avg_ts"]


def llama_round(args):
    figures = {}
    for name, (prompt, decode) in {"prompt": (args.tokens, 0), "decode": (0, args.tokens)}.items():
        cpu_short, _ = llama_bench(args, prompt, decode, 1)
        cpu_long, wall = llama_bench(args, prompt, decode, 3)
        figures[f"llama_{name}_tok_per_s"] = wall
        figures[f"llama_{name}_tok_per_cpu_s"] = args.tokens / max((cpu_long - cpu_short) / 2, 1e-9)
    return figures


def mmsb_round(args, index, binary):
    report = run_json([binary, "bench", "--engine-only", "-m", args.model, "-p", str(args.tokens), "-n",
                       str(args.tokens), "-t", str(args.threads), "-r", str(args.repeat), "--rounds", "1", "--json"])
    return {f"mmsb{index}_prompt_tok_per_s": report["prompt_tok_per_s"],
            f"mmsb{index}_decode_tok_per_s": report["tok_per_s"],
            f"mmsb{index}_prompt_tok_per_cpu_s": report["prompt_tok_per_cpu_s"],
            f"mmsb{index}_decode_tok_per_cpu_s": report["tok_per_cpu_s"]}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="GGUF file both programs load")
    parser.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH", "llama-bench"),
                        help="llama.cpp's llama-bench program (default: $LLAMA_BENCH, else llama-bench on PATH)")
    parser.add_argument("--mmsb", action="append", default=None,
                        help="an mmsb-llm binary; repeat to alternate several (default: build/release/llm/mmsb-llm)")
    parser.add_argument("--threads", type=int, default=1, help="threads for both programs (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are over these (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="mmsb-llm bench repetitions per round (default 3)")
    parser.add_argument("--tokens", type=int, default=128, help="prompt length and decoded tokens (default 128)")
    args = parser.parse_args()
    args.mmsb = args.mmsb or ["build/release/llm/mmsb-llm"]
    if not os.path.isfile(args.model):
        parser.error(f"no model file at {args.model}")
    if shutil.which(args.llama_bench) is None:
        parser.error(f"llama-bench not found at {args.llama_bench!r}: build llama.cpp and pass --llama-bench PATH")
    for binary in args.mmsb:
        if shutil.which(binary) is None:
            parser.error(f"mmsb-llm not found at {binary!r}: build it (cmake --build --preset release) or pass --mmsb")
    if min(args.threads, args.rounds, args.repeat, args.tokens) < 1:
        parser.error("--threads, --rounds, --repeat and --tokens must be at least 1")
    return args


def main():
    args = parse_args()
    samples = {}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1} of {args.rounds}", file=sys.stderr)
        figures = llama_round(args)
        for index, binary in enumerate(args.mmsb):
            figures.update(mmsb_round(args, index, binary))
        for key, value in figures.items():
            samples.setdefault(key, []).append(value)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    for index in range(len(args.mmsb)):
        for name in ("prompt", "decode"):
            medians[f"mmsb{index}_{name}_vs_llama_per_cpu_s"] = (medians[f"mmsb{index}_{name}_tok_per_cpu_s"] /
                                                                 medians[f"llama_{name}_tok_per_cpu_s"])
    result = {"model": os.path.basename(args.model), "threads": args.threads, "rounds": args.rounds,
              "mmsb": args.mmsb, "load": float(open("/proc/loadavg").read().split()[0])}
    result.update({key: round(value, 3) for key, value in medians.items()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
