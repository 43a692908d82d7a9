#!/usr/bin/env python3
"""Sync: scan and upload in one process, the nightly job.

The scan and the upload run as a pipeline: each batch of rows the scanner commits (new, changed, or still
pending from an earlier run) is handed to the uploader at once, so uploads start while the walk goes on.
Rows already `success` or `duplicate` are never sent again. One run at a time per database (the lock is
taken by cli.run_script); a second run exits at once with status 0.
"""

from __future__ import annotations

import os
import threading
import time
from array import array
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TextIO

import bytecode_cache  # noqa: F401 - first: lets Python cache the tool's modules (see there)
from cli import Context, ExitStatus, StartError, add_upload_arguments, base_parser, exit_process, run_script
from config import ConfigError, ServerNotConfigured
from db_manager import utc_now
from filters import RunFiles, RunScope
from immich_client import ImmichClient
from logger import get_logger
from organize import server_jobs_paused
from scanner import ScanSummary, add_scan_arguments, scan_status, scanner_for
from scanner import summary_rows as scan_rows
from uploader import (
    Uploader,
    UploadSummary,
    adopt_target,
    chosen_rows,
    connect,
    dry_run,
    exit_status,
    finish_in_immich,
    select,
)
from uploader import summary_rows as upload_rows
from utils import format_duration

log = get_logger("sync")

WATCH_POLL_S = 1.0
WATCH_RETRY_MAX_S = 600.0


def sync_summary(scan: ScanSummary, upload: UploadSummary, elapsed_s: float) -> dict[str, object]:
    """The scan's keys (scan_json), with what the upload adds to them, and the upload's own."""
    return {
        **scan_json(scan),
        "uploaded": upload.uploaded,
        "duplicates": upload.duplicates,
        "recovered": upload.recovered,
        "skipped": scan.skipped + upload.skipped,
        "changing": scan.changing + upload.changing,
        "elsewhere": scan.elsewhere + upload.elsewhere,
        "errors": scan.errors + upload.errors,
        "upload_errors": upload.errors,
        "bytes_uploaded": upload.bytes_uploaded,
        "elapsed_s": round(elapsed_s, 3),
        "stopped_after_errors": upload.stopped_after_errors,
        "server_problem": upload.server_problem,
        "error_kinds": upload.error_kinds,
        "added_to_albums": upload.added_to_albums,
        "stacks_created": upload.stacks_created,
        "tagged": upload.tagged,
        "live_photos": upload.live_photos,
        "replaced": upload.replaced,
        "deleted": upload.deleted,
        "kept": upload.kept,
        "error_files": (scan.error_files + upload.error_files)[:100],
        "problems": (scan.problems + upload.problems)[:100],
    }


def scan_json(scan: ScanSummary) -> dict[str, object]:
    """What a dry run's scan found, under the keys a real run's --json uses for it."""
    return {
        "found": scan.found,
        "new": scan.new,
        "changed": scan.changed,
        "unchanged": scan.unchanged,
        "missing": scan.missing,
        "unavailable_sources": scan.unavailable,
        "skipped": scan.skipped,
        "changing": scan.changing,
        "elsewhere": scan.elsewhere,
        "errors": scan.errors,
        "scan_errors": scan.errors,
        "error_files": scan.error_files[:100],
        "problems": scan.problems[:100],
    }


def dry_scan_rows(scan: ScanSummary, log_file: object) -> list[tuple[str, str]]:
    """A dry run's scan lines: the real run's found, new, changed, unchanged, missing, skipped and errors
    (the scan is real: it records what it found, so the real run after it finds nothing new to say)."""
    rows = [row for row in scan_rows(scan, log_file) if row[0] not in ("hashed", "time")]
    if not scan.skipped:
        at = [label for label, _ in rows].index("missing") + 1
        rows.insert(at, ("skipped", "0"))
    return rows


