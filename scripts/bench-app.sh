#!/usr/bin/env bash
# CPU and memory of the desktop app during a 3-person call with its window open.
#
# A relay process, two headless `natter call` participants speaking a speech-like signal, and
# the app (release build) joining them from the command line. Without a display the app runs
# under Xvfb (Mesa's llvmpipe renders). Audio: a private PulseAudio daemon with a null sink, so
# the app uses its real sound-card path (cpal's PulseAudio client, voice processing on);
# AUDIO=test uses the app's test-signal backend instead (no PulseAudio needed).
#
#   scripts/bench-app.sh                 # 60 s measured after 10 s of warm-up
#   SECS=120 AUDIO=test scripts/bench-app.sh
#   BASELINE=1 scripts/bench-app.sh      # the same call from headless `natter call` (no UI)
#   NO_BUILD=1 NATTER_BIN_DIR=dir scripts/bench-app.sh   # binaries built elsewhere (A/B runs)
#
# Prints the app's CPU use (percent of one core: user+system ticks over the window) and its
# resident memory (VmRSS at the end, and VmHWM, the peak).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${SECS:-60}"
warmup="${WARMUP:-10}"
audio="${AUDIO:-pulse}"
bin="${NATTER_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}"
if [ -z "${NO_BUILD:-}" ]; then
  NATTER_SETUP=ui scripts/env.sh cargo build --release --quiet -p natter -p natter-relay --bins
fi

work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ "$audio" = pulse ]; then
  if ! command -v pulseaudio >/dev/null; then
    echo "bench-app: pulseaudio not installed (scripts/setup.sh test installs it); use AUDIO=test" >&2
    exit 1
  fi
  mkdir -p "$work/pulse/run" "$work/pulse/home"
  cat >"$work/pulse/default.pa" <<EOF
load-module module-null-sink sink_name=bench rate=48000 channels=2
load-module module-native-protocol-unix auth-anonymous=1 socket=$work/pulse/run/native
set-default-sink bench
set-default-source bench.monitor
EOF
  XDG_RUNTIME_DIR="$work/pulse/run" HOME="$work/pulse/home" \
    pulseaudio -n -F "$work/pulse/default.pa" --daemonize=no --exit-idle-time=-1 \
    >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do [ -S "$work/pulse/run/native" ] && break; sleep 0.05; done
  export PULSE_SERVER="unix:$work/pulse/run/native"
  app_audio=()
else
  app_audio=(--test-signal speech)
fi

"$bin/natter-relay" --listen 127.0.0.1:0 --data-dir "$work/relay" >"$work/relay.out" 2>"$work/relay.log" &
pids+=($!)
for _ in $(seq 100); do grep -q '^invite:' "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
invite="$(sed -n 's/^invite: //p' "$work/relay.out")"
[ -n "$invite" ] || { echo "relay did not start"; cat "$work/relay.log"; exit 1; }
room_invite="$(printf '%s' "$invite" | sed 's#^\(natter://[^/?]*\)#\1/bench#')"

total=$((warmup + secs + 5))
"$bin/natter" signal speech "$work/a.wav" --seconds "$total" --seed 1
"$bin/natter" signal speech "$work/b.wav" --seconds "$total" --seed 2
for who in a b; do
  "$bin/natter" call "$invite" --room bench --name "bot-$who" --input "$work/$who.wav" \
    --duration "$total" >/dev/null 2>&1 &
  pids+=($!)
done

run_app=("$bin/natter" --dir "$work/app" "${app_audio[@]}" "$room_invite" --name carol)
if [ -n "${BASELINE:-}" ]; then
  # The floor: the same participant without a window (engine, audio devices, network).
  [ "$audio" = pulse ] || { echo "BASELINE needs AUDIO=pulse" >&2; exit 1; }
  run_app=("$bin/natter" call "$invite" --room bench --name carol --input-device default
    --output-device default --duration "$total")
  mkdir -p "$work/app/data" && echo "joined (headless)" >"$work/app/data/natter.log"
