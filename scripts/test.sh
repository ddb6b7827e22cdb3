#!/usr/bin/env bash
# The one command that runs every test on a fresh machine: installs what the suites need
# (pip: a real Envoy, Helm's Go SDK, the Kubernetes schema validator, pytest), builds the
# workspace, then runs the Rust suites and the chart's suite.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements-test.txt
# iptables for the transparent-proxy test (a network namespace with a REDIRECT rule);
# where it cannot be installed, that test says it skipped.
if ! command -v iptables >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -q iptables) >/dev/null 2>&1 || echo "iptables not installed: the transparent-proxy test will skip"
fi
# make: the Lua filter's vendored LuaJIT (mlua) is built with it.
if ! command -v make >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -q make) >/dev/null 2>&1 || echo "make could not be installed: building the vendored LuaJIT will fail"
fi
# pip may install console scripts (envoy) outside PATH on some machines.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
export PATH

cargo build --workspace --bins
cargo test --workspace --exclude courier-integration-tests -- --test-threads="${COURIER_TEST_THREADS:-2}"
# The xDS integration suite: mostly waiting on processes and sockets, so more threads than
# cores; against Courier, then the very same suite against real Envoy.
cargo test -p courier-integration-tests -- --test-threads="${COURIER_IT_THREADS:-8}"
if command -v envoy >/dev/null; then
  PROXY_UNDER_TEST=envoy cargo test -p courier-integration-tests -- --test-threads="${COURIER_IT_THREADS:-8}"
fi
# Fuzz smoke run (cargo-fuzz, libFuzzer): the HTTP/1 parsing path, the route matcher and
# the upstream HTTP/1 client's response parsing, the header sanitation before forwarding,
# and the parsers of the filters a peer feeds (JWTs, JWKS and cookies; gRPC-Web's framing;
# basic auth credentials and htpasswd; services' gRPC answers to ext_authz and the rate
# limit filter; the gRPC-JSON transcoder's paths, JSON bodies and answers; the cookie
# parser every cookie reader shares; the xDS matcher on request inputs, against an
# oracle), from the
# committed seeds. cargo-fuzz passes nightly-only flags;
# RUSTC_BOOTSTRAP lets the stable toolchain accept them, and `--sanitizer none` needs no
# sanitizer runtime. The targets are built once, then each runs COURIER_FUZZ_SECONDS (11
# targets: the step stays within about 5 minutes with its build). Any crash fails the run
# (the input is saved under proxy/fuzz/artifacts/).
FUZZ_TARGETS="http1_parse route_match upstream_h1_response header_sanitation jwt_authn grpc_web basic_auth grpc_answers grpc_json_transcoder cookies xds_matcher"
if [ "${COURIER_FUZZ_SECONDS:-15}" != 0 ]; then
  command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
  (cd proxy/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build --sanitizer none)
  for target in $FUZZ_TARGETS; do
    corpus="$PWD/proxy/fuzz/corpus/$target"
    mkdir -p "$corpus"
    (cd proxy/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" \
      "$corpus" "$PWD/seeds/$target" -- -max_total_time="${COURIER_FUZZ_SECONDS:-15}")
  done
fi
if [ -d helm/tests ]; then
  python3 -m pytest -q helm/tests
fi
