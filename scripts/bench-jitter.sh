#!/usr/bin/env bash
# Jitter-buffer table: real speech (two voices: Debian's codec2-examples and linphone-common,
# fetched at run time, never committed) through Opus 32 kbit/s with FEC over the simulated
# networks of natter::jitter::sim, played out by our adaptive jitter buffer and by a fixed
# 60 ms buffer, scored with PESQ (wideband, PyPI `pesq` in a venv under
# $NATTER_CACHE/bench-venv). Method and results: docs/BENCHMARKS.md.
#
#   scripts/bench-jitter.sh [OUT_DIR]      # default target/bench-jitter; ~1 min after the build
#   JITTER_SPEECH=file.wav scripts/bench-jitter.sh    # other speech (any rate; no download)
#
# The bench's JITTER_* variables (app/benches/jitter.rs) pass through, e.g.
#   JITTER_PROFILES=none JITTER_MEAN_BURST=3 JITTER_DRED=50:40000:fec scripts/bench-jitter.sh OUT
#
# OUT_DIR/<voice>/ (OUT_DIR itself with JITTER_SPEECH) gets every output WAV (48 kHz, sample
# 0 = capture of the speech's first sample), results.tsv (the bench's numbers), delays.tsv
# (every frame's added delay), results-pesq.tsv and results.md (the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_CACHE="${NATTER_CACHE:-$PWD/.cache}"
out="$(realpath -m "${1:-${CARGO_TARGET_DIR:-target}/bench-jitter}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

if [ -n "${JITTER_SPEECH:-}" ]; then
  voices=("$(realpath "$JITTER_SPEECH")")
else
  # Two real voices, so that one voice does not decide: codec2's (voice A, 10.8 s) and
  # linphone's (voice B, 10.6 s).
  voices=("$(scripts/fetch-speech.sh "$work" codec2-examples speech_orig_16k.wav)"
          "$(scripts/fetch-speech.sh "$work" linphone-common hello16000.wav)")
fi

venv="$NATTER_CACHE/bench-venv"
if ! "$venv/bin/python" -c 'import pesq, numpy, scipy' 2>/dev/null; then
  echo "setting up $venv (pesq, numpy, scipy from PyPI)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pesq numpy scipy
fi

for speech in "${voices[@]}"; do
  # One voice: OUT_DIR itself; two: OUT_DIR/<voice>/ each.
  dir="$out"
  [ "${#voices[@]}" -gt 1 ] && dir="$out/$(basename "$speech" .wav)"
  mkdir -p "$dir"
  rm -f "$dir"/[0-9][0-9][0-9]_*.wav
  scripts/env.sh cargo bench -p natter --bench jitter -- "$speech" "$dir" >"$dir/bench.log"
  grep '^#' "$dir/bench.log"
  "$venv/bin/python" scripts/pesq_score.py "$speech" "$dir"
done
echo "outputs, per-row numbers and per-frame delays: $out" >&2
