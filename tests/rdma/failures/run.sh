#!/bin/sh
# ferry over rdma when things go wrong, inside the soft-RoCE VM. Every case
# checks the exit status, that ferry said what went wrong in one line, and
# that `rdma resource show` is back to its baseline afterwards (every PD, CQ,
# QP, MR and CM id released). The seconds each took are printed: a hang
# detector (120 s), not a speed check.
#  - connection refused: ferry send to a port nobody listens on;
#  - the destination (ferry recv) killed with SIGKILL mid-migration;
#  - SIGINT to ferry send mid-migration (exit 3, as docs/cli-contract.md says);
#  - a remote access error in a WRITE completion: rdma_bad_rkey_dest answers
#    every memory key with a wrong one (dynamic and pin-all);
#  - IPv6: ferry -> ferry over rdma:[fd00:1::1]:PORT (an address on dummy0).
export LD_LIBRARY_PATH=/payload/lib
. /payload/lib.sh
resources_baseline
# wait_for FILE PATTERN: up to 60 s until FILE contains PATTERN
wait_for() { i=0; while ! grep -q "$2" "$1" 2>/dev/null && [ $i -lt 120 ]; do sleep 0.5; i=$((i+1)); done; }
show() { sed "s/^/ferry-vm:   $1/" "$2"; }
lines() { grep -c "$1" "$2"; }

# --- connection refused ------------------------------------------------------
t0=$(date +%s)
/payload/ferry send rdma:192.0.2.1:4599 --ram 4M --connect-timeout 2 >/tmp/refused.log 2>&1
rc=$?; secs=$(( $(date +%s) - t0 ))
echo "ferry-vm: refused: ferry send exit $rc after $secs s"
show "" /tmp/refused.log
if [ "$rc" = 1 ] && [ "$(lines '^ferry: error:' /tmp/refused.log)" = 1 ] && [ "$(lines 'error' /tmp/refused.log)" = 1 ] &&
   grep -q 'REJECTED' /tmp/refused.log && [ $secs -lt 120 ]; then ok connection-refused; else bad connection-refused; fi
resources_released refused

# --- ferry recv killed mid-migration (ferry -> ferry) --------------------------
# start_pair NAME PORT: ferry recv and ferry send (512 MiB of random pages,
# tens of seconds under TCG) on PORT; returns once they are connected and
# pages flow.
start_pair() {
  rm -f /tmp/ready-$1
  /payload/ferry recv rdma:192.0.2.1:$2 --ready-file /tmp/ready-$1 --timeout 120 >/tmp/recv-$1.log 2>&1 &
  rpid=$!
  wait_for /tmp/ready-$1 rdma
  /payload/ferry send rdma:192.0.2.1:$2 --ram 512M --fill random=100 --dirty-tracker all-once \
    --connect-timeout 30 >/tmp/send-$1.log 2>&1 &
  spid=$!
  wait_for /tmp/recv-$1.log 'connected to'
  sleep 3
}
start_pair killed 4600
kill -0 $spid 2>/dev/null && echo "ferry-vm: killed: ferry send still migrating when ferry recv is killed" ||
  echo "ferry-vm: killed: ferry send had already ended"
kill -9 $rpid; wait $rpid 2>/dev/null
wait_exit $spid
echo "ferry-vm: killed: ferry send exit $rc, $secs s after the receiver was killed"
show "send: " /tmp/send-killed.log
if [ "$rc" != 0 ] && [ "$rc" -lt 128 ] && [ "$(lines '^ferry: error:' /tmp/send-killed.log)" = 1 ] && [ $secs -lt 120 ]; then
  ok killed-receiver; else bad killed-receiver; fi
resources_released killed-receiver

# --- SIGINT to ferry send mid-migration --------------------------------------
start_pair sigint 4601
kill -0 $spid 2>/dev/null && echo "ferry-vm: sigint: ferry send still migrating when SIGINT is sent" ||
  echo "ferry-vm: sigint: ferry send had already ended"
