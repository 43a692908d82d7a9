#!/usr/bin/env python3
"""Scan benchmark: how fast scan_files.py fingerprints a photo tree, next to `sha1sum` on the same files; how
fast an unchanged rescan of many small files is, on SQLite and (with --mysql) MariaDB; what an unchanged sync
costs next to starting Python and walking the folder; how fast a first scan of many small photos is next to
plain hashing; and (with --million) what a library of a million files costs in memory and time.

Every figure is printed beside a reference measured in the same run; nothing is asserted about time (shared
machines are noisy) and the exit status is 0 whenever every run could be measured. The tool always runs as a
user runs it: `scan_files.py --env-file X --json --no-progress` (or sync_upload.py, upload_files.py) in its own
process. Parts:

  1. photos (2 GiB of 4-6 MiB JPEGs): first scan vs `sha1sum`, the unchanged rescan, 4 KiB vs 1 MiB reads;
  2. small files (100,000 x 1 KiB): first scan and unchanged rescan (target < 5 s on SQLite, < 10 s MariaDB)
     next to `find` stat-ing the tree;
  3. unchanged sync of 2,000 photos (2-5 MB, as bench_upload.py makes them): sync_upload.py against the Immich
     stand-in (tests/immich_server.py, its own process) after a first sync, vs the reference: an os.scandir
     walk (with a stat per file) of the same tree in its own Python process, so Python's start-up is in it (both
     parts printed: `python -c pass`, and the rest); target: within 2.5x the reference. Also the same sync run
     with PYTHONDONTWRITEBYTECODE=1 from a copy of the scripts without a bytecode cache (as in a container).
     Also vs the official CLI's unchanged rerun on the same tree (installed by bench_upload.install_cli;
     skipped with a note if that fails or --no-cli); target: >= 20x faster;
  4. first scan of 20,000 small photos (160x120 JPEGs with EXIF made by Pillow, ~4 KB each) vs a bare Python
     walk in one process that reads and hashes (SHA-256 + SHA-1) the same files, taking turns (7 pairs), fresh
     database each time, median of the ratios; target: within 4x the walk;
  5. --million: a library of 1,000,000 tiny .jpg files (16 bytes each: start, a comment with the file number,
     end) built ONCE under /tmp/immich_bench_1m/ and kept for later runs (not deleted; the part is skipped with
     a note when the disk has too little room to build it): peak RSS of the first scan_files.py (target
     < 500 MB), time and peak RSS of an unchanged rescan on SQLite (target < 20 s) and, with --million-upload
     (long), peak RSS of upload_files.py sending them all to the stand-in (target < 500 MB).

Generated files (except the million-file tree) live in a temporary folder that is removed at the end, also
after Ctrl+C; a MariaDB database of its own is dropped. Peak RSS counts the scan's worker processes too.

    .venv/bin/python bench/bench_scan.py --quick         # smoke run, ~1 minute
    .venv/bin/python bench/bench_scan.py                 # parts 1-4 at the sizes above
    .venv/bin/python bench/bench_scan.py --gb 4 --files 200000 --mysql
    .venv/bin/python bench/bench_scan.py --million [--million-upload]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "bench"))

import bench_upload  # noqa: E402 - the stand-in server process, photo trees, the official CLI, settings' names

MiB = 1 << 20
GiB = 1 << 30
MB = 1_000_000
MILLION_DIR = Path("/tmp/immich_bench_1m")  # built once, kept between runs
MILLION_PER_FOLDER = 1000
MILLION_BYTES_PER_FILE = 4096 + 2048  # a block on disk, and the tool's row in SQLite (measured: ~1.6 KB)
SYNC_RATIO_TARGET = 2.5
SYNC_CLI_SPEEDUP_TARGET = 20.0
SMALL_PHOTO_RATIO_TARGET = 4.0  # issue 24 (8x before)
MILLION_RSS_TARGET = 500 * MB
MILLION_RESCAN_TARGET_S = 20.0
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
DEFAULT_CHUNK = 1048576  # HASH_CHUNK_SIZE default of the tool
OLD_CHUNK = 4096  # what the client read per step
RANDOM_POOL = 32 * MiB  # padding of the photos is cut from this pool (os.urandom runs at ~250 MB/s only)


class BenchError(Exception):
    """A run could not be measured (the tool failed, a reference command is missing...)."""


def note(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --- test data -----------------------------------------------------------------------------------------


def jpeg_with_exif(n: int, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small real JPEG with EXIF (camera, capture time, a unique description): the head of every file."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "EOS R5"
    exif[0x010E] = f"bench photo {n}"
    ifd = exif.get_ifd(0x8769)
    day = n % 28 + 1
    ifd[0x9003] = f"2021:{n % 12 + 1:02d}:{day:02d} {n % 24:02d}:{n % 60:02d}:{(n * 7) % 60:02d}"
    ifd[0x9011] = "+02:00"
    out = io.BytesIO()
    color = (n * 37 % 256, n * 91 % 256, n * 53 % 256)
    Image.new("RGB", size, color).save(out, "JPEG", exif=exif.tobytes(), quality=90)
    return out.getvalue()


def make_photo_tree(root: Path, total_bytes: int, rng: random.Random) -> tuple[int, int]:
    """Photo-sized files (4-6 MiB): a real JPEG with EXIF followed by random padding, ~10 per folder.
    Returns (files, bytes)."""
    pool = os.urandom(RANDOM_POOL)
    count = written = 0
    while written < total_bytes:
        size = rng.randint(4 * MiB, 6 * MiB)
        head = jpeg_with_exif(count, size=(64 + count % 64, 48 + count % 32))
        year, album = 2015 + count // 120, count // 10
        folder = root / str(year) / f"{year}-{album % 12 + 1:02d}-album{album:04d}"
        if count % 10 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        pad = size - len(head)
        offset = rng.randrange(0, RANDOM_POOL - pad)
        with open(folder / f"IMG_{count:05d}.JPG", "wb") as f:
            f.write(head)
            f.write(memoryview(pool)[offset : offset + pad])
        written += size
        count += 1
    return count, written


def make_small_files(root: Path, count: int) -> int:
    """`count` distinct 1 KiB .jpg files (a tiny JPEG with EXIF, then a unique tail) in ~100 folders,
    written with raw os calls (Python's file objects would double the time). Returns the bytes written."""
    template = jpeg_with_exif(0, size=(8, 8))
    filler = b"\xa5" * max(0, 1024 - len(template) - 16)
    folders = max(1, min(100, count))
    per_folder = math.ceil(count / folders)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    written = 0
    for i in range(count):
        if i % per_folder == 0:
            folder = os.path.join(root, f"album_{i // per_folder:03d}")
            os.mkdir(folder)
        data = template + i.to_bytes(16, "big") + filler
        fd = os.open(os.path.join(folder, f"IMG_{i:06d}.jpg"), flags, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        written += len(data)
    return written


def make_small_photos(root: Path, count: int, rng: random.Random) -> int:
    """`count` distinct small photos made by Pillow: 160x120 JPEGs of smoothed noise with EXIF (camera, capture
    time, a description naming the file), ~4 KB each, 100 per folder. Returns the bytes written."""
    total = 0
    for n in range(count):
        if n % 100 == 0:
            folder = root / f"{2015 + n // 4000}" / f"album_{n // 100:04d}"
            folder.mkdir(parents=True)
        exif = Image.Exif()
        exif[0x010F], exif[0x0110], exif[0x010E] = "Canon", "EOS R5", f"small photo {n}"
        exif.get_ifd(0x8769)[0x9003] = f"2021:{n % 12 + 1:02d}:{n % 28 + 1:02d} {n % 24:02d}:{n % 60:02d}:00"
        image = Image.frombytes("RGB", (12, 9), rng.randbytes(12 * 9 * 3)).resize((160, 120), Image.BILINEAR)
        out = io.BytesIO()
        image.save(out, "JPEG", exif=exif.tobytes(), quality=85)
        data = out.getvalue()
        (folder / f"IMG_{n:06d}.jpg").write_bytes(data)
        total += len(data)
    return total


def tiny_jpeg(n: int) -> bytes:
    """16 bytes that read as a JPEG: start of image, a comment holding the file number (so every file differs),
    end of image. No pixels: the scan finds the format and no EXIF, and takes the date from the mtime."""
    return b"\xff\xd8\xff\xfe\x00\x0a" + f"{n:08d}".encode() + b"\xff\xd9"


def make_million(root: Path, count: int) -> None:
    """The tiny-file library, MILLION_PER_FOLDER files per folder, written with raw os calls."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    started = time.perf_counter()
    for i in range(count):
        if i % MILLION_PER_FOLDER == 0:
            folder = os.path.join(root, f"{i // 100_000:02d}", f"dir_{i // MILLION_PER_FOLDER:04d}")
            os.makedirs(folder)
            if i and i % 100_000 == 0:
                note(f"  {i:,} files written ({time.perf_counter() - started:.0f} s)")
        fd = os.open(os.path.join(folder, f"IMG_{i:07d}.jpg"), flags, 0o644)
        try:
            os.write(fd, tiny_jpeg(i))
        finally:
            os.close(fd)


# --- running things ------------------------------------------------------------------------------------


@dataclass
class ScanRun:
    wall_s: float
    summary: dict[str, Any]


def tool_environment() -> dict[str, str]:
    """The caller's environment less every setting name (only the env file speaks), Immich CLI settings and
    proxies (the stand-in server is on 127.0.0.1)."""
    return bench_upload.child_environment()


def write_env(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def run_scan(env_file: Path, workdir: Path) -> ScanRun:
    command = [
        sys.executable,
        str(PROJECT_DIR / "scan_files.py"),
        "--env-file",
        str(env_file),
        "--json",
        "--no-progress",
    ]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=workdir, env=tool_environment(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode in (130, -signal.SIGINT):
        raise KeyboardInterrupt  # Ctrl+C reached the scan (the bench itself may have SIGINT ignored)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode not in (0, 1) or not lines:
        raise BenchError(
            f"scan_files.py exited {proc.returncode}\n--- stdout\n{proc.stdout[-2000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    summary = json.loads(lines[-1])
    if proc.returncode == 1 or summary.get("errors"):
        note(f"warning: the scan reported {summary.get('errors')} file errors: {summary.get('error_files')}")
    return ScanRun(wall, summary)


@dataclass
class ToolRun:
    wall_s: float
    summary: dict[str, Any]
    peak_rss: int  # bytes: the process's highest VmHWM
    status: int
    stderr: str


def run_tool(
    script: str,
    env_file: Path,
    workdir: Path,
    *extra: str,
    timeout: float = 3600,
    stop_after_s: float | None = None,
    project: Path = PROJECT_DIR,
    env: dict[str, str] | None = None,
) -> ToolRun:
    """One of our scripts as a user runs it, with its peak RSS (VmHWM polled from /proc: wait4's ru_maxrss
    would count the bench's own memory, which the child had before its exec); BenchError when it failed.
    With `stop_after_s`, it is stopped by SIGTERM then (exit 130 expected)."""
    command = [
        sys.executable,
        str(project / script),
        "--env-file",
        str(env_file),
        "--json",
        "--no-progress",
    ]
    run = bench_upload.run_measured(
        [*command, *extra], workdir, env={**tool_environment(), **(env or {})}, timeout=timeout,
        stop_after_s=stop_after_s,
    )  # fmt: skip
    if run.status == 130 and stop_after_s:
        run.status = 0  # stopped by the bench, as asked
    if run.status in (130, -signal.SIGINT):
        raise KeyboardInterrupt
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    if run.status not in (0, 1) or not lines:
        raise BenchError(
            f"{script} exited {run.status}\n--- stdout\n{run.stdout[-2000:]}\n--- stderr\n{run.stderr[-4000:]}"
        )
    summary = json.loads(lines[-1])
    if run.status == 1 or summary.get("errors"):
        note(f"warning: {script} reported {summary.get('errors')} file errors: {summary.get('error_files')}")
    return ToolRun(run.wall_s, summary, run.peak_rss, run.status, run.stderr)


def run_python(code: str, *args: str) -> float:
    """Wall time of `python -c code args...`, start-up included (the same interpreter as our scripts)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"python -c exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def spread(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def run_shell(command: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, shell=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise BenchError(f"{command!r} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall


def check_counts(label: str, summary: dict[str, Any], **expected: int) -> None:
    wrong = {k: (summary.get(k), v) for k, v in expected.items() if summary.get(k) != v}
    if wrong:
        details = ", ".join(f"{k}={got} (expected {want})" for k, (got, want) in wrong.items())
        note(f"warning: {label}: unexpected summary: {details}")


def mysql_connect() -> Any:
    import pymysql

    return pymysql.connect(**MYSQL, connect_timeout=3, autocommit=True)


def mysql_problem() -> str | None:
    try:
        mysql_connect().close()
        return None
    except Exception as exc:  # any failure means "not available" here
        return str(exc)


def drop_mysql_database(name: str) -> None:
    try:
        conn = mysql_connect()
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()
    except Exception as exc:  # cleanup must not hide the real outcome; say what is left behind
        note(f"warning: could not drop MariaDB database {name}: {exc}")


# --- the table -----------------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    wall_s: float | None = None
    tool_s: float | None = None
    nbytes: int | None = None
    nfiles: int | None = None
    target: str = ""
    result: str = ""
    rss: int | None = None  # peak RSS in bytes, for the runs where memory is the point

    @property
    def rate_s(self) -> float | None:
        """The time the rates are computed from: the tool's own elapsed_s when there is one, else wall."""
        return self.tool_s if self.tool_s else self.wall_s

    def mib_s(self) -> float | None:
        return self.nbytes / MiB / self.rate_s if self.nbytes and self.rate_s else None

    def files_s(self) -> float | None:
        return self.nfiles / self.rate_s if self.nfiles and self.rate_s else None


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}" if value < 100_000 else f"{value:.0f}"


def print_table(title: str, rows: list[Row | str]) -> None:
    width = max(len(r.label) for r in rows if isinstance(r, Row)) + 2
    head = f"{'':<{width}}{'wall':>10}{'in-tool':>10}{'MiB/s':>10}{'files/s':>11}{'peak RSS':>10}   {'target':<21}result"
    print()
    print(title)
    print(head)
    print("-" * (len(head) + 12))
    for r in rows:
        if isinstance(r, str):
            print(r)
            continue
        print(
            f"{r.label:<{width}}{seconds(r.wall_s):>10}{seconds(r.tool_s) if r.tool_s is not None else '':>10}"
            f"{number(r.mib_s()):>10}{number(r.files_s()):>11}{f'{r.rss / MB:.0f} MB' if r.rss else '':>10}"
            f"   {r.target:<21}{r.result}".rstrip()
        )
    print()
    print(
        "wall = the whole process (Python start-up from a warm bytecode cache, database open, record of the"
    )
    print("run included);")
    print("in-tool = the scan's own elapsed_s from its JSON summary. MiB/s and files/s use in-tool when")
    print(
        "there is one, else wall. MiB/s counts bytes hashed (rescans hash nothing: files/s is files checked)."
    )
    print("peak RSS = the process's highest VmHWM, or the sum of VmRSS over it and its worker processes when")
    print("higher, polled every 20 ms (an upper bound: shared pages count in each); MB = 10^6 bytes.")


def verdict(ok: bool, detail: str) -> str:
    return f"{'ok' if ok else 'MISSED'} ({detail})"


# --- the benchmark -------------------------------------------------------------------------------------


def bench_photos(args: argparse.Namespace, work: Path, rows: list[Row | str]) -> tuple[int, int]:
    """Returns (photos, bytes)."""
    tree = work / "photos"
    tree.mkdir()
    started = time.perf_counter()
    count, total = make_photo_tree(tree, int(args.gb * GiB), random.Random(20240601))
    note(f"made {count} photos, {total / GiB:.2f} GiB, in {time.perf_counter() - started:.1f} s; syncing")
    os.sync()  # write-back must not run during the timings
    # Warm the page cache once, so that sha1sum and the scanner both measure hashing, not the disk.
    quoted = shlex.quote(str(tree))
    note(f"warm-up read: {run_shell(f'find {quoted} -type f -print0 | xargs -0 cat > /dev/null'):.2f} s")
    rows.append(f"photo tree: {count} photos, {total / GiB:.2f} GiB ({total / count / MiB:.1f} MiB each)")

    sha1sum_row = None
    if shutil.which("sha1sum"):
        wall = run_shell(f"find {quoted} -type f -print0 | xargs -0 sha1sum > /dev/null")
        sha1sum_row = Row("sha1sum (1 process)", wall, nbytes=total, nfiles=count, target="reference")
        rows.append(sha1sum_row)
        note(f"sha1sum: {wall:.2f} s")
        wall = run_shell(f"find {quoted} -type f -print0 | xargs -0 -n 4 -P 2 sha1sum > /dev/null")
        rows.append(Row("sha1sum (xargs -P2)", wall, nbytes=total, nfiles=count, target="reference"))
        note(f"sha1sum -P2: {wall:.2f} s")
    else:
        rows.append("sha1sum not installed: no reference")

    def env(name: str, **extra: object) -> Path:
        return write_env(
            work / f"{name}.env",
            SOURCE_DIR=tree,
            DB_PATH=work / f"{name}.db",
            LOG_FILE=work / "logs" / f"{name}.log",
            **extra,
        )

    main_env = env("photos")
    first = run_scan(main_env, work)
    check_counts("first scan", first.summary, found=count, new=count, errors=0, bytes_hashed=total)
    note(f"first scan: {first.wall_s:.2f} s wall, {first.summary['elapsed_s']:.2f} s in-tool")
    first_row = Row(
        "first scan (sha256+sha1+EXIF)",
        first.wall_s,
        first.summary["elapsed_s"],
        first.summary["bytes_hashed"],
        count,
        target=">= sha1sum",
    )
    if sha1sum_row is not None:
        by_tool = (first_row.mib_s() or 0) / (sha1sum_row.mib_s() or 1)
        by_wall = sha1sum_row.wall_s / first.wall_s if sha1sum_row.wall_s else 0.0
        first_row.result = verdict(by_tool >= 1.0, f"{by_tool:.2f}x sha1sum; by wall {by_wall:.2f}x")
    rows.append(first_row)

    again = run_scan(main_env, work)
    check_counts("rescan", again.summary, found=count, new=0, changed=0, unchanged=count, bytes_hashed=0)
    note(f"rescan: {again.wall_s:.2f} s wall, {again.summary['elapsed_s']:.3f} s in-tool")
    tool_ratio = first.summary["elapsed_s"] / max(again.summary["elapsed_s"], 1e-3)
    wall_ratio = first.wall_s / again.wall_s
    rows.append(
        Row(
            "unchanged rescan (photos)",
            again.wall_s,
            again.summary["elapsed_s"],
            None,
            count,
            target=">= 10x faster",
            result=verdict(tool_ratio >= 10, f"{tool_ratio:.0f}x in-tool; {wall_ratio:.1f}x by wall"),
        )
    )

    # The chunk-size effect: two fresh first scans back to back, the client's 4 KiB and our 1 MiB.
    runs = {}
    for chunk in (OLD_CHUNK, DEFAULT_CHUNK):
        run = run_scan(env(f"chunk{chunk}", HASH_CHUNK_SIZE=chunk), work)
        check_counts(f"chunk {chunk}", run.summary, found=count, new=count, bytes_hashed=total)
        note(
            f"first scan, HASH_CHUNK_SIZE={chunk}: {run.wall_s:.2f} s wall, {run.summary['elapsed_s']:.2f} s"
        )
        runs[chunk] = run
    base = runs[DEFAULT_CHUNK].summary["elapsed_s"]
    for chunk, label in ((OLD_CHUNK, "client's old"), (DEFAULT_CHUNK, "ours")):
        run = runs[chunk]
        rows.append(
            Row(
                f"first scan, HASH_CHUNK_SIZE={chunk}",
                run.wall_s,
                run.summary["elapsed_s"],
                run.summary["bytes_hashed"],
                count,
                target=label,
                result=f"{run.summary['elapsed_s'] / base:.2f}x the 1 MiB time",
            )
        )
    shutil.rmtree(tree)  # frees the disk (and page cache) before the small-file test
    return count, total


def bench_small_files(args: argparse.Namespace, work: Path, rows: list[Row | str]) -> None:
    count = args.files
    tree = work / "small"
    tree.mkdir()
    started = time.perf_counter()
    total = make_small_files(tree, count)
    note(f"made {count} small files in {time.perf_counter() - started:.1f} s; syncing")
    os.sync()
    rows.append(f"small files: {count} x {total // count} bytes in {min(100, count)} folders")
    quoted = shlex.quote(str(tree))
    wall = run_shell(f"find {quoted} -type f -printf '%s %T@ %p\\n' > /dev/null")
    rows.append(Row("find -printf size+mtime (stat)", wall, nfiles=count, target="reference"))

    backends: list[tuple[str, dict[str, object], str]] = [("sqlite", {"DB_PATH": work / "small.db"}, "< 5 s")]
    if args.mysql:
        problem = mysql_problem()
        if problem:
            rows.append(f"MariaDB skipped: not answering on 127.0.0.1:3306 ({problem})")
        else:
            database = f"iu_bench_{uuid.uuid4().hex[:10]}"
            args.mysql_databases.append(database)
            settings = {
                "DB_HOST": MYSQL["host"],
                "DB_PORT": MYSQL["port"],
                "DB_USER": MYSQL["user"],
                "DB_NAME": database,
            }
            backends.append(("mysql", settings, "< 10 s"))

    for name, settings, target in backends:
        env = write_env(
            work / f"small-{name}.env",
            SOURCE_DIR=tree,
            LOG_FILE=work / "logs" / f"small-{name}.log",
            **settings,
        )
        first = run_scan(env, work)
        check_counts(f"{name} first scan", first.summary, found=count, new=count, errors=0)
        note(f"{name}: first scan of {count} small files: {first.wall_s:.1f} s")
        rows.append(
            Row(
                f"first scan {count // 1000}k ({name})",
                first.wall_s,
                first.summary["elapsed_s"],
                first.summary["bytes_hashed"],
                count,
            )
        )
        again = run_scan(env, work)
        check_counts(f"{name} rescan", again.summary, found=count, new=0, changed=0, unchanged=count)
        note(f"{name}: unchanged rescan: {again.wall_s:.2f} s")
        limit = float(target.split()[1])
        rows.append(
            Row(
                f"unchanged rescan {count // 1000}k ({name})",
                again.wall_s,
                again.summary["elapsed_s"],
                None,
                count,
                target=target,
                result=verdict(again.wall_s < limit, "by wall"),
            )
        )


WALK_CODE = """
import os, sys
def walk(path):
    n = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                n += walk(entry.path)
            elif entry.is_file(follow_symlinks=False):
                entry.stat(follow_symlinks=False)
                n += 1
    return n
print(walk(sys.argv[1]))
"""

HASH_WALK_CODE = """
import hashlib, os, sys
n = 0
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            data = f.read()
        hashlib.sha256(data).digest()
        hashlib.sha1(data).digest()
        n += 1
print(n)
"""

SYNC_REPEAT = 3  # runs of each unchanged sync and reference: the median is shown
# Pairs of the hash walk and a first scan of small photos. A scan's wall time on two shared cores moved by a
# third from one run to the next (1.18-1.73 s, 2026-12-06): three pairs left the median pair to chance.
SMALL_PHOTO_PAIRS = 7


def cli_rerun(cli: list[str], server: bench_upload.Server, tree: Path, work: Path, expect_new: int) -> float:
    """Wall time of `immich upload -r` (its defaults) on `tree`; BenchError when it did not do what we expect."""
    env = bench_upload.child_environment(
        IMMICH_INSTANCE_URL=server.url + "/api",
        IMMICH_API_KEY=bench_upload.API_KEY,
        IMMICH_CONFIG_DIR=str(work / "cli-config"),
    )
    started = time.perf_counter()
    proc = subprocess.run([*cli, "upload", "--recursive", "--no-progress", str(tree)], env=env, cwd=work,
                          capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - started
    uploaded = re.search(r"Successfully uploaded (\d+) new asset", proc.stdout)
    new = re.search(r"Found (\d+) new files", proc.stdout)
    got = int(uploaded[1]) if uploaded else 0
    if proc.returncode != 0 or got != expect_new or (expect_new == 0 and not (new and new[1] == "0")):
        raise BenchError(f"official CLI: exit {proc.returncode}, uploaded {got} (expected {expect_new}): "
                         f"{(proc.stdout + proc.stderr)[-1500:]}")  # fmt: skip
    return wall


def bench_unchanged_sync(args: argparse.Namespace, work: Path, rows: list[Row | str]) -> None:
    count = args.sync_files
    tree = work / "sync"
    started = time.perf_counter()
    nbytes = bench_upload.make_photo_tree(tree, count, (2 * MB, 5 * MB), random.Random(20261125))
    note(f"made {count} photos, {nbytes / GiB:.2f} GiB, in {time.perf_counter() - started:.1f} s; syncing")
    os.sync()
    quoted = shlex.quote(str(tree))
    run_shell(f"find {quoted} -type f -print0 | xargs -0 cat > /dev/null")
    rows.append(
        f"unchanged sync: {count} photos, {nbytes / GiB:.2f} GiB ({nbytes / count / MB:.1f} MB each), "
        f"the stand-in server; median of {SYNC_REPEAT}"
    )
    ours: list[ToolRun] = []
    uncached: list[ToolRun] = []
    startups: list[float] = []
    walks: list[float] = []
    with bench_upload.Server(work) as server:
        env = write_env(
            work / "sync.env",
            SOURCE_DIR=tree,
            DB_PATH=work / "sync.db",
            LOG_FILE=work / "logs" / "sync.log",
            IMMICH_URL=server.url,
            IMMICH_API_KEY=bench_upload.API_KEY,
        )
        first = run_tool("sync_upload.py", env, work)
        check_counts("first sync", first.summary, found=count, new=count, uploaded=count, errors=0)
        note(f"first sync: {first.wall_s:.2f} s")
        rows.append(Row("first sync (scan+upload, to set up)", first.wall_s, first.summary["elapsed_s"],
                        nbytes, count, target="", rss=first.peak_rss))  # fmt: skip
        # The tool as a container holds it: a copy of the scripts without a bytecode cache, run with
        # PYTHONDONTWRITEBYTECODE=1 (whatever it writes, it writes there).
        uncached_copy = work / "no-bytecode-cache"
        uncached_copy.mkdir()
        for source in PROJECT_DIR.glob("*.py"):
            shutil.copy(source, uncached_copy / source.name)
        for _ in range(SYNC_REPEAT):  # ours and the references take turns: a busy moment hurts both
            startups.append(run_python("pass"))
            walks.append(run_python(WALK_CODE, str(tree)))
            run = run_tool("sync_upload.py", env, work)
            check_counts("unchanged sync", run.summary, found=count, new=0, changed=0, unchanged=count,
                         uploaded=0, duplicates=0, errors=0)  # fmt: skip
            ours.append(run)
            uncached.append(run_tool("sync_upload.py", env, work, project=uncached_copy,
                                     env={"PYTHONDONTWRITEBYTECODE": "1"}))  # fmt: skip
    note(
        f"unchanged sync (s): ours {spread([r.wall_s for r in ours])}; python -c pass {spread(startups)}; "
        f"scandir walk process {spread(walks)}; with PYTHONDONTWRITEBYTECODE=1 from a copy without a "
        f"bytecode cache (runs 1, 2, 3...) {spread([r.wall_s for r in uncached])}"
    )
    # The reference is the walk's own process: Python's start-up plus the walk; both parts are shown.
    startup, reference = median(startups), median(walks)
    mine = sorted(ours, key=lambda r: r.wall_s)[(SYNC_REPEAT - 1) // 2]
    rows.append(Row("  part: start-up (python -c pass)", startup))
    rows.append(Row("  part: the walk (its process - start-up)", max(reference - startup, 0.0), nfiles=count))
    rows.append(Row("os.scandir walk + stat, own process", reference, nfiles=count, target="reference"))
    ratio = mine.wall_s / reference
    rows.append(
        Row(
            "unchanged sync: sync_upload.py",
            mine.wall_s,
            mine.summary["elapsed_s"],
            None,
            count,
            target=f"<= {SYNC_RATIO_TARGET:g}x reference",
            result=verdict(ratio <= SYNC_RATIO_TARGET, f"{ratio:.2f}x by wall"),
            rss=mine.peak_rss,
        )
    )
    plain = median([r.wall_s for r in uncached])
    rows.append(
        Row(
            "  the same, PYTHONDONTWRITEBYTECODE=1, no cache at first",
            plain,
            None,
            None,
            count,
            target="as cached",
            result=f"{plain / mine.wall_s:.2f}x the cached run's time",
        )
    )

    if args.no_cli:
        rows.append("official CLI skipped (--no-cli)")
    else:
        report = bench_upload.Report()
        cli = bench_upload.install_cli(report)
        rows.extend(report.notes)
        if cli is not None:
            reruns: list[float] = []
            with bench_upload.Server(work) as server:
                note(
                    f"official CLI: first upload of the tree: {cli_rerun(cli, server, tree, work, count):.2f} s"
                )
                for _ in range(SYNC_REPEAT):
                    reruns.append(cli_rerun(cli, server, tree, work, 0))
            note(f"official CLI unchanged rerun (s): {spread(reruns)}")
            speedup = median(reruns) / mine.wall_s
            rows.append(
                Row(
                    f"official CLI rerun (its defaults, -c {bench_upload.CLI_DEFAULT_CONCURRENCY})",
                    median(reruns),
                    None,
                    None,
                    count,
                    target=f"ours >= {SYNC_CLI_SPEEDUP_TARGET:g}x faster",
                    result=verdict(speedup >= SYNC_CLI_SPEEDUP_TARGET, f"ours {speedup:.1f}x faster"),
                )
            )
    shutil.rmtree(tree)


def bench_small_photos(args: argparse.Namespace, work: Path, rows: list[Row | str]) -> None:
    count = args.small_photos
    tree = work / "small_photos"
    started = time.perf_counter()
    nbytes = make_small_photos(tree, count, random.Random(4242))
    note(
        f"made {count} small photos ({nbytes / count / 1000:.1f} KB each) in {time.perf_counter() - started:.1f} s"
    )
    os.sync()
    quoted = shlex.quote(str(tree))
    run_shell(f"find {quoted} -type f -print0 | xargs -0 cat > /dev/null")
    rows.append(
        f"small photos: {count} Pillow JPEGs with EXIF, {nbytes / count / 1000:.1f} KB each, 100 per folder"
    )
    walks: list[float] = []
    firsts: list[ToolRun] = []
    for n in range(SMALL_PHOTO_PAIRS):  # the walk and a first scan (a fresh database each) take turns
        walks.append(run_python(HASH_WALK_CODE, str(tree)))
        env = write_env(
            work / f"small-photos{n}.env",
            SOURCE_DIR=tree,
            DB_PATH=work / f"small-photos{n}.db",
            LOG_FILE=work / "logs" / "small-photos.log",
        )
        firsts.append(run_tool("scan_files.py", env, work))
        check_counts(
            "small photos", firsts[-1].summary, found=count, new=count, errors=0, bytes_hashed=nbytes
        )
    walk = median(walks)
    rows.append(
        Row("Python walk: read + sha256 + sha1 (1 process)", walk, None, nbytes, count, target="reference")
    )
    first = sorted(firsts, key=lambda r: r.wall_s)[(SMALL_PHOTO_PAIRS - 1) // 2]
    ratios = [r.wall_s / w for r, w in zip(firsts, walks, strict=True)]
    note(
        f"small photos: walk {spread(walks)} s; first scan {spread([r.wall_s for r in firsts])} s; "
        f"ratios {spread(ratios)}"
    )
    ratio = median(ratios)
    rows.append(
        Row(
            f"first scan {count // 1000}k small photos (sqlite)",
            first.wall_s,
            first.summary["elapsed_s"],
            first.summary["bytes_hashed"],
            count,
            target=f"<= {SMALL_PHOTO_RATIO_TARGET:g}x the walk",
            result=verdict(ratio <= SMALL_PHOTO_RATIO_TARGET, f"{ratio:.1f}x by wall, median pair"),
            rss=first.peak_rss,
        )
    )
    shutil.rmtree(tree)


def million_tree(count: int, rows: list[Row | str], db_room: int) -> Path | None:
    """The tiny-file library under MILLION_DIR, built on first use and kept; None (with a row) if no room."""
    root = MILLION_DIR / f"files_{count}"
    marker = MILLION_DIR / f"files_{count}.complete"
    disk = os.statvfs(MILLION_DIR.parent)
    free, free_inodes = disk.f_bavail * disk.f_frsize, disk.f_favail
    if marker.is_file():
        if free < db_room:
            rows.append(
                f"{count:,}-file library skipped: {free / GiB:.1f} GiB free, the database needs ~{db_room / GiB:.1f}"
            )
            return None
        note(f"reusing the {count:,}-file library in {root} (built {marker.read_text().strip()})")
        return root
    need = count * MILLION_BYTES_PER_FILE + db_room
    inodes = count + count // MILLION_PER_FOLDER + 1000
    if free < need or free_inodes < inodes:
        rows.append(
            f"{count:,}-file library skipped: {free / GiB:.1f} GiB and {free_inodes:,} inodes free in "
            f"{MILLION_DIR.parent}, ~{need / GiB:.1f} GiB and {inodes:,} inodes needed"
        )
        return None
    if root.exists():
        note(f"removing an unfinished {root}")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.perf_counter()
    note(f"building the {count:,}-file library in {root} (once; kept for later runs)")
    make_million(root, count)
    os.sync()
    took = time.perf_counter() - started
    marker.write_text(f"{time.strftime('%Y-%m-%d %H:%M')} in {took:.0f} s\n")
    note(f"built in {took:.0f} s")
    return root


def bench_million(args: argparse.Namespace, work: Path, rows: list[Row | str]) -> None:
    count = args.million_files
    rows.append(
        f"{count:,}-file library: tiny .jpg files (16 bytes), {MILLION_PER_FOLDER} per folder, SQLite"
    )
    root = million_tree(count, rows, db_room=count * 2048 + GiB)
    if root is None:
        return
    quoted = shlex.quote(str(root))
    wall = run_shell(f"find {quoted} -type f -printf '%s %T@ %p\\n' > /dev/null")
    rows.append(Row("find -printf size+mtime (stat)", wall, nfiles=count, target="reference"))
    env = write_env(work / "million.env", SOURCE_DIR=root, DB_PATH=work / "million.db",
                    LOG_FILE=work / "logs" / "million.log")  # fmt: skip
    first = run_tool("scan_files.py", env, work, timeout=4 * 3600)
    check_counts("million first scan", first.summary, found=count, new=count, errors=0)
    note(f"million: first scan {first.wall_s:.0f} s, peak RSS {first.peak_rss / MB:.0f} MB")
    rows.append(
        Row(
            f"first scan {count:,} files",
            first.wall_s,
            first.summary["elapsed_s"],
            None,
            count,
            target=f"RSS < {MILLION_RSS_TARGET // MB} MB",
            result=verdict(first.peak_rss < MILLION_RSS_TARGET, f"{first.peak_rss / MB:.0f} MB"),
            rss=first.peak_rss,
        )
    )
    again = run_tool("scan_files.py", env, work, timeout=3600)
    check_counts("million rescan", again.summary, found=count, new=0, changed=0, unchanged=count)
    note(f"million: unchanged rescan {again.wall_s:.1f} s, peak RSS {again.peak_rss / MB:.0f} MB")
    rows.append(
        Row(
            f"unchanged rescan {count:,} files",
            again.wall_s,
            again.summary["elapsed_s"],
            None,
            count,
            target=f"< {MILLION_RESCAN_TARGET_S:g} s by wall",
            result=verdict(
                again.wall_s < MILLION_RESCAN_TARGET_S,
                f"{again.wall_s:.1f} s; RSS {again.peak_rss / MB:.0f} MB",
            ),
            rss=again.peak_rss,
        )
    )
    if not args.million_upload:
        rows.append("upload of the library not measured (--million-upload: it takes long)")
        return
    with bench_upload.Server(work) as server:
        env = write_env(work / "million-up.env", SOURCE_DIR=root, DB_PATH=work / "million.db",
                        LOG_FILE=work / "logs" / "million-up.log", IMMICH_URL=server.url,
                        IMMICH_API_KEY=bench_upload.API_KEY)  # fmt: skip
        window = args.million_upload_s or None
        note(
            f"million: uploading {count:,} files to the stand-in "
            + (f"for {window:.0f} s, then SIGTERM" if window else "(long)")
        )
        up = run_tool("upload_files.py", env, work, timeout=12 * 3600, stop_after_s=window)
        server_rss = server_peak_rss(server)
    if window is None:
        check_counts("million upload", up.summary, uploaded=count, errors=0)
    sent = int(up.summary.get("uploaded", 0))  # type: ignore[call-overload]
    note(f"million: upload {up.wall_s:.0f} s, {sent:,} files sent, peak RSS {up.peak_rss / MB:.0f} MB")
    rows.append(
        Row(
            f"upload_files.py, {count:,} files to the stand-in"
            + (f" (stopped after {window:.0f} s: {sent:,} sent)" if window else ""),
            up.wall_s,
            up.summary["elapsed_s"],
            None,
            sent,  # files/s: of what was sent in the window
            target=f"RSS < {MILLION_RSS_TARGET // MB} MB",
            result=verdict(
                up.peak_rss < MILLION_RSS_TARGET, f"{up.peak_rss / MB:.0f} MB; the stand-in's {server_rss}"
            ),
            rss=up.peak_rss,
        )
    )


def server_peak_rss(server: bench_upload.Server) -> str:
    try:
        with open(f"/proc/{server.proc.pid}/status") as f:  # type: ignore[union-attr]
            for line in f:
                if line.startswith("VmHWM:"):
                    return f"{int(line.split()[1]) * 1024 / MB:.0f} MB"
    except OSError:
        pass
    return "?"


PARTS = ("photos", "files", "sync", "small-photos", "million")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run (~1 minute)")
    parser.add_argument("--gb", type=float, help="GiB of photos (default 2; 0.25 with --quick)")
    parser.add_argument(
        "--files", type=int, help="small files for the rescan test (default 100000; 5000 quick)"
    )
    parser.add_argument(
        "--sync-files", type=int, help="photos for the unchanged-sync test (default 2000; 100 quick)"
    )
    parser.add_argument(
        "--small-photos", type=int, help="small photos for the first-scan test (default 20000; 2000 quick)"
    )
    parser.add_argument(
        "--mysql", action="store_true", help="also rescan on MariaDB at 127.0.0.1:3306 (root)"
    )
    parser.add_argument("--no-cli", action="store_true", help="no official Immich CLI in the sync test")
    parser.add_argument(
        "--million", action="store_true", help=f"also the 1,000,000-file library (kept in {MILLION_DIR})"
    )
    parser.add_argument(
        "--million-upload", action="store_true", help="with --million, also upload it all (long)"
    )
    parser.add_argument(
        "--million-files", type=int, default=1_000_000, help="files in that library (default 1000000)"
    )
    parser.add_argument(
        "--parts", help=f"only these parts, comma-separated: {','.join(PARTS)} (default: all but million)"
    )
    parser.add_argument(
        "--million-upload-s",
        type=float,
        default=600,
        help="with --million-upload, stop the upload after this many seconds (0: to the end, hours); "
        "memory is flat from the first minute",
    )
    parser.add_argument(
        "--tmp", metavar="DIR", help="where the generated files go (default: the system temp)"
    )
    args = parser.parse_args(argv)
    if args.gb is None:
        args.gb = 0.25 if args.quick else 2.0
    if args.files is None:
        args.files = 5000 if args.quick else 100_000
    if args.sync_files is None:
        args.sync_files = 100 if args.quick else 2000
    if args.small_photos is None:
        args.small_photos = 2000 if args.quick else 20_000
    if min(args.gb, args.files, args.sync_files, args.small_photos, args.million_files) <= 0:
        parser.error("sizes and counts must be positive")
    args.million = args.million or args.million_upload
    if args.parts:
        args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
        unknown = set(args.parts) - set(PARTS)
        if unknown:
            parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    else:
        args.parts = [p for p in PARTS if p != "million" or args.million]
    args.mysql_databases = []
    return args


def raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)  # clean up on kill/hang-up too, as on Ctrl+C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background

    tmp_parent = args.tmp or tempfile.gettempdir()
    # Each part removes its files before the next one starts: the largest part sets the room needed.
    sizes = {
        "photos": args.gb * GiB,
        "files": args.files * 8192,
        "sync": args.sync_files * 5 * MB,
        "small-photos": args.small_photos * 8192,
    }
    need = max([sizes.get(part, 0) for part in args.parts] + [0]) + 256 * MiB
    free = shutil.disk_usage(tmp_parent).free
    if free < need * 1.2:
        print(
            f"bench_scan: {tmp_parent} has {free / GiB:.1f} GiB free, needs ~{need / GiB:.1f}",
            file=sys.stderr,
        )
        return 2

    work = Path(tempfile.mkdtemp(prefix="iu_bench_scan_", dir=tmp_parent))
    rows: list[Row | str] = []
    started = time.perf_counter()
    load_start = os.getloadavg()[0]  # other work on the machine skews every figure: say how busy it was
    revision = bench_upload.tool_revision()
    bench_upload.warm_bytecode()  # our runs start as a user's do, from a written bytecode cache
    nphotos = nbytes = 0
    failed = False
    try:
        note(f"working in {work}")
        for part in args.parts:
            try:
                if part == "photos":
                    nphotos, nbytes = bench_photos(args, work, rows)
                elif part == "files":
                    bench_small_files(args, work, rows)
                elif part == "sync":
                    bench_unchanged_sync(args, work, rows)
                elif part == "small-photos":
                    bench_small_photos(args, work, rows)
                else:
                    bench_million(args, work, rows)
            except BenchError as exc:  # one part failing must not lose the others' figures
                failed = True
                print(f"bench_scan: error in part {part}: {exc}", file=sys.stderr)
                rows.append(f"part {part} FAILED: {str(exc).splitlines()[0]} (details on stderr)")
    except KeyboardInterrupt:
        print("\nbench_scan: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for proc in list(bench_upload._live):  # a stand-in server left running by an interrupted part
            bench_upload.stop_process(proc)
        shutil.rmtree(work, ignore_errors=True)
        for database in args.mysql_databases:
            drop_mysql_database(database)

    photos = f"{nbytes / GiB:.2f} GiB in {nphotos} photos; " if "photos" in args.parts else ""
    title = (
        f"scan benchmark (tool at {revision}; {os.cpu_count()} cores; {photos}parts {', '.join(args.parts)}; "
        f"{time.perf_counter() - started:.0f} s in all; "
        f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end)"
    )
    print_table(title, rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
