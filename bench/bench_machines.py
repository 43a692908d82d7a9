#!/usr/bin/env python3
"""Many machines on one MariaDB: 1, 2 and 3 uploader processes syncing one shared library at the same time.

One library of small photos (3,000 by default: 160x120 JPEGs with EXIF made by Pillow, ~4 KB each) and the
Immich stand-in (tests/immich_server.py in its own process, fresh per measurement) answering every request after
a delay (20 ms by default, --delay-ms: a server across the LAN, not a loopback). For N = 1, 2 and 3, N processes
start at the same moment, each a separate "machine": `sync_upload.py --json --no-progress` with its own env file
(MACHINE_NAME=m1/m2/m3, SHARED_LIBRARY=family, DB_HOST=127.0.0.1 and a fresh MariaDB database per
measurement, dropped afterwards) and its own symlink to the library as SOURCE_DIR (as different mount points of
one NAS share would be). Our scripts otherwise run at the shipped defaults.

Printed for each N: the wall time from the first start to the last exit, files/s (library files / wall time)
beside the single-process figure, what each process reported, and the number of files whose bytes the server
received more than once (target 0), counted from the stand-in's own record (GET /__stand-in__/uploads). A run
that fails (MACHINE_NAME and SHARED_LIBRARY are new settings) is printed with its error and the next one goes
on. Nothing is asserted, the exit status is 0 (130 when interrupted), and the temp folder under /tmp and the
databases are removed at the end, also on Ctrl+C.

    .venv/bin/python bench/bench_machines.py [--quick] [--files 3000] [--delay-ms 20] [--machines 1,2,3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "bench"))

import bench_upload  # noqa: E402 - the stand-in server process and process measurement, shared
from bench_scan import MYSQL, drop_mysql_database, make_small_photos, mysql_connect, mysql_problem  # noqa: E402
from bench_upload import API_KEY, MB, Measured, Server, bytes_received_twice  # noqa: E402

from config import SETTING_NAMES  # noqa: E402

LIBRARY_NAME = "family"
TWICE_TARGET = 0


@dataclass
class Machine:
    name: str
    run: Measured

    def summary(self) -> dict[str, object]:
        try:
            return self.run.json()
        except ValueError:
            return {}

    def describe(self) -> str:
        data = self.summary()
        text = f"{self.name}: exit {self.run.status}, {self.run.wall_s:.2f} s, peak RSS {self.run.peak_rss / MB:.0f} MB"
        if data:
            text += (
                f", found {data.get('found')}, uploaded {data.get('uploaded')}, duplicates {data.get('duplicates')}"
                f", errors {data.get('errors')}"
            )
        else:
            text += ", no JSON summary"
        if self.run.status != 0 or not data:
            lines = [line for line in self.run.stderr.splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower() and "warning" not in line.lower()]
            shown = (errors or lines)[-1:]
            text += f": {shown[0][-300:] if shown else '(nothing on stderr)'}"
        warnings = [line for line in self.run.stderr.splitlines() if "unknown setting" in line]
        if warnings:
            text += f" [{len(warnings)} unknown-setting warning(s)]"
        return text


@dataclass
class Measurement:
    machines: int
    wall_s: float | None = None
    received_twice: int | None = None
    created: int | None = None  # assets the server created (201)
    bodies: int | None = None  # upload requests that carried the file's bytes
    details: list[str] = field(default_factory=list)
    error: str = ""


# --- MariaDB -------------------------------------------------------------------------------------------


def create_database(name: str) -> None:
    conn = mysql_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()


# --- the benchmark -------------------------------------------------------------------------------------


def write_env(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def start_together(
    commands: list[tuple[str, list[str], dict[str, str]]], work: Path
) -> tuple[float, list[Machine]]:
    """Run the commands at the same moment (a thread each, released together); the wall time from the first
    start to the last exit, and each process's own measurement."""
    gate = threading.Barrier(len(commands) + 1)
    results: dict[str, Measured] = {}
    failures: dict[str, BaseException] = {}

    def one(name: str, cmd: list[str], env: dict[str, str]) -> None:
        gate.wait()
        try:
            results[name] = bench_upload.run_measured(cmd, work, env=env, timeout=1800)
        except BaseException as exc:  # reported below; the other machines go on
            failures[name] = exc

    threads = [threading.Thread(target=one, args=c, daemon=True) for c in commands]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        while thread.is_alive():  # join in small steps: Ctrl+C must reach the main thread
            thread.join(0.2)
    wall = time.perf_counter() - started
    if failures:
        raise RuntimeError("; ".join(f"{n}: {e!r}" for n, e in failures.items()))
    return wall, [Machine(name, results[name]) for name, _, _ in commands]