kill -INT $spid
wait_exit $spid
src=$rc ssecs=$secs
wait_exit $rpid
echo "ferry-vm: sigint: ferry send exit $src after $ssecs s; ferry recv exit $rc"
show "send: " /tmp/send-sigint.log
show "recv: " /tmp/recv-sigint.log
if [ "$src" = 3 ] && [ "$(lines 'error' /tmp/send-sigint.log)" = 1 ] && grep -q 'cancelled' /tmp/send-sigint.log &&
   [ "$rc" = 1 ] && [ "$(lines '^ferry: error:' /tmp/recv-sigint.log)" = 1 ] && [ $ssecs -lt 120 ]; then
  ok sigint-send; else bad sigint-send; fi
resources_released sigint

# --- a remote access error in a WRITE completion ---------------------------
for mode in dynamic:off pinall:on; do
  name=remote-access-${mode%%:*}
  /payload/rdma_bad_rkey_dest 192.0.2.1 4602 16777216 >/tmp/fake-$name.log 2>&1 &
  fpid=$!
  wait_for /tmp/fake-$name.log listening
  /payload/ferry send rdma:192.0.2.1:4602 --ram 16M --fill random=100 --qemu-compat none --dirty-tracker all-once \
    -c rdma-pin-all=${mode#*:} --connect-timeout 30 >/tmp/send-$name.log 2>&1 &
  spid=$!
  wait_exit $spid
  src=$rc ssecs=$secs
  wait_exit $fpid
  echo "ferry-vm: $name: ferry send exit $src after $ssecs s; fake destination exit $rc"
  show "fake: " /tmp/fake-$name.log
  show "send: " /tmp/send-$name.log
  if [ "$src" = 1 ] && [ "$rc" = 0 ] && [ "$(lines '^ferry: error:' /tmp/send-$name.log)" = 1 ] &&
     grep '^ferry: error:' /tmp/send-$name.log | grep -q 'RDMA WRITE.*remote access error'; then ok $name; else bad $name; fi
  resources_released $name
done

# --- IPv6 ------------------------------------------------------------------
# busybox's ip has no nodad: switch duplicate address detection off instead.
echo 0 > /proc/sys/net/ipv6/conf/dummy0/accept_dad
ip -6 addr add fd00:1::1/64 dev dummy0 2>&1 | sed 's/^/ferry-vm: ipv6: ip: /'
sleep 1
echo "ferry-vm: ipv6: dummy0: $(ip -6 addr show dev dummy0 | grep -o 'inet6 [^ ]*' | tr '\n' ' ')"
echo "ferry-vm: ipv6: rxe0 GIDs: $(cat /sys/class/infiniband/rxe0/ports/1/gids/* 2>/dev/null | grep -v '^0000:0000:0000:0000:0000:0000:0000:0000$' | tr '\n' ' ')"
rm -f /tmp/ready-v6
/payload/ferry recv 'rdma:[fd00:1::1]:4603' --ready-file /tmp/ready-v6 --timeout 120 >/tmp/recv-v6.log 2>&1 &
rpid=$!
wait_for /tmp/ready-v6 rdma
/payload/ferry send 'rdma:[fd00:1::1]:4603' --ram 32M --fill random=50,zero=50 --dirty-tracker all-once \
  --connect-timeout 30 >/tmp/send-v6.log 2>&1
src=$?
wait_exit $rpid
echo "ferry-vm: ipv6: ferry send exit $src, ferry recv exit $rc"
show "send: " /tmp/send-v6.log
show "recv: " /tmp/recv-v6.log
if [ "$src" = 0 ] && [ "$rc" = 0 ] && grep -q 'verified: yes' /tmp/recv-v6.log && grep -q 'connected to \[fd00:1::1\]' /tmp/recv-v6.log; then
  ok ipv6; else bad ipv6; fi
resources_released ipv6
summary
