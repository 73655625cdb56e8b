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
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian starts services on install; the tests start their own, by PID.
for svc in docker-registry etcd docker containerd; do
  if [ -x /etc/init.d/$svc ]; then /etc/init.d/$svc stop >/dev/null 2>&1 || true; fi
done

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
