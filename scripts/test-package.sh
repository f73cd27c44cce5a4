#!/usr/bin/env bash
# The package install test (`make test` runs it after the cargo tests): builds the two .deb
# packages from the binaries `make test` just compiled, installs them with apt into a clean
# Debian 12 root (debootstrap --variant=minbase, made once into $NATTER_CACHE and copied fresh
# for every run), and checks what a user relies on:
#   - apt resolves every dependency the packages declare (nothing else is preinstalled);
#   - both binaries run in that root, and a real call goes through the packaged relay started
#     as its system user with its packaged configuration (echo mode: chirps out, chirps back);
#   - the desktop entry passes desktop-file-validate, natter:// opens natter.desktop
#     (mimeinfo.cache and `xdg-mime query default`), the icon is in the hicolor theme;
#   - the relay's user exists, its configuration is 0640 root:natter-relay, its unit is enabled;
#   - purge removes the user, the configuration and the state directory.
# The packages are built from the debug binaries here (stripped, fast compression): the test
# checks the packaging, `make package` builds the release packages people install.
#
# Needs root for debootstrap and chroot (sudo otherwise), and the Debian mirror for apt; the
# root and the downloaded .debs are cached, so later runs take about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
export NATTER_CACHE="${NATTER_CACHE:-$PWD/.cache}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

step() { printf 'package test: %s\n' "$*"; }
fail() { printf 'package test FAILED: %s\n' "$*" >&2; exit 1; }

work="$(mktemp -d)"
root="$work/root"
cleanup() {
  # Nothing is mounted into the root, so removing it is safe.
  $sudo rm -rf "$work"
}
trap cleanup EXIT

step "building the .deb packages"
scripts/package.sh --test "$work/debs" >"$work/package.log" 2>&1 || { cat "$work/package.log" >&2; fail "packaging"; }
natter_deb="$(ls "$work"/debs/natter_*.deb)"
relay_deb="$(ls "$work"/debs/natter-relay_*.deb)"

# The clean root, made once. The mirror is the machine's own (apt sources), never a host
# written into the repository.
base="$NATTER_CACHE/pkgroot/bookworm"
if [ ! -f "$base/.complete" ]; then
  mirror="$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  step "making a clean Debian 12 root from $mirror (once, about a minute)"
  $sudo rm -rf "$base"
  mkdir -p "$(dirname "$base")"
  $sudo debootstrap --variant=minbase bookworm "$base" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap"; }
  $sudo touch "$base/.complete"
fi
$sudo cp -a "$base" "$root"
$sudo cp /etc/resolv.conf "$root/etc/resolv.conf"
$sudo cp "$natter_deb" "$relay_deb" "$root/tmp/"
archives="$NATTER_CACHE/pkgroot/archives"
mkdir -p "$archives"
$sudo find "$archives" -name '*.deb' -exec cp -t "$root/var/cache/apt/archives/" {} +

