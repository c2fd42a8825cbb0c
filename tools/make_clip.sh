#!/usr/bin/env bash
# Build modules/assets/vtest.mp4 from OpenCV's sample clip vtest.avi.
#
# Source : Debian package opencv-doc (bookworm: 4.6.0+dfsg-12),
#          /usr/share/doc/opencv-doc/examples/data/vtest.avi
#          (768x576, 10 fps, 795 frames, MS-MPEG4v3). Licence: see the package's
#          copyright file (copied to modules/assets/LICENSES/opencv-doc.copyright).
# Output : H.264 (libx264) yuv420p mp4, all 795 frames, 10 fps, 768x576, CRF 30,
#          faststart, no audio, metadata stripped.
#
# Needs root (apt-get). Works in /tmp only; writes nothing in the repo but the mp4.
# Usage:  bash tools/make_clip.sh [output.mp4]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO/modules/assets/vtest.mp4}"
WORK="${EDGEVA_CLIP_WORK:-/tmp/edgeva_make_clip}"
CRF="${CRF:-30}"

mkdir -p "$WORK"
cd "$WORK"

need_update=0
command -v ffmpeg >/dev/null || need_update=1
ls opencv-doc_*.deb >/dev/null 2>&1 || need_update=1
if [ "$need_update" = 1 ]; then
    apt-get update -qq
fi
if ! command -v ffmpeg >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg
fi

# 1. fetch the .deb without installing it (apt-get download works as root in a
#    folder _apt cannot read; its warning about that is harmless).
if ! ls opencv-doc_*.deb >/dev/null 2>&1; then
    chmod 0777 "$WORK" || true
    apt-get download opencv-doc
fi
DEB="$(ls opencv-doc_*.deb | head -n1)"
echo "source package: $DEB"
echo "  sha256: $(sha256sum "$DEB" | cut -d' ' -f1)"

# 2. unpack into /tmp
rm -rf "$WORK/x"
dpkg -x "$DEB" "$WORK/x"
SRC="$WORK/x/usr/share/doc/opencv-doc/examples/data/vtest.avi"
test -f "$SRC"
echo "vtest.avi sha256: $(sha256sum "$SRC" | cut -d' ' -f1)"

# 3. re-encode
mkdir -p "$(dirname "$OUT")"
ffmpeg -hide_banner -loglevel error -y -i "$SRC" \
    -map 0:v:0 -an -sn -dn -map_metadata -1 -fflags +bitexact \
    -c:v libx264 -preset slow -crf "$CRF" -pix_fmt yuv420p \
    -r 10 -g 50 -threads 2 \
    -movflags +faststart \
    "$OUT"

# 4. report
ffprobe -v error -count_frames -select_streams v:0 \
    -show_entries stream=codec_name,width,height,pix_fmt,r_frame_rate,nb_read_frames \
    -of default=nw=1 "$OUT"
echo "size: $(stat -c %s "$OUT") bytes"
echo "sha256: $(sha256sum "$OUT" | cut -d' ' -f1)"
