#!/usr/bin/env bash
# Prints the path of a file from a Debian package, downloaded (never installed) and unpacked
# into DIR: how the benches get real speech without committing it.
#
#   scripts/fetch-speech.sh DIR PACKAGE FILE_NAME
#   scripts/fetch-speech.sh "$work" codec2-examples speech_orig_16k.wav   # voice A
#   scripts/fetch-speech.sh "$work" linphone-common hello16000.wav        # voice B
set -euo pipefail
dir="$1/$2"
mkdir -p "$dir"
# apt-get download runs as the unprivileged _apt user when it can write the directory.
chmod 777 "$dir"
if ! (cd "$dir" && apt-get download "$2") >"$dir/apt.log" 2>&1; then
  cat "$dir/apt.log" >&2
  echo "cannot download $2 (run 'apt-get update' once, or give the benches a speech file)" >&2
  exit 1
fi
dpkg-deb -x "$dir"/"$2"_*.deb "$dir/pkg"
f="$(find "$dir/pkg" -name "$3" | head -1)"
[ -f "$f" ] || { echo "$3 not found in $2" >&2; exit 1; }
realpath "$f"
