#!/usr/bin/env bash
# CTest entry for the soft-RoCE VM tests (labels rdma, integration):
#
#   tests/rdma/ctest.sh smoke                         # tests/rdma/smoke as it is
#   tests/rdma/ctest.sh ferry FERRY_BIN TEST_DIR [BIN|NAME=BIN...]  # TEST_DIR + ferry + BINs (payload.sh)
#
# A missing prerequisite fails the test; with FERRY_ALLOW_SKIP=1 it is a
# skip (exit 77, the tests' SKIP_RETURN_CODE).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${FERRY_RDMA_VM_CACHE:-/var/cache/ferry/rdma-vm}
missing=()
for tool in "${FERRY_RDMA_VM_QEMU:-qemu-system-x86_64}" cpio socat gzip timeout ldd; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -e /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so ] || missing+=("QEMU's TCG module (qemu-system-x86)")
if ! { [ -s "$CACHE/base.cpio.gz" ] && [ -s "$CACHE/vmlinuz" ]; }; then
  command -v apt-get >/dev/null && command -v dpkg >/dev/null || missing+=("apt-get/dpkg (to build $CACHE)")
  [ -w "$(dirname "$CACHE")" ] || [ -w "$CACHE" ] || missing+=("a writable $CACHE")
fi
# Further binaries of the payload (e.g. QEMU 10.0 as NAME=PATH; bash .ci/deps unpacks it).
if [ "${1:-}" = ferry ]; then
  for arg in "${@:4}"; do
    [ -x "${arg#*=}" ] || missing+=("${arg#*=}")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "rdma VM test: missing prerequisites: ${missing[*]} (bash .ci/deps installs them)"
  [ "${FERRY_ALLOW_SKIP:-0}" = 1 ] && { echo "skipped (FERRY_ALLOW_SKIP=1)"; exit 77; }
  exit 1
fi
timeout=${FERRY_RDMA_VM_TIMEOUT:-600}
case "${1:-}" in
  smoke) exec "$here/vm.sh" run "$here/smoke" "$timeout" ;;
  ferry)
    [ $# -ge 3 ] || { echo "usage: ctest.sh ferry FERRY_BIN TEST_DIR [BIN...]" >&2; exit 2; }
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$here/payload.sh" "$2" "$3" "$work/payload" "${@:4}"
    "$here/vm.sh" run "$work/payload" "$timeout" ;;
  *) echo "usage: ctest.sh smoke | ferry FERRY_BIN TEST_DIR [BIN...]" >&2; exit 2 ;;
esac
