"""The log: rotation settings, and the guarantee that secrets never reach a log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from logger import (
    LOG_MAX_BYTES,
    ConsoleHandler,
    RunLogHandler,
    close_file,
    get_logger,
    setup_console,
    setup_file,
)
from tests.conftest import API_KEY, Env, Library, run_inprocess
from tests.immich_server import ImmichTestServer

KEY = "SeCrEt-api-key-0123456789"


def test_secrets_are_redacted_in_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    import io

    console = io.StringIO()
    setup_console(console, verbose=True, debug=True)
    log_file = setup_file(tmp_path / "log.txt", "DEBUG", secrets=(KEY,))
    assert log_file is not None
    log = get_logger("test")
    log.info("header x-api-key: " + KEY)
    log.warning("server said %s", {"echo": KEY})
    try:
        raise RuntimeError(f"request failed with key {KEY}")
    except RuntimeError:
        log.exception("boom")
    for handler in logging.getLogger("immich_uploader").handlers:
        handler.flush()
    text = log_file.read_text() + console.getvalue()
    assert "boom" in text and "RuntimeError" in text and "[REDACTED]" in text
    assert KEY not in text


def test_the_log_file_rotates(tmp_path: Path) -> None:
    setup_file(tmp_path / "rot.txt", "INFO")
    handler = next(
        h
        for h in logging.getLogger("immich_uploader").handlers
        if isinstance(h, logging.handlers.RotatingFileHandler)
    )
    assert handler.maxBytes == LOG_MAX_BYTES and handler.backupCount >= 3


def test_a_line_is_built_only_when_a_handler_writes_its_level(tmp_path: Path) -> None:
    import io

    root = logging.getLogger("immich_uploader")
    level_before = root.level
    # pytest attaches its capture handlers (which take every level) to loggers that do not propagate, as
    # the tool's does once a test set it up: set aside here, so the tool's own handlers decide.
    foreign = [h for h in root.handlers if not isinstance(h, ConsoleHandler | RunLogHandler)]
    for handler in foreign:
        root.removeHandler(handler)
    upload = get_logger("upload")
    try:
        setup_console(io.StringIO())
        setup_file(tmp_path / "info.txt", "INFO")
        # One per file sent: no record built (a stack walk, a LogRecord) only to be dropped by every handler.
        assert not upload.isEnabledFor(logging.DEBUG)
        assert upload.isEnabledFor(logging.INFO)
        close_file()  # the console alone (WARNING) is left
        assert not upload.isEnabledFor(logging.INFO)
        assert upload.isEnabledFor(logging.WARNING)
        setup_console(io.StringIO(), verbose=True)  # -v, no log file
        assert upload.isEnabledFor(logging.INFO) and not upload.isEnabledFor(logging.DEBUG)
        setup_file(tmp_path / "debug.txt", "DEBUG")
        upload.debug("kept at LOG_LEVEL=DEBUG")
        for handler in root.handlers:
            handler.flush()
        assert "kept at LOG_LEVEL=DEBUG" in (tmp_path / "debug.txt").read_text()
        setup_console(io.StringIO(), debug=True)  # --debug: the console shows them, whatever the file keeps
        setup_file(tmp_path / "info.txt", "INFO")
        assert upload.isEnabledFor(logging.DEBUG)
    finally:
        close_file()
        for handler in foreign:
            root.addHandler(handler)
        root.setLevel(level_before)


# --- a log that holds a run (issue 24) -------------------------------------------------------------------


def test_the_log_says_where_each_run_starts_and_how_it_ended(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    import re

    import sync_upload
    from config import VERSION

    library.photos(3)
    library.write("broken/empty.jpg", b"")
    argv = ["--env-file", str(server_env.path), "--key", API_KEY, "--album", "Trip"]
    assert run_inprocess(sync_upload.main, *argv).status == 0
    lines = [line.split(" ", 2)[2] for line in server_env.settings().log_file.read_text().splitlines()]
    start, end = lines[0], lines[-1]
    assert start.startswith(f"INFO    immich_uploader.cli: === sync_upload.py {VERSION} started (pid ")
    assert f"); settings file {server_env.path}: " in start
    assert "IMMICH_API_KEY=te****ef (--key)" in start and "ALBUM=Trip (--album)" in start
    assert "RETRY_BACKOFF=0.01 (line 5)" in start
    assert "UPLOAD_DELAY" not in start  # set, but to its default
    assert API_KEY not in "\n".join(lines)
    assert re.match(
        r"INFO    immich_uploader\.cli: === sync_upload\.py ended with status 0 \(done\) after [\d.]+m?s: "
        r"Sync finished: found 4, new 4, .*uploaded 3, .*added to albums 3, sent ",
        end,
    ), end
    # A file sent is a row of the database, not a line of the log; a file that could not go is both.
    assert not [line for line in lines if line.endswith(": success")]
    assert any("empty.jpg: skipped" in line for line in lines)


def test_a_run_that_cannot_start_says_why_in_the_log(env: Env) -> None:
    import upload_files

    env.set(IMMICH_URL="http://127.0.0.1:9", IMMICH_API_KEY=API_KEY, MAX_RETRIES=0)
    assert run_inprocess(upload_files.main, "--env-file", str(env.path)).status == 2
    end = env.settings().log_file.read_text().splitlines()[-1]
    assert " === upload_files.py ended with status 2 (could not start) after " in end
    assert end.endswith("and that the server is running)") and "cannot reach Immich at 127.0.0.1:9" in end


def test_each_file_a_run_rotates_into_starts_with_that_runs_first_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logger

    monkeypatch.setattr(logger, "LOG_MAX_BYTES", 2000)
    setup_file(tmp_path / "log.txt", "DEBUG", secrets=(KEY,))
    log = get_logger("test")
    log.info("=== a run started: IMMICH_API_KEY=%s", KEY)
    logger.set_run_header(f"=== a run started: IMMICH_API_KEY={KEY}")
    for n in range(300):
        log.info("file %d: a line of a long run", n)
    logger.close_file()
    rotated = sorted(tmp_path.glob("log.txt*"))
    assert len(rotated) == 1 + logger.LOG_BACKUPS
    for path in rotated:
        first = path.read_text().splitlines()[0]
        assert first.endswith("=== a run started: IMMICH_API_KEY=[REDACTED]"), path
    assert KEY not in "".join(p.read_text() for p in rotated)


def test_the_first_line_masks_a_password_in_the_server_address(tmp_path: Path) -> None:
    import scan_files

    env = tmp_path / "t.env"
    env.write_text(
        f"IMMICH_URL=http://alice:s3cret-pw@nas:2283\nSOURCE_DIR={tmp_path}\nDB_PATH={tmp_path}/s.db\n"
        f"LOG_FILE={tmp_path}/log.txt\n"
    )
    assert run_inprocess(scan_files.main, "--env-file", str(env)).status == 0
    first = (tmp_path / "log.txt").read_text().splitlines()[0]
    assert "IMMICH_URL=http://alice:****@nas:2283 (line 1)" in first and "s3cret-pw" not in first
