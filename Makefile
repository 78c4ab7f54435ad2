# AI Core — the README's commands. `make run` and `make test` set up what they need.
CARGO ?= cargo
NATS  := .tools/nats/bin/nats-server
OPENAPI_CHECK := .tools/venv/bin/openapi-spec-validator
SCHEMATHESIS := .tools/st-venv/bin/st
export AICORE_NATS_SERVER := $(CURDIR)/$(NATS)

.PHONY: tools build run test lint bench flood dist install clean

PREFIX ?= /usr/local
DESTDIR ?=

## Install the pinned nats-server into .tools/ (idempotent).
tools: $(NATS)
$(NATS): scripts/install-nats.sh scripts/nats-server.requirements.txt
	sh scripts/install-nats.sh

## The independent OpenAPI checker the gateway tests run (pinned, in .tools/venv).
$(OPENAPI_CHECK): scripts/openapi-validator.requirements.txt
	python3 -m venv .tools/venv
	.tools/venv/bin/python -m pip install --disable-pip-version-check -q \
		-r scripts/openapi-validator.requirements.txt
	touch $@

## Schemathesis, which tests the running gateway against its OpenAPI document (pinned,
## in its own venv).
$(SCHEMATHESIS): scripts/schemathesis.requirements.txt
	python3 -m venv .tools/st-venv
	.tools/st-venv/bin/python -m pip install --disable-pip-version-check -q \
		-r scripts/schemathesis.requirements.txt
	touch $@

build:
	$(CARGO) build --release --bin aicore

## Start the appliance on its embedded defaults (data in ./data).
run: tools build
	./target/release/aicore run

## Build the binary the end-to-end tests start, then run every test in the workspace.
test: tools $(OPENAPI_CHECK) $(SCHEMATHESIS)
	$(CARGO) build --bin aicore
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Throughput/latency against a raw NATS baseline measured in the same run.
bench: tools build
	./target/release/aicore bench

## A login flood and a bogus-token flood against a real appliance (see BENCHMARKS.md).
flood: tools
	$(CARGO) build --release --bin aicore --bin flood
	AICORE_BIN=$(CURDIR)/target/release/aicore ./target/release/flood all

## The release tarball: dist/aicore-<version>-<arch>.tar.gz with the binary, the pinned
## nats-server, the systemd unit and user, the example config, dashboards and alert rules.
dist: tools build
	sh scripts/dist.sh --bin target/release/aicore --out dist

## Install what `make dist` packs onto this machine (as root; DESTDIR and PREFIX as usual).
## Creates the `aicore` user; never enables the service (`systemctl enable --now aicore`).
install: tools build
	stage=$$(sh scripts/dist.sh --bin target/release/aicore --out target/dist --stage-only | tail -n 1) && \
		sh "$$stage/install.sh" --destdir "$(DESTDIR)" --prefix "$(PREFIX)"

clean:
	rm -rf target .tools data dist
