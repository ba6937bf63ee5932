#!/bin/sh
# ferry as the RDMA source, inside the soft-RoCE VM:
#  - ferry -> QEMU 7.2 -M none -incoming rdma:..., dynamic and rdma-pin-all: a
#    64 MiB memory file (8 MiB + 12 KiB random, the rest zero) compared byte
#    for byte with QEMU's pmemsave;
#  - ferry -> ferry, dynamic: the same file, received with --memory-file and
#    verified (ferry's digest section) and compared with cmp;
#  - ferry -> ferry, pin-all, live: a 128 MiB synthetic guest dirtying pages
#    while it migrates, verified by digest.
# After every case `rdma resource show` is back to its baseline.
export LD_LIBRARY_PATH=/payload/lib
. /payload/lib.sh
size=67108864
resources_baseline
dd if=/dev/zero of=/tmp/src.mem bs=1048576 count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=1048576 seek=3 count=8 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=4096 seek=9000 count=3 conv=notrunc 2>/dev/null

# to_qemu NAME PORT PIN_ALL(on|off)
to_qemu() {
  name=$1 port=$2 pin=$3
  qemu-system-x86_64 -M none -m 64M -nodefaults -display none -accel tcg -incoming rdma:192.0.2.1:$port \
    -monitor unix:/tmp/dst-$name.sock,server=on,wait=off &
  qpid=$!
  wait_socket /tmp/dst-$name.sock
  /payload/ferry send rdma:192.0.2.1:$port --memory-file /tmp/src.mem --qemu-compat none,version=7.2 \
    -c rdma-pin-all=$pin --dirty-tracker all-once --connect-timeout 30 >/tmp/ferry-$name.log 2>&1
  frc=$?
  echo "ferry-vm: $name: ferry send exit $frc"
  sed 's/^/ferry-vm:   /' /tmp/ferry-$name.log
  i=0; st=""
  while [ $i -lt 60 ]; do
    st=$(hmp dst-$name 'info status' | grep -o 'VM status: [a-z-]*')
    case "$st" in *running*|*paused*) break;; esac
    sleep 0.5; i=$((i+1))
  done
  echo "ferry-vm: $name: destination QEMU: $st"
  hmp dst-$name "pmemsave 0 $size \"/tmp/dst-$name.mem\"" >/dev/null
  sleep 1
  hmp dst-$name quit >/dev/null; wait $qpid
  if [ "$frc" = 0 ] && cmp /tmp/src.mem /tmp/dst-$name.mem; then ok "ferry-to-qemu7.2-$name"; else bad "ferry-to-qemu7.2-$name"; fi
  rm -f /tmp/dst-$name.mem
  resources_released "$name"
}


to_qemu dynamic 4450 off
to_qemu pinall 4451 on

ferry_pair file 4452 "" --memory-file /tmp/src.mem --dirty-tracker all-once
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-file.log && cmp /tmp/src.mem /tmp/recv-file.mem; then
  ok ferry-to-ferry-dynamic; else bad ferry-to-ferry-dynamic; fi
rm -f /tmp/recv-file.mem
resources_released ferry-file

ferry_pair live 4453 "" --ram 128M --dirty-rate 2M --hot-set 16M -c rdma-pin-all=on
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-live.log; then
  ok ferry-to-ferry-pinall-live; else bad ferry-to-ferry-pinall-live; fi
rm -f /tmp/recv-live.mem
resources_released ferry-live
# Nobody listening: ferry send retries until --connect-timeout, then one line.
/payload/ferry send rdma:192.0.2.1:4499 --ram 4M --connect-timeout 2 >/tmp/refused.log 2>&1
frc=$?
sed 's/^/ferry-vm:   /' /tmp/refused.log
if [ "$frc" = 1 ] && [ "$(grep -c '^ferry: error:' /tmp/refused.log)" = 1 ] && grep -q 'REJECTED' /tmp/refused.log; then
  ok connection-refused; else bad connection-refused; fi
resources_released refused

# The destination QEMU is killed mid-migration: ferry send fails with one
# error line (not a hang) and releases its verbs objects.
qemu-system-x86_64 -M none -m 512M -nodefaults -display none -accel tcg -incoming rdma:192.0.2.1:4454 \
  -monitor unix:/tmp/dst-killed.sock,server=on,wait=off &
qpid=$!
wait_socket /tmp/dst-killed.sock
/payload/ferry send rdma:192.0.2.1:4454 --ram 512M --fill random=100 --qemu-compat none,version=7.2 \
  --dirty-tracker all-once --connect-timeout 30 >/tmp/killed.log 2>&1 &
spid=$!
sleep 4
kill -9 $qpid; wait $qpid 2>/dev/null
wait_exit $spid 120; frc=$rc
echo "ferry-vm: killed destination: ferry send exit $frc about $((t/2)) s after the kill"
sed 's/^/ferry-vm:   /' /tmp/killed.log
if [ "$frc" = 1 ] && [ "$(grep -c '^ferry: error:' /tmp/killed.log)" = 1 ] && [ $t -lt 120 ]; then
  ok killed-destination; else bad killed-destination; fi
resources_released killed-destination
summary
