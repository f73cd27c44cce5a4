#!/usr/bin/env bash
# Runs every natter-proto fuzz target for N seconds each (default 30): ./run.sh [SECONDS]
#
# Installs cargo-fuzz if it is missing. The toolchain is stable, so RUSTC_BOOTSTRAP=1 lets
# cargo-fuzz pass its -Z flags (sanitizer, coverage instrumentation) to rustc. Corpora grow in
# corpus/TARGET and crashing inputs land in artifacts/TARGET (both git-ignored). Exits non-zero
# if any target finds a crash, after running all of them.
set -euo pipefail

seconds="${1:-30}"
case "$seconds" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz…" >&2
    cargo install cargo-fuzz --locked
fi

cargo fuzz build

failed=()
for target in $(cargo fuzz list); do
    args=(-max_total_time="$seconds")
    if [ -f "dict/$target.dict" ]; then
        args+=(-dict="dict/$target.dict")
    fi
    echo "=== $target: ${seconds}s" >&2
    if ! cargo fuzz run "$target" -- "${args[@]}"; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]} (inputs under $(pwd)/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash" >&2
