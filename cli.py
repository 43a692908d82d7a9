"""What every script shares at its edge: the common flags, exit statuses, signal handling, and the one place
that turns a user's mistake into a single `immich-uploader: error: ...` line instead of a traceback.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, NoReturn, TextIO

from config import (
    PROJECT_DIR,
    VERSION,
    ConfigError,
    Origin,
    Settings,
    load_settings,
    mask_secret,
    mask_url_password,
    settings_flags,
)
from db_manager import DatabaseError, Store, migrate_store, open_store
from logger import (
    FILE_EVENT,
    close_file,
    console_handler,
    get_logger,
    set_run_header,
    setup_console,
    setup_file,
)
from progress import ProgressTracker, select_progress

log = get_logger("cli")


class ExitStatus(IntEnum):
    OK = 0
    FILES_FAILED = 1  # the run finished, some files could not be scanned or uploaded
    CANNOT_START = 2  # settings, database, server or API key
    TOO_MANY_ERRORS = 3  # MAX_CONSECUTIVE_ERRORS failures in a row: the server is likely down
    INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug; please report it with the log file
    INTERRUPTED = 130  # 128 + SIGINT: what shells report for a job stopped by Ctrl-C


# The packages requirements.txt installs, by the name each is imported as: a Python without them (the
# system's python3 instead of the project's .venv) is told so in one line before anything starts.
REQUIRED_PACKAGES = {
    "dotenv": "python-dotenv",
    "PIL": "Pillow",
    "exifread": "ExifRead",
    "hachoir": "hachoir",
    "requests": "requests",
    "colorama": "colorama",
    "pymysql": "PyMySQL",
    "watchdog": "watchdog",
}


def missing_packages() -> list[str]:
    """The required packages this Python cannot import; looked up without importing them (0.5 ms)."""
    from importlib.machinery import PathFinder

    return [
        package
        for module, package in REQUIRED_PACKAGES.items()
        if module not in sys.modules and PathFinder.find_spec(module) is None
    ]


def missing_package_of(exc: BaseException) -> str | None:
    """The required package a ModuleNotFoundError is about, if any: a failed import deep in a run is the
    same mistake as one found at the start."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return REQUIRED_PACKAGES.get(exc.name.split(".")[0])
    return None


def requirements_message(script: str, packages: list[str]) -> str:
    """One line: what this Python lacks and how to run the tool with the Python that has it."""
    named = ", ".join(packages[:3]) + (f" and {len(packages) - 3} more" if len(packages) > 3 else "")
    python = sys.executable or "python3"
    venv = PROJECT_DIR / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    requirements = PROJECT_DIR / "requirements.txt"
    install = f"{python} -m pip install -r {requirements}"
    # The venv's python is a link to the system's: what tells them apart is the prefix a run starts in.
    if _same_file(PROJECT_DIR / ".venv", Path(sys.prefix)):
        how = f"install them: {install}"
    elif venv.exists():
        how = f"run it with the project's Python: {venv} {PROJECT_DIR / script} (or install them: {install})"
    else:
        how = (
            f"set up the project's Python once: cd {PROJECT_DIR} && python3 -m venv .venv && "
            f".venv/bin/pip install -r requirements.txt, then run .venv/bin/python {script} (or install "
            f"them into this Python: {install})"
        )
    return f"this Python ({python}) lacks {named}, which the tool needs: {how}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class StartError(Exception):
    """The job cannot start (server unreachable, key refused, another run going); exit 2 with this line."""


class AlreadyRunning(Exception):
    """Another run holds the lock: not an error under cron (exit 0)."""


@dataclass
class Context:
    """What a script's body needs: settings, the database, output streams, the stop flag."""

    settings: Settings
    args: argparse.Namespace
    store: Store
    progress: ProgressTracker
    stdout: TextIO
    stop: threading.Event

    def emit_json(self, summary: dict[str, Any]) -> None:
        try:
            self.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
            self.stdout.flush()
        except BrokenPipeError:
            log.warning("stdout was closed before the JSON summary could be written")


ENV_FILE_HELP = (
    "settings file (default: .env beside the scripts, or ./.env when it sets IMMICH_URL or IMMICH_API_KEY)"
)


