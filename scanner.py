"""The scan's machinery: folder trees into rows of media_files, fingerprinted and described, incrementally.

The walk (`walk_media`) lists every photo and video under the source folders with os.scandir, skipping
hidden files and NAS junk. `Scanner.scan` compares each file's size and mtime (ns) with its row and opens
only new or changed files: both hashes in one read and the metadata, on a thread pool (hashlib releases the
GIL). Rows are written in batches; files that disappeared are marked missing, never deleted. A broken file
becomes a row with its error and a log line; it never stops the scan.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import stat
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from config import ConfigError, Settings
from db_manager import STATUSES, KnownFile, KnownRow, RunProblem, ScannedFile, Store, path_hash
from filters import DELETING_PREFIX, JUNK, RunScope, is_ignored
from logger import FILE_EVENT, forget_handlers, get_logger
from progress import ProgressTracker, errors_row, media_detail
from utils import (
    METADATA_READER_VERSION,
    FileChangedError,
    SourceRoots,
    content_problem,
    date_from_filename,
    display_path,
    extension_of,
    fingerprint_file,
    format_bytes,
    format_duration,
    is_transport_stream,
    judge_link,
    path_to_text,
    read_metadata,
)

if TYPE_CHECKING:
    from concurrent.futures import Executor, Future

    # Imported where used: the hashing workers import this module, and cli brings the HTTP client with it
    # (a worker process started 0.1 s sooner).
    from cli import Context, ExitStatus

log = get_logger("scan")

# 20,000 small photos: first scan 2.96 s with 5,000 rows a transaction, 3.69 s with 500 (bench_scan.py).
# A large database takes a twentieth of its rows a transaction: each row's entries in the indexes of random
# keys (path, SHA-256, SHA-1) dirty pages all over them, and a page written once for many rows is written
# once. A first scan of 1,000,000 files: 168 s at 5,000 rows (and a checkpoint every 40 MB of WAL), 102 s.
SAVE_EVERY_FILES = 5000
SAVE_EVERY_PART = 20
# A sync saves and hands rows on to the uploads every 500 files, the first time after 64: a real server then
# starts while the scan goes on (1,000 photos of 400 KB, a real Immich v3.1.0 on the same two cores: 0.83x
# against 0.79x of curl's ingest floor over 6 rounds, 0.76x against 0.73x over 9, in turns). The test server,
# which spends more CPU per byte than the hashing, did better with 500 from the start (300 photos of 2-5 MB:
# 0.52x against 0.47x). Handing on the first 8, then twice as many each time, was slower on both.
HANDOFF_FIRST_FILES = 64
HANDOFF_EVERY_FILES = 500
# Sooner when the uploads run dry: rows that wait for the 500th file leave the server idle while they are
# hashed (1,000 photos of 400 KB on the test server: the uploads stood still for a third of a second after
# the first 64). No fewer than this many, so a slow disk does not make a bulk check a file.
HANDOFF_DRY_MIN_FILES = 64
STILL_CHANGING = "still being written (it changed while it was read): read again on the next run"
MAX_PROBLEMS = 100  # problems kept for the summary and Recent errors; the log has every one
CLAIM_BATCH = 64
SAVE_EVERY_S = 2.0
HAND_ON_POLL_S = 0.1  # while the scan waits for a file's hash, written rows are handed on this often


class FoundFile(NamedTuple):
    raw_path: bytes  # where the file is on this machine
    size_bytes: int
    mtime_ns: int
    extension: str
    media_type: str
    stored_path: bytes = b""  # its path as its row stores it, when that differs (filters.RunScope)

    @property
    def key_path(self) -> bytes:
        return self.stored_path or self.raw_path


@dataclass
class ScanSummary:
    found: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    skipped: int = 0
    changing: int = 0  # still being written: read again on the next run
    elsewhere: int = 0  # a shared library's files another machine was hashing
    reread: int = 0  # unchanged files whose metadata an older reader had read: read again, not hashed
    errors: int = 0
    unavailable: list[str] = field(default_factory=list)  # source folders missing or empty (not mounted?)
    passed_over: list[str] = field(default_factory=list)  # folders not walked that are no error (loops...)
    problems: list[RunProblem] = field(default_factory=list)  # the errors that are no failed row, with why
    bytes_hashed: int = 0
    elapsed_s: float = 0.0
    error_files: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        from cli import summary_json

        return summary_json(self)


# Immich marks each of its storage folders (library/, upload/, thumbs/, encoded-video/, profile/, backups/)
# with this file: what lies below is Immich's own copy of the library, never a source.
IMMICH_MARKER = b".immich"


class Walk:
    """Every media file under the source folders (or `roots`), and what the walk could not see.

    Real folders are walked first; folders reached through a symbolic link are walked after them, in sorted
    order, each once: a link to a folder already walked (a loop, or a second way in) is noted and passed over,
    so a file's path is the same from run to run. A link is followed only to a target inside a source folder or
    owned by the link's owner (anyone who can write to a shared folder could otherwise point a link at another
    user's files, or the system's). A folder that cannot be listed, a link whose target is gone (a disk not
    mounted) or refused: its known rows are not marked missing (`unlistable`). A folder holding Immich's own
    `.immich` marker is Immich's storage and is passed over. Source files named on their own are taken as a
    folder of one. In a shared library each file carries its path below the mount point too."""

    def __init__(
        self,
        settings: Settings,
        on_problem: Callable[[bytes, str, str], None],
        scope: RunScope | None = None,
    ) -> None:
        self.settings = settings
        self.on_problem = on_problem
        self.scope = scope
        self.unlistable: list[bytes] = []  # folders (or links to them) whose rows must not be marked missing
        self.passed_over: list[
            str
        ] = []  # why folders were not walked that are no error (loops, Immich's storage)
        self.roots = SourceRoots.of(settings.source_dirs)  # the link rule's idea of the sources
        self._visited: set[tuple[int, int]] = set()
        self._deferred: list[tuple[bytes, int]] = []  # (symlinked folder, length of its root's path)

    def files(self, roots: Sequence[Path] | None = None) -> Iterator[FoundFile]:
        refused = dict(self.roots.refused)
        for root in self.settings.source_dirs if roots is None else roots:
            top = os.fsencode(root)
            refusal = refused.get(os.path.abspath(top))
            if refusal is not None:  # a link on its own path leads where the link rule forbids
                self._unlistable(top, refusal, "make the link as root, or name the folder it leads to")
                continue
            try:
                st = os.stat(top)
            except OSError as exc:
                self._unlistable(
                    top, f"cannot list folder: {exc.strerror}", "check the folder is there and readable"
                )
                continue
            if stat.S_ISREG(st.st_mode):
                found = self._file(top, st, len(os.path.dirname(top)))
                if found is not None:
                    yield found
                continue
            yield from self._tree(top, len(top.rstrip(b"/")))
        while self._deferred:
            batch, self._deferred = sorted(self._deferred), []
            for link, root_len in batch:
                yield from self._linked_folder(link, root_len)

    def _linked_folder(self, link: bytes, root_len: int) -> Iterator[FoundFile]:
        try:
            st = os.stat(link)
        except OSError as exc:
            reason = (
                "its target is gone (a disk that is not mounted?)"
                if exc.errno == errno.ENOENT
                else exc.strerror
            )
            self._unlistable(
                link,
                f"symbolic link to a folder not followed: {reason}",
                "mount the disk, or remove the link",
            )
            return
        if (st.st_dev, st.st_ino) in self._visited:
            note = f"{display_path(link)}: symbolic link to a folder already walked (a loop, or a second way in): passed over"
            self.passed_over.append(note)
            log.info("%s", note)
            return
        verdict = judge_link(link, self.roots)
        if verdict.refusal is not None:
            self._unlistable(
                link,
                verdict.refusal,
                "copy the files into the source folder, or have root (or this tool's user) make the link",
            )
            return
        yield from self._tree(link, root_len, verdict.owner)

    def _unlistable(self, folder: bytes, reason: str, advice: str) -> None:
        self.unlistable.append(folder.rstrip(b"/"))
        self.on_problem(folder, reason, advice)

    def _tree(self, top: bytes, root_len: int, owner: int | None = None) -> Iterator[FoundFile]:
        """The media files below `top`; with `owner` (reached through another user's link out of the
        sources), only what that user owns: the tool reads as root what they could not."""
        settings = self.settings
        junk = JUNK
        ignore = tuple(os.fsencode(p) for p in settings.ignore_patterns)
        include_hidden = settings.include_hidden
        stack = [top]
        while stack:
            folder = stack.pop()
            try:
                st = os.stat(folder)
                with os.scandir(folder) as entries:
                    items = list(entries)
            except OSError as exc:
                self._unlistable(
                    folder, f"cannot list folder: {exc.strerror}", "check its permissions (or the disk)"
                )
                continue
            self._visited.add((st.st_dev, st.st_ino))
            if any(entry.name == IMMICH_MARKER for entry in items):
                note = (
                    f"{display_path(folder)}: Immich's own storage (it holds a .immich marker): not scanned"
                )
                self.passed_over.append(note)
                log.warning("%s", note)
                continue
            for entry in items:
                name = entry.name
                if not include_hidden:
                    if name.startswith(b".") or junk.match(name):
                        continue
                elif name.startswith(DELETING_PREFIX):
                    continue  # a file being deleted (organize.remove_checked), hidden or not

                if ignore and is_ignored(entry.path[root_len:], name, ignore):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if owner is None or self._owned(entry, owner):
                            stack.append(entry.path)
                        continue
                    link = entry.is_symlink()
                    if link and entry.is_dir(follow_symlinks=True):
                        self._deferred.append((entry.path, root_len))
                        continue
                    dot = name.rfind(b".")
                    if dot <= 0:
                        if link and not os.path.exists(entry.path):
                            # A dangling link without an extension: a folder on a disk not mounted tonight,
                            # most likely; what was recorded below it is unknown, not missing.
                            self._deferred.append((entry.path, root_len))
                        continue
                    extension = name[dot + 1 :].decode("ascii", "replace").lower()
                    media_type = settings.media_kind(extension)
                    if media_type is None:
                        continue
                    file_st = entry.stat(follow_symlinks=True)
                except FileNotFoundError:
                    if entry.is_symlink():
                        self.on_problem(
                            entry.path, "dangling symbolic link: its target is gone", "remove the link"
                        )
                    else:
                        self.on_problem(entry.path, "vanished during the scan", "")
                    continue
                except OSError as exc:
                    self.on_problem(entry.path, f"cannot read: {exc.strerror}", "check its permissions")
                    continue
                if link:
                    refusal = judge_link(entry.path, self.roots).refusal
                    if refusal is not None:
                        self.on_problem(entry.path, refusal, "copy the file in instead of linking it")
                        continue
                elif owner is not None and not self._owned(entry, owner):
                    continue
                if not stat.S_ISREG(file_st.st_mode):
                    log.debug(
                        "not a regular file: %s", display_path(entry.path)
                    )  # a FIFO would block the read
                    continue
                yield self._found(entry.path, file_st, extension, media_type)

    def _owned(self, entry: os.DirEntry[bytes], owner: int) -> bool:
        if entry.stat(follow_symlinks=False).st_uid == owner:
            return True
        self.on_problem(
            entry.path,
            "not owned by the owner of the symbolic link that leads here: not read",
            "have root (or this tool's user) make the link, or copy the files in",
        )
        return False

    def _file(self, path: bytes, st: os.stat_result, root_len: int) -> FoundFile | None:
        """A source named as a file: taken if it is a photo or video."""
        extension = extension_of(path)
        media_type = self.settings.media_kind(extension)
        if media_type is None:
            self.passed_over.append(
                f"{display_path(path)}: not a photo or video this tool sends: passed over"
            )
            return None
        return self._found(path, st, extension, media_type)

    def _found(self, path: bytes, st: os.stat_result, extension: str, media_type: str) -> FoundFile:
        shared = self.scope is not None and self.scope.shared
        stored = self.scope.stored(path) if shared else b""  # type: ignore[union-attr]
        return FoundFile(path, st.st_size, st.st_mtime_ns, extension, media_type, stored)


def walk_media(
    settings: Settings,
    on_problem: Callable[[bytes, str], None],
    roots: Sequence[Path] | None = None,
    scope: RunScope | None = None,
) -> Iterator[FoundFile]:
    """Every media file under the source folders (or `roots`): see Walk."""
    walk = Walk(settings, lambda path, reason, _advice: on_problem(path, reason), scope)
    return walk.files(roots)


def bare_row(found: FoundFile) -> ScannedFile:
    """The row of a found file before anything is read from it (its path as the row stores it)."""
    text, b64 = path_to_text(found.key_path)
    directory, _, filename = text.rpartition("/")
    return ScannedFile(
        raw_path=found.key_path,
        filepath=text,
        filepath_b64=b64,
        filename=filename,
        directory=directory,
        extension=found.extension,
        media_type=found.media_type,
        file_size=found.size_bytes,
        mtime_ns=found.mtime_ns,
    )


def describe_file(found: FoundFile, chunk_size: int, time_zone: tzinfo | None = None) -> ScannedFile:
    """Fingerprint and read metadata. OSErrors propagate; content problems end up in the row."""
    row = bare_row(found)
    filename = row.filename
    if found.size_bytes == 0:
        # Nothing to send (Immich refuses it) and nothing to retry: recorded as passed over, with why.
        row.upload_status, row.last_error = "skipped", "empty file (0 bytes): nothing to upload"
        return row
    if found.extension == "ts" and not is_transport_stream(found.raw_path):
        row.upload_status, row.last_error = (
            "skipped",
            "not a video (no MPEG transport stream: a TypeScript file?)",
        )
        return row
    # One read: a file seen changing (during the read, or since the walk saw it) is still being written (a
    # camera's video copying in, a download) and is read again on the next run, never sent half-written.
    fp = fingerprint_file(found.raw_path, chunk_size, keep_head=True, attempts=1)
    if (fp.size_bytes, fp.mtime_ns) != (found.size_bytes, found.mtime_ns):
        raise FileChangedError(errno.EAGAIN, STILL_CHANGING, found.raw_path)
    row.hash, row.sha1, row.file_size, row.mtime_ns = fp.sha256, fp.sha1, fp.size_bytes, fp.mtime_ns
    problem = content_problem(found.extension, fp.head)
    if problem is not None:
        row.upload_status, row.last_error = "skipped", f"{problem}: not sent"
        return row
    described = describe_metadata(
        found.raw_path, found.media_type, fp.head, fp.size_bytes, filename, fp.mtime_ns, time_zone
    )
    row.date_taken, row.date_source, row.metadata_info = (
        described.date_taken,
        described.date_source,
        described.info,
    )
    if described.warnings:
        row.warnings = described.warnings  # logged by the scanner (this may run in a worker)
    return row


class DescribedMetadata(NamedTuple):
    date_taken: str | None  # UTC, "YYYY-MM-DD HH:MM:SS"
    date_source: str | None
    info: str  # metadata_info's JSON
    warnings: list[str]


def describe_metadata(
    raw_path: bytes,
    media_type: str,
    head: bytes,
    size_bytes: int,
    filename: str,
    mtime_ns: int,
    time_zone: tzinfo | None,
) -> DescribedMetadata:
    """A file's row fields from its content: the date used (and where it came from) and metadata_info, which
    records the reader's version (utils.METADATA_READER_VERSION)."""
    meta = read_metadata(raw_path, media_type, head, size_bytes)
    info = dict(meta.info)
    info["reader"] = METADATA_READER_VERSION
    found_date = date_taken(
        meta.date_taken, meta.date_source, filename, mtime_ns, time_zone, meta.warnings, modified_date(info)
    )
    taken_utc = source = None
    if found_date is not None:
        taken, source = found_date
        taken_utc = taken.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "seconds")
        info["date_used"] = taken.isoformat()
        info["date_source"] = source
    if meta.warnings:
        info["warnings"] = meta.warnings
    return DescribedMetadata(taken_utc, source, _encode_info(info), meta.warnings)


# One encoder for every row: json.dumps with options builds a new one per call (a tenth of the describe cost).
_encode_info = json.JSONEncoder(default=str, ensure_ascii=False).encode

# The name's date, read only when the file's own date is not usable (a regex a file).
_FROM_FILE_NAME = object()
PLAUSIBLE_YEARS = range(1826, 2201)  # from the first photograph; a camera clock can be set far ahead


def date_taken(
    exif_or_video: datetime | None,
    source: str,
    filename: str,
    mtime_ns: int,
    time_zone: tzinfo | None,
    warnings: list[str],
    modified: datetime | None = None,
) -> tuple[datetime, str] | None:
    """The first usable date: the file's own capture date, then its name, then the EXIF ModifyDate
    (`modified`; Immich reads no capture date from it, so it is sent as fileCreatedAt), then its mtime. A date
    out of range (year 9999 with an offset, a clock reset to 1904) is passed over with a warning, never a crash.
    A name's or ModifyDate's date later than the mtime gives way to the mtime: Immich, finding no capture date,
    shows the earlier of the fileCreatedAt sent and the file's mtime."""
    candidates: tuple[tuple[datetime | int | object | None, str], ...] = (
        (exif_or_video, source),
        (_FROM_FILE_NAME, "filename"),
        (modified, "exif-modified"),
        (mtime_ns, "mtime"),
    )
    for value, origin in candidates:
        if value is _FROM_FILE_NAME:
            value = date_from_filename(filename)
        if value is None:
            continue
        try:
            if isinstance(value, datetime):
                moment = with_zone(value, time_zone)
            else:
                moment = datetime.fromtimestamp(value / 1e9, timezone.utc)
            if origin in ("filename", "exif-modified") and moment.timestamp() > mtime_ns / 1e9:
                continue
            if moment.astimezone(timezone.utc).year in PLAUSIBLE_YEARS:
                return moment, origin
        except (OverflowError, OSError, ValueError):
            pass
        warnings.append(f"{origin} date {value} is out of range; not used")
    return None


