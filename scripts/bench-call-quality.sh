#!/usr/bin/env bash
# End-to-end call quality: a real natter-relay and two real `natter call` processes (release
# builds) on loopback, the listener behind natter-netem (seeded UDP impairment proxy: delay,
# jitter, loss, reordering, both directions), real speech that is not in this repository
# (Debian's codec2-examples and linphone-common, fetched at run time), PESQ-WB of what the
# listener recorded against what the talker sent, for the first sentence of the stream
# ("start", the first ~10 s) and for a sentence ~23 s into the call ("mid"); then the
# mouth-to-ear latency of a chirp probe through the same path. Method and results:
# docs/BENCHMARKS.md.
#
#   scripts/bench-call-quality.sh [OUT_DIR]            # every condition, RUNS=5 runs each
#   RUNS=3 CONDITIONS="clean random" scripts/bench-call-quality.sh
#   CONDITIONS=uplink ...                                 # the talker's path jittery instead
#   CALL_SPEECH_A=a.wav CALL_SPEECH_B=b.wav ...          # other speech (no download)
#   NO_BUILD=1 NATTER_BIN_DIR=dir ...                     # binaries built elsewhere (A/B runs)
#   RUN_OFFSET=2 RUNS=1 ...                               # just run 3 (seed and voice order)
#
# The talker sends voice A, B, A (or B, A, B on even runs, so both voices open a call) with
# 1.5 s pauses. OUT_DIR gets per run the recording, both stats JSONs and the scores
# (runs.jsonl), and summary.md: median (min–max) per condition.
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_CACHE="${NATTER_CACHE:-$PWD/.cache}"
bin="${NATTER_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
out="$(realpath -m "${1:-${CARGO_TARGET_DIR:-target}/bench-call-quality}")"
runs="${RUNS:-5}"
conditions="${CONDITIONS:-direct clean random bursty}"
chirp_seconds="${CHIRP_SECONDS:-12}"
work="$(mktemp -d)"
relay_pid=""
proxy_pid=""
cleanup() {
  [ -n "$proxy_pid" ] && kill "$proxy_pid" 2>/dev/null || true
  [ -n "$relay_pid" ] && kill "$relay_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Impairment of the listener's path (natter_e2e::netem::parse_profile), down = towards it.
# "direct" is the clean path without the proxy (the listener talks to the relay itself);
# "uplink" impairs the *talker's* path instead (jitter, no loss) and leaves the listener's
# clean: the jitter the listener's own pings cannot see, which the relay measures and announces
# (UplinkSpread, docs/PROTOCOL.md §5.16). "random20" and "bursty20" (not in the default set)
# lose a fifth of the packets towards the listener, and only those: what they measure is the
# media's protection, not the join, which such loss both ways can still fail
# (docs/BENCHMARKS.md, "A lossy handshake").
profile_down() {
  case "$1" in
    direct | clean) echo "" ;;
    random) echo "delay=40,jitter=12,loss=5" ;;
    bursty) echo "delay=40,jitter=10,ge-loss=8,burst=3" ;;
    uplink) echo "delay=40,jitter=12" ;;
    random20) echo "delay=40,jitter=12,loss=20" ;;
    bursty20) echo "delay=40,jitter=10,ge-loss=20,burst=3" ;;
    *) echo "unknown condition $1" >&2; exit 1 ;;
  esac
}
profile_up() {
  case "$1" in
    direct | clean) echo "" ;;
    random) echo "delay=40,jitter=12,loss=5" ;;
    bursty) echo "delay=40,jitter=10,ge-loss=8,burst=3" ;;
    uplink) echo "delay=40,jitter=12" ;;
    random20) echo "delay=40,jitter=12" ;;
    bursty20) echo "delay=40,jitter=10" ;;
  esac
}

speech_a="${CALL_SPEECH_A:-$(scripts/fetch-speech.sh "$work" codec2-examples speech_orig_16k.wav)}"
speech_b="${CALL_SPEECH_B:-$(scripts/fetch-speech.sh "$work" linphone-common hello16000.wav)}"
[ -f "$speech_a" ] && [ -f "$speech_b" ] || { echo "speech files not found" >&2; exit 1; }

venv="$NATTER_CACHE/bench-venv"
if ! "$venv/bin/python" -c 'import pesq, numpy, scipy' 2>/dev/null; then
  echo "setting up $venv (pesq, numpy, scipy from PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pesq numpy scipy
fi
py="$venv/bin/python"

if [ -z "${NO_BUILD:-}" ]; then
  nice -n 15 scripts/env.sh cargo build --release --quiet -p natter -p natter-relay -p natter-e2e --bin natter --bin natter-relay --bin natter-netem
fi

mkdir -p "$out"
: >"$out/runs.jsonl"
for order in ABA BAB; do
  mkdir -p "$work/talk-$order"
  "$py" scripts/call_quality_score.py make_talk "$work/talk-$order" "$speech_a" "$speech_b" "$order" 1.5
