#!/usr/bin/env bash
# Mouth-to-ear latency benchmark: a real relay process and two real `natter call` processes
# on loopback. Alice sends a chirp probe, Bob records; the chirps are found in Bob's
# recording by normalised cross-correlation (aligned by the two calls' sample-0 wall clocks).
#
#   scripts/bench-latency.sh            # 20 ms Opus frames, 15 s probe (~40 chirps)
#   FRAME_MS=10 scripts/bench-latency.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
frame_ms="${FRAME_MS:-20}"
seconds="${SECONDS_PROBE:-15}"
runs="${RUNS:-3}"
work="$(mktemp -d)"
trap 'kill $relay_pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
[ -n "$invite" ] || { echo "relay did not start"; cat "$work/relay.log"; exit 1; }

"$bin/natter" signal chirps "$work/probe.wav" --seconds "$seconds" --seed 7
echo "frame ${frame_ms} ms, ${seconds} s probe, ${runs} runs"
for run in $(seq "$runs"); do
  "$bin/natter" call "$invite" --room bench --name bob --duration "$((seconds + 3))" \
      --frame-ms "$frame_ms" --output "$work/bob.wav" --stats-json "$work/bob.json" >/dev/null &
  bob=$!
  sleep 0.5
  "$bin/natter" call "$invite" --room bench --name alice --input "$work/probe.wav" \
      --frame-ms "$frame_ms" --duration "$((seconds + 1))" --stats-json "$work/alice.json" >/dev/null
  wait $bob
  printf 'run %s: ' "$run"
  "$bin/natter" latency "$work/bob.wav" --seconds "$seconds" --seed 7 --align "$work/alice.json" "$work/bob.json"
done