def modified_date(info: dict[str, object]) -> datetime | None:
    """The EXIF ModifyDate the reader kept (a naive wall clock), or None."""
    text = info.get("modify_date")
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def with_zone(moment: datetime, time_zone: tzinfo | None) -> datetime:
    """A naive date (EXIF without an offset, a file name) is the camera's wall-clock time: in TIME_ZONE
    when set, else in this machine's zone, the best guess left."""
    if moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=time_zone) if time_zone is not None else moment.astimezone()


class _SaveBatch:
    """Rows waiting to be written: saved every SAVE_EVERY_FILES files or SAVE_EVERY_S seconds, one
    transaction each (a sync's after HANDOFF_FIRST_FILES, then every HANDOFF_EVERY_FILES, or sooner when
    `uploads_dry` says the uploads are running out of rows); after each save
    the rows that need uploading are handed on. With `in_background`, each transaction runs on a writer
    thread while the scan goes on (a write of 5,000 rows took a tenth of a second, in which the hashing
    workers ran dry), one at a time and in order; the rows are handed on from the scan's own thread once
    their write is done."""

    def __init__(
        self,
        store: Store,
        on_upload_ready: Callable[[list[str]], None] | None,
        in_background: bool = False,
        rows_before: int = 0,
        uploads_dry: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.on_upload_ready = on_upload_ready
        self.uploads_dry = uploads_dry  # whether the uploads are about to run out of rows
        self.in_background = in_background
        self.new: list[ScannedFile] = []
        self.changed: list[tuple[int, ScannedFile]] = []
        self.reappeared: list[int] = []
        self.ready: list[str] = []
        self.files = 0  # files waiting: each row to write, each unchanged file to hand on
        self.last_save = time.monotonic()
        self.rows = rows_before  # rows of the database (known before, or written since): see SAVE_EVERY_PART
        self.due = self._next_due(first=True)
        self._writer: Executor | None = None
        self._writing: tuple[Future[None], list[str]] | None = None  # the write under way, its rows' keys

    def unchanged(self, known: KnownIndex, i: int, digest: bytes) -> None:
        """An unchanged file: nothing to write, unless its row was marked missing, or waits for an upload
        that this run makes (a scan alone hands nothing on: a million pending rows cost it nothing)."""
        flags = known.flags[i]
        missing = flags & KnownIndex.MISSING
        waiting = self.on_upload_ready is not None and known.waits_for_upload[flags]
        if not (missing or waiting):
            return
        if missing:
            self.reappeared.append(known.ids[i])
        if waiting:
            self.ready.append(digest.hex())
        self.files += 1
        self.save_if_due()

    def add(self, row_id: int | None, scanned: ScannedFile) -> None:
        if row_id is None:
            self.new.append(scanned)
        else:
            self.changed.append((row_id, scanned))
        if scanned.upload_status == "pending" and self.on_upload_ready is not None:
            self.ready.append(path_hash(scanned.raw_path))
        self.files += 1

    def hand_on_written(self) -> None:
        """Hand on the rows of a write that is done (none waits for one under way)."""
        if self._writing is not None and self._writing[0].done():
            self._settle()

    def save_if_due(self) -> None:
        self.hand_on_written()
        if self._due():
            self.save()

    def _due(self) -> bool:
        """Whether what waits is to be saved now: by count, by time, or for uploads running out of rows (if
        a save now costs the scan no wait for one under way)."""
        waiting = self.files
        if waiting >= self.due or (waiting and time.monotonic() - self.last_save > SAVE_EVERY_S):
            return True
        dry = self.uploads_dry
        return waiting >= HANDOFF_DRY_MIN_FILES and dry is not None and self._writing is None and dry()

    def save(self, then_checkpoint: bool = False) -> None:
        """Write what waits (`then_checkpoint`: and then start copying the database's WAL into its file)."""
        new, changed, reappeared, ready = self.new, self.changed, self.reappeared, self.ready
        self.new, self.changed, self.reappeared, self.ready = [], [], [], []
        self.files = 0
        self.last_save = time.monotonic()
        self.rows += len(new)
        self.due = self._next_due()
        if not self.in_background:
            self._write(new, changed, reappeared, then_checkpoint)
            self._hand_on(ready)
            return
        self._settle()  # one write at a time: rows reach the database in the order they were found
        if self._writer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scan-writer")
        self._writing = (self._writer.submit(self._write, new, changed, reappeared, then_checkpoint), ready)

    def _next_due(self, first: bool = False) -> int:
        """Files to wait for before the next save: a scan's share of the database, a sync's hand-on (the
        first one early, never later than the others)."""
        if self.on_upload_ready is None:
            return max(SAVE_EVERY_FILES, self.rows // SAVE_EVERY_PART)
        return min(HANDOFF_FIRST_FILES, HANDOFF_EVERY_FILES) if first else HANDOFF_EVERY_FILES

    def finish(self) -> None:
        """Save what waits and wait for every write; a write's error is raised here."""
        self.save()
        self._settle()

    def close(self) -> None:
        """Stop the writer thread after its last write (also when the scan failed: that write's own error,
        if any, is logged, as the scan's is what goes on)."""
        if self._writing is not None:
            try:
                self._writing[0].result()
            except Exception as exc:  # the scan is ending with an error of its own (raised after this)
                log.error("saving the last rows of the scan failed too: %s", exc)
            self._writing = None
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def _settle(self) -> None:
        """Wait for the write under way, if any; then hand its rows on (from this thread: the uploader's
        feed is called from one thread only)."""
        if self._writing is None:
            return
        future, ready = self._writing
        self._writing = None
        future.result()
        self._hand_on(ready)

    def _write(
        self,
        new: list[ScannedFile],
        changed: list[tuple[int, ScannedFile]],
        reappeared: list[int],
        then_checkpoint: bool = False,
    ) -> None:
        if new or changed:
            self.store.save_scanned(new, changed)
        if reappeared:
            self.store.set_missing(reappeared, missing=False)
        if then_checkpoint:
            self.store.checkpoint_in_background()

    def _hand_on(self, ready: list[str]) -> None:
        if ready and self.on_upload_ready:
            self.on_upload_ready(ready)


class KnownIndex:
    """Every row of the database in compact form, for a rescan to compare against: a dict from each path's
    SHA-256 digest to its place, ids, sizes and mtimes in parallel arrays, status and flags in bytes. A
    million rows take about 170 MB (a dict of row objects took over 400 MB). A lookup is one dict probe:
    the binary search over sorted 64-bit keys it replaced took 1.4 µs, a tenth of a million-file rescan,
    and needed the rows in path-hash order, which SQLite reads through the index, one table lookup per
    row (4.2 s against 1.2 s in table order for a million rows)."""

    FINGERPRINTED, MISSING = 0x10, 0x20
    STATUS_CODES: ClassVar[dict[str, int]] = {status: code for code, status in enumerate(STATUSES)}

    def __init__(self, rows: Iterable[KnownRow]) -> None:
        self.ids, self.sizes, self.mtimes = array("q"), array("q"), array("q")
        self.flags = bytearray()
        self.positions: dict[bytes, int] = {}
        codes, fingerprinted_flag, missing_flag = self.STATUS_CODES, self.FINGERPRINTED, self.MISSING
        ids, sizes, mtimes, flags, positions = self.ids, self.sizes, self.mtimes, self.flags, self.positions
        from_hex = bytes.fromhex
        for i, (full, row_id, size, mtime, status, fingerprinted, missing) in enumerate(rows):
            positions[from_hex(full)] = i
            ids.append(row_id)
            sizes.append(-1 if size is None else size)
            mtimes.append(-1 if mtime is None else mtime)
            flags.append(
                codes.get(status, 0)
                | (fingerprinted_flag if fingerprinted else 0)
                | (missing_flag if missing else 0)
            )
        self.seen = bytearray(len(ids))
        # By flags byte: whether the row waits for an upload, so the common case costs one table lookup.
        waiting = {codes["pending"], codes["error"]}
        self.waits_for_upload = bytes(1 if f & 0x0F in waiting else 0 for f in range(256))

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, full: str) -> int | None:
        """The index of the row with this path hash (hex), or None."""
        return self.positions.get(bytes.fromhex(full))

    def find_digest(self, digest: bytes) -> int | None:
        """find() for a path hash as its SHA-256 digest (no hex text made for the common case)."""
        return self.positions.get(digest)

    def row(self, i: int) -> KnownFile:
        flags = self.flags[i]
        return KnownFile(
            self.ids[i],
            None if self.sizes[i] < 0 else self.sizes[i],
            None if self.mtimes[i] < 0 else self.mtimes[i],
            STATUSES[flags & 0x0F],
            bool(flags & self.FINGERPRINTED),
            bool(flags & self.MISSING),
        )

    def unchanged(self, i: int, size_bytes: int, mtime_ns: int) -> bool:
        """Same size and mtime as recorded, and settled: fingerprinted, or passed over for good (an empty
        file, a .ts that is no video). An unreadable one is tried again each scan."""
        flags = self.flags[i]
        settled = (
            flags & self.FINGERPRINTED or size_bytes == 0 or flags & 0x0F == self.STATUS_CODES["skipped"]
        )
        return self.sizes[i] == size_bytes and self.mtimes[i] == mtime_ns and bool(settled)

    def unseen_ids(self) -> list[int]:
        """Rows not seen in this scan and not already marked missing."""
        seen, flags, ids, missing = self.seen, self.flags, self.ids, self.MISSING
        return [ids[i] for i in range(len(ids)) if not seen[i] and not flags[i] & missing]


class Work(NamedTuple):
    """Where a described file goes: its place in the KnownIndex (None: not known before this scan) and
    the row it is written to (None: a new row; a shared library's new file already has its claimed one)."""

    index: int | None
    row_id: int | None


Job = tuple[list[tuple[FoundFile, Work]], "Future[list[ScannedFile | OSError]]"]


def describe_many(
    found: list[FoundFile], chunk_size: int, time_zone: tzinfo | None
) -> list[ScannedFile | OSError]:
    """describe_file for a batch (one round trip to a worker process for many small files); a file that
    cannot be read comes back as its OSError, in its place."""
    described: list[ScannedFile | OSError] = []
    for item in found:
        try:
            described.append(describe_file(item, chunk_size, time_zone))
        except OSError as exc:
            described.append(exc)
    return described


class Describer:
    """Fingerprints and reads metadata off the main thread. Files go one by one to a thread pool first
    (hashing releases the GIL, and the first uploads of a sync start at once). Once DECIDE_AFTER files
    were queued, their mean size decides: large files (PROCESS_BELOW bytes or more on average) stay on
    threads, whose hashing runs on every core without a worker process to start; small ones, whose time
    goes to parsing metadata in pure Python (one core per process), go in batches to a pool of
    HASH_WORKERS processes, started on a thread beside the walk (the files go on to the threads until it
    is up). Those processes come from a fork server, not by forking this process: upload threads may be
    running beside the scan, and a fork could copy a lock one of them holds.

    Where this process runs no other thread (a scan alone, on Linux), forking is safe, and the fork server's
    start is saved: a new interpreter and its imports, while the walk's first files were hashed on threads
    (20,000 small photos: 1.32 s against 1.46 s, 2.15 s of CPU against 2.38 s). The first small files then
    wait, unread, for the decision, before any thread starts; DECIDE_AFTER small ones fork the workers. A
    large file among them ends the wait (threads)."""

    DECIDE_AFTER = 16
    # 600 photos of 2-5 MB, scan alone, median of 3: threads 2.50 s, 3.34 s of CPU; processes 2.67 s, 3.60 s
    PROCESS_BELOW = 256 << 10
    BATCH_FILES = 128  # 20,000 small photos: 2.8 s in batches of 32, 2.3 s of 64 or 128 (fewer round trips)
    BATCH_BYTES = 32 << 20

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = settings.hash_workers
        self.submitted = 0
        self.submitted_bytes = 0
        self._threads: Executor | None = None
        self._processes: Executor | None = None
        self._starting: threading.Thread | None = None
        self._started: list[Executor] = []  # the process pool, once its starting thread has it up
        self._batch: list[tuple[FoundFile, Work]] = []
        self._batch_bytes = 0
        self._waiting_to_fork = self.workers > 1 and may_fork_workers()

    def add(self, found: FoundFile, work: Work) -> Job | None:
        """Queue a file; returns a job when a batch was sent off."""
        self.submitted += 1
        self.submitted_bytes += found.size_bytes
        if self._waiting_to_fork:
            self._batch.append((found, work))
            self._batch_bytes += found.size_bytes
            small = found.size_bytes < self.PROCESS_BELOW
            if small and len(self._batch) < self.DECIDE_AFTER:
                return None
            self._waiting_to_fork = False
            if small and may_fork_workers():
                self._fork_processes()
            return self.flush()  # to the workers, or (a large file, or a thread started meanwhile) threads
        pool = self._pool()
        if pool is not self._processes:
            return self._submit(pool, [(found, work)])
        self._batch.append((found, work))
        self._batch_bytes += found.size_bytes
        if len(self._batch) >= self.BATCH_FILES or self._batch_bytes >= self.BATCH_BYTES:
            return self.flush()
        return None

    def read_ahead(self) -> int:
        """How many files the walk may run ahead of the results: a bound keeps memory flat, and a stop
        waits for the files in flight. Two batches a worker; eight on worker processes, whose files are
        small: the walk then ends sooner, and more of the write at its end is done while files are
        described (a stop waits 2,048 small files on two workers, about 60 ms)."""
        return max(64, self.workers * (8 if self._processes is not None else 2) * self.BATCH_FILES)

    def flush(self) -> Job | None:
        if not self._batch:
            return None
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        return self._submit(self._pool(), batch)

    def _submit(self, pool: Executor, batch: list[tuple[FoundFile, Work]]) -> Job:
        settings = self.settings
        future = pool.submit(
            describe_many, [found for found, _ in batch], settings.hash_chunk_size, settings.time_zone
        )
        return batch, future

    def _pool(self) -> Executor:
        if self._processes is not None:
            return self._processes
        if self._started:
            self._processes = self._started[0]
            return self._processes
        if (
            self._starting is None
            and self.submitted >= self.DECIDE_AFTER
            and self.workers > 1
            and self.submitted_bytes < self.PROCESS_BELOW * self.submitted
        ):
            self._starting = threading.Thread(target=self._start_processes, name="hash-pool", daemon=True)
            self._starting.start()
        if self._threads is None:
            from concurrent.futures import ThreadPoolExecutor  # an unchanged rescan never needs it

            self._threads = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="hash")
        return self._threads

    def _fork_processes(self) -> None:
        try:
            self._processes = start_process_pool(self.workers, fork=True)
        except (OSError, ValueError, RuntimeError) as exc:
            log.info("cannot fork worker processes (%s): the fork server starts them", exc)

    def _start_processes(self) -> None:
        """Start the process pool and each of its workers (off the walk's thread); on failure, threads only."""
        try:
            pool = start_process_pool(self.workers)
            # A pool starts a worker per submit while none is idle: these make them all, and wait for them.
            for ready in [pool.submit(_worker_ready) for _ in range(self.workers)]:
                ready.result()
        except (OSError, ValueError, ImportError, RuntimeError) as exc:
            log.info("scanning on threads only: cannot start worker processes (%s)", exc)
            return
        self._started.append(pool)

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
        for pool in {self._threads, self._processes, *self._started}:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def may_fork_workers() -> bool:
    """Whether worker processes may be forked from this one: on Linux, and while it runs no other thread
    (a fork copies the locks other threads hold, held forever in the copy)."""
    return sys.platform == "linux" and threading.active_count() == 1


