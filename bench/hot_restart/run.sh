#!/usr/bin/env bash
# Hot restart under load: Envoy 1.40 and Courier, 5 restarts each (see README.md).
#   bench/hot_restart/run.sh [--restarts N] [--transfer-mb M]
# COURIER: the courier binary (default: the release build, else the debug build, of this repo's
# target dir, $CARGO_TARGET_DIR honoured). ENVOY: the envoy binary (default: `envoy` on PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
courier=${COURIER:-}
if [[ -z $courier ]]; then
  for c in "$target/release/courier" "$target/debug/courier"; do
    [[ -x $c ]] && { courier=$c; break; }
  done
fi
[[ -n $courier ]] || { echo "no courier binary: cargo build -p courier --bins (or set COURIER)" >&2; exit 1; }
exec python3 "$here/bench.py" --envoy "${ENVOY:-envoy}" --courier "$courier" "$@"
