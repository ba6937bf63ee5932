#!/usr/bin/env python3
"""File benchmark: ferry save/load (mapped-ram + multifd + direct-io) against
fio, QEMU 7.2's `migrate "exec:cat > F"` and QEMU 10.0's exec:cat and
`migrate file:F` with mapped-ram, all in one run on this machine.

Workload: an idle guest of --size bytes (default 4 GiB) held in a pattern file
in /dev/shm, half random and half zero (--layout halves: first half random;
interleave: alternating 2 MiB chunks), shared with perf/e2e.py.

Per repetition, in this order:
  - fio: sequential O_DIRECT write of as many bytes as ferry writes (the
    guest's non-zero pages), 1 MiB blocks, io_uring, iodepth 8, end_fsync;
  - for each variant (default mfd2, mfd4): `ferry save --memory-file PATTERN
    -c mapped-ram=on -c multifd=on -p multifd-channels=N -p direct-io=on`,
    then `ferry load` of that file (digest-verified) into fresh memory;
  - fio: sequential O_DIRECT read of its file, same parameters;
  - for each QEMU generation found (--qemu: 7.2, --qemu10 ROOT: 10.0) and
    each --qemu-variants entry it supports (-M none, RAM = a private
    prealloc'd copy of the pattern, as perf/e2e.py does):
      cat:            `migrate "exec:cat > F"` (7.2 and 10.0);
      mr:             capability mapped-ram, `migrate file:F` (10.0 only);
      mr-mfdN[-dio]:  capabilities mapped-ram + multifd, multifd-channels N
                      (-dio: direct-io on), `migrate file:F` (10.0 only);
    then fdatasync of F timed separately and F dropped from the page cache;
    then the load: a fresh QEMU of the same generation with -incoming defer,
    the same capabilities and parameters, `migrate-incoming` of "exec:cat F"
    (cat) or file:F (mapped-ram), timed until query-migrate says completed,
    and 16-byte spots of its RAM compared with the pattern (HMP xp).

Reported per tool: time, GiB/s of guest RAM, GiB/s of the bytes it wrote or
read, CPU seconds per GiB of guest RAM, peak RSS, minor and major page
faults, the file's size and its allocated size (du); and the ratios: ferry
save and load against fio's bandwidth for the bytes they move (same
repetition), ferry save and load against every QEMU save and load. Best and
median over --repeat.

ferry's time is its query-migrate total-time plus the fdatasync after it
(sync-time); QEMU's is total-time, which ends before cat's data reaches the
disk (exec:cat writes through the page cache), so QEMU is also shown with
its fdatasync added. QEMU's CPU and faults are the QEMU process's from
`migrate` / `migrate-incoming` to completed (cat is not counted).

This prints numbers; it is not a test. Exit status: 0 if everything ran, 1 if
a tool failed, 2 on bad usage, 130 on Ctrl-C. Python standard library only;
needs fio and /usr/bin/time; a QEMU that is not found is reported and skipped.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (shared helpers: pattern file, QMP, process control)
from e2e import GIB, MIB, RES, BenchError, UsageError, log, qkey  # noqa: E402

e2e.LOG_TAG = "file"
FIO_BS = "1M"
FIO_DEPTH = 8


def parse_variant(name):
    """mfdN[-noverify]: N file threads; -noverify saves without the digest section."""
    base, _, mod = name.partition("-")
    if not base.startswith("mfd") or not base[3:].isdigit() or int(base[3:]) < 1:
        raise UsageError(f"unknown variant '{name}' (expected mfdN or mfdN-noverify)")
    if mod not in ("", "noverify"):
        raise UsageError(f"unknown variant modifier '-{mod}' in '{name}'")
    opts = ["-c", "mapped-ram=on", "-c", "multifd=on", "-p", f"multifd-channels={int(base[3:])}",
            "-p", "direct-io=on"]
    if mod == "noverify":
        opts += ["-c", "verify=off"]
    return {"name": name, "channels": int(base[3:]), "opts": opts}


QEMU_VARIANT_HELP = ("cat (migrate \"exec:cat > F\"; every QEMU), mr (capability mapped-ram, migrate file:F; "
                     "QEMU 10.0), mr-mfdN (mapped-ram + multifd, multifd-channels N), mr-mfdN-dio (and "
                     "direct-io on; QEMU ignores direct-io without multifd)")


def parse_qemu_variant(name):
    """cat | mr | mr-mfdN[-dio]: how QEMU saves (and loads) the file."""
    if name == "cat":
        return {"name": name, "label": "exec:cat", "mapped_ram": False, "caps": [], "params": {}}
    m = re.fullmatch(r"mr(?:-mfd(\d+)(-dio)?)?", name)
    if not m or (m.group(1) is not None and not 1 <= int(m.group(1)) <= 255):
        raise UsageError(f"unknown QEMU variant {name!r}: {QEMU_VARIANT_HELP}")
    caps, params, label = ["mapped-ram"], {}, "file: mapped-ram"
    if m.group(1):
        caps.append("multifd")
        params["multifd-channels"] = int(m.group(1))
        label += f" mfd{int(m.group(1))}"
        if m.group(2):
            params["direct-io"] = True
            label += " direct-io"
    return {"name": name, "label": label, "mapped_ram": True, "caps": caps, "params": params}


def qemu_supports(gen, qv):
    """QEMU 7.2 has no mapped-ram (added in QEMU 9.0)."""
    return not qv["mapped_ram"] or gen != "7.2"


def drop_cache(path):
    """Write back and drop path's pages from the page cache, so a load reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def allocated_bytes(path):
    st = os.stat(path)
    return st.st_blocks * 512, st.st_size


