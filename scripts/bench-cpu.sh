#!/usr/bin/env bash
# CPU cost of 20 ms of audio through the whole chain on one thread: voice processing (all
# stages) + VAD + Opus encode (40 kbit/s, FEC) of the microphone, and 4 remote streams each
# through its jitter buffer and Opus decoder, mixed. Target: <= 2 % of one core (docs/BENCHMARKS.md).
#
#   scripts/bench-cpu.sh                               # 7 runs x 1000 iterations (20 s of audio each)
#   CHAIN_RUNS=3 CHAIN_ITERATIONS=500 scripts/bench-cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "machine: $(nproc) cores, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1); load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec scripts/env.sh cargo bench -p natter --bench chain
