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
