# Pinned versions of the local platform's components (sourced by tools.sh and env.sh).
# The Kubernetes release must be covered by the k8s-openapi feature the workspace uses
# (v1_35) and is >= 1.33 so native sidecar containers are GA.
K8S_VERSION=v1.35.4
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.19.0
ETCD_DEB_VERSION=3.5.16-4
NATS_DEB_VERSION=2.10.27-1+b2
CONSUL_DEB_VERSION=1.8.7+dfsg1-2+b3
# The newer Consul of the test matrix, for agentless (catalog) registration: v1.16.1 is
# the newest release under MPL-2.0 (tagged 2023-08-05, with its api/sdk/proto-public/
# envoyextensions/troubleshoot submodules of 2023-08-04; HashiCorp's releases from
# 2023-08-10 on are under the Business Source License). Built from the Go module.
CONSUL_MPL_VERSION=v1.16.1
# Benchmark-only tools (forward-bench): the gRPC load generator and the reference proxy.
# nginx comes from bookworm, the suite this machine runs, so its shared libraries
# (libssl3, libpcre2, zlib, libcrypt) are the system's own. A later bookworm point
# release replaces this exact version on the mirror: 'make tools' then fails naming it,
# and the pin moves to the version `apt-cache policy nginx` shows for bookworm.
GHZ_VERSION=v0.121.0
NGINX_DEB_VERSION=1.22.1-9+deb12u9
# forward-bench's other peers, also from bookworm: HAProxy 2.6 and nghttpx 1.52.
HAPROXY_DEB_VERSION=2.6.12-1+deb12u3
NGHTTPX_DEB_VERSION=1.52.0-1+deb12u3
# The real node (kubelet beside kwok's fake nodes): container runtime, OCI runtime, CNI
# plugins and the iptables userspace kube-proxy and the harness's forwarding rule use, all
# from Debian bookworm (the suite this machine runs), unpacked into the tools cache.
CONTAINERD_DEB_VERSION=1.6.20~ds1-1+deb12u3
RUNC_DEB_VERSION=1.1.5+ds1-1+deb12u1
CNI_PLUGINS_DEB_VERSION=1.1.1+ds1-3+b5
IPTABLES_DEB_VERSION=1.8.9-2
# What the images carry besides the binary (distroless-style): glibc and libgcc_s from
# these bookworm packages, and the CA certificates.
LIBC6_DEB_VERSION=2.36-9+deb12u14
LIBGCC_DEB_VERSION=12.2.0-14+deb12u1
CA_CERTIFICATES_DEB_VERSION=20230311+deb12u1
# An OCI registry on 127.0.0.1 for `make push` tests (`crane registry serve`), and crane
# itself as the pusher.
CRANE_VERSION=v0.22.1
# The trace collector of the local platform: Jaeger v2 (an OpenTelemetry Collector build
# with Jaeger's storage and query API) with its OTLP receiver on loopback. v1.75.0 is the
# newest release the Go module proxy here serves as approved (v1.76.0 is served, not
# approved); both ship the same cmd/jaeger.
JAEGER_VERSION=v1.75.0
