#!/usr/bin/env bash
# Installs what the build, the QEMU harness and the tests need on a fresh
# Debian 12 machine of this kind: Debian packages (only those missing) and a
# virtualenv with the project and its pinned Python dependencies.
# Idempotent and quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(
  # image build and QEMU harness
  qemu-system-x86 qemu-utils ovmf zstd curl ca-certificates xz-utils
  # update tests: an independent GPT writer to check hostos.update.gpt against
  fdisk
  # runtime and its tests
  libsystemd-dev pkg-config libseccomp2 nftables iproute2 busybox-static uidmap util-linux
  # peers: registry, crun/runc, podman, skopeo, dockerd, etcd
  docker-registry crun runc podman skopeo docker.io etcd-server etcd-client
)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo ">> installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Debian starts a package's service on install (etcd, docker-registry,
  # dockerd...). The tests start their own, by PID; a policy-rc.d that denies
  # every start keeps the installed ones from running at all, so nothing ever
  # has to be stopped by name (which would also kill the tests' own daemons).
  policy=/usr/sbin/policy-rc.d
  ours=
  if [ ! -e $policy ]; then
    printf '#!/bin/sh\nexit 101\n' > $policy
    chmod 755 $policy
    ours=1
    trap 'rm -f $policy' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$ours" ]; then rm -f $policy; trap - EXIT; fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.deps-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo ">> installing Python dependencies (pinned in constraints.txt)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  echo "$want" > $stamp
fi