def run_timed(argv, d, tag, timeout):
    """Runs argv under GNU time; returns (stdout text, time dict)."""
    tf = os.path.join(d, f"{tag}.time")
    out, err = os.path.join(d, f"{tag}.out"), os.path.join(d, f"{tag}.err")
    p = RES.spawn(e2e.wrap_time(tf, argv), out, err)
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        RES.stop(p)
        raise BenchError(f"{tag}: no result after {timeout} s")
    RES.stop(p)
    if p.returncode != 0:
        raise BenchError(f"{tag} exited with status {p.returncode}:\n{e2e.read_text(err, 3000)}")
    t = e2e.parse_time_file(tf)
    if t is None:
        raise BenchError(f"{tag}: no GNU time output in {tf}")
    return e2e.read_text(out), t


def ferry_json(text, tag):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    # --json prints one object, possibly over several lines.
    try:
        return json.loads(text)
    except ValueError:
        raise BenchError(f"{tag}: no JSON result in its output:\n{text[-2000:]}")


def run_ferry_save(args, v, pattern, size, path, d, i):
    if os.path.exists(path):
        os.unlink(path)
    argv = [args.ferry, "save", "--memory-file", pattern, "--json", *v["opts"], path]
    out, t = run_timed(argv, d, f"save-{v['name']}-{i}", args.timeout)
    j = ferry_json(out, "ferry save")
    if j.get("status") != "completed":
        raise BenchError(f"ferry save: status {j.get('status')}: {j.get('error')}")
    alloc, fsize = allocated_bytes(path)
    total = (j["total-time"] + j.get("sync-time", 0)) / 1000.0
    data = j["ram"]["normal-bytes"]
    gib = size / GIB
    return {"time_s": total, "migration_s": j["total-time"] / 1000.0, "sync_s": j.get("sync-time", 0) / 1000.0,
            "data_bytes": data, "cpu_s_per_gib": t["cpu_s"] / gib, "user_s": t["user_s"], "sys_s": t["sys_s"],
            "peak_rss_mib": t["max_rss_mib"], "minflt": t["minflt"], "majflt": t["majflt"],
            "file_bytes": fsize, "allocated_bytes": alloc, "wall_s": t["elapsed_s"], "argv": argv}


