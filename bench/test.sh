#!/usr/bin/env bash
# Every test of the benchmark: the pure core (also run by CI) and the binary's own (which needs
# protoc for etcd-client; scripts/bench-setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace
