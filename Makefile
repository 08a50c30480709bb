# StreamGate: see README.md. Every target runs against real components built by `make tools`.
SHELL := /bin/bash
CARGO ?= cargo
ENV_BIN := target/debug/streamgate-env

.PHONY: tools env-up env-down env-status test lint fmt crds bench dev images push

## tools: install or build etcd, nats-server, Consul (Debian 1.8.7 and v1.16.1 from source), Kubernetes (with kubelet, kube-proxy), containerd, runc, CNI plugins, iptables, kwok, helm, crane, Jaeger (the trace collector), and ghz + nginx + HAProxy + nghttpx for make bench (cached)
tools:
	@bash scripts/tools.sh

$(ENV_BIN): FORCE
	@$(CARGO) build --quiet -p streamgate-tests --bin streamgate-env
FORCE:

## env-up: start the local platform (control plane, Consul, NATS, kwok nodes and a real node running the images) and write .streamgate/env and .streamgate/helm-values.yaml
env-up: tools images $(ENV_BIN)
	@$(ENV_BIN) --real-node up

## env-down: stop the local platform and its real node; no process, mount, network namespace, bridge or rule is left behind
env-down: $(ENV_BIN)
	@bash scripts/dev.sh stop
	@$(ENV_BIN) down

## dev: images built, platform and real node up, the chart installed, the nine sample services applied and Ready as real pods, try-it lines shown; Ctrl-C stops it all
dev: tools
	@bash scripts/dev.sh

## images: OCI image archives target/images/<name>-<version>.tar (operator, sidecar, demo-app, pause), no Docker needed
images:
	@bash scripts/images.sh

## push: push the image archives to REGISTRY (e.g. make push REGISTRY=registry.example.com/streamgate)
push: images
	@bash scripts/push.sh "$(REGISTRY)"

## crds: regenerate crds/streamgateservice.yaml from the Rust types
crds:
	$(CARGO) run --quiet -p streamgate-operator -- crd > crds/streamgateservice.yaml
	cp crds/streamgateservice.yaml charts/streamgate/crds/streamgateservice.yaml

## bench: each figure beside its baseline, measured in the same run (release builds of the benches/ crate: sidecar-bench, events-bench, forward-bench, operator-bench)
bench: tools
	@bash scripts/bench.sh

env-status: $(ENV_BIN)
	@$(ENV_BIN) status

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@if [ -d charts/streamgate ]; then bash scripts/helm-lint.sh; fi

## test: everything the project checks, against real components (what .ci/run runs)
test: tools images
	$(CARGO) test --workspace
	$(MAKE) test-consul-newer
	$(MAKE) lint

# The Consul test matrix's second entry: the tests that talk to Consul again, against
# the newer Consul (scripts/versions.sh CONSUL_MPL_VERSION) instead of Debian's 1.8.7.
# consul_agentless runs against the newer one in both entries' place, in `cargo test`.
CONSUL_MATRIX_TESTS := --test sidecar_consul --test sidecar_forward
CONSUL_MATRIX_OPERATOR_FILTERS := consul ghost
.PHONY: test-consul-newer
## test-consul-newer: the Consul tests again, against the newer Consul of the matrix
test-consul-newer:
	STREAMGATE_TEST_CONSUL=newer $(CARGO) test -p streamgate-tests $(CONSUL_MATRIX_TESTS)
	STREAMGATE_TEST_CONSUL=newer $(CARGO) test -p streamgate-tests --test operator -- $(CONSUL_MATRIX_OPERATOR_FILTERS)
