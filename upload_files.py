#!/usr/bin/env python3
"""Upload: send every pending row to Immich exactly once, concurrently, newest first.

`Uploader.feed()` takes rows, re-checks each file on disk (a file changed since its scan is re-hashed
first, a vanished one is marked missing), skips what the server would refuse, and asks the server which
SHA-1s it already has: those rows become `duplicate` without a byte sent. The rest go to a queue served by
UPLOAD_CONCURRENCY worker threads; each result is committed the moment it arrives. After
MAX_CONSECUTIVE_ERRORS failed uploads in a row the run stops (exit 3), so an outage cannot turn a whole
library into `error`. Workers are daemon threads: a second Ctrl+C abandons transfers in flight, and their
rows stay `pending` (or are found by the pre-check next time if the server got them after all).
"""

from __future__ import annotations

import fnmatch
import json
import os
import queue
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from typing import TextIO

from cli import Context, ExitStatus, StartError, add_upload_arguments, base_parser, run_script
from config import Settings
from db_manager import DatabaseError, PendingUpload, Store, UploadOutcome, utc_now
from immich_client import (
    ApiKeyRefused,
    ImmichClient,
    ImmichError,
    ServerInfo,
    ServerUnreachable,
    StopRequested,
    UploadRequest,
)
from logger import FILE_EVENT, get_logger
from organize import organize, server_jobs_paused
from progress import ProgressTracker, errors_row, media_detail
from scan_files import FoundFile, describe_file
from utils import format_bytes, format_duration, sidecar_for, text_to_path, to_utc_iso

log = get_logger("upload")

FEED_BATCH = 1000


@dataclass
class UploadSummary:
    queued: int = 0
    uploaded: int = 0
    duplicates: int = 0
    skipped: int = 0
    errors: int = 0
    bytes_uploaded: int = 0
    elapsed_s: float = 0.0
    stopped_after_errors: bool = False
    added_to_albums: int = 0
    stacks_created: int = 0
    deleted: int = 0
    error_files: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        data = asdict(self)
        data["elapsed_s"] = round(self.elapsed_s, 3)
        data["error_files"] = self.error_files[:100]
        return data


def connect(client: ImmichClient) -> ServerInfo:
    """Check server, version and key before anything is sent; failures become one StartError line."""
    try:
        server = client.connect()
    except ApiKeyRefused as exc:
        raise StartError(str(exc)) from None
    except ServerUnreachable as exc:
        raise StartError(
            f"cannot reach Immich: {exc} (check IMMICH_URL, and that the server is running)"
        ) from None
    except (ImmichError, ValueError) as exc:
        raise StartError(
            f"{client.base_url} does not answer like an Immich server ({exc}): check IMMICH_URL"
        ) from None
    log.info("connected to Immich %s as %s", server.version_text, server.user_email)
    return server


