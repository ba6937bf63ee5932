#!/usr/bin/env bash
# Regenerates the committed seed corpus of the fuzz targets (tests/fuzz/corpus/)
# from real streams: QEMU 7.2 (Debian's qemu-system-x86_64) and QEMU 10.0
# (unpacked by .ci/deps) saving -M none, pc and q35 guests with
# "exec:cat > F", QEMU 10.0's mapped-ram files, multifd channels of both
# QEMUs recorded by capture.py, and ferry's own saves and multifd channels.
# Only files QEMU and ferry wrote (and pieces cut out of them) end up in the
# corpus; no QEMU code.
#
# Usage: tests/fuzz/make_corpus.sh [FERRY_BINARY [OUT_DIR]]
#   FERRY_BINARY defaults to build/cli/ferry, OUT_DIR to tests/fuzz/corpus.
# The guests are tiny (4 MiB, a 64 KiB all-zero BIOS for pc/q35) so that the
# whole corpus stays well under 1 MiB; mapped-ram files (several MiB, mostly
# holes) are stored in the "sparse" encoding of fuzz_util.h.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
ferry=${1:-$root/build/cli/ferry}
out=${2:-$here/corpus}
q72=${FERRY_QEMU72:-qemu-system-x86_64}
q10root=${FERRY_QEMU10_ROOT:-/var/cache/ferry/qemu-10.0/root}
q10=("$q10root/usr/bin/qemu-system-x86_64" -L "$q10root/usr/share/qemu")

command -v "$q72" >/dev/null || { echo "make_corpus: no QEMU 7.2 ($q72)" >&2; exit 1; }
[ -x "${q10[0]}" ] || { echo "make_corpus: no QEMU 10.0 under $q10root (run .ci/deps)" >&2; exit 1; }
[ -x "$ferry" ] || { echo "make_corpus: no ferry binary at $ferry" >&2; exit 1; }

tmp=$(mktemp -d /tmp/ferry-corpus.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
head -c 65536 /dev/zero >"$tmp/bios.bin"
# 8 KiB of fixed non-zero data loaded at guest address 0: two pages that
# travel as PAGE records or in multifd packets.
python3 -c 'import sys; sys.stdout.buffer.write(bytes((i * 7 + (i >> 12) * 13) & 255 for i in range(8192)))' \
  >"$tmp/data.bin"
loader=(-device "loader,file=$tmp/data.bin,addr=0,force-raw=on")

# qemu GEN MACHINE MONITOR-COMMANDS...: runs QEMU with an HMP monitor on
# stdin, sends the commands, waits for the migration to finish, quits.
qemu() {
  local gen=$1 machine=$2
  shift 2
  local -a bin extra=()
  if [ "$gen" = 7.2 ]; then bin=("$q72"); else bin=("${q10[@]}"); fi
  case "$machine" in
    none) extra=("${loader[@]}") ;;
    *) extra=(-bios "$tmp/bios.bin" -S) ;;
  esac
  {
    for c in "$@"; do echo "$c"; done
    sleep 2
    echo "info migrate"
    sleep 0.3
    echo quit
  } | timeout 60 "${bin[@]}" -M "$machine" -m 4M -nographic -nodefaults -monitor stdio "${extra[@]}" \
      >"$tmp/qemu.log" 2>&1 || true
  grep -q "Migration status: completed" "$tmp/qemu.log" || {
    echo "make_corpus: QEMU $gen -M $machine: migration did not complete:" >&2
    tail -20 "$tmp/qemu.log" >&2
    exit 1
  }
}

# capture NAME CMD...: starts capture.py, runs CMD with @PORT@ replaced by
# its port, and sorts what it recorded into NAME-main.bin (the stream) and
# NAME-chK.bin (multifd channel K, by the id in its init packet).
capture() {
  local name=$1
  shift
  rm -f "$tmp/port"
  python3 "$here/capture.py" "$tmp/port" "$tmp/$name" 2 &
  local pid=$!
  for _ in $(seq 50); do [ -s "$tmp/port" ] && break; sleep 0.1; done
  local port
  port=$(cat "$tmp/port")
  local -a cmd=()
  for a in "$@"; do cmd+=("${a//@PORT@/$port}"); done
  "${cmd[@]}" || true  # a ferry source is stopped by timeout
  wait "$pid"
  python3 - "$tmp/$name" <<'EOF'
import glob, os, sys
prefix = sys.argv[1]
for f in sorted(glob.glob(prefix + ".*.bin")):
    d = open(f, "rb").read()
    if d[:4] == b"QEVM":
        os.rename(f, prefix + "-main.bin")
    elif d[:4] == bytes.fromhex("11223344") and len(d) >= 64:
        os.rename(f, "%s-ch%d.bin" % (prefix, d[24]))
    else:
        os.remove(f)
EOF
}

mkdir -p "$out"/{streams,configuration,multifd,multifd_stream,mapped_ram,vmdesc}

# ---- plain streams ---------------------------------------------------------
for gen in 7.2 10.0; do
  for m in none pc q35; do
    qemu "$gen" "$m" "migrate \"exec:cat > $tmp/s.mig\""
    cp "$tmp/s.mig" "$out/streams/qemu$gen-$m.mig"
  done
