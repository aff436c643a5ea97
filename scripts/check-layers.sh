#!/usr/bin/env bash
# Checks DESIGN.md §2 and STYLE.md §1: the deterministic crates use no async runtime, TLS, HTTP,
# files, sockets, clocks or OS randomness, and no crate names a crate above it.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
core_crates="check crypto kv ledger consensus gov attest core apps evm sim"
for crate in $core_crates; do
  deps=$(cargo tree -p "charter-$crate" -e normal --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)
  for banned in tokio rustls hyper mio socket2; do
    if echo "$deps" | grep -qx "$banned"; then
      echo "charter-$crate depends on $banned (only host and cli may)"; status=1
    fi
  done
  # Test modules (after a top-level #[cfg(test)]) may time themselves; production code may not.
  # The simulator's batch runner (its main.rs, outside the library) times itself for its
  # seeds-per-second report; nothing it measures reaches a simulation.
  skip=()
  [ "$crate" = sim ] && skip=(-not -path "crates/sim/src/main.rs")
  hits=$(find "crates/$crate/src" -name '*.rs' "${skip[@]}" -print0 | xargs -0 awk '/^#\[cfg\(test\)\]/ {nextfile} /std::fs|std::net|tokio::|SystemTime|Instant::now|thread_rng|OsRng/ && !/^[[:space:]]*\/\// {print FILENAME ":" FNR ": " $0}')
  if [ -n "$hits" ]; then
    echo "$hits"
    echo "charter-$crate does I/O, reads a clock or draws OS randomness (see above)"; status=1
  fi
done
# Lower crates never name higher ones. `check` (the linearizability checker) depends on no other
# crate, so any crate's tests may use it.
order="check crypto kv ledger consensus gov attest core apps evm sim host cli"
position() { local i=0; for c in $order; do [ "$c" = "$1" ] && echo $i && return; i=$((i+1)); done; }
for crate in $order; do
  mine=$(position "$crate")
  for dep in $(grep -oE '^charter-[a-z]+' "crates/$crate/Cargo.toml" | sed 's/charter-//' | sort -u); do
    [ "$dep" = "$crate" ] && continue
    theirs=$(position "$dep")
    if [ -n "$theirs" ] && [ "$theirs" -gt "$mine" ]; then
      echo "charter-$crate depends on higher crate charter-$dep"; status=1
    fi
  done
done
[ $status -eq 0 ] && echo "layering OK"
exit $status