def base_parser(prog: str, description: str, paths_help: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"immich-uploader {VERSION}")
    # The menu runs the scripts with this: their hints then name menu entries, not flags.
    parser.add_argument("--from-menu", action="store_true", help=argparse.SUPPRESS)
    if paths_help:
        parser.add_argument("paths", nargs="*", metavar="DIR", help=paths_help)
    parser.add_argument("--env-file", metavar="PATH", help=ENV_FILE_HELP)
    parser.add_argument(
        "--source-dir",
        metavar="DIR",
        action="append",
        help="folder(s) to scan, comma-separated; repeatable, adding up (SOURCE_DIR)",
    )
    parser.add_argument("--url", metavar="URL", help="Immich server address (IMMICH_URL)")
    parser.add_argument(
        "--key",
        metavar="KEY",
        help="API key (IMMICH_API_KEY); other users of this machine can see a command line, so the "
        "environment or .env is safer",
    )
    parser.add_argument(
        "--ignore",
        metavar="GLOB",
        action="append",
        help="skip paths matching GLOB; repeatable (IGNORE_PATTERNS)",
    )
    parser.add_argument(
        "--include-hidden", action="store_true", help="also scan hidden files and NAS junk (INCLUDE_HIDDEN)"
    )
    parser.add_argument("--db-path", metavar="FILE", help="SQLite database file (DB_PATH)")
    parser.add_argument(
        "--machine", metavar="NAME", help="this machine's name in a shared database (MACHINE_NAME)"
    )
    parser.add_argument(
        "--shared-library",
        metavar="NAME",
        help="the folder is the mount point of shared library NAME (SHARED_LIBRARY)",
    )
    parser.add_argument("--log-level", metavar="LEVEL", help="log file detail (LOG_LEVEL)")
    parser.add_argument("--time-zone", metavar="ZONE", help="zone of cameras without offsets (TIME_ZONE)")
    parser.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress output (errors still shown)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show info messages on the console")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    parser.add_argument(
        "--show-config", action="store_true", help="print every setting and its source, then exit"
    )
    return parser


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by upload_files.py and sync_upload.py; each is also a setting (see .env.example)."""
    parser.add_argument("--concurrency", metavar="N", help="uploads in flight at once (UPLOAD_CONCURRENCY)")
    group = parser.add_argument_group("what to upload")
    group.add_argument("--since", metavar="DATE", help="only files taken on or after DATE (YYYY-MM-DD)")
    group.add_argument("--until", metavar="DATE", help="only files taken on or before DATE (YYYY-MM-DD)")
    group.add_argument("--include", metavar="GLOBS", help="only paths matching these globs, comma-separated")
    group.add_argument("--exclude", metavar="GLOBS", help="not paths matching these globs, comma-separated")
    only = group.add_mutually_exclusive_group()
    only.add_argument("--only-images", action="store_true", help="photos only")
    only.add_argument("--only-videos", action="store_true", help="videos only")
    group = parser.add_argument_group("in Immich")
    albums = group.add_mutually_exclusive_group()
    albums.add_argument("--album", metavar="NAME", help="put every file into album NAME")
    albums.add_argument(
        "--album-from-folder", action="store_true", help="album named after each file's folder"
    )
    albums.add_argument(
        "--album-from-path", action="store_true", help="album named after the folder path below the source"
    )
    group.add_argument("--stack-raw-jpeg", action="store_true", help="stack each RAW file with its JPEG")
    group.add_argument("--stack-bursts", action="store_true", help="stack burst photos")
    group.add_argument(
        "--tag",
        metavar="NAME",
        action="append",
        help="tag every file NAME in Immich ('/' makes a hierarchy: Trips/Paris); repeatable (TAGS)",
    )
    group.add_argument(
        "--tags-from-folder",
        action="store_true",
        help="tag each file with its folder path below the source, e.g. Trips/2019/Paris (TAGS_FROM_FOLDER)",
    )
    group.add_argument(
        "--visibility",
        metavar="WHERE",
        help="archive or timeline: where uploads appear in Immich (VISIBILITY); locked is not offered",
    )
    group.add_argument(
        "--pause-server-jobs",
        action="store_true",
        help="pause Immich's background jobs during the run (admin)",
    )
    group = parser.add_argument_group("local files")
    group.add_argument(
        "--delete-uploaded",
        "--delete",
        action="store_true",
        help="delete local files Immich holds, each hashed again and confirmed first (see README)",
    )
    group.add_argument(
        "--delete-duplicates",
        action="store_true",
        help="with --delete-uploaded: also files Immich already had",
    )


def hide_secrets_from_process_list(key: str | None, url: str | None) -> None:
    """`ps` shows a command line to every user of the machine: once started, the process title shows the
    key and a password in the --url masked (setproctitle rewrites it; until then, and without it, they are
    visible, which is why the README recommends the environment or .env)."""
    try:
        import setproctitle
    except ImportError:
        return
    title = []
    for arg in sys.argv:
        if key:
            arg = mask_secret(arg) if arg == key else arg.replace(key, mask_secret(key))
        if url and url in arg:
            arg = arg.replace(url, mask_url_password(url))
        title.append(arg)
    setproctitle.setproctitle(" ".join(title))


@contextmanager
def claims_kept(store: Store, settings: Settings) -> Iterator[None]:
    """In a shared library, this machine's claims are renewed while it runs (a long upload keeps its
    file), and what it held and did not finish is released at the end; a killed machine's run out."""
    if not settings.shared_library:
        yield
        return
    done = threading.Event()

    def renew() -> None:
        while not done.wait(settings.claim_lease_s / 4):
            try:
                store.renew_claims(settings.claim_lease_s)
            except DatabaseError as exc:
                log.warning("could not renew this machine's claims (%s); trying again", exc)

    keeper = threading.Thread(target=renew, name="claims", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        done.set()
        keeper.join(5)
        try:
            store.release_claims()
        except DatabaseError as exc:
            log.warning("claims not released (%s): they run out after CLAIM_LEASE", exc)


def install_stop_handlers(stop: threading.Event) -> Callable[[], None]:
    """First SIGINT/SIGTERM: stop taking new files and finish cleanly. Second: stop at once.
    Returns a function that puts the previous handlers back (the menu and tests run several jobs)."""

    def handle(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if signum == signal.SIGTERM:
            log.warning("stopping as asked (SIGTERM): finishing the files in progress")
        else:
            log.warning("stopping: finishing the files in progress (press Ctrl+C again to quit at once)")

    if threading.current_thread() is not threading.main_thread():
        return _nothing
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def settings_file_lines(settings: Settings) -> list[str]:
    """Which settings file was read, and which .env was passed over and why, as comment lines."""
    read = settings.env_file or f"none (there is no {PROJECT_DIR / '.env'})"
    lines = [f"# settings file: {read}"]
    if settings.env_file_passed_over is not None:
        lines.append(f"# passed over: {settings.env_file_passed_over}: {settings.env_file_passed_over_why}")
    return lines


def summary_json(summary: Any) -> dict[str, object]:
    """A run's summary dataclass (with `elapsed_s` and `error_files`) as `--json` prints it and the runs
    table keeps it: seconds to the millisecond, at most 100 failed files named."""
    data = asdict(summary)
    data["elapsed_s"] = round(summary.elapsed_s, 3)
    data["error_files"] = summary.error_files[:100]
    return data


def exit_process(status: int) -> NoReturn:
    """End a script's process with `status`. The interpreter's last garbage collection at exit walks every
    object still alive, 10 ms of each run (more than the work of an unchanged sync); frozen, it skips them.
    Exit handlers, flushing and closing still happen as usual."""
    gc.freeze()
    sys.exit(status)


def _server_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's error, where a run loaded it: a scan alone never imports the client (its import is
    a fifth of a scan's start-up), and what was never imported raised nothing."""
    client = sys.modules.get("immich_client")
    return (client.ImmichError,) if client is not None else ()


def _nothing() -> None:
    return None


def run_script(
    parser: argparse.ArgumentParser,
    body: Callable[[Context], ExitStatus],
    argv: list[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    needs_lock: bool = True,
) -> int:
    """Parse, configure, open the database, run `body`, map failures to exit statuses. The log file says
    where each run starts (the script, the version, the settings not at their default and where each
    came from) and how it ended (the exit status, the summary's counts, the time taken)."""
    started = time.monotonic()
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    args = parser.parse_args(argv)
    prog = "immich-uploader"
    missing = missing_packages()
    if missing:
        stderr.write(f"{prog}: error: {requirements_message(parser.prog, missing)}\n")
        return ExitStatus.CANNOT_START
    key, url = getattr(args, "key", None), getattr(args, "url", None)
    if key or (url and mask_url_password(url) != url):
        hide_secrets_from_process_list(key, url)
    # Every console line goes through the progress display: it clears a live bar first, and outside a
    # terminal it puts a timestamp on the line.
    progress = select_progress(stderr, enabled=not args.no_progress)
    setup_console(stderr, verbose=args.verbose, debug=args.debug).writer = progress.message
    store: Store | None = None
    settings: Settings | None = None
    restore_signals: Callable[[], None] = _nothing
    problem = ""  # the one line a run that could not start or was stopped ended with
    try:
        settings = load_settings(settings_flags(args), args.env_file, warn=log.warning)
        if args.show_config:
            stdout.write("".join(line + "\n" for line in settings_file_lines(settings)))
            for name, value, source in settings.display_rows():
                stdout.write(f"{name}={value}  # {source}\n")
            return ExitStatus.OK
        if setup_file(settings.log_file, settings.log_level, secrets=settings.secrets):
            start = run_start_line(parser.prog, settings)
            log.info("%s", start)
            set_run_header(start)
        store = open_store(settings, migrate=False)
        stop = threading.Event()
        restore_signals = install_stop_handlers(stop)
        # The lock comes before the migrations: two runs starting together must not both upgrade.
        if needs_lock and not store.acquire_run_lock():
            raise AlreadyRunning
        migrate_store(store)
        with claims_kept(store, settings):
            status = int(body(Context(settings, args, store, progress, stdout, stop)))
    except AlreadyRunning:
        problem = "another run is in progress for this machine and these folders; nothing to do"
        progress.message(f"{prog}: {problem}")
        status = ExitStatus.OK
    except (ConfigError, DatabaseError, StartError) as exc:
        log.debug("cannot start", exc_info=True)
        problem = str(exc)
        progress.message(f"{prog}: error: {exc}")
        status = ExitStatus.CANNOT_START
    except KeyboardInterrupt:
        problem = "interrupted"
        progress.message(f"{prog}: interrupted")
        status = ExitStatus.INTERRUPTED
    except _server_errors() as exc:
        # The server failed a request the run could not do without (its formats, a bulk check, albums):
        # what was recorded stands, the next run goes on.
        log.debug("server failed", exc_info=True)
        problem = f"the server failed: {exc}"
        progress.message(f"{prog}: error: {problem}")
        status = ExitStatus.TOO_MANY_ERRORS
    except Exception as exc:
        package = missing_package_of(exc)
        if package is not None:
            log.debug("a required package is missing", exc_info=True)
            problem = requirements_message(parser.prog, [package])
            progress.message(f"{prog}: error: {problem}")
            status = ExitStatus.CANNOT_START
        else:
            # A bug, not a user's mistake: the traceback goes to the log file (and the console with --debug).
            log.exception("internal error", extra=FILE_EVENT)
            if args.debug:
                raise
            where = settings.log_file if settings is not None else "the log file"
            problem = f"internal error {exc!r}"
            progress.message(
                f"{prog}: error: internal error {exc!r}; the traceback is in {where} (or run with --debug)"
            )
            status = ExitStatus.INTERNAL_ERROR
    finally:
        restore_signals()
        handler = console_handler()
        if handler is not None:
            handler.writer = handler._write
        if store is not None:
            store.close()
    if settings is not None:
        log.info("%s", run_end_line(parser.prog, status, time.monotonic() - started, progress, problem))
    close_file()  # what runs after this run (the menu, the next test) does not write to its log
    return status


def run_start_line(script: str, settings: Settings) -> str:
    """Where a run starts in the log: the script, the version, and each setting not at its default with
    where it came from (secrets masked)."""

    def where(name: str, origin: Origin) -> str:
        alias = "" if origin.name == name or origin.kind == "flag" else f"{origin.name}, "
        if origin.kind == "file" and origin.path == settings.env_file:
            return f"{alias}line {origin.line}"  # the file is named once, before
        return f"{alias}{origin.where}"

    changed = [f"{name}={value} ({where(name, origin)})" for name, value, origin in settings.changed_rows()]
    return (
        f"=== {script} {VERSION} started (pid {os.getpid()}, Python {sys.version.split()[0]}); settings "
        f"file {settings.env_file or 'none'}: {', '.join(changed) or 'every setting at its default'}"
    )


STATUS_WORDS = {
    ExitStatus.OK: "done",
    ExitStatus.FILES_FAILED: "some files failed",
    ExitStatus.CANNOT_START: "could not start",
    ExitStatus.TOO_MANY_ERRORS: "stopped",
    ExitStatus.INTERNAL_ERROR: "internal error",
    ExitStatus.INTERRUPTED: "interrupted",
}


def run_end_line(script: str, status: int, elapsed_s: float, progress: ProgressTracker, problem: str) -> str:
    """Where a run ends in the log: its exit status, the summary's counts as the user saw them, and the
    time it took."""
    from utils import format_duration

    words = f" ({STATUS_WORDS[status]})" if status in STATUS_WORDS else ""
    line = f"=== {script} ended with status {status}{words} after {format_duration(elapsed_s)}"
    if progress.last_summary is not None:
        title, rows = progress.last_summary
        line += f": {title}: " + ", ".join(f"{label} {value}" for label, value in rows)
    if problem:
        line += f"; {problem}"
    return line
