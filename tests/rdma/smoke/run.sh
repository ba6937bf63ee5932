#!/bin/sh
# Soft-RoCE smoke test: the device is there, verbs work (rping), and QEMU 7.2
# migrates a 64 MiB guest to itself over rdma with identical memory.
. /payload/lib.sh
ibv_devices | grep -q rxe0 && ok devices || bad devices
rping -s -a 192.0.2.1 -C 3 >/tmp/rping-s.log 2>&1 &
sleep 1
rping -c -a 192.0.2.1 -C 3 -v >/tmp/rping-c.log 2>&1 && ok rping || { bad rping; cat /tmp/rping-c.log; }
wait
m="-M none -m 64M -nodefaults -display none -accel tcg"
qemu-system-x86_64 $m -monitor unix:/tmp/dst.sock,server=on,wait=off -incoming rdma:192.0.2.1:4444 &
qemu-system-x86_64 $m -monitor unix:/tmp/src.sock,server=on,wait=off -S &
sleep 3
hmp src "memsave 0 4096 \"/tmp/x\"" >/dev/null
hmp src 'migrate -d rdma:192.0.2.1:4444'
i=0
while [ $i -lt 120 ]; do
  s=$(hmp src 'info migrate' | grep -o 'Migration status: [a-z-]*')
  case "$s" in *completed*|*failed*|*cancelled*) break;; esac
  sleep 1; i=$((i+1))
done
echo "ferry-vm: source $s"
hmp src 'pmemsave 0 67108864 "/tmp/src.mem"' >/dev/null
hmp dst 'pmemsave 0 67108864 "/tmp/dst.mem"' >/dev/null
sleep 1
case "$s" in *completed*) cmp /tmp/src.mem /tmp/dst.mem && ok qemu-rdma || bad qemu-rdma-memory;; *) bad qemu-rdma;; esac
hmp src quit >/dev/null; hmp dst quit >/dev/null
summary
