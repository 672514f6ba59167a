# multihome: build, demo, test. `make demo` and `make test` install what they need (as root).
CARGO ?= cargo
LOCKED := $(if $(CI),--locked,)
# The release binary is static and not position-independent: no glibc version requirement on
# the nodes it is copied to, and no dynamic loading or relocation at each of its many starts.
# With --target, RUSTFLAGS leave build scripts and proc macros (which must stay dynamic) alone.
TARGET ?= $(shell rustc -vV | sed -n 's/^host: //p')
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static
BIN := target/$(TARGET)/release/multihome

.PHONY: all build instructions deps demo test unit lint install clean bench fuzz static-check image image-check manifests cluster cluster-down e2e

all: build

build:
	RUSTFLAGS="$(STATIC_RUSTFLAGS)" $(CARGO) build --release $(LOCKED) --target $(TARGET)

## static-check: the release binary is static, runs in an empty root, resolves /etc/hosts names
static-check: build
	scripts/check-static.sh $(BIN)

## instructions: what the release binary itself executes for VERSION, ADD and DEL (callgrind,
## three stub delegates; deterministic), and its size
instructions: build
	scripts/instructions.sh $(BIN)

deps:
	scripts/install-deps.sh

## demo: attach three networks to a fresh namespace with the real reference plugins
demo: deps build
	MULTIHOME=$(BIN) scripts/demo.sh

## test: formatting, lints, unit and integration tests (integration tests need root)
test: deps lint
	$(CARGO) test $(LOCKED)

unit:
	$(CARGO) test $(LOCKED) --lib

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings

install: build
	install -D -m 0755 $(BIN) $(DESTDIR)/opt/cni/bin/multihome

clean:
	$(CARGO) clean

## bench: the benchmark (PODS pods, BURST pods in the burst); needs root
PODS ?= 50
BURST ?= 100
bench: deps
	$(CARGO) bench $(LOCKED) --bench bench -- --pods $(PODS) --burst $(BURST)

## fuzz: every fuzz target for FUZZ_SECONDS each, from the seeds in tests/fuzz/seeds (nightly
## toolchain; installs cargo-fuzz if missing). Stops at the first crash.
FUZZ_SECONDS ?= 15
FUZZ_TARGETS := networks_annotation default_network netconf delegate_config kubeconfig result_conversion
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p tests/fuzz/corpus/$$t && \
	  $(CARGO) +nightly fuzz run --fuzz-dir tests/fuzz $$t tests/fuzz/corpus/$$t tests/fuzz/seeds/$$t \
	    -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

## image: the container image from the static binary (podman, offline, FROM scratch)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image: build
	tmp=$$(mktemp -d) && cp $(BIN) $$tmp/multihome && \
	podman build -t localhost/multihome:$(VERSION) -f conf/Containerfile $$tmp; \
	rc=$$?; rm -rf $$tmp; exit $$rc

## image-check: build the image and run its `install --once` against a test-made host root
image-check: build
	scripts/image-check.sh $(BIN)

## manifests: validate conf/ against the Kubernetes schemas and the NAD CRD, offline
manifests:
	scripts/validate-manifests.sh

## cluster: a real one-node Kubernetes in namespaces of its own, multihome installed from its image
## and manifests (scripts/cluster.sh; the server binaries are built from Debian's source once,
## then cached); cluster-down removes it
cluster:
	scripts/cluster.sh up && scripts/cluster.sh install

cluster-down:
	scripts/cluster.sh down

## e2e: start the cluster, install multihome from its image and manifests, run tests/e2e one at a
## time (one restarts kubelet), stop it
e2e: deps
	scripts/cluster.sh up && $(CARGO) test $(LOCKED) --test e2e -- --nocapture --test-threads=1; rc=$$?; scripts/cluster.sh down; exit $$rc
