#!/usr/bin/env python3
"""The interactive menu: the recommended entry point for people at a terminal.

Each job choice runs the same `main()` the scripts run (scan_files, upload_files, sync_upload), so no logic
lives twice; the other choices read the state database (statistics, errors, the per-file report), ask the
server (verify, test connection) or change the main settings in the settings file the scripts read. The
menu talks about its own entries, never about command-line flags. A screen longer than the terminal is
shown a page at a time, and one that would push the menu off the screen waits for Enter. Ctrl+C during a
job stops it cleanly and returns here, as it does at any other question; Ctrl+C at the menu's own prompt
leaves with status 130 (interrupted), `q` or end of input (Ctrl+D) with 0. `--report FILE.csv` writes the
per-file report without the menu; a report never replaces a file that is not a report.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import getpass
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

import bytecode_cache  # noqa: F401 - first: lets Python cache the tool's modules (see there)
import config
import scan_files
import sync_upload
import upload_files
from cli import ENV_FILE_HELP, ExitStatus, StartError, exit_process, missing_packages, requirements_message
from config import (
    VERSION,
    ConfigError,
    ServerNotConfigured,
    Settings,
    api_key_problem,
    load_settings,
    normalize_url,
    save_settings,
    settings_file_for,
)
from db_manager import REPORT_COLUMNS, DatabaseError, ScopeCounts, Store, open_store, scope_label
from immich_client import ImmichClient, ImmichError
from logger import get_logger, setup_console
from uploader import FAILURE_ADVICE, connect
from utils import format_bytes, format_duration, plural

log = get_logger("menu")

HELP = """\
Interactive menu (run without options):
  1  Scan            find, fingerprint and describe new or changed files (scan_files.py)
  2  Upload          send pending files to Immich (upload_files.py)
  3  Sync            scan and upload in one go, the recommended job (sync_upload.py)
  4  Statistics      files and bytes per status and year taken; what is left and how long it takes
  5  Recent errors   the latest files that failed, why, and what to do about it
  6  Retry errors    try every failed file now
  7  Verify          check that the files marked uploaded are still in Immich
  8  Test connection server address and version, user, accepted formats, database and row counts
  9  Settings        the server address, API key and folders (saved in the settings file the scripts
                     read, named on the screen), and every other setting
  10 Export report   one CSV row per file: status and reason (saved under reports/, or where you say)
  q  Quit            (or Ctrl+D; Ctrl+C leaves with status 130, and during a job stops only the job)

The scripts run the same jobs without the menu, e.g. from cron:
  python sync_upload.py [--json] [--no-progress]      exit 0 done, 1 some files failed, 2 could not start,
  python scan_files.py | upload_files.py [--dry-run]       3 stopped (server away or failing), 130 interrupted