in_root() { $sudo chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

step "installing with apt into the clean root"
in_root apt-get update -qq >"$work/apt.log" 2>&1 || { cat "$work/apt.log" >&2; fail "apt-get update"; }
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  "/tmp/$(basename "$natter_deb")" "/tmp/$(basename "$relay_deb")" desktop-file-utils xdg-utils \
  >>"$work/apt.log" 2>&1 || { tail -40 "$work/apt.log" >&2; fail "apt-get install"; }
# Keep the downloads for the next run (the packages themselves are rebuilt every time).
$sudo find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' ! -name 'natter*' -exec cp -n -t "$archives/" {} +

step "the binaries run"
in_root natter --version | grep -q '^natter ' || fail "natter --version"
in_root natter-relay --version | grep -q '^natter-relay ' || fail "natter-relay --version"

step "desktop entry, natter:// handler, icon"
in_root desktop-file-validate /usr/share/applications/natter.desktop || fail "desktop-file-validate"
grep -q '^x-scheme-handler/natter=.*natter\.desktop' "$root/usr/share/applications/mimeinfo.cache" \
  || fail "natter:// is not in mimeinfo.cache (update-desktop-database did not register it)"
handler="$(in_root xdg-mime query default x-scheme-handler/natter)"
[ "$handler" = natter.desktop ] || fail "xdg-mime says natter:// opens '$handler', not natter.desktop"
grep -q '^Exec=natter %u$' "$root/usr/share/applications/natter.desktop" || fail "Exec line"
for size in 16x16 32x32 48x48 128x128 256x256 512x512; do
  [ -s "$root/usr/share/icons/hicolor/$size/apps/natter.png" ] || fail "icon $size missing"
done

step "the relay's user, configuration and unit"
in_root getent passwd natter-relay >/dev/null || fail "no natter-relay user"
perms="$(in_root stat -c '%a %U:%G' /etc/natter-relay/relay.toml)"
[ "$perms" = "640 root:natter-relay" ] || fail "relay.toml is $perms, not 640 root:natter-relay"
[ -L "$root/etc/systemd/system/multi-user.target.wants/natter-relay.service" ] || fail "unit not enabled"
grep -q '^User=natter-relay$' "$root/usr/lib/systemd/system/natter-relay.service" || fail "unit user"

step "a call through the packaged relay (its user, its configuration)"
# What systemd's StateDirectory= does before starting the unit.
in_root install -d -m 0700 -o natter-relay -g natter-relay /var/lib/natter-relay
$sudo chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin LANG=C.UTF-8 \
  setpriv --reuid=natter-relay --regid=natter-relay --init-groups \
  natter-relay --config /etc/natter-relay/relay.toml --data-dir /var/lib/natter-relay \
  --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --log-format text >"$work/relay.out" 2>&1 &
relay_pid=$!
stop_relay() { kill "$relay_pid" 2>/dev/null || true; wait "$relay_pid" 2>/dev/null || true; }
trap 'stop_relay; cleanup' EXIT
invite=""
for _ in $(seq 100); do
  invite="$(sed -n 's/^invite: //p' "$work/relay.out" | head -1)"
  [ -n "$invite" ] && break
  kill -0 "$relay_pid" 2>/dev/null || { cat "$work/relay.out" >&2; fail "the relay exited"; }
  sleep 0.1
done
[ -n "$invite" ] || { cat "$work/relay.out" >&2; fail "the relay printed no invite within 10 s"; }
in_root natter signal chirps /tmp/chirps.wav --seconds 4 >/dev/null
in_root natter call "${invite%%\?*}/smoke?${invite#*\?}" --name smoke --echo \
  --input /tmp/chirps.wav --output /tmp/heard.wav --duration 5 >"$work/call.out" 2>&1 \
  || { cat "$work/call.out" >&2; fail "natter call through the packaged relay"; }
in_root natter latency /tmp/heard.wav --seconds 4 >"$work/latency.out" 2>&1 \
  || { cat "$work/latency.out" "$work/call.out" >&2; fail "no chirps came back through the packaged relay"; }
step "$(grep -m1 -i 'median' "$work/latency.out" || head -1 "$work/latency.out")"
stop_relay
trap cleanup EXIT

step "purge removes the relay's user, configuration and state"
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq natter-relay >>"$work/apt.log" 2>&1 \
  || { tail -20 "$work/apt.log" >&2; fail "apt-get purge"; }
! in_root getent passwd natter-relay >/dev/null || fail "natter-relay user left after purge"
[ ! -e "$root/etc/natter-relay" ] || fail "/etc/natter-relay left after purge"
[ ! -e "$root/var/lib/natter-relay" ] || fail "/var/lib/natter-relay left after purge"

step "ok ($(du -k "$natter_deb" | cut -f1) KiB natter, $(du -k "$relay_deb" | cut -f1) KiB natter-relay, debug builds)"
