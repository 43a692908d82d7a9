"""What the user sees while a job runs: counters, speed, ETA, per-file status and the closing summary.

One interface, three kinds, chosen once by `select_progress()`: a live bar redrawn in place on a terminal
(colours through colorama, per-file lines above the bar), plain lines at most every few seconds for cron and
pipes (no colours, no cursor codes), and a silent one for `--no-progress` in tests. Everything goes to
stderr; stdout is kept for results (`--json`). All methods are thread-safe: upload workers report directly.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from utils import format_bytes, format_duration

PLAIN_INTERVAL_S = 5.0
TTY_INTERVAL_S = 0.1

GREEN, YELLOW, RED, CYAN, DIM, RESET = "\x1b[32m", "\x1b[33m", "\x1b[31m", "\x1b[36m", "\x1b[2m", "\x1b[0m"
STATUS_STYLE = {
    "success": (GREEN, "✓"),
    "uploaded": (GREEN, "✓"),
    "new": (GREEN, "+"),
    "changed": (CYAN, "~"),
    "duplicate": (YELLOW, "="),
    "skipped": (YELLOW, "-"),
    "missing": (YELLOW, "?"),
    "error": (RED, "✗"),
    "working": (CYAN, "…"),
}


class ProgressTracker:
    """The silent kind, and the interface the others share."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.RLock()
        self.phase = ""
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.done_files = 0
        self.done_bytes = 0
        self.started = time.monotonic()
        self.show_bytes = False

    def start(self, phase: str, total_files: int | None = None, total_bytes: int | None = None) -> None:
        with self._lock:
            self.phase = phase
            self.total_files, self.total_bytes = total_files, total_bytes
            self.done_files = self.done_bytes = 0
            self.started = time.monotonic()
            self.show_bytes = phase in ("upload", "sync")

    def set_total(self, total_files: int | None, total_bytes: int | None = None) -> None:
        with self._lock:
            self.total_files, self.total_bytes = total_files, total_bytes
            self._draw(force=False)

    def advance(self, files: int = 1, size_bytes: int = 0) -> None:
        with self._lock:
            self.done_files += files
            self.done_bytes += size_bytes
            self._draw(force=False)

    def file_status(self, status: str, path: str, detail: str = "") -> None:
        """One file's outcome: shown on a terminal; only errors elsewhere (cron mails should stay short)."""

    def message(self, line: str) -> None:
        """A line for the user that is not a log record (the console log handler also writes through here)."""
        with self._lock:
            self._clear()
            self._write(line + "\n")
            self._draw(force=True)

    def _write(self, text: str) -> None:
        """Output must never stop the work: a closed pipe (`| head`, a gone terminal) silences it."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = io.StringIO()

    def finish(self) -> None:
        with self._lock:
            self._draw(force=True, final=True)

    def summary(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._clear()
            width = max((len(k) for k, _ in rows), default=0)
            lines = [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
            self._write("\n".join(lines) + "\n")

    # -- shared arithmetic
    def status_line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        parts = [self.phase]
        if self.total_files:
            pct = 100.0 * self.done_files / self.total_files
            parts.append(f"[{self.done_files}/{self.total_files}] ({pct:.0f}%)")
        else:
            parts.append(f"[{self.done_files}]")
        parts.append(f"{self.done_files / elapsed:.1f} files/s")
        if self.done_bytes:
            parts.append(f"{format_bytes(self.done_bytes / elapsed)}/s")
        eta = self.eta_s(elapsed)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        return " ".join(parts)

    def eta_s(self, elapsed: float) -> float | None:
        if self.total_bytes and self.done_bytes:
            return max(0.0, (self.total_bytes - self.done_bytes) * elapsed / self.done_bytes)
        if self.total_files and self.done_files:
            return max(0.0, (self.total_files - self.done_files) * elapsed / self.done_files)
        return None

    def _draw(self, force: bool, final: bool = False) -> None:
        pass

    def _clear(self) -> None:
        pass


class PlainProgress(ProgressTracker):
    """For cron and pipes: a plain status line every few seconds, error lines, no escape codes."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = PLAIN_INTERVAL_S) -> None:
        super().__init__(stream)
        self.interval_s = interval_s
        self._last = 0.0

    def file_status(self, status: str, path: str, detail: str = "") -> None:
        path, detail = printable(path), printable(detail)
        if status == "error":
            self.message(f"error: {path}{': ' + detail if detail else ''}")

    def _draw(self, force: bool, final: bool = False) -> None:
        now = time.monotonic()
        if not self.phase or (not final and now - self._last < self.interval_s):
            return
        if force and not final:
            return
        self._last = now
        self._write(self.status_line() + "\n")


