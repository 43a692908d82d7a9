#!/usr/bin/env python3
"""Upload benchmark: our uploader against curl and the official Immich CLI, on a loopback test server.

Every measurement starts tests/immich_server.py as its own process (so its CPU does not share our GIL) with a
fresh, empty state, and runs our scripts as real subprocesses with a SQLite database in a temp folder and
UPLOAD_DELAY=0. Figures are printed side by side with references measured in the same run; nothing is asserted
and the exit status is 0 (130 when interrupted). Generated files live in a temp folder under /tmp that is
deleted at the end, also on Ctrl+C.

  1. one big .mp4 (random bytes): curl vs upload_files.py (after a scan), time, MB/s and the peak RSS of our
     process;
  2. many photo-sized files: upload_files.py alone (after a scan) at UPLOAD_CONCURRENCY 1, 2, 4, 8;
  3. the same files, first upload and an unchanged rerun: sync_upload.py (scan + upload pipelined) vs the
     official CLI (@immich/cli 3.x on Node 22, installed by npm into bench/_work/node), each against its own
     fresh server.

    .venv/bin/python bench/bench_upload.py [--quick] [--big-gib 1] [--small 500] [--repeat 3] [--no-cli]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from config import SETTING_NAMES  # noqa: E402

PYTHON = sys.executable
SERVER_SCRIPT = PROJECT_DIR / "tests" / "immich_server.py"
NODE_DIR = PROJECT_DIR / "bench" / "_work" / "node"
NODE_BIN = NODE_DIR / "node_modules" / "node" / "bin" / "node"
CLI_JS = NODE_DIR / "node_modules" / "@immich" / "cli" / "dist" / "index.js"
API_KEY = "bench-key-0123456789abcdef"
MB = 1_000_000
MIB = 1 << 20
CONCURRENCIES = (1, 2, 4, 8)
OUR_CONCURRENCY = 4  # UPLOAD_CONCURRENCY's default
RSS_TARGET = 150 * MB
CURL_RATIO_TARGET = 0.8
RERUN_SPEEDUP_TARGET = 5.0
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

_live: list[subprocess.Popen[bytes]] = []  # every process we started and have not reaped: killed on exit


# --- running and measuring processes ----------------------------------------------------------------------


def child_environment(**extra: str) -> dict[str, str]:
    """Our environment without the uploader's settings (they would beat the env file), Immich CLI settings
    or proxies (all traffic stays on 127.0.0.1)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTING_NAMES and not k.startswith("IMMICH_") and k not in PROXY_VARS
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (its own threads), from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    wall_s: float
    status: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: highest VmHWM seen while it ran (sampled every 20 ms)
    cpu_s: float  # the process's user + system time
    minflt: int  # minor page faults of the process (wait4's rusage)
    server_cpu_s: float = 0.0  # the test server's CPU time during the run

    def json(self) -> dict[str, object]:
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("{"):
                return dict(json.loads(line))
        return {}


def run_measured(
    cmd: Sequence[str],
    work: Path,
    *,
    env: dict[str, str],
    server: Server | None = None,
    timeout: float = 1800,
) -> Measured:
    """Run `cmd` to its end; wall time, peak RSS (VmHWM polled from /proc), CPU time (wait4's rusage)."""
    with tempfile.TemporaryFile(dir=work) as out_file, tempfile.TemporaryFile(dir=work) as err_file:
        server_cpu = server.cpu_s() if server else 0.0
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out_file, stderr=err_file, env=env, cwd=work)
        _live.append(proc)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            path = f"/proc/{proc.pid}/status"
            while not done.is_set():
                try:
                    with open(path) as f:
                        text = f.read()
                except OSError:
                    return
                for line in text.splitlines():
                    if line.startswith(("VmHWM:", "VmRSS:")):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            # wait4 rather than Popen.wait: it hands back the child's rusage (CPU time).
            _, wait_status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        _live.remove(proc)
        out_file.seek(0)
        err_file.seek(0)
        return Measured(
            wall_s=wall,
            status=proc.returncode,
            stdout=out_file.read().decode("utf-8", "replace"),
            stderr=err_file.read().decode("utf-8", "replace"),
            peak_rss=peak[0],
            cpu_s=usage.ru_utime + usage.ru_stime,
            minflt=usage.ru_minflt,
            server_cpu_s=(server.cpu_s() - server_cpu) if server else 0.0,
        )