done
"$bin/natter" signal chirps "$work/probe.wav" --seconds "$chirp_seconds" --seed 7

"$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" >"$work/relay.out" 2>"$work/relay.log" &
relay_pid=$!
for _ in $(seq 100); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
[ -n "$invite" ] || { echo "relay did not start"; cat "$work/relay.log"; exit 1; }
relay_addr="$(echo "$invite" | sed -E 's#^natter://([^/?]+).*#\1#')"

# One call: $1 condition, $2 seed, $3 input WAV, $4 duration (s), $5 run directory.
call() {
  local cond="$1" seed="$2" input="$3" secs="$4" dir="$5"
  mkdir -p "$dir"
  local bob_invite="$invite" alice_invite="$invite"
  if [ "$cond" = direct ]; then
    # No proxy at all: what the proxy itself costs (a process hop per packet).
    echo '{"to_upstream":{"packets":0,"lost":0,"reordered":0},"to_client":{"packets":0,"lost":0,"reordered":0},"overflow":0}' >"$dir/netem.json"
  else
    "$bin/natter-netem" --upstream "$relay_addr" --seed "$seed" \
        --down "$(profile_down "$cond")" --up "$(profile_up "$cond")" \
        >"$dir/netem.out" 2>"$dir/netem.json" &
    proxy_pid=$!
    for _ in $(seq 100); do grep -q '^listening:' "$dir/netem.out" 2>/dev/null && break; sleep 0.05; done
    local via
    via="$(sed -n 's/^listening: //p' "$dir/netem.out")"
    if [ "$cond" = uplink ]; then
      alice_invite="${invite/$relay_addr/$via}"
    else
      bob_invite="${invite/$relay_addr/$via}"
    fi
  fi
  local room="q$RANDOM$seed"
  # The listener logs every stretch, concealment, re-buffer, skip and change of its target
  # (natter::jitter) and every playback underrun and late wake-up (natter::playout) with its
  # time (bob.log), so a bad recording can be explained against talk.json's segments.
  RUST_LOG="${RUST_LOG:-warn,natter::jitter=debug,natter::playout=debug}" "$bin/natter" call "$bob_invite" --room "$room" --name bob --duration "$((secs + 3))" \
      --output "$dir/bob.wav" --stats-json "$dir/bob.json" >"$dir/bob.log" 2>&1 &
  local bob=$!
  sleep 0.7
  "$bin/natter" call "$alice_invite" --room "$room" --name alice --input "$input" \
      --duration "$((secs + 1))" --stats-json "$dir/alice.json" >"$dir/alice.log" 2>&1
  wait "$bob"
  if [ -n "$proxy_pid" ]; then
    kill "$proxy_pid"
    wait "$proxy_pid" || true
    proxy_pid=""
  fi
}

echo "load before: $(uptime)" | tee "$out/load.txt"
for cond in $conditions; do
  for run in $(seq $((${RUN_OFFSET:-0} + 1)) $((${RUN_OFFSET:-0} + runs))); do
    order=ABA
    [ $((run % 2)) -eq 0 ] && order=BAB
    dir="$out/$cond-$run"
    secs="$("$py" -c "import json;print(int(json.load(open('$work/talk-$order/talk.json'))['seconds'])+1)")"
    call "$cond" "$run" "$work/talk-$order/talk.wav" "$secs" "$dir"
    score="$("$py" scripts/call_quality_score.py "$work/talk-$order/talk.json" "$dir/bob.wav" "$dir/alice.json" "$dir/bob.json")"
    echo "{\"condition\":\"$cond\",\"run\":$run,\"kind\":\"speech\",\"order\":\"$order\",\"netem\":$(cat "$dir/netem.json"),\"score\":$score}" >>"$out/runs.jsonl"
    echo "$cond run $run ($order): $score" | cut -c1-200 >&2
    # Mouth-to-ear: the chirp probe through the same path.
    call "$cond" "$((run + 100))" "$work/probe.wav" "$((chirp_seconds + 1))" "$dir/chirps"
    lat="$("$bin/natter" latency "$dir/chirps/bob.wav" --seconds "$chirp_seconds" --seed 7 \
        --align "$dir/chirps/alice.json" "$dir/chirps/bob.json" 2>&1 | tail -1)"
    echo "{\"condition\":\"$cond\",\"run\":$run,\"kind\":\"latency\",\"line\":$("$py" -c 'import json,sys;print(json.dumps(sys.argv[1]))' "$lat")}" >>"$out/runs.jsonl"
    echo "$cond run $run latency: $lat" >&2
  done
done
echo "load after: $(uptime)" | tee -a "$out/load.txt"
"$py" scripts/call_quality_summary.py "$out/runs.jsonl" | tee "$out/summary.md"
