#!/usr/bin/env python3
"""Upload benchmark: our uploader at its shipped defaults against curl and the official Immich CLI at theirs.

Every loopback measurement starts tests/immich_server.py as its own process (so its CPU does not share our GIL)
with a fresh, empty state, and runs our scripts as real subprocesses with a SQLite database in a temp folder. Our
scripts run with the SHIPPED DEFAULTS: their env files hold only the folder, the database, the log file, the
server and the key, so UPLOAD_CONCURRENCY and UPLOAD_DELAY are the defaults of config.SETTINGS (printed in the
header); a row that sets anything else names the setting. Our runs start, as a user's do, from a written bytecode
cache, and their peak RSS and CPU time include the scan's worker processes. Figures are printed side by side with
references measured in the same run; nothing is asserted and the exit status is 0 (130 when interrupted).
Generated files live in a temp folder under /tmp that is deleted at the end, also on Ctrl+C.

  1. first sync and unchanged rerun of 2,000 photo-sized files (2-5 MB: a real JPEG with EXIF, then random
     bytes): sync_upload.py (scan + upload pipelined) vs the official CLI at its defaults (`immich upload -r`,
     no --concurrency: CPUs-1), each against its own fresh server (@immich/cli 3.x on Node 22, installed by npm
     into bench/_work/node). Targets: first sync >= 1.5x faster than the CLI's, rerun >= 20x faster;
  2. one 1 GiB .mp4 (random bytes) uploaded by the whole upload_files.py process (after a scan; wall time from
     start to exit, Python start-up included) vs `curl -F`: target >= 0.9x curl's speed and peak RSS < 100 MB.
     The script's own JSON elapsed_s (the upload without start-up) is a secondary row;
  3. the photos of part 1 uploaded by upload_files.py (after a scan) at UPLOAD_CONCURRENCY 1, 2, 4 and 8,
     against a server that answers at once, after 5 ms and after 50 ms per request (the stand-in's --delay-ms:
     a NAS, a server across the LAN or a VPN); files/s for each, the fastest marked;
  4. only with IMMICH_BENCH_URL and IMMICH_BENCH_KEY in the environment: part 1's first sync and rerun against
     that real Immich (target: first sync >= 1.3x faster than the CLI), on two trees of new random files (one for
     each tool, so neither finds the other's uploads), deleted from that server afterwards unless --real-keep;
  5. the server's ingest floor: `curl --parallel --parallel-max 8 -K <config>` sending the photos as bare uploads
     (the required form fields and the file, nothing else) vs our whole first sync at the shipped defaults (a
     fresh database each time), in rounds whose order turns, the median of the rounds' ratios quoted; target:
     ours >= 0.9x curl's speed. A third player runs the same curl with `openssl dgst`'s SHA-256 and SHA-1 of
     the same files beside it, from the same start: what fingerprinting costs beside curl, on the cores the
     server uses too (our ratio to it is quoted beside). It is no floor: openssl reads each file again for
     each hash, and with small photos the bare Python sync below does as well or better. On the test server
     three more rows split ours: its upload alone (upload_files.py after a scan: no hashing beside it),
     bench/bare_sender.py, a bare Python client sending our requests from 8 threads on raw sockets with no
     checks and no records (what sending costs Python here), and the same with 2 threads taking each file's
     SHA-256 and SHA-1 before it is sent (--hashing 2: a bare Python sync, what a client that fingerprints
     what it sends can do in Python here). On the test server each run has a fresh server, so all send the
     same trees: part 1's, then --floor-files photos of ~400 KB; with
     IMMICH_BENCH_URL/IMMICH_BENCH_KEY also on that real Immich, every run with a tree of new random bytes of
     the same shape (--floor-files photos of ~400 KB), the server's queues paused for all (this bench pauses
     them and resumes those it paused), the server warmed up first by an untimed curl run of that size, and
     the test photos deleted afterwards; before each timed run the disk is written back (os.sync);
  6. a deletion run: --floor-files photos of ~400 KB (hard links to a kept copy) uploaded by a first sync, then an
     unchanged sync (the reference) and `sync_upload.py --delete-uploaded`, which confirms each asset in Immich
     and deletes the local files; the difference is what deleting costs. With --floor-also DIR, DIR's scripts
     take turns with ours (parts 5 and 6).

    .venv/bin/python bench/bench_upload.py [--quick] [--small 2000] [--big-gib 1] [--repeat 3]
        [--delays-ms 0,5,50] [--no-cli] [--real-files 200] [--real-keep] [--parts 1,2,3,4,5,6]
        [--floor-pairs 5] [--floor-files 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import select
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from config import SETTING_NAMES, SETTINGS  # noqa: E402

PYTHON = sys.executable
SERVER_SCRIPT = PROJECT_DIR / "tests" / "immich_server.py"
BARE_SENDER = PROJECT_DIR / "bench" / "bare_sender.py"
NODE_DIR = PROJECT_DIR / "bench" / "_work" / "node"
NODE_BIN = NODE_DIR / "node_modules" / "node" / "bin" / "node"
CLI_JS = NODE_DIR / "node_modules" / "@immich" / "cli" / "dist" / "index.js"
API_KEY = "bench-key-0123456789abcdef"
MB = 1_000_000
MIB = 1 << 20
RANDOM_POOL = 64 * MIB  # the photos' random bytes are cut from this pool (randbytes runs at ~225 MB/s only)
CONCURRENCIES = (1, 2, 4, 8)
DEFAULTS = {s.name: s.default for s in SETTINGS}
OUR_CONCURRENCY = int(DEFAULTS["UPLOAD_CONCURRENCY"])  # the shipped default, not a choice of this bench
OUR_DELAY = DEFAULTS["UPLOAD_DELAY"]
CLI_DEFAULT_CONCURRENCY = max(1, (os.cpu_count() or 1) - 1)  # @immich/cli: Math.max(1, os.cpus().length - 1)
RSS_TARGET = 100 * MB
CURL_RATIO_TARGET = 0.9
FIRST_SPEEDUP_TARGET = 1.5
RERUN_SPEEDUP_TARGET = 20.0
REAL_FIRST_SPEEDUP_TARGET = 1.3
FLOOR_RATIO_TARGET = 0.9
CURL_PARALLEL = 8
FLOOR_SIZE_RANGE = (350_000, 450_000)  # the issue's real-server measurement: 1,000 photos of ~400 KB
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")

_live: list[subprocess.Popen[bytes]] = []  # every process we started and have not reaped: killed on exit


# --- running and measuring processes ----------------------------------------------------------------------


def child_environment(*, proxies: bool = False, **extra: str) -> dict[str, str]:
    """Our environment without the uploader's settings (they would beat the env file), Immich CLI settings
    or proxies (loopback traffic stays on 127.0.0.1; `proxies` keeps them for a real server)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in SETTING_NAMES and not k.startswith("IMMICH_") and (proxies or k not in PROXY_VARS)
    }
    # A user's Python keeps its bytecode cache; without one every run would compile the tool again (~0.1 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not proxies:
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


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (the scan's worker pool comes from a fork server, a grandchild's parent)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def proc_memory(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a live process in bytes; zeros when it is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


@dataclass
class Measured:
    wall_s: float
    status: int
    stdout: str
    stderr: str
    peak_rss: int  # bytes: its highest VmHWM, or the highest sum of VmRSS over it and its helper processes
    cpu_s: float  # user + system time of the process and of its helper processes (the scan's worker pool)
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
    server: Server | RealServer | None = None,
    timeout: float = 1800,
    stop_after_s: float | None = None,
) -> Measured:
    """Run `cmd` to its end; wall time, peak RSS and CPU time, counting its helper processes too.

    Peak RSS is the process's VmHWM, or more when the sum of VmRSS over it and its descendants (the scan's worker
    pool) was higher, polled every 20 ms: an upper bound (pages shared by the workers count once each). CPU time
    is wait4's rusage plus the last CPU time polled of each descendant (which the process does not reap)."""
    with tempfile.TemporaryFile(dir=work) as out_file, tempfile.TemporaryFile(dir=work) as err_file:
        server_cpu = server.cpu_s() if server else 0.0
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out_file, stderr=err_file, env=env, cwd=work)
        _live.append(proc)
        peak = [0]
        helper_cpu: dict[int, float] = {}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                rss, hwm = proc_memory(proc.pid)
                if not hwm:
                    return  # exited (a zombie has no memory lines)
                for pid in descendants(proc.pid):
                    rss += proc_memory(pid)[0]
                    helper_cpu[pid] = max(helper_cpu.get(pid, 0.0), proc_cpu_s(pid))
                peak[0] = max(peak[0], hwm, rss)
                done.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        # A long run measured for a while: SIGTERM, as a user's Ctrl+C or a service stop would.
        stopper = threading.Timer(stop_after_s or 0, proc.send_signal, (signal.SIGTERM,))
        if stop_after_s:
            stopper.start()
        try:
            # wait4 rather than Popen.wait: it hands back the child's rusage (CPU time).
            _, wait_status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
            stopper.cancel()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(wait_status)
        if proc in _live:
            _live.remove(proc)
        out_file.seek(0)
        err_file.seek(0)
        client_cpu = usage.ru_utime + usage.ru_stime + sum(helper_cpu.values())
        return Measured(
            wall_s=wall,
            status=proc.returncode,
            stdout=out_file.read().decode("utf-8", "replace"),
            stderr=err_file.read().decode("utf-8", "replace"),
            peak_rss=peak[0],
            cpu_s=client_cpu,
            minflt=usage.ru_minflt,
            server_cpu_s=server_cpu_during(server, server_cpu, client_cpu) if server else 0.0,
        )