def run_ferry_load(args, v, size, path, d, i):
    opts = [o for o in v["opts"]]
    argv = [args.ferry, "load", "--json", *opts, path]
    if args.load_prealloc:
        argv.insert(2, "--prealloc")
    out, t = run_timed(argv, d, f"load-{v['name']}-{i}", args.timeout)
    j = ferry_json(out, "ferry load")
    if j.get("status") != "completed":
        raise BenchError(f"ferry load: status {j.get('status')}: {j.get('error')}")
    if "noverify" not in v["name"] and not j.get("verified"):
        raise BenchError("ferry load completed without a verified digest")
    gib = size / GIB
    return {"time_s": j["total-time"] / 1000.0, "data_bytes": j["ram"]["normal-bytes"],
            "verified": j.get("verified"), "cpu_s_per_gib": t["cpu_s"] / gib, "user_s": t["user_s"],
            "sys_s": t["sys_s"], "peak_rss_mib": t["max_rss_mib"], "minflt": t["minflt"], "majflt": t["majflt"],
            "wall_s": t["elapsed_s"], "argv": argv}


def run_fio(args, rw, path, nbytes, d, i):
    argv = [args.fio, f"--name=ferry-{rw}", f"--filename={path}", f"--rw={rw}", f"--bs={FIO_BS}",
            f"--iodepth={FIO_DEPTH}", "--ioengine=io_uring", "--direct=1", f"--size={nbytes}",
            "--output-format=json"]
    if rw == "write":
        argv.append("--end_fsync=1")
        if os.path.exists(path):
            os.unlink(path)
    out, t = run_timed(argv, d, f"fio-{rw}-{i}", args.timeout)
    try:
        j = json.loads(out[out.index("{"):])
        job = j["jobs"][0]
        side = job[rw if rw == "write" else "read"]
        runtime_s = side["runtime"] / 1000.0
        bw = side["bw_bytes"]
        moved = side["io_bytes"]
    except (ValueError, KeyError, IndexError) as e:
        raise BenchError(f"fio {rw}: unexpected output ({e}):\n{out[-2000:]}")
    if moved < nbytes:
        raise BenchError(f"fio {rw} moved {moved} bytes, wanted {nbytes}")
    # fio's runtime is the I/O phase; wall adds its start-up and file layout.
    return {"time_s": moved / bw, "bytes": moved, "bw_bytes_s": bw, "cpu_s": t["cpu_s"],
            "cpu_s_per_gib_moved": t["cpu_s"] / (moved / GIB), "wall_s": t["elapsed_s"],
            "peak_rss_mib": t["max_rss_mib"], "minflt": t["minflt"], "majflt": t["majflt"],
            "runtime_s": runtime_s, "argv": argv}


def qemu_configure(q, qv):
    """The variant's capabilities and parameters (both ends, before migrate / migrate-incoming)."""
    if qv["caps"]:
        q.execute("migrate-set-capabilities",
                  {"capabilities": [{"capability": c, "state": True} for c in qv["caps"]]})
    if qv["params"]:
        q.execute("migrate-set-parameters", qv["params"])


def qemu_wait(q, t0, timeout, what, poll=0.01):
    """Polls query-migrate until completed; returns (info, monotonic time when seen)."""
    while True:
        info = q.execute("query-migrate")
        st = info.get("status")
        if st == "completed":
            return info, time.monotonic()
        if st in ("failed", "cancelled"):
            raise BenchError(f"{what}: migration {st}: {info.get('error-desc', info)}")
        if time.monotonic() - t0 > timeout:
            raise BenchError(f"{what}: migration not completed after {timeout} s: {info}")
        time.sleep(poll)


def start_qemu(args, qemu, extra, qd, name, what):
    sock = os.path.join(qd, f"{name}.qmp")
    cmd = e2e.qemu_argv(qemu) + ["-accel", "tcg", "-nodefaults", "-nographic", "-display", "none", "-S",
                                 "-qmp", f"unix:{sock},server=on,wait=off"] + extra
    p = RES.spawn(cmd, os.path.join(qd, f"{name}.out"), os.path.join(qd, f"{name}.err"))
    try:
        q = e2e.QMP(sock, args.timeout, p)
    except BenchError as e:
        RES.stop(p)
        raise BenchError(f"{what}: QEMU failed to start ({e}):\n"
                         f"{e2e.read_text(os.path.join(qd, name + '.err'), 2000)}")
    return p, q, cmd


def stop_qemu(p, q):
    if q:
        try:
            q.execute("quit")
        except (BenchError, OSError):
            pass
        q.close()
    RES.stop(p, grace=10)


