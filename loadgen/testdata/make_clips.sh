#!/bin/sh
# Regenerates the simulated device's clips: 3 s of 320x240 test pattern at 25 fps with a keyframe
# every second (SPS/PPS/VPS repeated before each IDR, no AUD, no SEI, one slice per frame: what
# ROP cameras send), and 3 s of 16 kHz mono AAC-LC in ADTS. Needs ffmpeg with libx264/libx265.
set -e
cd "$(dirname "$0")"
ffmpeg -v error -y -f lavfi -i testsrc=size=320x240:rate=25 -t 3 -pix_fmt yuv420p -c:v libx264 \
  -profile:v main -bf 0 -g 25 -crf 30 \
  -x264-params repeat-headers=1:slices=1:aud=0 -bsf:v filter_units=remove_types=6 \
  -f h264 ropdev_h264_3s.264
ffmpeg -v error -y -f lavfi -i testsrc=size=320x240:rate=25 -t 3 -pix_fmt yuv420p -c:v libx265 \
  -bf 0 -g 25 -crf 32 -x265-params log-level=error:repeat-headers=1:keyint=25:min-keyint=25:bframes=0:info=0 \
  -bsf:v filter_units='remove_types=35|39|40' -f hevc ropdev_h265_3s.265
ffmpeg -v error -y -f lavfi -i sine=frequency=440:sample_rate=16000 -t 3 -ac 1 -c:a aac -b:a 32k \
  -f adts ropdev_aac_16k_3s.aac
