#!/usr/bin/env bash
# Builds a payload directory for tests/rdma/vm.sh: the test's own files
# (run.sh first of all), the ferry binary and any further test binaries, and
# the shared libraries they need that the VM's base image does not already
# hold (in lib/; run.sh sets LD_LIBRARY_PATH=/payload/lib). A BIN given as
# NAME=PATH is installed as /payload/NAME (e.g. QEMU 10.0's binary next to
# the base image's QEMU 7.2). vm.sh run adds tests/rdma/lib.sh.
#
#   tests/rdma/payload.sh FERRY_BIN TEST_DIR OUT_DIR [BIN|NAME=BIN...]
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: payload.sh FERRY_BIN TEST_DIR OUT_DIR [BIN...]" >&2; exit 2; }
ferry=$1 test_dir=$2 out=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${FERRY_RDMA_VM_CACHE:-/var/cache/ferry/rdma-vm}
[ -x "$ferry" ] || { echo "payload.sh: $ferry is not an executable" >&2; exit 1; }
[ -x "$test_dir/run.sh" ] || { echo "payload.sh: $test_dir/run.sh missing" >&2; exit 1; }
"$here/vm.sh" base
mkdir -p "$out/lib"
cp -a "$test_dir"/. "$out/"
install -m 0755 "$ferry" "$out/ferry"
bins=()
for arg in "$@"; do
  case "$arg" in
    *=*) name=${arg%%=*} bin=${arg#*=} ;;
    *) name=$(basename "$arg") bin=$arg ;;
  esac
  [ -x "$bin" ] || { echo "payload.sh: $bin is not an executable" >&2; exit 1; }
  install -m 0755 "$bin" "$out/$name"
  bins+=("$bin")
done
in_base=$(zcat "$CACHE/base.cpio.gz" | cpio -t --quiet 2>/dev/null | sed -n 's|^usr/lib/x86_64-linux-gnu/||p')
for bin in "$ferry" "${bins[@]}"; do
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    name=$(basename "$lib")
    grep -qxF "$name" <<<"$in_base" || cp -L "$lib" "$out/lib/"
  done
done
