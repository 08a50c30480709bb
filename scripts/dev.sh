#!/usr/bin/env bash
# `make dev`: the local platform, the operator running against it, the sample platform
# (the seed's nine services) applied, and their status shown.
#   scripts/dev.sh        start (idempotent)
#   scripts/dev.sh stop   stop the operator (make env-down calls it)
set -euo pipefail
cd "$(dirname "$0")/.."
PIDFILE=.streamgate/operator.pid
NAMESPACE=streamgate-dev

stop_operator() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill -TERM "$(cat "$PIDFILE")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$(cat "$PIDFILE")" 2>/dev/null || true
    echo "operator stopped"
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-}" = "stop" ]; then
  stop_operator
  exit 0
fi

make --no-print-directory env-up
# shellcheck disable=SC1091
. .streamgate/env
cargo build --quiet -p streamgate-operator
kubectl apply --server-side -f crds/streamgateservice.yaml >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/streamgateservices.streamgate.io >/dev/null

stop_operator
nohup target/debug/streamgate-operator run --log-format text \
  --consul-address "$CONSUL_HTTP_ADDR" --nats-url "$NATS_URL" \
  --metrics-listen 127.0.0.1:18080 --lease-namespace default \
  >"$STREAMGATE_LOGS/operator.log" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:18080/readyz >/dev/null 2>&1 && break
  kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$STREAMGATE_LOGS/operator.log"; exit 1; }
  sleep 0.1
done
echo "operator running (pid $(cat "$PIDFILE"), log $STREAMGATE_LOGS/operator.log, metrics http://127.0.0.1:18080/metrics)"

kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -f examples/platform/ >/dev/null
kubectl wait -n "$NAMESPACE" --for=jsonpath='{.status.observedGeneration}' sgs --all --timeout=60s >/dev/null
echo
kubectl get -n "$NAMESPACE" sgs
echo
kubectl get -n "$NAMESPACE" deployments,services
cat <<MSG

The platform's nine services are applied in namespace $NAMESPACE. Their pods run on kwok's
fake nodes, so no sidecar registers them in Consul and they stay not Ready
(ConsulInstancesNotPassing) until a pod runner executes them.
  . .streamgate/env && kubectl get sgs -A
  make env-down      # stops the operator and the platform
MSG
