# Pinned versions of the local platform's components (sourced by tools.sh and env.sh).
# The Kubernetes release must be covered by the k8s-openapi feature the workspace uses
# (v1_35) and is >= 1.33 so native sidecar containers are GA.
K8S_VERSION=v1.35.4
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.19.0
ETCD_DEB_VERSION=3.5.16-4
NATS_DEB_VERSION=2.10.27-1+b2
CONSUL_DEB_VERSION=1.8.7+dfsg1-2+b3
