#!/usr/bin/env bash
# Installs what building and testing Natter needs on Debian 12, idempotently: a second run
# with everything present only checks and returns in well under a second.
#
#   scripts/setup.sh build   # system packages for compiling (C toolchain, Opus, ALSA)
#   scripts/setup.sh test    # + cargo-nextest
#   scripts/setup.sh ui      # + Xvfb and Mesa, for screenshots and the app benchmark
set -euo pipefail
what="${1:-build}"

# Debian packages: a C compiler and pkg-config for the -sys crates, libopus for audiopus,
# ALSA headers for cpal, cmake in case a -sys crate builds its bundled C source.
packages=(build-essential pkg-config libopus-dev libasound2-dev cmake)
# The device tests run calls through a private PulseAudio daemon with a null sink.
[ "$what" = test ] && packages+=(pulseaudio pulseaudio-utils libasound2-plugins)
# A window without a display (screenshots, the app benchmark): Xvfb, and the libraries the
# desktop app loads at run time (OpenGL through Mesa, X11 input). The build itself needs none
# of them, and the UI tests (egui_kittest) run without any display.
[ "$what" = ui ] && packages+=(xvfb xauth libgl1-mesa-dri libegl1 libglx-mesa0
  libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 pulseaudio libasound2-plugins)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$what" = test ]; then
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest (one time, a few minutes)"
    cargo install cargo-nextest --locked --quiet
  fi
fi