def start_process_pool(workers: int, fork: bool = False) -> Executor:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if fork:
        import gc

        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_start,
            initargs=(os.getpid(), True),
        )
        # A forked pool forks all its workers at its first task. This process's objects, frozen meanwhile,
        # are left out of the workers' garbage collections, which would copy the pages they lie on. A worker
        # that could not be forked, or died starting, ends the pool here (the caller goes on with threads).
        try:
            gc.freeze()
            try:
                ready = [pool.submit(_worker_ready) for _ in range(workers)]
            finally:
                gc.unfreeze()
            for future in ready:
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        return pool
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver" and _found_from_current_folder():
        context.set_forkserver_preload(["scanner"])
    main = sys.modules.get("__main__")
    if main is not None and getattr(main, "__spec__", None) is None:
        # Else each worker runs the script again, as __mp_main__: its top-level code and every import it
        # makes beyond scanner (the uploader, the client: 10 ms of CPU a worker). A main module whose spec
        # is named __main__ is left alone.
        from importlib.machinery import ModuleSpec

        main.__spec__ = ModuleSpec("__main__", None)
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_worker_start, initargs=(os.getpid(), False)
    )


def _found_from_current_folder() -> bool:
    """Whether `import scanner` in the fork server finds this module. Python 3.11's fork server searches the
    current folder, not this process's path: run from elsewhere its preload finds nothing (each worker then
    imports the scanner itself), or, from another copy of the tool, that copy's scanner, which the workers
    would then run (they died at once where its functions differed)."""
    try:
        return os.path.samefile("scanner.py", __file__)
    except OSError:
        return False


