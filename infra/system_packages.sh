#!/usr/bin/env bash
# System libraries the simulators need: MuJoCo renders the Fetch robot offscreen through EGL (MUJOCO_GL=egl).
# Installed only when missing, and only where apt-get exists and we are root (CI and fresh dev machines).
set -euo pipefail
need=()
for pkg in libegl1 libgl1 libgl1-mesa-dri; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
else
  echo "warning: missing system packages ${need[*]} (Fetch robot rendering); install them with apt-get" >&2
fi
