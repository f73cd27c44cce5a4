#!/usr/bin/env bash
# Renders natter.svg into the PNG sizes desktops look for (hicolor theme) and the window icon.
# Needs rsvg-convert (Debian: librsvg2-bin). The PNGs are committed; run this after editing the SVG.
set -euo pipefail
cd "$(dirname "$0")"
for size in 16 24 32 48 64 128 256 512; do
  rsvg-convert -w "$size" -h "$size" natter.svg -o "natter-$size.png"
done
