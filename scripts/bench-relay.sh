#!/usr/bin/env bash
# Relay capacity benchmark: the largest number of participants, in rooms of 5, that ONE relay
# core carries with p99 relay-added latency ≤ 2 ms and no relay drops. The relay is pinned to
# core 0 and natter-loadgen to core 1 (taskset), so they do not share a core. Run it on an
# otherwise idle machine; numbers go in docs/BENCHMARKS.md. Each line ends with
# others_cpu_pct: the CPU (percent of one core) that processes other than these two used
# during the run — anything but ~0 means the numbers are not a quiet machine's.
#
#   scripts/bench-relay.sh [N1 N2 …]     (default sweep: 100 200 400 600 800 1000 1200)
#
# Environment: REPS (runs per N, default 1, each with a fresh relay), RELAY_CPUS / LOADGEN_CPUS
# (taskset lists, default 0 and 1), RELAY_ARGS (extra relay flags, e.g. "--forward-loudest 3"),
# LOADGEN_ARGS (extra natter-loadgen flags, e.g. "--per-endpoint 8": more client ports, which
# the kernel's SO_REUSEPORT hash spreads over a relay's loops),
# LOADGEN (default "batched"): how natter-loadgen drives its participants — "batched", one
# loop with recvmmsg/sendmmsg, through quinn-proto for QUIC (--batched), or "tokio", a quinn
# endpoint (or a plain socket) and a task per participant (what sweeps used before; it could
# not show 1,000),
# INTERLEAVE=1 (batched driver only): each room's members spread over the 20 ms frame, as
# independent talkers are, instead of sending within a fraction of a millisecond of each other
# (in step, the relay packs what one subscriber gets in a round into one packet: its best case),
# DURATION (seconds of sending, default 10), MODES (default "relay"): what to measure, in
# alternation for each N and repetition —
#   relay       natter-relay from this build (one loop driving quinn-proto, sendmmsg)
#   batched     the same (the name sweeps used while the relay had two data planes)
#   udp         the baseline: natter-udp-fanout (plain UDP fan-out with the same batched I/O,
#               no QUIC), driven by natter-loadgen --udp with the same participants and packets
#   udp1        the same baseline sending one datagram per system call (what batching saves)
#   relay:DIR   natter-relay from DIR (another build's release directory: old against new)
#   threads:N   natter-relay from this build with --threads N (N loops; alternate with relay)
# e.g. MODES="udp relay relay:/tmp/old/release" scripts/bench-relay.sh 200 400.
# Each line starts with mode=…. NICE (default 0) runs the measured server and the load generator
# at that nice value (negative needs root): on a machine others are using, -10 keeps their
# builds from deciding the latency numbers (others_cpu_pct still shows what else ran).
# NETNS=1 (root): the load generator in a network namespace of its own behind a veth pair
# (10.77.0.1 the server, 10.77.0.2 the load generator), with receive packet steering putting
# each side's receive processing on that side's core. Over loopback the server's sendmmsg also
# runs every receiver's UDP receive path, which on a real network happens on the receivers'
# machines (docs/BENCHMARKS.md: it did not pay off here; loopback stays the default).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${CARGO_TARGET_DIR:-target}/release"
# NO_BUILD=1 uses the release binaries as they are (e.g. while the machine must stay quiet);
# otherwise they are brought up to date first, so what runs is this tree.
[ -n "${NO_BUILD:-}" ] || cargo build --release -p natter-relay -p natter-loadgen
work="$(mktemp -d)"
relay_pid=
ns=()
listen=127.0.0.1
cleanup() {
  kill $relay_pid 2>/dev/null || true
  rm -rf "$work"
  if [ -n "${NETNS:-}" ]; then
    ip link del nrelay0 2>/dev/null || true
    ip netns del natter-lg 2>/dev/null || true
  fi
}
trap cleanup EXIT
if [ -n "${NETNS:-}" ]; then
  # Each veth end's receive queue steered to its own side's core.
  mask() { printf '%x' $((1 << $1)); }
  ip netns add natter-lg
  ip link add nrelay0 type veth peer name nlg0
  ip link set nlg0 netns natter-lg
  ip addr add 10.77.0.1/24 dev nrelay0
  ip link set nrelay0 up
  ip netns exec natter-lg ip addr add 10.77.0.2/24 dev nlg0
  ip netns exec natter-lg ip link set nlg0 up
  ip netns exec natter-lg sh -c "echo $(mask "${LOADGEN_CPUS:-1}") > /sys/class/net/nlg0/queues/rx-0/rps_cpus"
  mask "${RELAY_CPUS:-0}" >/sys/class/net/nrelay0/queues/rx-0/rps_cpus
  ns=(ip netns exec natter-lg)
  listen=10.77.0.1
