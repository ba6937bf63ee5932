#!/bin/sh
# RDMA benchmark: ferry send -> ferry recv over rdma:ADDR:PORT (dynamic
# registration and rdma-pin-all; with --multifd N also multifd over N queue
# pairs) against ib_write_bw (perftest) on the same device, in the same run.
# For each: seconds, GiB/s of guest RAM, CPU seconds per GiB on each side
# (user + system of the side's processes, from /proc: the cumulative children
# times of the shell that waited for them), and the ratios to ib_write_bw.
#
#   perf/rdma_bench.sh [OPTIONS]           # on a host with an RDMA device
#   perf/rdma_bench.sh --vm [OPTIONS]      # inside the soft-RoCE test VM
#
# Options:
#   --ferry PATH       ferry binary (default build/cli/ferry under the repo, else ferry on PATH)
#   --addr IP          the local RDMA-capable address both sides use (default 192.0.2.1, the VM's)
#   --port N           first TCP/RDMA-CM port (default 4700; ib_write_bw uses N+50)
#   --size SIZE        guest RAM to migrate, K/M/G powers of 1024 (default 4G; --vm: 256M)
#   --fill MIX         the guest's pages, as ferry send --fill (default random=100: every page written)
#   --multifd N        also ferry with -c multifd=on -p multifd-channels=N (both sides)
#   --modes LIST       registration modes, comma-separated: dynamic,pin-all (default both)
#   --dev NAME         RDMA device for ib_write_bw (default: the first of ibv_devices)
#   --gid-index N      GID index for ib_write_bw on RoCE (default: none; --vm: 1, RoCE v2 IPv4)
#   --no-ib-write-bw   skip ib_write_bw
#   --tmp DIR          where the guest's memory file goes (default /dev/shm, else /tmp)
#   --vm               boot tests/rdma/vm.sh with this script, ferry and the options; print its results
#
# The guest is a memory file (dd from /dev/urandom, made once per run; ferry
# send --memory-file) so that the sender's CPU is the migration's only.
# This prints numbers; it is not a test: exit 0 when everything asked for ran,
# 1 when a run failed (its error line is printed), 2 on bad usage.
set -u

usage() { sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
die() { echo "rdma_bench: $*" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
FERRY=""; ADDR=192.0.2.1; PORT=4700; SIZE=""; FILL=random=100; MULTIFD=0; MODES=dynamic,pin-all
DEV=""; GID=""; IBBW=1; TMPD=""; VM=0
ARGS_FOR_VM=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ferry) FERRY=$2; shift 2 ;;
    --addr) ADDR=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --port) PORT=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --size) SIZE=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --fill) FILL=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --multifd) MULTIFD=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --modes) MODES=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --dev) DEV=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --gid-index) GID=$2; ARGS_FOR_VM="$ARGS_FOR_VM $1 $2"; shift 2 ;;
    --no-ib-write-bw) IBBW=0; ARGS_FOR_VM="$ARGS_FOR_VM $1"; shift ;;
    --tmp) TMPD=$2; shift 2 ;;
    --vm) VM=1; shift ;;
    -h|--help) usage ;;
    *) die "unknown option $1 (--help lists them)" ;;
  esac
done
case "$MULTIFD" in ''|*[!0-9]*) die "--multifd wants a number of channels, got '$MULTIFD'" ;; esac
for m in $(echo "$MODES" | tr ',' ' '); do
  case "$m" in dynamic|pin-all) ;; *) die "--modes: '$m' is neither dynamic nor pin-all" ;; esac
done
if [ -z "$FERRY" ]; then
  if [ -x "$here/../build/cli/ferry" ]; then FERRY=$here/../build/cli/ferry; else FERRY=$(command -v ferry || true); fi
fi
[ -n "$FERRY" ] && [ -x "$FERRY" ] || die "no ferry binary (build it, or --ferry PATH)"

# ---- --vm: run this script inside the soft-RoCE VM ---------------------------
if [ "$VM" = 1 ]; then
  [ -x "$here/../tests/rdma/vm.sh" ] || die "tests/rdma/vm.sh not found next to perf/"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/test"
  cp "$0" "$work/test/rdma_bench.sh"
  [ -n "$SIZE" ] || ARGS_FOR_VM="$ARGS_FOR_VM --size 256M"
  [ -n "$GID" ] || ARGS_FOR_VM="$ARGS_FOR_VM --gid-index 1"
  cat > "$work/test/run.sh" <<EOF
