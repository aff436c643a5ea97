#!/usr/bin/env bash
# Prepares this machine for the benchmark (bench/, README.md "Benchmark"):
#   - Debian's etcd-server (the baseline), if `etcd` is missing;
#   - protoc (protobuf-compiler), which etcd-client's build script needs, if missing;
#   - then, unless the only argument is `etcd`, the release `charter` binary and the release
#     `charter-bench` binary.
# Idempotent: what is there already is left alone. Needs root for apt-get (as on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v etcd >/dev/null 2>&1 || packages+=(etcd-server)
if [ "${1:-}" != etcd ]; then
  command -v protoc >/dev/null 2>&1 || packages+=(protobuf-compiler)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "== apt-get install ${packages[*]}"
  apt-get update -qq
  # The package's service is not started (no init system here); the bench runs its own members.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
etcd --version | head -1

if [ "${1:-}" = etcd ]; then
  exit 0
fi
echo "== cargo build --release -p charter-cli"
cargo build --release -p charter-cli
echo "== cargo build --release (bench/)"
cargo build --release --manifest-path bench/Cargo.toml
echo "ready: ${CARGO_TARGET_DIR:-bench/target}/release/charter-bench"