def server_cpu_during(server: Server | RealServer, before_s: float, client_cpu_s: float) -> float:
    """The server's CPU time since `before_s`; a local real server's is the machine's less the client's."""
    used = server.cpu_s() - before_s
    return max(0.0, used - client_cpu_s) if server.real else used


def floor_players(also: bool, parts: bool = False) -> list[str]:
    """Who takes part in the ingest floor's rounds (part 5), in the first round's order: curl, curl beside
    the hashes a fingerprinting client makes, our first sync; with `parts` (the test server) our upload alone,
    a bare Python sender and a bare Python sync (the sender with hashing threads before it), which split what
    ours takes beyond curl into its parts; with --floor-also an earlier checkout's sync."""
    parted = ["upload", "bare", "bare_sync"] if parts else []
    return ["curl", "hashing", "ours", *parted, *(["also"] if also else [])]


def floor_rounds(asked: int, players: int) -> int:
    """The ingest floor's rounds: a multiple of its players, so each takes each place in the order equally
    often. A real server's state drifts over a round (its database grows by every run), and a place taken
    more often showed as a 0.5 s difference between two builds that sent the same requests."""
    return -(-max(1, asked) // players) * players


class Server:
    """tests/immich_server.py in its own process, fresh and empty; `with Server(work) as s: s.url`. With
    `delay_ms` it answers every request that much later (--delay-ms)."""

    key = API_KEY
    real = False
    measures_cpu = True

    def __init__(self, work: Path, delay_ms: float = 0.0) -> None:
        self.work = work
        self.delay_ms = delay_ms
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.stderr = tempfile.TemporaryFile(dir=self.work)
        cmd = [
            PYTHON,
            str(SERVER_SCRIPT),
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--delay-ms",
            f"{self.delay_ms:g}",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=self.stderr, env=child_environment(), cwd=PROJECT_DIR
        )
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

    def received(self) -> list[dict[str, object]]:
        """Every upload request the stand-in processed: {sha1, status, size} (its test-only route)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{self.url}/__stand-in__/uploads", timeout=60) as response:
            return list(json.loads(response.read()))

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


class RealServer:
    """A real Immich named by IMMICH_BENCH_URL / IMMICH_BENCH_KEY: not started, not fresh. On this machine,
    its CPU figure is the machine's less the client's (Immich, its database, and anything else running); no
    figure for one elsewhere."""

    real = True

    def __init__(self, url: str, key: str) -> None:
        self.url = url.rstrip("/").removesuffix("/api")
        self.key = key
        self.measures_cpu = urllib.parse.urlsplit(self.url).hostname in ("127.0.0.1", "localhost", "::1")

    def __enter__(self) -> RealServer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def cpu_s(self) -> float:
        """The machine's busy CPU time (every process; the caller takes the client's off), or 0."""
        if not self.measures_cpu:
            return 0.0
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, stat.readline().split()[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def admin_call(server: RealServer, method: str, path: str, body: object = None) -> Any:
    """One request to a real Immich's API with its admin key; its JSON answer."""
    headers = {"x-api-key": server.key, "Accept": "application/json", "Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.url}/api{path}", data, headers, method=method)
    with urllib.request.build_opener().open(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def pause_queues(server: RealServer, paused: bool, names: Sequence[str] | None = None) -> list[str]:
    """Pause (or resume) a real Immich's queues with its admin key: `names`, or every queue not yet in that
    state; returns the names changed."""
    if names is None:
        queues = admin_call(server, "GET", "/queues")
        names = [str(q["name"]) for q in queues if bool(q.get("isPaused")) != paused]
    changed = []
    for name in names:
        try:
            admin_call(server, "PUT", f"/queues/{name}", {"isPaused": paused})
            changed.append(name)
        except OSError:  # some internal queues answer 400
            pass
    return changed


def wait_for_idle_queues(server: RealServer, timeout_s: float = 600.0) -> tuple[int, float]:
    """Wait until a real Immich's running queues hold no jobs, at most `timeout_s`: the background tasks its
    earlier deletions queued (the last bench run deleted tens of thousands of photos) cannot be paused, and
    they took a core: the next run's rounds were twice as slow. Returns the jobs left and the wait."""
    started = time.monotonic()
    while True:
        queues = admin_call(server, "GET", "/queues") or []
        busy = sum(
            int(q.get("statistics", {}).get("active", 0)) + int(q.get("statistics", {}).get("waiting", 0))
            for q in queues
            if not q.get("isPaused")  # a paused queue's jobs wait, and take no core
        )
        waited = time.monotonic() - started
        if not busy or waited >= timeout_s:
            return busy, waited
        time.sleep(2)


def bytes_received_twice(received: list[dict[str, object]]) -> int:
    """Files whose bytes reached the server more than once (early duplicate answers carry no body: size 0)."""
    bodies: dict[str, int] = {}
    for record in received:
        if int(str(record.get("size") or 0)) > 0:
            sha1 = str(record.get("sha1"))
            bodies[sha1] = bodies.get(sha1, 0) + 1
    return sum(1 for n in bodies.values() if n > 1)


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


def make_photo_tree(
    root: Path, count: int, size_range: tuple[int, int], rng: random.Random, *, fresh: bool = False
) -> int:
    """`count` photo-sized .jpg files in folders of 50: a JPEG with EXIF, a unique tag (the file number; with
    `fresh`, also a random id so no earlier run made the same bytes), then bytes cut from a random pool.
    Returns the total bytes."""
    pool = os.urandom(RANDOM_POOL) if fresh else rng.randbytes(RANDOM_POOL)
    nonce = uuid.uuid4().bytes if fresh else b""
    total = 0
    with memoryview(pool) as view:
        for n in range(count):
            size = rng.randint(*size_range)
            head = jpeg_header(n) + n.to_bytes(8, "big") + nonce  # after the JPEG's end: ignored by readers
            pad = size - len(head)
            offset = rng.randrange(0, RANDOM_POOL - pad)
            path = root / f"2021-{n // 50:02d}" / f"IMG_{n:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                f.write(head)
                f.write(view[offset : offset + pad])
            total += size
    return total


def tree_sha1s(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.jpg")):
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            while chunk := f.read(MIB):
                digest.update(chunk)
        out.append(digest.hexdigest())
    return out


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


def warm_bytecode(project: Path = PROJECT_DIR) -> None:
    """Import our scripts once, so the runs measured start from a written bytecode cache, as a user's do."""
    code = "import scan_files, sync_upload, upload_files"
    subprocess.run(
        [PYTHON, "-c", code], cwd=project, env=child_environment(), capture_output=True, timeout=120
    )


def tool_revision() -> str:
    """The commit of the tool measured, `+changes` when the tree differs from it (others edit it as we run)."""
    try:
        proc = subprocess.run(["git", "describe", "--always", "--dirty=+changes"], cwd=PROJECT_DIR,
                              capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "?"
    return proc.stdout.strip() or "?"


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
    def env_file(
        self, source: Path, db: Path, server: Server | RealServer | None = None, **settings: object
    ) -> Path:
        """Only what a user must set: folder, database, log, server and key. `settings` (other settings) are for
        rows labelled with them; the default rows pass none."""
        self._n += 1
        return write_env(
            self.work / f"run{self._n}.env",
            SOURCE_DIR=source,
            DB_PATH=db,
            LOG_FILE=self.work / "logs" / f"run{self._n}.log",
            IMMICH_URL=server.url if server else "",
            IMMICH_API_KEY=server.key if server else API_KEY,
            **settings,
        )

    def ours(
        self,
        script: str,
        env_file: Path,
        server: Server | RealServer | None,
        *extra: str,
        project: Path = PROJECT_DIR,
    ) -> Measured:
        cmd = [PYTHON, str(project / script), "--env-file", str(env_file), "--json", "--no-progress"]
        env = child_environment(proxies=bool(server and server.real))
        run = run_measured([*cmd, *extra], self.work, env=env, server=server)
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

    def check_received_once(self, what: str, server: Server | RealServer) -> None:
        if isinstance(server, Server):
            twice = bytes_received_twice(server.received())
            if twice:
                self.report.note(f"{what}: the server received the bytes of {twice} file(s) more than once")

    # -- part 1 (and 4): first sync and unchanged rerun, ours vs the official CLI, each at its defaults
    def versus_cli(
        self,
        cli: list[str] | None,
        *,
        name: str,
        title: str,
        server_for: Callable[[], Server | RealServer],
        ours_tree: Path,
        cli_tree: Path,
        count: int,
        nbytes: int,
        repeat: int,
        first_target: float,
        rerun_target: float | None,
    ) -> None:
        rows = self.report.section(title)
        firsts: list[Measured] = []
        reruns: list[Measured] = []
        cli_firsts: list[Measured] = []
        cli_reruns: list[Measured] = []
        for rep in range(repeat):
            # Ours and the CLI take turns, each on its own fresh server, so a busy minute hurts both alike.
            with server_for() as server:
                env = self.env_file(ours_tree, self.work / f"sync{self._n}.db", server)
                first = self.ours("sync_upload.py", env, server)
                self.check_uploaded("sync_upload.py first run", first, count)
                self.check_received_once("sync_upload.py first run", server)
                rerun = self.ours("sync_upload.py", env, server)
                data = rerun.json()
                if data.get("uploaded") or data.get("new") or data.get("changed") or data.get("duplicates"):
                    self.report.note(f"sync rerun was not a no-op: {data}")
                firsts.append(first)
                reruns.append(rerun)
            line = f"[sync] run {rep + 1}: ours first {first.wall_s:.2f} s, rerun {rerun.wall_s:.2f} s"
            if cli is not None:
                with server_for() as server:
                    cli_firsts.append(self.cli_upload(cli, server, cli_tree, None, expect_new=count))
                    cli_reruns.append(self.cli_upload(cli, server, cli_tree, None, expect_new=0))
                line += f"; CLI first {cli_firsts[-1].wall_s:.2f} s, rerun {cli_reruns[-1].wall_s:.2f} s"
            print(line, flush=True)
        first = median_run(firsts, lambda r: r.wall_s)
        rerun = median_run(reruns, lambda r: r.wall_s)
        cli_first = median_run(cli_firsts, lambda r: r.wall_s) if cli_firsts else None
        cli_rerun = median_run(cli_reruns, lambda r: r.wall_s) if cli_reruns else None
        cli_same_c: Measured | None = None
        if cli is not None and ours_tree == cli_tree and CLI_DEFAULT_CONCURRENCY != OUR_CONCURRENCY:
            # For the reader only (no target): the CLI with as many uploads in flight as ours, on a fresh server
            # (so never on a real one, which has the files by now).
            with server_for() as server:
                cli_same_c = self.cli_upload(cli, server, cli_tree, OUR_CONCURRENCY, expect_new=count)
            print(f"[sync] CLI --concurrency {OUR_CONCURRENCY}: first {cli_same_c.wall_s:.2f} s", flush=True)

        target, verdict = "", ""
        if cli_first is not None:
            speedup = cli_first.wall_s / first.wall_s
            target = f">= {first_target:g}x faster than CLI ({speedup:.2f}x)"
            verdict = "ok" if speedup >= first_target else "MISSED"
        rows.append(Row("ours, first: sync_upload.py (defaults, scan+upload)", first.wall_s, nbytes, count,
                        first.peak_rss, first.cpu_s, first.server_cpu_s, target, verdict))  # fmt: skip
        if cli_first is not None:
            rows.append(Row(f"CLI, first: immich upload -r (defaults: -c {CLI_DEFAULT_CONCURRENCY})",
                            cli_first.wall_s, nbytes, count, cli_first.peak_rss, cli_first.cpu_s,
                            cli_first.server_cpu_s))  # fmt: skip
        if cli_same_c is not None:
            rows.append(Row(f"CLI, first, --concurrency {OUR_CONCURRENCY} (1 run, no target)", cli_same_c.wall_s,
                            nbytes, count, cli_same_c.peak_rss, cli_same_c.cpu_s,
                            cli_same_c.server_cpu_s))  # fmt: skip
        target, verdict = "", ""
        if cli_rerun is not None and rerun_target is not None:
            speedup = cli_rerun.wall_s / rerun.wall_s
            target = f">= {rerun_target:g}x faster than CLI ({speedup:.1f}x)"
            verdict = "ok" if speedup >= rerun_target else "MISSED"
        rows.append(Row("ours, rerun unchanged: sync_upload.py (defaults)", rerun.wall_s, 0, count,
                        rerun.peak_rss, rerun.cpu_s, rerun.server_cpu_s, target, verdict))  # fmt: skip
        if cli_rerun is not None:
            rows.append(Row("CLI, rerun unchanged (re-hashes every file)", cli_rerun.wall_s, 0, count,
                            cli_rerun.peak_rss, cli_rerun.cpu_s, cli_rerun.server_cpu_s))  # fmt: skip
        text = f"ours first/rerun (s): {spread([r.wall_s for r in firsts])} / {spread([r.wall_s for r in reruns])}"
        if cli_firsts:
            text += (
                f"; CLI first/rerun (s): {spread([r.wall_s for r in cli_firsts])} / "
                f"{spread([r.wall_s for r in cli_reruns])}"
            )
        self.report.note(f"{name}: {text}")
        if isinstance(server, RealServer):
            for row in rows:
                row.server_cpu_s = None  # not ours to measure

    def cli_upload(
        self,
        cli: list[str],
        server: Server | RealServer,
        tree: Path,
        concurrency: int | None,
        expect_new: int,
    ) -> Measured:
        env = child_environment(
            proxies=server.real,
            IMMICH_INSTANCE_URL=server.url + "/api",
            IMMICH_API_KEY=server.key,
            IMMICH_CONFIG_DIR=str(self.work / "cli-config"),
        )
        cmd = [*cli, "upload", "--recursive", "--no-progress"]
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        run = run_measured([*cmd, str(tree)], self.work, env=env, server=server)
        uploaded = re.search(r"Successfully uploaded (\d+) new asset", run.stdout)
        found = re.search(r"Found (\d+) new files and (\d+) duplicate", run.stdout)
        got = int(uploaded[1]) if uploaded else 0
        if run.status != 0 or got != expect_new or "Failed" in run.stdout or (expect_new == 0 and not found):
            self.report.note(
                f"CLI run: exit {run.status}, uploaded {got} (expected {expect_new}): "
                f"{(run.stdout + run.stderr).strip()[-600:]}"
            )
        return run

    # -- part 2: 1 GiB file, the whole upload_files.py process vs curl
    def big_file(self) -> None:
        size = int(self.args.big_gib * (1 << 30))
        big = self.big_dir / "big.mp4"
        label = f"{self.args.big_gib:g} GiB" if size >= 1 << 30 else f"{size // MIB} MiB"
        print(f"[big] writing {label} of random bytes to {big.name}", flush=True)
        write_random(big, size, self.rng)
        template, scan = self.scan_template(self.big_dir, "big")
        repeat = self.args.repeat if self.args.quick else max(5, self.args.repeat)
        rows = self.report.section(
            f"one {label} file ({big.name}, random bytes), upload_files.py after a scan, median of {repeat} "
            "run(s) (cheap, and the noisiest figure)"
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
                    run = self.ours("upload_files.py", self.env_file(self.big_dir, db, server), server)
                    self.check_uploaded("upload_files.py, big file", run, 1)
                    ours.append(run)
            print(
                f"[big] run {rep + 1}: curl {curls[-1].wall_s:.2f} s, ours: process {run.wall_s:.2f} s "
                f"(elapsed_s {elapsed_s(run):.2f} s), peak RSS {run.peak_rss / MB:.0f} MB",
                flush=True,
            )
        curl = median_run(curls, lambda r: r.wall_s)
        mine = median_run(ours, lambda r: r.wall_s)
        inner = median_run(ours, elapsed_s)
        peak = max(r.peak_rss for r in ours)
        curl_rate = size / curl.wall_s
        ratio = (size / mine.wall_s) / curl_rate
        ok = ratio >= CURL_RATIO_TARGET and peak < RSS_TARGET
        rows.append(Row("curl -F assetData=@file (process)", curl.wall_s, size, rss=curl.peak_rss,
                        cpu_s=curl.cpu_s, server_cpu_s=curl.server_cpu_s))  # fmt: skip
        rows.append(
            Row(
                "ours, upload_files.py (process wall time)", mine.wall_s, size, rss=peak, cpu_s=mine.cpu_s,
                server_cpu_s=mine.server_cpu_s,
                target=f">= {CURL_RATIO_TARGET}x curl ({ratio:.2f}x), < {RSS_TARGET // MB} MB",
                verdict="ok" if ok else "MISSED",
            )
        )  # fmt: skip
        inner_ratio = (size / elapsed_s(inner)) / curl_rate
        rows.append(Row("ours, upload_files.py (JSON elapsed_s, secondary)", elapsed_s(inner), size,
                        target=f"({inner_ratio:.2f}x curl)"))  # fmt: skip
        rows.append(Row("ours, scan_files.py of the file (hashing, ref.)", scan.wall_s, size,
                        rss=scan.peak_rss, cpu_s=scan.cpu_s))  # fmt: skip
        startup = [r.wall_s - elapsed_s(r) for r in ours]
        self.report.note(
            f"big file runs (s): curl {spread([r.wall_s for r in curls])}; ours process "
            f"{spread([r.wall_s for r in ours])}, elapsed_s {spread([elapsed_s(r) for r in ours])} (process minus "
            f"elapsed_s, i.e. start-up, connect and exit: {spread(startup)}); peak RSS "
            f"{spread([r.peak_rss / MB for r in ours])} MB; minor page faults: ours {mine.minflt}, curl {curl.minflt}"
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

    # -- part 3: UPLOAD_CONCURRENCY 1/2/4/8 against a server answering after 0, 5, 50 ms
    def concurrency(self, template: Path, scan: Measured, delay_ms: float) -> None:
        count = self.args.small
        repeat = self.args.repeat if delay_ms == 0 else 1
        rows = self.report.section(
            f"{count} photos ({self.small_bytes / MB:.0f} MB), upload_files.py after a scan, server answers "
            f"{'at once' if delay_ms == 0 else f'after {delay_ms:g} ms'}; time = its upload part (JSON "
            f"elapsed_s), {f'median of {repeat}' if delay_ms == 0 else '1 run (the delay dominates)'}"
        )
        if delay_ms == 0:
            rows.append(Row("scan_files.py (hash + metadata, reference)", scan.wall_s, self.small_bytes, count,
                            scan.peak_rss, scan.cpu_s))  # fmt: skip
        measured: list[tuple[int, Measured]] = []
        for concurrency in CONCURRENCIES:
            runs = []
            for _ in range(repeat):
                with Server(self.work, delay_ms) as server:
                    db = self.work / "small.db"
                    copy_db(template, db)
                    env = self.env_file(self.small_dir, db, server, UPLOAD_CONCURRENCY=concurrency)
                    run = self.ours("upload_files.py", env, server)
                    self.check_uploaded(f"upload_files.py c={concurrency}, {delay_ms:g} ms", run, count)
                    runs.append(run)
            run = median_run(runs, elapsed_s)
            measured.append((concurrency, run))
            text = (
                f"server delay {delay_ms:g} ms, UPLOAD_CONCURRENCY={concurrency}: elapsed_s "
                f"{spread([elapsed_s(r) for r in runs])}, process wall {spread([r.wall_s for r in runs])}"
            )
            print(f"[concurrency] {text}", flush=True)
            self.report.notes.append(text)
            rows.append(
                Row(
                    f"UPLOAD_CONCURRENCY={concurrency}{' (the default)' if concurrency == OUR_CONCURRENCY else ''}",
                    elapsed_s(run), self.small_bytes, count, max(r.peak_rss for r in runs), run.cpu_s,
                    run.server_cpu_s,
                )
            )  # fmt: skip
        best_c, best = min(measured, key=lambda m: elapsed_s(m[1]))
        ours_run = dict(measured)[OUR_CONCURRENCY]
        for row in rows:
            if row.label.startswith(f"UPLOAD_CONCURRENCY={best_c}"):
                row.target = "fastest"
        self.report.note(
            f"server delay {delay_ms:g} ms: fastest UPLOAD_CONCURRENCY={best_c} ({count / elapsed_s(best):.1f} "
            f"files/s); the default {OUR_CONCURRENCY}: {count / elapsed_s(ours_run):.1f} files/s, "
            f"{elapsed_s(best) / elapsed_s(ours_run):.0%} of the fastest's speed"
        )

    # -- part 4: the same comparison against a real Immich, if one is named
    def real_server(self, cli: list[str] | None) -> None:
        url, key = os.environ.get("IMMICH_BENCH_URL", ""), os.environ.get("IMMICH_BENCH_KEY", "")
        if not (url and key):
            rows = self.report.section("first sync against a real Immich")
            rows.append(Row("skipped: IMMICH_BENCH_URL and IMMICH_BENCH_KEY are not both set"))
            self.report.note(
                "real-server comparison skipped: IMMICH_BENCH_URL and IMMICH_BENCH_KEY are not set"
            )
            return
        count = self.args.real_files
        server = RealServer(url, key)
        trees = {who: self.work / f"real-{who}" for who in ("ours", "cli")}
        nbytes = 0
        print(f"[real] {count} new photos for each tool, for {server.url}", flush=True)
        for tree in trees.values():
            nbytes = make_photo_tree(tree, count, self.args.size_range, self.rng, fresh=True)
        try:
            self.versus_cli(
                cli,
                name="real server",
                title=f"real Immich at {server.url}: first sync of {count} new photos ({nbytes / MB:.0f} MB), 1 run",
                server_for=lambda: server,
                ours_tree=trees["ours"],
                cli_tree=trees["cli"],
                count=count,
                nbytes=nbytes,
                repeat=1,
                first_target=REAL_FIRST_SPEEDUP_TARGET,
                rerun_target=None,
            )
        finally:
            if self.args.real_keep:
                self.report.note(f"real server: the {2 * count} uploaded test photos were kept (--real-keep)")
            else:
                self.delete_from_real(server, [*tree_sha1s(trees["ours"]), *tree_sha1s(trees["cli"])])

    def delete_from_real(self, server: RealServer, sha1s: list[str]) -> None:
        """Find our test photos by checksum (bulk-upload-check names the asset) and delete them for good."""
        import requests

        headers = {"x-api-key": server.key, "Accept": "application/json"}
        try:
            ids: list[str] = []
            for start in range(0, len(sha1s), 500):
                items = [{"id": str(i), "checksum": c} for i, c in enumerate(sha1s[start : start + 500])]
                response = requests.post(f"{server.url}/api/assets/bulk-upload-check", json={"assets": items},
                                         headers=headers, timeout=60)  # fmt: skip
                response.raise_for_status()
                ids += [r["assetId"] for r in response.json()["results"] if r.get("assetId")]
            if ids:
                response = requests.delete(f"{server.url}/api/assets", json={"ids": ids, "force": True},
                                           headers=headers, timeout=120)  # fmt: skip
                response.raise_for_status()
            self.report.note(f"real server: deleted the {len(ids)} test photos this run uploaded (force)")
        except (requests.RequestException, KeyError, ValueError) as exc:
            self.report.note(f"real server: could not delete the test photos ({exc}); delete them by hand")

    # -- part 5: the server's ingest floor, curl --parallel sending bare uploads, vs our whole first sync
    def ingest_floor(self) -> None:
        if self.args.floor_real_only:
            self.real_floor()
            return
        players = floor_players(bool(self.args.floor_also), parts=True)
        rounds = floor_rounds(self.args.floor_pairs, len(players))
        self.floor_pairs(
            f"the ingest floor on the test server: {self.args.small} photos ({self.small_bytes / MB:.0f} MB), "
            f"our first sync (defaults, fresh DB) vs curl --parallel-max {CURL_PARALLEL} bare uploads, each on a "
            f"fresh server, {rounds} rounds in turn",
            lambda: Server(self.work),
            lambda _rep, _who: (self.small_dir, self.args.small, self.small_bytes),
            rounds,
            players,
        )
        count = self.args.floor_files
        small_tree = self.work / "floor-small"
        small_bytes = make_photo_tree(small_tree, count, FLOOR_SIZE_RANGE, self.rng)
        self.floor_pairs(
            f"the ingest floor on the test server: {count} photos of ~400 KB ({small_bytes / MB:.0f} MB, the "
            f"real-server shape), each on a fresh server, {rounds} rounds in turn",
            lambda: Server(self.work),
            lambda _rep, _who: (small_tree, count, small_bytes),
            rounds,
            players,
        )
        shutil.rmtree(small_tree, ignore_errors=True)
        self.real_floor()

    def real_floor(self) -> None:
        url, key = os.environ.get("IMMICH_BENCH_URL", ""), os.environ.get("IMMICH_BENCH_KEY", "")
        if not (url and key):
            self.report.note(
                "ingest floor on a real Immich skipped: IMMICH_BENCH_URL/IMMICH_BENCH_KEY not set"
            )
            return
        count = self.args.floor_files
        real = RealServer(url, key)
        sha1s: list[str] = []

        def fresh_tree(rep: int, who: str) -> tuple[Path, int, int]:
            tree = self.work / f"floor-{who}-{rep}"
            shutil.rmtree(self.work / f"floor-{who}-{rep - 1}", ignore_errors=True)
            nbytes = make_photo_tree(tree, count, FLOOR_SIZE_RANGE, self.rng, fresh=True)
            sha1s.extend(tree_sha1s(tree))
            return tree, count, nbytes

        players = floor_players(bool(self.args.floor_also))
        rounds = floor_rounds(self.args.floor_pairs, len(players))
        paused = pause_queues(real, True)
        self.report.note(f"real server: paused queues {','.join(paused) or '(none: all were paused)'}")
        try:
            busy, waited = wait_for_idle_queues(real)
            self.report.note(
                f"real server: waited {waited:.0f} s for its running queues to empty"
                + (
                    f"; {busy} jobs still running or waiting: the rounds share the cores with them"
                    if busy
                    else ""
                )
            )
            # A real Immich just started is slow for its first few thousand uploads (1,000 photos a run, after a
            # restart: 7.4 s, 6.3 s, 5.4 s): the first round's first player would pay for it. Untimed, by curl.
            warm, _, _ = fresh_tree(0, "warm-up")
            warm_run = self.curl_parallel(warm, real, count)
            shutil.rmtree(warm, ignore_errors=True)
            self.report.note(
                f"real server: warmed up by curl with {count} photos, untimed ({warm_run.wall_s:.1f} s)"
            )
            self.floor_pairs(
                f"the ingest floor on a real Immich at {real.url}: {count} photos of ~400 KB, new bytes every run, "
                f"queues paused, {rounds} rounds in turn",
                lambda: real,
                fresh_tree,
                rounds,
                players,
            )
        finally:
            if not self.args.real_keep:
                self.delete_from_real(real, sha1s)
            resumed = pause_queues(real, False, paused)
            self.report.note(f"real server: resumed queues {','.join(resumed)}")

    def floor_pairs(
        self,
        title: str,
        server_for: Callable[[], Server | RealServer],
        tree_for: Callable[[int, str], tuple[Path, int, int]],
        rounds: int,
        players: list[str],
    ) -> None:
        """`rounds` rounds (a multiple of the players: floor_rounds) of the `players` (floor_players), the order
        turning each round; the median of each round's ratio to curl is quoted."""
        rows = self.report.section(title)
        also = self.args.floor_also
        runs: dict[str, list[Measured]] = {who: [] for who in players}
        ratios: dict[str, list[float]] = {who: [] for who in players[1:]}
        to_hashing: list[float] = []  # ours against curl beside the hashes, round by round
        nbytes = count = 0
        measured = False
        scanned = Path()  # the upload alone's tree, scanned before the rounds (the test server: one tree)
        if "upload" in players:  # its database named by _n, which no other has
            scanned, _ = self.scan_template(tree_for(0, "upload")[0], f"floor-scan{self._n}")
        for rep in range(rounds):
            for who in players[rep % len(players) :] + players[: rep % len(players)]:
                tree, count, nbytes = tree_for(rep, who)
                # The tree just written, and what the server stored of the run before, are written back to
                # disk now, not by the kernel's flusher in the middle of the next timed run (a real Immich
                # writes every upload it takes: 1.6 GB a run of 4,000 photos).
                os.sync()
                with server_for() as server:
                    if who == "curl":
                        run = self.curl_parallel(tree, server, count)
                    elif who == "hashing":
                        run = self.curl_and_hashes(tree, server, count)
                    elif who in ("bare", "bare_sync"):
                        run = self.bare_sender(tree, server, count, hashing=2 if who == "bare_sync" else 0)
                    elif who == "upload":
                        db = self.work / f"floor{self._n}.db"
                        copy_db(scanned, db)
                        run = self.ours("upload_files.py", self.env_file(tree, db, server), server)
                        self.check_uploaded("upload_files.py after a scan (ingest floor)", run, count)
                    else:
                        env = self.env_file(tree, self.work / f"floor{self._n}.db", server)
                        project = Path(also) if who == "also" else PROJECT_DIR
                        run = self.ours("sync_upload.py", env, server, project=project)
                        self.check_uploaded(f"{who}: sync_upload.py first sync (ingest floor)", run, count)
                    runs[who].append(run)
                    measured = server.measures_cpu
            for who in players[1:]:
                ratios[who].append(runs["curl"][-1].wall_s / runs[who][-1].wall_s)
            to_hashing.append(runs["hashing"][-1].wall_s / runs["ours"][-1].wall_s)
            print(f"[floor] round {rep + 1}: " + ", ".join(f"{who} {runs[who][-1].wall_s:.2f} s" for who in players)
                  + "; ratio to curl " + ", ".join(f"{who} {ratios[who][-1]:.2f}x" for who in players[1:]),
                  flush=True)  # fmt: skip
        curl = median_run(runs["curl"], lambda r: r.wall_s)
        rows.append(Row(f"curl --parallel --parallel-max {CURL_PARALLEL} -K <config> (bare uploads)", curl.wall_s,
                        nbytes, count, curl.peak_rss, curl.cpu_s, curl.server_cpu_s if measured else None))  # fmt: skip
        for who in players[1:]:
            ratio = statistics.median(ratios[who])
            mine = median_run(runs[who], lambda r: r.wall_s)
            label = {
                "hashing": "the same curl beside openssl's SHA-256 and SHA-1 of the files (hashing beside curl)",
                "ours": "ours, first sync: sync_upload.py (defaults, fresh DB)",
                "upload": "  its upload alone: upload_files.py after a scan (no hashing beside it)",
                "bare": "  a bare Python sender: 8 threads, raw sockets, our requests, no checks (bare_sender.py)",
                "bare_sync": "  a bare Python sync: the same, each file hashed first on 2 threads (--hashing 2)",
            }.get(who, f"before: {also}")
            target = (
                f">= {FLOOR_RATIO_TARGET}x curl (median ratio {ratio:.2f}x; "
                f"{statistics.median(to_hashing):.2f}x curl beside the hashes)"
                if who == "ours"
                else f"({ratio:.2f}x)"
            )
            verdict = ("ok" if ratio >= FLOOR_RATIO_TARGET else "MISSED") if who == "ours" else ""
            rows.append(Row(label, mine.wall_s, nbytes, count, mine.peak_rss, mine.cpu_s,
                            mine.server_cpu_s if measured else None, target, verdict))  # fmt: skip
        self.report.note(
            f"{title.split(': ')[0]}: "
            + "; ".join(f"{who} {spread([r.wall_s for r in runs[who]])} s" for who in players)
            + "; ratios to curl "
            + "; ".join(f"{who} {spread(ratios[who])}" for who in players[1:])
        )

    def bare_sender(self, tree: Path, server: Server | RealServer, count: int, hashing: int = 0) -> Measured:
        """bench/bare_sender.py sending every photo of `tree`: what sending costs a Python client that does
        nothing else (no checks, no records), CURL_PARALLEL threads like curl's transfers; with `hashing`
        threads taking each file's SHA-256 and SHA-1 before it is sent, what a bare Python sync costs."""
        cmd = [PYTHON, str(BARE_SENDER), server.url, server.key, str(tree), "--parallel", str(CURL_PARALLEL),
               "--hashing", str(hashing)]  # fmt: skip
        run = run_measured(cmd, self.work, env=child_environment(), server=server)
        if run.status != 0 or run.stdout.strip() != f"created {count} of {count}":
            self.report.note(
                f"bare_sender.py: {run.stdout.strip()} (exit {run.status}) {run.stderr.strip()[-300:]}"
            )
        return run

    def curl_parallel(
        self, tree: Path, server: Server | RealServer, count: int, beside: Callable[[], object] | None = None
    ) -> Measured:
        """curl sending every photo of `tree` as a bare upload, CURL_PARALLEL at a time (one config file).
        `beside` is called right before curl starts (its config written)."""
        lines: list[str] = []
        for path in sorted(tree.rglob("*.jpg")):
            st = path.stat()
            when = datetime.fromtimestamp(st.st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            if lines:
                lines.append("next")
            lines += [
                f'url = "{server.url}/api/assets"',
                'output = "/dev/null"',
                "silent",
                "show-error",
                # No `Expect: 100-continue` (curl sends it with bodies over 1 MB and waits for the answer; ours
                # never does): the reference is curl at its best (300 photos of 2-5 MB: 4% faster in 4 rounds by
                # hand, within the spread of the bench's own rounds).
                'header = "Expect:"',
                f'header = "x-api-key: {server.key}"',
                'write-out = "%{http_code}\\n"',
                f'form = "deviceAssetId={path.name}-{st.st_size}"',
                'form = "deviceId=bench-curl"',
                f'form = "fileCreatedAt={when}"',
                f'form = "fileModifiedAt={when}"',
                f'form = "assetData=@{path}"',
            ]
        config = self.work / "curl-floor.cfg"
        config.write_text("\n".join(lines) + "\n")
        cmd = ["curl", "--parallel", "--parallel-max", str(CURL_PARALLEL), "-K", str(config)]
        if beside is not None:
            beside()
        run = run_measured(cmd, self.work, env=child_environment(proxies=server.real), server=server)
        created = run.stdout.split().count("201")
        if created != count:
            self.report.note(
                f"curl --parallel: {created} of {count} answered 201 (exit {run.status}; "
                f"{' '.join(sorted(set(run.stdout.split())))}; {run.stderr.strip()[-300:]})"
            )
        return run

    def curl_and_hashes(self, tree: Path, server: Server | RealServer, count: int) -> Measured:
        """curl_parallel with SHA-256 and SHA-1 of the same files made beside it, from the same start: what
        fingerprinting what is sent costs (as ours must, for its record and for Immich's checksum) on the cores
        the server uses too; each file is read once more for each hash. The hashes are `openssl dgst`'s, the
        library hashlib uses (coreutils' sha256sum here has no SHA extensions: 340 MB/s against 1.6 GB/s). Wall
        time from curl's start until all three are done; CPU time of all three. A hash run that fails is noted (its row is then curl's alone)."""
        listing = self.work / "hash-floor.list"
        listing.write_bytes(b"\0".join(bytes(p) for p in sorted(tree.rglob("*.jpg"))))
        hashers: list[subprocess.Popen[bytes]] = []
        started = [0.0, 0.0]  # when curl and the hashes started; the server's CPU time then
        # Their errors go to a file: a pipe nobody reads while they run would stop them once full.
        with tempfile.TemporaryFile(dir=self.work) as errors:

            def start_hashers() -> None:
                started[:] = [time.perf_counter(), server.cpu_s()]
                for digest in ("sha256", "sha1"):
                    with listing.open("rb") as names:
                        hasher = subprocess.Popen(
                            ["xargs", "-0", "-n", "256", "openssl", "dgst", f"-{digest}"],
                            stdin=names,
                            stdout=subprocess.DEVNULL,
                            stderr=errors,
                            env=child_environment(),
                        )
                    hashers.append(hasher)
                    _live.append(hasher)

            hash_cpu = 0.0
            try:
                run = self.curl_parallel(tree, server, count, beside=start_hashers)
                for hasher in hashers:
                    _, wait_status, usage = os.wait4(hasher.pid, 0)
                    hasher.returncode = os.waitstatus_to_exitcode(wait_status)
                    hash_cpu += usage.ru_utime + usage.ru_stime
            finally:
                for hasher in hashers:
                    if hasher.returncode is None:  # curl's run failed: they are not waited for
                        hasher.kill()
                        hasher.wait()
                    _live.remove(hasher)
            failed = [h for h in hashers if h.returncode != 0]
            if failed:
                errors.seek(0)
                said = dict.fromkeys(errors.read().decode("utf-8", "replace").split("\n"))  # each line once
                self.report.note(
                    "hashing beside curl: "
                    + ", ".join(f"{' '.join(map(str, h.args))} exited {h.returncode}" for h in failed)
                    + f": {'; '.join(line for line in said if line)[-300:]}"
                )
        run.wall_s = time.perf_counter() - started[0]
        run.cpu_s += hash_cpu
        run.server_cpu_s = server_cpu_during(server, started[1], run.cpu_s)
        return run

    # -- part 6: a deletion run (--delete-uploaded), next to an unchanged sync of the same state
    def deletion(self) -> None:
        count = self.args.floor_files
        source = self.work / "delete-source"
        nbytes = make_photo_tree(source, count, FLOOR_SIZE_RANGE, self.rng)
        also = self.args.floor_also
        players = ["ours", *(["also"] if also else [])]
        rounds = self.args.repeat
        rows = self.report.section(
            f"a deletion run: {count} photos of ~400 KB uploaded by a first sync, then an unchanged sync and a "
            f"sync --delete-uploaded (each file confirmed in Immich, then deleted); the test server, {rounds} "
            "round(s), median"
        )
        kept: dict[str, list[Measured]] = {who: [] for who in players}
        deleting: dict[str, list[Measured]] = {who: [] for who in players}
        for rep in range(rounds):
            for who in players[rep % len(players) :] + players[: rep % len(players)]:
                project = Path(also) if who == "also" else PROJECT_DIR
                tree = self.work / "delete-tree"
                shutil.rmtree(tree, ignore_errors=True)
                for path in source.rglob("*.jpg"):  # hard links: deleting one leaves the source's
                    (tree / path.parent.name).mkdir(parents=True, exist_ok=True)
                    os.link(path, tree / path.parent.name / path.name)
                with Server(self.work) as server:
                    env = self.env_file(tree, self.work / f"delete{self._n}.db", server)
                    first = self.ours("sync_upload.py", env, server, project=project)
                    self.check_uploaded(f"{who}: first sync before the deletion run", first, count)
                    kept[who].append(self.ours("sync_upload.py", env, server, project=project))
                    run = self.ours("sync_upload.py", env, server, "--delete-uploaded", project=project)
                    left = sum(1 for _ in tree.rglob("*.jpg"))
                    if run.status != 0 or left:
                        self.report.note(f"{who}: deletion run exited {run.status}, {left} files left")
                    deleting[who].append(run)
            print(f"[delete] round {rep + 1}: " + ", ".join(
                f"{who} unchanged {kept[who][-1].wall_s:.2f} s, deleting {deleting[who][-1].wall_s:.2f} s"
                for who in players), flush=True)  # fmt: skip
        for who in players:
            name = "ours" if who == "ours" else f"before: {also}"
            same = median_run(kept[who], lambda r: r.wall_s)
            gone = median_run(deleting[who], lambda r: r.wall_s)
            rows.append(Row(f"{name}: unchanged sync (reference)", same.wall_s, 0, count, same.peak_rss,
                            same.cpu_s, same.server_cpu_s))  # fmt: skip
            rows.append(Row(f"{name}: sync --delete-uploaded", gone.wall_s, 0, count, gone.peak_rss, gone.cpu_s,
                            gone.server_cpu_s, f"({gone.wall_s - same.wall_s:+.2f} s for {count} deletions)"))  # fmt: skip
        self.report.note(
            "deletion runs (s): "
            + "; ".join(
                f"{who} unchanged {spread([r.wall_s for r in kept[who]])}, deleting "
                f"{spread([r.wall_s for r in deleting[who]])}"
                for who in players
            )
            + f" ({nbytes / MB:.0f} MB)"
        )
        shutil.rmtree(source, ignore_errors=True)


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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, one run each (part 5: as many rounds as it has players; ~1 min)",
    )
    parser.add_argument("--big-gib", type=float, help="size of the big file in GiB (default 1, quick 0.125)")
    parser.add_argument("--small", type=int, help="number of photos (default 2000, quick 40)")
    parser.add_argument("--repeat", type=int, help="runs per measurement, median shown (default 3, quick 1)")
    parser.add_argument(
        "--delays-ms", default="0,5,50", help="server delays for the concurrency part (default 0,5,50)"
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the official Immich CLI comparison")
    parser.add_argument(
        "--parts",
        default="1,2,3,4,5,6",
        help="which numbered parts of the docstring to run (default 1,2,3,4,5,6)",
    )
    parser.add_argument(
        "--floor-real-only", action="store_true", help="part 5 on the real server only (IMMICH_BENCH_URL)"
    )
    parser.add_argument(
        "--floor-also",
        metavar="DIR",
        help="parts 5 and 6: also time DIR/sync_upload.py (an earlier checkout) each round",
    )
    parser.add_argument(
        "--floor-pairs",
        type=int,
        help="rounds for the ingest floor, rounded up to a multiple of its players (default 5, quick 1)",
    )
    parser.add_argument(
        "--floor-files", type=int, help="photos of ~400 KB per ingest-floor run (default 1000)"
    )
    parser.add_argument(
        "--real-files", type=int, help="photos per tool for the real-server part (default 200, quick 20)"
    )
    parser.add_argument(
        "--real-keep", action="store_true", help="keep the test photos on the real server afterwards"
    )
    args = parser.parse_args(argv)
    args.big_gib = args.big_gib if args.big_gib is not None else (0.125 if args.quick else 1.0)
    args.small = args.small if args.small is not None else (40 if args.quick else 2000)
    args.repeat = max(1, args.repeat if args.repeat is not None else (1 if args.quick else 3))
    args.floor_pairs = args.floor_pairs if args.floor_pairs is not None else (1 if args.quick else 5)
    args.floor_files = args.floor_files if args.floor_files is not None else (40 if args.quick else 1000)
    args.real_files = args.real_files if args.real_files is not None else (20 if args.quick else 200)
    try:
        args.delays = [float(d) for d in args.delays_ms.split(",") if d.strip()]
    except ValueError:
        parser.error(f"--delays-ms: numbers separated by commas, not {args.delays_ms!r}")
    args.size_range = (2 * MB, 5 * MB)
    args.parts = {p.strip() for p in args.parts.split(",")}
    if not args.parts <= {"1", "2", "3", "4", "5", "6"}:
        parser.error(f"--parts: numbers 1-6 separated by commas, not {','.join(sorted(args.parts))!r}")
    real = bool(os.environ.get("IMMICH_BENCH_URL") and os.environ.get("IMMICH_BENCH_KEY"))

    big_size = int(args.big_gib * (1 << 30))
    need = big_size + (args.small + (2 * args.real_files if real else 0)) * args.size_range[1] + 200 * MB
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
    revision = tool_revision()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_upload_", dir="/tmp"))
    bench = Bench(args, work)
    report = bench.report
    try:
        if args.quick:
            report.note(
                "--quick: sizes too small for the targets to mean much; fixed start-up costs dominate "
                "(Python start-up and imports for ours, node start-up for the CLI)"
            )
        warm_bytecode()
        if args.floor_also:
            warm_bytecode(Path(args.floor_also))
        cli = None if args.no_cli or not args.parts & {"1", "4"} else install_cli(report)
        if args.no_cli:
            report.note("official CLI skipped (--no-cli)")
        if args.parts & {"1", "3", "4"} or ("5" in args.parts and not args.floor_real_only):
            print(
                f"[data] {args.small} photo-sized files (2-5 MB, random bytes after a JPEG header) in {work}",
                flush=True,
            )
            bench.small_bytes = make_photo_tree(bench.small_dir, args.small, args.size_range, bench.rng)
        if "1" in args.parts:
            bench.versus_cli(
                cli,
                name="first sync",
                title=(
                    f"first sync and unchanged rerun of {args.small} photos ({bench.small_bytes / MB:.0f} MB), each tool "
                    f"at its defaults against its own fresh server, median of {args.repeat}"
                ),
                server_for=lambda: Server(work),
                ours_tree=bench.small_dir,
                cli_tree=bench.small_dir,
                count=args.small,
                nbytes=bench.small_bytes,
                repeat=args.repeat,
                first_target=FIRST_SPEEDUP_TARGET,
                rerun_target=RERUN_SPEEDUP_TARGET,
            )
        if "2" in args.parts:
            bench.big_file()
        if "3" in args.parts:
            template, scan = bench.scan_template(bench.small_dir, "small")
            for delay_ms in args.delays:
                bench.concurrency(template, scan, delay_ms)
        if "4" in args.parts:
            bench.real_server(cli)
        if "5" in args.parts:
            bench.ingest_floor()
        if "6" in args.parts:
            bench.deletion()
        curl_version = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout.split()[1]
        print_table(
            report,
            [
                "upload benchmark (loopback test server, its own process, fresh per measurement; our scripts at the",
                f"  shipped defaults UPLOAD_CONCURRENCY={OUR_CONCURRENCY}, UPLOAD_DELAY={OUR_DELAY} unless a row "
                f"names a setting; tool at {revision};",
                f"  files in the page cache, bytecode cache warm; {os.cpu_count()} CPUs shared by client and server; "
                "MB = 10^6 bytes;",
                f"  Python {sys.version.split()[0]}, curl {curl_version}; time = process wall time unless the "
                "section says otherwise;",
                "  CPU = user+sys of the client process and its helpers (the scan's worker pool), start-up included;",
                "  srv CPU = the test server's (a real Immich on this machine: the machine's busy CPU less",
                "  the client's); peak RSS = the highest VmHWM of the process, or of the sum of VmRSS",
                "  over it and its helpers, polled every 20 ms;",
                f"  {time.perf_counter() - started:.0f} s in all; 1-min load average {load_before} before, {loadavg()} "
                "after: other work on the machine adds noise)",
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
