#!/usr/bin/env bash
# `make dev`: the local platform with its real node, StreamGate installed on it with the
# chart from the images `make images` built (as a user installs it on a cluster), the
# sample platform (the seed's nine services, played by the demo-app image) applied and
# Ready, and lines to try it. Stays in the foreground: Ctrl-C stops everything.
#   scripts/dev.sh        start (idempotent), wait, print, then wait for Ctrl-C
#   scripts/dev.sh stop   nothing of its own to stop any more (the operator runs in the
#                         cluster); kept for `make env-down`
# STREAMGATE_DEV_DETACH=1 returns after printing and leaves everything running
# (`make env-down` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
NAMESPACE=streamgate-dev
SYSTEM=streamgate-system
READY_TIMEOUT=${STREAMGATE_DEV_TIMEOUT:-180s}

if [ "${1:-}" = "stop" ]; then
  exit 0
fi

echo "==> building the images (make images)"
bash scripts/images.sh

echo "==> starting the local platform with its real node"
make --no-print-directory env-up
# shellcheck disable=SC1091
. .streamgate/env

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping"
  # The binary env-up used, directly: no rebuild on the way out.
  target/debug/streamgate-env down
}
if [ -z "${STREAMGATE_DEV_DETACH:-}" ]; then
  trap cleanup INT TERM
fi

echo "==> helm install streamgate (namespace $SYSTEM, values .streamgate/helm-values.yaml)"
helm upgrade --install streamgate charts/streamgate -n "$SYSTEM" --create-namespace \
  -f .streamgate/helm-values.yaml --wait --timeout 3m >/dev/null
kubectl get pods -n "$SYSTEM" -o wide

echo "==> applying examples/platform in namespace $NAMESPACE"
kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n "$NAMESPACE" -f examples/platform/
echo "==> waiting up to $READY_TIMEOUT for the services to be Ready"
if ! kubectl wait -n "$NAMESPACE" --for=condition=Ready sgs --all --timeout="$READY_TIMEOUT" >/dev/null; then
  echo "not every service became Ready; see kubectl describe sgs -n $NAMESPACE and kubectl logs" >&2
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

Try it (in another terminal; pods have addresses on the node's bridge, 10.88.0.0/24):
  . .streamgate/env
  kubectl get sgs,pods -n $NAMESPACE -o wide
  # a gRPC call from api-gateway's app through its sidecar to an upload instance:
  curl -s -XPOST http://${GATEWAY:-<api-gateway pod IP>}:9090/admin/call -H 'content-type: application/json' -d '{"service":"upload"}'
  # an event, published by upload's app through its sidecar, delivered to one metadata replica:
  curl -s -XPOST http://${UPLOAD:-<upload pod IP>}:9091/admin/publish -H 'content-type: application/json' -d '{"type":"file.uploaded","data":{"file":"a.mp4"}}'
  for ip in \$(kubectl get pods -n $NAMESPACE -l streamgate.io/service=metadata -o jsonpath='{.items[*].status.podIP}'); do
    curl -s http://\$ip:9005/admin/events; echo; done
  # Consul UI:
  $CONSUL_HTTP_ADDR/ui/
  # Jaeger UI (the sidecars sample 1% of the traces they start; a call made with a
  # sampled traceparent is always traced):
  $STREAMGATE_JAEGER_URL
  kubectl scale sgs/upload -n $NAMESPACE --replicas=3
  kubectl logs -n $SYSTEM deploy/streamgate-operator
Logs of the platform: $STREAMGATE_LOGS
MSG
if [ -n "${STREAMGATE_DEV_DETACH:-}" ]; then
  echo "Running in the background; make env-down stops everything."
  exit 0
fi
echo "Ctrl-C stops everything (the node, its pods, the platform)."
while target/debug/streamgate-env status | grep -q running; do
  sleep 2
done
echo "the local platform stopped; see $STREAMGATE_LOGS"
cleanup
