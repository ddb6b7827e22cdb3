#!/usr/bin/env bash
# Scale benchmark of courier-cp: N simulated ADS clients x M clusters (see README.md).
#   bench/cp_scale/run.sh [--clients 1000] [--clusters 1000] [--rounds 5]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p courier-control-plane --bins
target="${CARGO_TARGET_DIR:-target}"
# 1,000 gRPC connections in each process.
ulimit -n 65536 2>/dev/null || true
exec "$target/release/cp-scale" "$@"
