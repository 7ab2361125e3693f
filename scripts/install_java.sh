#!/usr/bin/env bash
# Install the Java runtime that engine="spark" (pyspark, the 'spark' extra) and the native
# cluster's Spark master and worker (scripts/cluster/spark.sh) run on: Debian's
# openjdk-17-jre-headless, as scripts/cluster/cluster.sh installs postgresql and redis.
# Usage: scripts/install_java.sh        (needs root or passwordless sudo; idempotent)
set -euo pipefail

if command -v java >/dev/null 2>&1; then
  exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "[install_java] java is missing and installing it needs root (or passwordless sudo):" \
      "sudo apt-get install -y openjdk-17-jre-headless" >&2
    exit 1
  fi
fi
command -v apt-get >/dev/null 2>&1 || { echo "[install_java] apt-get not found: install a Java 17 runtime" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
timeout 900 "${SUDO[@]}" apt-get update -qq
timeout 900 "${SUDO[@]}" apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless >/dev/null
echo "[install_java] installed: $(java -version 2>&1 | head -n 1)"
