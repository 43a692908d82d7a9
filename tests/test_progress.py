"""What the user sees while a job runs: one unit per phase, 100 % together, timestamps outside a terminal."""

from __future__ import annotations

import io
import json
import re

import sync_upload
from progress import PlainProgress, ProgressTracker, TtyProgress
from tests.conftest import STAMP, Env, Library, run_inprocess, unstamped
from tests.immich_server import ImmichTestServer


def test_upload_percentage_bar_and_eta_count_bytes_and_reach_100_together() -> None:
    stream = io.StringIO()
    tty = TtyProgress(stream, color=False)
    tty.start("upload", total_files=2, total_bytes=1000, unit="bytes")
    tty.advance(1, 900, sent_bytes=900)  # the big file: 90 % of the work, though half of the files
    assert tty.fraction() == 0.9 and "90%" in tty.status_line() and "[1/2 files" in tty.status_line()
    assert tty._bar() == "[" + "#" * 21 + "-" * 3 + "] "
    tty.advance(1, 100)  # a duplicate: settled without sending, its share done all the same
    line = tty.status_line()
    assert (
        tty.fraction() == 1.0
        and "100%" in line
        and "[2/2 files, 900 B sent]" in line  # the duplicate sent nothing, as the summary will say
        and "ETA" not in line
    )


def test_scan_counts_files_and_shows_no_percentage_before_the_walk_is_done() -> None:
    progress = ProgressTracker()
    progress.start("scan")
    progress.advance(3)
    assert progress.fraction() is None and "%" not in progress.status_line()
    progress.set_total(4)
    progress.advance(1)
    assert progress.status_line().startswith("scan 100% [4/4 files]")


def test_a_stage_with_nothing_to_do_leaves_no_line_and_nothing_prints_at_start() -> None:
    stream = io.StringIO()
    plain = PlainProgress(stream, interval_s=5)
    plain.start("scan")
    plain.advance(1)  # no line at once: the first comes after an interval
    plain.set_total(1)
    plain.finish()
    plain.start("upload", 0, 0, unit="bytes")
    plain.finish()
    lines = [unstamped(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1 and lines[0].startswith("scan 100% [1/1 file]")


def test_sync_output_outside_a_terminal_is_stamped_and_its_last_counters_equal_the_summary(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, *_ = library.photos(5)
    immich.add_existing_asset(have.read_bytes())
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--json")
    summary = json.loads(result.stdout)
    assert result.status == 0 and summary["uploaded"] == 4 and summary["duplicates"] == 1
    assert all(STAMP.match(line) for line in result.stderr.splitlines())
    (upload_line,) = [line for line in result.lines if line.startswith("upload")]
    assert re.match(r"upload 100% \[5/5 files, ", upload_line)
    rerun = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--json")
    assert not [line for line in rerun.lines if line.startswith("upload")]  # nothing to upload: no line


def live_line_on_a_terminal(columns: int) -> str:
    """The live line as a terminal `columns` wide receives it, half-way through a big upload."""
    import fcntl
    import os
    import struct
    import termios
    import time

    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    with os.fdopen(terminal, "w") as stream:
        tty = TtyProgress(stream, color=False)
        tty.start("upload", total_files=2000, total_bytes=7_000_000_000, unit="bytes")
        tty.started = time.monotonic() - 30  # half a minute in: speeds and an ETA to show
        tty.advance(1234, 3_300_000_000, sent_bytes=3_300_000_000)
        tty.message("done: IMG_1234.jpg")  # a line above, the live line drawn again below it
    drawn = b""
    while True:  # all that was written, up to the end the closed terminal marks (EIO on Linux)
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(master)
    return drawn.decode().rsplit("\r\x1b[K", 1)[1]


def test_at_80_columns_the_live_line_keeps_its_speed_and_eta_and_fits() -> None:
    line = live_line_on_a_terminal(80)
    assert len(line) < 80
    assert re.fullmatch(
        r"upload 47% \[1234/2000 files, 3\.07 GiB sent\] \d+\.\d files/s \d+ MiB/s ETA \d+s", line
    ), line


def test_a_narrower_terminal_gives_up_the_bar_files_per_second_and_byte_counts_first() -> None:
    assert re.fullmatch(r"upload 47% \[1234/2000 files\] \d+ MiB/s ETA \d+s", live_line_on_a_terminal(50))
    wide = live_line_on_a_terminal(120)
    assert wide.startswith("[###########-------------] upload 47% [1234/2000 files, ") and len(wide) < 120