fi
# Busy jiffies (user+nice+system+irq+softirq+steal) of the whole machine, and of one process.
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
proc_busy() { awk '{sub(/.*\) /,""); split($0,f," "); print f[12]+f[13]}' "/proc/$1/stat"; }
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(100 200 400 600 800 1000 1200)
read -r -a modes <<<"${MODES:-relay}"
interleave=()
[ -z "${INTERLEAVE:-}" ] || interleave=(--interleave)
for n in "${sizes[@]}"; do
  for _ in $(seq "${REPS:-1}"); do
   for mode in "${modes[@]}"; do
    if [ "$mode" = udp ] || [ "$mode" = udp1 ]; then
      fanout_args=()
      [ "$mode" = udp ] || fanout_args=(--unbatched)
      nice -n "${NICE:-0}" taskset -c "${RELAY_CPUS:-0}" "$bin/natter-udp-fanout" --listen "$listen:0" "${fanout_args[@]}" >"$work/relay.out" 2>"$work/relay.log" &
      relay_pid=$!
      for _ in $(seq 400); do grep -q '^listening:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
      target="$(sed -n 's/^listening: //p' "$work/relay.out")"
      loadgen_args=(--udp)
      [ "${LOADGEN:-batched}" = tokio ] || loadgen_args+=(--batched)
    else
      relay_bin="$bin"
      threads=()
      case "$mode" in
        relay | batched) ;;
        threads:*) threads=(--threads "${mode#threads:}") ;;
        *) relay_bin="${mode#relay:}" ;;
      esac
      # shellcheck disable=SC2086
      nice -n "${NICE:-0}" taskset -c "${RELAY_CPUS:-0}" "$relay_bin/natter-relay" --listen "$listen:0" --data-dir "$work/relay" \
          --max-room-size 5 --max-connections 100000 --max-connections-per-address 0 "${threads[@]}" ${RELAY_ARGS:-} >"$work/relay.out" 2>"$work/relay.log" &
      relay_pid=$!
      for _ in $(seq 400); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
      target="$(sed -n 's/^invite: //p' "$work/relay.out")"
      loadgen_args=()
      [ "${LOADGEN:-batched}" = tokio ] || loadgen_args=(--batched)
    fi
    [ -n "$target" ] || { echo "mode=$mode did not start:" >&2; cat "$work/relay.out" "$work/relay.log" >&2; exit 1; }
    # shellcheck disable=SC2086
    "${ns[@]}" nice -n "${NICE:-0}" taskset -c "${LOADGEN_CPUS:-1}" "$bin/natter-loadgen" "$target" "${loadgen_args[@]}" --participants "$n" --room-size 5 \
        "${interleave[@]}" ${LOADGEN_ARGS:-} --duration "${DURATION:-10}" --relay-pid "$relay_pid" >"$work/loadgen.out" &
    loadgen_pid=$!
    # Sample the middle of the sending phase (joining takes a moment first).
    sleep 3
    t0=$(busy); r0=$(proc_busy "$relay_pid"); l0=$(proc_busy "$loadgen_pid"); s0=$(date +%s.%N)
    sleep 5
    t1=$(busy); r1=$(proc_busy "$relay_pid"); l1=$(proc_busy "$loadgen_pid"); s1=$(date +%s.%N)
    wait "$loadgen_pid"
    others=$(echo "$t0 $t1 $r0 $r1 $l0 $l1 $s0 $s1" |
      awk '{printf "%.1f", (($2-$1)-($4-$3)-($6-$5)) / ($8-$7)}')
    echo "mode=$mode ${NETNS:+netns }${INTERLEAVE:+interleaved }$(cat "$work/loadgen.out") others_cpu_pct=$others"
    kill "$relay_pid"; wait "$relay_pid" 2>/dev/null || true
   done
  done
done
