#!/usr/bin/env python3
"""Scan benchmark: how fast scan_files.py fingerprints a photo tree, next to `sha1sum` on the same files, and
how fast an unchanged rescan of many small files is, on SQLite and (with --mysql) MariaDB.

Every figure is printed beside a reference measured in the same run; nothing is asserted about time (shared
machines are noisy) and the exit status is 0 whenever every run could be measured. The tool always runs as a
user runs it: `scan_files.py --env-file X --json --no-progress` in its own process. Generated files live in a
temporary folder that is removed at the end, also after Ctrl+C; a MariaDB database of its own is dropped.

    .venv/bin/python bench/bench_scan.py --quick         # smoke run, < 1 minute
    .venv/bin/python bench/bench_scan.py                 # 2 GiB of photos, 100,000 small files
    .venv/bin/python bench/bench_scan.py --gb 4 --files 200000 --mysql
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
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

from config import SETTING_NAMES  # noqa: E402 - the project folder is on sys.path only from here

MiB = 1 << 20
GiB = 1 << 30
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


# --- running things ------------------------------------------------------------------------------------


@dataclass
class ScanRun:
    wall_s: float
    summary: dict[str, Any]


def tool_environment() -> dict[str, str]:
    """The caller's environment less every setting name: only the env file speaks."""
    return {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}


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
    head = f"{'':<{width}}{'wall':>10}{'in-tool':>10}{'MiB/s':>10}{'files/s':>11}   {'target':<14}result"
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
            f"{number(r.mib_s()):>10}{number(r.files_s()):>11}   {r.target:<14}{r.result}".rstrip()
        )
    print()
    print("wall = the whole process (Python start-up, database open, record of the run included);")
    print("in-tool = the scan's own elapsed_s from its JSON summary. MiB/s and files/s use in-tool when")
    print(
        "there is one, else wall. MiB/s counts bytes hashed (rescans hash nothing: files/s is files checked)."
    )


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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run (< 1 minute)")
    parser.add_argument("--gb", type=float, help="GiB of photos (default 2; 0.25 with --quick)")
    parser.add_argument(
        "--files", type=int, help="small files for the rescan test (default 100000; 5000 quick)"
    )
    parser.add_argument(
        "--mysql", action="store_true", help="also rescan on MariaDB at 127.0.0.1:3306 (root)"
    )
    parser.add_argument(
        "--tmp", metavar="DIR", help="where the generated files go (default: the system temp)"
    )
    args = parser.parse_args(argv)
    if args.gb is None:
        args.gb = 0.25 if args.quick else 2.0
    if args.files is None:
        args.files = 5000 if args.quick else 100_000
    if args.gb <= 0 or args.files <= 0:
        parser.error("--gb and --files must be positive")
    args.mysql_databases = []
    return args


def raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)  # clean up on kill/hang-up too, as on Ctrl+C

    tmp_parent = args.tmp or tempfile.gettempdir()
    need = args.gb * GiB + args.files * 8192 + 256 * MiB
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
    try:
        note(f"working in {work}")
        nphotos, nbytes = bench_photos(args, work, rows)
        bench_small_files(args, work, rows)
    except KeyboardInterrupt:
        print("\nbench_scan: interrupted; cleaning up", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_scan: error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        for database in args.mysql_databases:
            drop_mysql_database(database)

    title = (
        f"scan benchmark ({os.cpu_count()} cores, {nbytes / GiB:.2f} GiB in {nphotos} photos; "
        f"{args.files} small files; {time.perf_counter() - started:.0f} s in all; "
        f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end)"
    )
    print_table(title, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
