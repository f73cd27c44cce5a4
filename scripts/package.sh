#!/usr/bin/env bash
# Debian packages of the desktop app (`natter`) and the relay (`natter-relay`), built by
# cargo-deb from the [package.metadata.deb] tables of app/Cargo.toml and relay/Cargo.toml.
#
#   scripts/package.sh [OUT_DIR]           release build, what people install (`make package`);
#                                          OUT_DIR defaults to target/debian
#   scripts/package.sh --test OUT_DIR      from the debug binaries `make test` already built,
#                                          stripped and quickly compressed (scripts/test-package.sh)
#
# Runs through scripts/env.sh, which installs cargo-deb and the build dependencies when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
here="$PWD/scripts"
if [ "${1:-}" = --test ]; then
  out="$(realpath -m "${2:?usage: scripts/package.sh --test OUT_DIR}")"
  # cargo-deb warns that the dev profile is for tests only: that is what this is.
  build=(--no-build --profile dev --fast --quiet)
  NATTER_SETUP=test "$here/env.sh" cargo build -p natter -p natter-relay --bins --quiet
else
  out="$(realpath -m "${1:-${CARGO_TARGET_DIR:-target}/debian}")"
  # Stripped: the release profile keeps debug info for profiling, which users do not need.
  build=(--locked --strip)
fi
mkdir -p "$out"
for package in natter-relay natter; do
  rm -f "$out/${package}_"*.deb
  NATTER_SETUP=package "$here/env.sh" cargo deb -p "$package" "${build[@]}" -o "$out" 2>&1 \
    | grep -v -e 'dev profile is not supported' -e 'To enable debug symbols set' || true
  ls "$out/${package}_"*.deb >/dev/null
done
ls -l "$out"/*.deb
