#!/usr/bin/env bash
# Prepares what the Rust crate `webrtc-audio-processing` 2.x needs for its `bundled` feature
# (the crate's build script compiles WebRTC's AudioProcessing C++ library, AEC3 included, with
# meson + ninja) on Debian 12, idempotently and without touching the system's apt setup:
#
#   - Debian packages: a C++ toolchain, pkg-config, libclang (bindgen), cmake, ninja, python3-venv,
#     dpkg-dev (dpkg-source);
#   - meson >= 1.1 (Debian 12 has 1.0) from PyPI, in a venv; only `meson` is put on PATH;
#   - abseil >= 20240722 (Debian 12 has 20220623): Debian 13 (trixie)'s source package, fetched
#     with apt-get through a private sources file and private state dirs, built static + PIC +
#     C++17 with cmake/ninja into a local prefix (~2 min once); its libabsl_strings.a becomes a
#     linker script pulling in the rest of abseil (see make_strings_link_script). Without a new
#     enough abseil the crate's meson build tries to download one and fails offline.
#
# Everything lands under ${NATTER_CACHE:-<repo>/.cache}/apm (~45 MB); CI can point NATTER_CACHE
# outside the clone to reuse it. A second run with everything built takes well under a second.
#
#   scripts/setup-apm.sh               # set up; writes <cache>/apm-env.sh; prints `export` lines
#   scripts/setup-apm.sh --print-env   # set up; prints KEY=VALUE lines only (for make's export)
#   . "${NATTER_CACHE:-.cache}/apm-env.sh"   # then cargo build works in that shell
#
# Progress and errors go to stderr; stdout carries only the environment lines.
# Every cargo command that builds the crate must see the same environment: the crate's build
# script reruns (~2 min) whenever PKG_CONFIG_PATH changes.
set -euo pipefail

mode="${1:-}"
case "$mode" in
  "" | --print-env) ;;
  -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
  *) echo "setup-apm: unknown argument: $mode (use --print-env or nothing)" >&2; exit 2 ;;
esac

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${NATTER_CACHE:-$repo/.cache}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"
apm="$cache/apm"
mkdir -p "$apm/logs"

MESON_VERSION=1.9.2          # any meson >= 1.1 works; pinned for reproducibility
ABSL_MIN=20240722            # what webrtc-audio-processing 2.x's meson.build asks for
ABSL_SUITE=trixie            # Debian release whose abseil source package is new enough
ABSL_RECIPE="v2 suite=$ABSL_SUITE static pic c++17 release"  # change to force a rebuild

venv="$apm/venv"
bindir="$apm/bin"
prefix="$apm/abseil"
absl_stamp="$prefix/.natter-built"
meson_stamp="$venv/.natter-meson-$MESON_VERSION"

log() { echo "setup-apm: $*" >&2; }
die() { echo "setup-apm: error: $*" >&2; exit 1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Runs "$@" with output to a log file; on failure shows the log's tail and stops.
run_logged() {
  local name="$1"; shift
  local logf="$apm/logs/$name.log"
  if ! "$@" >"$logf" 2>&1; then
    tail -n 40 "$logf" >&2
    die "$name failed (full log: $logf)"
  fi
}

# ---------------------------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------------------------
ensure_packages() {
  local packages=(build-essential pkg-config libclang-dev cmake ninja-build python3-venv dpkg-dev)
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# meson (PyPI, in a venv) — only the meson entry point goes on PATH, not the venv's python
# ---------------------------------------------------------------------------------------------
ensure_meson() {
  if [ ! -f "$meson_stamp" ] || [ ! -x "$venv/bin/meson" ]; then
    log "installing meson $MESON_VERSION into $venv"
    rm -rf "$venv"
    # Debian's python3 (what python3-venv serves), not whatever python3 comes first on PATH.
    local py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)"
    run_logged venv "$py" -m venv "$venv"
    run_logged pip-meson "$venv/bin/pip" install --disable-pip-version-check -q \
      "meson==$MESON_VERSION"
    touch "$meson_stamp"
  fi
  mkdir -p "$bindir"
  [ -L "$bindir/meson" ] || ln -sfn "$venv/bin/meson" "$bindir/meson"
}

# ---------------------------------------------------------------------------------------------
# abseil (Debian trixie source package, built into $prefix)
# ---------------------------------------------------------------------------------------------

# The Debian mirror this machine already uses, from its own apt sources (no host hard-coded).
debian_mirror() {
  if [ -n "${NATTER_DEBIAN_MIRROR:-}" ]; then echo "$NATTER_DEBIAN_MIRROR"; return; fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # deb822: first URIs value that is not the security archive.
    uri="$(awk 'tolower($1)=="uris:" { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' "$f")"
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # one-line style: deb [options] URI suite components...
    uri="$(sed -E -n 's/^[[:space:]]*deb(-src)?[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\3/p' "$f" \
      | grep -v security | grep -E '^(https?|file|mirror[+a-z]*):' | head -n1 || true)"
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  die "found no Debian mirror in /etc/apt (set NATTER_DEBIAN_MIRROR=<mirror URI>)"
}

fetch_abseil_source() {
  local aptdir="$apm/apt" srcdir="$apm/src" mirror keyring opts
  mirror="$(debian_mirror)"
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$srcdir"
  keyring=""
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring="[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
  echo "deb-src ${keyring}${mirror} $ABSL_SUITE main" >"$aptdir/sources.list"
  # Private sources file and state: the system's apt lists and configuration stay untouched.
  opts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache"
        -o "APT::Sandbox::User=$(id -un)")
  log "fetching abseil source package ($ABSL_SUITE) from $mirror"
  run_logged apt-update apt-get "${opts[@]}" update
  rm -rf "$srcdir"; mkdir -p "$srcdir"
  (cd "$srcdir" && run_logged apt-source apt-get "${opts[@]}" source --download-only abseil)
  local dsc
  dsc="$(ls "$srcdir"/abseil_*.dsc 2>/dev/null | head -n1)"
  [ -n "$dsc" ] || die "apt-get source abseil fetched no .dsc (see $apm/logs/apt-source.log)"
  # Signature checks need debian-keyring; apt already verified the files against the signed index.
  (cd "$srcdir" && run_logged dpkg-source dpkg-source -x "$(basename "$dsc")" abseil)
}

