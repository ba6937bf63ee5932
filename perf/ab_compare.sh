#!/bin/bash
# Interleaved A/B of two ferry builds on loopback: in every round each build
# migrates the same guests, so both see the same machine state (this machine
# is shared; see README.md). One line per migration:
#   case build status verified total-ms cpu-s-src cpu-s-dst minflt-src minflt-dst peak-rss-MiB-src peak-rss-MiB-dst
# (cpu and faults: the migration phase, from both sides' --json "resources").
#
#   perf/ab_compare.sh OLD_FERRY NEW_FERRY [ROUNDS] [PATTERN]
# PATTERN: a 4 GiB half-random file (perf/e2e.py --keep-files leaves
# /dev/shm/ferry-e2e-4096M-halves.pattern); without it the shmem case is skipped.
set -euo pipefail
old=$1 new=$2 rounds=${3:-3} pattern=${4:-/dev/shm/ferry-e2e-4096M-halves.pattern}
work=$(mktemp -d /tmp/ferry-ab.XXXXXX)
trap 'rm -rf "$work"' EXIT
mfd=(-c multifd=on -p multifd-channels=2)

one() {  # NAME BUILD-LABEL BINARY RECV-ARGS... -- SEND-ARGS...
  local name=$1 label=$2 bin=$3; shift 3
  local rargs=() sargs=()
  while [ "$1" != "--" ]; do rargs+=("$1"); shift; done
  shift
  sargs=("$@")
  rm -f "$work/ready"
  "$bin" recv tcp:127.0.0.1:0 --ready-file "$work/ready" --json "${rargs[@]}" >"$work/recv.json" 2>"$work/recv.err" &
  local rp=$!
  while [ ! -s "$work/ready" ]; do sleep 0.05; done
  "$bin" send "$(cat "$work/ready")" --json "${sargs[@]}" >"$work/send.json" 2>"$work/send.err" || true
  wait "$rp" || true
  python3 - "$name" "$label" "$work" <<'PY'
import json, sys
name, label, work = sys.argv[1:4]
def load(f):
    try:
        return json.load(open(f"{work}/{f}"))
    except Exception:
        return {}
s, r = load("send.json"), load("recv.json")
rs, rr = s.get("resources", {}), r.get("resources", {})
print(name, label, s.get("status"), r.get("verified"), s.get("total-time"),
      round(rs.get("cpu-seconds", 0), 3), round(rr.get("cpu-seconds", 0), 3),
      rs.get("minor-faults"), rr.get("minor-faults"), rs.get("peak-rss", 0) >> 20, rr.get("peak-rss", 0) >> 20,
      flush=True)
PY
}

for _ in $(seq 1 "$rounds"); do
  for label in old new; do
    bin=$old
    [ "$label" = new ] && bin=$new
    if [ -f "$pattern" ]; then
      one shm-tcp1 $label "$bin" --ram 4G --prealloc -- --memory-file "$pattern"
      one shm-mfd2 $label "$bin" --ram 4G --prealloc "${mfd[@]}" -- --memory-file "$pattern" "${mfd[@]}"
    fi
    one anon-tcp1 $label "$bin" -- --ram 4G --fill random=50,zero=50 --layout runs
    one anon-mfd2 $label "$bin" "${mfd[@]}" -- --ram 4G --fill random=50,zero=50 --layout runs "${mfd[@]}"
    one sparse16-tcp1 $label "$bin" --max-ram 16G -- --ram 16G --force --fill random=6,zero=94 --layout runs
    one sparse1-tcp1 $label "$bin" -- --ram 1G --fill random=99,zero=1 --layout runs
  done
done
