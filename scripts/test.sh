#!/usr/bin/env bash
# Runs every test: the Rust workspace (unit, property and end-to-end tests through the real
# binary), 1,000 seeds of the deterministic simulator, then the third-party checks in Python
# (Azure's receipt verifier).
# Expects the Python packages of tests/python/requirements.txt in .venv (bash .ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo build"
cargo build --workspace --all-targets
echo "== cargo test"
cargo test --workspace
# The benchmark harness is a workspace of its own (bench/: etcd-client needs protoc); its pure
# parts (arguments, statistics, report, chart) build in seconds and are tested here.
echo "== benchmark harness: pure parts"
cargo test --manifest-path bench/Cargo.toml -p charter-bench-core
# 1,000 simulator seeds on both cores (a dev build: the curve crates are optimized even there),
# with the report: seeds/s, simulated hours, faults injected by kind.
echo "== deterministic simulation: 1,000 seeds"
cargo run -q -p charter-sim -- --seeds 1000 --jobs 2
if [ -x .venv/bin/pytest ] && [ -d tests/python ]; then
  echo "== python third-party checks"
  CHARTER_BIN="${CARGO_TARGET_DIR:-target}/debug/charter" .venv/bin/pytest -q tests/python
else
  echo "== python third-party checks skipped: run 'bash .ci/run' once to create .venv"
  exit 1
fi
