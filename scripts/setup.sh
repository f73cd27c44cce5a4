#!/usr/bin/env bash
# Installs what building and testing Natter needs on Debian 12, idempotently: a second run
# with everything present only checks and returns in well under a second.
#
#   scripts/setup.sh build   # system packages for compiling (C toolchain, Opus, ALSA)
#   scripts/setup.sh test    # + cargo-nextest
#   scripts/setup.sh run     # + what the desktop app loads at run time (`make run`)
#   scripts/setup.sh ui      # + Xvfb and PulseAudio, for screenshots and the app benchmark
#   scripts/setup.sh package # + cargo-deb, for `make package`
set -euo pipefail
what="${1:-build}"

# Debian packages: a C compiler and pkg-config for the -sys crates, cmake for libopus 1.6
# (opusic-sys builds it from source with its neural models),
# ALSA headers for cpal, cmake in case a -sys crate builds its bundled C source.
packages=(build-essential pkg-config libasound2-dev cmake)
# The device tests run calls through a private PulseAudio daemon with a null sink.
[ "$what" = test ] && packages+=(pulseaudio pulseaudio-utils libasound2-plugins)
# The package install test (scripts/test-package.sh) installs the .debs into a clean Debian
# root made by debootstrap; dpkg-dev gives cargo-deb dpkg-shlibdeps for the dependencies.
[ "$what" = test ] && packages+=(debootstrap dpkg-dev)
[ "$what" = package ] && packages+=(dpkg-dev)
# The call-quality test scores speech with PESQ (PyPI `pesq`) in a venv.
[ "$what" = test ] && packages+=(python3-venv)
# The desktop app (`make run`) loads these at run time, not at build time: OpenGL through
# Mesa, X11 and Wayland windowing and keyboard maps, and ALSA's PulseAudio/PipeWire plugin so
# cpal's "default" device is the desktop's sound server. A desktop install usually has them;
# a minimal one (or a VM reached over X forwarding) does not.
run_packages=(libgl1-mesa-dri libegl1 libglx-mesa0 libxkbcommon-x11-0 libxkbcommon0
  libxcursor1 libxrandr2 libxi6 libwayland-client0 libwayland-egl1 libasound2-plugins)
[ "$what" = run ] && packages+=("${run_packages[@]}")
# A window without a display (screenshots, the app benchmark): the same, plus Xvfb and a
# PulseAudio daemon to play into. The UI tests (egui_kittest) run without any display.
[ "$what" = ui ] && packages+=("${run_packages[@]}" xvfb xauth pulseaudio)
# tests/tests/desktop.rs opens the app's real window on a private Xvfb and reads it back;
# app/tests/ui.rs shows desktop notifications to dunst (on Xvfb, on a private D-Bus bus), and
# desktop.rs puts the tray icon in a real StatusNotifierItem tray (gtk-sni-tray-standalone),
# read back with gdbus.
[ "$what" = test ] && packages+=("${run_packages[@]}" xvfb x11-utils xdotool dunst dbus-daemon
  haskell-gtk-sni-tray-utils libglib2.0-bin)
# tests/tests/cluster.rs keeps the relays' directory in a private redis-server (unix socket).
[ "$what" = test ] && packages+=(redis-server)
# tests/tests/nat.rs hosts a call behind a real UPnP router (miniupnpd) in network namespaces.
[ "$what" = test ] && packages+=(iproute2 nftables miniupnpd-nftables)

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

if [ "$what" = test ] || [ "$what" = package ]; then
  # cargo-deb builds the .deb packages; pinned, because its options and warnings change.
  if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb 3.8.0" ]; then
    echo "setup: installing cargo-deb 3.8.0 (one time, a few minutes)"
    cargo install cargo-deb --version 3.8.0 --locked --quiet
  fi
fi

if [ "$what" = test ]; then
  # `make test` checks formatting and lints: a toolchain installed with rustup's minimal
  # profile has neither component (rustup's proxies exist but fail, so ask them).
  for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
      echo "setup: adding the Rust component $component"
      rustup component add "$component"
    fi
  done
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest (one time, a few minutes)"
    cargo install cargo-nextest --locked --quiet
  fi
  # PESQ for tests/tests/quality.rs (and the benches): a venv under $NATTER_CACHE, marked
  # complete only once every package imports, so the check on later runs is one `test -f`.
  venv="${NATTER_CACHE:-$(dirname "$0")/../.cache}/bench-venv"
  if [ ! -f "$venv/.natter-ok" ]; then
    echo "setup: installing pesq, numpy, scipy from PyPI into $venv (one time)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pesq numpy scipy
    "$venv/bin/python" -c 'import pesq, numpy, scipy' && touch "$venv/.natter-ok"
  fi
fi
