#!/usr/bin/env bash
# Build ferry in Release and run the end-to-end benchmark; arguments go to perf/e2e.py.
#   perf/run.sh                          # 4 GiB guest: ferry + QEMU 7.2 + QEMU 10.0 + iperf3
#   perf/run.sh --size 1G --repeat 3
#   perf/run.sh --preset issue3          # multifd: ferry tcp1,mfd2,mfd4,mfd2-zstd; QEMU single,mfd2; iperf3 -P 1,2
#   perf/run.sh --qemu10 /tmp/q10/root   # QEMU 10.0 unpacked there (default /var/cache/ferry/qemu-10.0/root
#                                        # if it exists; a QEMU that is missing is reported and skipped)
#   BUILD_DIR=build-rel perf/run.sh      # build directory (default: build)
# ferry always migrates to ferry here, so no --qemu-compat is passed (it only describes a QEMU peer).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" --target ferry
# A later --ferry in "$@" overrides this one.
exec python3 perf/e2e.py --ferry "$BUILD_DIR/cli/ferry" "$@"
