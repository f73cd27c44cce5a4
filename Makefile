# Natter — the two commands a newcomer needs are `make run` and `make test`.
# Both install what they need first (scripts/setup.sh), so they work on a fresh Debian 12
# machine with only the Rust toolchain.

# Every cargo call goes through scripts/env.sh, which installs what is missing (Debian
# packages, meson, abseil for webrtc-audio-processing) and sets the environment for it.
CARGO ?= scripts/env.sh cargo
TEST_CARGO ?= NATTER_SETUP=test scripts/env.sh cargo

.PHONY: run demo test test-ui screenshots bench-app lint build bench-latency fuzz clean

## The main job: the desktop app. Without a display it says so in one line and fails; the
## headless call is `natter call` (and `make demo` shows one).
run:
	@if [ -z "$${DISPLAY}$${WAYLAND_DISPLAY}" ]; then \
	  echo 'natter: no display found; for a headless call use `natter call …` (see `natter call --help`)'; \
	  exit 2; fi
	NATTER_SETUP=run $(CARGO) run --release --quiet -p natter --bin natter

## A local relay and two headless clients exchanging chirps; prints the measured latency.
demo:
	$(CARGO) run --release --quiet -p natter -- demo

## Every test: formatting, lints, unit and property tests, end-to-end tests on real binaries.
test:
	$(TEST_CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --quiet -- -D warnings
	$(CARGO) build --workspace --all-targets --quiet
	$(CARGO) nextest run --workspace --no-fail-fast

## The desktop app's tests only: egui_kittest drives the real app by its labels, headless
## (no display needed), against relays on loopback.
test-ui:
	$(TEST_CARGO) nextest run -p natter --test ui

## Re-renders docs/screenshots/*.png from the real app in a window (under Xvfb without a
## display): start, settings, trust prompt, a 3-person call (light and dark), hosting.
screenshots:
	NATTER_SETUP=ui scripts/env.sh cargo build -p natter --example screenshots --quiet
	NATTER_SETUP=ui scripts/env.sh xvfb-run -a -s "-screen 0 1280x1024x24" \
	  cargo run -p natter --example screenshots --quiet -- docs/screenshots

## CPU and memory of the desktop app in a 3-person call with its window open (SECS=60).
bench-app:
	scripts/bench-app.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

build:
	$(CARGO) build --workspace --release

## Mouth-to-ear latency of a headless call on loopback: relay + two `natter call` processes,
## ≥ 30 chirps, median and spread. FRAME_MS=10 for the low-latency mode.
bench-latency: build
	scripts/bench-latency.sh

## Runs every cargo-fuzz target of the protocol parsers for SECS seconds each, then fuzzes a
## live relay's control stream for SECS seconds (scripts/fuzz-relay.sh).
fuzz:
	shared/fuzz/run.sh $(or $(SECS),30)
	scripts/env.sh scripts/fuzz-relay.sh $(or $(SECS),30)

clean:
	$(CARGO) clean