def sync_rows(scan: ScanSummary, upload: UploadSummary, log_file: object) -> list[tuple[str, str]]:
    """The summary's lines: what the walk found, then what happened to those files, each count the same as
    in --json (a file skipped or failed at the scan counts with the upload's skipped and errors)."""
    both = replace(
        upload,
        skipped=scan.skipped + upload.skipped,
        errors=scan.errors + upload.errors,
        changing=scan.changing + upload.changing,
    )
    found = scan_rows(scan, log_file)[:5]  # found, new, changed, unchanged, missing
    return found + [row for row in upload_rows(both, log_file) if row[0] != "processed"]


def scan_only(ctx: Context, reason: ConfigError) -> ExitStatus:
    """No server configured yet: still scan (so the next run only uploads), then say what is missing."""
    summary = scanner_for(ctx).scan()
    ctx.progress.summary("Scan finished (nothing uploaded)", scan_rows(summary, ctx.settings.log_file))
    if ctx.args.json:
        ctx.emit_json(sync_summary(summary, UploadSummary(), summary.elapsed_s))
    raise reason


def sync_once(ctx: Context) -> ExitStatus:
    """One scan-and-upload pass (of the source folders, or of a Google Photos Takeout); raises StartError
    when the server cannot be used."""
    started_at = utc_now()
    started = time.monotonic()
    scope = RunScope.of(ctx.settings)
    takeout_scanner, takeout_files, takeout_updates = None, None, None
    if ctx.settings.takeout_paths:
        from takeout import TakeoutFiles, TakeoutScanner

        takeout_scanner = TakeoutScanner(ctx.settings, ctx.store, ctx.progress, ctx.stop)
        takeout_files = TakeoutFiles(takeout_scanner.archives, ctx.store, takeout_scanner.refreshed)
    client = ImmichClient(ctx.settings, ctx.stop)
    uploader: Uploader | None = None
    try:
        target_id = adopt_target(client, ctx.store, connect(client))
        uploader = Uploader(
            ctx.settings, ctx.store, client, ctx.progress, ctx.stop, target_id, scope, takeout_files
        )
        run_files = uploader.run_files
        with server_jobs_paused(client, ctx.store, ctx.settings):
            uploader.counts_progress = False
            uploader.start()
            scanner = takeout_scanner or scanner_for(ctx)
            scan = scanner.scan(
                on_upload_ready=lambda keys: uploader.feed_if_room(
                    lambda: ctx.store.pending_uploads(path_hashes=keys)
                ),
                uploads_dry=uploader.running_dry,
            )
            backlog, backlog_bytes = array("q"), 0
            if scope.shared or uploader.overflowed:
                # What the queue had no room for during the scan waits in the database; in a shared
                # library, so do files other machines hashed meanwhile (the workers claim each right
                # before sending, so every machine takes its share).
                backlog, backlog_bytes = chosen_rows(ctx.store, run_files, None, False, uploader.fed_ids)
            uploader.start_progress(len(backlog), backlog_bytes)
            uploader.feed_backlog(backlog)
            upload = uploader.finish()
            ctx.progress.finish()
            upload.stopped_after_errors = uploader.aborted.is_set()
            finish_in_immich(ctx, client, upload, target_id, run_files)
            if takeout_scanner is not None and not (ctx.stop.is_set() or upload.stopped_after_errors):
                takeout_updates = takeout_in_immich(ctx, client, upload, target_id)
    finally:
        if uploader is not None:
            uploader.shutdown()  # before anything its workers use is closed
        client.close()
        if takeout_files is not None:
            takeout_files.close()
    status = exit_status(ctx.stop, uploader, scan.errors + upload.errors)
    if status in (ExitStatus.OK, ExitStatus.FILES_FAILED) and scan.unavailable:
        status = scan_status(ctx.stop, scan)
    summary = sync_summary(scan, upload, time.monotonic() - started)
    takeout_rows: list[tuple[str, str]] = []
    if takeout_scanner is not None:
        from takeout import report

        summary["takeout"], takeout_rows = report(ctx.store, takeout_scanner, takeout_updates)
    ctx.store.record_run("sync", started_at, int(status), summary)
    if ctx.args.json:
        ctx.emit_json(summary)
    rows = sync_rows(scan, upload, ctx.settings.log_file)
    if scan.unavailable:
        rows.append(("not scanned", ", ".join(scan.unavailable) + " (missing or empty: not mounted?)"))
    ctx.progress.summary("Sync finished", rows + takeout_rows)
    return status


