#!/usr/bin/env bash
# Fuzzes a live relay's control stream for SECONDS (default 30): starts a natter-relay on
# loopback and runs natter-fuzz-control against it (mutated control traffic from many
# connections, an honest client checked after every round, the relay's RSS watched). Fails if
# the relay stops answering, grows past 200 MiB or dies. `make fuzz` runs it after the
# cargo-fuzz targets. Replay a failure with SEED=<the seed it printed>.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
cargo build --quiet -p natter-relay -p natter-loadgen --bins
bin="${CARGO_TARGET_DIR:-target}/debug"
work="$(mktemp -d)"
relay_pid=
trap 'kill $relay_pid 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 200); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
[ -n "$invite" ] || { echo "fuzz-relay: the relay printed no invite" >&2; cat "$work/relay.log" >&2; exit 1; }
"$bin/natter-fuzz-control" "$invite" --seconds "$seconds" --relay-pid "$relay_pid" ${SEED:+--seed "$SEED"}
if ! kill -0 "$relay_pid" 2>/dev/null; then
    echo "fuzz-relay: the relay died; its log:" >&2
    tail -50 "$work/relay.log" >&2
    exit 1
fi
if grep -q 'panicked' "$work/relay.log"; then
    echo "fuzz-relay: the relay panicked:" >&2
    grep -A5 'panicked' "$work/relay.log" >&2
    exit 1
fi
echo "fuzz-relay: the relay survived ${seconds}s of control-stream fuzzing" >&2
