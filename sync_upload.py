#!/usr/bin/env python3
"""Sync: scan and upload in one process, the nightly job.

The scan and the upload run as a pipeline: each batch of rows the scanner commits (new, changed, or still
pending from an earlier run) is handed to the uploader at once, so uploads start while the walk goes on.
Rows already `success` or `duplicate` are never sent again. One run at a time per database (the lock is
taken by cli.run_script); a second run exits at once with status 0.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from cli import Context, ExitStatus, add_upload_arguments, base_parser, run_script
from config import ConfigError
from immich_client import ImmichClient
from logger import get_logger
from organize import server_jobs_paused
from progress import errors_row
from scan_files import Scanner, ScanSummary
from scan_files import summary_rows as scan_rows
from upload_files import Uploader, UploadSummary, connect, exit_status, finish_in_immich
from upload_files import summary_rows as upload_rows

log = get_logger("sync")


def sync_summary(scan: ScanSummary, upload: UploadSummary, elapsed_s: float) -> dict[str, object]:
    return {
        "found": scan.found,
        "new": scan.new,
        "changed": scan.changed,
        "unchanged": scan.unchanged,
        "missing": scan.missing,
        "uploaded": upload.uploaded,
        "duplicates": upload.duplicates,
        "skipped": upload.skipped,
        "errors": scan.errors + upload.errors,
        "scan_errors": scan.errors,
        "upload_errors": upload.errors,
        "bytes_uploaded": upload.bytes_uploaded,
        "elapsed_s": round(elapsed_s, 3),
        "stopped_after_errors": upload.stopped_after_errors,
        "added_to_albums": upload.added_to_albums,
        "stacks_created": upload.stacks_created,
        "deleted": upload.deleted,
        "error_files": (scan.error_files + upload.error_files)[:100],
    }


def scan_only(ctx: Context, reason: ConfigError) -> ExitStatus:
    """No server configured yet: still scan (so the next run only uploads), then say what is missing."""
    summary = Scanner(ctx.settings, ctx.store, ctx.progress, ctx.stop).scan()
    ctx.progress.summary("Scan finished (nothing uploaded)", scan_rows(summary, ctx.settings.log_file))
    if ctx.args.json:
        ctx.emit_json(sync_summary(summary, UploadSummary(), summary.elapsed_s))
    raise reason


def run_sync(ctx: Context) -> ExitStatus:
    ctx.settings.require_sources()
    try:
        ctx.settings.require_server()
    except ConfigError as missing:
        return scan_only(ctx, missing)
    started_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    started = time.monotonic()
    client = ImmichClient(ctx.settings, ctx.stop)
    try:
        connect(client)
        uploader = Uploader(ctx.settings, ctx.store, client, ctx.progress, ctx.stop)
        with server_jobs_paused(client, ctx.store, ctx.settings):
            uploader.counts_progress = False
            uploader.start()
            scanner = Scanner(ctx.settings, ctx.store, ctx.progress, ctx.stop)
            scan = scanner.scan(
                on_upload_ready=lambda keys: uploader.feed(ctx.store.pending_uploads(path_hashes=keys))
            )
            remaining = uploader.summary.queued - uploader.summary.uploaded - uploader.summary.errors
            ctx.progress.start("upload", max(0, remaining))
            uploader.counts_progress = True
            upload = uploader.finish()
            ctx.progress.finish()
            upload.stopped_after_errors = uploader.aborted.is_set()
            finish_in_immich(ctx, client, upload)
    finally:
        client.close()
    status = exit_status(ctx.stop, uploader, scan.errors + upload.errors)
    summary = sync_summary(scan, upload, time.monotonic() - started)
    ctx.store.record_run("sync", started_at, int(status), summary)
    if ctx.args.json:
        ctx.emit_json(summary)
    log_file = ctx.settings.log_file
    rows = scan_rows(scan, log_file)[:5] + [r for r in upload_rows(upload, log_file) if r[0] != "errors"]
    rows.insert(-2, errors_row(scan.errors + upload.errors, log_file))
    ctx.progress.summary("Sync finished", rows)
    return status


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = base_parser(
        "sync_upload.py", "Scan the source folders and upload what Immich does not have yet."
    )
    add_upload_arguments(parser)
    return run_script(parser, run_sync, argv, stdout, stderr)


if __name__ == "__main__":
    sys.exit(main())
