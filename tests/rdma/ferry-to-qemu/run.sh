#!/bin/sh
# ferry -> QEMU 7.2 over rdma, inside the soft-RoCE VM: ferry sends a 64 MiB
# memory file (8 MiB + 12 KiB of random data, the rest zero) with dynamic
# registration to a QEMU 7.2 -M none -incoming rdma:...; QEMU's memory
# (pmemsave) is compared byte for byte with the file.
export LD_LIBRARY_PATH=/payload/lib
pass=0; fail=0
ok() { echo "ferry-vm: ok $1"; pass=$((pass+1)); }
bad() { echo "ferry-vm: FAIL $1"; fail=$((fail+1)); }
hmp() { echo "$2" | socat - unix-connect:/tmp/$1.sock; }
size=67108864
baseline=$(rdma resource show 2>/dev/null)
dd if=/dev/zero of=/tmp/src.mem bs=1048576 count=64 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=1048576 seek=3 count=8 conv=notrunc 2>/dev/null
dd if=/dev/urandom of=/tmp/src.mem bs=4096 seek=9000 count=3 conv=notrunc 2>/dev/null

port=4450
qemu-system-x86_64 -M none -m 64M -nodefaults -display none -accel tcg -incoming rdma:192.0.2.1:$port \
  -monitor unix:/tmp/dst.sock,server=on,wait=off &
qpid=$!
i=0
while [ ! -S /tmp/dst.sock ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
sleep 1
/payload/ferry send rdma:192.0.2.1:$port --memory-file /tmp/src.mem --qemu-compat none,version=7.2 \
  --dirty-tracker all-once --connect-timeout 30 >/tmp/ferry.log 2>&1
frc=$?
echo "ferry-vm: ferry send exit $frc"
sed 's/^/ferry-vm:   /' /tmp/ferry.log
i=0; st=""
while [ $i -lt 60 ]; do
  st=$(hmp dst 'info status' | grep -o 'VM status: [a-z-]*')
  case "$st" in *running*|*paused*) break;; esac
  sleep 0.5; i=$((i+1))
done
echo "ferry-vm: destination QEMU: $st"
hmp dst "pmemsave 0 $size \"/tmp/dst.mem\"" >/dev/null
sleep 1
hmp dst quit >/dev/null; wait $qpid
if [ "$frc" = 0 ] && cmp /tmp/src.mem /tmp/dst.mem; then ok ferry-to-qemu7.2-dynamic; else bad ferry-to-qemu7.2-dynamic; fi
now=$(rdma resource show 2>/dev/null)
if [ "$now" = "$baseline" ]; then ok resources-released; else bad resources-released; echo "ferry-vm:   $now"; fi
echo "ferry-vm: $pass passed, $fail failed"
