# Natter — the two commands a newcomer needs are `make run` and `make test`.
# Both install what they need first (scripts/setup.sh), so they work on a fresh Debian 12
# machine with only the Rust toolchain.

# Every cargo call goes through scripts/env.sh, which installs what is missing (Debian
# packages, meson, abseil for webrtc-audio-processing) and sets the environment for it.
CARGO ?= scripts/env.sh cargo
TEST_CARGO ?= NATTER_SETUP=test scripts/env.sh cargo

.PHONY: run demo test lint build bench-latency fuzz clean

## The main job: until the desktop UI lands, the demo call (relay + two headless clients).
run: demo

## A local relay and two headless clients exchanging chirps; prints the measured latency.
demo:
	$(CARGO) run --release --quiet -p natter -- demo

## Every test: formatting, lints, unit and property tests, end-to-end tests on real binaries.
test:
	$(TEST_CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) build --workspace --bins --quiet
	$(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build:
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