def measure(
    args: argparse.Namespace, work: Path, library: Path, count: int, databases: list[str]
) -> Measurement:
    result = Measurement(count)
    database = f"iu_bench_machines_{uuid.uuid4().hex[:10]}"
    databases.append(database)
    try:
        create_database(database)
        with Server(work, args.delay_ms) as server:
            commands = []
            for i in range(1, count + 1):
                name = f"m{i}"
                mount = work / f"n{count}" / f"{name}-mount"
                mount.parent.mkdir(parents=True, exist_ok=True)
                mount.symlink_to(library, target_is_directory=True)
                env_file = write_env(
                    work / f"n{count}-{name}.env",
                    SOURCE_DIR=mount,
                    DB_HOST=MYSQL["host"],
                    DB_PORT=MYSQL["port"],
                    DB_USER=MYSQL["user"],
                    DB_NAME=database,
                    MACHINE_NAME=name,
                    SHARED_LIBRARY=LIBRARY_NAME,
                    IMMICH_URL=server.url,
                    IMMICH_API_KEY=API_KEY,
                    LOG_FILE=work / "logs" / f"n{count}-{name}.log",
                )
                cmd = [sys.executable, str(PROJECT_DIR / "sync_upload.py"), "--env-file", str(env_file), "--json",
                       "--no-progress"]  # fmt: skip
                commands.append((name, cmd, bench_upload.child_environment()))
            print(f"[machines] {count} machine(s) syncing {args.files} files together", flush=True)
            result.wall_s, machines = start_together(commands, work)
            received = server.received()
        result.received_twice = bytes_received_twice(received)
        result.created = sum(1 for r in received if r.get("status") == 201)
        result.bodies = sum(1 for r in received if int(str(r.get("size") or 0)) > 0)
        result.details = [m.describe() for m in machines]
        failed = [m for m in machines if m.run.status != 0 or not m.summary()]
        if failed:
            result.error = f"{len(failed)} of {count} process(es) failed or printed no summary"
        elif result.created != args.files:
            result.error = f"the server created {result.created} assets, the library has {args.files} files"
    except Exception as exc:  # print it and go on with the next count
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        drop_mysql_database(database)
        databases.remove(database)
    for line in [*result.details, *([f"error: {result.error}"] if result.error else [])]:
        print(f"[machines]   {line}", flush=True)
    return result


def print_table(
    args: argparse.Namespace, header: list[str], results: list[Measurement], notes: list[str]
) -> None:
    print()
    for line in header:
        print(line)
    print(
        f"  {'':14} {'wall':>8} {'files/s':>8} {'vs 1':>6} {'created':>8} {'bodies':>7} {'bytes twice':>12}  target"
    )
    single = next((r for r in results if r.machines == 1 and r.wall_s and not r.error), None)
    for r in results:
        label = f"{r.machines} machine{'s' if r.machines > 1 else ''}"
        if r.wall_s is None:
            print(f"  {label:14} {'-':>8}  FAILED: {r.error}")
            continue
        rate = args.files / r.wall_s
        versus = f"{single.wall_s / r.wall_s:.2f}x" if single and single.wall_s else ""
        twice = r.received_twice
        verdict = (
            f"= {TWICE_TARGET}  {'ok' if twice == TWICE_TARGET else 'MISSED'}" if twice is not None else ""
        )
        print(
            f"  {label:14} {r.wall_s:>6.2f} s {rate:>8.1f} {versus:>6} {r.created!s:>8} {r.bodies!s:>7} "
            f"{twice!s:>12}  {verdict}"
        )
        for line in r.details:
            print(f"      {line}")
        if r.error:
            print(f"      error: {r.error}")
    print(
        "  wall = first start to last exit; files/s = library files / wall; vs 1 = speed next to 1 machine;"
    )
    print("  created = assets the server made (201); bodies = upload requests that carried the file's bytes;")
    print("  bytes twice = files whose bytes the server received more than once (from the stand-in's record)")
    if notes:
        print("notes:")
        for text in notes:
            print(f"  - {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="300 files, a smoke run (< 1 minute)")
    parser.add_argument("--files", type=int, help="files in the shared library (default 3000, quick 300)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=20.0,
        help="the server answers every request after this (default 20)",
    )
    parser.add_argument("--machines", default="1,2,3", help="machine counts to measure (default 1,2,3)")
    args = parser.parse_args(argv)
    args.files = args.files if args.files is not None else (300 if args.quick else 3000)
    try:
        counts = [int(n) for n in args.machines.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--machines: whole numbers separated by commas, not {args.machines!r}")
    if args.files <= 0 or not counts or min(counts) <= 0:
        parser.error("--files and --machines must be positive")

    problem = mysql_problem()
    if problem:
        print(
            f"bench_machines: skipped, MariaDB does not answer on {MYSQL['host']}:{MYSQL['port']}: {problem}"
        )
        return 0
    notes: list[str] = []
    missing = [name for name in ("MACHINE_NAME", "SHARED_LIBRARY") if name not in SETTING_NAMES]
    if missing:
        notes.append(
            f"config.py does not know {' and '.join(missing)} yet: the tool warns and ignores them, so these "
            "runs measure processes sharing one database without the shared-library feature"
        )
        print(f"[machines] note: {notes[-1]}", flush=True)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    load_before = os.getloadavg()[0]
    revision = bench_upload.tool_revision()
    bench_upload.warm_bytecode()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_machines_", dir="/tmp"))
    databases: list[str] = []
    try:
        library = work / "library"
        nbytes = make_small_photos(library, args.files, random.Random(20261130))
        print(f"[machines] library: {args.files} photos, {nbytes / MB:.1f} MB, in {library}", flush=True)
        results = [measure(args, work, library, n, databases) for n in counts]
        header = [
            f"many machines on one MariaDB: {args.files} small photos ({nbytes / args.files / 1000:.1f} KB each), "
            f"SHARED_LIBRARY={LIBRARY_NAME}, MACHINE_NAME=m1..mN,",
            f"  each `sync_upload.py` at the shipped defaults through its own symlink to the library; the stand-in "
            f"answers every request after {args.delay_ms:g} ms;",
            f"  a fresh database and server per line; {os.cpu_count()} CPUs shared by every process, MariaDB and "
            f"the server; {time.perf_counter() - started:.0f} s in all;",
            f"  tool at {revision}; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after: other work "
            "on the machine adds noise",
        ]
        print_table(args, header, results, notes)
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for proc in list(bench_upload._live):
            bench_upload.stop_process(proc)
        for database in list(databases):
            drop_mysql_database(database)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