class Server:
    """tests/immich_server.py in its own process, fresh and empty; `with Server(work) as s: s.url`."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.stderr = tempfile.TemporaryFile(dir=self.work)
        self.proc = subprocess.Popen(
            [PYTHON, str(SERVER_SCRIPT), "--port", "0", "--api-key", API_KEY],
            stdout=subprocess.PIPE, stderr=self.stderr, env=child_environment(), cwd=PROJECT_DIR,
        )  # fmt: skip
        _live.append(self.proc)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("READY "):
            self.stderr.seek(0)
            raise RuntimeError(f"test server did not start: {line!r} {self.stderr.read()[-2000:]!r}")
        self.url = line.split()[1]
        return self

    def cpu_s(self) -> float:
        return proc_cpu_s(self.proc.pid) if self.proc else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.stderr.close()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in _live:
        _live.remove(proc)


# --- test data and settings --------------------------------------------------------------------------------


def jpeg_header(n: int) -> bytes:
    """A real little JPEG with EXIF (so the scan reads a date); random bytes follow it. Plain SOI without PIL."""
    try:
        from PIL import Image
    except ImportError:
        return b"\xff\xd8\xff\xe0"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    exif.get_ifd(0x8769)[0x9003] = f"2021:{1 + n % 12:02d}:{1 + n % 28:02d} 10:30:00"
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (n * 37 % 256, n * 91 % 256, n * 53 % 256)).save(
        out, "JPEG", exif=exif.tobytes()
    )
    return out.getvalue()


def write_random(path: Path, size: int, rng: random.Random, head: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(head)
        left = size - len(head)
        while left > 0:
            step = min(left, 16 * MIB)
            f.write(rng.randbytes(step))
            left -= step


def make_photo_tree(root: Path, count: int, size_range: tuple[int, int], rng: random.Random) -> int:
    """`count` photo-sized .jpg files in folders of 50; returns the total bytes."""
    total = 0
    for n in range(count):
        size = rng.randint(*size_range)
        write_random(root / f"2021-{n // 50:02d}" / f"IMG_{n:05d}.jpg", size, rng, jpeg_header(n))
        total += size
    return total


def write_env(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy of a scanned SQLite state (the backup API takes the WAL into account)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


# --- results ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    time_s: float | None = None
    nbytes: int = 0
    files: int = 0
    rss: int | None = None
    cpu_s: float | None = None
    server_cpu_s: float | None = None
    target: str = ""
    verdict: str = ""  # "ok" / "MISSED" / ""

    @property
    def mb_s(self) -> float | None:
        return self.nbytes / MB / self.time_s if self.time_s and self.nbytes else None

    @property
    def files_s(self) -> float | None:
        return self.files / self.time_s if self.time_s and self.files else None


@dataclass
class Report:
    sections: list[tuple[str, list[Row]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def section(self, title: str) -> list[Row]:
        rows: list[Row] = []
        self.sections.append((title, rows))
        return rows

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "" if value is None else f"{value:{spec}}{unit}"


def print_table(report: Report, header: list[str]) -> None:
    print()
    for line in header:
        print(line)
    width = max([48] + [len(r.label) for _, rows in report.sections for r in rows])
    print(
        f"  {'':{width}} {'time':>8} {'MB/s':>6} {'files/s':>8} {'peak RSS':>9} {'CPU':>7} {'srv CPU':>8}  target"
    )
    for title, rows in report.sections:
        if not rows:
            continue
        print(title)
        for r in rows:
            target = f"{r.target}  {r.verdict}".strip() if r.target else ""
            print(
                f"  {r.label:{width}} {fmt(r.time_s, '.2f', ' s'):>8} {fmt(r.mb_s, '.0f'):>6} "
                f"{fmt(r.files_s, '.1f'):>8} {fmt(r.rss / MB if r.rss else None, '.0f', ' MB'):>9} "
                f"{fmt(r.cpu_s, '.2f', ' s'):>7} {fmt(r.server_cpu_s, '.2f', ' s'):>8}  {target}".rstrip()
            )
    if report.notes:
        print("notes:")
        for text in report.notes:
            print(f"  - {text}")


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def median_run(runs: list[Measured], key: Callable[[Measured], float]) -> Measured:
    """The run with the median figure (the lower middle one for an even count)."""
    ordered = sorted(runs, key=key)
    return ordered[(len(ordered) - 1) // 2]


def elapsed_s(run: Measured) -> float:
    """Our script's own timing of its work (JSON elapsed_s): the process minus start-up and connect."""
    return float(str(run.json().get("elapsed_s", run.wall_s)))


