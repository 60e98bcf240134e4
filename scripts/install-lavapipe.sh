#!/usr/bin/env bash
# Installs a Vulkan driver that needs no GPU (Mesa's lavapipe, Debian's mesa-vulkan-drivers, with
# the loader libvulkan1), so `cargo test --workspace --features wgpu` can run burn's wgpu backend
# on the CPU. Does nothing when a Vulkan driver is already installed. Needs apt (root or sudo).
set -euo pipefail
if { compgen -G '/usr/share/vulkan/icd.d/*.json' || compgen -G '/etc/vulkan/icd.d/*.json'; } >/dev/null \
  && ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
echo "installed Mesa's Vulkan drivers (lavapipe) for the wgpu tests"
