#!/usr/bin/env bash
# Build ferry in Release and run the file benchmark; arguments go to perf/file_bench.py.
#   perf/run_file.sh                       # 4 GiB guest: ferry save/load mfd2,mfd4 + fio + QEMU 7.2 exec:cat
#                                          # + QEMU 10.0 exec:cat and file: mapped-ram (1 channel, multifd 2,
#                                          # multifd 2 + direct-io), each saved and loaded
#   perf/run_file.sh --size 1G --repeat 1
#   perf/run_file.sh --qemu10 /tmp/q10/root  # QEMU 10.0 unpacked there (default /var/cache/ferry/qemu-10.0/root
#                                          # if it exists; a QEMU that is missing is reported and skipped)
#   BUILD_DIR=build-rel perf/run_file.sh   # build directory (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" --target ferry
# A later --ferry in "$@" overrides this one.
exec python3 perf/file_bench.py --ferry "$BUILD_DIR/cli/ferry" "$@"
