# Pinned versions of the local platform's components (sourced by tools.sh and env.sh).
# The Kubernetes release must be covered by the k8s-openapi feature the workspace uses
# (v1_35) and is >= 1.33 so native sidecar containers are GA.
K8S_VERSION=v1.35.4
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.19.0
ETCD_DEB_VERSION=3.5.16-4
NATS_DEB_VERSION=2.10.27-1+b2
CONSUL_DEB_VERSION=1.8.7+dfsg1-2+b3
# Benchmark-only tools (forward-bench): the gRPC load generator and the reference proxy.
# nginx comes from bookworm, the suite this machine runs, so its shared libraries
# (libssl3, libpcre2, zlib, libcrypt) are the system's own. A later bookworm point
# release replaces this exact version on the mirror: 'make tools' then fails naming it,
# and the pin moves to the version `apt-cache policy nginx` shows for bookworm.
GHZ_VERSION=v0.121.0
NGINX_DEB_VERSION=1.22.1-9+deb12u9
