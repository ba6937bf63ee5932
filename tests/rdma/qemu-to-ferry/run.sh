#!/bin/sh
# QEMU 7.2 -> ferry over rdma, inside the soft-RoCE VM: a 64 MiB -M none
# guest with random data loaded at two places (one 8 MiB run crossing chunk
# boundaries, one 12 KiB run), the rest zero, migrated to `ferry recv
# rdma:...` with dynamic registration and with rdma-pin-all; ferry's received
# memory is compared byte for byte with the source's (pmemsave).
export LD_LIBRARY_PATH=/payload/lib
pass=0; fail=0
ok() { echo "ferry-vm: ok $1"; pass=$((pass+1)); }
bad() { echo "ferry-vm: FAIL $1"; fail=$((fail+1)); }
hmp() { echo "$2" | socat - unix-connect:/tmp/$1.sock; }
size=67108864
dd if=/dev/urandom of=/tmp/pat1 bs=1048576 count=8 2>/dev/null
dd if=/dev/urandom of=/tmp/pat2 bs=4096 count=3 2>/dev/null
/payload/ferry --version 2>&1 | head -1

# run_case NAME PORT PIN_ALL(on|off)
run_case() {
  name=$1 port=$2 pin=$3
  rm -f /tmp/ready-$name
  /payload/ferry recv rdma:192.0.2.1:$port --qemu-compat none,version=7.2 -c verify=off \
    --memory-file /tmp/ferry-$name.mem --ready-file /tmp/ready-$name --timeout 120 \
    >/tmp/ferry-$name.log 2>&1 &
  fpid=$!
  i=0
  while [ ! -s /tmp/ready-$name ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
  qemu-system-x86_64 -M none -m 64M -nodefaults -display none -accel tcg \
    -device loader,file=/tmp/pat1,addr=0x1f0000 -device loader,file=/tmp/pat2,addr=0x2345000 \
    -monitor unix:/tmp/src-$name.sock,server=on,wait=off -S &
  qpid=$!
  i=0
  while [ ! -S /tmp/src-$name.sock ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
  sleep 1
  hmp src-$name "migrate_set_capability rdma-pin-all $pin" >/dev/null
  hmp src-$name "migrate -d rdma:192.0.2.1:$port"
  i=0; s=""
  while [ $i -lt 240 ]; do
    s=$(hmp src-$name 'info migrate' | grep -o 'Migration status: [a-z-]*')
    case "$s" in *completed*|*failed*|*cancelled*) break;; esac
    sleep 0.5; i=$((i+1))
  done
  echo "ferry-vm: $name: source $s"
  wait $fpid; frc=$?
  echo "ferry-vm: $name: ferry exit $frc"
  hmp src-$name "pmemsave 0 $size \"/tmp/src-$name.mem\"" >/dev/null
  sleep 1
  hmp src-$name quit >/dev/null; wait $qpid
  nonzero=$(tr -d '\000' < /tmp/src-$name.mem | wc -c)
  echo "ferry-vm: $name: source memory has $nonzero non-zero bytes"
  if [ "$frc" = 0 ] && [ "$nonzero" -gt 4000000 ] && cmp -n $size /tmp/src-$name.mem /tmp/ferry-$name.mem; then
    ok "qemu7.2-to-ferry-$name"
  else
    bad "qemu7.2-to-ferry-$name"
    sed 's/^/ferry-vm:   ferry: /' /tmp/ferry-$name.log
  fi
  rdma resource show 2>/dev/null | sed 's/^/ferry-vm:   /'
  rm -f /tmp/src-$name.mem /tmp/ferry-$name.mem
}

run_case dynamic 4445 off
run_case pinall 4446 on
echo "ferry-vm: $pass passed, $fail failed"