"""

MENU = [
    ("1", "Scan"),
    ("2", "Upload"),
    ("3", "Sync (scan + upload)"),
    ("4", "Statistics"),
    ("5", "Recent errors"),
    ("6", "Retry errors now"),
    ("7", "Verify with Immich"),
    ("8", "Test connection"),
    ("9", "Settings"),
    ("10", "Export report (CSV)"),
    ("q", "Quit"),
]
MENU_LINES = len(MENU) + 3  # the title, the entries, the prompt and a blank line above
BAR_WIDTH = 24
DONE_BLOCK, WAITING_BLOCK = "█", "░"
# The settings the Settings screen can change; everything else is edited in .env.
EDITABLE = (
    ("u", "IMMICH_URL", "server address"),
    ("k", "IMMICH_API_KEY", "API key"),
    ("s", "SOURCE_DIR", "folders"),
)


class Menu:
    def __init__(self, env_file: str | None, stdin: TextIO, stdout: TextIO) -> None:
        self.env_file = env_file
        self.stdin = stdin
        self.out = stdout
        self.interactive = stdin.isatty() and stdout.isatty()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def ask(self, prompt: str) -> str | None:
        """A line from the user, or None at end of input."""
        self.out.write(prompt)
        self.out.flush()
        line = self.stdin.readline()
        return None if line == "" else line.strip()

    def yes(self, question: str) -> bool:
        answer = self.ask(f"{question} [y/N] ")
        return bool(answer) and answer.lower() in ("y", "yes")

    def screen_height(self) -> int:
        return shutil.get_terminal_size((80, 24)).lines

    def show(self, lines: list[str]) -> None:
        """A screen of text: a page at a time when it is longer than the terminal, and if the menu that
        follows would push it off the screen, wait for Enter first."""
        height = self.screen_height()
        page = max(5, height - 2)
        for start in range(0, len(lines), page):
            for line in lines[start : start + page]:
                self.say(line)
            more = start + page < len(lines)
            if more and self.interactive:
                answer = self.ask(f"-- {len(lines) - start - page} more lines: Enter shows them, q stops -- ")
                if answer is None or answer.lower() == "q":
                    return
        if self.interactive and len(lines) + MENU_LINES > height:
            self.ask("Press Enter for the menu ")

    def script_args(self) -> list[str]:
        return (["--env-file", self.env_file] if self.env_file else []) + ["--from-menu"]

    def run(self) -> int:
        actions: dict[str, Callable[[], None]] = {
            "1": lambda: self.job(scan_files.main, needs_server=False),
            "2": lambda: self.job(upload_files.main, needs_sources=False),
            "3": lambda: self.job(sync_upload.main),
            "4": lambda: self.with_store(self.statistics),
            "5": lambda: self.with_store(self.recent_errors),
            "6": lambda: self.with_store(self.retry_errors),
            "7": self.verify,
            "8": self.test_connection,
            "9": self.settings_screen,
            "10": self.export_report,
        }
        while True:
            self.say(f"\nimmich-uploader {VERSION}")
            for key, label in MENU:
                self.say(f"  {key:>2}) {label}")
            try:
                choice = self.ask("Choose: ")
            except KeyboardInterrupt:
                self.say()
                return ExitStatus.INTERRUPTED  # as a shell reports a program stopped by Ctrl+C
            if choice is None or choice.lower() in ("q", "quit", "exit"):
                self.say()
                return ExitStatus.OK
            if not choice:
                continue  # Enter alone shows the menu again
            action = actions.get(choice)
            if action is None:
                self.say(f"'{choice}' is not a choice: type a number from the list, or q to quit.")
                continue
            try:
                action()
            except KeyboardInterrupt:
                self.say("\nCancelled.")  # Ctrl+C at one of the entry's questions: back to the menu

    # -- jobs
    def ready(self, needs_server: bool, needs_sources: bool) -> bool:
        """Say in the menu's words what is missing before a job would stop on it."""
        try:
            settings = self.settings()
        except ConfigError as exc:
            self.say(f"A setting is not right: {exc}. Choose 9 > Settings to see them.")
            return False
        if needs_sources and not settings.source_dirs:
            self.say("No folder to scan yet: choose 9 > Settings and give the source folders.")
            return False
        if needs_server:
            try:
                settings.require_server()
            except ServerNotConfigured:
                self.say("No Immich server yet: choose 9 > Settings and give its address and API key.")
                return False
            except ConfigError as exc:
                self.say(f"A setting is not right: {exc}. Choose 9 > Settings to change it.")
                return False
        return True

    def job(
        self, script_main: Callable[[list[str]], int], needs_server: bool = True, needs_sources: bool = True
    ) -> int | None:
        if not self.ready(needs_server, needs_sources):
            return None
        status = self.run_job(script_main, [])
        if status == ExitStatus.CANNOT_START and script_main is not upload_files.main:
            self.offer_confirm_empty(script_main)
        return status

    def run_job(self, script_main: Callable[[list[str]], int], extra: list[str]) -> int:
        status = script_main([*self.script_args(), *extra])
        if status == ExitStatus.INTERRUPTED:
            self.say("Stopped. Everything done so far is saved; the next run continues.")
        self.say(f"(finished with status {status})")
        return status

    def offer_confirm_empty(self, script_main: Callable[[list[str]], int]) -> None:
        """A source folder was empty or missing while files are recorded there: ask whether it really is
        empty now (files deleted or moved on purpose) rather than a drive that is not mounted."""
        try:
            store = open_store(self.settings())
        except (ConfigError, DatabaseError):
            return
        try:
            last = store.last_run()
        finally:
            store.close()
        summary = (last or {}).get("summary", {})
        folders = summary.get("unavailable_sources") or summary.get("unavailable") or []
        if folders and self.yes(
            f"Is {', '.join(folders)} really empty now (not a drive or share that is not mounted)? Then its "
            "files are marked missing."
        ):
            self.run_job(script_main, ["--confirm-empty"])

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
        scopes = store.scope_counts()
        scope = self.pick_scope(scopes) if len(scopes) > 1 else None
        counts = store.status_counts(scope)
        if not counts:
            self.say("Nothing recorded yet: choose 1 > Scan or 3 > Sync to look at your folders.")
            return
        lines = machine_table(scopes) if len(scopes) > 1 and scope is None else []
        total_files = sum(files for files, _ in counts.values())
        total_bytes = sum(size for _, size in counts.values())
        whose = f" ({scope_label(scope)})" if scope else ""
        lines += [
            f"\n{plural(total_files, 'file')} recorded{whose}, {format_bytes(total_bytes)}",
            "By status",
        ]
        for status, (files, size) in sorted(counts.items()):
            lines.append(f"  {status:<10} {plural(files, 'file'):>14} {format_bytes(size):>11}")
        lines += year_bars(store, scope)
        types = ", ".join(
            f"{group or '?'} {files:,}" for group, files, _ in store.counts_by("extension", scope)
        )
        lines.append(f"Types: {types}")
        left_files = sum(counts.get(k, (0, 0))[0] for k in ("pending", "error"))
        left_bytes = sum(counts.get(k, (0, 0))[1] for k in ("pending", "error"))
        if left_files:
            line = f"Left to upload: {plural(left_files, 'file')}, {format_bytes(left_bytes)}"
            speed = self.last_upload_speed(store)
            if speed:
                line += f", about {format_duration(left_bytes / speed)} at the last measured {format_bytes(speed)}/s"
            lines.append(line)
        else:
            lines.append("Nothing left to upload.")
        last = store.last_run()
        if last:
            lines.append(
                f"Last run here: {last['kind']}, finished {last['finished_at'][:16]} UTC with status {last['exit_status']}"
            )
        self.show(lines)

    def pick_scope(self, scopes: list[ScopeCounts]) -> str | None:
        """Several machines share this database: all of them (Enter), or one."""
        for number, counts in enumerate(scopes, 1):
            self.say(f"  {number}) {scope_label(counts.scope)}")
        answer = self.ask("Statistics of which machine (Enter: all)? ")
        if answer and answer.isdigit() and 1 <= int(answer) <= len(scopes):
            return scopes[int(answer) - 1].scope
        return None

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
        """Every error a run's summary counted: the failed files (rows), then what the last run counted
        that is no file's upload (a folder it could not list, a dangling link, a file it could not delete)."""
        errors = store.recent_errors(20)
        finished, problems = store.last_run_problems()
        if not errors and not problems:
            self.say("No failed files, and the last run counted no other error.")
            return
        lines = ["Failed files" if errors else "No failed files."]
        for failed in errors:
            lines.append(f"  {failed.filepath}")
            lines.append(f"      {failed.last_error} ({plural(failed.attempts, 'attempt')})")
            advice = FAILURE_ADVICE.get(failed.error_kind or "")
            if advice:
                lines.append(f"      what to do: {advice}")
            if failed.next_attempt_at:
                lines.append(
                    f"      tried again after {failed.next_attempt_at} UTC, or now with 6 > Retry errors"
                )
        if problems:
            lines.append(f"Other errors of the last run ({finished} UTC)")
            for problem in problems:
                lines.append(f"  {problem.path}")
                lines.append(f"      {problem.reason}")
                if problem.advice:
                    lines.append(f"      what to do: {problem.advice}")
        self.show(lines)

    def retry_errors(self, store: Store, _settings: Settings) -> None:
        failed = len(store.pending_uploads(failed_only=True))
        if not failed:
            self.say("No failed files to try again.")
            return
        self.say(f"Trying {plural(failed, 'failed file')} again now.")
        if self.ready(needs_server=True, needs_sources=False):
            self.run_job(upload_files.main, ["--retry-errors"])

    # -- server and settings
    def verify(self) -> None:
        if not self.ready(needs_server=True, needs_sources=False):
            return
        status = self.run_job(upload_files.main, ["--verify"])
        if status == ExitStatus.FILES_FAILED and self.yes(
            "Send again the files Immich no longer has (still on this disk)?"
        ):
            self.run_job(upload_files.main, ["--verify", "--reupload"])

    def test_connection(self) -> None:
        if not self.ready(needs_server=True, needs_sources=False):
            return
        try:
            settings = self.settings()
            client = ImmichClient(settings)
            try:
                user = connect(client)
                server = client.server
            finally:
                client.close()
        except (ConfigError, StartError, ImmichError) as exc:
            self.say(f"immich-uploader: error: {exc}")
            return
        self.say(f"Server    {settings.display_url}  Immich {server.version_text}")
        self.say(f"User      {user.name} <{user.email}>{' (admin)' if user.is_admin else ''}")
        self.say(f"Images    {' '.join(sorted(server.image_extensions))}")
        self.say(f"Videos    {' '.join(sorted(server.video_extensions))}")
        self.with_store(self._database_line)

    def _database_line(self, store: Store, _settings: Settings) -> None:
        total = sum(files for files, _ in store.status_counts().values())
        self.say(f"Database  {store.describe()}, {plural(total, 'file')} recorded")

    def settings_screen(self) -> None:
        try:
            settings = self.settings()
        except ConfigError as exc:
            self.say(f"A setting is not right: {exc}")
            settings = None
        target = settings_file_for(self.env_file)
        if settings is not None:
            rows = {name: (value, source) for name, value, source in settings.display_rows()}
            for key, name, label in EDITABLE:
                value, source = rows[name]
                self.say(f"  {key}) {label:<15} {value or '(not set)'}  ({source})")
        self.say(f"  a) all settings (edit {target} for the others)")
        if target.exists() and not target.is_file():
            self.say(
                f"Settings are read from {target}, the file this menu was started with: nothing can be "
                "saved there."
            )
            return
        choice = (self.ask("Change which (Enter: back)? ") or "").lower()
        if choice == "a" and settings is not None:
            self.show(
                [f"  {name:<24} {value:<40} ({source})" for name, value, source in settings.display_rows()]
            )
            return
        for key, name, label in EDITABLE:
            if choice == key:
                self.change_setting(target, name, label)
                return

    def change_setting(self, target: Path, name: str, label: str) -> None:
        if name == "IMMICH_API_KEY":
            self.say("Create one in Immich: Account Settings > API Keys (it needs at least asset.upload).")
            value = (
                getpass.getpass("API key (not shown): ", stream=self.out)
                if self.interactive
                else self.ask("API key: ")
            )
        else:
            example = "http://nas:2283" if name == "IMMICH_URL" else "/home/me/Pictures, /mnt/phone"
            value = self.ask(f"New {label} (e.g. {example}; Enter: keep): ")
        if not value:
            return
        value = value.strip()
        try:
            if name == "IMMICH_URL":
                normalize_url(value)
            if name == "IMMICH_API_KEY" and api_key_problem(value):
                self.say(f"Not saved: the API key {api_key_problem(value)}.")
                return
            if name == "SOURCE_DIR":
                missing = [
                    p
                    for p in (part.strip() for part in value.split(","))
                    if not os.path.isdir(os.path.expanduser(p))
                ]
                if missing and not self.yes(f"{', '.join(missing)} is not a folder here. Save it anyway?"):
                    return
        except ConfigError as exc:
            self.say(f"Not saved: {exc}")
            return
        try:
            save_settings(target, {name: value})
        except OSError as exc:
            self.say(f"Not saved: cannot write {target}: {exc.strerror}.")
            return
        self.say(f"Saved {label} in {target}.")

    def export_report(self) -> None:
        default = config.PROJECT_DIR / "reports" / default_report_name()
        answer = self.ask(f"Write the report to [{default}] (a file or a folder): ")
        if answer is None:
            return
        try:
            path = report_target(answer or str(default))
            self.with_store(lambda store, _s: self.say(write_report(store, path)))
        except (ReportRefused, DatabaseError) as exc:
            self.say(f"Not written: {exc}.")


