#!/usr/bin/env bash
# `make dev`: the local platform, the operator and the pod runner running against it,
# the sample platform (the seed's nine services, played by the demo app) applied and
# Ready, and lines to try it. Stays in the foreground: Ctrl-C stops everything.
#   scripts/dev.sh        start (idempotent), wait, print, then wait for Ctrl-C
#   scripts/dev.sh stop   stop the pod runner and the operator (make env-down calls it)
# STREAMGATE_DEV_DETACH=1 returns after printing and leaves everything running
# (`make env-down` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
OPERATOR_PID=.streamgate/operator.pid
RUNNER_PID=.streamgate/pod-runner.pid
NAMESPACE=streamgate-dev
NODE=streamgate-runner-0
READY_TIMEOUT=${STREAMGATE_DEV_TIMEOUT:-180s}

stop_pidfile() { # pidfile name seconds
  if [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; then
    kill -TERM "$(cat "$1")"
    for _ in $(seq 1 $(($3 * 10))); do kill -0 "$(cat "$1")" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$(cat "$1")" 2>/dev/null || true
    echo "$2 stopped"
  fi
  rm -f "$1"
}

# The runner first: its pods stop gracefully (sidecars leave Consul) while the
# operator and the platform are still there.
stop_all() {
  stop_pidfile "$RUNNER_PID" "pod runner" 40
  stop_pidfile "$OPERATOR_PID" operator 10
}

if [ "${1:-}" = "stop" ]; then
  stop_all
  exit 0
fi

echo "==> building the operator, the sidecar, the demo app and the pod runner"
cargo build -p streamgate-operator -p streamgate-sidecar -p streamgate-demo-app \
  -p streamgate-tests --bin streamgate-operator --bin streamgate-sidecar \
  --bin streamgate-demo-app --bin streamgate-pod-runner --bin streamgate-env

echo "==> starting the local platform"
make --no-print-directory env-up
# shellcheck disable=SC1091
. .streamgate/env

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  stop_all
  # The binary env-up used, directly: no rebuild on the way out.
  target/debug/streamgate-env down
}
if [ -z "${STREAMGATE_DEV_DETACH:-}" ]; then
  trap cleanup INT TERM
fi

kubectl apply --server-side -f crds/streamgateservice.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/streamgateservices.streamgate.io >/dev/null

# Own sessions (setsid): Ctrl-C reaches this script only, which stops them in order.
stop_all
setsid nohup target/debug/streamgate-operator run --log-format text \
  --consul-address "$CONSUL_HTTP_ADDR" --nats-url "$NATS_URL" \
  --metrics-listen 127.0.0.1:18080 --lease-namespace default \
  >"$STREAMGATE_LOGS/operator.log" 2>&1 &
echo $! >"$OPERATOR_PID"
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  kill -0 "$(cat "$OPERATOR_PID")" 2>/dev/null || { tail -20 "$STREAMGATE_LOGS/operator.log"; exit 1; }
  sleep 0.1
done
echo "operator running (pid $(cat "$OPERATOR_PID"), log $STREAMGATE_LOGS/operator.log)"

# kwok's nodes would take pods nobody runs: cordoned, the runner's node is the only
# schedulable one.
kubectl cordon -l type=kwok >/dev/null
setsid nohup target/debug/streamgate-pod-runner --node "$NODE" \
  >"$STREAMGATE_LOGS/pod-runner.log" 2>&1 &
echo $! >"$RUNNER_PID"
if ! kubectl wait --for=condition=Ready "node/$NODE" --timeout=60s >/dev/null 2>&1; then
  tail -20 "$STREAMGATE_LOGS/pod-runner.log"
  exit 1
fi
echo "pod runner running (pid $(cat "$RUNNER_PID"), node $NODE, logs $STREAMGATE_LOGS/pods/)"

echo "==> applying examples/platform in namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -f examples/platform/
echo "==> waiting up to $READY_TIMEOUT for the services to be Ready"
if ! kubectl wait -n "$NAMESPACE" --for=condition=Ready sgs --all --timeout="$READY_TIMEOUT" >/dev/null; then
  echo "not every service became Ready; see kubectl describe sgs -n $NAMESPACE and $STREAMGATE_LOGS/pods/" >&2
fi
echo
kubectl get -n "$NAMESPACE" sgs
pod_ip() {
  kubectl get pods -n "$NAMESPACE" -l "streamgate.io/service=$1" \
    -o jsonpath='{.items[0].status.podIP}' 2>/dev/null || true
}
UPLOAD=$(pod_ip upload)
GATEWAY=$(pod_ip api-gateway)
cat <<MSG

Try it (in another terminal; each pod has its own 127.0.0.N, see kubectl get pods -o wide):
  . .streamgate/env
  kubectl get sgs,pods -n $NAMESPACE -o wide
  # a gRPC call from api-gateway's app through its sidecar to an upload instance:
  curl -s -XPOST http://${GATEWAY:-<api-gateway pod IP>}:9090/admin/call -H 'content-type: application/json' -d '{"service":"upload"}'
  # an event, published through upload's sidecar, delivered to one metadata replica:
  curl -s -XPOST http://${UPLOAD:-<upload pod IP>}:15001/v1/events/file.uploaded -H 'content-type: application/json' -d '{"file":"a.mp4"}'
  for ip in \$(kubectl get pods -n $NAMESPACE -l streamgate.io/service=metadata -o jsonpath='{.items[*].status.podIP}'); do
    curl -s http://\$ip:9005/admin/events; echo; done
  # Consul UI:
  $CONSUL_HTTP_ADDR/ui/
  kubectl scale sgs/upload -n $NAMESPACE --replicas=3
Logs: $STREAMGATE_LOGS (operator.log, pod-runner.log, pods/<namespace>_<pod>_<container>.log)
MSG
if [ -n "${STREAMGATE_DEV_DETACH:-}" ]; then
  echo "Running in the background; make env-down stops everything."
  exit 0
fi
echo "Ctrl-C stops everything (pod runner, operator, platform)."
while kill -0 "$(cat "$RUNNER_PID" 2>/dev/null || echo 0)" 2>/dev/null \
  && kill -0 "$(cat "$OPERATOR_PID" 2>/dev/null || echo 0)" 2>/dev/null; do
  sleep 1
done
echo "the operator or the pod runner stopped; see $STREAMGATE_LOGS"
cleanup
