#!/usr/bin/env bash
# Runs a command (usually cargo) with everything the build needs installed and in the
# environment: Debian packages (scripts/setup.sh) and, for webrtc-audio-processing's bundled
# C++ build, meson and a new enough abseil (scripts/setup-apm.sh, built once into
# $NATTER_CACHE, default <repo>/.cache). Both steps are idempotent and instant when done.
#
#   scripts/env.sh cargo build
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export NATTER_CACHE="${NATTER_CACHE:-$here/../.cache}"
"$here/setup.sh" "${NATTER_SETUP:-build}" >&2
"$here/setup-apm.sh" >/dev/null
# shellcheck disable=SC1091
. "$NATTER_CACHE/apm-env.sh"
exec "$@"
