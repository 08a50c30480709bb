#!/usr/bin/env bash
# helm lint --strict of the chart, with the helm `make tools` built.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/versions.sh
HELM="${STREAMGATE_TOOLS:-$HOME/.cache/streamgate}/helm-$HELM_VERSION/bin/helm"
"$HELM" lint --strict --kube-version "${K8S_VERSION#v}" charts/streamgate
