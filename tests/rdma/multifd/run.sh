#!/bin/sh
# ferry -> ferry over rdma, inside the soft-RoCE VM (docs/rdma-multifd.md):
#  - multifd, 2 channels (2 more QPs), dynamic registration and rdma-pin-all:
#    a 128 MiB synthetic guest dirtying pages while it migrates, verified by
#    digest;
#  - one connection, dynamic registration, the same live guest;
#  - the page counts: what the destination reports written by RDMA WRITE and
#    zeroed by COMPRESS equals what the source says it sent;
#  - --json's "rdma" object on both sides agrees, and the source's RAM counts
#    take its COMPRESS zero pages as zero pages;
#  - multifd on the source only: both sides fail with one line;
#  - multifd, the source killed (SIGKILL) mid-migration: the destination fails
#    with one line at once; the destination killed: the source does; the same
#    with SIGINT (the interrupted side exits 3, cancelled).
# After every case `rdma resource show` is back to its baseline.
export LD_LIBRARY_PATH=/payload/lib
. /payload/lib.sh
resources_baseline

# live NAME PORT "RECV_ARGS" SEND_ARGS... : ferry send rdma: -> ferry recv rdma: (verify on)
live() {
  ferry_pair "$@"
  rm -f /tmp/recv-$1.mem
}
guest="--ram 128M --dirty-rate 2M --hot-set 16M"

# counts_match NAME: the source's "rdma: N pages ... Z zero pages" and the
# destination's "pages written by RDMA WRITE: N ..., zero pages by COMPRESS: Z".
counts_match() {
  sw=$(sed -n 's/.*ferry: rdma: \([0-9]*\) pages (.*/\1/p' /tmp/send-$1.log)
  sz=$(sed -n 's/.*RDMA WRITEs ([0-9]* signalled), \([0-9]*\) zero pages.*/\1/p' /tmp/send-$1.log)
  rw=$(sed -n 's/.*pages written by RDMA WRITE: \([0-9]*\) (counted.*/\1/p' /tmp/recv-$1.log)
  rz=$(sed -n 's/.*zero pages by COMPRESS: \([0-9]*\) in.*/\1/p' /tmp/recv-$1.log)
  rn=$(sed -n 's/.*RAM [0-9.]* MiB: \([0-9]*\) pages sent in full.*/\1/p' /tmp/recv-$1.log)
  echo "ferry-vm: $1: written $sw/$rw, zero $sz/$rz, destination summary $rn pages in full"
  if [ -n "$sw" ] && [ "$sw" -gt 0 ] && [ "$sw" = "$rw" ] && [ "$sw" = "$rn" ] && [ -n "$sz" ] && [ "$sz" = "$rz" ]; then
    ok "$1-page-counts"; else bad "$1-page-counts"; fi
}

# killed WHO SIG PORT: a 256 MiB random guest over multifd, WHO (send|recv)
# gets SIG (KILL, or INT: it must exit 3, cancelled, at once) 2 s after the
# source connected (pages are on the way: about 5 s of
# them under TCG; filling the guest before may take long on a loaded host);
# the other side exits 1 with one error line within 60 s.
killed() {
  who=$1 sig=$2 port=$3
  rm -f /tmp/ready-killed
  /payload/ferry recv rdma:192.0.2.1:$port --ready-file /tmp/ready-killed --timeout 400 $mfd \
    >/tmp/recv-killed.log 2>&1 &
  rpid=$!
  wait_ready /tmp/ready-killed
  # shellcheck disable=SC2086
  /payload/ferry send rdma:192.0.2.1:$port --ram 256M --fill random=100 --dirty-tracker all-once $mfd \
    --connect-timeout 30 >/tmp/send-killed.log 2>&1 &
  spid=$!
  i=0
  while ! grep -q 'rdma: connected' /tmp/send-killed.log && kill -0 $spid 2>/dev/null && [ $i -lt 720 ]; do
    sleep 0.5; i=$((i+1))
  done
  sleep 2
  if [ "$who" = send ]; then victim=$spid other=$rpid log=/tmp/recv-killed.log; else victim=$rpid other=$spid log=/tmp/send-killed.log; fi
  kill -$sig $victim
  wait_exit $victim 60; vrc=$rc
  wait_exit $other 120; orc=$rc
  echo "ferry-vm: $who: SIG$sig $((i/2)) s after starting the source + 2 s: exit $vrc; the other side exit $orc about $((t/2)) s later"
  sed 's/^/ferry-vm:   send: /' /tmp/send-killed.log
  sed 's/^/ferry-vm:   recv: /' /tmp/recv-killed.log
  vok=1
  [ "$sig" = INT ] && [ "$vrc" != 3 ] && vok=0
  if [ $vok = 1 ] && [ "$orc" = 1 ] && [ "$(grep -c '^ferry: error:' $log)" = 1 ] && [ $t -lt 120 ] &&
     grep -q 'rdma: connected' $log; then
    ok "multifd-$who-sig$sig"; else bad "multifd-$who-sig$sig"; fi
  resources_released "multifd-$who-sig$sig"
}