def takeout_in_immich(ctx: Context, client: ImmichClient, upload: UploadSummary, target_id: int) -> Any:
    """Google's metadata that arrived for photos Immich had already (a JSON in a later part, a copy's)."""
    from takeout import update_in_immich

    updates = update_in_immich(client, ctx.store, target_id, ctx.stop)
    upload.errors += updates.errors
    upload.error_files += updates.error_files
    upload.problems += updates.problems
    return updates


def takeout_dry_run(ctx: Context) -> ExitStatus:
    """What a Takeout's import would do: one upload per photo (an album's copy and its year folder's are
    one), how each photo's JSON was found, and what would change in Immich."""
    from takeout import TakeoutFiles, TakeoutScanner, report

    started_at = utc_now()
    scanner = TakeoutScanner(ctx.settings, ctx.store, ctx.progress, ctx.stop)
    scan = scanner.scan()
    here = TakeoutFiles(scanner.archives)
    run_files = RunFiles(ctx.settings, takeout_here=here.here)
    rows = select(ctx.store.pending_uploads(), run_files)
    here.close()
    if ctx.stop.is_set():
        return dry_scan_only(ctx, started_at, scan)
    data, takeout_rows = report(ctx.store, scanner, None)
    waiting = ctx.store.takeout_update_count()
    data["would_update_in_immich"] = waiting
    extra = [(label, value) for label, value in takeout_rows if label != "members read"]
    if waiting:
        extra.append(
            ("in Immich", f"{waiting} photos there would get Google's metadata that arrived for them")
        )
    return dry_run_after_scan(ctx, started_at, scan, rows, run_files, extra, {"takeout": data})


def dry_run_after_scan(
    ctx: Context,
    started_at: str,
    scan: ScanSummary,
    rows: list[Any],
    run_files: RunFiles,
    extra_rows: Sequence[tuple[str, str]] = (),
    extra_json: dict[str, object] | None = None,
) -> ExitStatus:
    """A dry run after its scan: what the scan found (its rows are recorded, as a scan's are: the real run
    after it sends them without hashing again), then what the real run would send and delete. Its status
    and its errors are the scan's, recorded as a run of its own (Recent errors lists them)."""
    status = scan_status(ctx.stop, scan)
    found = scan_json(scan)
    try:
        dry_run(
            ctx, rows, run_files, extra_rows, {**found, **(extra_json or {})},
            dry_scan_rows(scan, ctx.settings.log_file),
        )  # fmt: skip
    except StartError:
        ctx.store.record_run("dry run", started_at, int(ExitStatus.CANNOT_START), found)
        raise
    ctx.store.record_run("dry run", started_at, int(status), found)
    return status


def dry_scan_only(ctx: Context, started_at: str, scan: ScanSummary) -> ExitStatus:
    """A dry run stopped during its scan: what the scan found up to then."""
    status = scan_status(ctx.stop, scan)
    found = scan_json(scan)
    ctx.store.record_run("dry run", started_at, int(status), found)
    if ctx.args.json:
        ctx.emit_json({"dry_run": True, **found})
    ctx.progress.summary(
        "Dry run stopped during its scan: nothing was sent, changed or deleted",
        dry_scan_rows(scan, ctx.settings.log_file),
    )
    return status


def run_sync(ctx: Context) -> ExitStatus:
    if ctx.settings.takeout_paths:
        if ctx.args.dry_run:
            return takeout_dry_run(ctx)
        ctx.settings.require_server()
        return sync_once(ctx)
    ctx.settings.require_sources()
    if ctx.args.dry_run:
        # The scan records what it finds (so the real run only uploads); nothing is sent or marked uploaded.
        started_at = utc_now()
        scan = scanner_for(ctx).scan()
        if ctx.stop.is_set():
            return dry_scan_only(ctx, started_at, scan)
        run_files = RunFiles(ctx.settings)
        return dry_run_after_scan(
            ctx, started_at, scan, select(ctx.store.pending_uploads(), run_files), run_files
        )
    try:
        ctx.settings.require_server()
    except ServerNotConfigured as missing:
        return scan_only(ctx, missing)
    if ctx.args.watch:
        return watch(ctx)
    return sync_once(ctx)