def created_at(row: PendingUpload) -> str:
    """fileCreatedAt: the date taken (stored as UTC), else the file's mtime, always with Z (v3 needs a zone)."""
    if row.date_taken:
        moment = datetime.strptime(str(row.date_taken)[:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
        return to_utc_iso(moment)
    return modified_at(row)


def modified_at(row: PendingUpload) -> str:
    try:
        return to_utc_iso(datetime.fromtimestamp((row.mtime_ns or 0) / 1e9, timezone.utc))
    except (OverflowError, OSError, ValueError):  # an mtime far outside what datetime holds
        return "1970-01-01T00:00:00.000Z"


def taken_day(row: PendingUpload) -> date | None:
    """The local calendar day the file was taken (the date as the camera or file name gave it)."""
    if row.metadata_info:
        used = json.loads(row.metadata_info).get("date_used")
        if used:
            return date.fromisoformat(str(used)[:10])
    return date.fromisoformat(str(row.date_taken)[:10]) if row.date_taken else None


def wanted(row: PendingUpload, settings: Settings) -> bool:
    """The --since/--until/--include/--exclude/--only-* filters; rows left out stay pending."""
    if settings.only and row.media_type != settings.only.rstrip("s"):
        return False
    if settings.since or settings.until:
        day = taken_day(row)
        if (
            day is None
            or (settings.since and day < settings.since)
            or (settings.until and day > settings.until)
        ):
            return False
    if settings.include and not any(fnmatch.fnmatch(row.filepath, p) for p in settings.include):
        return False
    return not any(fnmatch.fnmatch(row.filepath, p) for p in settings.exclude)


def select(rows: list[PendingUpload], settings: Settings, limit: int | None = None) -> list[PendingUpload]:
    chosen = [row for row in rows if wanted(row, settings)]
    return chosen if limit is None else chosen[:limit]


class Uploader:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: ImmichClient,
        progress: ProgressTracker,
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self.progress = progress
        self.stop = stop
        self.summary = UploadSummary()
        self.aborted = threading.Event()  # too many consecutive errors
        self._queue: queue.Queue[PendingUpload | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._consecutive_errors = 0
        self._bugs: list[BaseException] = []
        self._queued_sha1s: set[str] = set()
        self._deferred: list[PendingUpload] = []
        self.started = time.monotonic()
        self.counts_progress = True  # sync counts scan progress until its walk is done

    @property
    def halted(self) -> bool:
        return self.stop.is_set() or self.aborted.is_set()

    # -- feeding
    def feed(self, rows: list[PendingUpload]) -> None:
        """Pre-check `rows` and queue those that must be sent. Called from one thread (main)."""
        rows = select(rows, self.settings)
        if self.halted or not rows:
            return
        server = self.client.server
        to_check: list[PendingUpload] = []
        for row in rows:
            if self.halted:
                return
            if server is not None and not server.accepts(row.extension):
                self._record(
                    row, UploadOutcome("skipped", error=f"the server does not accept .{row.extension} files")
                )
                continue
            current = self._recheck(row)
            if current is not None:
                to_check.append(current)
        if not to_check:
            return
        try:
            answers = self.client.bulk_upload_check([(str(r.id), r.sha1 or "") for r in to_check])
        except ImmichError as exc:
            # Not fatal: each upload's checksum header still lets the server spot duplicates.
            log.warning("could not ask the server which files it has (%s); uploading with checksums", exc)
            answers = {}
        duplicates = []
        for row in to_check:
            answer = answers.get(str(row.id))
            if (
                answer is not None
                and not answer.accepted
                and answer.reason == "duplicate"
                and answer.asset_id
            ):
                duplicates.append((row, answer))
            elif row.sha1 and row.sha1 in self._queued_sha1s:
                # Same content as a file already queued: sent after it, so the server's checksum check
                # answers "duplicate" instead of two workers sending the same bytes at once.
                self.summary.queued += 1
                self._deferred.append(row)
            else:
                self.summary.queued += 1
                if row.sha1:
                    self._queued_sha1s.add(row.sha1)
                self._queue.put(row)
        if duplicates:
            self.store.record_duplicates(
                [(r.id, a.asset_id or "", json.dumps({"precheck": a.raw})) for r, a in duplicates]
            )
            for row, answer in duplicates:
                trashed = " (in Immich's trash)" if answer.is_trashed else ""
                self._note("duplicate", row, f"already in Immich{trashed}")

    def _recheck(self, row: PendingUpload) -> PendingUpload | None:
        """The row as it is on disk now: re-hashed if the file changed since its scan, None if it vanished."""
        raw = text_to_path(row.filepath, row.filepath_b64)
        try:
            st = os.stat(raw)
        except FileNotFoundError:
            self.store.set_missing([row.id], missing=True)
            self._note("skipped", row, "file no longer exists")
            return None
        except OSError as exc:
            self._record(row, UploadOutcome("error", error=f"cannot read the file: {exc.strerror}"))
            return None
        if st.st_size == row.file_size and st.st_mtime_ns == row.mtime_ns:
            return row
        log.info("%s changed since it was scanned; hashing it again", row.filepath)
        try:
            scanned = describe_file(
                FoundFile(
                    raw,
                    st.st_size,
                    st.st_mtime_ns,
                    row.extension,
                    row.media_type or self.settings.media_kind(row.extension) or "image",
                ),
                self.settings.hash_chunk_size,
                self.settings.time_zone,
            )
        except OSError as exc:
            self._record(row, UploadOutcome("error", error=f"cannot read the file: {exc}"))
            return None
        self.store.update_fingerprint(row.id, scanned)
        if scanned.upload_status != "pending":
            self._note("error", row, scanned.last_error or "unreadable")
            return None
        refreshed = self.store.pending_uploads(ids=[row.id])
        return refreshed[0] if refreshed else None

    # -- workers
    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.settings.upload_concurrency):
            worker = threading.Thread(target=self._work, name=f"upload-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def finish(self) -> UploadSummary:
        """Wait for the queue to drain (or for a stop), send the deferred same-content files, then stop
        the workers."""
        if self._deferred:
            while self._queue.unfinished_tasks and not self._bugs:
                time.sleep(0.05)  # polling keeps the main thread free for signals
            for row in self._deferred:
                self._queue.put(row)
            self._deferred = []
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            # join with a timeout so the main thread keeps handling signals
            while worker.is_alive():
                worker.join(0.2)
        self.summary.elapsed_s = time.monotonic() - self.started
        if self._bugs:
            raise self._bugs[0]
        return self.summary

    def _work(self) -> None:
        first = True
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                if self.halted:
                    continue  # leave it pending for the next run
                self._work_on(row, first)
                first = False
            finally:
                self._queue.task_done()

    def _work_on(self, row: PendingUpload, first: bool) -> None:
        if not first and self.settings.upload_delay_s:
            time.sleep(self.settings.upload_delay_s)
        try:
            self._upload_one(row)
        except DatabaseError as exc:
            # The row could not be written: stop. If the server got the file, the next run's pre-check
            # finds it and records it as a duplicate, so nothing is sent twice.
            log.error("database failed while recording %s: %s", row.filepath, exc)
            self._bugs.append(exc)
            self.stop.set()
        except BaseException as exc:
            # A bug: loud in the log, and the run ends. The row is not written again: it holds either its
            # committed outcome or its earlier state, both true, and the next run goes on from it.
            log.exception("internal error while uploading %s", row.filepath)
            self._bugs.append(exc)
            self.stop.set()

    def _upload_one(self, row: PendingUpload) -> None:
        raw = text_to_path(row.filepath, row.filepath_b64)
        request = UploadRequest(
            path=raw,
            filename=os.path.basename(row.filepath),
            size_bytes=row.file_size,
            sha1=row.sha1,
            created_at=created_at(row),
            modified_at=modified_at(row),
            device_asset_id=f"{os.path.basename(row.filepath)}-{row.file_size}".replace(" ", ""),
            mtime_ns=row.mtime_ns,
            sidecar_path=sidecar_for(raw),
        )
        try:
            result = self.client.upload(request)
        except StopRequested:
            return  # nothing was decided: the row stays as it was, no attempt counted
        except ImmichError as exc:
            self._failed(row, str(exc), exc.body)
            return
        except OSError as exc:
            self._record(row, UploadOutcome("error", error=f"cannot read the file: {exc.strerror or exc}"))
            return
        with self._lock:
            self._consecutive_errors = 0
        status = "success" if result.status == "created" else "duplicate"
        self._record(row, UploadOutcome(status, asset_id=result.asset_id, api_response=result.body))
        if status == "success":
            self.summary.bytes_uploaded += row.file_size

    def _failed(self, row: PendingUpload, message: str, body: str) -> None:
        self._record(row, UploadOutcome("error", api_response=body or None, error=message))
        with self._lock:
            self._consecutive_errors += 1
            if self._consecutive_errors >= self.settings.max_consecutive_errors and not self.aborted.is_set():
                self.aborted.set()
                log.error(
                    "stopping: %d uploads failed in a row (MAX_CONSECUTIVE_ERRORS); last: %s",
                    self._consecutive_errors,
                    message,
                )

    def _record(self, row: PendingUpload, outcome: UploadOutcome) -> None:
        self.store.record_upload(row.id, outcome, count_attempt=outcome.status != "skipped")
        detail = outcome.error or (media_detail(row.metadata_info) if outcome.status == "success" else "")
        self._note(outcome.status, row, detail)

    def _note(self, status: str, row: PendingUpload, detail: str) -> None:
        with self._lock:
            if status == "success":
                self.summary.uploaded += 1
            elif status == "duplicate":
                self.summary.duplicates += 1
            elif status == "skipped":
                self.summary.skipped += 1
            else:
                self.summary.errors += 1
                self.summary.error_files.append(row.filepath)
        if status == "error":
            log.warning("%s: upload failed: %s", row.filepath, detail, extra=FILE_EVENT)
        else:
            log.info("%s: %s", row.filepath, status)
        self.progress.file_status(status, row.filepath, detail)
        if self.counts_progress:
            self.progress.advance(1, row.file_size if status == "success" else 0)


def summary_rows(summary: UploadSummary, log_file: object) -> list[tuple[str, str]]:
    rate = summary.bytes_uploaded / summary.elapsed_s if summary.elapsed_s else 0.0
    processed = summary.uploaded + summary.duplicates + summary.skipped + summary.errors
    rows = [
        ("processed", str(processed)),
        ("uploaded", str(summary.uploaded)),
        ("duplicates", str(summary.duplicates)),
        ("skipped", str(summary.skipped)),
        errors_row(summary.errors, log_file),
        ("sent", f"{format_bytes(summary.bytes_uploaded)} at {format_bytes(rate)}/s"),
        ("time", format_duration(summary.elapsed_s)),
    ]
    extras = [
        ("added to albums", summary.added_to_albums),
        ("stacks made", summary.stacks_created),
        ("deleted locally", summary.deleted),
    ]
    rows[-2:-2] = [(label, str(count)) for label, count in extras if count]
    return rows


def exit_status(stop: threading.Event, uploader: Uploader, file_errors: int) -> ExitStatus:
    if uploader.aborted.is_set():
        return ExitStatus.TOO_MANY_ERRORS
    if stop.is_set():
        return ExitStatus.INTERRUPTED
    return ExitStatus.FILES_FAILED if file_errors else ExitStatus.OK


def dry_run(ctx: Context, rows: list[PendingUpload]) -> ExitStatus:
    total = sum(r.file_size for r in rows)
    if ctx.args.json:
        ctx.emit_json({"would_upload": len(rows), "bytes": total, "dry_run": True})
    else:
        for row in rows:
            ctx.stdout.write(f"would upload {row.filepath} ({format_bytes(row.file_size)})\n")
    ctx.progress.summary(
        "Dry run: nothing was sent", [("files", str(len(rows))), ("size", format_bytes(total))]
    )
    return ExitStatus.OK


def finish_in_immich(ctx: Context, client: ImmichClient, summary: UploadSummary) -> None:
    """Albums, stacks and deletion once the uploads are recorded (skipped when the run was stopped)."""
    if ctx.stop.is_set() or summary.stopped_after_errors:
        return
    try:
        done = organize(client, ctx.store, ctx.settings, ctx.progress)
    except ImmichError as exc:
        log.error("albums/stacks not updated: %s", exc)
        summary.errors += 1
        return
    summary.added_to_albums, summary.stacks_created, summary.deleted = (
        done.added_to_albums,
        done.stacks_created,
        done.deleted,
    )
    summary.errors += done.errors


def run_upload(ctx: Context) -> ExitStatus:
    rows = select(ctx.store.pending_uploads(), ctx.settings, ctx.args.limit)
    if ctx.args.dry_run:
        return dry_run(ctx, rows)
    ctx.settings.require_server()
    started = utc_now()
    client = ImmichClient(ctx.settings, ctx.stop)
    try:
        connect(client)
        uploader = Uploader(ctx.settings, ctx.store, client, ctx.progress, ctx.stop)
        with server_jobs_paused(client, ctx.store, ctx.settings):
            ctx.progress.start("upload", len(rows), sum(r.file_size for r in rows))
            uploader.start()
            # In slices, so uploads begin while the rest is still being checked with the server.
            for start in range(0, len(rows), FEED_BATCH):
                uploader.feed(rows[start : start + FEED_BATCH])
            summary = uploader.finish()
            ctx.progress.finish()
            summary.stopped_after_errors = uploader.aborted.is_set()
            finish_in_immich(ctx, client, summary)
    finally:
        client.close()
    status = exit_status(ctx.stop, uploader, summary.errors)
    ctx.store.record_run("upload", started, int(status), summary.as_json())
    if ctx.args.json:
        ctx.emit_json(summary.as_json())
    ctx.progress.summary("Upload finished", summary_rows(summary, ctx.settings.log_file))
    return status


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = base_parser(
        "upload_files.py", "Upload pending and failed files to Immich (run scan_files.py first)."
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="upload at most N files")
    add_upload_arguments(parser)
    return run_script(parser, run_upload, argv, stdout, stderr)


if __name__ == "__main__":
    sys.exit(main())