mfd="-c multifd=on -p multifd-channels=2"
# shellcheck disable=SC2086
live mfd-dynamic 4460 "$mfd" $guest $mfd
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-mfd-dynamic.log &&
   grep -q '2 multifd channels' /tmp/recv-mfd-dynamic.log; then
  ok multifd-2qp-dynamic-live; else bad multifd-2qp-dynamic-live; fi
counts_match mfd-dynamic
resources_released multifd-dynamic

# shellcheck disable=SC2086
live mfd-pinall 4461 "$mfd" $guest $mfd -c rdma-pin-all=on
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-mfd-pinall.log &&
   grep -q 'pin-all' /tmp/recv-mfd-pinall.log; then
  ok multifd-2qp-pinall-live; else bad multifd-2qp-pinall-live; fi
counts_match mfd-pinall
resources_released multifd-pinall

# shellcheck disable=SC2086
live single-dynamic 4462 "" $guest
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && grep -q 'verified: yes' /tmp/recv-single-dynamic.log &&
   grep -q 'dynamic registration' /tmp/recv-single-dynamic.log; then
  ok single-dynamic-live; else bad single-dynamic-live; fi
counts_match single-dynamic
resources_released single-dynamic

# multifd on the source only: one error line on each side, nothing left.
# shellcheck disable=SC2086
live mismatch 4463 "" --ram 16M $mfd
if [ "$src" = 1 ] && [ "$rrc" = 1 ] && [ "$(grep -c '^ferry: error:' /tmp/send-mismatch.log)" = 1 ] &&
   grep -q 'multifd' /tmp/recv-mismatch.log && [ "$(grep -c '^ferry: error:' /tmp/recv-mismatch.log)" = 1 ]; then
  ok multifd-source-only-refused; else bad multifd-source-only-refused; fi
resources_released mismatch

# --json's "rdma" object on both sides (docs/cli-contract.md), 2 QPs, a guest
# half zero pages: the source's RAM counts take the zero pages it sent as
# COMPRESS as zero pages (ram.duplicate = rdma.zero-pages, ram.normal =
# rdma.pages-written), and the destination counts the same pages.
jget() { sed -n "s/.*\"$2\":{[^}]*\"$3\":\([a-z0-9]*\).*/\1/p" "$1"; }
# shellcheck disable=SC2086
live json 4468 "$mfd --json" --ram 64M --fill random=50,zero=50 --dirty-tracker all-once $mfd --json
sw=$(jget /tmp/send-json.log rdma pages-written); sz=$(jget /tmp/send-json.log rdma zero-pages)
sn=$(jget /tmp/send-json.log ram normal); sd=$(jget /tmp/send-json.log ram duplicate)
sc=$(jget /tmp/send-json.log rdma channels); ss=$(jget /tmp/send-json.log rdma signalled-writes)
rw=$(jget /tmp/recv-json.log rdma pages-written); rz=$(jget /tmp/recv-json.log rdma zero-pages)
rc=$(jget /tmp/recv-json.log rdma channels)
echo "ferry-vm: json: source written $sw zero $sz (ram normal $sn duplicate $sd, $sc channels, $ss signalled);" \
  "destination written $rw zero $rz ($rc channels)"
if [ "$src" = 0 ] && [ "$rrc" = 0 ] && [ -n "$sw" ] && [ "$sw" -gt 0 ] && [ -n "$sz" ] && [ "$sz" -gt 0 ] &&
   [ "$sw" = "$sn" ] && [ "$sz" = "$sd" ] && [ "$sw" = "$rw" ] && [ "$sz" = "$rz" ] && [ "$sc" = 2 ] &&
   [ "$rc" = 2 ] && [ -n "$ss" ] && [ "$ss" -gt 0 ] && grep -q '"side":"source"' /tmp/send-json.log &&
   grep -q '"side":"destination"' /tmp/recv-json.log && grep -q '"verified":true' /tmp/recv-json.log; then
  ok multifd-json-counts; else bad multifd-json-counts; fi
resources_released json

killed send KILL 4464
killed recv KILL 4465
killed send INT 4466
killed recv INT 4467
summary