def machine_table(scopes: list[ScopeCounts]) -> list[str]:
    """One line per machine and shared library sharing this database."""
    width = max(len(scope_label(s.scope)) for s in scopes)
    lines = ["\nBy machine"]
    for s in scopes:
        lines.append(
            f"  {scope_label(s.scope):<{width}} {plural(s.files, 'file'):>14} {format_bytes(s.size_bytes):>10}  "
            f"{s.in_immich:,} in Immich, {s.pending:,} waiting, {s.failed:,} failed"
        )
    return lines


def year_bars(store: Store, scope: str | None = None) -> list[str]:
    """A bar per year taken, its length the year's bytes: the part in Immich filled, the waiting part light."""
    years = store.year_progress(scope)
    if not years:
        return []
    largest = max(y.done_bytes + y.waiting_bytes for y in years) or 1
    lines = [f"By year taken ({DONE_BLOCK} in Immich, {WAITING_BLOCK} waiting)"]
    for y in years:
        done = round(BAR_WIDTH * y.done_bytes / largest)
        waiting = round(BAR_WIDTH * y.waiting_bytes / largest)
        if y.waiting_bytes and not waiting:
            waiting = 1  # a year with anything waiting never looks finished
        bar = (DONE_BLOCK * done + WAITING_BLOCK * waiting).ljust(BAR_WIDTH)
        files = plural(y.done_files + y.waiting_files, "file")
        detail = f"{y.waiting_files:,} waiting" if y.waiting_files else "all in Immich"
        lines.append(
            f"  {y.year:<7} {bar} {files:>12} {format_bytes(y.done_bytes + y.waiting_bytes):>10}  {detail}"
        )
    return lines


