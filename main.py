#!/usr/bin/env python3
"""The interactive menu: the recommended entry point for people at a terminal.

Each job choice runs the same `main()` the scripts run (scan_files, upload_files, sync_upload), so no logic
lives twice; the other choices read the state database (statistics, errors, the per-file report) or ask the
server (test connection). Ctrl+C during a job stops it cleanly and returns here; Ctrl+C or end of input at
the prompt leaves with status 0. `--report FILE.csv` writes the per-file report without the menu.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from typing import TextIO

import scan_files
import sync_upload
import upload_files
from cli import ExitStatus, StartError
from config import VERSION, ConfigError, Settings, load_settings
from db_manager import REPORT_COLUMNS, DatabaseError, Store, open_store
from immich_client import ImmichClient
from logger import get_logger, setup_console
from upload_files import connect
from utils import format_bytes, format_duration

log = get_logger("menu")

HELP = """\
Interactive menu (run without options):
  1  Scan            find, fingerprint and describe new or changed files (scan_files.py)
  2  Upload          send pending and failed files to Immich (upload_files.py)
  3  Sync            scan and upload in one go, the recommended job (sync_upload.py)
  4  Statistics      files and bytes per status, year taken and type; what is left and how long it takes
  5  Recent errors   the latest files that failed, with the reason
  6  Retry errors    put failed uploads back in the queue
  7  Test connection server address and version, user, accepted formats, database and row counts
  8  Show settings   every setting and where it came from (the API key masked)
  9  Export report   one CSV row per file: status and reason
  q  Quit

The scripts run the same jobs without the menu, e.g. from cron:
  python sync_upload.py [--json] [--no-progress]      exit 0 done, 1 some files failed, 2 could not start,
  python scan_files.py | upload_files.py [--dry-run]       3 stopped after consecutive errors, 130 interrupted
