# Natter — the two commands a newcomer needs are `make run` and `make test`.
# Both install what they need first (scripts/setup.sh), so they work on a fresh Debian 12
# machine with only the Rust toolchain.

CARGO ?= cargo

.PHONY: run demo test lint setup setup-test build bench-latency fuzz clean

## The main job: until the desktop UI lands, the demo call (relay + two headless clients).
run: demo

## A local relay and two headless clients exchanging chirps; prints the measured latency.
demo: setup
	$(CARGO) run --release --quiet -p natter -- demo

## Every test: formatting, lints, unit and property tests, end-to-end tests on real binaries.
test: setup-test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) build --workspace --bins --quiet
	$(CARGO) nextest run --workspace --no-fail-fast

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

setup:
	@scripts/setup.sh build

setup-test:
	@scripts/setup.sh test

build: setup
	$(CARGO) build --workspace --release

## Mouth-to-ear latency of a headless call on loopback: relay + two `natter call` processes,
## ≥ 30 chirps, median and spread. FRAME_MS=10 for the low-latency mode.
bench-latency: build
	scripts/bench-latency.sh

## Runs every cargo-fuzz target of the protocol parsers for SECS seconds each.
fuzz:
	shared/fuzz/run.sh $(or $(SECS),30)

clean:
	$(CARGO) clean