def _worker_ready() -> None:
    """A no-op: run once by each new worker process, so the pool has them all before files come."""


def _worker_start(scan_pid: int, forked: bool) -> None:
    # Ctrl+C reaches the whole process group: the main process decides, workers must not print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if forked:  # the scan's own handlers (its stop on SIGTERM, its log file and console) are not the worker's
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        forget_handlers()
        if _killed_with_parent(scan_pid):
            return
    _exit_with(scan_pid)


def _killed_with_parent(scan_pid: int) -> bool:
    """A forked worker is the scan's child: the kernel kills it when the scan ends (Linux's parent-death
    signal, on every kernel). It must: it shares the scan's run lock, which a worker left behind would hold."""
    import ctypes

    pr_set_pdeathsig = 1
    try:
        done = ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError) as exc:
        log.debug("hash worker %d cannot ask to end with the scan: %s", os.getpid(), exc)
        return False
    if done and os.getppid() != scan_pid:
        os._exit(1)  # the scan ended before the signal was asked for
    return done


def _exit_with(scan_pid: int) -> None:
    """End this worker when the scan's process ends, however it ends. A scan killed with -9 (or by the
    out-of-memory killer) closes nothing: its workers waited forever to hand on results nobody reads, and
    the fork server and resource tracker waited for them, four processes left behind by each kill. A pidfd
    becomes readable when that process exits (Linux 5.3 and newer; elsewhere the workers stay as before).
    A worker from the fork server is not the scan's child: the parent-death signal would watch the server."""
    try:
        pidfd = os.pidfd_open(scan_pid)
    except ProcessLookupError:
        os._exit(1)  # the scan ended while this worker was starting
    except (AttributeError, OSError) as exc:
        log.debug("hash worker %d cannot watch the scan's process: %s", os.getpid(), exc)
        return
    threading.Thread(target=_exit_when_readable, args=(pidfd,), name="scan-watch", daemon=True).start()


