#!/bin/sh
# QEMU 10.0 and ferry over rdma, both directions, inside the soft-RoCE VM
# (the payload holds QEMU 10.0's binary as /payload/qemu10-system-x86_64;
# TCG is built into that build, and -M none needs no firmware):
#  - QEMU 10.0 -> ferry recv: a 64 MiB -M none guest with random data loaded
#    at two places (8 MiB crossing chunk boundaries, 12 KiB), the rest zero,
#    dynamic registration and rdma-pin-all; ferry's --memory-file compared
#    byte for byte with the source's pmemsave;
#  - ferry send -> QEMU 10.0 -incoming rdma:, dynamic and rdma-pin-all: a
#    64 MiB memory file (8 MiB + 12 KiB random) compared byte for byte with
#    the destination's pmemsave.
# After every case `rdma resource show` is back to its baseline.
export LD_LIBRARY_PATH=/payload/lib
. /payload/lib.sh
# Debian's QEMU 7.2 modules live in the default module directory; QEMU 10.0
# must not pick them up.
export QEMU_MODULE_DIR=/payload/no-modules
mkdir -p $QEMU_MODULE_DIR
Q10=/payload/qemu10-system-x86_64
size=67108864
echo "ferry-vm: $($Q10 --version | head -1)"
# The initramfs lives in RAM: what it leaves of the VM's -m 2048.
echo "ferry-vm: memory: $(grep -E 'MemTotal|MemAvailable' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
/payload/ferry --version 2>&1 | head -1
resources_baseline
dd if=/dev/urandom of=/tmp/pat1 bs=1048576 count=8 2>/dev/null
dd if=/dev/urandom of=/tmp/pat2 bs=4096 count=3 2>/dev/null
dd if=/dev/zero of=/tmp/src.mem bs=1048576 count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=1048576 seek=3 count=8 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=4096 seek=9000 count=3 conv=notrunc 2>/dev/null

# from_qemu NAME PORT PIN_ALL(on|off): QEMU 10.0 -> ferry recv
from_qemu() {
  name=$1 port=$2 pin=$3
  rm -f /tmp/ready-$name
  /payload/ferry recv rdma:192.0.2.1:$port --qemu-compat none,version=10.0 -c verify=off \
    --memory-file /tmp/ferry-$name.mem --ready-file /tmp/ready-$name --timeout 120 >/tmp/ferry-$name.log 2>&1 &
  fpid=$!
  wait_ready /tmp/ready-$name
  $Q10 -M none -m 64M -nodefaults -display none -accel tcg \
    -device loader,file=/tmp/pat1,addr=0x1f0000 -device loader,file=/tmp/pat2,addr=0x2345000 \
    -monitor unix:/tmp/src-$name.sock,server=on,wait=off -S &
  qpid=$!
  wait_socket /tmp/src-$name.sock
  hmp src-$name "migrate_set_capability rdma-pin-all $pin" >/dev/null
  hmp src-$name "migrate -d rdma:192.0.2.1:$port"
  i=0; s=""
  while [ $i -lt 240 ]; do
    s=$(hmp src-$name 'info migrate' | grep -o 'Migration status: *[a-z-]*')
    case "$s" in *completed*|*failed*|*cancelled*) break;; esac
    sleep 0.5; i=$((i+1))
  done
  echo "ferry-vm: $name: source QEMU 10.0 $s"
  wait $fpid; frc=$?
  echo "ferry-vm: $name: ferry recv exit $frc"
  hmp src-$name "pmemsave 0 $size \"/tmp/src-$name.mem\"" >/dev/null
  sleep 1
  hmp src-$name quit >/dev/null; wait $qpid
  nonzero=$(tr -d '\000' < /tmp/src-$name.mem | wc -c)
  echo "ferry-vm: $name: source memory has $nonzero non-zero bytes"
  sed 's/^/ferry-vm:   /' /tmp/ferry-$name.log
  if [ "$frc" = 0 ] && [ "$nonzero" -gt 4000000 ] && cmp -n $size /tmp/src-$name.mem /tmp/ferry-$name.mem; then
    ok "qemu10.0-to-ferry-$name"
  else
    bad "qemu10.0-to-ferry-$name"
  fi
  resources_released "qemu10.0-to-ferry-$name"
  rm -f /tmp/src-$name.mem /tmp/ferry-$name.mem
}

# to_qemu NAME PORT PIN_ALL(on|off): ferry send -> QEMU 10.0
to_qemu() {
  name=$1 port=$2 pin=$3
  $Q10 -M none -m 64M -nodefaults -display none -accel tcg -incoming rdma:192.0.2.1:$port \
    -monitor unix:/tmp/dst-$name.sock,server=on,wait=off &
  qpid=$!
  wait_socket /tmp/dst-$name.sock
  /payload/ferry send rdma:192.0.2.1:$port --memory-file /tmp/src.mem --qemu-compat none,version=10.0 \
    -c rdma-pin-all=$pin --dirty-tracker all-once --connect-timeout 30 >/tmp/send-$name.log 2>&1
  frc=$?
  echo "ferry-vm: $name: ferry send exit $frc"
  sed 's/^/ferry-vm:   /' /tmp/send-$name.log
  i=0; st=""
  while [ $i -lt 60 ]; do
    st=$(hmp dst-$name 'info status' | grep -o 'VM status: [a-z-]*')
    case "$st" in *running*|*paused*) break;; esac
    sleep 0.5; i=$((i+1))
  done
  echo "ferry-vm: $name: destination QEMU 10.0: $st"
  hmp dst-$name "pmemsave 0 $size \"/tmp/dst-$name.mem\"" >/dev/null
  sleep 1
  hmp dst-$name quit >/dev/null; wait $qpid
  if [ "$frc" = 0 ] && cmp /tmp/src.mem /tmp/dst-$name.mem; then ok "ferry-to-qemu10.0-$name"; else bad "ferry-to-qemu10.0-$name"; fi
  rm -f /tmp/dst-$name.mem
  resources_released "ferry-to-qemu10.0-$name"
}

from_qemu dynamic 4460 off
from_qemu pinall 4461 on
to_qemu dynamic 4462 off
to_qemu pinall 4463 on
summary
