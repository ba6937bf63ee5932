#!/bin/sh
# QEMU 7.2 -> ferry over rdma, inside the soft-RoCE VM: a 64 MiB -M none
# guest with random data loaded at two places (one 8 MiB run crossing chunk
# boundaries, one 12 KiB run), the rest zero, migrated to `ferry recv
# rdma:...` with dynamic registration and with rdma-pin-all; ferry's received
# memory is compared byte for byte with the source's (pmemsave).
export LD_LIBRARY_PATH=/payload/lib
. /payload/lib.sh
size=67108864
dd if=/dev/urandom of=/tmp/pat1 bs=1048576 count=8 2>/dev/null
dd if=/dev/urandom of=/tmp/pat2 bs=4096 count=3 2>/dev/null
/payload/ferry --version 2>&1 | head -1
resources_baseline

# run_case NAME PORT PIN_ALL(on|off)
run_case() {
  name=$1 port=$2 pin=$3
  rm -f /tmp/ready-$name
  /payload/ferry recv rdma:192.0.2.1:$port --qemu-compat none,version=7.2 -c verify=off \
    --memory-file /tmp/ferry-$name.mem --ready-file /tmp/ready-$name --timeout 120 \
    >/tmp/ferry-$name.log 2>&1 &
  fpid=$!
  wait_ready /tmp/ready-$name
  qemu-system-x86_64 -M none -m 64M -nodefaults -display none -accel tcg \
    -device loader,file=/tmp/pat1,addr=0x1f0000 -device loader,file=/tmp/pat2,addr=0x2345000 \
    -monitor unix:/tmp/src-$name.sock,server=on,wait=off -S &
  qpid=$!
  wait_socket /tmp/src-$name.sock
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
  sed 's/^/ferry-vm:   /' /tmp/ferry-$name.log
  if [ "$frc" = 0 ] && [ "$nonzero" -gt 4000000 ] && cmp -n $size /tmp/src-$name.mem /tmp/ferry-$name.mem; then
    ok "qemu7.2-to-ferry-$name"
  else
    bad "qemu7.2-to-ferry-$name"
  fi
  resources_released "$name"
  rm -f /tmp/src-$name.mem /tmp/ferry-$name.mem
}

# The source QEMU is killed mid-migration: ferry must fail with one error
# line (not hang, not crash) and release its verbs objects.
run_killed() {
  port=4447
  rm -f /tmp/ready-killed
  /payload/ferry recv rdma:192.0.2.1:$port --qemu-compat none,version=7.2 -c verify=off \
    --ready-file /tmp/ready-killed --timeout 120 >/tmp/ferry-killed.log 2>&1 &
  fpid=$!
  wait_ready /tmp/ready-killed
  qemu-system-x86_64 -M none -m 512M -nodefaults -display none -accel tcg \
    -device loader,file=/tmp/pat1,addr=0x1f0000 -monitor unix:/tmp/src-killed.sock,server=on,wait=off -S &
  qpid=$!
  wait_socket /tmp/src-killed.sock
  hmp src-killed "migrate -d rdma:192.0.2.1:$port" >/dev/null
  i=0; s=""
  while [ $i -lt 100 ]; do
    s=$(hmp src-killed 'info migrate' | grep -o 'Migration status: [a-z-]*')
    case "$s" in *active*|*completed*|*failed*) break;; esac
    sleep 0.1; i=$((i+1))
  done
  sleep 0.5
  s=$(hmp src-killed 'info migrate' | grep -o 'Migration status: [a-z-]*')
  kill -9 $qpid; wait $qpid 2>/dev/null
  echo "ferry-vm: killed: source was '$s' when killed"
  # A hang detector, not a speed check: ferry gets 60 s to notice.
  wait_exit $fpid 120; frc=$rc
  echo "ferry-vm: killed: ferry exit $frc about $((t/2)) s after the kill"
  sed 's/^/ferry-vm:   /' /tmp/ferry-killed.log
  errors=$(grep -c '^ferry: error:' /tmp/ferry-killed.log)
  case "$s" in *active*) ;; *) echo "ferry-vm: killed: the source was not mid-migration";; esac
  if [ "$frc" != 0 ] && [ "$frc" -lt 128 ] && [ "$errors" = 1 ] && [ $t -lt 120 ]; then ok "killed-source"; else bad "killed-source"; fi
  resources_released killed
}

run_case dynamic 4445 off
run_case pinall 4446 on
run_killed

# A source announcing RDMA protocol version 2 is rejected with one line.
/payload/ferry recv rdma:192.0.2.1:4449 --ready-file /tmp/ready-version --timeout 60 >/tmp/version.log 2>&1 &
vpid=$!
wait_ready /tmp/ready-version
/payload/rdma_version_client 192.0.2.1 4449 >/tmp/version-client.log 2>&1; vcrc=$?
wait $vpid; vrc=$?
sed 's/^/ferry-vm:   /' /tmp/version.log /tmp/version-client.log
if [ "$vcrc" = 0 ] && [ "$vrc" = 1 ] && [ "$(grep -c '^ferry: error:' /tmp/version.log)" = 1 ] &&
   grep -q 'protocol version 2' /tmp/version.log; then ok wrong-protocol-version; else bad wrong-protocol-version; fi
resources_released version

# SIGINT while ferry waits for the source: exit 3 at once, nothing left behind.
/payload/ferry recv rdma:192.0.2.1:4448 --ready-file /tmp/ready-cancel --timeout 120 >/tmp/cancel.log 2>&1 &
cpid=$!
wait_ready /tmp/ready-cancel
kill -INT $cpid
wait_exit $cpid 60; crc=$rc
sed 's/^/ferry-vm:   /' /tmp/cancel.log
if [ "$crc" = 3 ] && grep -q 'cancelled while waiting for the source' /tmp/cancel.log; then ok sigint-while-listening; else bad sigint-while-listening; fi
resources_released cancel
summary
