"""Logging for every script: a rotating log file with timestamps, levels and modules, and short console lines.

Logging starts in two steps: `setup_console()` at once (so even a settings error is reported), then
`setup_file()` when the settings are known. A `SecretFilter` on every handler replaces the API key and the
database password wherever they appear: in messages, arguments, exception text and server responses.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

LOG_MAX_BYTES = 5 * 1024 * 1024
LOG_BACKUPS = 5
ROOT_NAME = "immich_uploader"
# extra= for a per-file problem: the log file gets it, the console shows it through progress instead.
FILE_EVENT = {"file_event": True}
FILE_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


# A file name may hold a newline (legal on Linux): escaped, it cannot forge a second log line.
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def one_line(text: str) -> str:
    """Control characters as escapes: `a\nb.jpg` is logged as `a\\nb.jpg`, on one line."""
    return text.translate(_CONTROL_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """Log file lines: the message on one line whatever it holds; a traceback keeps its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


class SecretFilter(logging.Filter):
    """Redacts known secrets from a record before any handler formats it."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()

    def add(self, secret: str) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        record.msg = self.redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


SECRETS = SecretFilter()


class ConsoleHandler(logging.Handler):
    """Writes 'immich-uploader: warning: ...' lines through a writer, so a live progress bar can clear
    itself first (progress.py installs its writer)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.writer: Callable[[str], None] = self._write
        self.debug = False  # tracebacks on the console only with --debug; the log file always has them

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_event", False):
            return
        try:
            text = record.getMessage()
            if record.exc_info and self.debug:
                text += "\n" + (record.exc_text or logging.Formatter().formatException(record.exc_info))
            self.writer(f"immich-uploader: {record.levelname.lower()}: {text}")
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class RunLogHandler(logging.handlers.RotatingFileHandler):
    """The rotating log file; each new file a run rotates into starts with that run's first line again,
    so whatever part of a long run a file holds, it says which run, with which settings."""

    run_header: str | None = None

    def doRollover(self) -> None:
        super().doRollover()
        if self.run_header and self.stream is not None:
            record = logging.LogRecord(
                f"{ROOT_NAME}.cli", logging.INFO, __file__, 0, "(continued) %s", (self.run_header,), None
            )
            self.stream.write(self.format(record) + self.terminator)


_console: ConsoleHandler | None = None


def get_logger(name: str) -> logging.Logger:
    """A named logger under the tool's root ('scan', 'upload', 'db', ...)."""
    return logging.getLogger(f"{ROOT_NAME}.{name}")


def setup_console(stream: TextIO | None = None, verbose: bool = False, debug: bool = False) -> ConsoleHandler:
    global _console
    root = logging.getLogger(ROOT_NAME)
    root.propagate = False
    if _console is not None:
        root.removeHandler(_console)
    _console = ConsoleHandler(stream or sys.stderr)
    _console.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    _console.debug = debug
    _console.addFilter(SECRETS)
    root.addHandler(_console)
    _fit_level(root)
    return _console


def _fit_level(root: logging.Logger) -> None:
    """The tool's logger passes on only what some handler writes: a debug line no handler keeps (one per
    file sent) is then one level test, not a record built and thrown away (10-15 µs, a stack walk)."""
    root.setLevel(min((h.level for h in root.handlers), default=logging.WARNING) or logging.DEBUG)


def console_handler() -> ConsoleHandler | None:
    return _console


def setup_file(log_file: Path, level: str, secrets: Iterable[str] = ()) -> Path | None:
    """Add the rotating file handler; returns the file, or None when it cannot be written (a warning says why)."""
    for secret in secrets:
        SECRETS.add(secret)
    root = logging.getLogger(ROOT_NAME)
    close_file()
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = RunLogHandler(log_file, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8")
    except OSError as exc:
        root.warning(
            "cannot write the log file %s (%s); logging to the console only",
            log_file,
            exc.strerror,
        )
        return None
    handler.setLevel(getattr(logging, level))
    handler.setFormatter(OneLineFormatter(FILE_FORMAT))
    handler.addFilter(SECRETS)
    root.addHandler(handler)
    _fit_level(root)
    return log_file


def close_file() -> None:
    """Remove the log file's handler at the end of a run: what runs next in this process (the menu, the
    next job, a test) must not write into the file of a run that is over."""
    root = logging.getLogger(ROOT_NAME)
    for handler in list(root.handlers):
        if isinstance(handler, logging.handlers.RotatingFileHandler):
            root.removeHandler(handler)
            handler.close()
    _fit_level(root)


def forget_handlers() -> None:
    """In a process forked from a run (a hash worker): the handlers are the run's, its log file (which it
    rotates) and its console. They are dropped unclosed, so the fork writes and flushes nothing of theirs."""
    root = logging.getLogger(ROOT_NAME)
    root.handlers.clear()
    _fit_level(root)


def set_run_header(line: str) -> None:
    """The line each rotated log file of this run starts with (the run's first line)."""
    for handler in logging.getLogger(ROOT_NAME).handlers:
        if isinstance(handler, RunLogHandler):
            handler.run_header = SECRETS.redact(line)