def spread(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


# --- the benchmark ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.report = Report()
        self.rng = random.Random(20261125)
        self.small_dir = work / "small"
        self.big_dir = work / "big"
        self.small_bytes = 0
        self._n = 0

    # -- our scripts
    def env_file(self, source: Path, db: Path, url: str = "", concurrency: int = OUR_CONCURRENCY) -> Path:
        self._n += 1
        return write_env(
            self.work / f"run{self._n}.env",
            SOURCE_DIR=source,
            DB_PATH=db,
            LOG_FILE=self.work / "logs" / f"run{self._n}.log",
            IMMICH_URL=url,
            IMMICH_API_KEY=API_KEY,
            UPLOAD_DELAY=0,
            UPLOAD_CONCURRENCY=concurrency,
        )

    def ours(self, script: str, env_file: Path, server: Server | None, *extra: str) -> Measured:
        cmd = [PYTHON, str(PROJECT_DIR / script), "--env-file", str(env_file), "--json", "--no-progress"]
        run = run_measured([*cmd, *extra], self.work, env=child_environment(), server=server)
        if run.status != 0:
            self.report.note(f"{script} exited {run.status}: {run.stderr.strip()[-500:]}")
        return run

    def scan_template(self, source: Path, name: str) -> tuple[Path, Measured]:
        db = self.work / f"{name}-template.db"
        run = self.ours("scan_files.py", self.env_file(source, db), None)
        return db, run

    def check_uploaded(self, what: str, run: Measured, expected: int) -> None:
        data = run.json()
        if data.get("uploaded") != expected or data.get("errors"):
            self.report.note(
                f"{what}: expected {expected} uploaded, got {data.get('uploaded')} "
                f"(errors {data.get('errors')}, duplicates {data.get('duplicates')})"
            )

    # -- 1 GiB file: curl vs upload_files.py
    def big_file(self) -> None:
        size = int(self.args.big_gib * (1 << 30))
        big = self.big_dir / "big.mp4"
        label = f"{self.args.big_gib:g} GiB" if size >= 1 << 30 else f"{size // MIB} MiB"
        print(f"[big] writing {label} of random bytes to {big.name}", flush=True)
        write_random(big, size, self.rng)
        template, scan = self.scan_template(self.big_dir, "big")
        repeat = self.args.repeat if self.args.quick else max(5, self.args.repeat)
        rows = self.report.section(
            f"one {label} file ({big.name}, random bytes), median of {repeat} run(s) (cheap, and the noisiest figure)"
        )
        curls: list[Measured] = []
        ours: list[Measured] = []
        for rep in range(repeat):
            # A fresh server per upload: neither side may get a "duplicate" answer. Alternate who goes first.
            for who in ("curl", "ours") if rep % 2 == 0 else ("ours", "curl"):
                with Server(self.work) as server:
                    if who == "curl":
                        curls.append(self.curl_upload(big, server))
                        continue
                    db = self.work / "big.db"
                    copy_db(template, db)
                    run = self.ours("upload_files.py", self.env_file(self.big_dir, db, server.url), server)
                    self.check_uploaded("upload_files.py, big file", run, 1)
                    ours.append(run)
            print(
                f"[big] run {rep + 1}: curl {curls[-1].wall_s:.2f} s, ours {elapsed_s(run):.2f} s "
                f"(process {run.wall_s:.2f} s), peak RSS {run.peak_rss / MB:.0f} MB",
                flush=True,
            )
        curl = median_run(curls, lambda r: r.wall_s)
        mine = median_run(ours, elapsed_s)
        elapsed = elapsed_s(mine)
        peak = max(r.peak_rss for r in ours)
        curl_rate = size / curl.wall_s
        ratio = (size / elapsed) / curl_rate
        ok = ratio >= CURL_RATIO_TARGET and peak < RSS_TARGET
        rows.append(Row("curl -F assetData=@file", curl.wall_s, size, rss=curl.peak_rss, cpu_s=curl.cpu_s,
                        server_cpu_s=curl.server_cpu_s))  # fmt: skip
        rows.append(
            Row(
                "ours, upload_files.py (JSON elapsed_s)", elapsed, size, rss=peak, cpu_s=mine.cpu_s,
                server_cpu_s=mine.server_cpu_s,
                target=f">= {CURL_RATIO_TARGET}x curl ({ratio:.2f}x), < {RSS_TARGET // MB} MB",
                verdict="ok" if ok else "MISSED",
            )
        )  # fmt: skip
        rows.append(Row("ours, upload_files.py (process wall time)", mine.wall_s, size))
        rows.append(Row("ours, scan_files.py of the file (hashing, ref.)", scan.wall_s, size,
                        rss=scan.peak_rss, cpu_s=scan.cpu_s))  # fmt: skip
        self.report.note(
            f"big file runs (s): curl {spread([r.wall_s for r in curls])}; ours elapsed_s "
            f"{spread([elapsed_s(r) for r in ours])}, "
            f"process {spread([r.wall_s for r in ours])} ({size / mine.wall_s / curl_rate:.2f}x curl by process "
            f"wall time); peak RSS {spread([r.peak_rss / MB for r in ours])} MB; minor page faults: ours "
            f"{mine.minflt}, curl {curl.minflt}"
        )
        big.unlink()

    def curl_upload(self, big: Path, server: Server) -> Measured:
        cmd = [
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"x-api-key: {API_KEY}",
            "-F", "filename=big.mp4", "-F", "fileCreatedAt=2024-01-01T00:00:00.000Z",
            "-F", "fileModifiedAt=2024-01-01T00:00:00.000Z", "-F", f"assetData=@{big}",
            f"{server.url}/api/assets",
        ]  # fmt: skip
        curl = run_measured(cmd, self.work, env=child_environment(), server=server)
        if curl.stdout.strip() != "201":
            self.report.note(f"curl answered {curl.stdout.strip()!r} {curl.stderr.strip()[:300]}")
        return curl

    # -- many small files: upload_files.py at several concurrencies
    def small_files(self) -> None:
        count = self.args.small
        template, scan = self.scan_template(self.small_dir, "small")
        rows = self.report.section(
            f"{count} small files ({self.small_bytes / MB:.0f} MB): upload_files.py after a scan, time = its upload "
            f"part (JSON elapsed_s), median of {self.args.repeat}"
        )
        rows.append(Row("scan_files.py (hash + metadata, reference)", scan.wall_s, self.small_bytes, count,
                        scan.peak_rss, scan.cpu_s))  # fmt: skip
        for concurrency in CONCURRENCIES:
            runs = []
            for _ in range(self.args.repeat):
                with Server(self.work) as server:
                    db = self.work / "small.db"
                    copy_db(template, db)
                    env = self.env_file(self.small_dir, db, server.url, concurrency)
                    run = self.ours("upload_files.py", env, server)
                    self.check_uploaded(f"upload_files.py c={concurrency}", run, count)
                    runs.append(run)
            run = median_run(runs, elapsed_s)
            text = (
                f"UPLOAD_CONCURRENCY={concurrency}: elapsed_s {spread([elapsed_s(r) for r in runs])}, "
                f"process wall {spread([r.wall_s for r in runs])}"
            )
            print(f"[small] {text}", flush=True)
            self.report.notes.append(f"small files, {text}")
            rows.append(
                Row(
                    f"UPLOAD_CONCURRENCY={concurrency}",
                    elapsed_s(run),
                    self.small_bytes,
                    count,
                    max(r.peak_rss for r in runs),
                    run.cpu_s,
                    run.server_cpu_s,
                    target="(default)" if concurrency == OUR_CONCURRENCY else "",
                )
            )

    # -- ours vs the official CLI: first upload and an unchanged rerun
    def versus_cli(self, cli: list[str] | None) -> None:
        count = self.args.small
        rows = self.report.section(
            f"first upload and unchanged rerun of the same {count} files, ours vs the official CLI, "
            f"median of {self.args.repeat}"
        )
        firsts: list[Measured] = []
        reruns: list[Measured] = []
        for rep in range(self.args.repeat):
            with Server(self.work) as server:
                db = self.work / f"sync{rep}.db"
                env = self.env_file(self.small_dir, db, server.url)
                first = self.ours("sync_upload.py", env, server)
                self.check_uploaded("sync_upload.py first run", first, count)
                rerun = self.ours("sync_upload.py", env, server)
                data = rerun.json()
                if data.get("uploaded") or data.get("new") or data.get("changed") or data.get("duplicates"):
                    self.report.note(f"sync rerun was not a no-op: {data}")
                firsts.append(first)
                reruns.append(rerun)
            print(f"[cli] ours: first {first.wall_s:.2f} s, rerun {rerun.wall_s:.2f} s", flush=True)
        first = median_run(firsts, lambda r: r.wall_s)
        rerun = median_run(reruns, lambda r: r.wall_s)
        cli_first: Measured | None = None
        cli_rerun: Measured | None = None
        cli_default: Measured | None = None
        if cli is not None:
            cli_firsts, cli_reruns = [], []
            for _ in range(self.args.repeat):
                with Server(self.work) as server:
                    cli_firsts.append(self.cli_upload(cli, server, OUR_CONCURRENCY, expect_new=count))
                    cli_reruns.append(self.cli_upload(cli, server, OUR_CONCURRENCY, expect_new=0))
                print(
                    f"[cli] CLI -c {OUR_CONCURRENCY}: first {cli_firsts[-1].wall_s:.2f} s, "
                    f"rerun {cli_reruns[-1].wall_s:.2f} s",
                    flush=True,
                )
            cli_first = median_run(cli_firsts, lambda r: r.wall_s)
            cli_rerun = median_run(cli_reruns, lambda r: r.wall_s)
            default_c = max(1, (os.cpu_count() or 1) - 1)
            if default_c != OUR_CONCURRENCY and not self.args.quick:
                with Server(self.work) as server:
                    cli_default = self.cli_upload(cli, server, None, expect_new=count)
                print(f"[cli] CLI default -c {default_c}: first {cli_default.wall_s:.2f} s", flush=True)
        first_target = ""
        verdict = ""
        if cli_first is not None:
            first_target = f"<= CLI time ({first.wall_s / cli_first.wall_s:.2f}x of it)"
            verdict = "ok" if first.wall_s <= cli_first.wall_s else "MISSED"
        rows.append(Row(f"ours, first: sync_upload.py (c={OUR_CONCURRENCY}, scan+upload)", first.wall_s,
                        self.small_bytes, count, first.peak_rss, first.cpu_s, first.server_cpu_s,
                        first_target, verdict))  # fmt: skip
        if cli_first is not None:
            rows.append(Row(f"CLI, first: immich upload -r -c {OUR_CONCURRENCY}", cli_first.wall_s,
                            self.small_bytes, count, cli_first.peak_rss, cli_first.cpu_s,
                            cli_first.server_cpu_s))  # fmt: skip
        if cli_default is not None:
            default_c = max(1, (os.cpu_count() or 1) - 1)
            rows.append(Row(f"CLI, first: its default -c (= {default_c} here)", cli_default.wall_s,
                            self.small_bytes, count, cli_default.peak_rss, cli_default.cpu_s,
                            cli_default.server_cpu_s))  # fmt: skip
        rerun_target, verdict = "", ""
        if cli_rerun is not None:
            speedup = cli_rerun.wall_s / rerun.wall_s
            rerun_target = f">= {RERUN_SPEEDUP_TARGET:g}x faster than CLI ({speedup:.1f}x)"
            verdict = "ok" if speedup >= RERUN_SPEEDUP_TARGET else "MISSED"
        rows.append(Row("ours, rerun unchanged: sync_upload.py", rerun.wall_s, 0, count, rerun.peak_rss,
                        rerun.cpu_s, rerun.server_cpu_s, rerun_target, verdict))  # fmt: skip
        if cli_rerun is not None:
            rows.append(Row(f"CLI, rerun unchanged (re-hashes all, -c {OUR_CONCURRENCY})", cli_rerun.wall_s, 0,
                            count, cli_rerun.peak_rss, cli_rerun.cpu_s, cli_rerun.server_cpu_s))  # fmt: skip
        self.report.note(
            f"ours first/rerun (s): {spread([r.wall_s for r in firsts])} / {spread([r.wall_s for r in reruns])}"
        )

    def cli_upload(
        self, cli: list[str], server: Server, concurrency: int | None, expect_new: int
    ) -> Measured:
        env = child_environment(
            IMMICH_INSTANCE_URL=server.url + "/api",
            IMMICH_API_KEY=API_KEY,
            IMMICH_CONFIG_DIR=str(self.work / "cli-config"),
        )
        cmd = [*cli, "upload", "--recursive", "--no-progress"]
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        run = run_measured([*cmd, str(self.small_dir)], self.work, env=env, server=server)
        uploaded = re.search(r"Successfully uploaded (\d+) new asset", run.stdout)
        found = re.search(r"Found (\d+) new files and (\d+) duplicate", run.stdout)
        got = int(uploaded[1]) if uploaded else 0
        if run.status != 0 or got != expect_new or "Failed" in run.stdout or (expect_new == 0 and not found):
            self.report.note(
                f"CLI run: exit {run.status}, uploaded {got} (expected {expect_new}): "
                f"{(run.stdout + run.stderr).strip()[-600:]}"
            )
        return run


# --- the official CLI -------------------------------------------------------------------------------------


def install_cli(report: Report) -> list[str] | None:
    """Node 22 and @immich/cli 3.x under bench/_work/node (npm); the command line, or None if unavailable."""

    def version_of(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    def cli_version() -> str:
        try:
            return str(json.loads((CLI_JS.parent.parent / "package.json").read_text())["version"])
        except (OSError, ValueError, KeyError):
            return ""

    if not (NODE_BIN.exists() and CLI_JS.exists() and cli_version().startswith("3.")):
        npm = shutil.which("npm")
        if npm is None:
            report.note("official CLI skipped: npm not found")
            return None
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        # Spell out @3: npm on the machine's node 20 would otherwise settle for @immich/cli 2.x (engines).
        print("[cli] npm install node@22 @immich/cli@3 into bench/_work/node", flush=True)
        try:
            proc = subprocess.run(
                [npm, "install", "--prefix", str(NODE_DIR), "--no-save", "node@22", "@immich/cli@3"],
                capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            report.note(f"official CLI skipped: npm install failed ({exc})")
            return None
        if proc.returncode != 0:
            report.note(f"official CLI skipped: npm install failed: {proc.stderr.strip()[-400:]}")
            return None
    node_version = version_of([str(NODE_BIN), "--version"])
    if not node_version.startswith("v") or int(node_version[1:].split(".")[0]) < 22:
        report.note(
            f"official CLI skipped: {NODE_BIN} is {node_version or 'not runnable'}, the CLI needs >= 22"
        )
        return None
    cmd = [str(NODE_BIN), str(CLI_JS)]
    report.note(f"official CLI: @immich/cli {cli_version()} on node {node_version}")
    return cmd


# --- main -------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run each (< 1 min)")
    parser.add_argument("--big-gib", type=float, help="size of the big file in GiB (default 1, quick 0.125)")
    parser.add_argument("--small", type=int, help="number of small files (default 500, quick 40)")
    parser.add_argument("--repeat", type=int, help="runs per measurement, median shown (default 3, quick 1)")
    parser.add_argument("--no-cli", action="store_true", help="skip the official Immich CLI comparison")
    args = parser.parse_args(argv)
    args.big_gib = args.big_gib if args.big_gib is not None else (0.125 if args.quick else 1.0)
    args.small = args.small if args.small is not None else (40 if args.quick else 500)
    args.repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    size_range = (2 * MB, 5 * MB)

    need = int(args.big_gib * (1 << 30)) + args.small * size_range[1] + 200 * MB
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need * 1.2:
        print(
            f"not enough space in {tempfile.gettempdir()}: {free / MB:.0f} MB free, {need / MB:.0f} MB needed"
        )
        return 0

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench_upload_", dir="/tmp"))
    bench = Bench(args, work)
    report = bench.report
    try:
        if args.quick:
            report.note(
                "--quick: sizes too small for the targets to mean much; fixed start-up costs dominate "
                "(Python start-up and imports for ours, node start-up for the CLI)"
            )
        cli = None if args.no_cli else install_cli(report)
        if args.no_cli:
            report.note("official CLI skipped (--no-cli)")
        print(
            f"[data] {args.small} photo-sized files (2-5 MB, random bytes after a JPEG header) in {work}",
            flush=True,
        )
        bench.small_bytes = make_photo_tree(bench.small_dir, args.small, size_range, bench.rng)
        bench.big_file()
        bench.small_files()
        bench.versus_cli(cli)
        curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
        print_table(
            report,
            [
                "upload benchmark (loopback test server, its own process, fresh per measurement; UPLOAD_DELAY=0;",
                f"  files in the page cache; {os.cpu_count()} CPUs shared by client and server; MB = 10^6 bytes;",
                f"  Python {sys.version.split()[0]}, curl {curl_version}; CPU = the client process's user+sys (start-up",
                "  included), srv CPU = the test server's; peak RSS = highest VmHWM polled every 20 ms;",
                f"  1-min load average {load_before} before, {loadavg()} after: other work on the machine adds noise)",
            ],
        )
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for proc in list(_live):
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