REPORT_HEADER = ("machine", "path", "status", "reason", *REPORT_COLUMNS[4:])


class ReportRefused(Exception):
    """The report cannot go where asked (a file that is no report, a folder that cannot be made)."""


def default_report_name() -> str:
    return f"immich-report-{datetime.now():%Y-%m-%d-%H%M}.csv"


def report_target(answer: str) -> Path:
    """The file a report goes to: a folder (or a name ending in /) gets the default name inside it, and
    a missing folder is made."""
    path = Path(os.path.abspath(Path(answer).expanduser()))
    if path.is_dir() or answer.endswith(("/", os.sep)):
        path = path / default_report_name()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ReportRefused(f"{path.parent} is a file, not a folder") from None
    except OSError as exc:
        raise ReportRefused(f"cannot make the folder {path.parent}: {exc.strerror}") from None
    return path


def _header_line() -> str:
    text = io.StringIO()
    csv.writer(text).writerow(REPORT_HEADER)
    return text.getvalue()


def refuse_unless_report(path: Path) -> None:
    """A report replaces only a report: a file whose first line is not exactly the report's header (the
    database, a log, a photo, anything else) is never overwritten."""
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise ReportRefused(f"{path} is a folder")
    if not path.is_file():  # a device, a pipe that would block the read, a link to nothing
        raise ReportRefused(f"{path} is not a regular file: give another file name")
    header = _header_line()
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            first = handle.readline(len(header) + 1)
    except (OSError, UnicodeDecodeError):
        first = ""
    if first != header:
        raise ReportRefused(
            f"{path} is not a report this tool wrote (its first line is not the report's header): give "
            "another file name"
        )


