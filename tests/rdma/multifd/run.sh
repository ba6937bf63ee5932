#!/bin/sh
# ferry -> ferry over rdma, inside the soft-RoCE VM (docs/rdma-multifd.md):
#  - multifd, 2 channels (2 more QPs), dynamic registration and rdma-pin-all:
#    a 128 MiB synthetic guest dirtying pages while it migrates, verified by
#    digest;
#  - one connection, dynamic registration, the same live guest;
#  - multifd on the source only: both sides fail with one line.
# After every case `rdma resource show` is back to its baseline.
export LD_LIBRARY_PATH=/payload/lib
pass=0; fail=0
ok() { echo "ferry-vm: ok $1"; pass=$((pass+1)); }
bad() { echo "ferry-vm: FAIL $1"; fail=$((fail+1)); }
baseline=$(rdma resource show 2>/dev/null)
resources_released() {
  i=0
  while [ $i -lt 10 ]; do
    now=$(rdma resource show 2>/dev/null)
    [ "$now" = "$baseline" ] && break
    sleep 0.5; i=$((i+1))
  done
  if [ "$now" = "$baseline" ]; then ok "$1-resources-released"; else bad "$1-resources-released"; echo "ferry-vm:   now: $now"; fi
}

# live NAME PORT "RECV_ARGS" SEND_ARGS... : ferry send rdma: -> ferry recv rdma: (verify on)
live() {
  name=$1 port=$2 rargs=$3; shift 3
  rm -f /tmp/ready-$name
  # shellcheck disable=SC2086
  /payload/ferry recv rdma:192.0.2.1:$port --memory-file /tmp/recv-$name.mem --ready-file /tmp/ready-$name \
    --timeout 120 $rargs >/tmp/recv-$name.log 2>&1 &
  rpid=$!
  i=0
  while [ ! -s /tmp/ready-$name ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done
  /payload/ferry send rdma:192.0.2.1:$port "$@" --connect-timeout 30 >/tmp/send-$name.log 2>&1
  src=$?
  wait $rpid; rrc=$?
  echo "ferry-vm: $name: send exit $src, recv exit $rrc"
  sed 's/^/ferry-vm:   send: /' /tmp/send-$name.log
  sed 's/^/ferry-vm:   recv: /' /tmp/recv-$name.log
  rm -f /tmp/recv-$name.mem
}
guest="--ram 128M --dirty-rate 2M --hot-set 16M"

mfd="-c multifd=on -p multifd-channels=2"
# shellcheck disable=SC2086
live mfd-dynamic 4460 "$mfd" $guest $mfd
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-mfd-dynamic.log &&
   grep -q '2 multifd channels' /tmp/recv-mfd-dynamic.log; then
  ok multifd-2qp-dynamic-live; else bad multifd-2qp-dynamic-live; fi
resources_released multifd-dynamic

# shellcheck disable=SC2086
live mfd-pinall 4461 "$mfd" $guest $mfd -c rdma-pin-all=on
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-mfd-pinall.log &&
   grep -q 'pin-all' /tmp/recv-mfd-pinall.log; then
  ok multifd-2qp-pinall-live; else bad multifd-2qp-pinall-live; fi
resources_released multifd-pinall

# shellcheck disable=SC2086
live single-dynamic 4462 "" $guest
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-single-dynamic.log &&
   grep -q 'dynamic registration' /tmp/recv-single-dynamic.log; then
  ok single-dynamic-live; else bad single-dynamic-live; fi
resources_released single-dynamic

# multifd on the source only: one error line on each side, nothing left.
# shellcheck disable=SC2086
live mismatch 4463 "" --ram 16M $mfd
if [ "$src" = 1 ] && [ "$rrc" = 1 ] && [ "$(grep -c '^ferry: error:' /tmp/send-mismatch.log)" = 1 ] &&
   grep -q 'multifd' /tmp/recv-mismatch.log && [ "$(grep -c '^ferry: error:' /tmp/recv-mismatch.log)" = 1 ]; then
  ok multifd-source-only-refused; else bad multifd-source-only-refused; fi
resources_released mismatch
echo "ferry-vm: $pass passed, $fail failed"
