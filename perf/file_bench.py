#!/usr/bin/env python3
"""File benchmark: ferry save/load (mapped-ram + multifd + direct-io) against
fio and QEMU 7.2's `migrate "exec:cat > F"`, all in one run on this machine.

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
  - QEMU 7.2 (-M none, RAM = a private prealloc'd copy of the pattern, as
    perf/e2e.py does): `migrate "exec:cat > F"`, then fdatasync of F timed
    separately.

Reported per tool: time, GiB/s of guest RAM, GiB/s of the bytes it wrote or
read, CPU seconds per GiB of guest RAM, peak RSS, the file's size and its
allocated size (du); and the ratios the issue asks for: ferry save and load
against fio's bandwidth for the bytes they move (same repetition), ferry
save against QEMU. Best and median over --repeat.

ferry's time is its query-migrate total-time plus the fdatasync after it
(sync-time); QEMU's is total-time, which ends before cat's data reaches the
disk (exec:cat writes through the page cache), so QEMU is also shown with
its fdatasync added. QEMU's CPU is the QEMU process only (cat is not counted).

This prints numbers; it is not a test. Exit status: 0 if everything ran, 1 if
a tool failed, 2 on bad usage, 130 on Ctrl-C. Python standard library only;
needs fio, /usr/bin/time and qemu-system-x86_64 (or --skip-qemu).
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402  (shared helpers: pattern file, QMP, process control)
from e2e import GIB, MIB, RES, BenchError, UsageError, log  # noqa: E402

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
            "peak_rss_mib": t["max_rss_mib"], "file_bytes": fsize, "allocated_bytes": alloc,
            "wall_s": t["elapsed_s"], "argv": argv}


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
            "sys_s": t["sys_s"], "peak_rss_mib": t["max_rss_mib"], "wall_s": t["elapsed_s"], "argv": argv}


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
            "runtime_s": runtime_s, "argv": argv}


def run_qemu_save(args, pattern, size, path, d, i):
    if os.path.exists(path):
        os.unlink(path)
    qd = os.path.join(d, f"qemu-{i}")
    os.mkdir(qd)
    sock = os.path.join(qd, "qmp.sock")
    mem = f"{size // MIB}M"
    cmd = [args.qemu, "-M", "none,memory-backend=ram", "-m", mem, "-accel", "tcg", "-nodefaults",
           "-nographic", "-display", "none", "-S",
           "-object", f"memory-backend-file,id=ram,size={mem},mem-path={pattern},share=off,prealloc=on,"
                      f"prealloc-threads={os.cpu_count() or 1}",
           "-qmp", f"unix:{sock},server=on,wait=off"]
    p = RES.spawn(cmd, os.path.join(qd, "out"), os.path.join(qd, "err"))
    q = None
    try:
        try:
            q = e2e.QMP(sock, args.timeout, p)
        except BenchError as e:
            raise BenchError(f"QEMU failed to start ({e}):\n{e2e.read_text(os.path.join(qd, 'err'), 2000)}")
        q.execute("migrate-set-parameters", {"max-bandwidth": e2e.QEMU_MAX_BANDWIDTH})
        c0 = e2e.proc_cpu_s(p.pid)
        t0 = time.monotonic()
        q.execute("migrate", {"uri": f"exec:cat > {path}"})
        while True:
            info = q.execute("query-migrate")
            st = info.get("status")
            if st == "completed":
                break
            if st in ("failed", "cancelled"):
                raise BenchError(f"QEMU migration {st}: {info.get('error-desc', info)}")
            if time.monotonic() - t0 > args.timeout:
                raise BenchError(f"QEMU migration not completed after {args.timeout} s")
            time.sleep(0.01)
        c1 = e2e.proc_cpu_s(p.pid)
        hwm = e2e.proc_status_kib(p.pid, "VmHWM") / 1024.0
        try:
            q.execute("quit")
        except (BenchError, OSError):
            pass
    finally:
        if q:
            q.close()
        RES.stop(p, grace=10)
    # cat has exited with QEMU's migration; its data may still be in the page cache.
    ts = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    sync_s = time.monotonic() - ts
    alloc, fsize = allocated_bytes(path)
    total = info["total-time"] / 1000.0
    cpu = (c1[0] - c0[0]) + (c1[1] - c0[1])
    return {"time_s": total, "time_with_sync_s": total + sync_s, "sync_s": sync_s,
            "data_bytes": (info.get("ram") or {}).get("normal-bytes"), "cpu_s_per_gib": cpu / (size / GIB),
            "peak_rss_mib": hwm, "file_bytes": fsize, "allocated_bytes": alloc, "argv": cmd}


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
    ap.add_argument("--load-prealloc", action="store_true", help="ferry load --prealloc (fault memory in first)")
    ap.add_argument("--skip-qemu", action="store_true")
    ap.add_argument("--skip-fio", action="store_true")
    ap.add_argument("--ferry", default=os.path.join(e2e.REPO_ROOT, "build", "cli", "ferry"))
    ap.add_argument("--fio", default="fio")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--timeout", type=float, default=600, help="per tool run, s (default 600)")
    ap.add_argument("--keep-files", action="store_true", help="keep the pattern file in /dev/shm")
    ap.add_argument("--results-dir", default=os.path.join(e2e.PERF_DIR, "results"))
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    variants = [parse_variant(n) for n in args.variants.split(",") if n]
    if not variants:
        ap.error("no variants")
    for tool, skip in ((args.fio, args.skip_fio), (args.qemu, args.skip_qemu), ("/usr/bin/time", False)):
        if not skip and not shutil.which(tool):
            raise UsageError(f"{tool} not found (apt-get install fio qemu-system-x86 time)")
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
                      "fio_iodepth": FIO_DEPTH, "variants": [v["name"] for v in variants]},
           "runs": [], "errors": []}

    for w in range(args.warmup):
        log(f"warm-up {w + 1}/{args.warmup}: ferry {variants[0]['name']} save + load (not counted)")
        run_ferry_save(args, variants[0], pattern, size, mig, logs, f"warm{w}")
        run_ferry_load(args, variants[0], size, mig, logs, f"warm{w}")

    failed = False
    for i in range(args.repeat):
        run = {"fio": {}, "ferry": {}, "qemu": None}
        try:
            if not args.skip_fio:
                log(f"run {i + 1}/{args.repeat}: fio write {data_bytes / GIB:.2f} GiB")
                run["fio"]["write"] = run_fio(args, "write", fio_file, data_bytes, logs, i)
            for v in variants:
                log(f"run {i + 1}/{args.repeat}: ferry save {v['name']}")
                s = run_ferry_save(args, v, pattern, size, mig, logs, i)
                log(f"run {i + 1}/{args.repeat}: ferry load {v['name']}")
                l = run_ferry_load(args, v, size, mig, logs, i)
                run["ferry"][v["name"]] = {"save": s, "load": l}
                os.unlink(mig)
            if not args.skip_fio:
                log(f"run {i + 1}/{args.repeat}: fio read")
                run["fio"]["read"] = run_fio(args, "read", fio_file, data_bytes, logs, i)
                os.unlink(fio_file)
            if not args.skip_qemu:
                log(f"run {i + 1}/{args.repeat}: QEMU 7.2 migrate exec:cat")
                run["qemu"] = run_qemu_save(args, pattern, size, qemu_file, logs, i)
                os.unlink(qemu_file)
        except BenchError as e:
            log(f"run {i + 1} failed: {e}")
            res["errors"].append(str(e))
            failed = True
        res["runs"].append(run)
        if failed:
            break

    report(res, variants, size)
    os.makedirs(args.results_dir, exist_ok=True)
    out = os.path.join(args.results_dir, f"file-{ts}.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nraw results: {out}")
    return 1 if failed else 0


def report(res, variants, size):
    runs = res["runs"]
    gib = size / GIB
    print(f"\n== ferry file benchmark: {gib:.2f} GiB guest ({res['config']['layout']}: half random, half zero), "
          f"{len(runs)} run(s), {res['host']['cpus']} CPUs, kernel {res['host']['kernel']}")
    print("   times: best / median. GiB/s of RAM = guest size / time; data GiB/s = bytes written or read / time.")
    rows = []

    def row(name, recs, data_key="data_bytes", extra=None):
        times = [r["time_s"] for r in recs if r]
        if not times:
            return
        t = summarize(times)
        data = next((r.get(data_key) for r in recs if r and r.get(data_key)), None)
        cpu = summarize([r.get("cpu_s_per_gib") for r in recs if r])
        rss = summarize([r.get("peak_rss_mib") for r in recs if r])
        alloc = next((r.get("allocated_bytes") for r in recs if r and r.get("allocated_bytes") is not None), None)
        rows.append((name, f"{t['best']:.3f} / {t['median']:.3f}", fmt(gib / t["best"]),
                     fmt(data / GIB / t["best"]) if data else "-", fmt(cpu["best"] if cpu else None),
                     fmt(rss["best"] if rss else None, ".0f"),
                     f"{alloc / GIB:.2f} GiB" if alloc is not None else "-"))

    for v in variants:
        n = v["name"]
        row(f"ferry save {n}", [r["ferry"].get(n, {}).get("save") for r in runs])
        row(f"ferry load {n}", [r["ferry"].get(n, {}).get("load") for r in runs])
    if any(r["fio"].get("write") for r in runs):
        row("fio write", [r["fio"].get("write") for r in runs], data_key="bytes")
        row("fio read", [r["fio"].get("read") for r in runs], data_key="bytes")
    if any(r["qemu"] for r in runs):
        row("QEMU 7.2 exec:cat", [r["qemu"] for r in runs])
        row("QEMU 7.2 + fdatasync", [dict(r["qemu"], time_s=r["qemu"]["time_with_sync_s"]) if r["qemu"] else None
                                     for r in runs])
    hdr = ("tool", "time s", "GiB/s RAM", "data GiB/s", "CPU s/GiB", "peak RSS MiB", "du")
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    for r in [hdr] + rows:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    fio_cpu = [r["fio"].get("write", {}).get("cpu_s_per_gib_moved") for r in runs if r["fio"].get("write")]
    if fio_cpu:
        print(f"  (fio CPU per GiB it moved: write {fmt(min(fio_cpu))}, read "
              f"{fmt(min(r['fio']['read']['cpu_s_per_gib_moved'] for r in runs if r['fio'].get('read')))})")

    # Ratios within each run, then best / median over runs.
    print("\n== ratios (per run, then best / median)")
    ratios = {}
    for v in variants:
        n = v["name"]
        sv, lv, sq, sqs = [], [], [], []
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
            if r["qemu"]:
                sq.append(r["qemu"]["time_s"] / s["time_s"])
                sqs.append(r["qemu"]["time_with_sync_s"] / s["time_s"])
        ratios[n] = {"save_vs_fio_write": sv, "load_vs_fio_read": lv, "save_vs_qemu": sq,
                     "save_vs_qemu_with_sync": sqs}

        def show(label, xs, target):
            if xs:
                print(f"  {n}: {label}: {max(xs):.2f} / {statistics.median(xs):.2f}  (target {target})")

        show("save data bandwidth / fio write", sv, ">= 0.90")
        show("load data bandwidth / fio read", lv, ">= 0.90")
        show("save speed-up over QEMU 7.2 exec:cat", sq, ">= 2.0")
        show("save speed-up over QEMU 7.2 exec:cat + fdatasync", sqs, "-")
    res["ratios"] = ratios
    if res["errors"]:
        print("\nerrors:")
        for e in res["errors"]:
            print(f"  {e}")


if __name__ == "__main__":
    e2e.run_main(main, "file_bench.py")
