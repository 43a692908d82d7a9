"""The log: rotation settings, and the guarantee that secrets never reach a log line."""

from __future__ import annotations

import logging
from pathlib import Path

from logger import LOG_MAX_BYTES, get_logger, setup_console, setup_file

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