elif [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  NATTER_SETUP=ui scripts/setup.sh ui >&2
  display=":$((90 + RANDOM % 100))"
  Xvfb "$display" -screen 0 1280x1024x24 -nolisten tcp >/dev/null 2>&1 &
  pids+=($!)
  sleep 1
  export DISPLAY="$display"
fi
"${run_app[@]}" 2>"$work/app.err" &
app=$!
pids+=("$app")

ticks() { awk '{print $14 + $15}' "/proc/$app/stat"; }
# Per-thread ticks and context switches: "name ticks switches" lines (the name is in
# parentheses and may hold spaces; threads of one name are summed). Voluntary switches are the
# thread's wake-ups (each sleep in poll, futex or nanosleep ends in one).
thread_ticks() {
  for t in /proc/"$app"/task/*; do
    sw=$(awk '/^voluntary_ctxt_switches/ {print $2}' "$t/status")
    sed -E 's/^[0-9]+ \((.*)\) (.*)$/\1|\2/' "$t/stat" \
      | awk -F'|' -v sw="$sw" '{split($2, f, " "); gsub(/ /, "_", $1); print $1, f[12] + f[13], sw}'
  done | awk '{a[$1] += $2; w[$1] += $3} END {for (k in a) print k, a[k], w[k]}'
}
sleep "$warmup"
kill -0 "$app" 2>/dev/null || { echo "the app exited:"; cat "$work/app.err"; exit 1; }
thread_ticks >"$work/threads0"
t0=$(date +%s.%N); c0=$(ticks)
sleep "$secs"
t1=$(date +%s.%N); c1=$(ticks)
thread_ticks >"$work/threads1"
hz=$(getconf CLK_TCK)
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$app/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$app/status")
threads=$(awk '/^Threads/ {print $2}' "/proc/$app/status")
anon=$(awk '/^RssAnon/ {print $2}' "/proc/$app/status")
gl=$(awk '/^[0-9a-f]+-/ {name = $6} /^Rss:/ && name ~ /libLLVM|_dri\.so|libgallium/ {s += $2} END {print s + 0}' "/proc/$app/smaps")
cpu=$(awk -v c="$((c1 - c0))" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {printf "%.2f", 100 * c / hz / (t1 - t0)}')
grep -q "joined" "$work/app/data/natter.log" 2>/dev/null \
  || { echo "the app did not join the call:"; cat "$work/app/data/natter.log" "$work/app.err" 2>/dev/null | tail; exit 1; }
what="desktop app"; [ -n "${BASELINE:-}" ] && what="headless natter call (baseline)"
echo "$what, 3-person call (audio: $audio), ${secs} s after ${warmup} s warm-up:"
echo "  CPU: ${cpu} % of one core"
echo "  memory: VmRSS $((rss / 1024)) MiB, peak (VmHWM) $((hwm / 1024)) MiB, ${threads} threads"
echo "    of which anonymous (heap, stacks): $((anon / 1024)) MiB; Mesa's software renderer (libLLVM, *_dri.so, shared files): $((gl / 1024)) MiB"
rate=$(grep -o 'per_second=[0-9.]*' "$work/app/data/natter.log" | tail -1 | cut -d= -f2 || true)
echo "  window repaints: ${rate:-?} per second"
echo "  by thread (% of one core, wake-ups per second):"
join -a 2 -e 0 -o 0,1.2,2.2,1.3,2.3 <(sort "$work/threads0") <(sort "$work/threads1") \
  | awk -v hz="$hz" -v t0="$t0" -v t1="$t1" '{d = t1 - t0; p = 100 * ($3 - $2) / hz / d; if (p >= 0.05) printf "    %-22s %6.2f %7.0f/s\n", $1, p, ($5 - $4) / d}' \
  | sort -k2 -n -r
grep -i -E "error|panic" "$work/app.err" | head -5 || true
