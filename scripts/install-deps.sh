#!/usr/bin/env bash
# Installs what the build, the QEMU harness and the tests need on a fresh
# Debian 12 machine of this kind: Debian packages (only those missing) and a
# virtualenv with the project and its pinned Python dependencies.
# Idempotent and quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# QEMU 8.1 or newer: 7.2 (Debian 12's own) runs a guest's vCPUs in parallel threads
# with a race, fixed in 8.1 ("accel/tcg: Always lock pages before translation"), that
# can leave a stale int3 in the guest kernel's code after it patches a static key:
# "Oops: int3" panics under TCG, in boots and in the runtime tests. On Debian 12 it
# comes from bookworm-backports (10.0), where it also boots ~25% faster under TCG.
QEMU_DEBS=(qemu-system-x86 qemu-utils)
QEMU_MIN=1:8.1
qemu_ok() {
  local p v
  for p in "${QEMU_DEBS[@]}"; do
    v=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || return 1
    dpkg --compare-versions "$v" ge $QEMU_MIN || return 1
  done
}
BACKPORTS=$(. /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ] &&
            echo bookworm-backports || true)

DEBS=(
  # image build and QEMU harness (QEMU itself: QEMU_DEBS)
  ovmf zstd curl ca-certificates xz-utils
  # update tests: an independent GPT writer to check hostos.update.gpt against
  fdisk
  # runtime and its tests
  libsystemd-dev pkg-config libseccomp2 nftables iproute2 busybox-static uidmap util-linux
  # the runtime's one C extension (runtime/sys/_clone.c, built by pip)
  gcc libc6-dev python3-dev
  # peers: registry, crun/runc, podman, skopeo, dockerd, etcd
  docker-registry crun runc podman skopeo docker.io etcd-server etcd-client
)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
need_qemu=
qemu_ok || need_qemu=1
if [ ${#missing[@]} -gt 0 ] || [ -n "$need_qemu" ]; then
  echo ">> installing Debian packages: ${missing[*]} ${need_qemu:+${QEMU_DEBS[*]}}"
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
  if [ -n "$BACKPORTS" ]; then
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$BACKPORTS" > "/etc/apt/sources.list.d/berth-$BACKPORTS.sources"
  fi
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [ -n "$need_qemu" ]; then
    # Backports are pinned below the release: only what -t asks for comes from there
    # (QEMU, and what it needs at that version).
    apt-get install -y -qq --no-install-recommends ${BACKPORTS:+-t "$BACKPORTS"} \
      "${QEMU_DEBS[@]}" >/dev/null
    qemu_ok || { echo "install-deps: QEMU ${QEMU_MIN#1:} or newer is needed" >&2; exit 1; }
  fi
  if [ -n "$ours" ]; then rm -f $policy; trap - EXIT; fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo ">> creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.deps-stamp
# The C extension is built by the editable install: its source is in the stamp too.
want=$(cat pyproject.toml constraints.txt setup.py runtime/sys/_clone.c | sha256sum |
       cut -d' ' -f1)
if [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo ">> installing Python dependencies (pinned in constraints.txt)"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e '.[test]'
  echo "$want" > $stamp
fi
