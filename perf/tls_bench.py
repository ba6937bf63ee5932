#!/usr/bin/env python3
"""TLS benchmark: ferry with and without TLS, QEMU 7.2 and 10.0 with TLS, on loopback.

One run of each: ferry tcp1 / multifd 2 / multifd 4, each without TLS and with
TLS (PSK credentials made here, TLS 1.3); QEMU -> QEMU (7.2 and 10.0) with TLS
(tls-creds-psk) single and multifd 2 and 4; `openssl speed -evp aes-128-gcm`
on one thread as the cipher's ceiling. The guest is an idle --size (default
4 GiB) pattern file in /dev/shm, half random and half zero pages (perf/e2e.py's
workload; this script reuses e2e.py's runners). Prints a table: seconds, GiB/s
of guest RAM, the rate of the bytes that were encrypted (full pages), CPU
s/GiB per side, and the ratios the TLS issue asks about. Also says whether
the kernel offers kTLS (tcp_available_ulp).

This prints numbers; it is not a test. Python standard library only.
"""

import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

GIB = e2e.GIB


def openssl_speed():
    """aes-128-gcm bytes/s on one thread (16 KiB blocks), or None."""
    try:
        out = subprocess.run(["openssl", "speed", "-elapsed", "-seconds", "2", "-bytes", "16384", "-evp",
                              "aes-128-gcm"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        if line.lower().startswith("aes-128-gcm"):
            m = re.findall(r"([\d.]+)k", line)
            if m:
                return float(m[-1]) * 1000.0
    return None


def ktls_line():
    try:
        ulps = open("/proc/sys/net/ipv4/tcp_available_ulp").read().split()
    except OSError:
        ulps = []
    if "tls" in ulps:
        return "kTLS: the kernel offers it (tcp_available_ulp has tls); ferry does not use it yet"
    return "kTLS: not available (/proc/sys/net/ipv4/tcp_available_ulp lacks tls): TLS runs in user space"


def make_psk(workdir):
    d = os.path.join(workdir, "psk")
    os.mkdir(d, 0o700)
    with open(os.path.join(d, "keys.psk"), "w") as f:
        f.write("qemu:" + os.urandom(32).hex() + "\n")
    return d


def patch_qemu_for_tls(psk_dir):
    """QEMU runs of e2e.run_qemu get tls-creds-psk (client on the source,
    server on the destination) and tls-creds=tls0."""
    orig_spawn = e2e.RES.spawn
    orig_configure = e2e.qemu_configure

    def spawn(argv, out, err):
        if argv and "qemu-system" in os.path.basename(argv[0]):
            endpoint = "server" if "-incoming" in argv else "client"
            argv = list(argv) + ["-object", f"tls-creds-psk,id=tls0,dir={psk_dir},endpoint={endpoint}" +
                                 (",username=qemu" if endpoint == "client" else "")]
        return orig_spawn(argv, out, err)

    def configure(qmp, variant):
        orig_configure(qmp, variant)
        qmp.execute("migrate-set-parameters", {"tls-creds": "tls0"})

    e2e.RES.spawn = spawn
    e2e.qemu_configure = configure


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=e2e.parse_size, default=e2e.parse_size("4G"), help="guest RAM (default 4G)")
    ap.add_argument("--ferry", default=os.path.join(e2e.REPO_ROOT, "build", "cli", "ferry"))
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--channels", default="0,2,4", help="ferry/QEMU multifd channel counts (0 = one connection)")
    ap.add_argument("--no-plain", action="store_true", help="skip ferry without TLS")
    e2e.add_qemu_options(ap)
    args = ap.parse_args()
    # What e2e's runners read.
    args.settle = 0
    args.dst_prealloc = True
    args.qemu_ram = "private"
    args.ferry_send_arg = []
    args.ferry_recv_arg = []
    args.netns = False
    args.guest = "shmem"  # the pattern file in /dev/shm, as below
    args.content = "halves"
    args.layout = "halves"

    size = args.size
    workdir = e2e.tempfile.mkdtemp(prefix="ferry-tls-bench-")
    pattern = f"/dev/shm/ferry-tls-bench-{size}.bin"
    e2e.RES.files.append(pattern)
    e2e.log(f"pattern {pattern}: {e2e.fmt_size(size)}, half random / half zero")
    e2e.make_pattern(pattern, size, "halves")
    psk = make_psk(workdir)
    channels = [int(c) for c in args.channels.split(",")]
    rows = []

    aes = openssl_speed()
    e2e.log(f"openssl speed -evp aes-128-gcm, one thread, 16 KiB: "
            f"{aes / 1e9:.2f} GB/s" if aes else "openssl speed: no result")

    for ch in channels:
        name = "tcp1" if ch == 0 else f"mfd{ch}"
        for tls in ([False, True] if not args.no_plain else [True]):
            v = e2e.parse_ferry_variant(name)
            if tls:
                v["args"] = v["args"] + ["--tls-creds", f"psk:{psk}"]
                v["name"] = name + "-tls"
            e2e.log(f"ferry {v['name']} ...")
            try:
                r = e2e.run_ferry(args, v, pattern, size, workdir, 0)
            except e2e.BenchError as e:
                e2e.log(f"  failed: {e}")
                continue
            tj = (r["send_json"].get("tls") or {}).get("main") or {}
            rows.append(("ferry", v["name"], r, tj.get("version", "-") + " " + tj.get("cipher", "") if tls else "-"))

    qemus, _missing = e2e.resolve_qemus(args)
    if qemus:
        patch_qemu_for_tls(psk)
    for q in qemus:
        for ch in channels:
            v = e2e.parse_qemu_variant("single" if ch == 0 else f"mfd{ch}")
            e2e.log(f"QEMU {q['gen']} {v['name']} with TLS ...")
            try:
                r = e2e.run_qemu(args, q, v, pattern, size, workdir, 0)
            except e2e.BenchError as e:
                e2e.log(f"  failed: {e}")
                continue
            rows.append((f"QEMU {q['gen']}", v["name"] + "-tls", r, "GnuTLS, psk"))

    gib = size / GIB
    print()
    print(f"TLS benchmark: {e2e.fmt_size(size)} guest (half random, half zero pages), loopback, "
          f"{os.cpu_count()} CPUs; PSK credentials")
    print(ktls_line())
    if aes:
        print(f"openssl speed -evp aes-128-gcm (1 thread, 16 KiB blocks): {aes / 1e9:.2f} GB/s")
    print()
    print(f"{'tool':<10} {'variant':<12} {'time s':>7} {'GiB/s':>7} {'enc GB/s':>9} {'CPU s/GiB src':>14} "
          f"{'CPU s/GiB dst':>14}  session")
    by = {}
    for tool, name, r, sess in rows:
        enc = (r.get("normal_bytes") or 0) / r["time_s"] / 1e9 if r["time_s"] else 0
        print(f"{tool:<10} {name:<12} {r['time_s']:>7.2f} {gib / r['time_s']:>7.2f} {enc:>9.2f} "
              f"{r['cpu_s_per_gib_src']:>14.2f} {r['cpu_s_per_gib_dst']:>14.2f}  {sess}")
        by[(tool, name)] = r
    print()
    for ch in channels:
        name = "tcp1" if ch == 0 else f"mfd{ch}"
        plain, tls = by.get(("ferry", name)), by.get(("ferry", name + "-tls"))
        if plain and tls:
            print(f"ferry {name}: TLS/plain throughput {plain['time_s'] / tls['time_s']:.2f}")
        q10 = by.get(("QEMU 10.0", ("single" if ch == 0 else name) + "-tls"))
        if tls and q10:
            print(f"ferry {name}-tls vs QEMU 10.0 with TLS: {q10['time_s'] / tls['time_s']:.2f}x")
    one = by.get(("ferry", "tcp1-tls"))
    if one:
        one_rate = (one.get("normal_bytes") or 0) / one["time_s"]
        cpus = os.cpu_count() or 1
        for ch in channels:
            r = by.get(("ferry", f"mfd{ch}-tls"))
            if ch and r:
                rate = (r.get("normal_bytes") or 0) / r["time_s"]
                print(f"ferry mfd{ch}-tls: {rate / (min(ch, cpus) * one_rate):.0%} of min(channels, CPUs) x "
                      f"the one-connection TLS rate ({one_rate / 1e9:.2f} GB/s)")
    return 0


if __name__ == "__main__":
    e2e.run_main(main, "tls_bench.py")
