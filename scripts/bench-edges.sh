#!/usr/bin/env bash
# What a trunk hop costs: two relays of one cluster (a private redis-server on a unix socket,
# trunks with a cluster secret) on loopback, release builds.
#
#   scripts/bench-edges.sh          # RUNS=3 of each measurement
#
# 1. Per hop: natter-loadgen spreads 20 participants in rooms of 5 over both edges (--edge),
#    10 s of 20 ms datagrams; it reports the send→receive latency of the datagrams that
#    crossed the trunk and of those that did not (p50/p99). The difference is the hop.
# 2. Mouth-to-ear: a chirp probe from Alice to Bob (as scripts/bench-latency.sh), with both on
#    one relay and with Alice on edge 1 and Bob on edge 2, alternating, RUNS times each.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
runs="${RUNS:-3}"
seconds="${SECONDS_PROBE:-12}"
[ -n "${NO_BUILD:-}" ] || scripts/env.sh cargo build --release --quiet \
  -p natter -p natter-relay -p natter-loadgen
command -v redis-server >/dev/null || { echo "redis-server missing (scripts/setup.sh test)"; exit 1; }
work="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

redis-server --port 0 --save '' --appendonly no --unixsocket "$work/redis.sock" \
  --unixsocketperm 700 >/dev/null &
pids+=($!)
for _ in $(seq 100); do redis-cli -s "$work/redis.sock" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done

# relay NAME [ARGS…]: starts a relay, sets $invite to its invite.
relay() {
  local name="$1"; shift
  "$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/$name" "$@" \
    >"$work/$name.out" 2>"$work/$name.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q '^invite:' "$work/$name.out" 2>/dev/null && break; sleep 0.05; done
  invite="$(sed -n 's/^invite: //p' "$work/$name.out")"
  [ -n "$invite" ] || { echo "relay $name did not start"; cat "$work/$name.log"; exit 1; }
}
cluster=(--directory "redis+unix://$work/redis.sock" --directory-ttl 3
         --cluster-secret bench-secret-0123456789abcdef)
relay edge1 "${cluster[@]}" --relay-id edge-1 --node 1; edge1="$invite"
relay edge2 "${cluster[@]}" --relay-id edge-2 --node 2; edge2="$invite"
relay lone; lone="$invite"
sleep 1

echo "## per trunk hop (natter-loadgen, 20 participants in rooms of 5 over two edges, 10 s)"
for run in $(seq "$runs"); do
  printf 'run %s: ' "$run"
  "$bin/natter-loadgen" "$edge1" --edge "$edge2" --participants 20 --room-size 5 --duration 10 |
    tr ' ' '\n' | grep -E '^(loss_pct|local_p50_ms|local_p99_ms|trunk_p50_ms|trunk_p99_ms|trunk_samples)=' |
    tr '\n' ' '
  echo
done

echo "## mouth-to-ear, 20 ms frames, ${seconds} s chirp probe"
"$bin/natter" signal chirps "$work/probe.wav" --seconds "$seconds" --seed 7
call_pair() { # ALICE_INVITE BOB_INVITE ROOM
  "$bin/natter" call "$2" --room "$3" --name bob --duration "$((seconds + 3))" \
      --output "$work/bob.wav" --stats-json "$work/bob.json" >/dev/null 2>&1 &
  local bob=$!
  sleep 0.7
  "$bin/natter" call "$1" --room "$3" --name alice --input "$work/probe.wav" \
      --duration "$((seconds + 1))" --stats-json "$work/alice.json" >/dev/null 2>&1
  wait $bob
  "$bin/natter" latency "$work/bob.wav" --seconds "$seconds" --seed 7 \
      --align "$work/alice.json" "$work/bob.json"
}
for run in $(seq "$runs"); do
  printf 'run %s, one relay:  ' "$run"; call_pair "$lone" "$lone" "one-$run"
  printf 'run %s, two edges:  ' "$run"; call_pair "$edge1" "$edge2" "two-$run"
done
