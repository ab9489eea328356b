#!/usr/bin/env bash
# Builds the `ci` preset (release flags, warnings as errors) and runs the whole test suite.
# A test that fails or cannot run fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
cmake --preset ci
cmake --build --preset ci -j "$jobs"
ctest --preset ci -j "$jobs"