def start_observer(ctx: Context, handler: Any) -> Any:
    """inotify where it can; when the system's watch limit is reached, polling (slower, but it works)."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    for kind in (Observer, PollingObserver):
        observer = kind()
        try:
            for folder in ctx.settings.source_dirs:
                observer.schedule(handler, str(folder), recursive=True)
            observer.start()
            return observer
        except OSError as exc:
            log.warning("cannot watch the folders with %s (%s); polling instead", kind.__name__, exc)
    raise StartError("cannot watch the source folders")


def watch(ctx: Context) -> ExitStatus:
    """Sync, then sync again whenever files under the source folders changed and have been quiet for
    WATCH_SETTLE seconds (a camera still copying is waited for). Each pass is the same incremental sync,
    so nothing is missed between events. A server that is away is retried with growing pauses."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    last_change = [time.monotonic()]
    dirty = threading.Event()
    dirty.set()  # the first pass runs at once

    media = ctx.settings.image_extensions | ctx.settings.video_extensions | {"xmp"}

    class Changed(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return
            paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p]
            # Only media, sidecars and folders count: a database or log file kept inside the source
            # folder would otherwise wake the watcher after every pass it makes.
            if event.is_directory or any(p.rsplit(".", 1)[-1].lower() in media for p in paths):
                last_change[0] = time.monotonic()
                dirty.set()

    observer = start_observer(ctx, Changed())
    first_retry_s = max(1.0, ctx.settings.watch_settle_s)
    retry_s = first_retry_s
    status = ExitStatus.OK
    try:
        while not ctx.stop.is_set():
            if not dirty.is_set():
                ctx.stop.wait(WATCH_POLL_S)
                continue
            quiet_s = time.monotonic() - last_change[0]
            if quiet_s < ctx.settings.watch_settle_s:
                ctx.stop.wait(ctx.settings.watch_settle_s - quiet_s)
                continue
            dirty.clear()
            try:
                status = sync_once(ctx)
            except StartError as exc:
                status = ExitStatus.CANNOT_START
                log.warning("%s; trying again in %s", exc, format_duration(retry_s))
            if status in (ExitStatus.CANNOT_START, ExitStatus.TOO_MANY_ERRORS):
                dirty.set()  # what could not be sent is tried again after a pause
                ctx.stop.wait(retry_s)
                retry_s = min(WATCH_RETRY_MAX_S, retry_s * 2)
                continue
            retry_s = first_retry_s
            ctx.progress.message(
                f"watching {', '.join(str(f) for f in ctx.settings.source_dirs)} for changes"
            )
    finally:
        observer.stop()
        observer.join(5)
    return ExitStatus.INTERRUPTED if ctx.stop.is_set() else status


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = base_parser(
        "sync_upload.py",
        "Scan the source folders and upload what Immich does not have yet.",
        paths_help="folders to sync instead of SOURCE_DIR",
    )
    group = parser.add_argument_group("leaving Google Photos")
    group.add_argument(
        "--takeout",
        nargs="+",
        metavar="PATH",
        help="sync a Google Photos Takeout: its zips (read in place) or a folder it was extracted to",
    )
    group.add_argument(
        "--takeout-trashed", action="store_true", help="also send what Google Photos had in its trash"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="scan, ask the server what it has, and list what would be sent (and deleted); send nothing",
    )
    add_upload_arguments(parser)
    add_scan_arguments(parser)
    parser.add_argument(
        "--watch", action="store_true", help="keep running: sync again whenever files change (WATCH_SETTLE)"
    )
    return run_script(parser, run_sync, argv, stdout, stderr)


if __name__ == "__main__":
    exit_process(main())
