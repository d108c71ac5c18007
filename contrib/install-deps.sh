#!/usr/bin/env bash
# Install the Debian packages dsafs needs to build and test, only those that are missing.
# Safe to run with no standard input (CI); runs apt-get only when something is missing.
set -euo pipefail

PACKAGES=(
    fuse3           # fusermount3, /etc/fuse.conf
    libfuse3-dev    # headers + fuse3.pc: pyfuse3 builds from source against them
    pkg-config      # pyfuse3's setup.py finds libfuse3 through it
    build-essential # gcc for pyfuse3's C extension
    python3-dev     # Python.h for /usr/bin/python3, which creates .venv
    python3-venv    # ensurepip for /usr/bin/python3
    fio             # mount tests and bench
    e2fsprogs       # mkfs.ext4 for the ext4-on-dsafs mount tests
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    [[ $status == ii* ]] || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
    echo "install-deps: all Debian packages present"
    exit 0
fi

echo "install-deps: installing missing Debian packages: ${missing[*]}"
sudo=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { echo "install-deps: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2; exit 1; }
    sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q </dev/null
"${sudo[@]}" apt-get install -y -q --no-install-recommends -o Dpkg::Use-Pty=0 "${missing[@]}" </dev/null
