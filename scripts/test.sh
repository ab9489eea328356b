#!/usr/bin/env bash
# The CI test command (README, .ci/run): builds and tests mmsb three ways; a test that fails or cannot run, or a
# build that fails, fails the script.
#   ci    release flags with debug info, warnings as errors: the whole suite;
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer: the whole suite again, where the fuzz drivers also run
#         four seeds each and replay fuzz/regressions.txt;
#   tsan  ThreadSanitizer: the suites of the concurrent modules (runtime, graph, serialize, durable, distributed,
#         llm) and the planted races of tests/tsan/, which show that tests/tsan.supp hides only oneTBB internals.
# MMSB_TEST_PRESETS picks some of them ("ci asan"; default: all three, in that order). Each step's time goes to
# stderr, so the log shows where the time of a CI run goes.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
presets=${MMSB_TEST_PRESETS:-ci asan tsan}

step() {
  local started=$SECONDS
  echo "== $*" >&2
  "$@"
  echo "== $((SECONDS - started)) s: $*" >&2
}

for preset in $presets; do
  case $preset in
    ci | asan)
      step cmake --preset "$preset"
      step cmake --build --preset "$preset" -j "$jobs"
      step ctest --preset "$preset" -j "$jobs"
      ;;
    tsan)
      # Only what those suites need (mmsb_tsan_suite in tests/CMakeLists.txt), and only their tests: the labels
      # of the suites, without the examples and fuzz tests that share a label with them.
      step cmake --preset tsan
      step cmake --build --preset tsan -j "$jobs" --target mmsb_tsan_suite
      step ctest --preset tsan -j "$jobs" -L '^(runtime|graph|serialize|durable|distributed|llm|tsan)$' \
        -LE '^(examples|fuzz|tools)$'
      ;;
    *)
      echo "test.sh: unknown preset '$preset' in MMSB_TEST_PRESETS (ci, asan, tsan)" >&2
      exit 2
      ;;
  esac
done
echo "test.sh: all of '$presets' passed"
