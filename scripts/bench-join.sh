#!/usr/bin/env bash
# Joins through a lossy path: for each seed a fresh natter-relay, natter-netem in front of it
# (the same profile both ways, that seed), and one listening `natter call` of DURATION seconds
# through the proxy (release builds). Prints per seed whether the call joined and how long it
# took from start to exit (the join, DURATION, and the leave), then how many failed and the
# median and worst time of those that joined. Method and results: docs/BENCHMARKS.md,
# "A lossy handshake".
#
#   scripts/bench-join.sh                                  # delay=40,jitter=12,loss=20; seeds 51-74
#   SEEDS="$(seq 81 90)" DURATION=3 scripts/bench-join.sh delay=40,jitter=12
#   NO_BUILD=1 NATTER_BIN_DIR=dir scripts/bench-join.sh    # binaries built elsewhere (A/B runs)
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-delay=40,jitter=12,loss=20}"
seeds="${SEEDS:-$(seq 51 74)}"
duration="${DURATION:-8}"
bin="${NATTER_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
if [ -z "${NO_BUILD:-}" ]; then
  scripts/env.sh cargo build --release --quiet -p natter -p natter-relay -p natter-e2e \
    --bin natter --bin natter-relay --bin natter-netem
fi
work="$(mktemp -d)"
relay_pid=""
proxy_pid=""
stop() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  proxy_pid=""
  relay_pid=""
}
trap 'stop; rm -rf "$work"' EXIT

times="$work/times"
: >"$times"
failed=0
total=0
for seed in $seeds; do
  rm -rf "$work/relay" && mkdir "$work/relay"
  "$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" >"$work/relay.out" 2>/dev/null &
  relay_pid=$!
  for _ in $(seq 100); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
  invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
  [ -n "$invite" ] || { echo "relay did not start" >&2; exit 1; }
  relay_addr="$(echo "$invite" | sed -E 's#^natter://([^/?]+).*#\1#')"
  "$bin/natter-netem" --upstream "$relay_addr" --seed "$seed" --down "$profile" --up "$profile" \
    >"$work/netem.out" 2>/dev/null &
  proxy_pid=$!
  for _ in $(seq 100); do grep -q '^listening:' "$work/netem.out" 2>/dev/null && break; sleep 0.05; done
  via="$(sed -n 's/^listening: //p' "$work/netem.out")"
  start=$(date +%s.%N)
  if RUST_LOG=warn timeout 60 "$bin/natter" call "${invite/$relay_addr/$via}" --room join \
      --name bob --duration "$duration" >/dev/null 2>"$work/call.err"; then
    took=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    printf 'seed %s: joined, %.2f s\n' "$seed" "$took"
    echo "$took" >>"$times"
  else
    failed=$((failed + 1))
    echo "seed $seed: failed: $(tail -1 "$work/call.err")"
  fi
  total=$((total + 1))
  stop
done
echo "profile $profile both ways, ${duration} s calls: $failed of $total failed to join"
if [ -s "$times" ]; then
  sort -n "$times" | awk '{t[NR] = $1} END {
    m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
    printf "start to exit of those that joined: median %.2f s, worst %.2f s (%d calls)\n", m, t[NR], NR
  }'
fi
