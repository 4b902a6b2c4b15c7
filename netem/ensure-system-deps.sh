#!/usr/bin/env bash
# Installs the system tools netem needs when they are missing: iproute2 (ip, tc, ss) and procps
# (sysctl). Debian/Ubuntu (apt-get) only; run as root. Safe to run repeatedly: it installs
# nothing when the tools are there. netem also needs, from the kernel: network namespaces, veth,
# and /dev/net/tun (userspace emulator) or sch_netem (tc emulator).
set -euo pipefail
missing=()
for tool in ip tc ss; do
  command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$tool" >/dev/null 2>&1 \
    || missing+=(iproute2)
done
PATH="$PATH:/usr/sbin:/sbin" command -v sysctl >/dev/null 2>&1 || missing+=(procps)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if ! command -v apt-get >/dev/null 2>&1; then
  echo "netem: missing $pkgs and no apt-get here: install them with your package manager" >&2
  exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "netem: missing $pkgs: run this script as root (or: sudo apt-get install -y $pkgs)" >&2
  exit 1
fi
echo "netem: installing $pkgs" >&2
DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs
