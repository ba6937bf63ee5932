#!/usr/bin/env bash
# A soft-RoCE test machine: Debian's kernel with rdma_rxe booted under QEMU
# (TCG), an initramfs holding busybox, rdma-core, QEMU 7.2 and whatever
# payload a test adds. The CI kernel has no RDMA; this one does.
#
#   tests/rdma/vm.sh base                 # builds (once) $CACHE/base.cpio.gz and vmlinuz
#   tests/rdma/vm.sh run DIR [TIMEOUT]    # boots with DIR's files at /payload, runs /payload/run.sh
#
# tests/rdma/lib.sh goes to /payload/lib.sh as well: the helpers every run.sh
# sources (ok/bad/summary lines, hmp, waits, the verbs resource baseline).
#
# run.sh runs as root in the VM after soft-RoCE is up (device rxe0 on
# dummy0, 192.0.2.1; client and server both use that address). The VM's
# console is copied to stdout; the exit status is 0 only when the console
# shows "ferry-vm: N passed, 0 failed" with N > 0.
#
# Packages are downloaded with apt-get download and unpacked with dpkg -x:
# nothing is installed on the host except kmod, cpio and socat (.ci/deps).
set -euo pipefail

CACHE=${FERRY_RDMA_VM_CACHE:-/var/cache/ferry/rdma-vm}
QEMU=${FERRY_RDMA_VM_QEMU:-qemu-system-x86_64}
PACKAGES=(busybox-static libibverbs1 ibverbs-providers librdmacm1 ibverbs-utils rdmacm-utils perftest
          iproute2 libnl-3-200 libnl-route-3-200 libpci3 libbpf1 libelf1 libmnl0 libbsd0 libcap2 zlib1g libmd0)
# insmod order: dependencies first. crc32_generic: `rdma link add` fails
# without it on this kernel.
MODULES=(drivers/net/dummy crypto/crc32_generic drivers/infiniband/core/ib_core drivers/infiniband/core/ib_uverbs
         net/ipv6/ip6_udp_tunnel net/ipv4/udp_tunnel drivers/infiniband/sw/rxe/rdma_rxe
         drivers/infiniband/core/iw_cm drivers/infiniband/core/ib_cm fs/configfs/configfs
         drivers/infiniband/core/rdma_cm drivers/infiniband/core/rdma_ucm)

die() { echo "vm.sh: $*" >&2; exit 1; }

# Copies binary $1 (from the host or the unpacked root) and every library it
# needs into the initramfs tree $2.
copy_with_libs() {
  local bin=$1 tree=$2 lib
  install -D -m 0755 "$bin" "$tree/usr/bin/$(basename "$bin")"
  while read -r lib; do
    [ -e "$tree/usr/lib/x86_64-linux-gnu/$(basename "$lib")" ] && continue
    cp -L "$lib" "$tree/usr/lib/x86_64-linux-gnu/"
  done < <(LD_LIBRARY_PATH="$CACHE/root/usr/lib/x86_64-linux-gnu:$CACHE/root/lib/x86_64-linux-gnu" ldd "$bin" |
           awk '/=> \// {print $3} /^\t\/lib64/ {print $1}')
}

build_base() {
  [ -s "$CACHE/base.cpio.gz" ] && [ -s "$CACHE/vmlinuz" ] && return 0
  mkdir -p "$CACHE/debs"
  local kernel
  kernel=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-6/ {print $2; exit}')
  [ -n "$kernel" ] || die "cannot resolve linux-image-amd64 to a concrete kernel package"
  (cd "$CACHE/debs" && apt-get download -q "$kernel" "${PACKAGES[@]}" >/dev/null 2>&1) ||
    (apt-get update -q >/dev/null && cd "$CACHE/debs" && apt-get download -q "$kernel" "${PACKAGES[@]}" >/dev/null) ||
    die "apt-get download failed"
  rm -rf "$CACHE/root" && mkdir -p "$CACHE/root"
  local deb
  for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$CACHE/root"; done
  local kver
  kver=$(ls "$CACHE/root/lib/modules" | head -1)
  cp "$CACHE/root/boot/vmlinuz-$kver" "$CACHE/vmlinuz.tmp"

  local tree="$CACHE/tree"
  rm -rf "$tree"
  mkdir -p "$tree"/{usr/bin,usr/lib/x86_64-linux-gnu,usr/lib64,etc/libibverbs.d,proc,sys,dev,tmp,run,payload,modules}
  ln -s usr/bin "$tree/bin"; ln -s usr/bin "$tree/sbin"; ln -s usr/lib "$tree/lib"; ln -s usr/lib64 "$tree/lib64"
  cp "$CACHE/root/bin/busybox" "$tree/usr/bin/busybox"
  local m
  for m in "${MODULES[@]}"; do
    cp "$CACHE/root/lib/modules/$kver/kernel/$m.ko"* "$tree/modules/" || die "module $m missing in $kver"
  done
  local b
  for b in usr/bin/ibv_devices usr/bin/ibv_devinfo usr/bin/rping usr/bin/rdma usr/bin/ib_write_bw bin/ip; do
    copy_with_libs "$CACHE/root/$b" "$tree"
  done
  copy_with_libs "$CACHE/root/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so" "$tree"
  mkdir -p "$tree/usr/lib/x86_64-linux-gnu/libibverbs"
  mv "$tree/usr/bin/librxe-rdmav34.so" "$tree/usr/lib/x86_64-linux-gnu/libibverbs/"
  cp "$CACHE/root/etc/libibverbs.d/rxe.driver" "$tree/etc/libibverbs.d/"
  # QEMU 7.2 from the host (Debian's build has RDMA; TCG is a module).
  copy_with_libs "$(command -v "$QEMU")" "$tree"
  copy_with_libs /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$tree"
  mkdir -p "$tree/usr/lib/x86_64-linux-gnu/qemu"
  mv "$tree/usr/bin/accel-tcg-x86_64.so" "$tree/usr/lib/x86_64-linux-gnu/qemu/"
  copy_with_libs "$(command -v socat)" "$tree"
  cp -L /lib64/ld-linux-x86-64.so.2 "$tree/usr/lib64/"
  ldconfig -r "$tree" 2>/dev/null || true
  cat > "$tree/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox mount -t tmpfs tmp /tmp
/bin/busybox --install -s /bin
for m in $(cat /modules/order); do insmod /modules/$m || echo "ferry-vm: insmod $m failed"; done
ip link set lo up
ip addr add 192.0.2.1/24 dev dummy0 && ip link set dummy0 up
rdma link add rxe0 type rxe netdev dummy0 || echo "ferry-vm: rdma link add failed"
export PATH=/payload:/usr/bin HOME=/tmp
cd /payload
if [ -x /payload/run.sh ]; then /payload/run.sh; else echo "ferry-vm: no /payload/run.sh"; fi
echo "ferry-vm: done"
poweroff -f
EOF
  chmod +x "$tree/init"
  for m in "${MODULES[@]}"; do basename "$m" | sed 's/$/.ko/'; done > "$tree/modules/order"
  (cd "$tree" && find . | cpio -o -H newc --quiet | gzip -1 > "$CACHE/base.cpio.gz.tmp")
  mv "$CACHE/base.cpio.gz.tmp" "$CACHE/base.cpio.gz"
  mv "$CACHE/vmlinuz.tmp" "$CACHE/vmlinuz"
  rm -rf "$tree"
}

run_vm() {
  local dir=$1 limit=${2:-600}
  [ -x "$dir/run.sh" ] || die "$dir/run.sh missing or not executable"
  build_base
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/tree/payload"
  cp -a "$dir"/. "$work/tree/payload/"
  cp "$(dirname "$0")/lib.sh" "$work/tree/payload/lib.sh"
  (cd "$work/tree" && find . | cpio -o -H newc --quiet | gzip -1 > "$work/payload.cpio.gz")
  cat "$CACHE/base.cpio.gz" "$work/payload.cpio.gz" > "$work/initrd.gz"
  local smp=${FERRY_RDMA_VM_SMP:-2} mem=${FERRY_RDMA_VM_MEM:-2048}
  timeout --kill-after=10 "$limit" "$QEMU" -accel tcg -cpu max -m "$mem" -smp "$smp" -nographic -no-reboot \
    -kernel "$CACHE/vmlinuz" -initrd "$work/initrd.gz" -append 'console=ttyS0 panic=-1 quiet' -nic none \
    </dev/null | tee "$work/console.log" | tr -d '\r'
  local line
  line=$(tr -d '\r' < "$work/console.log" | grep -E '^ferry-vm: [0-9]+ passed, [0-9]+ failed' | tail -1 || true)
  [ -n "$line" ] || die "the VM printed no result line (timeout after ${limit}s or a crash)"
  [[ $line =~ ^ferry-vm:\ ([0-9]+)\ passed,\ 0\ failed ]] && [ "${BASH_REMATCH[1]}" -gt 0 ]
}

case "${1:-}" in
  base) build_base ;;
  run) shift; run_vm "$@" ;;
  *) die "usage: vm.sh base | run DIR [TIMEOUT_SECONDS]" ;;
esac
