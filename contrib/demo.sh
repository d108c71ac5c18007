#!/usr/bin/env bash
# The dsafs demo (make demo): a 2-member shadow set with ext4 on it, a member removed and
# returned with a full copy, and the members verified identical. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
DEMO=$(mktemp -d /tmp/dsafs-demo.XXXXXX)
MNT="$DEMO/mnt"; DATA="$DEMO/data"; export DSAFS_SOCKET="$DEMO/dsafs.sock"
SERVE_PID=""; LOOP=""
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
cleanup() {
    set +e
    mountpoint -q "$DATA" && umount "$DATA"
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then
        kill -TERM "$SERVE_PID"; wait "$SERVE_PID"
    fi
    grep -q " $MNT " /proc/mounts && fusermount3 -uz "$MNT"
    rm -rf "$DEMO"
}
trap cleanup EXIT
PATH="$BIN:$PATH"

step "Create a shadow set DSA1: two member images, 512 MiB each (no daemon needed)"
run dsafs init DSA1 --label DEMO --size 512M "$DEMO/a.img" "$DEMO/b.img"

step "Start the daemon: one FUSE mount for every virtual unit"
mkdir -p "$MNT" "$DATA"
dsafs serve "$MNT" --socket "$DSAFS_SOCKET" --log-level WARNING 2>"$DEMO/serve.log" &
SERVE_PID=$!
for _ in $(seq 100); do [ -S "$DSAFS_SOCKET" ] && break; sleep 0.05; done
echo "dsafs serve $MNT (pid $SERVE_PID), control socket $DSAFS_SOCKET"

step "Assemble DSA1 and put ext4 on it through a loop device"
run dsafs mount DSA1 "$DEMO/a.img" "$DEMO/b.img"
LOOP=$(losetup --find --show --direct-io=on "$MNT/DSA1")
echo "loop device $LOOP (direct I/O: $(cat /sys/block/${LOOP#/dev/}/loop/dio))"
run mkfs.ext4 -q "$LOOP"
run mount "$LOOP" "$DATA"
for i in 1 2 3; do head -c 8M /dev/urandom > "$DATA/file$i"; done
sync
(cd "$DATA" && sha256sum file* > "$DEMO/sums")
run ls -l "$DATA"
run dsafs show DSA1

step "Split off b.img (a crash-consistent image of the volume) and keep writing"
run dsafs dismount DSA1 --member b.img
for i in 4 5; do head -c 8M /dev/urandom > "$DATA/file$i"; done
sync
(cd "$DATA" && sha256sum file* > "$DEMO/sums")

step "Return b.img: it is a copy target; the full copy compares first and writes what changed"
run dsafs mount DSA1 --add "$DEMO/b.img" --wait
run dsafs show DSA1

step "Verify: the members hold identical data, and every file is intact"
run dsafs verify DSA1
(cd "$DATA" && sha256sum -c --quiet "$DEMO/sums") && echo "all $(wc -l < "$DEMO/sums") files intact"

step "Tear down: unmount ext4, detach the loop, dissolve DSA1 cleanly, stop the daemon"
run umount "$DATA"; losetup -d "$LOOP"; LOOP=""
run dsafs dismount DSA1
kill -TERM "$SERVE_PID"; wait "$SERVE_PID"; echo "daemon exited with status $?"; SERVE_PID=""
echo; echo "Demo complete."