def run_qemu_save(args, qemu, qv, pattern, size, path, d, i):
    if os.path.exists(path):
        os.unlink(path)
    what = f"QEMU {qemu['gen']} save {qv['label']}"
    qd = os.path.join(d, f"qemu-{qemu['gen']}-{qv['name']}-save-{i}")
    os.mkdir(qd)
    mem = f"{size // MIB}M"
    p, q, cmd = start_qemu(args, qemu, [
        "-M", "none,memory-backend=ram", "-m", mem,
        "-object", f"memory-backend-file,id=ram,size={mem},mem-path={pattern},share=off,prealloc=on,"
                   f"prealloc-threads={os.cpu_count() or 1}"], qd, "src", what)
    try:
        qemu_configure(q, qv)
        q.execute("migrate-set-parameters", {"max-bandwidth": e2e.QEMU_MAX_BANDWIDTH})
        uri = f"file:{path}" if qv["mapped_ram"] else f"exec:cat > {path}"
        c0, f0 = e2e.proc_cpu_s(p.pid), e2e.proc_faults(p.pid)
        t0 = time.monotonic()
        q.execute("migrate", {"uri": uri})
        info, _ = qemu_wait(q, t0, args.timeout, what)
        c1, f1 = e2e.proc_cpu_s(p.pid), e2e.proc_faults(p.pid)
        hwm = e2e.proc_status_kib(p.pid, "VmHWM") / 1024.0
    except BenchError as e:
        raise BenchError(f"{e}\n{e2e.read_text(os.path.join(qd, 'src.err'), 2000)}")
    finally:
        stop_qemu(p, q)
    # exec:cat: cat has exited with QEMU's migration, but its data may still be in the
    # page cache; mapped-ram without direct-io writes through the page cache too.
    ts = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    sync_s = time.monotonic() - ts
    drop_cache(path)   # the load must read the disk, as ferry load (O_DIRECT) does
    alloc, fsize = allocated_bytes(path)
    total = info["total-time"] / 1000.0
    cpu = (c1[0] - c0[0]) + (c1[1] - c0[1])
    return {"time_s": total, "time_with_sync_s": total + sync_s, "sync_s": sync_s,
            "data_bytes": (info.get("ram") or {}).get("normal-bytes"), "cpu_s_per_gib": cpu / (size / GIB),
            "user_s": c1[0] - c0[0], "sys_s": c1[1] - c0[1],
            "peak_rss_mib": hwm, "minflt": f1[0] - f0[0], "majflt": f1[1] - f0[1],
            "file_bytes": fsize, "allocated_bytes": alloc, "uri": uri, "caps": qv["caps"], "params": qv["params"],
            "qemu_version": qemu.get("version"), "query_migrate": info, "argv": cmd}


def run_qemu_load(args, qemu, qv, pattern, size, path, data_bytes, d, i):
    what = f"QEMU {qemu['gen']} load {qv['label']}"
    qd = os.path.join(d, f"qemu-{qemu['gen']}-{qv['name']}-load-{i}")
    os.mkdir(qd)
    mem = f"{size // MIB}M"
    # Plain -m RAM (fresh memory, as ferry load's), or prealloc'd like ferry load --prealloc.
    ram = (["-M", "none,memory-backend=ram", "-m", mem,
            "-object", f"memory-backend-ram,id=ram,size={mem},prealloc=on"] if args.load_prealloc
           else ["-M", "none", "-m", mem])
    p, q, cmd = start_qemu(args, qemu, ram + ["-incoming", "defer"], qd, "dst", what)
    try:
        qemu_configure(q, qv)
        uri = f"file:{path}" if qv["mapped_ram"] else f"exec:cat {path}"
        c0, f0 = e2e.proc_cpu_s(p.pid), e2e.proc_faults(p.pid)
        t0 = time.monotonic()
        q.execute("migrate-incoming", {"uri": uri})
        info, t1 = qemu_wait(q, t0, args.timeout, what, poll=0.005)
        c1, f1 = e2e.proc_cpu_s(p.pid), e2e.proc_faults(p.pid)
        hwm = e2e.proc_status_kib(p.pid, "VmHWM") / 1024.0
        bad = e2e.qemu_spot_check(q, pattern, size)
        if bad:
            raise BenchError(f"{what}: RAM differs from the pattern file at {len(bad)} spot(s), first: {bad[0]}")
    except BenchError as e:
        raise BenchError(f"{e}\n{e2e.read_text(os.path.join(qd, 'dst.err'), 2000)}")
    finally:
        stop_qemu(p, q)
    cpu = (c1[0] - c0[0]) + (c1[1] - c0[1])
    return {"time_s": t1 - t0, "data_bytes": data_bytes, "cpu_s_per_gib": cpu / (size / GIB),
            "user_s": c1[0] - c0[0], "sys_s": c1[1] - c0[1],
            "peak_rss_mib": hwm, "minflt": f1[0] - f0[0], "majflt": f1[1] - f0[1], "uri": uri,
            "spot_check": "ok", "qemu_version": qemu.get("version"), "argv": cmd}


