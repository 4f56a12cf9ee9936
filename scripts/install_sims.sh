#!/usr/bin/env bash
# Installs what the LIBERO and ManiSkill adapters need, next to MetaWorld, for CI. Idempotent.
#   system: Mesa >= 25 Vulkan (lavapipe) + EGL from Debian bookworm-backports. SAPIEN rejects
#           Debian 12's Mesa 22 ("failed to find a rendering device", even with rendering off);
#           MuJoCo (LIBERO, MetaWorld) renders headless through the same Mesa's EGL.
#   python: .venv with every extra (scripts/setup.sh: metaworld + hf-libero + mani-skill, numpy<2, pi0, ray), CPU torch first.
# Skip the system part with PIRL_SKIP_APT=1 (e.g. without root, or with a GPU driver's Vulkan).
set -euo pipefail
cd "$(dirname "$0")/.."

have_mesa25() {
  local v
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true)
  [ -n "$v" ] && dpkg --compare-versions "$v" ge 25
}

if [ "${PIRL_SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null && ! have_mesa25; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  . /etc/os-release
  if [ "${VERSION_CODENAME:-}" = bookworm ]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -t bookworm-backports \
      mesa-vulkan-drivers libegl-mesa0 libgl1-mesa-dri libglx-mesa0 libgbm1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libvulkan1 libegl1 libgl1 ffmpeg
  else  # newer distributions ship Mesa >= 25 in their main archive
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q mesa-vulkan-drivers libvulkan1 libegl1 libgl1 libegl-mesa0 ffmpeg
  fi
fi

bash scripts/setup.sh

# Fail here, with the reason, rather than in the first test: SAPIEN needs a Vulkan device.
.venv/bin/python - <<'EOF'
import sapien
try:
    sapien.render.RenderSystem()
except Exception as e:
    raise SystemExit(f"SAPIEN found no Vulkan device ({e}); install Mesa >= 25 (mesa-vulkan-drivers) or a GPU driver")
print("sims ready: sapien", sapien.__version__)
EOF
