#!/usr/bin/env bash
# Relay capacity benchmark: the largest number of participants, in rooms of 5, that ONE relay
# core carries with p99 relay-added latency ≤ 2 ms and no relay drops. The relay is pinned to
# core 0 and natter-loadgen to core 1 (taskset), so they do not share a core. Run it on an
# otherwise idle machine; numbers go in docs/BENCHMARKS.md.
#
#   scripts/bench-relay.sh [N1 N2 …]     (default sweep: 100 200 400 600 800 1000 1200)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
[ -x "$bin/natter-loadgen" ] || cargo build --release -p natter-relay -p natter-loadgen
work="$(mktemp -d)"
trap 'kill $relay_pid 2>/dev/null || true; rm -rf "$work"' EXIT
taskset -c 0 "$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" --max-room-size 5 \
    --max-connections 100000 >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 200 400 600 800 1000 1200)
for n in "${sizes[@]}"; do
  taskset -c 1 "$bin/natter-loadgen" "$invite" --participants "$n" --room-size 5 --duration 10 --relay-pid "$relay_pid"
done