#!/bin/sh
export LD_LIBRARY_PATH=/payload/lib
sh /payload/rdma_bench.sh --ferry /payload/ferry --tmp /tmp $ARGS_FOR_VM > /tmp/bench.out 2>&1
rc=\$?
echo
sed 's/^/bench| /' /tmp/bench.out
if [ \$rc = 0 ]; then echo "ferry-vm: 1 passed, 0 failed"; else echo "ferry-vm: 0 passed, 1 failed"; fi
EOF
  chmod +x "$work/test/run.sh" "$work/test/rdma_bench.sh"
  "$here/../tests/rdma/payload.sh" "$FERRY" "$work/test" "$work/payload" >/dev/null || exit 1
  "$here/../tests/rdma/vm.sh" run "$work/payload" "${FERRY_RDMA_VM_TIMEOUT:-900}" > "$work/console.log"
  rc=$?
  tr -d '\r' < "$work/console.log" | sed -n 's/^bench| //p'
  if [ $rc != 0 ]; then
    if grep -q '^bench| ' "$work/console.log"; then echo "rdma_bench: not every run succeeded (see above)"
    else echo "rdma_bench: the VM run failed; its console:"; tr -d '\r' < "$work/console.log" | tail -20; fi
    exit 1
  fi
  exit 0
fi

# ---- the benchmark itself (host or VM) -------------------------------------
if [ -z "$(ls /sys/class/infiniband 2>/dev/null)" ]; then
  echo "rdma_bench: no RDMA device here (/sys/class/infiniband is empty); --vm runs the benchmark in the soft-RoCE VM" >&2
  exit 1
fi
[ -n "$SIZE" ] || SIZE=4G
bytes=$(echo "$SIZE" | awk '{n=$1+0; u=toupper(substr($1,length($1))); m=1; if(u=="K")m=1024; if(u=="M")m=1048576; if(u=="G")m=1073741824; if(u=="T")m=1099511627776; printf "%.0f", n*m}')
[ "$bytes" -ge 1048576 ] 2>/dev/null || die "--size '$SIZE' is not a size of at least 1M"
mib=$((bytes / 1048576))
[ -n "$TMPD" ] || { if [ -d /dev/shm ] && [ -w /dev/shm ]; then TMPD=/dev/shm; else TMPD=/tmp; fi; }
work=$(mktemp -d "${TMPDIR:-/tmp}/rdma_bench.XXXXXX")
mem=$TMPD/rdma_bench.$$.mem
cleanup() { rm -rf "$work"; rm -f "$mem"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
status=0

now() { cut -d' ' -f1 /proc/uptime; }
# timed OUT CMD...: runs CMD in a shell that then records its children's CPU
# time (user+system ticks, /proc/PID/stat fields 16 and 17) in OUT.cpu.
timed() {
  out=$1; shift
  sh -c '"$@"; rc=$?; sed "s/.*) //" /proc/$$/stat | awk "{print \$14 + \$15}" > "$0.cpu"; exit $rc' "$out" "$@"
}
cpu_s() { awk -v t="$(cat "$1.cpu" 2>/dev/null || echo 0)" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}'; }
per_gib() { awk -v s="$1" -v b="$bytes" 'BEGIN {printf "%.2f", s / (b / 1073741824)}'; }
row() { printf '%-28s %8s %8s %10s %10s   %s\n' "$1" "$2" "$3" "$4" "$5" "$6"; }

echo "rdma_bench: $(uname -r), ferry $("$FERRY" --version 2>&1 | head -1 | sed 's/^ferry //')"
if [ -z "$DEV" ] && command -v ibv_devices >/dev/null; then
  DEV=$(ibv_devices 2>/dev/null | awk 'NR > 2 && $1 != "" {print $1; exit}')
fi
echo "rdma_bench: $mib MiB of guest RAM (--fill $FILL) over rdma:$ADDR, device ${DEV:-?}${GID:+, GID index $GID}, CPU ticks $hz/s"
echo "rdma_bench: making the guest's memory file $mem"
dd if=/dev/urandom of="$mem" bs=1048576 count=$mib 2>/dev/null || die "cannot write $mem"
case "$FILL" in
  random=100) ;;
  *) # The file's pages: random where --fill says random, zero elsewhere (text counts as random).
     zero=$(echo "$FILL" | tr ',' '\n' | sed -n 's/^zero=//p'); zero=${zero:-0}
     zmib=$((mib * zero / 100))
     [ "$zmib" -gt 0 ] && dd if=/dev/zero of="$mem" bs=1048576 seek=$((mib - zmib)) count=$zmib conv=notrunc 2>/dev/null ;;
esac
echo
row "run" "seconds" "GiB/s" "send s/GiB" "recv s/GiB" "(CPU per GiB of guest RAM, each side)"

