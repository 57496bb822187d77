#!/usr/bin/env bash
# System packages, installed only when missing, and only where apt-get exists and we are root (CI and fresh
# dev machines):
#   * libegl1 libgl1 libgl1-mesa-dri: MuJoCo renders the Fetch robot offscreen through EGL (MUJOCO_GL=egl);
#   * chromium chromium-driver: the browser test of v2w-play (tests/play/) drives the system Chromium
#     through Selenium; a test library's own browser download is not available offline.
set -euo pipefail
need=()
for pkg in libegl1 libgl1 libgl1-mesa-dri chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "warning: missing system packages ${need[*]} (Fetch robot rendering, the v2w-play browser test);" \
    "install them with apt-get" >&2
fi
