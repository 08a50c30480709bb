#!/usr/bin/env bash
# `make bench`: every benchmark on release builds, each figure printed beside its baseline
# measured in the same run. Runs all of them; exits non-zero if any failed or missed a
# target it enforces. The benchmarks are the binaries of the streamgate-benches crate
# (benches/); the binaries they start (the sidecar, the demo app) are found beside them
# in target/release/, the operator through STREAMGATE_BIN_PROFILE.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh
TOOLS="${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}"
export STREAMGATE_CONSUL_BIN="${STREAMGATE_CONSUL_BIN:-$TOOLS/consul-$CONSUL_DEB_VERSION/bin/consul}"
export STREAMGATE_NATS_BIN="${STREAMGATE_NATS_BIN:-$TOOLS/nats-server-$NATS_DEB_VERSION/bin/nats-server}"
export STREAMGATE_GHZ_BIN="${STREAMGATE_GHZ_BIN:-$TOOLS/ghz-$GHZ_VERSION/bin/ghz}"
export STREAMGATE_NGINX_BIN="${STREAMGATE_NGINX_BIN:-$TOOLS/nginx-$NGINX_DEB_VERSION/bin/nginx}"
export STREAMGATE_HAPROXY_BIN="${STREAMGATE_HAPROXY_BIN:-$TOOLS/haproxy-$HAPROXY_DEB_VERSION/bin/haproxy}"
export STREAMGATE_NGHTTPX_BIN="${STREAMGATE_NGHTTPX_BIN:-$TOOLS/nghttpx-$NGHTTPX_DEB_VERSION/bin/nghttpx}"
export STREAMGATE_JAEGER_BIN="${STREAMGATE_JAEGER_BIN:-$TOOLS/jaeger-$JAEGER_VERSION/bin/jaeger}"
export STREAMGATE_BIN_PROFILE=release

cargo build --release --quiet --workspace --bins || exit 1
status=0
run() {
  echo
  echo "== $1"
  shift
  "$@" 2> >(grep -v '^[EWI][0-9]\{4\} ' >&2) || status=1
}
run "sidecar: idle RSS and start to /readyz" target/release/sidecar-bench
run "events: publish through the sidecar vs direct JetStream publish" target/release/events-bench
run "forward: gRPC through the sidecar, one hop and two, beside nginx, HAProxy and nghttpx (ghz, 1 KiB unary, alternated rounds); traces at 1% vs off" target/release/forward-bench
run "operator: 1,000 StreamGateServices vs direct Deployment writes" target/release/operator-bench
exit $status
