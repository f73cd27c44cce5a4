#!/usr/bin/env bash
# Jitter-buffer table: real speech (Debian's codec2-examples, fetched at run time, never committed)
# through Opus 32 kbit/s with FEC over the simulated networks of natter::jitter::sim, played out
# by our adaptive jitter buffer and by a fixed 60 ms buffer, scored with PESQ (wideband, PyPI
# `pesq` in a venv under $NATTER_CACHE/bench-venv). Method and results: docs/BENCHMARKS.md.
#
#   scripts/bench-jitter.sh [OUT_DIR]      # default target/bench-jitter; ~1 min after the build
#   JITTER_SPEECH=file.wav scripts/bench-jitter.sh    # other speech (any rate; no download)
#
# OUT_DIR gets every output WAV (48 kHz, sample 0 = capture of the speech's first sample),
# results.tsv (the bench's numbers), delays.tsv (every frame's added delay), results-pesq.tsv
# and results.md (the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_CACHE="${NATTER_CACHE:-$PWD/.cache}"
out="$(realpath -m "${1:-${CARGO_TARGET_DIR:-target}/bench-jitter}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

speech="${JITTER_SPEECH:-}"
if [ -z "$speech" ]; then
  # apt-get download runs as the unprivileged _apt user when it can write the directory.
  chmod 777 "$work"
  if ! (cd "$work" && apt-get download codec2-examples) >"$work/apt.log" 2>&1; then
    cat "$work/apt.log" >&2
    echo "cannot download codec2-examples (run 'apt-get update' once, or set JITTER_SPEECH)" >&2
    exit 1
  fi
  dpkg-deb -x "$work"/codec2-examples_*.deb "$work/pkg"
  speech="$work/pkg/usr/share/codec2/raw/speech_orig_16k.wav"
  [ -f "$speech" ] || speech="$(find "$work/pkg" -name 'speech_orig_16k.wav' | head -1)"
  [ -f "$speech" ] || { echo "speech_orig_16k.wav not found in codec2-examples" >&2; exit 1; }
fi
speech="$(realpath "$speech")"

venv="$NATTER_CACHE/bench-venv"
if ! "$venv/bin/python" -c 'import pesq, numpy, scipy' 2>/dev/null; then
  echo "setting up $venv (pesq, numpy, scipy from PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pesq numpy scipy
fi

mkdir -p "$out"
rm -f "$out"/[0-9][0-9][0-9]_*.wav
scripts/env.sh cargo bench -p natter --bench jitter -- "$speech" "$out" >"$out/bench.log"
grep '^#' "$out/bench.log"
"$venv/bin/python" scripts/pesq_score.py "$speech" "$out"
echo "outputs, per-row numbers and per-frame delays: $out" >&2
