#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, in build-fuzz/) and runs
# each for a while from its seed corpus, printing executions and coverage per
# target. Exits non-zero if any target crashed, leaked, hung or ran out of
# memory; the input that did it is kept (the log says where) — it belongs in
# tests/fuzz/regressions/TARGET/ once the bug is fixed.
#
# Usage: tests/fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]
#   SECONDS_PER_TARGET  default 60 (what .ci/run uses); more finds more
#   TARGET              default all (tests/fuzz.cmake lists them)
# Environment:
#   FUZZ_JOBS       targets run at the same time (default: the number of CPUs)
#   FUZZ_BUILD_DIR  default build-fuzz (in the source tree)
#   FUZZ_KEEP_CORPUS=1  start from the corpus a previous run grew (in
#                   BUILD_DIR/fuzz/TARGET/corpus) instead of the seeds alone
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${1:-60}
shift || true
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
jobs=${FUZZ_JOBS:-$(nproc)}

# name:seed-directory pairs, from tests/fuzz.cmake.
mapfile -t entries < <(sed -n '/^set(FERRY_FUZZ_TARGETS/,/^)/p' "$root/tests/fuzz.cmake" | grep -o '"[a-z_]*:[a-z_]*"' | tr -d '"')
declare -A seeds_of=()
all=()
for e in "${entries[@]}"; do
  seeds_of[${e%%:*}]=${e##*:}
  all+=("${e%%:*}")
done
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [ -n "${seeds_of[$t]:-}" ] || { echo "fuzz: unknown target '$t' (targets: ${all[*]})" >&2; exit 2; }
done

echo "== fuzz: building the targets in $build"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
    -DCMAKE_CXX_COMPILER=clang++ -DFERRY_FUZZ=ON -DFERRY_BUILD_PERF=OFF >/dev/null
fi
cmake --build "$build" --target fuzz_targets --parallel "$(nproc)" >"$build/fuzz-build.log" 2>&1 || {
  tail -40 "$build/fuzz-build.log" >&2
  exit 1
}

work=$build/fuzz
mkdir -p "$work"
# The vmdesc target's seeds from the larger streams (pc, q35), cut at run time
# so that the committed corpus stays small.
gen=$work/vmdesc-generated
rm -rf "$gen"
mkdir -p "$gen"
for f in "$here"/corpus/streams/qemu*.mig; do
  python3 "$here/vmdesc_seed.py" "$f" "$gen/$(basename "$f" .mig).vmdesc"
done

# One target: fuzz it, then summarize its log in $work/T/summary.
fuzz_one() {
  local t=$1 dir=$work/$1
  local corpus=$dir/corpus artifacts=$dir/artifacts
  [ "${FUZZ_KEEP_CORPUS:-0}" = 1 ] || rm -rf "$corpus"
  rm -rf "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  local -a seeds=("$here/corpus/${seeds_of[$t]}")
  [ -d "$here/regressions/$t" ] && seeds+=("$here/regressions/$t")
  [ "$t" = vmdesc ] && seeds+=("$gen")
  local dict
  case "$t" in
    multifd_*) dict=multifd ;;
    vmdesc | uri | params) dict=$t ;;
    *) dict=stream ;;
  esac
  local rc=0
  # New inputs go to the first directory; the seed directories are only read.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$build/tests/fuzz_$t" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 \
      -dict="$here/dict/$dict.dict" -print_final_stats=1 -error_exitcode=77 -timeout_exitcode=78 -artifact_prefix="$artifacts/" \
      "$corpus" "${seeds[@]}" >"$dir/log" 2>&1 || rc=$?
  local execs cov ft corp
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[a-zA-Z]*' "$dir/log" | tail -1 | cut -d' ' -f2)
  local status=ok
  if ((rc != 0)); then
    status="FAILED (exit $rc)"
    grep -m1 -E 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY:' "$dir/log" >"$dir/why" || true
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$seconds" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" \
    "$status" >"$dir/summary"
}

echo "== fuzz: ${#targets[@]} targets, $seconds s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  rm -f "$work/$t/summary" "$work/$t/why"
  fuzz_one "$t" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait || true

failed=0
printf '\n%-16s %7s %12s %10s %7s %8s %s\n' target seconds execs execs/s cov ft "corpus  status"
for t in "${targets[@]}"; do
  IFS=$'\t' read -r name secs execs cov ft corp status <"$work/$t/summary" ||
    { name=$t; secs=$seconds; execs='?'; cov='?'; ft='?'; corp='?'; status='FAILED (no summary)'; }
  rate='?'
  [[ "$execs" =~ ^[0-9]+$ ]] && rate=$((execs / (secs > 0 ? secs : 1)))
  printf '%-16s %7s %12s %10s %7s %8s %s  %s\n' "$name" "$secs" "$execs" "$rate" "$cov" "$ft" "$corp" "$status"
  if [ "$status" != ok ]; then
    failed=1
    [ -s "$work/$t/why" ] && sed 's/^/    /' "$work/$t/why"
    for a in "$work/$t"/artifacts/*; do
      [ -e "$a" ] && echo "    reproducer: $a  (replay: $build/tests/fuzz_$t $a)"
    done
    echo "    log: $work/$t/log"
  fi
done
exit $failed
