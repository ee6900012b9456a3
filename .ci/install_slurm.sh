#!/usr/bin/env bash
# Install a single-node Slurm (Debian 12 packages) for the tests marked `slurm`.
# Installs only; the session fixture of tests/slurm (slurm_cluster.py) writes the configs and starts the
# daemons (munged, mariadbd, slurmdbd, slurmctld, slurmd) on loopback when the tests need them.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

# Slurm talks to this host by name on loopback: make the short host name resolve to 127.0.0.1.
host="$(hostname -s)"
if [ "$(getent ahostsv4 "$host" 2>/dev/null | awk 'NR==1{print $1}')" != "127.0.0.1" ]; then
  if [ -w /etc/hosts ]; then
    echo "127.0.0.1 $host" >> /etc/hosts
    echo "== slurm: added '127.0.0.1 $host' to /etc/hosts"
  else
    echo "install_slurm.sh: $host does not resolve to 127.0.0.1; add it to /etc/hosts (as root)" >&2
  fi
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "== slurm: packages already installed (slurm $(dpkg-query -W -f='${Version}' slurmctld))"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_slurm.sh: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# The packages' own service starts fail in containers without an init system; a policy-rc.d
# that refuses them keeps dpkg from failing. The fixture starts the daemons by hand instead.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" -eq 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

echo "== slurm: installing ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
echo "== slurm: installed slurm $(dpkg-query -W -f='${Version}' slurmctld)"