# The crate's build script links the C++ library against abseil with only `absl_base` (through
# pkg-config, without --static) and a bare `-labsl_strings`. abseil 20240722 split string_view
# and throw_delegate out of absl_strings, so with static archives the final link misses
# absl::string_view::find*() and ThrowStdOutOfRange(). Fix on our side: the installed
# libabsl_strings.a becomes a linker script (GNU ld and lld both accept one in an archive's place)
# that groups the real archive with every other abseil archive; the linker pulls only what it
# needs. (A shared abseil, e.g. Debian 13's, would most likely hit the same hole: linkers do not
# resolve an object's symbols from DSOs that are only indirect dependencies.)
make_strings_link_script() {
  local lib="$prefix/lib" a members=()
  mv "$lib/libabsl_strings.a" "$lib/libabsl_strings_impl.a"
  for a in "$lib"/libabsl_*.a; do members+=("$a"); done
  {
    echo "/* setup-apm.sh: absl_strings plus the rest of abseil, for -labsl_strings users. */"
    echo "GROUP ( ${members[*]} )"
  } >"$lib/libabsl_strings.a"
}

ensure_abseil() {
  # Always our own static build, even where the system has abseil >= $ABSL_MIN (Debian 13),
  # for the reason above; our prefix comes first on PKG_CONFIG_PATH.
  if [ -f "$absl_stamp" ] && [ "$(cat "$absl_stamp")" = "$ABSL_RECIPE" ]; then
    return
  fi
  local t0=$SECONDS
  fetch_abseil_source
  local build="$apm/build/abseil"
  rm -rf "$build" "$prefix"
  log "building abseil into $prefix (cmake + ninja, about 2 minutes)"
  run_logged abseil-cmake cmake -S "$apm/src/abseil" -B "$build" -G Ninja \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DCMAKE_CXX_STANDARD=17 \
    -DABSL_PROPAGATE_CXX_STD=ON \
    -DABSL_BUILD_TESTING=OFF \
    -DBUILD_TESTING=OFF \
    -DABSL_ENABLE_INSTALL=ON
  run_logged abseil-build cmake --build "$build"
  run_logged abseil-install cmake --install "$build"
  make_strings_link_script
  PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --atleast-version="$ABSL_MIN" absl_base ||
    die "built abseil but pkg-config does not find absl_base >= $ABSL_MIN in $prefix/lib/pkgconfig"
  # The installed prefix is all the crate needs: drop the build tree, sources and apt lists.
  rm -rf "$build" "$apm/src" "$apm/apt"
  echo "$ABSL_RECIPE" >"$absl_stamp"
  log "abseil ready in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------
# The crate's build script runs rust-objcopy from the Rust sysroot to prefix the C++ symbols.
# ---------------------------------------------------------------------------------------------
check_objcopy() {
  local sysroot
  command -v rustc >/dev/null 2>&1 || return 0
  sysroot="$(rustc --print sysroot 2>/dev/null)" || return 0
  if compgen -G "$sysroot/lib/rustlib/*/bin/rust-objcopy" >/dev/null; then
    touch "$apm/.objcopy-ok"
  else
    log "warning: rust-objcopy not found in $sysroot; run: rustup component add llvm-tools"
  fi
}

# ---------------------------------------------------------------------------------------------

# One setup at a time (make -j, or two checkouts sharing NATTER_CACHE).
exec 9>"$apm/.lock"
flock 9

ensure_packages
ensure_meson
ensure_abseil
[ -f "$apm/.objcopy-ok" ] || check_objcopy

# Prepends $2 to the colon list $1 unless it is already in it.
prepend() { case ":$1:" in *":$2:"*) echo "$1" ;; *) echo "$2${1:+:$1}" ;; esac; }

new_path="$(prepend "$PATH" "$bindir")"
new_pkg="$(prepend "${PKG_CONFIG_PATH:-}" "$prefix/lib/pkgconfig")"

# The env file prepends to whatever the sourcing shell has.
envfile="$cache/apm-env.sh"
tmp="$envfile.tmp.$$"
{
  echo "# Written by scripts/setup-apm.sh: environment for building webrtc-audio-processing (bundled)."
  echo "case \":\$PATH:\" in *\":$bindir:\"*) ;; *) export PATH=\"$bindir:\$PATH\" ;; esac"
  echo "case \":\${PKG_CONFIG_PATH:-}:\" in *\":$prefix/lib/pkgconfig:\"*) ;; *) export PKG_CONFIG_PATH=\"$prefix/lib/pkgconfig\${PKG_CONFIG_PATH:+:\$PKG_CONFIG_PATH}\" ;; esac"
} >"$tmp"
cmp -s "$tmp" "$envfile" 2>/dev/null && rm -f "$tmp" || mv -f "$tmp" "$envfile"

if [ "$mode" = --print-env ]; then
  echo "PATH=$new_path"
  echo "PKG_CONFIG_PATH=$new_pkg"
else
  echo "export PATH='$new_path'"
  echo "export PKG_CONFIG_PATH='$new_pkg'"
fi
exit 0
