# Helpers for the soft-RoCE VM tests (tests/rdma/*/run.sh), which start with
# `. /payload/lib.sh`; tests/rdma/vm.sh puts this file into every payload.
# The host (vm.sh run) reads the "ferry-vm: ok NAME" / "ferry-vm: FAIL NAME"
# lines and the last "ferry-vm: N passed, N failed" line (summary).
pass=0; fail=0
ok() { echo "ferry-vm: ok $1"; pass=$((pass+1)); }
bad() { echo "ferry-vm: FAIL $1"; fail=$((fail+1)); }
summary() { echo "ferry-vm: $pass passed, $fail failed"; }

# hmp NAME COMMAND: a monitor command to the QEMU listening on /tmp/NAME.sock.
hmp() { echo "$2" | socat - unix-connect:/tmp/$1.sock; }
# wait_socket PATH: up to 30 s until QEMU's monitor socket exists, then 1 s more.
wait_socket() { i=0; while [ ! -S "$1" ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done; sleep 1; }
# wait_ready FILE: up to 30 s until ferry's --ready-file is written.
wait_ready() { i=0; while [ ! -s "$1" ] && [ $i -lt 60 ]; do sleep 0.5; i=$((i+1)); done; }

# wait_exit PID [LIMIT]: waits for PID (a child of this shell) to exit, up
# to LIMIT half-seconds (default 240: 120 s), then SIGKILLs it. Sets rc (its
# exit status), t (half-seconds waited: t < LIMIT means it exited by itself)
# and secs (whole seconds from the call to the exit).
wait_exit() {
  t0=$(date +%s); t=0
  while kill -0 $1 2>/dev/null && [ $t -lt ${2:-240} ]; do sleep 0.5; t=$((t+1)); done
  if kill -0 $1 2>/dev/null; then echo "ferry-vm:   still running after $((${2:-240} / 2)) s: SIGKILL"; kill -9 $1; fi
  wait $1; rc=$?
  secs=$(( $(date +%s) - t0 ))
}

# ferry_pair NAME PORT "RECV_ARGS" SEND_ARGS...: ferry recv rdma: into
# /tmp/recv-NAME.mem, then ferry send rdma: to it (verify on). Sets src and
# rrc (their exit codes) and prints both logs.
ferry_pair() {
  name=$1 port=$2 rargs=$3; shift 3
  rm -f /tmp/ready-$name
  # shellcheck disable=SC2086
  /payload/ferry recv rdma:192.0.2.1:$port --memory-file /tmp/recv-$name.mem --ready-file /tmp/ready-$name \
    --timeout 120 $rargs >/tmp/recv-$name.log 2>&1 &
  rpid=$!
  wait_ready /tmp/ready-$name
  /payload/ferry send rdma:192.0.2.1:$port "$@" --connect-timeout 30 >/tmp/send-$name.log 2>&1
  src=$?
  wait $rpid; rrc=$?
  echo "ferry-vm: $name: send exit $src, recv exit $rrc"
  sed 's/^/ferry-vm:   send: /' /tmp/send-$name.log
  sed 's/^/ferry-vm:   recv: /' /tmp/recv-$name.log
}

# The kernel's own verbs objects (MAD QPs and the like): resources_baseline
# notes them; after every case resources_released NAME checks that `rdma
# resource show` is back to that, i.e. every PD, CQ, QP and MR was released.
resources_baseline() {
  baseline=$(rdma resource show 2>/dev/null)
  echo "ferry-vm: resources before: $baseline"
}
resources_released() {
  i=0
  # The kernel tears a QP down asynchronously after the peer's DISCONNECT:
  # give it a moment (a leak stays a leak).
  while [ $i -lt 10 ]; do
    now=$(rdma resource show 2>/dev/null)
    [ "$now" = "$baseline" ] && break
    sleep 0.5; i=$((i+1))
  done
  if [ "$now" = "$baseline" ]; then ok "$1-resources-released"; else bad "$1-resources-released"; echo "ferry-vm:   now: $now"; fi
}