def summarize(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"best": min(values), "median": statistics.median(values), "n": len(values)}


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=e2e.parse_size, default=e2e.parse_size("4G"), help="guest RAM (default 4G)")
    ap.add_argument("--layout", choices=("halves", "interleave"), default="halves",
                    help="where the random half lies (default halves: the first half)")
    ap.add_argument("--variants", default="mfd2,mfd4", help="ferry variants: mfdN[-noverify] (default mfd2,mfd4)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions (default 3); best and median reported")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed save+load rounds first (default 1): fresh memory and page cache pages cost "
                         "extra on their first use in a VM")
    ap.add_argument("--dir", default="/var/tmp", help="where the files go (a real filesystem; default /var/tmp)")
    ap.add_argument("--load-prealloc", action="store_true",
                    help="ferry load --prealloc (fault memory in first); QEMU loads into prealloc'd "
                         "memory-backend-ram then")
    ap.add_argument("--qemu-variants", default="cat,mr,mr-mfd2,mr-mfd2-dio",
                    help="QEMU saves/loads (default cat,mr,mr-mfd2,mr-mfd2-dio; mr* only with QEMU 10.0): "
                         + QEMU_VARIANT_HELP)
    ap.add_argument("--skip-qemu-load", action="store_true", help="QEMU saves only, no QEMU loads")
    ap.add_argument("--skip-fio", action="store_true")
    ap.add_argument("--ferry", default=os.path.join(e2e.REPO_ROOT, "build", "cli", "ferry"))
    ap.add_argument("--fio", default="fio")
    e2e.add_qemu_options(ap)
    ap.add_argument("--timeout", type=float, default=600, help="per tool run, s (default 600)")
    ap.add_argument("--keep-files", action="store_true", help="keep the pattern file in /dev/shm")
    ap.add_argument("--results-dir", default=os.path.join(e2e.PERF_DIR, "results"))
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    variants = [parse_variant(n) for n in args.variants.split(",") if n]
    if not variants:
        ap.error("no variants")
    names = [n.strip() for n in args.qemu_variants.split(",") if n.strip()]
    if len(set(names)) != len(names):
        ap.error(f"--qemu-variants lists a variant twice: {args.qemu_variants!r}")
    qvars = [parse_qemu_variant(n) for n in names]
    for tool, skip in ((args.fio, args.skip_fio), ("/usr/bin/time", False)):
        if not skip and not shutil.which(tool):
            raise UsageError(f"{tool} not found (apt-get install fio time)")
    qemus, qemu_missing = e2e.resolve_qemus(args)
    if not qvars:
        qemus = []
    # (generation record, variant) pairs to run: QEMU 7.2 has no mapped-ram.
    qplan = [(q, v) for q in qemus for v in qvars if qemu_supports(q["gen"], v)]
    if not qplan:
        args.skip_qemu = True
    args.ferry = os.path.abspath(args.ferry)
    if not os.access(args.ferry, os.X_OK):
        raise UsageError(f"ferry binary {args.ferry} not found (build it: perf/run_file.sh does, or pass --ferry PATH)")
    size = args.size
    pattern = f"/dev/shm/ferry-e2e-{size // MIB}M-{args.layout}.pattern"
    need = (0 if os.path.exists(pattern) and os.path.getsize(pattern) == size else size) + \
        (size if not args.skip_qemu else size // 2) + 512 * MIB
    if e2e.meminfo_kib("MemAvailable") * 1024 < need:
        raise UsageError(f"needs about {need / GIB:.1f} GiB of available memory; use a smaller --size")
    st = os.statvfs(args.dir)
    if st.f_bavail * st.f_frsize < size + 512 * MIB:
        raise UsageError(f"{args.dir} has less than {(size + 512 * MIB) / GIB:.1f} GiB free")

    workdir = tempfile.mkdtemp(prefix="ferry-file-bench-", dir=args.dir)
    RES.dirs.append(workdir)
    logs = os.path.join(workdir, "logs")
    os.mkdir(logs)
    RES.files.append(pattern)
    e2e.make_pattern(pattern, size, args.layout)
    mig = os.path.join(workdir, "vm.mig")
    fio_file = os.path.join(workdir, "fio.dat")
    qemu_file = os.path.join(workdir, "qemu.mig")
    data_bytes = size // 2

    ts = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    res = {"timestamp": ts, "host": {"cpu": e2e.cpu_model(), "cpus": os.cpu_count(), "kernel": os.uname().release},
           "config": {"size_bytes": size, "layout": args.layout, "dir": args.dir, "repeat": args.repeat,
                      "warmup": args.warmup, "load_prealloc": args.load_prealloc, "fio_bs": FIO_BS,
                      "fio_iodepth": FIO_DEPTH, "variants": [v["name"] for v in variants],
                      "qemu": {q["gen"]: {k: q[k] for k in ("bin", "datadir", "version")} for q in qemus},
                      "qemu_missing": qemu_missing,
                      "qemu_variants": {v["name"]: {k: v[k] for k in ("label", "caps", "params")} for v in qvars},
                      "qemu_load": not args.skip_qemu_load},
           "runs": [], "errors": [], "qemu_errors": {}}

    for w in range(args.warmup):
        log(f"warm-up {w + 1}/{args.warmup}: ferry {variants[0]['name']} save + load (not counted)")
        run_ferry_save(args, variants[0], pattern, size, mig, logs, f"warm{w}")
        run_ferry_load(args, variants[0], size, mig, logs, f"warm{w}")

    failed = False
    for i in range(args.repeat):
        run = {"fio": {}, "ferry": {}, "qemu": {}}
        try:
            if not args.skip_fio:
                log(f"run {i + 1}/{args.repeat}: fio write {data_bytes / GIB:.2f} GiB")
                run["fio"]["write"] = run_fio(args, "write", fio_file, data_bytes, logs, i)
            for v in variants:
                log(f"run {i + 1}/{args.repeat}: ferry save {v['name']}")
                s = run_ferry_save(args, v, pattern, size, mig, logs, i)
                log(f"run {i + 1}/{args.repeat}: ferry load {v['name']}")
                drop_cache(mig)
                l = run_ferry_load(args, v, size, mig, logs, i)
                run["ferry"][v["name"]] = {"save": s, "load": l}
                os.unlink(mig)
            if not args.skip_fio:
                log(f"run {i + 1}/{args.repeat}: fio read")
                run["fio"]["read"] = run_fio(args, "read", fio_file, data_bytes, logs, i)
                os.unlink(fio_file)
            for q, qv in qplan:
                key = qkey(q["gen"], qv["name"])
                if key in res["qemu_errors"]:
                    continue   # failed in an earlier repetition
                rec = run["qemu"].setdefault(q["gen"], {}).setdefault(qv["name"], {"save": None, "load": None})
                try:
                    log(f"run {i + 1}/{args.repeat}: QEMU {q['gen']} save {qv['label']}")
                    rec["save"] = run_qemu_save(args, q, qv, pattern, size, qemu_file, logs, i)
                    if not args.skip_qemu_load:
                        log(f"run {i + 1}/{args.repeat}: QEMU {q['gen']} load {qv['label']}")
                        rec["load"] = run_qemu_load(args, q, qv, pattern, size, qemu_file,
                                                    rec["save"]["data_bytes"], logs, i)
                except BenchError as e:
                    log(f"run {i + 1}: {key} failed: {e}")
                    res["qemu_errors"][key] = str(e)
                    failed = True
                finally:
                    if os.path.exists(qemu_file):
                        os.unlink(qemu_file)
        except BenchError as e:
            log(f"run {i + 1} failed: {e}")
            res["errors"].append(str(e))
            failed = True
        res["runs"].append(run)
        if res["errors"]:
            break

    report(res, variants, qvars, size)
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, f"file-{ts}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nraw results: {out}")
    return 1 if failed else 0