"""

MENU = [
    ("1", "Scan"),
    ("2", "Upload"),
    ("3", "Sync (scan + upload)"),
    ("4", "Statistics"),
    ("5", "Recent errors"),
    ("6", "Retry errors"),
    ("7", "Test connection"),
    ("8", "Show settings"),
    ("9", "Export report (CSV)"),
    ("q", "Quit"),
]


class Menu:
    def __init__(self, env_file: str | None, stdin: TextIO, stdout: TextIO) -> None:
        self.env_file = env_file
        self.stdin = stdin
        self.out = stdout

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def ask(self, prompt: str) -> str | None:
        """A line from the user, or None at end of input."""
        self.out.write(prompt)
        self.out.flush()
        line = self.stdin.readline()
        return None if line == "" else line.strip()

    def script_args(self) -> list[str]:
        return ["--env-file", self.env_file] if self.env_file else []

    def run(self) -> int:
        actions: dict[str, Callable[[], None]] = {
            "1": lambda: self.job(scan_files.main),
            "2": lambda: self.job(upload_files.main),
            "3": lambda: self.job(sync_upload.main),
            "4": lambda: self.with_store(self.statistics),
            "5": lambda: self.with_store(self.recent_errors),
            "6": lambda: self.with_store(self.retry_errors),
            "7": self.test_connection,
            "8": self.show_settings,
            "9": self.export_report,
        }
        try:
            while True:
                self.say("\nimmich-uploader")
                for key, label in MENU:
                    self.say(f"  {key}) {label}")
                choice = self.ask("Choose: ")
                if choice is None or choice.lower() in ("q", "quit", "exit"):
                    self.say()
                    return ExitStatus.OK
                action = actions.get(choice)
                if action is None:
                    self.say(f"'{choice}' is not a choice: type a number from the list, or q to quit.")
                    continue
                action()
        except KeyboardInterrupt:
            self.say()
            return ExitStatus.OK

    # -- jobs
    def job(self, script_main: Callable[[list[str]], int]) -> None:
        status = script_main(self.script_args())
        if status == ExitStatus.INTERRUPTED:
            self.say("Stopped. Everything done so far is saved; the next run continues.")
        self.say(f"(finished with status {status})")

    # -- database screens
    def settings(self) -> Settings:
        return load_settings(env_file=self.env_file, warn=log.warning)

    def with_store(self, screen: Callable[[Store, Settings], None]) -> None:
        try:
            settings = self.settings()
            store = open_store(settings)
        except (ConfigError, DatabaseError) as exc:
            self.say(f"immich-uploader: error: {exc}")
            return
        try:
            screen(store, settings)
        finally:
            store.close()

    def statistics(self, store: Store, _settings: Settings) -> None:
        counts = store.status_counts()
        self.say("\nBy status")
        for status, (files, size) in sorted(counts.items()):
            self.say(f"  {status:<10} {files:>9} files {format_bytes(size):>12}")
        for grouping, title in (("year", "By year taken"), ("extension", "By type")):
            self.say(f"\n{title}")
            for group, files, size in store.counts_by(grouping):
                self.say(f"  {group:<10} {files:>9} files {format_bytes(size):>12}")
        last = store.last_run()
        if last:
            s = last["summary"]
            self.say(f"\nLast run: {last['kind']} at {last['finished_at']} UTC, status {last['exit_status']}")
            self.say("  " + ", ".join(f"{k} {v}" for k, v in s.items() if isinstance(v, int | float)))
        left_files, left_bytes = (
            sum(counts.get(k, (0, 0))[0] for k in ("pending", "error")),
            sum(counts.get(k, (0, 0))[1] for k in ("pending", "error")),
        )
        self.say(f"\nLeft to upload: {left_files} files, {format_bytes(left_bytes)}")
        speed = self.last_upload_speed(store)
        if left_bytes and speed:
            self.say(
                f"  about {format_duration(left_bytes / speed)} at the last measured {format_bytes(speed)}/s"
            )

    @staticmethod
    def last_upload_speed(store: Store) -> float | None:
        for kind in ("sync", "upload"):
            run = store.last_run(kind)
            if run:
                summary = run["summary"]
                sent, elapsed = summary.get("bytes_uploaded", 0), summary.get("elapsed_s", 0)
                if sent and elapsed:
                    return float(sent) / float(elapsed)
        return None

    def recent_errors(self, store: Store, _settings: Settings) -> None:
        errors = store.recent_errors(20)
        if not errors:
            self.say("No failed files.")
            return
        for path, reason, attempts in errors:
            self.say(f"  {path}\n      {reason} (attempts: {attempts})")

    def retry_errors(self, store: Store, _settings: Settings) -> None:
        self.say(f"{store.retry_errors()} failed files will be tried again on the next upload or sync.")

    # -- server and settings
    def test_connection(self) -> None:
        try:
            settings = self.settings()
            settings.require_server()
            client = ImmichClient(settings)
            try:
                server = connect(client)
            finally:
                client.close()
        except (ConfigError, StartError) as exc:
            self.say(f"immich-uploader: error: {exc}")
            return
        self.say(f"Server    {settings.immich_url}  Immich {server.version_text}")
        self.say(f"User      {server.user_name} <{server.user_email}>{' (admin)' if server.is_admin else ''}")
        self.say(f"Images    {' '.join(sorted(server.image_extensions))}")
        self.say(f"Videos    {' '.join(sorted(server.video_extensions))}")
        self.with_store(self._database_line)

    def _database_line(self, store: Store, _settings: Settings) -> None:
        total = sum(files for files, _ in store.status_counts().values())
        self.say(f"Database  {store.describe()}, {total} files recorded")

    def show_settings(self) -> None:
        try:
            settings = self.settings()
        except ConfigError as exc:
            self.say(f"immich-uploader: error: {exc}")
            return
        for name, value, source in settings.display_rows():
            self.say(f"  {name:<24} {value:<40} ({source})")

    def export_report(self) -> None:
        path = self.ask("Write the report to (e.g. report.csv): ")
        if path:
            self.with_store(lambda store, _s: self.say(write_report(store, path)))


def write_report(store: Store, path: str) -> str:
    """One CSV row per file with its status and the reason; returns a line saying what was written."""
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "status", "reason", *REPORT_COLUMNS[3:]])
        for row in store.report_rows():
            filepath, status, reason, *rest = row
            writer.writerow([filepath, status, reason or _reason(status), *rest])
            count += 1
    return f"Wrote {count} rows to {path}"


def _reason(status: str) -> str:
    return {
        "success": "uploaded",
        "duplicate": "already in Immich",
        "pending": "not uploaded yet",
    }.get(status, "")


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="main.py",
        description="immich-uploader: keep a photo and video library in sync with Immich.",
        epilog=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"immich-uploader {VERSION}")
    parser.add_argument(
        "--env-file", metavar="PATH", help="settings file (default: ./.env, else beside the scripts)"
    )
    parser.add_argument("--report", metavar="FILE.csv", help="write the per-file report and exit")
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    setup_console(sys.stderr)
    if args.report:
        try:
            store = open_store(load_settings(env_file=args.env_file, warn=log.warning))
        except (ConfigError, DatabaseError) as exc:
            sys.stderr.write(f"immich-uploader: error: {exc}\n")
            return ExitStatus.CANNOT_START
        try:
            stdout.write(write_report(store, args.report) + "\n")
        except OSError as exc:
            sys.stderr.write(f"immich-uploader: error: cannot write {args.report}: {exc.strerror}\n")
            return ExitStatus.CANNOT_START
        finally:
            store.close()
        return ExitStatus.OK
    return Menu(args.env_file, stdin or sys.stdin, stdout).run()


if __name__ == "__main__":
    sys.exit(main())
