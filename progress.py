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
BAR_WIDTH, BAR_MIN_WIDTH = 24, 10  # characters inside the bar's brackets

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
    """The silent kind, and the interface the others share.

    A phase counts one thing for its bar, percentage and ETA: files for the scan (`unit="files"`), bytes of
    the backlog for uploads (`unit="bytes"`: a file settled without sending, a duplicate, still completes
    its share), so all three reach 100 % together and the last counter equals the summary. `sent_bytes`
    is what really went over the wire, for the MB/s figure."""

    shows_each_file = False  # whether file_status shows more than errors: a detail costs nothing if not

    def __init__(self, stream: TextIO | None = None, stamped: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.stamped = stamped  # a timestamp on every line (cron and pipes)
        self._lock = threading.RLock()
        self.phase = ""
        self.unit = "files"
        self.total_files: int | None = None
        self.total_bytes: int | None = None
        self.done_files = 0
        self.done_bytes = 0
        self.sent_bytes = 0
        self.started = time.monotonic()
        self.last_summary: tuple[str, Sequence[tuple[str, str]]] | None = None  # for the log's last line

    def start(
        self, phase: str, total_files: int | None = None, total_bytes: int | None = None, unit: str = "files"
    ) -> None:
        with self._lock:
            self.phase, self.unit = phase, unit
            self.total_files, self.total_bytes = total_files, total_bytes
            self.done_files = self.done_bytes = self.sent_bytes = 0
            self.started = time.monotonic()
            self._started_phase()

    def _started_phase(self) -> None:
        pass

    def set_total(self, total_files: int | None, total_bytes: int | None = None) -> None:
        with self._lock:
            self.total_files, self.total_bytes = total_files, total_bytes
            self._draw(force=False)

    def advance(self, files: int = 1, size_bytes: int = 0, sent_bytes: int = 0) -> None:
        with self._lock:
            self.done_files += files
            self.done_bytes += size_bytes
            self.sent_bytes += sent_bytes
            self._draw(force=False)

    def file_status(self, status: str, path: str, detail: str = "") -> None:
        """One file's outcome: shown on a terminal; only errors elsewhere (cron mails should stay short)."""

    def message(self, line: str) -> None:
        """A line for the user that is not a log record (the console log handler also writes through here)."""
        with self._lock:
            self._clear()
            self._write(self._stamp(line) + "\n")
            self._draw(force=True)

    def _stamp(self, line: str) -> str:
        return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}" if self.stamped else line

    def _write(self, text: str) -> None:
        """Output must never stop the work: a closed pipe (`| head`, a gone terminal) silences it."""
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = io.StringIO()

    def finish(self) -> None:
        with self._lock:
            if self.idle:
                self.phase = ""  # a stage with nothing to do leaves no line
                return
            self._draw(force=True, final=True)
            self.phase = ""

    @property
    def idle(self) -> bool:
        return not self.done_files and not self.total_files

    def summary(self, title: str, rows: Sequence[tuple[str, str]]) -> None:
        self.last_summary = (title, list(rows))
        with self._lock:
            self._clear()
            width = max((len(k) for k, _ in rows), default=0)
            lines = [title] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
            self._write("".join(self._stamp(line) + "\n" for line in lines))

    # -- shared arithmetic
    def fraction(self) -> float | None:
        """How far the phase is, in its one unit; None while the total is not known."""
        if self.unit == "bytes" and self.total_bytes:
            return min(1.0, self.done_bytes / self.total_bytes)
        if self.total_files is None:
            return None
        return min(1.0, self.done_files / self.total_files) if self.total_files else 1.0

    def status_line(self, width: int | None = None) -> str:
        """The phase's line: phase, %, counts, speed, ETA. Given a width, it is made to fit: the less
        useful parts go first (files/s when bytes/s is shown, then the byte counts), and only a line
        that still does not fit is cut."""
        line = self._line()
        if width is None:
            return line
        for full_counter, files_rate in ((True, False), (False, False)):
            if len(line) <= width:
                break
            line = self._line(full_counter, files_rate)
        return line[:width]

    def _line(self, full_counter: bool = True, files_rate: bool = True) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        fraction = self.fraction()
        parts = [self.phase]
        if fraction is not None:
            parts.append(f"{100 * fraction:.0f}%")
        files = (
            f"{self.done_files}/{self.total_files}" if self.total_files is not None else str(self.done_files)
        )
        counter = f"{files} file{'s' if (self.total_files or self.done_files) != 1 else ''}"
        if self.unit == "bytes" and self.total_bytes and full_counter:
            # What went over the wire, as the summary's "sent" says; files settled without sending (already
            # in Immich, refused) complete their share of the percentage but send nothing.
            counter += f", {format_bytes(self.sent_bytes)} sent"
        parts.append(f"[{counter}]")
        rate_bytes = self.sent_bytes if self.unit == "bytes" else self.done_bytes
        if files_rate or not rate_bytes:
            parts.append(f"{self.done_files / elapsed:.1f} files/s")
        if rate_bytes:
            parts.append(f"{format_bytes(rate_bytes / elapsed)}/s")
        if fraction is not None and 0 < fraction < 1:
            parts.append(f"ETA {format_duration(elapsed * (1 - fraction) / fraction)}")
        return " ".join(parts)

    def _draw(self, force: bool, final: bool = False) -> None:
        pass

    def _clear(self) -> None:
        pass


class PlainProgress(ProgressTracker):
    """For cron and pipes: a status line every few seconds, error lines, no escape codes, and a timestamp
    on every line so that nights appended to one log file can be told apart."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = PLAIN_INTERVAL_S) -> None:
        super().__init__(stream, stamped=True)
        self.interval_s = interval_s
        self._last = time.monotonic()

    def _started_phase(self) -> None:
        self._last = self.started  # the first line comes after an interval, not at once

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
        self._write(self._stamp(self.status_line()) + "\n")


class TtyProgress(ProgressTracker):
    """A live bar redrawn in place, coloured per-file lines above it."""

    shows_each_file = True

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

    def _bar(self, width: int = BAR_WIDTH) -> str:
        fraction = self.fraction()
        if fraction is None:
            return ""
        filled = int(fraction * width)
        return "[" + "#" * filled + "-" * (width - filled) + "] "

    def fitted_line(self, columns: int) -> str:
        """The bar and the status line in one terminal line (the last column stays free, or the
        terminal wraps): the whole status line first, the bar in what room is left; no bar in less than
        BAR_MIN_WIDTH, and no bar at all when the status line itself has to give up a part."""
        line = self._line()
        room = columns - 1 - len(line) - 3  # the brackets and the space after them
        if room >= BAR_MIN_WIDTH:
            return self._bar(min(BAR_WIDTH, room)) + line
        return self.status_line(columns - 1)

    def _draw(self, force: bool, final: bool = False) -> None:
        now = time.monotonic()
        if not self.phase or (not force and now - self._last < TTY_INTERVAL_S):
            return
        self._last = now
        line = self.fitted_line(_terminal_columns(self.stream))
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
        return ProgressTracker(stream, stamped=not stream.isatty())
    if stream.isatty() and os.environ.get("TERM") != "dumb":
        import colorama

        colorama.just_fix_windows_console()
        return TtyProgress(stream, color=not os.environ.get("NO_COLOR"))
    return PlainProgress(stream)
