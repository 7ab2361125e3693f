#!/usr/bin/env bash
# Install the headless browser used by the dashboard's browser test (tests/plugins).
# Debian's chromium package, never a browser build downloaded by Playwright.
# Usage: scripts/install_chromium.sh        (needs root or passwordless sudo; idempotent)
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then
  echo "[install_chromium] already installed: $(chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "[install_chromium] need root (or passwordless sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[install_chromium] apt-get not found: install Chromium with your system's package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "[install_chromium] installed: $(chromium --version)"
