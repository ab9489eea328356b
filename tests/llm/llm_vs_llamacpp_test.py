#!/usr/bin/env python3
"""Checks scripts/llm_vs_llamacpp.py (the llama.cpp comparison behind docs/benchmarks.md) against the real mmsb-llm
on stories260K and a stand-in llama-bench whose speed is known, so the medians and ratios it prints can be checked.

Usage: llm_vs_llamacpp_test.py SCRIPT MMSB_LLM SHARED_DIR"""
import json
import os
import subprocess
import sys
import tempfile

script, mmsb_llm, shared = sys.argv[1:4]
model = os.path.join(shared, "models", "stories260K-f32.gguf")
if not os.path.isfile(model):
    sys.exit(f"FAIL: test model missing: {model} (the tests read ../shared/models beside the source tree)")

# A llama-bench stand-in: reports 500 tok/s wall and burns CPU in proportion to its repetitions, so the script's
# CPU-time difference between a 3- and a 1-repetition run measures it (0.05 s per repetition: 128 tokens in
# 0.05 CPU s is 2,560 tok per CPU second).
STAND_IN = r'''#!/usr/bin/env python3
import json, resource, sys
args = sys.argv[1:]
reps = int(args[args.index("-r") + 1])
assert args[args.index("-o") + 1] == "json"
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
start = cpu()
while cpu() - start < 0.05 * reps:
    pass
print(json.dumps([{"avg_ts": 500.0}]))
'''

failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


with tempfile.TemporaryDirectory() as folder:
    stand_in = os.path.join(folder, "llama-bench")
    with open(stand_in, "w") as out:
        out.write(STAND_IN)
    os.chmod(stand_in, 0o755)
    run = subprocess.run([sys.executable, script, model, "--llama-bench", stand_in, "--mmsb", mmsb_llm, "--mmsb",
                          mmsb_llm, "--rounds", "2", "--repeat", "1", "--tokens", "16"],
                         capture_output=True, text=True)
    check(run.returncode == 0, f"comparison exited with {run.returncode}: {run.stderr}")
    if run.returncode == 0:
        result = json.loads(run.stdout)
        check(result["rounds"] == 2 and result["model"] == "stories260K-f32.gguf", f"header wrong: {result}")
        check(result["llama_prompt_tok_per_s"] == 500.0, f"llama wall figure not passed through: {result}")
        llama_cpu = result["llama_decode_tok_per_cpu_s"]
        # 16 tokens per 0.05 CPU s = 320; process start-up noise allowed for.
        check(200 < llama_cpu < 400, f"llama tok per CPU second {llama_cpu}, expected about 320")
        for index in (0, 1):
            for name in ("prompt", "decode"):
                mine = result[f"mmsb{index}_{name}_tok_per_cpu_s"]
                ratio = result[f"mmsb{index}_{name}_vs_llama_per_cpu_s"]
                check(mine > 0, f"mmsb{index} {name} figure missing: {result}")
                expected = mine / result[f"llama_{name}_tok_per_cpu_s"]
                check(abs(ratio - expected) <= 0.002 * expected + 0.001, f"ratio {ratio} is not {expected}")
        check("round 2 of 2" in run.stderr, f"no progress output: {run.stderr!r}")

    missing = subprocess.run([sys.executable, script, os.path.join(folder, "absent.gguf"), "--llama-bench", stand_in,
                              "--mmsb", mmsb_llm], capture_output=True, text=True)
    check(missing.returncode == 2 and "no model file" in missing.stderr,
          f"a missing model gave {missing.returncode}: {missing.stderr!r}")
    no_peer = subprocess.run([sys.executable, script, model, "--llama-bench", os.path.join(folder, "nothing"),
                              "--mmsb", mmsb_llm], capture_output=True, text=True)
    check(no_peer.returncode == 2 and "llama-bench not found" in no_peer.stderr,
          f"a missing llama-bench gave {no_peer.returncode}: {no_peer.stderr!r}")

for failure in failures:
    print("FAIL:", failure)
sys.exit(1 if failures else 0)