def write_report(store: Store, path: Path) -> str:
    """One CSV row per file of every machine with its status and the reason, written to a temporary file
    beside `path` and renamed over it at the end: a failure never leaves half a report over an old one.
    Returns a line saying what was written."""
    refuse_unless_report(path)
    try:
        mode = path.stat().st_mode & 0o777  # an older report keeps its permissions
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask  # as open() would create it
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as exc:
        raise ReportRefused(f"cannot write in {path.parent}: {exc.strerror}") from None
    count = 0
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(REPORT_HEADER)
            for row in store.report_rows():
                scope, filepath, status, reason, *rest = row
                writer.writerow([scope_label(scope), filepath, status, reason or _reason(status), *rest])
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        refuse_unless_report(path)  # again: something may have been put there meanwhile
        os.replace(temp, path)
    except OSError as exc:
        raise ReportRefused(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    return f"Wrote {plural(count, 'row')} to {path}"


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
    parser.add_argument("--env-file", metavar="PATH", help=ENV_FILE_HELP)
    parser.add_argument(
        "--report",
        metavar="FILE.csv",
        help="write the per-file report and exit (into a folder: under its default name); it replaces "
        "only an earlier report",
    )
    args = parser.parse_args(argv)
    stdout = stdout or sys.stdout
    missing = missing_packages()
    if missing:
        sys.stderr.write(f"immich-uploader: error: {requirements_message('main.py', missing)}\n")
        return ExitStatus.CANNOT_START
    setup_console(sys.stderr)
    if args.report:
        try:
            path = report_target(args.report)
            store = open_store(load_settings(env_file=args.env_file, warn=log.warning))
        except (ConfigError, DatabaseError, ReportRefused) as exc:
            sys.stderr.write(f"immich-uploader: error: {exc}\n")
            return ExitStatus.CANNOT_START
        try:
            stdout.write(write_report(store, path) + "\n")
        except (ReportRefused, DatabaseError) as exc:
            sys.stderr.write(f"immich-uploader: error: {exc}\n")
            return ExitStatus.CANNOT_START
        finally:
            store.close()
        return ExitStatus.OK
    return Menu(args.env_file, stdin or sys.stdin, stdout).run()


if __name__ == "__main__":
    exit_process(main())