ib_rate=""
if [ "$IBBW" = 1 ]; then
  if ! command -v ib_write_bw >/dev/null; then
    echo "rdma_bench: ib_write_bw: not measured (perftest not installed)"; status=1
  else
    iters=$mib
    ibargs="-s 1048576 -n $iters -F -p $((PORT + 50))${DEV:+ -d $DEV}${GID:+ -x $GID}"
    timed "$work/ibs" ib_write_bw $ibargs > "$work/ibs.log" 2>&1 &
    ipid=$!
    sleep 1
    t0=$(now)
    timed "$work/ibc" ib_write_bw $ibargs "$ADDR" > "$work/ibc.log" 2>&1
    crc=$?
    t1=$(now)
    wait $ipid; src=$?
    # "#bytes #iterations BW peak[MB/sec] BW average[MB/sec] MsgRate[Mpps]": perftest's MB is 2^20 bytes.
    avg=$(awk '$1 == "1048576" && NF >= 5 {print $4}' "$work/ibc.log" | tail -1)
    if [ $crc = 0 ] && [ $src = 0 ] && [ -n "$avg" ]; then
      ib_rate=$(awk -v a="$avg" 'BEGIN {printf "%.3f", a / 1024}')
      secs=$(awk -v a="$avg" -v m="$mib" 'BEGIN {printf "%.2f", m / a}')
      row "ib_write_bw 1 MiB WRITEs" "$secs" "$ib_rate" "$(per_gib "$(cpu_s "$work/ibc")")" \
          "$(per_gib "$(cpu_s "$work/ibs")")" "(client = writer; wall $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s with setup)"
    else
      echo "rdma_bench: ib_write_bw failed (client exit $crc, server exit $src):"
      sed 's/^/  /' "$work/ibc.log" | tail -5; status=1
    fi
  fi
fi

# ferry_run LABEL PORT EXTRA_ARGS...
ferry_run() {
  label=$1 port=$2; shift 2
  rm -f "$work/ready"
  timed "$work/recv" "$FERRY" recv "rdma:$ADDR:$port" --ready-file "$work/ready" --timeout 120 "$@" \
    > "$work/recv.log" 2>&1 &
  rpid=$!
  i=0
  while [ ! -s "$work/ready" ] && kill -0 $rpid 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  t0=$(now)
  timed "$work/send" "$FERRY" send "rdma:$ADDR:$port" --memory-file "$mem" --dirty-tracker all-once \
    --connect-timeout 30 "$@" > "$work/send.log" 2>&1
  frc=$?
  t1=$(now)
  wait $rpid; rrc=$?
  if [ $frc = 0 ] && [ $rrc = 0 ] && grep -q 'verified: yes' "$work/recv.log"; then
    # ferry's own migration time (from the connection on); the wall time adds process start and setup.
    secs=$(sed -n 's/^ferry send: completed in \([0-9.]*\) s.*/\1/p' "$work/send.log")
    [ -n "$secs" ] || secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
    rate=$(awk -v s="$secs" -v b="$bytes" 'BEGIN {printf "%.3f", b / 1073741824 / s}')
    note=$(sed -n 's/^ferry: rdma: [0-9]* registration rounds, //p' "$work/recv.log" | head -1)
    [ -n "$ib_rate" ] && note="$(awk -v r="$rate" -v i="$ib_rate" 'BEGIN {printf "%.2f x ib_write_bw", r / i}'); $note"
    row "$label" "$secs" "$rate" "$(per_gib "$(cpu_s "$work/send")")" "$(per_gib "$(cpu_s "$work/recv")")" "($note)"
  else
    err=$(grep -h '^ferry: error:' "$work/send.log" "$work/recv.log" | head -1)
    [ -n "$err" ] || err=$(grep -h 'error' "$work/send.log" "$work/recv.log" | head -1)
    row "$label" "-" "-" "-" "-" "failed: send exit $frc, recv exit $rrc: ${err:-no error line}"
    status=1
  fi
}

port=$PORT
for m in $(echo "$MODES" | tr ',' ' '); do
  pin=off; [ "$m" = pin-all ] && pin=on
  ferry_run "ferry single $m" $port -c rdma-pin-all=$pin
  port=$((port + 1))
  if [ "$MULTIFD" -gt 0 ]; then
    ferry_run "ferry multifd $MULTIFD $m" $port -c rdma-pin-all=$pin -c multifd=on -p multifd-channels=$MULTIFD
    port=$((port + 1))
  fi
done
echo
echo "rdma_bench: s/GiB is CPU seconds (user + system) per GiB of guest RAM; GiB/s for ferry from its"
echo "rdma_bench: 'completed in' time, for ib_write_bw from its BW average (MiB/s)."
exit $status
