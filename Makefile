# multihome: build, demo, test. `make demo` and `make test` install what they need (as root).
CARGO ?= cargo
LOCKED := $(if $(CI),--locked,)

.PHONY: all build deps demo test unit lint install clean bench

all: build

build:
	$(CARGO) build --release $(LOCKED)

deps:
	scripts/install-deps.sh

## demo: attach three networks to a fresh namespace with the real reference plugins
demo: deps build
	scripts/demo.sh

## test: formatting, lints, unit and integration tests (integration tests need root)
test: deps lint
	$(CARGO) test $(LOCKED)

unit:
	$(CARGO) test $(LOCKED) --lib

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings

install: build
	install -D -m 0755 target/release/multihome $(DESTDIR)/opt/cni/bin/multihome

clean:
	$(CARGO) clean

## bench: the benchmark (PODS pods, BURST pods in the burst); needs root
PODS ?= 50
BURST ?= 100
bench: deps
	$(CARGO) bench $(LOCKED) --bench bench -- --pods $(PODS) --burst $(BURST)