def _exit_when_readable(pidfd: int) -> None:
    import select

    select.select([pidfd], [], [])
    os._exit(1)


def immich_storage_around(real_path: str) -> str | None:
    """The folder at or above `real_path` that holds Immich's `.immich` marker (its storage), or None."""
    folder = real_path
    while True:
        if os.path.isfile(os.path.join(folder, ".immich")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def distinct_roots(roots: Sequence[Path]) -> list[Path]:
    """The source folders without those inside another (one path is then never walked twice)."""
    real = [(root, os.path.realpath(root)) for root in roots]
    kept: list[Path] = []
    for root, resolved in real:
        inside = any(
            other_resolved != resolved and (resolved + "/").startswith(other_resolved.rstrip("/") + "/")
            for other, other_resolved in real
        ) or any(os.path.realpath(k) == resolved for k in kept)
        if inside:
            log.info("%s lies inside another source folder: walked once, from there", root)
            continue
        kept.append(root)
    return kept


class Scanner:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        progress: ProgressTracker,
        stop: threading.Event,
        confirm_empty: bool = False,
        from_menu: bool = False,
        scope: RunScope | None = None,
    ) -> None:
        self.settings = settings
        self.scope = scope or RunScope.of(settings)
        self.store = store
        self.progress = progress
        self.stop = stop
        self.confirm_empty = confirm_empty  # the user says an empty source folder really is empty now
        self.confirm_hint = (
            "" if from_menu else "; if it really is empty now, run again with --confirm-empty"
        )  # the menu asks instead
        self.summary = ScanSummary()

    def available_roots(self) -> list[Path]:
        """The source folders (and files) that can be scanned. A folder that is missing or empty while the
        database knows files in it is taken for a share that is not mounted tonight: it is reported, and none
        of its rows is marked missing (unless `confirm_empty`). A missing folder the database knows nothing
        of is a mistyped SOURCE_DIR. The whole system (`/`) is refused, and so is a folder inside Immich's own
        storage (one of its parents holds Immich's `.immich` marker)."""
        roots = []
        for root in distinct_roots(self.settings.source_dirs):
            real = os.path.realpath(root)
            if real == "/":
                raise ConfigError(
                    f"SOURCE_DIR: {root} is the whole system, not a photo folder: name the folders that hold "
                    "your photos and videos"
                )
            storage = immich_storage_around(real)
            if storage is not None:
                self._unavailable(
                    root,
                    f"{root} lies in Immich's own storage ({storage} holds its .immich marker): not scanned, "
                    "Immich already has what is there",
                )
                continue
            if os.path.isfile(root):
                roots.append(root)
                continue
            try:
                with os.scandir(root) as entries:
                    empty = next(entries, None) is None
                missing = False
            except (FileNotFoundError, NotADirectoryError):
                empty, missing = True, True
            except OSError as exc:
                self._unavailable(root, f"{root} cannot be read ({exc.strerror}): nothing in it was scanned")
                continue
            if not empty:
                roots.append(root)
                continue
            recorded = self.store.count_under(None if self.scope.shared else str(root))
            if recorded and not self.confirm_empty:
                state = "does not exist" if missing else "is empty"
                self._unavailable(
                    root,
                    f"{root} {state}, but {recorded} file{'s were' if recorded != 1 else ' was'} recorded there: "
                    f"is it mounted? Nothing was marked missing{self.confirm_hint}",
                )
            elif missing:
                where = self.settings.origin("SOURCE_DIR").after("SOURCE_DIR")
                self._unavailable(root, f"SOURCE_DIR{where}: {root} does not exist")
            else:
                roots.append(root)
        return roots

    def _unavailable(self, root: Path, message: str) -> None:
        self.summary.unavailable.append(str(root))
        log.error("%s", message)

    def _problem(self, raw_path: bytes, reason: str, advice: str = "") -> None:
        text = display_path(raw_path)
        self.summary.errors += 1
        self.summary.error_files.append(text)
        if len(self.summary.problems) < MAX_PROBLEMS:
            self.summary.problems.append(RunProblem(text, reason, advice))
        log.warning("%s: %s", text, reason, extra=FILE_EVENT)
        self.progress.file_status("error", text, reason)

    def scan(
        self,
        on_upload_ready: Callable[[list[str]], None] | None = None,
        uploads_dry: Callable[[], bool] | None = None,
    ) -> ScanSummary:
        """Walk, compare, fingerprint, save, as one stream: files are compared and hashed while the walk goes
        on. `on_upload_ready` gets the path hashes of rows that need uploading as soon as they are committed
        (new, changed, or left pending by an earlier run), so the sync pipeline uploads during the scan; when
        `uploads_dry` says the uploads are running out of rows, they get what waits sooner."""
        started = time.monotonic()
        summary = self.summary
        # A deletion a kill interrupted leaves a file under a temporary name: back in place before the walk.
        if self.store.deletion_interrupted():
            from organize import finish_interrupted_deletions  # with the HTTP client: a fifth of a start-up

            finish_interrupted_deletions(self.store, self.scope)
        roots = self.available_roots()
        known = KnownIndex(self.store.iter_known_files())
        batch = _SaveBatch(
            self.store, on_upload_ready, in_background=True, rows_before=len(known), uploads_dry=uploads_dry
        )
        describer = Describer(self.settings)
        in_flight: deque[Job] = deque()
        waiting = 0  # files in flight
        bytes_to_hash = 0
        unchanged_since_shown = 0
        to_claim: list[tuple[FoundFile, int | None]] = []  # a shared library's files, claimed in batches

        def submit(found: FoundFile, work: Work) -> None:
            nonlocal waiting
            waiting += 1
            job = describer.add(found, work)
            if job is not None:
                in_flight.append(job)

        self.progress.start("scan")
        try:
            walk = Walk(self.settings, self._problem, self.scope)
            for found in walk.files(roots):
                if self.stop.is_set():
                    break
                digest = sha256(found.key_path).digest()
                summary.found += 1
                index = known.find_digest(digest)
                if index is not None:
                    known.seen[index] = 1
                    if known.unchanged(index, found.size_bytes, found.mtime_ns):
                        summary.unchanged += 1
                        batch.unchanged(known, index, digest)
                        unchanged_since_shown += 1
                        if unchanged_since_shown >= 256:  # the counter, not a lock and a clock per file
                            self.progress.advance(unchanged_since_shown, 0)
                            unchanged_since_shown = 0
                        continue
                bytes_to_hash += found.size_bytes
                if self.scope.shared:
                    to_claim.append((found, index))
                    if len(to_claim) >= CLAIM_BATCH:
                        for claimed in self._claim(to_claim, known):
                            submit(*claimed)
                        to_claim = []
                else:
                    submit(found, Work(index, None if index is None else known.ids[index]))
                while waiting > describer.read_ahead() and in_flight:
                    waiting -= self._collect_job(in_flight.popleft(), known, batch)
            for claimed in self._claim(to_claim, known):
                submit(*claimed)
            self.progress.advance(unchanged_since_shown, 0)
            self.progress.set_total(summary.found, bytes_to_hash)
            job = describer.flush()
            if job is not None:
                in_flight.append(job)
            # What the walk left is written while the last files are described, not after (a tenth of a second),
            # and then copied into the database file, so that closing it has less to do.
            if batch.files:
                batch.save(then_checkpoint=True)
            while in_flight:
                self._collect_job(in_flight.popleft(), known, batch)
            batch.finish()
        finally:
            describer.close()
            batch.close()
        if not self.stop.is_set():
            summary.reread = self.reread_old_metadata(first_scan=not len(known))
        self.progress.finish()
        summary.passed_over = walk.passed_over
        if not self.stop.is_set():
            self._mark_missing(known, roots, walk.unlistable)
        summary.elapsed_s = time.monotonic() - started
        return summary

    def reread_old_metadata(self, first_scan: bool = False) -> int:
        """Rows an older metadata reader described get this one's date, camera and place, once: read from
        the file's first bytes, not hashed again. A file changed since its row was written is left to the
        next scan's compare. Returns how many rows were read again. After a `first_scan` (no rows before
        it) this reader wrote every row: nothing to look for."""
        state = f"metadata_reader:{self.store.scope}"
        if self.store.get_state(state) == str(METADATA_READER_VERSION):
            return 0  # the usual case: one small query
        if first_scan:
            self.store.set_state(state, str(METADATA_READER_VERSION))
            return 0  # looking would read every row's metadata text: 40 ms for 20,000 rows
        reread = 0
        updates: list[tuple[int, DescribedMetadata]] = []
        for row_id, filepath, b64, filename, size, mtime_ns, media_type in self.store.rows_read_before(
            METADATA_READER_VERSION
        ):
            if self.stop.is_set():
                break
            path = self.scope.path_of(filepath, b64)
            try:
                st = os.stat(path)
            except OSError as exc:
                log.debug("%s: metadata not read again: %s", display_path(path), exc.strerror or exc)
                continue
            if st.st_size != size or st.st_mtime_ns != mtime_ns or not stat.S_ISREG(st.st_mode):
                continue
            if not reread:
                log.info(
                    "reading again the metadata an earlier version read (once; files are not hashed again)"
                )
            # No head: the reader reads a JPEG's segments up to its image data, not a fixed 256 KiB.
            described = describe_metadata(
                path, media_type, b"", size, filename, mtime_ns, self.settings.time_zone
            )
            updates.append((row_id, described))
            reread += 1
            if len(updates) >= SAVE_EVERY_FILES:
                self.store.update_metadata([(i, d.date_taken, d.date_source, d.info) for i, d in updates])
                updates = []
        if updates:
            self.store.update_metadata([(i, d.date_taken, d.date_source, d.info) for i, d in updates])
        if not self.stop.is_set():
            self.store.set_state(state, str(METADATA_READER_VERSION))
        if reread:
            log.info(
                "read the metadata of %d files again (dates, cameras and places as Immich reads them)", reread
            )
        return reread

    def _claim(
        self, files: list[tuple[FoundFile, int | None]], known: KnownIndex
    ) -> list[tuple[FoundFile, Work]]:
        """In a shared library, the files this machine may hash: new files get a claimed placeholder row,
        changed ones a claim on theirs. A file another machine holds is passed over (it hashes it)."""
        lease = self.settings.claim_lease_s
        new = [found for found, index in files if index is None]
        won_new = self.store.claim_new_paths([bare_row(found) for found in new], lease)
        won_ids = self.store.claim_rows(
            [known.ids[index] for _, index in files if index is not None], lease, waiting_only=False
        )
        mine: list[tuple[FoundFile, Work]] = []
        for found, index in files:
            row_id = won_new.get(path_hash(found.key_path)) if index is None else known.ids[index]
            if row_id is None or (index is not None and row_id not in won_ids):
                self.summary.elsewhere += 1
                self.progress.advance(1, found.size_bytes)
                continue
            mine.append((found, Work(index, row_id)))
        return mine

    def _collect_job(self, job: Job, known: KnownIndex, batch: _SaveBatch) -> int:
        """Record a described batch in walk order; returns how many files it held."""
        items, future = job
        while True:
            try:
                results = future.result(timeout=HAND_ON_POLL_S)
                break
            except TimeoutError:
                # A long hash (a video of many gigabytes): rows written meanwhile go to the uploads now.
                batch.hand_on_written()
        for (found, work), result in zip(items, results, strict=True):
            self._collect(found, work, result, known, batch)
        return len(items)

    def _collect(
        self,
        found: FoundFile,
        work: Work,
        result: ScannedFile | OSError,
        known: KnownIndex,
        batch: _SaveBatch,
    ) -> None:
        scanned = self._result(found, work.index, result, known)
        if scanned is not None:
            if work.index is None:
                self.summary.new += 1
            else:
                self.summary.changed += 1
            batch.add(work.row_id, scanned)
            if scanned.warnings:
                log.warning(
                    "%s: metadata partly unreadable: %s",
                    scanned.filepath,
                    "; ".join(scanned.warnings),
                    extra=FILE_EVENT,
                )
            if scanned.upload_status == "error":
                self.summary.errors += 1
                self.summary.error_files.append(scanned.filepath)
                log.warning("%s: %s", scanned.filepath, scanned.last_error, extra=FILE_EVENT)
                self.progress.file_status("error", scanned.filepath, scanned.last_error or "")
            elif scanned.upload_status == "skipped":
                self.summary.skipped += 1
                log.info("%s: skipped: %s", scanned.filepath, scanned.last_error)
                self.progress.file_status("skipped", scanned.filepath, scanned.last_error or "")
            else:
                self.summary.bytes_hashed += scanned.file_size
                status = "new" if work.index is None else "changed"
                if self.progress.shows_each_file:  # its detail parses the metadata again: 20 µs a file
                    self.progress.file_status(status, scanned.filepath, media_detail(scanned.metadata_info))
        self.progress.advance(1, found.size_bytes)
        batch.save_if_due()

    def _result(
        self, found: FoundFile, index: int | None, result: ScannedFile | OSError, known: KnownIndex
    ) -> ScannedFile | None:
        """The described file, or an error row; None when the file vanished (it is then marked missing)."""
        if isinstance(result, ScannedFile):
            return result
        if isinstance(result, FileNotFoundError):
            if index is not None:
                known.seen[index] = 0
            self._problem(found.raw_path, "vanished during the scan")
            return None
        if isinstance(result, FileChangedError):
            # Its row stays as it was (a new file gets none yet): the next run reads it, once it is quiet.
            self.summary.changing += 1
            log.info("%s: %s", display_path(found.raw_path), STILL_CHANGING)
            return None
        row = bare_row(found)
        row.upload_status = "error"
        row.last_error = f"cannot read: {result.strerror or result}"
        return row

    def _mark_missing(self, known: KnownIndex, scanned: list[Path], unlistable: list[bytes]) -> None:
        """Rows under the scanned folders (or of the scanned source files) whose file was not found: marked
        missing, never deleted. Rows under a folder the walk could not list are not: they are unknown tonight."""
        tops = [os.fsencode(root).rstrip(b"/") for root in scanned]
        roots = tuple(top + b"/" for top in tops)
        blind = tuple(folder + b"/" for folder in unlistable)
        unseen = known.unseen_ids() if roots else []
        gone = []
        for row_id, filepath, filepath_b64 in self.store.paths_of(unseen):
            path = self.scope.path_of(filepath, filepath_b64)
            if (path.startswith(roots) or path in tops) and not path.startswith(blind):
                gone.append(row_id)
        if gone:
            self.store.set_missing(gone, missing=True)
        self.summary.missing = len(gone)


