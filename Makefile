# tlsid: the commands. Everything runs on a fresh Debian machine: the scripts install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help build crds lint test bench bench-large demo demo-down cluster cluster-down images

help: ## List the targets.
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

build: ## Build the tlsid binary (release).
	cargo build --release --locked

crds: ## Regenerate crds/, the chart's copy and deploy/ from the Rust types.
	cargo run --quiet --locked -- crd --dir crds
	hack/chart.sh update

lint: ## cargo fmt --check and clippy with -D warnings.
	cargo fmt --check
	cargo clippy --locked --all-targets -- -D warnings

test: ## Everything: lint, unit tests, real-apiserver integration tests, chart checks.
	hack/test.sh

bench: ## Print the performance figures against a real control plane (100 and 1,000 identities).
	hack/bench.sh

bench-large: ## The same at 1,000 and 10,000 identities; publishes docs/bench.md and docs/bench.svg.
	TLSID_BENCH_SIZES="1000 10000" TLSID_BENCH_TIMEOUT_SECS=1800 TLSID_BENCH_OUT=target/bench-large \
	  TLSID_BENCH_PUBLISH=docs hack/bench.sh

demo: ## The main job: a cluster, the controller, the examples, and what it issued.
	hack/demo.sh

demo-down: ## Stop what `make demo` started.
	hack/demo.sh down

cluster: ## Start the local control plane; prints the kubeconfig path.
	hack/cluster.sh up

cluster-down: ## Stop the local control plane and remove its state.
	hack/cluster.sh down