def report(res, variants, qvars, size):
    runs = res["runs"]
    gib = size / GIB
    cfg = res["config"]
    print(f"\n== ferry file benchmark: {gib:.2f} GiB guest ({cfg['layout']}: half random, half zero), "
          f"{len(runs)} run(s), {res['host']['cpus']} CPUs, kernel {res['host']['kernel']}")
    for gen, q in cfg["qemu"].items():
        print(f"   QEMU {gen}: {' '.join(e2e.qemu_argv(q))} (version {q.get('version') or '?'})")
    for gen, why in cfg["qemu_missing"].items():
        print(f"   QEMU {gen}: not measured: {why}")
    print("   times: best / median. GiB/s of RAM = guest size / time; data GiB/s = bytes written or read / time.")
    rows = []

    def row(name, recs, data_key="data_bytes"):
        times = [r["time_s"] for r in recs if r]
        if not times:
            return
        t = summarize(times)
        data = next((r.get(data_key) for r in recs if r and r.get(data_key)), None)
        cpu = summarize([r.get("cpu_s_per_gib") for r in recs if r])
        rss = summarize([r.get("peak_rss_mib") for r in recs if r])
        minflt = summarize([r.get("minflt") for r in recs if r])
        majflt = summarize([r.get("majflt") for r in recs if r])
        alloc = next((r.get("allocated_bytes") for r in recs if r and r.get("allocated_bytes") is not None), None)
        rows.append((name, f"{t['best']:.3f} / {t['median']:.3f}", fmt(gib / t["best"]),
                     fmt(data / GIB / t["best"]) if data else "-", fmt(cpu["best"] if cpu else None),
                     fmt(rss["best"] if rss else None, ".0f"),
                     fmt(minflt["median"] / 1000 if minflt else None, ".1f"),
                     fmt(majflt["median"] if majflt else None, ".0f"),
                     f"{alloc / GIB:.2f} GiB" if alloc is not None else "-"))

    for v in variants:
        n = v["name"]
        row(f"ferry save {n}", [r["ferry"].get(n, {}).get("save") for r in runs])
        row(f"ferry load {n}", [r["ferry"].get(n, {}).get("load") for r in runs])
    if any(r["fio"].get("write") for r in runs):
        row("fio write", [r["fio"].get("write") for r in runs], data_key="bytes")
        row("fio read", [r["fio"].get("read") for r in runs], data_key="bytes")

    def qrecs(gen, name, side):
        return [((r["qemu"].get(gen) or {}).get(name) or {}).get(side) for r in runs]

    qrows = []   # (label, gen, variant name, side, with sync)
    for gen in cfg["qemu"]:
        for qv in qvars:
            if not qemu_supports(gen, qv):
                continue
            saves = qrecs(gen, qv["name"], "save")
            if not any(saves):
                if qkey(gen, qv["name"]) in res["qemu_errors"]:
                    rows.append((f"QEMU {gen} {qv['label']}: FAILED",) + ("-",) * 8)
                continue
            base = f"QEMU {gen} save {qv['label']}"
            row(base, saves)
            row(base + " + fdatasync", [dict(x, time_s=x["time_with_sync_s"]) if x else None for x in saves])
            row(f"QEMU {gen} load {qv['label']}", qrecs(gen, qv["name"], "load"))
            qrows += [(base, gen, qv["name"], "save", False), (base + " + fdatasync", gen, qv["name"], "save", True),
                      (f"QEMU {gen} load {qv['label']}", gen, qv["name"], "load", False)]
    hdr = ("tool", "time s", "GiB/s RAM", "data GiB/s", "CPU s/GiB", "peak RSS MiB", "minflt k", "majflt", "du")
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    for r in [hdr] + rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    fio_cpu = [r["fio"].get("write", {}).get("cpu_s_per_gib_moved") for r in runs if r["fio"].get("write")]
    if fio_cpu:
        print(f"  (fio CPU per GiB it moved: write {fmt(min(fio_cpu))}, read "
              f"{fmt(min(r['fio']['read']['cpu_s_per_gib_moved'] for r in runs if r['fio'].get('read')))})")
    print("  CPU s/GiB per GiB of guest RAM, best run; minflt k = minor page faults in thousands, majflt = major"
          " faults (median runs).\n  ferry, fio: the whole process (GNU time); QEMU: its process from migrate /"
          " migrate-incoming to completed\n  (exec:cat's cat not counted). QEMU's save starts with guest RAM"
          " resident; its load into fresh memory"
          + (" (prealloc'd with --load-prealloc)" if cfg["load_prealloc"] else "") + ".\n  QEMU's load time is"
          " migrate-incoming to query-migrate status completed (5 ms polls); every file is written back and\n"
          "  dropped from the page cache before it is loaded.")

    # Ratios within each run, then best / median over runs.
    print("\n== ratios (per run, then best / median)")
    ratios = {}
    for v in variants:
        n = v["name"]
        sv, lv, sq, sqs = [], [], [], []
        vs_qemu = {}
        for r in runs:
            f = r["ferry"].get(n)
            if not f:
                continue
            s, l = f["save"], f["load"]
            w, rd = r["fio"].get("write"), r["fio"].get("read")
            if w:
                sv.append((s["data_bytes"] / s["time_s"]) / w["bw_bytes_s"])
            if rd:
                lv.append((l["data_bytes"] / l["time_s"]) / rd["bw_bytes_s"])
            for label, gen, qn, side, sync in qrows:
                qr = ((r["qemu"].get(gen) or {}).get(qn) or {}).get(side)
                if not qr:
                    continue
                qt = qr["time_with_sync_s"] if sync else qr["time_s"]
                vs_qemu.setdefault(qkey(gen, qn) + f":{side}" + ("+sync" if sync else ""), []).append(
                    qt / (s if side == "save" else l)["time_s"])
        sq = vs_qemu.get(qkey("7.2", "cat") + ":save", [])
        sqs = vs_qemu.get(qkey("7.2", "cat") + ":save+sync", [])
        ratios[n] = {"save_vs_fio_write": sv, "load_vs_fio_read": lv, "save_vs_qemu": sq,
                     "save_vs_qemu_with_sync": sqs, "vs_qemu": vs_qemu}

        def show(label, xs, target):
            if xs:
                print(f"  {n}: {label}: {max(xs):.2f} / {statistics.median(xs):.2f}  (target {target})")

        show("save data bandwidth / fio write", sv, ">= 0.90")
        show("load data bandwidth / fio read", lv, ">= 0.90")
        show("save speed-up over QEMU 7.2 exec:cat", sq, ">= 2.0")
    res["ratios"] = ratios

    if qrows and any(ratios[v["name"]]["vs_qemu"] for v in variants):
        print("\n== ferry's speed-up over QEMU: QEMU's time / ferry's time (per run, then best / median);\n"
              "   save rows against ferry save (its time includes its fdatasync), load rows against ferry load")
        cols = [v["name"] for v in variants]
        lw = max(len(x[0]) for x in qrows)
        print("  " + " " * lw + "".join(f"  {'ferry ' + c:>15}" for c in cols))
        for label, gen, qn, side, sync in qrows:
            k = qkey(gen, qn) + f":{side}" + ("+sync" if sync else "")
            cells = []
            for c in cols:
                xs = ratios[c]["vs_qemu"].get(k)
                cells.append(f"{max(xs):.2f} / {statistics.median(xs):.2f}" if xs else "-")
            print("  " + label.ljust(lw) + "".join(f"  {x:>15}" for x in cells))
    if res["errors"] or res["qemu_errors"]:
        print("\nerrors:")
        for e in res["errors"]:
            print(f"  {e}")
        for k, e in res["qemu_errors"].items():
            print(f"  {k}: {e}")


if __name__ == "__main__":
    e2e.run_main(main, "file_bench.py")
