#!/usr/bin/env python3
"""End-to-end benchmark: ferry vs QEMU 7.2 and QEMU 10.0 migration vs iperf3, all on loopback.

Workload: an idle guest of --size bytes (default 4 GiB) held in a pattern file
in /dev/shm: half random pages and half zero pages (--content halves), or
text-like compressible pages (--content text). ferry migrates that file
(`ferry send --memory-file`); QEMU's guest RAM is filled from the same file
(see --qemu-ram); each QEMU variant runs with every QEMU generation found
(--qemu: 7.2, --qemu10 ROOT: 10.0). iperf3 moves half the guest RAM's worth of bytes (size / 2)
as a ceiling for what loopback TCP can do on this machine.

Several variants of each tool can run in one invocation (--ferry-variants,
--qemu-variants, --iperf-variants, --preset): one TCP connection or multifd
channels, with or without verification or zstd compression.

This prints numbers; it is not a test. Exit status: 0 if everything that was
asked for ran, 1 if something failed (ferry, QEMU or iperf3), 2 on bad usage or
not enough memory, 130 on Ctrl-C. See perf/README.md.

Python standard library only.
"""

import argparse
import datetime
import json
import os
import random
import re
import signal
import socket
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERF_DIR = os.path.join(REPO_ROOT, "perf")
GIB = 1 << 30
MIB = 1 << 20
CHUNK = 2 * MIB            # layout granularity and generator work unit
TIME_FMT = "%e %U %S %M %R %F"   # GNU time: elapsed s, user s, sys s, max RSS KiB, minor/major faults
QEMU_MAX_BANDWIDTH = 107374182400  # 100 GiB/s; QEMU's default is 32 MiB/s
# Where .ci/deps unpacks QEMU 10.0 (the default of --qemu10 when it exists).
QEMU10_DEFAULT_ROOT = "/var/cache/ferry/qemu-10.0/root"
QEMU_GENS = ("7.2", "10.0")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A measured tool failed; message says which and why."""


class UsageError(Exception):
    pass


LOG_TAG = "e2e"   # file_bench.py sets its own


def log(msg):
    print(f"[{LOG_TAG}] {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4G, 512M)")
    mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    n = int(m.group(1)) * mult
    if n <= 0 or n % (2 * CHUNK):
        raise argparse.ArgumentTypeError(f"size must be a positive multiple of 4 MiB, got {text!r}")
    return n


def fmt_size(n):
    return f"{n / GIB:g} GiB" if n % GIB == 0 else f"{n / MIB:g} MiB"


# --------------------------------------------------------------------------
# Variants: what each run of a tool looks like. Names are parsed, so e.g.
# mfd8 or mfd4-zstd-noverify work without being listed here.

# --preset NAME: defaults for the three variant lists (an explicit
# --ferry-variants / --qemu-variants / --iperf-variants still wins).
PRESETS = {
    # The default run: one connection, with and without verification.
    "issue2": {"ferry": "tcp1,tcp1-noverify", "qemu": "single", "iperf": "p1"},
    # The multifd issue's benchmark.
    "issue3": {"ferry": "tcp1,mfd2,mfd4,mfd2-zstd", "qemu": "single,mfd2", "iperf": "p1,p2"},
}
DEFAULT_PRESET = "issue2"

# Targets printed beside the ratios (information only).
QEMU_TARGETS = {("tcp1", "single"): 2.5, ("mfd2", "mfd2"): 2.0}
IPERF_TARGETS = {("mfd2", "p2"): 0.70}

FERRY_VARIANT_HELP = (
    "tcp1 (one TCP connection) or mfdN (-c multifd=on -p multifd-channels=N), then any of "
    "-zstd (-p multifd-compression=zstd), -noverify (-c verify=off), "
    "-zlegacy/-znone/-zmultifd (-p zero-page-detection=...); the same -c/-p go to send and recv")


def parse_ferry_variant(name):
    """Name -> {"name", "channels" (0 = no multifd), "args" (for both ends), ...}."""
    parts = name.split("-")
    m = re.fullmatch(r"tcp1|mfd(\d+)", parts[0])
    if not m:
        raise UsageError(f"unknown ferry variant {name!r}: {FERRY_VARIANT_HELP}")
    channels = int(m.group(1)) if m.group(1) else 0
    if parts[0].startswith("mfd") and not 1 <= channels <= 255:
        raise UsageError(f"ferry variant {name!r}: multifd channels must be 1-255")
    args = ["-c", "multifd=on", "-p", f"multifd-channels={channels}"] if channels else []
    zstd, verify, seen = False, True, set()
    for mod in parts[1:]:
        if mod in seen:
            raise UsageError(f"ferry variant {name!r}: {mod!r} given twice")
        seen.add(mod)
        if mod == "zstd" and channels:
            zstd = True
            args += ["-p", "multifd-compression=zstd"]
        elif mod == "noverify":
            verify = False
            args += ["-c", "verify=off"]
        elif mod in ("zlegacy", "znone", "zmultifd") and channels:
            args += ["-p", f"zero-page-detection={mod[1:]}"]
        else:
            raise UsageError(f"unknown or misplaced modifier {mod!r} in ferry variant {name!r} "
                             f"(-zstd and -z* need mfdN): {FERRY_VARIANT_HELP}")
    return {"name": name, "channels": channels, "zstd": zstd, "verify": verify, "args": args}


def parse_qemu_variant(name):
    """single, or mfdN[-zstd]: multifd capability + multifd-channels (+ zstd) on both QEMUs."""
    m = re.fullmatch(r"single|mfd(\d+)(-zstd)?", name)
    if not m:
        raise UsageError(f"unknown QEMU variant {name!r} (single, mfdN or mfdN-zstd)")
    channels = int(m.group(1)) if m.group(1) else 0
    if name != "single" and not 1 <= channels <= 255:
        raise UsageError(f"QEMU variant {name!r}: multifd channels must be 1-255")
    params = {}
    if channels:
        params["multifd-channels"] = channels
        if m.group(2):
            params["multifd-compression"] = "zstd"
    return {"name": name, "channels": channels, "zstd": bool(m.group(2)), "params": params}


def parse_iperf_variant(name):
    """pN: iperf3 -P N (parallel TCP streams)."""
    m = re.fullmatch(r"p(\d+)", name)
    if not m or not 1 <= int(m.group(1)) <= 128:
        raise UsageError(f"unknown iperf3 variant {name!r} (pN = iperf3 -P N, e.g. p1, p2)")
    return {"name": name, "streams": int(m.group(1))}


def parse_variant_list(text, parser, what):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"--{what}-variants is empty")
    if len(set(names)) != len(names):
        raise UsageError(f"--{what}-variants lists a variant twice: {text!r}")
    return [parser(n) for n in names]


def qemu_baseline(fv, qemu_names):
    """The QEMU variant a ferry variant is compared with: single for tcp1*; for
    mfd*: QEMU with the same channels and compression if it ran, else mfd2."""
    if not fv["channels"]:
        return "single" if "single" in qemu_names else None
    same = f"mfd{fv['channels']}" + ("-zstd" if fv["zstd"] else "")
    for cand in (same, "mfd2"):
        if cand in qemu_names:
            return cand
    return None


def iperf_baseline(fv, iperf_names):
    """iperf3 with as many streams as ferry has data connections (tcp1 -> p1)."""
    want = f"p{max(1, fv['channels'])}"
    return want if want in iperf_names else None


# --------------------------------------------------------------------------
# QEMU generations. --qemu is QEMU 7.2 (Debian 12's qemu-system-x86_64 on
# PATH by default); --qemu10 ROOT is a QEMU 10.0 unpacked under ROOT (binary
# ROOT/usr/bin/qemu-system-x86_64, firmware/data dir ROOT/usr/share/qemu for
# -L). Each QEMU variant runs once per generation found; results are keyed
# qemu-7.2:NAME / qemu-10.0:NAME and labelled "QEMU 7.2 ..." / "QEMU 10.0 ...".

def add_qemu_options(ap):
    ap.add_argument("--qemu", default="qemu-system-x86_64",
                    help="QEMU 7.2 binary (default: qemu-system-x86_64 on PATH)")
    ap.add_argument("--qemu10", metavar="ROOT",
                    help="directory where QEMU 10.0 is unpacked: runs ROOT/usr/bin/qemu-system-x86_64 "
                         f"-L ROOT/usr/share/qemu (default {QEMU10_DEFAULT_ROOT} if it exists)")
    ap.add_argument("--skip-qemu", action="store_true", help="no QEMU at all")
    ap.add_argument("--skip-qemu72", action="store_true", help="no QEMU 7.2")
    ap.add_argument("--skip-qemu10", action="store_true", help="no QEMU 10.0")


def qemu_version(binary):
    """"X.Y.Z" from `binary --version`, or None."""
    try:
        r = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", r.stdout)
    return m.group(1) if m else None


def resolve_qemus(args):
    """The QEMU generations this run measures: a list of {"gen", "bin", "datadir",
    "version"}, and {gen: why it is not measured} for the others. A missing QEMU
    is reported in one line; the run goes on with the rest."""
    found, missing = [], {}
    if args.skip_qemu:
        return found, {g: "--skip-qemu" for g in QEMU_GENS}
    if args.skip_qemu72:
        missing["7.2"] = "--skip-qemu72"
    else:
        b = shutil.which(args.qemu)
        if b:
            found.append({"gen": "7.2", "bin": b, "datadir": None})
        else:
            missing["7.2"] = f"{args.qemu} not found (apt-get install qemu-system-x86, or --qemu PATH)"
    root = args.qemu10
    if args.skip_qemu10:
        missing["10.0"] = "--skip-qemu10"
    elif root is None and not os.path.isdir(QEMU10_DEFAULT_ROOT):
        missing["10.0"] = f"no --qemu10 ROOT given and {QEMU10_DEFAULT_ROOT} does not exist"
    else:
        root = os.path.abspath(root or QEMU10_DEFAULT_ROOT)
        b = os.path.join(root, "usr", "bin", "qemu-system-x86_64")
        if os.path.isfile(b) and os.access(b, os.X_OK):
            found.append({"gen": "10.0", "bin": b, "datadir": os.path.join(root, "usr", "share", "qemu")})
        else:
            missing["10.0"] = f"{b} not found or not executable (--qemu10 ROOT)"
    for q in found:
        q["version"] = qemu_version(q["bin"])
        if q["version"] is None:
            log(f"warning: QEMU {q['gen']} ({q['bin']}): could not read its --version")
        elif q["version"].split(".")[:2] != q["gen"].split("."):
            log(f"warning: the QEMU {q['gen']} binary {q['bin']} is version {q['version']}; "
                f"its results are still labelled QEMU {q['gen']}")
    for gen, why in missing.items():
        if why not in ("--skip-qemu",):
            log(f"QEMU {gen}: not measured: {why}")
    return found, missing


def qemu_argv(q):
    """The start of a QEMU command line for generation record q."""
    return [q["bin"]] + (["-L", q["datadir"]] if q.get("datadir") else [])


def qkey(gen, name):
    return f"qemu-{gen}:{name}"


# --------------------------------------------------------------------------
# Child processes and files: everything we start or create is registered here
# and torn down in cleanup(), which runs on normal exit, exceptions, Ctrl-C and
# SIGTERM/SIGHUP.

class Resources:
    def __init__(self):
        self.procs = []   # Popen objects, each the leader of its own session
        self.files = []
        self.dirs = []

    def spawn(self, argv, stdout_path, stderr_path):
        out = open(stdout_path, "wb")
        err = open(stderr_path, "wb")
        # --netns: everything runs in the benchmark's network namespace.
        # nsenter only setns()es and execs, so p.pid is the tool's pid.
        run = (["nsenter", f"--net=/proc/{NETNS['pid']}/ns/net", "--"] + argv) if NETNS["pid"] else argv
        try:
            p = subprocess.Popen(run, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True)
        finally:
            out.close()
            err.close()
        p.argv = argv
        self.procs.append(p)
        return p

    def stop(self, p, grace=3.0):
        """SIGTERM the process group, then SIGKILL after `grace` seconds."""
        if p.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Reap any leftovers in the group (e.g. the child of /usr/bin/time).
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def cleanup(self, keep=()):
        for p in list(self.procs):
            self.stop(p)
        for f in self.files:
            if f in keep:
                continue
            try:
                os.unlink(f)
            except FileNotFoundError:
                pass
            except OSError as e:
                log(f"warning: could not remove {f}: {e}")
        self.files = [f for f in self.files if f in keep]
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.dirs = []


RES = Resources()
NETNS = {"pid": None}   # with --netns: pid of the process that holds the namespace


def start_netns(workdir):
    """--netns: a private network namespace (loopback up) held by a sleep process."""
    for tool in ("unshare", "nsenter", "ip"):
        if not shutil.which(tool):
            raise UsageError(f"--netns needs {tool} (util-linux / iproute2)")
    holder = RES.spawn(["unshare", "--net", "--", "sleep", "infinity"],
                       os.path.join(workdir, "netns.out"), os.path.join(workdir, "netns.err"))
    def unshared():
        try:
            return os.readlink(f"/proc/{holder.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        except OSError:
            return False

    wait_until(unshared, 10, "the network namespace", [holder])
    r = subprocess.run(["nsenter", f"--net=/proc/{holder.pid}/ns/net", "--", "ip", "link", "set", "lo", "up"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"--netns: could not set up the namespace's loopback (root needed?): "
                         f"{r.stderr.strip() or read_text(os.path.join(workdir, 'netns.err'))}")
    NETNS["pid"] = holder.pid
    log(f"--netns: running everything in the network namespace of pid {holder.pid}")


def _signal_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# Small helpers

def read_text(path, limit=None):
    try:
        with open(path, "r", errors="replace") as f:
            s = f.read()
    except FileNotFoundError:
        return ""
    if limit is not None and len(s) > limit:
        s = "...\n" + s[-limit:]
    return s


def wrap_time(time_file, argv):
    return ["/usr/bin/time", "-f", TIME_FMT, "-o", time_file] + argv


def parse_time_file(path):
    """Last line of GNU time's -o file (TIME_FMT): elapsed, user, sys, maxrss KiB,
    minor and major page faults (of the process and its reaped children)."""
    lines = [l for l in read_text(path).splitlines() if l.strip()]
    for line in reversed(lines):
        parts = line.split()
        if len(parts) in (4, 6):
            try:
                e, u, s, m = float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3])
                minflt, majflt = (int(parts[4]), int(parts[5])) if len(parts) == 6 else (None, None)
            except ValueError:
                continue
            return {"elapsed_s": e, "user_s": u, "sys_s": s, "cpu_s": u + s,
                    "max_rss_mib": m / 1024.0, "minflt": minflt, "majflt": majflt}
    return None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(port, pid="self"):
    """True if something listens on 127.0.0.1:port (or 0.0.0.0/any) in pid's network namespace."""
    want = f"{port:04X}"
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state = fields[1], fields[3]
                    if state == "0A" and local.rsplit(":", 1)[1] == want:
                        return True
        except FileNotFoundError:
            pass
    return False


