#!/usr/bin/env bash
# Installs the Debian packages vnix and its tests need, only those missing. Idempotent.
set -euo pipefail
pkgs=(qemu-system-x86 qemu-system-arm qemu-utils busybox-static e2fsprogs cpio gcc libc6-dev make
      iproute2 dnsmasq-base python3-venv acpica-tools postgresql chromium)
# npm installs the dashboard's front-end libraries (make web); Debian's if none is there yet
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
