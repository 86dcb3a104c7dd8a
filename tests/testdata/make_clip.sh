#!/usr/bin/env sh
# Regenerates clip_h264_aac.mp4, the RTSP interop fixture: 4 s of 320x240 H.264 at 25 fps with a
# keyframe every 25 frames and no B-frames (so RTP order is decode order), plus 16 kHz mono AAC.
# 100 video frames; tests/tests/rtsp_relay.rs relies on these numbers.
set -eu
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i testsrc=size=320x240:rate=25 \
  -f lavfi -i sine=frequency=440:sample_rate=16000 \
  -t 4 -c:v libx264 -preset veryfast -g 25 -keyint_min 25 -sc_threshold 0 -bf 0 -pix_fmt yuv420p \
  -c:a aac -b:a 32k -ac 1 -movflags +faststart \
  clip_h264_aac.mp4