done
# QEMU 10.0 with validate-uuid: the configuration carries a uuid subsection.
{
  echo "migrate_set_capability validate-uuid on"
  echo "migrate \"exec:cat > $tmp/s.mig\""
  sleep 2
  echo quit
} | timeout 60 "${q10[@]}" -M none -m 4M -nographic -nodefaults -monitor stdio \
    -uuid 5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1 >"$tmp/qemu.log" 2>&1 || true
cp "$tmp/s.mig" "$out/streams/qemu10.0-none-uuid.mig"
"$ferry" save "$out/streams/ferry-plain.mig" --ram 16K --fill random=25,zero=75 >/dev/null
"$ferry" save "$out/streams/ferry-qemu-compat.mig" --ram 16K --fill random=25,zero=75 --qemu-compat none >/dev/null

# ---- multifd -----------------------------------------------------------------
for gen in 7.2 10.0; do
  for comp in none zstd; do
    name=qemu$gen-multifd-$comp
    capture "$name" qemu "$gen" none "migrate_set_capability multifd on" \
      "migrate_set_parameter multifd-channels 2" "migrate_set_parameter multifd-compression $comp" \
      "migrate tcp:127.0.0.1:@PORT@"
  done
done
for comp in none zstd; do
  # ferry waits for a verdict the recorder never sends: stop it once sent.
  capture "ferry-multifd-$comp" timeout 5 "$ferry" send tcp:127.0.0.1:@PORT@ --ram 16K \
    --fill random=25,zero=75 -c multifd=on -p multifd-channels=2 -p multifd-compression=$comp
done
for f in "$tmp"/*-main.bin; do
  n=$(basename "$f" -main.bin)
  cp "$f" "$out/streams/$n-main.mig"
  # The whole migration for multifd_stream: be32 length + main stream,
  # be32 length + channel 0, channel 1.
  python3 - "$f" "$tmp/$n-ch0.bin" "$tmp/$n-ch1.bin" "$out/multifd_stream/$n.multifd" <<'EOF'
import struct, sys
main, c0, c1 = (open(f, "rb").read() for f in sys.argv[1:4])
open(sys.argv[4], "wb").write(struct.pack(">I", len(main)) + main + struct.pack(">I", len(c0)) + c0 + c1)
EOF
done
cp "$tmp"/*-ch*.bin "$out/multifd/"

# ---- mapped-ram (stored sparse) ----------------------------------------------
sparse() {  # sparse IN OUT: the encoding of fuzz_util.h (WriteSparse)
  python3 - "$1" "$2" <<'EOF'
import re, struct, sys
d = open(sys.argv[1], "rb").read()
out = bytearray()
pos = 0
for m in re.finditer(rb"\x00{64,}", d):
    lit = d[pos:m.start()]
    for i in range(0, len(lit), 65535):
        c = lit[i:i + 65535]
        out += b"L" + struct.pack(">H", len(c)) + c
    out += b"Z" + struct.pack(">I", m.end() - m.start())
    pos = m.end()
lit = d[pos:]
for i in range(0, len(lit), 65535):
    c = lit[i:i + 65535]
    out += b"L" + struct.pack(">H", len(c)) + c
open(sys.argv[2], "wb").write(out)
EOF
}
qemu 10.0 none "migrate_set_capability mapped-ram on" "migrate file:$tmp/mr.mig"
sparse "$tmp/mr.mig" "$out/mapped_ram/qemu10.0-none-mapped-ram.sparse"
rm -f "$tmp/mr.mig"
qemu 10.0 none "migrate_set_capability mapped-ram on" "migrate_set_capability multifd on" \
  "migrate_set_parameter multifd-channels 2" "migrate file:$tmp/mr.mig"
sparse "$tmp/mr.mig" "$out/mapped_ram/qemu10.0-none-mapped-ram-multifd.sparse"
"$ferry" save "$tmp/fmr.mig" --ram 16K --fill random=25,zero=75 -c mapped-ram=on >/dev/null
sparse "$tmp/fmr.mig" "$out/mapped_ram/ferry-mapped-ram.sparse"
"$ferry" save "$tmp/fmrq.mig" --ram 16K --fill random=25,zero=75 -c mapped-ram=on --qemu-compat none >/dev/null
sparse "$tmp/fmrq.mig" "$out/mapped_ram/ferry-mapped-ram-qemu-compat.sparse"

# ---- configuration sections: what follows the 0x07 byte ----------------------
cp "$tmp/mr.mig" "$tmp/qemu10.0-mapped-ram.mig"
cp "$tmp/fmr.mig" "$tmp/ferry-mapped-ram.mig"
for f in "$out"/streams/*.mig "$tmp/qemu10.0-mapped-ram.mig" "$tmp/ferry-mapped-ram.mig"; do
  python3 - "$f" "$out/configuration/$(basename "$f" .mig).conf" <<'EOF'
import sys
d = open(sys.argv[1], "rb").read()
if d[8:9] == b"\x07":
    open(sys.argv[2], "wb").write(d[9:9 + 512])
EOF
done

# ---- VM descriptions: the small ones (run.sh cuts the rest at run time) -----
for f in "$out"/streams/qemu*-none.mig "$out"/streams/ferry-plain.mig; do
  python3 "$here/vmdesc_seed.py" "$f" "$out/vmdesc/$(basename "$f" .mig).vmdesc"
done

du -sh "$out"