class TtyProgress(ProgressTracker):
    """A live bar redrawn in place, coloured per-file lines above it."""

    def __init__(self, stream: TextIO | None = None, color: bool = True) -> None:
        super().__init__(stream)
        self.color = color
        self._last = 0.0
        self._bar_shown = False

    def _paint(self, style: str, text: str) -> str:
        return f"{style}{text}{RESET}" if self.color else text

    def file_status(self, status: str, path: str, detail: str = "") -> None:
        path, detail = printable(path), printable(detail)
        style, mark = STATUS_STYLE.get(status, ("", "·"))
        line = f"{self._paint(style, mark + ' ' + status.ljust(9))} {path}"
        if detail:
            line += f"  {self._paint(DIM, detail)}"
        self.message(line)

    def _bar(self) -> str:
        width = 24
        if self.total_files:
            fraction = min(1.0, self.done_files / self.total_files)
            if self.show_bytes and self.total_bytes:
                fraction = min(1.0, self.done_bytes / self.total_bytes)
            filled = int(fraction * width)
            return "[" + "#" * filled + "-" * (width - filled) + "] "
        return ""

    def _draw(self, force: bool, final: bool = False) -> None:
        now = time.monotonic()
        if not self.phase or (not force and now - self._last < TTY_INTERVAL_S):
            return
        self._last = now
        columns = _terminal_columns(self.stream)
        line = (self._bar() + self.status_line())[: columns - 1]
        self._write("\r\x1b[K" + self._paint(CYAN, line) + ("\n" if final else ""))
        self._bar_shown = not final

    def _clear(self) -> None:
        if self._bar_shown:
            self._write("\r\x1b[K")
            self._bar_shown = False


def media_detail(metadata_json: str | None) -> str:
    """Camera, lens, dimensions and exposure in one short line, for per-file status."""
    if not metadata_json:
        return ""
    info = json.loads(metadata_json)
    parts = [" ".join(str(info[k]) for k in ("camera_make", "camera_model") if info.get(k))]
    if info.get("lens_model"):
        parts.append(str(info["lens_model"]))
    if info.get("width") and info.get("height"):
        parts.append(f"{info['width']}x{info['height']}")
    exposure = [
        f"f/{info['f_number']}" if info.get("f_number") else "",
        f"{info['exposure_time']}s" if info.get("exposure_time") else "",
        f"ISO{info['iso']}" if info.get("iso") else "",
        f"{info['focal_length_mm']}mm" if info.get("focal_length_mm") else "",
    ]
    parts.append(" ".join(e for e in exposure if e))
    return " · ".join(p for p in parts if p)


_CONTROL = dict.fromkeys(range(32), "?") | {127: "?"}


def printable(text: str) -> str:
    """A file name may hold ESC or a newline: never let it move the cursor or forge a line."""
    return text.translate(_CONTROL)


def errors_row(count: int, log_file: object) -> tuple[str, str]:
    """The summary's error line says where the failed files are listed."""
    if not count:
        return ("errors", "0")
    return ("errors", f"{count}, listed in {log_file} and under python main.py > Recent errors")


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


def select_progress(stream: TextIO | None = None, enabled: bool = True) -> ProgressTracker:
    """The right kind for this stream: live on a terminal, plain lines elsewhere, silent when disabled."""
    stream = stream or sys.stderr
    if not enabled:
        return ProgressTracker(stream)
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        import colorama

        colorama.just_fix_windows_console()
        return TtyProgress(stream, color=not os.environ.get("NO_COLOR"))
    return PlainProgress(stream)