def summary_rows(summary: ScanSummary, log_file: object) -> list[tuple[str, str]]:
    rate = summary.bytes_hashed / summary.elapsed_s if summary.elapsed_s else 0.0
    return [
        ("found", str(summary.found)),
        ("new", str(summary.new)),
        ("changed", str(summary.changed)),
        ("unchanged", str(summary.unchanged)),
        ("missing", str(summary.missing)),
        *([("skipped", str(summary.skipped))] if summary.skipped else []),
        *(
            [("still changing", f"{summary.changing} (read again on the next run)")]
            if summary.changing
            else []
        ),
        *([("hashed elsewhere", f"{summary.elsewhere} (by another machine)")] if summary.elsewhere else []),
        *(
            [("metadata read again", f"{summary.reread} (by a newer reader, not hashed)")]
            if summary.reread
            else []
        ),
        errors_row(summary.errors, log_file),
        ("hashed", f"{format_bytes(summary.bytes_hashed)} at {format_bytes(rate)}/s"),
        ("time", format_duration(summary.elapsed_s)),
        *[("not scanned", f"{root} (missing or empty: not mounted?)") for root in summary.unavailable],
    ]


def scan_status(stop: threading.Event, summary: ScanSummary) -> ExitStatus:
    from cli import ExitStatus

    if stop.is_set():
        return ExitStatus.INTERRUPTED
    if summary.unavailable:
        return ExitStatus.CANNOT_START  # a source folder is not there (not mounted?): worth a look
    return ExitStatus.FILES_FAILED if summary.errors else ExitStatus.OK


def scanner_for(ctx: Context) -> Scanner:
    return Scanner(
        ctx.settings, ctx.store, ctx.progress, ctx.stop, ctx.args.confirm_empty, ctx.args.from_menu
    )


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--confirm-empty",
        action="store_true",
        help="a source folder that is empty now really is (not an unmounted share): mark its files missing",
    )
