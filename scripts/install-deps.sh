#!/usr/bin/env bash
# Installs the Debian 12 packages mmsb needs to build, test and run its examples.
# Idempotent: prints nothing and changes nothing when everything is already installed.
# Usage: scripts/install-deps.sh            (as root, or through sudo when available)
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git python3 clang-format-14
  libtbb-dev libboost-dev libboost-graph-dev libhwloc-dev
  libvulkan-dev glslc mesa-vulkan-drivers
  libspdlog-dev libfmt-dev
  libprotobuf-dev protobuf-compiler
  libopenmpi-dev openmpi-bin
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev libxxhash-dev libzstd-dev libpng-dev
)

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo "$0" "$@"
  fi
  echo "install-deps: these packages are missing: ${missing[*]}" >&2
  echo "install-deps: run this script as root (or install them with apt-get)." >&2
  exit 1
fi

echo "install-deps: installing ${#missing[@]} package(s): ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