def wait_until(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{what}: process {p.argv[0]} exited early with status {p.returncode}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


def proc_cpu_s(pid):
    """(utime, stime) of pid (all threads) in seconds, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_faults(pid):
    """(minor, major) page faults of pid (all threads) so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); minflt is field 10, majflt field 12
    return int(fields[7]), int(fields[9])


def proc_status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def settle(args):
    """Optional pause before each measured transfer (e.g. to let the previous
    run's freed memory be reported to the hypervisor); see README "Caveat"."""
    if args.settle > 0:
        time.sleep(args.settle)


def ip_out_octets():
    """The host's IpExt OutOctets (/proc/net/netstat): every IP byte sent, loopback
    included. The delta over a transfer = its bytes on the wire plus TCP/IP
    headers, plus whatever else the machine sent meanwhile."""
    try:
        with open(f"/proc/{NETNS['pid'] or 'self'}/net/netstat") as f:
            lines = [l.split() for l in f if l.startswith("IpExt:")]
        return int(lines[1][lines[0].index("OutOctets")])
    except (OSError, IndexError, ValueError):
        return None


def octets_delta(before):
    after = ip_out_octets()
    return None if before is None or after is None else after - before


def meminfo_kib(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------
# Pattern file

def guest_touched(args, size):
    """Bytes of guest RAM holding data: anon: half; sparse: --touched."""
    if args.guest == "anon":
        return size // 2
    if args.guest == "sparse":
        return min(args.touched, size)
    return size // 2 if args.content == "halves" else size


def make_random_pieces(prefix, nbytes):
    """Files PREFIX.N of random data, 1 GiB each (the last one shorter), for
    QEMU's -device loader. Reused when present with the right size."""
    pieces = []
    for i in range((nbytes + GIB - 1) // GIB):
        n = min(GIB, nbytes - i * GIB)
        path = f"{prefix}.{i}"
        pieces.append(path)
        if os.path.exists(path) and os.path.getsize(path) == n:
            continue
        tmp = f"{path}.{os.getpid()}.tmp"
        RES.files.append(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            def fill(off):
                os.pwrite(fd, os.urandom(min(CHUNK, n - off)), off)
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
                for _ in ex.map(fill, range(0, n, CHUNK), chunksize=8):
                    pass
        finally:
            os.close(fd)
        os.rename(tmp, path)
        RES.files.remove(tmp)
    return pieces


FAULT_PROBE = 1 * GIB


def measure_fault_costs(nbytes=FAULT_PROBE):
    """This machine's cost of one anonymous page fault, 4 KiB pages and 2 MiB
    THP: touch fresh memory once per page, minus the loop's own cost (a second
    pass over the same, now populated, pages). Microseconds per fault."""
    import mmap
    import resource
    out = {}
    for kind, step, advice in (("4k", 4096, getattr(mmap, "MADV_NOHUGEPAGE", None)),
                               ("2m", 2 * MIB, getattr(mmap, "MADV_HUGEPAGE", None))):
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        try:
            if advice is not None:
                m.madvise(advice)
            offs = range(0, nbytes, step)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t0 = time.perf_counter()
            for off in offs:
                m[off] = 1
            t1 = time.perf_counter()
            f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for off in offs:
                m[off] = 2
            t2 = time.perf_counter()
        finally:
            m.close()
        faults = max(1, f1 - f0)
        out[kind] = {"faults": f1 - f0, "us_per_fault": ((t1 - t0) - (t2 - t1)) / faults * 1e6,
                     "bytes": nbytes}
    return out


def chunk_is_random(layout, idx, nchunks):
    if layout == "halves":
        return idx < nchunks // 2
    return idx % 2 == 0   # interleave: even 2 MiB chunks random, odd chunks zero


TEXT_BLOCK = 16 * MIB   # base text; longer than zstd's window at the usual levels
TEXT_PERIOD = TEXT_BLOCK // CHUNK
PAGE = 4096


def make_text_block(seed=20261122):
    """TEXT_BLOCK bytes of English-like text: lines of words drawn (Zipf-like)
    from a generated vocabulary with English letter frequencies."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    lw = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2,
          2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
    vocab = sorted({"".join(rng.choices(letters, lw, k=rng.choice((1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8, 9, 11))))
                    for _ in range(6000)}, key=lambda w: rng.random())
    cum, acc = [], 0.0
    for r in range(len(vocab)):
        acc += 1.0 / (r + 1)
        cum.append(acc)
    out, n = [], 0
    while n < TEXT_BLOCK:
        words = rng.choices(vocab, cum_weights=cum, k=200000)
        lines = []
        i = 0
        while i < len(words):
            k = rng.randint(6, 16)
            line = " ".join(words[i:i + k])
            lines.append(line[:1].upper() + line[1:] + rng.choice((".", ".", ".", ",", ";", "?")))
            i += k
        piece = "\n".join(lines).encode() + b"\n"
        out.append(piece)
        n += len(piece)
    return b"".join(out)[:TEXT_BLOCK]


def text_chunk(base, idx):
    """2 MiB chunk idx: a slice of the base text (period TEXT_BLOCK) with every
    4 KiB page stamped with its chunk and page number, so no two pages are equal."""
    off = (idx % TEXT_PERIOD) * CHUNK
    buf = bytearray(base[off:off + CHUNK])
    for p in range(CHUNK // PAGE):
        buf[p * PAGE:p * PAGE + 16] = b"<%08x.%04x>\n" % (idx & 0xffffffff, p)   # 16 bytes
    assert len(buf) == CHUNK
    return buf


def make_pattern(path, size, layout, content="halves"):
    """Create PATH atomically. halves: random chunks from os.urandom, zero chunks
    allocated by fallocate (per layout); text: every chunk text-like."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        log(f"reusing existing pattern file {path}")
        return 0.0
    tmp = f"{path}.{os.getpid()}.tmp"
    RES.files.append(tmp)
    t0 = time.monotonic()
    nchunks = size // CHUNK
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        if content == "text":
            base = make_text_block()

            def fill(idx):
                os.pwrite(fd, text_chunk(base, idx), idx * CHUNK)

            idxs = range(nchunks)
        else:
            def fill(idx):
                buf = os.urandom(CHUNK)   # getrandom(); releases the GIL
                os.pwrite(fd, buf, idx * CHUNK)

            idxs = [i for i in range(nchunks) if chunk_is_random(layout, i, nchunks)]
        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
            for _ in ex.map(fill, idxs, chunksize=8):
                pass
        # Allocate the zero chunks too, so the file is fully backed by memory
        # (tmpfs returns zeroed pages) and later runs don't pay for page allocation.
        os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    RES.files.remove(tmp)
    dt = time.monotonic() - t0
    what = "text" if content == "text" else f"layout {layout}"
    log(f"created {path} ({fmt_size(size)}, {what}) in {dt:.1f} s")
    return dt


# --------------------------------------------------------------------------
# ferry

def ferry_wire_bytes(j):
    """(wire bytes, multifd bytes or None) from a ferry/QEMU query-migrate JSON.

    multifd bytes: ram."multifd-bytes" (QEMU's name), else "multifd"."bytes", else
    the sum of "multifd"."channels"[*]."bytes". QEMU counts multifd bytes in
    ram.transferred; if ram.transferred is smaller than the multifd bytes it
    is taken to count only the main connection, and the two are added."""
    ram = j.get("ram") or {}
    transferred = ram.get("transferred")
    mfd = ram.get("multifd-bytes")
    m = j.get("multifd")
    if mfd is None and isinstance(m, dict):
        mfd = m.get("bytes")
        if mfd is None and isinstance(m.get("channels"), list):
            try:
                mfd = sum(c.get("bytes", 0) for c in m["channels"])
            except (AttributeError, TypeError):
                mfd = None
    if not isinstance(transferred, (int, float)):
        return None, mfd
    if isinstance(mfd, (int, float)) and mfd > transferred:
        return transferred + mfd, mfd
    return transferred, mfd


def run_ferry(args, variant, pattern, size, workdir, run_idx):
    d = os.path.join(workdir, f"ferry-{variant['name']}-{run_idx}")
    os.mkdir(d)
    ready = os.path.join(d, "ready")
    f = {n: os.path.join(d, n) for n in
         ("recv.out", "recv.err", "recv.time", "send.out", "send.err", "send.time")}

    def failure(msg, who=None):
        parts = [f"ferry {variant['name']}: {msg}"]
        for w in ([who] if who else ["recv", "send"]):
            err = read_text(f[f"{w}.err"], 4000).strip()
            out = read_text(f[f"{w}.out"], 2000).strip()
            if err:
                parts.append(f"--- ferry {w} stderr ---\n{err}")
            if out:
                parts.append(f"--- ferry {w} stdout ---\n{out}")
        return BenchError("\n".join(parts))

    recv_cmd = [args.ferry, "recv", "tcp:127.0.0.1:0", "--ready-file", ready, "--json"]
    if args.dst_prealloc and args.guest == "shmem":
        recv_cmd += ["--ram", str(size), "--prealloc"]
    recv_cmd += variant["args"] + args.ferry_recv_arg
    recv = RES.spawn(wrap_time(f["recv.time"], recv_cmd), f["recv.out"], f["recv.err"])
    try:
        wait_until(lambda: os.path.exists(ready), 30, "ferry recv --ready-file", [recv])
    except BenchError as e:
        RES.stop(recv)
        raise failure(f"recv did not become ready ({e}); command: {' '.join(recv_cmd)}", "recv")
    uri = read_text(ready).strip()
    m = re.fullmatch(r"tcp:(\S+):(\d+)", uri)
    if not m or int(m.group(2)) == 0:
        RES.stop(recv)
        raise failure(f"recv wrote an unexpected URI {uri!r} to its ready file", "recv")
    port = int(m.group(2))
    if args.guest == "shmem":
        send_cmd = [args.ferry, "send", f"tcp:127.0.0.1:{port}", "--memory-file", pattern, "--json"]
    else:
        # Anonymous synthetic guest, no prealloc: 2 MiB runs of random data
        # (about `touched` bytes of them), the rest never touched.
        pct = max(1, min(99, round(100 * guest_touched(args, size) / size)))
        send_cmd = [args.ferry, "send", f"tcp:127.0.0.1:{port}", "--ram", str(size), "--json",
                    "--fill", f"random={pct},zero={100 - pct}", "--layout", "runs"]
    send_cmd += variant["args"] + args.ferry_send_arg
    settle(args)

    oct0 = ip_out_octets()
    t0 = time.monotonic()
    send = RES.spawn(wrap_time(f["send.time"], send_cmd), f["send.out"], f["send.err"])
    try:
        send.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        RES.stop(send)
        RES.stop(recv)
        raise failure(f"send did not finish within {args.timeout} s")
    wall = time.monotonic() - t0
    try:
        # A failed send leaves recv waiting for its connection: don't wait long.
        recv.wait(timeout=60 if send.returncode == 0 else 5)
    except subprocess.TimeoutExpired:
        RES.stop(recv)
        RES.procs.remove(send)
        if send.returncode != 0:
            raise failure(f"send exited with status {send.returncode}", "send")
        raise failure("recv did not exit within 60 s after send finished")
    lo_bytes = octets_delta(oct0)
    RES.procs.remove(send)
    RES.procs.remove(recv)

    for who, p in (("send", send), ("recv", recv)):
        if p.returncode != 0:
            raise failure(f"{who} exited with status {p.returncode}", who)

    def parse_json(who):
        text = read_text(f[f"{who}.out"]).strip()
        if not text:
            raise failure(f"{who} printed no JSON on stdout (with --json)", who)
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            # tolerate stray lines: use the last line that is a JSON object
            obj = None
            for line in reversed(text.splitlines()):
                try:
                    obj = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if not isinstance(obj, dict):
            raise failure(f"{who} stdout is not a JSON object", who)
        if obj.get("status") != "completed":
            raise failure(f"{who} reported status {obj.get('status')!r}: {obj.get('error', '')}", who)
        return obj

    sj, rj = parse_json("send"), parse_json("recv")
    if not isinstance(sj.get("total-time"), (int, float)) or sj["total-time"] <= 0:
        raise failure(f"send JSON has no usable total-time: {sj.get('total-time')!r}", "send")
    st, rt = parse_time_file(f["send.time"]), parse_time_file(f["recv.time"])
    if st is None or rt is None:
        raise failure("could not read /usr/bin/time output")
    gib = size / GIB
    # Bytes on the wire: send's counters; if send reports no multifd bytes
    # but recv does, recv's (both count the same bytes). Full pages: recv's
    # count (what arrived as full pages), else send's.
    wire, mfd = ferry_wire_bytes(sj)
    wire_from = "send"
    if variant["channels"] and not mfd:
        rwire, rmfd = ferry_wire_bytes(rj)
        if rmfd:
            wire, mfd, wire_from = rwire, rmfd, "recv"
            log("  note: ferry send's JSON has no multifd bytes; wire bytes from recv's JSON")
    # The migration phase only (ferry's --json "resources"; GNU time's
    # figures above include the guest's fill).
    sres, rres = sj.get("resources") or {}, rj.get("resources") or {}
    def mig_cpu(r):
        c = r.get("cpu-seconds")
        return c / (size / GIB) if isinstance(c, (int, float)) else None
    mig = {"mig_minflt_src": sres.get("minor-faults"), "mig_minflt_dst": rres.get("minor-faults"),
           "mig_cpu_s_per_gib_src": mig_cpu(sres), "mig_cpu_s_per_gib_dst": mig_cpu(rres),
           "mig_rss_growth_mib_src": ((sres["peak-rss"] - sres["rss-at-start"]) / MIB
                                      if "peak-rss" in sres and "rss-at-start" in sres else None)}
    normal = (rj.get("ram") or {}).get("normal-bytes")
    normal_send = (sj.get("ram") or {}).get("normal-bytes")
    if not isinstance(normal, (int, float)):
        normal = normal_send
    elif normal_send != normal:
        log(f"  note: ferry normal-bytes differ: send {normal_send}, recv {normal} (recv's used)")
    return {
        "time_s": sj["total-time"] / 1000.0,
        "wall_s": wall,
        "wire_bytes": wire,
        "multifd_bytes": mfd,
        "wire_bytes_from": wire_from,
        "normal_bytes": normal,
        "lo_bytes": lo_bytes,
        "cpu_s_per_gib_src": st["cpu_s"] / gib,
        "cpu_s_per_gib_dst": rt["cpu_s"] / gib,
        "peak_rss_mib_src": st["max_rss_mib"],
        "peak_rss_mib_dst": rt["max_rss_mib"],
        "minflt_src": st["minflt"], "minflt_dst": rt["minflt"],
        "majflt_src": st["majflt"], "majflt_dst": rt["majflt"],
        "verified": rj.get("verified"),
        **mig,
        "send_time": st,
        "recv_time": rt,
        "send_json": sj,
        "recv_json": rj,
        "commands": [recv_cmd, send_cmd],
    }


# --------------------------------------------------------------------------
# QEMU (QMP client)

class QMP:
    def __init__(self, path, timeout, proc):
        self.path = path
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise BenchError(f"QEMU exited with status {proc.returncode} before QMP was up")
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                self.sock.close()
                if time.monotonic() > deadline:
                    raise BenchError(f"timed out connecting to QMP socket {path}")
                time.sleep(0.05)
        # The greeting only arrives once QEMU's main loop runs, i.e. after guest
        # RAM has been filled from the pattern file: allow for that.
        self.sock.settimeout(max(1.0, deadline - time.monotonic()))
        self.rfile = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise BenchError(f"unexpected QMP greeting: {greeting}")
        self.sock.settimeout(60)
        self.execute("qmp_capabilities")

    def _read(self):
        try:
            line = self.rfile.readline()
        except OSError as e:
            raise BenchError(f"QMP connection {self.path}: {e}")
        if not line:
            raise BenchError(f"QMP connection {self.path} closed")
        try:
            return json.loads(line)
        except ValueError:
            raise BenchError(f"QMP {self.path}: bad message {line[:200]!r}")

    def execute(self, cmd, arguments=None):
        msg = {"execute": cmd}
        if arguments is not None:
            msg["arguments"] = arguments
        try:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise BenchError(f"QMP {cmd} on {self.path}: {e}")
        while True:
            r = self._read()
            if "event" in r:
                continue
            if "error" in r:
                raise BenchError(f"QMP {cmd} failed: {r['error']}")
            if "return" in r:
                return r["return"]

    def close(self):
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


def qemu_spot_check(qmp, pattern, size, touched=None):
    """Compare 16 bytes at a few guest addresses with the pattern file (HMP xp).
    touched: the pattern file holds only the first `touched` bytes (anonymous
    guests), zeros beyond."""
    nchunks = size // CHUNK
    offsets = sorted({0, CHUNK + 4096, size // 2 - 16, size // 2, size - 16,
                      (nchunks // 3) * CHUNK + 12345 * 16})
    if touched is not None:
        offsets = sorted(set(offsets) | {touched - 16, touched})
    bad = []

    def want_at(off):
        if touched is None:
            with open(pattern, "rb") as f:
                f.seek(off)
                return f.read(16)
        if off + 16 > touched:
            return bytes(16)
        with open(pattern[off // GIB], "rb") as f:   # pieces of 1 GiB
            f.seek(off % GIB)
            return f.read(16)

    if True:
        for off in offsets:
            want = want_at(off)
            out = qmp.execute("human-monitor-command", {"command-line": f"xp /2gx {off:#x}"})
            vals = re.findall(r"0x([0-9a-fA-F]{16})", out.split(":", 1)[-1])
            got = b"".join(int(v, 16).to_bytes(8, "little") for v in vals[:2])
            if got != want:
                bad.append((off, want.hex(), got.hex(), out.strip()))
    return bad


def qemu_configure(qmp, variant):
    """multifd capability and parameters for a multifd variant (both ends)."""
    if variant["channels"]:
        qmp.execute("migrate-set-capabilities",
                    {"capabilities": [{"capability": "multifd", "state": True}]})
        qmp.execute("migrate-set-parameters", variant["params"])


def run_qemu(args, qemu, variant, pattern, size, workdir, run_idx):
    """One migration between two fresh QEMUs of generation record qemu (resolve_qemus)."""
    d = os.path.join(workdir, f"qemu-{qemu['gen']}-{variant['name']}-{run_idx}")
    os.mkdir(d)
    src_sock, dst_sock = os.path.join(d, "src.qmp"), os.path.join(d, "dst.qmp")
    mem = f"{size // MIB}M"
    base = qemu_argv(qemu) + ["-M", "none", "-m", mem, "-accel", "tcg", "-nodefaults",
            "-nographic", "-display", "none", "-S"]
    src_cmd = list(base)
    if args.guest != "shmem":
        # Default anonymous RAM, never prefaulted; -device loader writes the
        # random data (pieces of at most 1 GiB: QEMU 7.2's loader reads a file
        # with one read(), capped at 2 GiB - 4 KiB); the rest stays untouched.
        for i, piece in enumerate(args.random_pieces):
            src_cmd += ["-device", f"loader,file={piece},addr={i * GIB:#x},force-raw=on"]
    elif args.qemu_ram == "loader":
        src_cmd += ["-device", f"loader,file={pattern},addr=0,force-raw=on"]
    else:
        # Guest RAM backed by the pattern file itself. private: MAP_PRIVATE and
        # prealloc (write-touch) => every page becomes a resident anonymous copy,
        # as in a guest that has its data loaded. shared: MAP_SHARED of the file,
        # nothing copied, exactly how `ferry send --memory-file` maps it.
        share, prealloc = ("off", "on") if args.qemu_ram == "private" else ("on", "off")
        src_cmd[src_cmd.index("none")] = "none,memory-backend=ram"
        src_cmd += ["-object", f"memory-backend-file,id=ram,size={mem},mem-path={pattern},"
                               f"share={share},prealloc={prealloc},"
                               f"prealloc-threads={os.cpu_count() or 1}"]
    src_cmd += ["-qmp", f"unix:{src_sock},server=on,wait=off"]

    # The destination starts with -incoming defer: multifd's capability and
    # parameters must be set before it listens (QMP migrate-incoming).
    dst_cmd = list(base)
    if args.dst_prealloc and args.guest == "shmem":
        # Same treatment as `ferry recv --prealloc`: guest RAM faulted in
        # before the migration starts.
        dst_cmd[dst_cmd.index("none")] = "none,memory-backend=ram"
        dst_cmd += ["-object", f"memory-backend-ram,id=ram,size={mem},prealloc=on"]
    dst_cmd += ["-qmp", f"unix:{dst_sock},server=on,wait=off", "-incoming", "defer"]
    dst = RES.spawn(dst_cmd, os.path.join(d, "dst.out"), os.path.join(d, "dst.err"))
    src = sq = dq = None
    port = None
    try:
        try:
            dq = QMP(dst_sock, 60, dst)
        except BenchError as e:
            raise BenchError(f"QEMU destination failed to start ({e}):\n"
                             f"{read_text(os.path.join(d, 'dst.err'), 2000)}")
        qemu_configure(dq, variant)
        for attempt in range(5):
            port = free_port()
            try:
                dq.execute("migrate-incoming", {"uri": f"tcp:127.0.0.1:{port}"})
                break
            except BenchError as e:
                if "in use" in str(e) and attempt < 4:
                    continue
                raise BenchError(f"QEMU destination: migrate-incoming failed: {e}\n"
                                 f"{read_text(os.path.join(d, 'dst.err'), 2000)}")
        src = RES.spawn(src_cmd, os.path.join(d, "src.out"), os.path.join(d, "src.err"))
        t0 = time.monotonic()
        try:
            sq = QMP(src_sock, args.timeout, src)
        except BenchError as e:
            raise BenchError(f"QEMU source failed to start ({e}):\n"
                             f"{read_text(os.path.join(d, 'src.err'), 2000)}")
        load_s = time.monotonic() - t0
        wait_until(lambda: is_listening(port, dst.pid), 30, "QEMU migrate-incoming to listen", [dst])

        qemu_configure(sq, variant)
        sq.execute("migrate-set-parameters", {"max-bandwidth": QEMU_MAX_BANDWIDTH})
        settle(args)
        src_rss_before = proc_status_kib(src.pid, "VmRSS") / 1024.0
        dst_rss_before = proc_status_kib(dst.pid, "VmRSS") / 1024.0
        c_src0, c_dst0 = proc_cpu_s(src.pid), proc_cpu_s(dst.pid)
        f_src0, f_dst0 = proc_faults(src.pid), proc_faults(dst.pid)
        oct0 = ip_out_octets()
        t_start = time.monotonic()
        sq.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})

        deadline = t_start + args.timeout
        while True:
            info = sq.execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise BenchError(f"QEMU migration {status}: {info.get('error-desc', info)}\n"
                                 f"{read_text(os.path.join(d, 'src.err'), 2000)}"
                                 f"{read_text(os.path.join(d, 'dst.err'), 2000)}")
            if time.monotonic() > deadline:
                raise BenchError(f"QEMU migration not completed after {args.timeout} s: {info}")
            time.sleep(0.02)
        c_src1, f_src1 = proc_cpu_s(src.pid), proc_faults(src.pid)
        while True:
            dinfo = dq.execute("query-migrate")
            if dinfo.get("status") == "completed":
                break
            if dinfo.get("status") in ("failed", "cancelled"):
                raise BenchError(f"QEMU destination reports {dinfo}")
            if time.monotonic() > deadline:
                raise BenchError(f"QEMU destination not completed after {args.timeout} s: {dinfo}")
            time.sleep(0.02)
        c_dst1, f_dst1 = proc_cpu_s(dst.pid), proc_faults(dst.pid)
        wall = time.monotonic() - t_start
        lo_bytes = octets_delta(oct0)
        hwm_src = proc_status_kib(src.pid, "VmHWM") / 1024.0
        hwm_dst = proc_status_kib(dst.pid, "VmHWM") / 1024.0
        src_rss_after = proc_status_kib(src.pid, "VmRSS") / 1024.0
        bad = qemu_spot_check(dq, args.random_pieces if args.guest != "shmem" else pattern, size,
                              guest_touched(args, size) if args.guest != "shmem" else None)
        if bad:
            raise BenchError(f"QEMU destination RAM differs from the pattern file at {len(bad)} "
                             f"spot(s), first: {bad[0]}")
        for q in (sq, dq):
            try:
                q.execute("quit")
            except (BenchError, OSError):
                pass
    finally:
        for q in (sq, dq):
            if q:
                q.close()
        if src is not None:
            RES.stop(src, grace=10)
        RES.stop(dst, grace=10)

    gib = size / GIB
    src_user, src_sys = c_src1[0] - c_src0[0], c_src1[1] - c_src0[1]
    dst_user, dst_sys = c_dst1[0] - c_dst0[0], c_dst1[1] - c_dst0[1]
    wire, mfd = ferry_wire_bytes(info)
    return {
        "time_s": info["total-time"] / 1000.0,
        "wall_s": wall,
        "wire_bytes": wire,
        "multifd_bytes": mfd,
        "normal_bytes": (info.get("ram") or {}).get("normal-bytes"),
        "lo_bytes": lo_bytes,
        "cpu_s_per_gib_src": (src_user + src_sys) / gib,
        "cpu_s_per_gib_dst": (dst_user + dst_sys) / gib,
        "src_cpu": {"user_s": src_user, "sys_s": src_sys},
        "dst_cpu": {"user_s": dst_user, "sys_s": dst_sys},
        "peak_rss_mib_src": hwm_src,
        "peak_rss_mib_dst": hwm_dst,
        # Faults and CPU during the migration only (QEMU's start-up and RAM fill excluded).
        "minflt_src": f_src1[0] - f_src0[0], "minflt_dst": f_dst1[0] - f_dst0[0],
        "majflt_src": f_src1[1] - f_src0[1], "majflt_dst": f_dst1[1] - f_dst0[1],
        "mig_minflt_src": f_src1[0] - f_src0[0], "mig_minflt_dst": f_dst1[0] - f_dst0[0],
        "mig_cpu_s_per_gib_src": (src_user + src_sys) / gib, "mig_cpu_s_per_gib_dst": (dst_user + dst_sys) / gib,
        # VmHWM may predate the migration (the loader's copy): growth is
        # measured on VmRSS before and after instead.
        "mig_rss_growth_mib_src": src_rss_after - src_rss_before,
        "qemu_version": qemu.get("version"),
        "rss_before_migration_mib_src": src_rss_before,
        "rss_before_migration_mib_dst": dst_rss_before,
        "load_s": load_s,
        "query_migrate_src": info,
        "query_migrate_dst": dinfo,
        "commands": [src_cmd, dst_cmd],
    }


# --------------------------------------------------------------------------
# iperf3

def run_iperf(args, variant, nbytes, workdir, run_idx):
    d = os.path.join(workdir, f"iperf-{variant['name']}-{run_idx}")
    os.mkdir(d)
    f = {n: os.path.join(d, n) for n in
         ("srv.out", "srv.err", "srv.time", "cli.out", "cli.err", "cli.time")}
    port = free_port()
    srv_cmd = [args.iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)]
    cli_cmd = [args.iperf3, "-c", "127.0.0.1", "-p", str(port), "-n", str(nbytes), "-J"]
    if variant["streams"] > 1:
        cli_cmd += ["-P", str(variant["streams"])]   # -n counts all streams together
    srv = RES.spawn(wrap_time(f["srv.time"], srv_cmd), f["srv.out"], f["srv.err"])
    cli = None
    try:
        wait_until(lambda: is_listening(port, srv.pid), 15, "iperf3 server to listen", [srv])
        settle(args)
        oct0 = ip_out_octets()
        cli = RES.spawn(wrap_time(f["cli.time"], cli_cmd), f["cli.out"], f["cli.err"])
        try:
            cli.wait(timeout=args.timeout)
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError("iperf3 did not finish in time")
        lo_bytes = octets_delta(oct0)
    finally:
        RES.stop(srv)
        if cli is not None:
            RES.stop(cli)
    if cli.returncode != 0:
        raise BenchError(f"iperf3 client exited with {cli.returncode}:\n"
                         f"{read_text(f['cli.out'], 2000)}{read_text(f['cli.err'], 2000)}")
    j = json.loads(read_text(f["cli.out"]))
    if "error" in j:
        raise BenchError(f"iperf3: {j['error']}")
    recvd = j["end"]["sum_received"]
    st, ct = parse_time_file(f["srv.time"]), parse_time_file(f["cli.time"])
    gib = recvd["bytes"] / GIB
    return {
        "time_s": recvd["seconds"],
        "bytes": recvd["bytes"],
        "gib_per_s": gib / recvd["seconds"],
        "lo_bytes": lo_bytes,
        "cpu_s_per_gib_src": ct["cpu_s"] / gib if ct else None,
        "cpu_s_per_gib_dst": st["cpu_s"] / gib if st else None,
        "peak_rss_mib_src": ct["max_rss_mib"] if ct else None,
        "peak_rss_mib_dst": st["max_rss_mib"] if st else None,
        "minflt_src": ct["minflt"] if ct else None, "minflt_dst": st["minflt"] if st else None,
        "majflt_src": ct["majflt"] if ct else None, "majflt_dst": st["majflt"] if st else None,
        "iperf_cpu_utilization_percent": j["end"].get("cpu_utilization_percent"),
        "commands": [srv_cmd, cli_cmd],
    }


# --------------------------------------------------------------------------
# Summary

NUMERIC = ("time_s", "wall_s", "cpu_s_per_gib_src", "cpu_s_per_gib_dst",
           "peak_rss_mib_src", "peak_rss_mib_dst", "gib_per_s",
           "minflt_src", "minflt_dst", "majflt_src", "majflt_dst",
           "wire_bytes", "multifd_bytes", "normal_bytes", "lo_bytes",
           "mig_minflt_src", "mig_minflt_dst", "mig_rss_growth_mib_src",
           "mig_cpu_s_per_gib_src", "mig_cpu_s_per_gib_dst")


def summarize(runs):
    """best = the run with the lowest time; median = per-metric median."""
    if not runs:
        return None
    best = min(runs, key=lambda r: r["time_s"])
    median = {}
    for k in NUMERIC:
        vals = [r[k] for r in runs if isinstance(r.get(k), (int, float))]
        if vals:
            median[k] = statistics.median(vals)
    return {"best": {k: best[k] for k in NUMERIC if isinstance(best.get(k), (int, float))},
            "median": median, "n": len(runs)}


def f2(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def compute_ratios(res, size, data_bytes):
    """Every ferry variant against its QEMU baseline in each QEMU generation and
    its iperf3 baseline (best and median), the RSS limit, plus the
    pre-variant keys for tcp1."""
    summ, ratios = res["summary"], res["ratios"]
    gens = list(res["config"]["qemu"])
    iperf_names = [v for v in res["variants"]["iperf3"] if f"iperf3:{v}" in summ]
    for name, fv in res["variants"]["ferry"].items():
        fs = summ.get(f"ferry:{name}")
        if not fs:
            continue
        for gen in gens:
            qb = qemu_baseline(fv, [v for v in res["variants"]["qemu"] if qkey(gen, v) in summ])
            if qb:
                qs = summ[qkey(gen, qb)]
                ratios[f"ferry:{name}/{qkey(gen, qb)}"] = {
                    "best": qs["best"]["time_s"] / fs["best"]["time_s"],
                    "median": qs["median"]["time_s"] / fs["median"]["time_s"],
                    "target": QEMU_TARGETS.get((name, qb))}
        ib = iperf_baseline(fv, iperf_names)
        if ib:
            isum = summ[f"iperf3:{ib}"]
            ratios[f"ferry:{name}/iperf3:{ib}"] = {
                "best": (data_bytes / GIB / fs["best"]["time_s"]) / isum["best"]["gib_per_s"],
                "median": (data_bytes / GIB / fs["median"]["time_s"]) / isum["median"]["gib_per_s"],
                "target": IPERF_TARGETS.get((name, ib))}
    # The keys of the single-variant version of this script (QEMU 7.2), and QEMU 10.0's.
    for gen, suffix in (("7.2", ""), ("10.0", "10")):
        k = f"ferry:tcp1/{qkey(gen, 'single')}"
        if k in ratios:
            ratios[f"ferry_over_qemu{suffix}"] = ratios[k]["best"]
            ratios[f"ferry_over_qemu{suffix}_median"] = ratios[k]["median"]
    if "ferry:tcp1/iperf3:p1" in ratios:
        ratios["ferry_random_half_over_iperf3"] = ratios["ferry:tcp1/iperf3:p1"]["best"]
    if any(k.startswith("ferry:") for k in summ):
        ratios["ferry_rss_limit_mib"] = size * 1.01 / MIB + 64


def print_report(res, size, args):
    gib = size / GIB
    data_bytes = res["config"]["data_bytes"]
    dgib = data_bytes / GIB
    dlabel = "rnd" if args.content == "halves" else "data"
    summ, errors, ratios = res["summary"], res["errors"], res["ratios"]
    fvars, qvars, ivars = (res["variants"][k] for k in ("ferry", "qemu", "iperf3"))
    gens = res["config"]["qemu"]          # measured QEMU generations: gen -> {bin, datadir, version}
    print()
    print(f"ferry e2e benchmark  {res['timestamp']}  host {res['host']['cpu']} "
          f"({res['host']['cpus']} CPUs)")
    if args.guest != "shmem":
        t = guest_touched(args, size)
        print(f"guest RAM {fmt_size(size)}, {args.guest}: anonymous, {fmt_size(t)} random data, the rest never "
              f"touched (ferry: 2 MiB runs; QEMU: -device loader from address 0), no prealloc on either side; "
              f"idle; all on 127.0.0.1; repeat {args.repeat}")
    elif args.content == "halves":
        print(f"guest RAM {fmt_size(size)}: {fmt_size(size // 2)} random + {fmt_size(size // 2)} zero "
              f"(layout {args.layout}), idle; all on 127.0.0.1; repeat {args.repeat}")
    else:
        print(f"guest RAM {fmt_size(size)} of text-like pages (compressible, no zero pages), idle; "
              f"all on 127.0.0.1; repeat {args.repeat}")
    for name, fv in fvars.items():
        print(f"  ferry {name}: {' '.join(fv['args']) or '(one TCP connection)'}"
              + (" (both ends)" if fv["args"] else ""))
    for gen, q in gens.items():
        print(f"  QEMU {gen}: {' '.join(qemu_argv(q))} (version {q.get('version') or '?'})")
    for gen, why in res["config"]["qemu_missing"].items():
        print(f"  QEMU {gen}: not measured: {why}")
    for name, qv in qvars.items():
        print(f"  QEMU {name}: " + ("one TCP connection" if not qv["channels"] else
                                     "multifd capability, " + json.dumps(qv["params"]) + " on both QEMUs"))
    for name, iv in ivars.items():
        print(f"  iperf3 {name}: {iv['streams']} TCP stream(s)" + (f" (-P {iv['streams']})" if iv["streams"] > 1 else ""))

    kinds = ["best", "median"] if args.repeat > 1 else ["best"]
    w = max([len(f"ferry {n} (send total-time)") for n in fvars]
            + [len(f"QEMU 10.0 {n} (total-time)") for n in qvars] + [28])
    xcols = "".join(f" {'x Q' + g:>8}" for g in gens)
    hdr = (f"{'':{w}} {'time s':>8} {'GiB/s RAM':>10} {f'GiB/s {dlabel}':>10} "
           f"{'CPU s/GiB src':>14} {'dst':>6} {'peak RSS MiB src':>17} {'dst':>7}{xcols}")
    for kind in kinds:
        print()
        if args.repeat > 1:
            print(f"[{kind} of {args.repeat}]")
        print(hdr)
        rows = []
        for name, fv in fvars.items():
            key = f"ferry:{name}"
            if key in summ:
                m = summ[key][kind]
                xq = []
                for gen in gens:
                    qb = qemu_baseline(fv, [v for v in qvars if qkey(gen, v) in summ])
                    xq.append(summ[qkey(gen, qb)][kind]["time_s"] / m["time_s"] if qb else None)
                rows.append((f"ferry {name} (send total-time)", m["time_s"], gib / m["time_s"],
                             dgib / m["time_s"], m, xq))
                rows.append((f"ferry {name} (send wall-clock)", m["wall_s"], gib / m["wall_s"],
                             dgib / m["wall_s"], None, None))
            elif key in errors:
                rows.append((f"ferry {name}: FAILED", None, None, None, None, None))
        for gen in gens:
            for name in qvars:
                key = qkey(gen, name)
                if key in summ:
                    m = summ[key][kind]
                    rows.append((f"QEMU {gen} {name} (total-time)", m["time_s"], gib / m["time_s"],
                                 dgib / m["time_s"], m, None))
                elif key in errors:
                    rows.append((f"QEMU {gen} {name}: FAILED", None, None, None, None, None))
        for name, iv in ivars.items():
            key = f"iperf3:{name}"
            if key in summ:
                m = summ[key][kind]
                rows.append((f"iperf3 -P {iv['streams']} ({fmt_size(size // 2)})", m["time_s"], None,
                             m["gib_per_s"], m, None))
            elif key in errors:
                rows.append((f"iperf3 {name}: FAILED", None, None, None, None, None))
        for name, t, g, h, m, xq in rows:
            m = m or {}
            xs = "".join(f" {(f2(x) + 'x') if x else '-':>8}" for x in (xq or [None] * len(gens)))
            print(f"{name:{w}} {f2(t, '.3f'):>8} {f2(g):>10} {f2(h):>10} "
                  f"{f2(m.get('cpu_s_per_gib_src'), '.3f'):>14} {f2(m.get('cpu_s_per_gib_dst'), '.3f'):>6} "
                  f"{f2(m.get('peak_rss_mib_src'), '.0f'):>17} {f2(m.get('peak_rss_mib_dst'), '.0f'):>7}{xs}")

    print()
    print(f"GiB/s RAM = guest RAM / time; GiB/s {dlabel} = "
          + ("random half" if args.content == "halves" else "guest RAM (all pages carry data)")
          + " / time (iperf3: payload / time).")
    print("CPU s/GiB per GiB of guest RAM (iperf3: per GiB of payload); src = sender, dst = receiver.")
    print("x QN = QEMU N's time / ferry's time; ferry tcp1* is compared with QEMU single, "
          "mfd* with QEMU mfdN[-zstd] of the same shape if it ran, else QEMU mfd2.")
    print(f"QEMU guest RAM on the source: --qemu-ram {args.qemu_ram}; QEMU peak RSS is VmHWM"
          + (" (includes the loader's second copy)." if args.qemu_ram == "loader" else ".")
          + " QEMU's CPU and faults count the migration only (from migrate to completed), ferry's and"
          "\niperf3's the whole process (GNU time).")

    # Page faults (best run).
    frows = [(f"ferry {n}", summ[f"ferry:{n}"]["best"]) for n in fvars if f"ferry:{n}" in summ]
    frows += [(f"QEMU {g} {n}", summ[qkey(g, n)]["best"]) for g in gens for n in qvars if qkey(g, n) in summ]
    frows += [(f"iperf3 -P {iv['streams']}", summ[f"iperf3:{n}"]["best"])
              for n, iv in ivars.items() if f"iperf3:{n}" in summ]
    if frows:
        def kilo(x):
            return f2(x / 1000 if isinstance(x, (int, float)) else None, ".1f")

        print()
        print(f"{'page faults (best run), thousands':{w}} {'minor src':>10} {'dst':>8} {'major src':>10} "
              f"{'dst':>6}")
        for name, m in frows:
            print(f"{name:{w}} {kilo(m.get('minflt_src')):>10} {kilo(m.get('minflt_dst')):>8} "
                  f"{kilo(m.get('majflt_src')):>10} {kilo(m.get('majflt_dst')):>6}")
        print(f"Touching all of guest RAM once with 4 KiB pages = {size // 4096 / 1000:.1f} thousand minor faults.")

        # Memory discipline (issue 13): the migration phase only, per GiB of guest RAM.
        print()
        print(f"{'migration phase (best run)':{w}} {'faults/GiB src':>14} {'dst':>8} {'RSS growth src':>15} "
              f"{'peak RSS src':>13} {'dst':>7} {'CPU s/GiB src':>14} {'dst':>6}")
        for name, m in frows:
            if name.startswith("iperf3"):
                continue

            def per_gib(x):
                return f2(x / gib if isinstance(x, (int, float)) else None, ".0f")
            print(f"{name:{w}} {per_gib(m.get('mig_minflt_src')):>14} {per_gib(m.get('mig_minflt_dst')):>8} "
                  f"{f2(m.get('mig_rss_growth_mib_src'), '.0f') + ' MiB':>15} "
                  f"{f2(m.get('peak_rss_mib_src'), '.0f'):>13} {f2(m.get('peak_rss_mib_dst'), '.0f'):>7} "
                  f"{f2(m.get('mig_cpu_s_per_gib_src'), '.3f'):>14} {f2(m.get('mig_cpu_s_per_gib_dst'), '.3f'):>6}")
        print("ferry: --json \"resources\" (getrusage deltas, VmHWM); QEMU: /proc/PID/stat minflt and utime+stime "
              "from migrate to completed, VmHWM; CPU s/GiB here is the migration only on both (the main table's "
              "ferry CPU is the whole process: start-up, mapping, recv --prealloc); RSS growth = peak - RSS at start (ferry), VmRSS after - before (QEMU). "
              "Targets: source 0 faults for never-populated pages (<= 1 per 2 MiB populated + a constant), "
              "RSS growth <= 64 MiB.")
    fc = res.get("fault_cost")
    if fc:
        print(f"Page fault cost on this machine, same run: 4 KiB {fc['4k']['us_per_fault']:.2f} us "
              f"({fc['4k']['faults']} faults), 2 MiB THP {fc['2m']['us_per_fault']:.1f} us "
              f"({fc['2m']['faults']} faults) over {fmt_size(fc['4k']['bytes'])}.")

    # Bytes on the wire and compression (best run).
    wrows = [(f"ferry {n}", summ[f"ferry:{n}"]["best"]) for n in fvars if f"ferry:{n}" in summ]
    wrows += [(f"QEMU {g} {n}", summ[qkey(g, n)]["best"]) for g in gens for n in qvars if qkey(g, n) in summ]
    if wrows:
        def mib(x):
            return f2(x / MIB if isinstance(x, (int, float)) else None, ".1f")

        def ratio(a, b):
            return f"{a / b:.2f}x" if isinstance(a, (int, float)) and b else "-"

        print()
        print(f"{'bytes on the wire (best run)':{w}} {'full pages':>10} {'wire':>10} {'multifd':>10} "
              f"{'pages/wire':>10} {'IP out':>10} {'pages/IP':>9}")
        for name, m in wrows:
            wire, normal, lo = m.get("wire_bytes"), m.get("normal_bytes"), m.get("lo_bytes")
            print(f"{name:{w}} {mib(normal):>10} {mib(wire):>10} {mib(m.get('multifd_bytes')):>10} "
                  f"{ratio(normal, wire):>10} {mib(lo):>10} {ratio(normal, lo):>9}")
        print("MiB. full pages = ram.normal-bytes; wire = ram.transferred (multifd bytes included) and "
              "multifd = the multifd\nchannels' share, both from the tool's JSON / query-migrate "
              "(QEMU 7.2 counts multifd pages before\ncompression); IP out = IpExt OutOctets during "
              "the transfer, TCP/IP headers included, "
              + ("counted in\nthis run's own network namespace (--netns);" if args.netns else
                 "host-wide:\nother loopback traffic meanwhile counts too (--netns avoids that);")
              + "\npages/... = compression ratio (about 1.0x without compression).")

    print()
    if any(k.startswith("ferry:") and "/" in k for k in ratios):
        print("Ratios (best run; median in parentheses):")
    lines = []
    for name in fvars:
        for key, r in ratios.items():
            if not key.startswith(f"ferry:{name}/"):
                continue
            other = key.split("/", 1)[1]
            if other.startswith("qemu-"):
                gen, qname = other[5:].split(":", 1)
                label = f"ferry {name} / QEMU {gen} {qname} (GiB/s of guest RAM)"
                unit = "x"
            else:
                iv = ivars[other[7:]]
                label = f"ferry {name} {dlabel} GiB/s / iperf3 -P {iv['streams']} GiB/s"
                unit = ""
            line = f" {r['best']:6.2f}{unit} ({r['median']:.2f}{unit})"
            if r.get("target") is not None:
                line += (f"   target >= {r['target']:g}{unit}  "
                         f"[{'met' if r['best'] >= r['target'] else 'NOT met'}]")
            lines.append((label + ":", line))
    lw = max([58] + [len(label) for label, _ in lines])
    for label, line in lines:
        print(f"{label:{lw}}{line}")
    if "ferry_rss_limit_mib" in ratios:
        lim = ratios["ferry_rss_limit_mib"]
        for name in fvars:
            runs = res["runs"].get(f"ferry:{name}")
            if not runs:
                continue
            mx = (max(x["peak_rss_mib_src"] for x in runs), max(x["peak_rss_mib_dst"] for x in runs))
            print(f"ferry {name} peak RSS (worst run) send {mx[0]:.0f} MiB, recv {mx[1]:.0f} MiB; "
                  f"target each <= RAM + 1% + 64 MiB = {lim:.0f} MiB  "
                  f"[{'met' if max(mx) <= lim else 'NOT met'}]; recv verified: "
                  f"{[x.get('verified') for x in runs]}")
    for k, e in errors.items():
        print(f"\n{k} FAILED: {e}")


# --------------------------------------------------------------------------

def check_memory(args, size, pattern):
    need_shm = 0 if (os.path.exists(pattern) and os.path.getsize(pattern) == size) else size
    st = os.statvfs("/dev/shm")
    shm_avail = st.f_bavail * st.f_frsize
    if need_shm and shm_avail < need_shm + 64 * MIB:
        raise UsageError(f"/dev/shm has {shm_avail / GIB:.1f} GiB free, need "
                         f"{(need_shm + 64 * MIB) / GIB:.1f} GiB for the pattern file")
    # Peak memory besides the pattern file: QEMU's destination up to 1x size, its
    # source 1x (private), 2x (loader: guest RAM plus the loader's copy) or 0
    # (shared: maps the pattern file); ferry's receiver ~1x (its sender maps the
    # pattern file itself).
    peak = 0
    if not args.skip_qemu:
        peak = max(peak, {"private": 2, "loader": 3, "shared": 1}[args.qemu_ram] * size)
    if not args.skip_ferry:
        peak = max(peak, size)
    avail = meminfo_kib("MemAvailable") * 1024
    need = need_shm + peak + 512 * MIB
    if avail < need:
        raise UsageError(f"MemAvailable is {avail / GIB:.1f} GiB, this run needs about "
                         f"{need / GIB:.1f} GiB (pattern file {need_shm / GIB:.1f} + processes "
                         f"{peak / GIB:.1f} + 0.5 slack); use a smaller --size or --skip-qemu")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("4G"),
                    help="guest RAM size, K/M/G/T = powers of 1024 (default 4G)")
    ap.add_argument("--ferry", default=os.path.join(REPO_ROOT, "build", "cli", "ferry"),
                    help="ferry binary (default: build/cli/ferry under the repo root)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; best and median reported")
    ap.add_argument("--layout", choices=("halves", "interleave"), default="halves",
                    help="halves: first half random, second half zero (default); "
                         "interleave: alternating 2 MiB random / zero chunks")
    ap.add_argument("--qemu-ram", choices=("private", "shared", "loader"), default="private",
                    help="how QEMU's source guest RAM gets the pattern: private (default): "
                         "memory-backend-file share=off prealloc=on, a resident anonymous copy; "
                         "shared: memory-backend-file share=on, maps the file like ferry send; "
                         "loader: -device loader,force-raw=on (QEMU 7.2 reads at most "
                         "2 GiB - 4 KiB, so only for --size < 2G; keeps a 2nd copy)")
    ap.add_argument("--dst-prealloc", action=argparse.BooleanOptionalAction, default=True,
                    help="fault in both destinations' RAM before the migration (ferry recv --prealloc, "
                         "QEMU memory-backend-ram prealloc=on); this VM pays dearly for first touches")
    ap.add_argument("--preset", choices=sorted(PRESETS),
                    help="default variant lists: issue2 (the default) = --ferry-variants tcp1,tcp1-noverify "
                         "--qemu-variants single --iperf-variants p1; issue3 (multifd) = --ferry-variants "
                         "tcp1,mfd2,mfd4,mfd2-zstd --qemu-variants single,mfd2 --iperf-variants p1,p2; "
                         "an explicit --*-variants wins")
    ap.add_argument("--ferry-variants", metavar="A,B,...",
                    help="ferry variants to run (default tcp1,tcp1-noverify): " + FERRY_VARIANT_HELP)
    ap.add_argument("--qemu-variants", metavar="A,B,...",
                    help="QEMU variants (default single): single, mfdN (multifd, N channels), mfdN-zstd")
    ap.add_argument("--iperf-variants", metavar="A,B,...",
                    help="iperf3 variants (default p1): pN = iperf3 -P N")
    ap.add_argument("--content", choices=("halves", "text"), default="halves",
                    help="halves (default): random + zero pages per --layout; text: every page "
                         "text-like and compressible (to compare multifd-compression=zstd with none)")
    ap.add_argument("--ferry-send-arg", action="append", default=[],
                    help="extra argument for ferry send, every variant (repeat), e.g. "
                         "--ferry-send-arg=-p --ferry-send-arg=downtime-limit=500")
    ap.add_argument("--ferry-recv-arg", action="append", default=[],
                    help="extra argument for ferry recv, every variant (repeat)")
    ap.add_argument("--skip-ferry", action="store_true")
    ap.add_argument("--skip-iperf", action="store_true")
    ap.add_argument("--netns", action="store_true",
                    help="run every tool in a private network namespace (root; unshare, nsenter, ip), "
                         "so 'IP out' counts only the measured transfer, not other loopback traffic")
    ap.add_argument("--keep-files", action="store_true",
                    help="keep the /dev/shm pattern file and the per-run logs (reused next time)")
    ap.add_argument("--timeout", type=float, default=600, help="per-migration timeout, s (default 600)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait before each measured transfer (default 0)")
    add_qemu_options(ap)
    ap.add_argument("--iperf3", default="iperf3")
    ap.add_argument("--results-dir", default=os.path.join(PERF_DIR, "results"))
    ap.add_argument("--guest", choices=("shmem", "anon", "sparse"), default="shmem",
                    help="shmem (default): the pattern file in /dev/shm, ferry send --memory-file, QEMU per "
                         "--qemu-ram; anon: anonymous guest RAM, nothing prefaulted on either side, half of it "
                         "random data (ferry: --ram --fill random=50,zero=50 --layout runs; QEMU: default RAM, "
                         "-device loader writing the random half), the rest never touched; sparse: as anon "
                         "with only --touched bytes of data (use --size 16G)")
    ap.add_argument("--touched", type=parse_size, default=parse_size("1G"),
                    help="--guest sparse: bytes of guest RAM holding data (default 1G)")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    if args.qemu_ram == "loader" and args.size > 0x7ffff000 and not args.skip_qemu and args.guest == "shmem":
        ap.error("--qemu-ram loader: QEMU 7.2's loader reads the file with a single read(), "
                 "which Linux caps at 2 GiB - 4 KiB; use --size 1G or --qemu-ram private")
    qemus, qemu_missing = resolve_qemus(args)
    if not qemus:
        args.skip_qemu = True

    preset = PRESETS[args.preset or DEFAULT_PRESET]
    fvars = [] if args.skip_ferry else parse_variant_list(
        args.ferry_variants or preset["ferry"], parse_ferry_variant, "ferry")
    qvars = [] if args.skip_qemu else parse_variant_list(
        args.qemu_variants or preset["qemu"], parse_qemu_variant, "qemu")
    ivars = [] if args.skip_iperf else parse_variant_list(
        args.iperf_variants or preset["iperf"], parse_iperf_variant, "iperf")
    size = args.size
    if args.guest != "shmem" and args.content != "halves":
        ap.error("--guest anon/sparse: only --content halves (random data)")
    data_bytes = guest_touched(args, size) if args.guest != "shmem" else (
        size if args.content == "text" else size // 2)
    for tool, skip in ((args.iperf3, args.skip_iperf), ("/usr/bin/time", False)):
        if not skip and not shutil.which(tool):
            raise UsageError(f"{tool} not found")
    if not args.skip_ferry:
        args.ferry = os.path.abspath(args.ferry)
        if not (os.path.isfile(args.ferry) and os.access(args.ferry, os.X_OK)):
            raise UsageError(f"ferry binary {args.ferry} not found or not executable "
                             f"(build it with perf/run.sh, pass --ferry PATH, or use --skip-ferry)")

    pattern = f"/dev/shm/ferry-e2e-{size // MIB}M-" \
              f"{'text' if args.content == 'text' else args.layout}.pattern"
    need_pattern = not (args.skip_ferry and args.skip_qemu) and args.guest == "shmem"
    if need_pattern:
        check_memory(args, size, pattern)
    args.random_pieces = []
    if args.guest != "shmem" and not args.skip_qemu:
        touched = guest_touched(args, size)
        avail = meminfo_kib("MemAvailable") * 1024
        need = touched + size + 512 * MIB   # the pieces + the larger of the processes' RAM
        if avail < need:
            raise UsageError(f"MemAvailable is {avail / GIB:.1f} GiB, --guest {args.guest} needs about "
                             f"{need / GIB:.1f} GiB")

    workdir = tempfile.mkdtemp(prefix="ferry-e2e-")
    if not args.keep_files:
        RES.dirs.append(workdir)
    if args.netns:
        start_netns(workdir)
    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    res = {
        "timestamp": ts,
        "host": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": os.uname().release,
                 "mem_total_kib": meminfo_kib("MemTotal")},
        "config": {"size_bytes": size, "content": args.content, "data_bytes": data_bytes,
                   "layout": args.layout if args.content == "halves" else None,
                   "repeat": args.repeat, "settle_s": args.settle, "dst_prealloc": args.dst_prealloc,
                   "netns": args.netns,
                   "ferry_send_arg": args.ferry_send_arg, "ferry_recv_arg": args.ferry_recv_arg,
                   "ferry": None if args.skip_ferry else args.ferry,
                   "qemu": {q["gen"]: {k: q[k] for k in ("bin", "datadir", "version")} for q in qemus},
                   "qemu_missing": qemu_missing,
                   "iperf3": None if args.skip_iperf else args.iperf3,
                   "pattern_file": pattern if need_pattern else None,
                   "qemu_max_bandwidth": QEMU_MAX_BANDWIDTH, "qemu_ram": args.qemu_ram},
        "variants": {"ferry": {v["name"]: v for v in fvars}, "qemu": {v["name"]: v for v in qvars},
                     "iperf3": {v["name"]: v for v in ivars}},
        "runs": {}, "summary": {}, "ratios": {}, "errors": {},
    }
    if need_pattern:
        RES.files.append(pattern)
        res["pattern_create_s"] = make_pattern(pattern, size, args.layout, args.content)
    if args.guest != "shmem" and not args.skip_qemu:
        prefix = f"/dev/shm/ferry-e2e-random-{guest_touched(args, size) // MIB}M"
        args.random_pieces = make_random_pieces(prefix, guest_touched(args, size))
        RES.files.extend(args.random_pieces)
        pattern = None
    res["config"]["guest"] = args.guest
    res["config"]["touched_bytes"] = guest_touched(args, size)
    log("measuring this machine's page fault cost (1 GiB, 4 KiB pages, then 2 MiB THP)")
    res["fault_cost"] = measure_fault_costs()

    plan = []
    for v in fvars:
        plan.append((f"ferry:{v['name']}", lambda i, v=v: run_ferry(args, v, pattern, size, workdir, i)))
    for q in qemus:
        for v in qvars:
            plan.append((qkey(q["gen"], v["name"]),
                         lambda i, q=q, v=v: run_qemu(args, q, v, pattern, size, workdir, i)))
    for v in ivars:
        plan.append((f"iperf3:{v['name']}", lambda i, v=v: run_iperf(args, v, size // 2, workdir, i)))

    # Rounds interleave the tools so that drift on the machine hits all alike.
    for i in range(args.repeat):
        for name, fn in plan:
            if name in res["errors"]:
                continue
            log(f"round {i + 1}/{args.repeat}: {name}")
            try:
                r = fn(i)
            except (BenchError, OSError, ValueError, KeyError, TypeError) as e:
                if not isinstance(e, BenchError):
                    e = BenchError(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
                res["errors"][name] = str(e)
                print(f"\n[e2e] ERROR: {name} failed:\n{e}\n", file=sys.stderr, flush=True)
                continue
            res["runs"].setdefault(name, []).append(r)
            log(f"  {name}: {r['time_s']:.3f} s")

    for name, _ in plan:
        s = summarize(res["runs"].get(name, []))
        if s:
            res["summary"][name] = s
    compute_ratios(res, size, data_bytes)

    print_report(res, size, args)

    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, f"e2e-{ts}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(f"\nresults: {out}")
    if args.keep_files:
        print(f"kept: {pattern if need_pattern else ''} {workdir}")
    return 1 if res["errors"] else 0


def run_main(main_fn, prog):
    """Runs main_fn() with the benchmarks' signal handling, exit codes and
    cleanup (every child stopped; files removed unless --keep-files)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, _signal_to_interrupt)
    signal.signal(signal.SIGHUP, _signal_to_interrupt)
    rc = 130
    try:
        rc = main_fn()
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        rc = 2
    except BenchError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted, cleaning up", file=sys.stderr)
        rc = 130
    finally:
        # Ignore further signals while tearing down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        keep = set()
        if "--keep-files" in sys.argv[1:]:
            keep = {f for f in RES.files if not f.endswith(".tmp")}
        RES.cleanup(keep=keep)
    sys.exit(rc)


if __name__ == "__main__":
    run_main(main, "e2e.py")
