"""The upload's machinery: send every pending row to Immich exactly once, concurrently, newest first.

`Uploader.feed()` takes rows, re-checks each file on disk (a file changed since its scan is re-hashed
first, a vanished one is marked missing), skips what the server would refuse, and settles what needs no
upload: content this database already knows on this Immich (a copy under another name, or sent by another
machine), content a worker is sending right now (recorded once that upload lands), and content the server
already has (bulk-upload-check). The rest go to a queue served by UPLOAD_CONCURRENCY worker threads; each
result is committed the moment it arrives. Failed rows wait longer after each failure (recorded in the row)
and are tried after the pending ones, so they never crowd out new files. Only failures of the server (5xx,
a refused key, a full quota) count toward MAX_CONSECUTIVE_ERRORS; a file a proxy finds too large or a type
Immich refuses is that file's own problem. A server that goes away mid-run is waited for (SERVER_WAIT);
then the run stops with exit 3 and no row is marked failed. Workers are daemon threads: a second Ctrl+C
abandons transfers in flight, and their rows stay `pending`.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from cli import Context, ExitStatus, StartError, summary_json
from config import Settings
from db_manager import DatabaseError, LiveRow, PendingUpload, RunProblem, Store, UploadOutcome
from edits import planned
from filters import RunFiles, RunScope
from immich_client import (
    BULK_CHECK_BATCH,
    ApiKeyRefused,
    ImmichClient,
    ImmichError,
    NotImmich,
    ServerUnreachable,
    ServerUser,
    StopRequested,
    TlsProblem,
    UploadRequest,
    host_port,
)
from live_photos import LivePartners, listdir, live_kind
from logger import FILE_EVENT, get_logger
from organize import KEPT_DUPLICATE, KEPT_TRASHED, KEPT_UNREADABLE, local_obstacle, organize, real_roots
from progress import ProgressTracker, errors_row, media_detail
from utils import (
    FileChangedError,
    LinkRefused,
    SourceFolders,
    SourceRoots,
    format_bytes,
    format_duration,
    path_to_text,
    plural,
    to_utc_iso,
)

if TYPE_CHECKING:
    from takeout import TakeoutFiles

log = get_logger("upload")

FEED_BATCH = 1000
TARGET_STATE = "current_target"
FIRST_RETRY_WAIT = timedelta(hours=1)
MAX_RETRY_WAIT = timedelta(days=7)

# What to do about each kind of failure (immich_client.error_kind, plus the local ones).
FAILURE_ADVICE = {
    "too_large": "a proxy in front of Immich refused the size (413): raise its body limit "
    "(nginx: client_max_body_size 50000M; Cloudflare's free plan stops at 100 MB)",
    "unsupported": "Immich does not accept this file type",
    "empty": "Immich refused an empty file",
    "rejected": "Immich refused the upload; its answer is in the row and the log",
    "quota": "your Immich storage quota is full: free space there or ask the admin to raise it",
    "server": "the server failed (5xx); tried again on a later run",
    "no_answer": "the server took the upload and never answered it (READ_TIMEOUT), though it answered other "
    "requests; tried again on a later run",
    "auth": "the API key was refused: check IMMICH_API_KEY and that it may upload (asset.upload)",
    "unreadable": "the file could not be read here (permissions, a disk error)",
    "changed": "the file changed while it was being sent; it is sent again after the next scan",
    "link": "a symbolic link on its path now leads outside the source folders, to another user's file: "
    "copy the file in instead of linking it",
}

SIDECAR_MAX_BYTES = 16 << 20  # an XMP sidecar is a few KB; anything this large is no sidecar


def retry_time(attempts: int) -> str:
    """When a row that failed `attempts` times may be tried again: 1 h, 4 h, 16 h, ... at most a week.
    A nightly job retries a file that failed once on the next night, one that always fails about weekly."""
    wait = min(MAX_RETRY_WAIT, FIRST_RETRY_WAIT * 4 ** max(0, attempts - 1))
    return (datetime.now(timezone.utc) + wait).strftime("%Y-%m-%d %H:%M:%S")


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
    tagged: int = 0
    deleted: int = 0
    server_problem: str = ""  # why the run stopped early (the server went away, too many errors)
    elsewhere: int = 0  # a shared library's files another machine holds
    changing: int = 0  # changed since their scan (still being written?): sent after the next scan
    recovered: int = 0  # sent by an earlier run of this machine whose answer was lost: uploads of ours
    live_photos: int = 0  # photos linked to their live photo clip in Immich (as sent, or afterwards)
    replaced: int = 0  # edited files whose new version took the earlier one's place (that one to the trash)
    error_kinds: dict[str, int] = field(default_factory=dict)
    waiting_errors: int = 0  # failed rows whose wait is not over yet
    error_files: list[str] = field(default_factory=list)
    kept: dict[str, int] = field(default_factory=dict)  # deletion: why files that could have gone stayed
    problems: list[RunProblem] = field(default_factory=list)  # errors that are no failed row

    def as_json(self) -> dict[str, object]:
        return summary_json(self)


def connect(client: ImmichClient) -> ServerUser:
    """Check the server and the key before anything is sent; failures become one StartError line."""
    where = host_port(client.base_url)
    try:
        user = client.connect()
    except ApiKeyRefused as exc:
        raise StartError(str(exc)) from None
    except ServerUnreachable as exc:
        raise StartError(
            f"cannot reach Immich at {where}: {exc} (tried GET {client.api_url}/users/me twice; check "
            "IMMICH_URL, and that the server is running)"
        ) from None
    except TlsProblem as exc:
        raise StartError(f"cannot connect to Immich at {client.base_url}: {exc}") from None
    except NotImmich as exc:
        raise StartError(str(exc)) from None  # the whole line: what came back, what IMMICH_URL should be
    except StopRequested:
        raise KeyboardInterrupt from None
    except ImmichError as exc:
        raise StartError(f"Immich at {client.base_url} failed at the start: {exc}") from None
    log.info("connected to Immich at %s as %s", client.base_url, user.email or user.name)
    return user


def retry_quota_failures(store: Store, user: ServerUser) -> None:
    """Files that failed on a full quota wait like any failure; a run that finds room on the server (the
    admin raised the quota, files were deleted there) tries them now."""
    if user.quota_left_bytes is None or user.quota_left_bytes > 0:
        again = store.retry_now("quota", user.quota_left_bytes)
        if again:
            log.warning(
                "the server has room again: %d files that failed on a full quota are tried now", again
            )


def adopt_target(client: ImmichClient, store: Store, user: ServerUser) -> int:
    """The target (this server's user) rows are recorded against. When the database last uploaded
    somewhere else (a moved or reinstalled server, a second one) or was written by an earlier version, the
    rows Immich should hold are re-checked here: what this server has is kept (by its asset ids), the rest
    goes back to pending and is sent. Going back to an earlier server re-checks the same way and sends
    only what it lacks."""
    retry_quota_failures(store, user)
    target = store.target_id(user.identity, client.base_url, user.email)
    state = f"{TARGET_STATE}:{store.scope}"  # each machine (and shared library) moves on its own
    if store.get_state(state) == str(target):
        return target
    held_total, sent_again, lost_elsewhere = 0, 0, 0
    after = 0
    try:
        while rows := store.uploaded_rows(after, BULK_CHECK_BATCH, not_on_target=target):
            after = rows[-1].id
            answers = client.bulk_upload_check([(str(r.id), r.sha1) for r in rows])
            held, not_held = [], []
            for r in rows:
                answer = answers.get(str(r.id))
                if answer is not None and answer.held:
                    # Rows of earlier versions keep their status (and album, stack and sidecar: this is
                    # where they went); rows of another server were not sent here, nor placed.
                    status = r.upload_status if r.target_id is None else "duplicate"
                    held.append((r.id, status, answer.asset_id or "", r.target_id is not None))
                elif r.deleted:
                    # Deleted here after the other server confirmed it: its only copy is there. The row
                    # keeps saying so; sending is impossible.
                    lost_elsewhere += 1
                else:
                    not_held.append(r.id)
            store.move_to_target(target, held, not_held)
            held_total += len(held)
            sent_again += len(not_held)
    except (ServerUnreachable, StopRequested) as exc:
        raise StartError(f"could not check what {client.base_url} already has: {exc}") from None
    if lost_elsewhere:
        log.warning(
            "%d files were deleted here after another Immich confirmed them and are not on %s: their only "
            "copy is on the other server (their rows keep its asset ids)",
            lost_elsewhere, client.base_url,
        )  # fmt: skip
    if sent_again:
        log.warning(
            "this database had uploaded to another Immich (or before this version): %d files are on %s "
            "already, %d are not and will be sent there",
            held_total, client.base_url, sent_again,
        )  # fmt: skip
    elif held_total:
        log.info("%d files re-checked on %s: all there", held_total, client.base_url)
    store.set_state(state, str(target))
    return target


def created_at(row: PendingUpload) -> str:
    """fileCreatedAt: the date taken (stored as UTC), else the file's mtime, always with Z (v3 needs a zone)."""
    if row.date_taken:
        moment = datetime.fromisoformat(str(row.date_taken)[:19]).replace(tzinfo=timezone.utc)
        return to_utc_iso(moment)
    return modified_at(row)


def modified_at(row: PendingUpload) -> str:
    try:
        return to_utc_iso(datetime.fromtimestamp((row.mtime_ns or 0) / 1e9, timezone.utc))
    except (OverflowError, OSError, ValueError):  # an mtime far outside what datetime holds
        return "1970-01-01T00:00:00.000Z"


def chosen_rows(
    store: Store,
    run_files: RunFiles,
    limit: int | None,
    failed_only: bool,
    skip: Container[int] = (),
) -> tuple[array[int], int]:
    """The ids (in upload order) and total size of the rows this run uploads, streamed from the database:
    a million pending files cost an array of ids here, not a million row objects. Rows in `skip` (already
    taken on) are left out."""
    ids: array[int] = array("q")
    total = 0
    for row in store.iter_pending_uploads(failed_only):
        if row.id not in skip and run_files.includes(row):
            ids.append(row.id)
            total += row.file_size
            if limit is not None and len(ids) >= limit:
                break
    return ids, total


def select(rows: list[PendingUpload], run_files: RunFiles, limit: int | None = None) -> list[PendingUpload]:
    """The rows this run uploads: those of its folders and filters (filters.RunFiles)."""
    chosen = [row for row in rows if run_files.includes(row)]
    return chosen if limit is None else chosen[:limit]


class IdSet:
    """A set of row ids as a bitmap: a million rows fed in one run take 125 KB, not the 60 MB of a set."""

    def __init__(self) -> None:
        self._bits = bytearray()

    def __contains__(self, row_id: int) -> bool:
        byte = row_id >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (row_id & 7)))

    def update(self, row_ids: Iterable[int]) -> None:
        for row_id in row_ids:
            byte = row_id >> 3
            if byte >= len(self._bits):
                self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits))))
            self._bits[byte] |= 1 << (row_id & 7)


class Uploader:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        client: ImmichClient,
        progress: ProgressTracker,
        stop: threading.Event,
        target_id: int,
        scope: RunScope | None = None,
        takeout: TakeoutFiles | None = None,
    ) -> None:
        self.settings = settings
        self.scope = scope or RunScope.of(settings)
        self.takeout = takeout  # a Takeout run: rows are zip members, opened from their zip
        self.run_files = RunFiles(settings, self.scope, takeout.here if takeout is not None else None)
        self.roots = SourceRoots.of(settings.source_dirs)  # the link rule judges each file opened to send
        # The workers' way to their files, through the link rule: closed in shutdown(), once they are done.
        self.folders = SourceFolders(self.roots)
        self.store = store
        self.client = client
        self.progress = progress
        self.stop = stop
        self.target_id = target_id
        self.summary = UploadSummary()
        self.aborted = threading.Event()  # too many server failures in a row, or the server went away
        self._queue: queue.Queue[PendingUpload | None] = queue.Queue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._consecutive_errors = 0
        self._bugs: list[BaseException] = []
        # SHA-1 -> rows with that content waiting for the one upload in flight: recorded as its
        # duplicates once it lands, so the same bytes are never sent twice in a run.
        self._in_flight: dict[str, tuple[int, list[PendingUpload]]] = {}  # sha1 -> (the row sent, waiting)
        self._retries: list[PendingUpload] = []  # failed rows whose wait is over: after everything else
        self.started = time.monotonic()
        self.counts_progress = True  # sync counts scan progress until its walk is done
        # What this run took on and what of it is settled (files, bytes of the backlog, bytes sent), so the
        # upload phase of a sync can start its counter where the uploads during the scan left it.
        self.fed = [0, 0]
        self.settled = [0, 0, 0]
        self.fed_ids = IdSet()  # a row is fed once, however many ways it comes
        self.overflowed = False  # feed_if_room() found no room: rows wait in the database
        self._closing = False  # shutdown(): the workers take nothing new
        self._offered = IdSet()  # rows whose bytes this run offered to a server that lacked them
        self._tried = IdSet()  # rows whose upload this run began and lost without an answer
        # Live photos: a clip goes first, its photo names the clip's asset (live_photos.py).
        listing = takeout.names_in if takeout is not None else listdir
        self.live = LivePartners(store, self.scope, settings, listing, takeout=takeout is not None)
        self._held: dict[int, list[PendingUpload]] = {}  # clip row -> its photos, waiting for its asset
        self._clip_assets: dict[int, str | None] = {}  # clip rows settled in this run -> asset (None: none)
        self._link_with: dict[int, str] = {}  # photo row -> the clip asset it is sent with
        # Clip rows with a photo: sent without VISIBILITY, so that Immich hides them when the photo names them.
        self._paired_clips: set[int] = set()
        self._deferred: list[PendingUpload] = []  # photos and clips of folders the scan had not finished
        self._live_final = False  # the scan is done: folders are as complete as they get
        self._feeds_send = True  # the last feed queued rows to send (see running_dry)

    @property
    def halted(self) -> bool:
        if self.store.run_lock_lost() and not self.aborted.is_set():
            with self._lock:
                self.summary.server_problem = (
                    "another run took over this machine's lock (the database restarted while this run went on): "
                    "stopping before the next upload"
                )
                self.aborted.set()
        return self.stop.is_set() or self.aborted.is_set()

    def _server_gone(self, exc: ImmichError) -> None:
        """The server stayed away longer than SERVER_WAIT: stop, leaving every row as it is."""
        if isinstance(exc, StopRequested):
            return
        with self._lock:
            if not self.aborted.is_set():
                self.summary.server_problem = str(exc)
                self.aborted.set()
                log.error("%s", exc)

    # -- feeding
    def has_room(self) -> bool:
        """Whether the queue wants more rows: it holds about one batch ahead of the workers, so memory stays
        flat however large the backlog."""
        return self._queue.qsize() < FEED_BATCH

    def running_dry(self) -> bool:
        """Whether rows handed on now would keep the workers busy: fewer wait in the queue than there are
        workers, and the last rows handed on gave them some to send (rows Immich has, or that wait for their
        live photo partner, never reach the queue: handing those on early only adds bulk checks)."""
        return self._feeds_send and not self.halted and self._queue.qsize() < self.settings.upload_concurrency

    def wait_for_room(self) -> None:
        """Block until the queue wants more rows (or the run ends). Main thread: it polls, so signals land."""
        while not self.has_room() and not self.halted and not self._bugs:
            time.sleep(0.02)

    def feed_if_room(self, load: Callable[[], list[PendingUpload]]) -> None:
        """Feed what `load` reads when the queue has room; else note it (`overflowed`), and the caller feeds
        the backlog later from the database. The scanner calls this: it never waits for the uploads."""
        if self.has_room():
            self.feed(load())
        else:
            self.overflowed = True

    def feed_backlog(self, ids: Sequence[int], failed_only: bool = False) -> None:
        """Feed these rows a batch at a time, as the queue drains."""
        for start in range(0, len(ids), FEED_BATCH):
            if self.halted:
                break
            self.wait_for_room()
            self.feed(
                self.store.pending_uploads(ids=ids[start : start + FEED_BATCH], failed_only=failed_only)
            )

    def feed(self, rows: list[PendingUpload]) -> None:
        """Re-check `rows` and settle or queue each. Called from one thread (main)."""
        queued_before = self.summary.queued
        try:
            self._feed(rows)
        finally:
            self._feeds_send = self.summary.queued > queued_before

    def _feed(self, rows: list[PendingUpload]) -> None:
        # Rows of other folders, filters or zips wait for a run that names them.
        rows = [r for r in rows if r.id not in self.fed_ids and self.run_files.includes(r)]
        if self.halted or not rows:
            return
        self.fed_ids.update(r.id for r in rows)
        self.fed[0] += len(rows)
        self.fed[1] += sum(r.file_size for r in rows)
        try:
            server = self.client.server
        except ImmichError as exc:
            self._server_gone(exc)  # without its version and formats nothing can be sent
            return
        fresh: list[PendingUpload] = []
        for row in rows:
            if self.halted:
                return
            if not server.accepts(row.extension):
                self._record(
                    row,
                    UploadOutcome(
                        "skipped",
                        error=f"the server does not accept .{row.extension} files",
                        error_kind="unsupported",
                    ),
                )
                continue
            current = self._recheck(row)
            if current is None:
                continue
            (self._retries if current.upload_status == "error" else fresh).append(current)
        self._dispatch(fresh)

    def _dispatch(self, rows: list[PendingUpload]) -> None:
        """Settle rows whose content is known (in this database on this Immich, in flight, or on the
        server), queue the rest for the workers. A photo or clip whose folder the scan has not recorded
        whole waits for the end of the scan (its live photo partner may be among what is left)."""
        if not rows or self.halted:
            return
        if not self._live_final:
            ready = [
                r
                for r in rows
                if self.live.ready(self.scope.path_of(r.filepath, r.filepath_b64), r.extension)
            ]
            if len(ready) < len(rows):
                waiting = {r.id for r in ready}
                self._deferred += [r for r in rows if r.id not in waiting]
                rows = ready
                if not rows:
                    return
        known = self.store.assets_for_contents([r.sha1 for r in rows if r.sha1], self.target_id)
        settled: list[tuple[PendingUpload, str, str]] = []
        trashed: set[int] = set()  # settled rows whose content lies in Immich's trash
        to_check: list[PendingUpload] = []
        for row in rows:
            if row.sha1 in known:
                settled.append((row, known[row.sha1], "same content as a file already in Immich"))
            else:
                to_check.append(row)
        answers = {}
        if to_check:
            try:
                answers = self.client.bulk_upload_check([(str(r.id), r.sha1 or "") for r in to_check])
            except (ServerUnreachable, StopRequested) as exc:
                self._server_gone(exc)
                return
            except ImmichError as exc:
                # Not fatal: each upload's checksum header still lets the server spot duplicates.
                log.warning("could not ask the server which files it has (%s); uploading with checksums", exc)
        to_send: list[PendingUpload] = []
        for row in to_check:
            answer = answers.get(str(row.id))
            if answer is not None and answer.held:
                if self._sent_by_us(row, answer.asset_id or "", row.sending_to == self.target_id):
                    # This machine sent it in an earlier run; the answer was lost (a cut, a kill, the
                    # database away): it is this machine's upload, as it was then.
                    why = "sent by this machine in an earlier run, whose answer was lost"
                    outcome = UploadOutcome(
                        "success", answer.asset_id, json.dumps({"recovered": why}), target_id=self.target_id
                    )
                    self._record(row, outcome, counted_as="recovered")
                    continue
                if answer.is_trashed:
                    trashed.add(row.id)
                where = " (in Immich's trash)" if answer.is_trashed else ""
                settled.append((row, answer.asset_id or "", f"already in Immich{where}"))
                continue
            self.summary.queued += 1
            with self._lock:
                lead = self._in_flight.get(row.sha1 or "") if row.sha1 else None
                if lead is not None:
                    lead[1].append(row)
                    continue
                if row.sha1:
                    self._in_flight[row.sha1] = (row.id, [])
            to_send.append(row)
        # The server said it lacks these: from here on, its "duplicate" for them is this machine's own upload.
        offered = [r.id for r in to_send if answers.get(str(r.id)) is not None]
        if offered:
            self.store.mark_sending(offered, self.target_id)
            self._offered.update(offered)
        for row in to_send:
            self._send(row)
        if settled and self.scope.shared:
            # Another machine may have sent some of these since they were read: theirs to record.
            mine = self.store.claim_rows([r.id for r, _, _ in settled], self.settings.claim_lease_s)
            for row, _asset_id, _why in settled:
                if row.id not in mine:
                    self._elsewhere(row)
            settled = [s for s in settled if s[0].id in mine]
        if settled:
            self.store.record_duplicates(
                [(r.id, asset_id, json.dumps({"duplicate": why})) for r, asset_id, why in settled],
                self.target_id,
            )
            for row, asset_id, why in settled:
                self._note("duplicate", row, why, None if row.id in trashed else asset_id)

    def _send(self, row: PendingUpload) -> None:
        """Queue a row for the workers. A live photo's clip goes without VISIBILITY (Immich hides it when its
        photo names it); a photo goes once its clip's asset is known (in this database, or once the clip this
        run sends lands), naming it. A clip that cannot be had now (it failed and waits, or this run leaves it
        out) lets its photo go alone: it is linked once the clip is in Immich (live_photos.link_live_photos)."""
        partner = self.live.partner(self.scope.path_of(row.filepath, row.filepath_b64), row.id, row.extension)
        if partner is None:
            self._queue.put(row)
            return
        if live_kind(row.extension) == "clip":
            self._paired_clips.add(row.id)
            self._queue.put(row)
            return
        with self._lock:
            if partner.id in self._clip_assets:
                asset_id = self._clip_assets[partner.id]
                if asset_id:
                    self._link_with[row.id] = asset_id
                self._queue.put(row)
                return
            if partner.id in self.fed_ids:
                self._held.setdefault(partner.id, []).append(row)  # its clip is on its way
                return
        clip = self._clip_now(partner)
        if isinstance(clip, str):
            self._link_with[row.id] = clip
        elif clip is not None:
            with self._lock:
                self._held.setdefault(partner.id, []).append(row)
            self.feed(clip)  # the clip first, whatever its place in the order
            return
        self._queue.put(row)

    def _clip_now(self, clip: LiveRow) -> str | list[PendingUpload] | None:
        """A clip this run has not taken on: its asset on this server (an earlier run sent it, or Immich had
        it), or its row to send now, or None when it cannot be had in this run."""
        fresh = self.store.live_rows([clip.path_hash])
        if not fresh or fresh[0].id != clip.id:
            return None
        now = fresh[0]
        if now.upload_status in ("success", "duplicate") and now.target_id == self.target_id and now.asset_id:
            return now.asset_id
        rows = self.store.pending_uploads(ids=[clip.id])
        return rows if rows and self.run_files.includes(rows[0]) else None

    def _clip_settled(self, row: PendingUpload, asset_id: str | None) -> None:
        """A clip's upload ended (sent, found in Immich, failed, passed over): the photos waiting for it go,
        naming its asset when it has one."""
        if live_kind(row.extension) != "clip":
            return
        with self._lock:
            self._clip_assets[row.id] = asset_id
            waiting = self._held.pop(row.id, [])
        for photo in waiting:
            if asset_id:
                self._link_with[photo.id] = asset_id
            self._queue.put(photo)

    def _sent_by_us(self, row: PendingUpload, asset_id: str, offered: bool) -> bool:
        return own_upload(self.store, self.scope.shared, row, asset_id, self.target_id, offered)

    def _landed(self, row: PendingUpload, asset_id: str | None) -> None:
        """The upload of `row` ended: rows with the same content become its duplicates (without a byte
        sent), or, when it failed, the next of them is tried. Only the row being sent decides: another
        row of that content failing on its own (unreadable, say) changes nothing for the others."""
        if not row.sha1:
            return
        with self._lock:
            lead = self._in_flight.get(row.sha1)
            if lead is None or lead[0] != row.id:
                return
            del self._in_flight[row.sha1]
            waiting = lead[1]
            if not asset_id and waiting and not self.halted:
                self._in_flight[row.sha1] = (waiting[0].id, waiting[1:])
                self._queue.put(waiting[0])
                return
        if asset_id and waiting:
            why = json.dumps({"duplicate": f"same content as {row.filepath}, sent once"})
            self.store.record_duplicates([(r.id, asset_id, why) for r in waiting], self.target_id)
            for other in waiting:
                self._note("duplicate", other, f"same content as {os.path.basename(row.filepath)}", asset_id)

    def _recheck(self, row: PendingUpload) -> PendingUpload | None:
        """The row as it is on disk now: re-hashed if the file changed since its scan, None if it vanished."""
        if self.takeout is not None:
            return self._recheck_member(row, self.takeout)
        raw = self.scope.path_of(row.filepath, row.filepath_b64)
        try:
            st = os.stat(raw)
        except FileNotFoundError:
            if not os.path.isdir(os.path.dirname(raw)):
                # Its whole folder is gone: a share that is not mounted, or moved. The next scan decides
                # (it knows the source folders); a row is never marked missing on such a guess.
                self._note(
                    "skipped", row, "its folder is not there now (not mounted?); left for the next scan"
                )
                return None
            self.store.set_missing([row.id], missing=True)
            self._note("skipped", row, "file no longer exists")
            return None
        except OSError as exc:
            self._local_failure(row, f"cannot read the file: {exc.strerror}", "unreadable")
            return None
        if not stat.S_ISREG(st.st_mode):
            self._local_failure(row, "is no longer a regular file", "unreadable")
            return None
        if st.st_size == row.file_size and st.st_mtime_ns == row.mtime_ns:
            return row
        # Seen changing since it was fingerprinted: still being written (a copy arriving), or edited. Either
        # way the bytes hashed are not the bytes there: the next scan reads it again, once, when it is quiet.
        self._note("changing", row, "changed since it was scanned: sent after the next scan reads it again")
        return None

    def _recheck_member(self, row: PendingUpload, takeout: TakeoutFiles) -> PendingUpload | None:
        """A zip member as it is now (zips do not change in place; a replaced one is scanned again)."""
        now = takeout.stat(row.filepath)
        if now is None:
            self.store.set_missing([row.id], missing=True)
            self._note("skipped", row, "no longer in its zip")
            return None
        if now != (row.file_size, row.mtime_ns):
            self._local_failure(
                row, "its zip changed since the scan; it is scanned again next run", "changed"
            )
            return None
        return row

    # -- workers
    def start(self) -> None:
        self.started = time.monotonic()
        for n in range(self.settings.upload_concurrency):
            worker = threading.Thread(target=self._work, name=f"upload-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _drain(self) -> None:
        # Woken the moment the last row is done (a 20 ms poll cost every run 10-20 ms at its end); the
        # timeout keeps the main thread checking for bugs and free for signals.
        done = self._queue.all_tasks_done
        while True:
            with done:
                if not self._queue.unfinished_tasks or self._bugs:
                    return
                done.wait(0.2)
            # Results of finished uploads wait for their batch's commit; not for the length of a long upload.
            self.store.flush_outcomes(due_only=True)

    def finish(self) -> UploadSummary:
        """Wait for the queue to drain (or for a stop), then try the failed rows whose wait is over and the
        photos and clips that waited for the scan to finish their folders, then stop the workers."""
        self._drain()
        while (self._retries or self._deferred) and not self.halted and not self._bugs:
            retries, self._retries = self._retries, []
            for start in range(0, len(retries), FEED_BATCH):
                self._dispatch(retries[start : start + FEED_BATCH])
            deferred, self._deferred = self._deferred, []
            if deferred:
                self._live_final = True
                self.live.forget()  # the folders as the finished scan recorded them
                for start in range(0, len(deferred), FEED_BATCH):
                    self._dispatch(deferred[start : start + FEED_BATCH])
            self._drain()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            # join with a timeout so the main thread keeps handling signals
            while worker.is_alive():
                worker.join(0.2)
        self.summary.elapsed_s = time.monotonic() - self.started
        self.summary.waiting_errors = self.store.waiting_errors()[0]
        if self._bugs:
            raise self._bugs[0]
        return self.summary

    def shutdown(self) -> None:
        """Stop the workers and wait for them, whatever happened in the main thread (a bug, Ctrl+C): what they
        use (the database, the zips, the connections) must not be closed under them. A transfer in flight is
        finished; rows not started stay as they are."""
        if any(worker.is_alive() for worker in self._workers):
            self._closing = True
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
                self._queue.task_done()
            for _ in self._workers:
                self._queue.put(None)
            for worker in self._workers:
                while worker.is_alive():  # a timeout keeps the main thread free for signals
                    worker.join(0.2)
        self.folders.close()  # no worker opens a file through it any more

    def _work(self) -> None:
        first = True
        while True:
            row = self._queue.get()
            try:
                if row is None:
                    return
                if self.halted or self._closing:
                    continue  # leave it pending for the next run
                self._work_on(row, first)
                first = False
            finally:
                self._queue.task_done()

    def _work_on(self, row: PendingUpload, first: bool) -> None:
        if not first and self.settings.upload_delay_s:
            time.sleep(self.settings.upload_delay_s)
        try:
            if self.scope.shared and not self.store.claim_rows([row.id], self.settings.claim_lease_s):
                # Several machines sync this library: a file is sent by the one that claims it, right
                # before sending, so the work splits as fast as each machine goes.
                self._elsewhere(row)
                return
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
        raw = self.scope.path_of(row.filepath, row.filepath_b64)
        link = self._link_with.pop(row.id, None)
        folders = self.folders
        sidecar = folders.sidecar_for(raw) if self.takeout is None else None
        sidecar_bytes = self._sidecar_bytes(row, sidecar) if sidecar is not None else None
        if sidecar_bytes is None:
            sidecar = None
        # Opened through the same checks at each try: the file as hashed, reached as the link rule allows.
        request = UploadRequest(
            path=raw,
            filename=os.path.basename(row.filepath),
            size_bytes=row.file_size,
            sha1=row.sha1,
            created_at=created_at(row),
            modified_at=modified_at(row),
            device_asset_id=f"{os.path.basename(row.filepath)}-{row.file_size}".replace(" ", ""),
            mtime_ns=row.mtime_ns,
            sidecar_path=sidecar,
            visibility=self.settings.visibility or None,
            live_photo_video_id=link,
            opener=lambda: folders.open(raw, row.file_size, row.mtime_ns),
            sidecar_xmp=sidecar_bytes,
            # An earlier run was sending it when it stopped (its upload may still be landing), or the bulk
            # check did not answer for it: Immich checks the checksum before the body.
            checksum_first=row.sending_to == self.target_id or row.id not in self._offered,
        )
        if self.takeout is not None:
            request = takeout_request(request, row, self.takeout)
        if row.id in self._paired_clips:  # Immich hides a timeline clip when its photo names it
            request = request._replace(visibility=None)
        while True:
            try:
                result = self.client.upload(request)
                break
            except (ServerUnreachable, StopRequested) as exc:
                with self._lock:
                    self._tried.update((row.id,))
                self._server_gone(exc)  # nothing was decided: the row stays as it was, no attempt counted
                return
            except ImmichError as exc:
                if link and exc.status == 400 and "live photo video" in str(exc).lower():
                    # The clip's asset is gone from Immich (or is not the user's): the photo goes alone.
                    log.warning(
                        "%s: Immich refused its live photo clip (%s); sent without it", row.filepath, exc
                    )
                    link = None
                    request = request._replace(live_photo_video_id=None)
                    continue
                with self._lock:
                    self._tried.update((row.id,))
                self._failed(row, exc)
                return
            except FileChangedError as exc:
                self._local_failure(row, str(exc), "changed")
                return
            except LinkRefused as exc:
                log.warning("%s: %s: not sent", row.filepath, exc)
                self._local_failure(row, str(exc), "link")
                return
            except OSError as exc:
                self._local_failure(row, f"cannot read the file: {exc.strerror or exc}", "unreadable")
                return
        with self._lock:
            self._consecutive_errors = 0
        status = "success" if result.status == "created" else "duplicate"
        # "duplicate" is this machine's own upload only when an earlier attempt of this run may have landed
        # (an answer lost); on a first attempt the server got those bytes from someone else meanwhile.
        earlier = result.earlier_body_sent or row.id in self._tried
        if (
            status == "duplicate"
            and earlier
            and self._sent_by_us(row, result.asset_id, row.id in self._offered)
        ):
            status = "success"  # an earlier attempt of this run delivered it; only its answer was lost
        sidecar_text = (
            path_to_text(self.scope.stored(sidecar))[0]
            if sidecar is not None and result.sidecar_sha1
            else None
        )
        self._record(
            row,
            UploadOutcome(
                status,
                asset_id=result.asset_id,
                api_response=result.body,
                target_id=self.target_id,
                # Only a name stored exactly can be found again for deletion; any other is never deleted.
                sidecar_path=sidecar_text if sidecar_text and "\ufffd" not in sidecar_text else None,
                sidecar_sha1=result.sidecar_sha1 if sidecar_text else None,
                live_video_id=link if result.status == "created" else None,
            ),
        )
        if status == "success":
            with self._lock:
                self.summary.bytes_uploaded += row.file_size
                self.summary.live_photos += 1 if link and result.status == "created" else 0
        self._landed(row, result.asset_id)

    def _elsewhere(self, row: PendingUpload) -> None:
        """Another machine holds this file: it is its to send; this run only counts it."""
        with self._lock:
            self.summary.elsewhere += 1
            self.settled[0] += 1
            self.settled[1] += row.file_size
        if self.counts_progress:
            self.progress.advance(1, row.file_size)
        self._landed(row, None)
        self._clip_settled(row, None)

    def _sidecar_bytes(self, row: PendingUpload, sidecar: bytes) -> bytes | None:
        """The sidecar's bytes as they will be sent (read once, through the checks a photo's own read
        passes: a sidecar is a file of the sources too), or None to send the photo without one."""
        try:
            with self.folders.open(sidecar) as handle:
                data = handle.read(SIDECAR_MAX_BYTES + 1)
        except LinkRefused as exc:
            log.warning("%s: its sidecar was not sent: %s", row.filepath, exc)
            # The photo goes (no failed row): Recent errors still says why its sidecar did not.
            with self._lock:
                self.summary.problems.append(
                    RunProblem(
                        os.fsdecode(sidecar),
                        f"not sent with its photo: {exc}",
                        "copy the sidecar in instead of linking it",
                    )
                )
            return None
        except OSError as exc:
            log.info("%s: its sidecar could not be read (%s); sent without it", row.filepath, exc)
            return None
        if not data:
            log.info("%s: its sidecar is empty; sent without it", row.filepath)  # Immich refuses empty parts
            return None
        if len(data) > SIDECAR_MAX_BYTES:
            log.warning(
                "%s: its sidecar is larger than 16 MiB, no XMP sidecar; sent without it", row.filepath
            )
            return None
        return data

    def _local_failure(self, row: PendingUpload, message: str, kind: str) -> None:
        """A file that could not be read or changed under us: its own problem, never the server's."""
        retry_at = None if kind == "changed" else retry_time(row.upload_attempts + 1)
        self._record(row, UploadOutcome("error", error=message, error_kind=kind, retry_at=retry_at))
        self._landed(row, None)

    def _failed(self, row: PendingUpload, exc: ImmichError) -> None:
        message = str(exc)
        self._record(
            row,
            UploadOutcome(
                "error",
                api_response=exc.body or None,
                error=message,
                error_kind=exc.kind,
                retry_at=retry_time(row.upload_attempts + 1),
            ),
        )
        self._landed(row, None)
        if exc.per_file:
            return  # one file's problem (too large for a proxy, a type Immich refuses): the run goes on
        with self._lock:
            self._consecutive_errors += 1
            if self._consecutive_errors >= self.settings.max_consecutive_errors and not self.aborted.is_set():
                self.summary.server_problem = (
                    f"{self._consecutive_errors} uploads in a row failed on the server's side "
                    f"(MAX_CONSECUTIVE_ERRORS); last: {message}"
                )
                self.aborted.set()
                log.error("stopping: %s", self.summary.server_problem)

    def _record(self, row: PendingUpload, outcome: UploadOutcome, counted_as: str = "") -> None:
        self.store.record_upload(row.id, outcome, count_attempt=outcome.status != "skipped")
        shown = outcome.status == "success" and self.progress.shows_each_file
        detail = outcome.error or (media_detail(row.metadata_info) if shown else "")
        if outcome.status == "error" and outcome.error_kind:
            with self._lock:
                self.summary.error_kinds[outcome.error_kind] = (
                    self.summary.error_kinds.get(outcome.error_kind, 0) + 1
                )
        self._note(counted_as or outcome.status, row, detail, outcome.asset_id)

    def _note(self, status: str, row: PendingUpload, detail: str, asset_id: str | None = None) -> None:
        with self._lock:
            if status == "success":
                self.summary.uploaded += 1
            elif status == "duplicate":
                self.summary.duplicates += 1
            elif status == "skipped":
                self.summary.skipped += 1
            elif status == "changing":
                self.summary.changing += 1
            elif status == "recovered":
                self.summary.recovered += 1
            else:
                self.summary.errors += 1
                self.summary.error_files.append(row.filepath)
        if status == "error":
            log.warning("%s: upload failed: %s", row.filepath, detail, extra=FILE_EVENT)
        elif status == "skipped":
            log.info("%s: skipped: %s", row.filepath, detail)
        else:
            # A line per file sent would be most of a big run's log, pushing its start out of the rotated
            # files; the database (and main.py --report) hold every file's outcome.
            log.debug("%s: %s%s", row.filepath, status, f" ({detail})" if status == "changing" else "")
        self.progress.file_status(status, row.filepath, detail)
        sent = row.file_size if status == "success" else 0
        with self._lock:
            self.settled[0] += 1
            self.settled[1] += row.file_size
            self.settled[2] += sent
        if self.counts_progress:
            self.progress.advance(1, row.file_size, sent)
        self._clip_settled(row, asset_id if status in ("success", "duplicate", "recovered") else None)

    def start_progress(self, later_files: int = 0, later_bytes: int = 0) -> None:
        """The upload phase's counter: everything fed to this run and what is still to be fed (a backlog in
        the database), and what of it is already settled."""
        with self._lock:
            self.progress.start("upload", self.fed[0] + later_files, self.fed[1] + later_bytes, unit="bytes")
            self.progress.advance(*self.settled)
            self.counts_progress = True


@dataclass
class VerifyReport:
    checked: int = 0
    gone: list[str] = field(default_factory=list)  # no longer in Immich; the local file is still here
    trashed: list[str] = field(default_factory=list)  # in Immich's trash
    lost: list[str] = field(default_factory=list)  # gone from Immich and deleted here after it confirmed
    requeued: int = 0

    @property
    def clean(self) -> bool:
        return not (self.gone or self.trashed or self.lost)


def verify_uploads(
    client: ImmichClient, store: Store, target_id: int, reupload: bool, dry_run: bool = False
) -> VerifyReport:
    """Check every row marked uploaded to this Immich against what it holds now. Assets deleted there
    (or in its trash) are reported; with `reupload`, files still here that Immich lost go back to pending.
    An asset the server now knows under another id (re-uploaded elsewhere) is simply recorded anew. A dry
    run writes nothing: it says what would be sent again."""
    report = VerifyReport()
    after = 0
    while rows := store.uploaded_rows(after, BULK_CHECK_BATCH, on_target=target_id):
        after = rows[-1].id
        answers = client.bulk_upload_check([(str(r.id), r.sha1) for r in rows])
        renamed, lost_here = [], []
        for r in rows:
            report.checked += 1
            answer = answers.get(str(r.id))
            if answer is not None and answer.held:
                if answer.is_trashed:
                    report.trashed.append(r.filepath)
                elif answer.asset_id != r.asset_id:
                    renamed.append((r.id, r.upload_status, answer.asset_id or "", True))
            elif r.deleted:
                report.lost.append(r.filepath)
            else:
                report.gone.append(r.filepath)
                lost_here.append(r.id)
        if not dry_run:
            store.move_to_target(target_id, renamed, lost_here if reupload else [])
        report.requeued += len(lost_here) if reupload else 0
    for path in report.lost:
        log.error("%s: deleted here after Immich confirmed it, and no longer in Immich", path)
    return report


def report_verify(ctx: Context, report: VerifyReport, dry_run: bool = False) -> None:
    for label, paths in (
        ("gone from Immich", report.gone),
        ("in Immich's trash", report.trashed),
        ("lost (gone from Immich, deleted here)", report.lost),
    ):
        for path in paths:
            ctx.stdout.write(f"{label}: {path}\n")
    rows = [
        ("checked", plural(report.checked, "file")),
        (
            "gone from Immich",
            f"{len(report.gone)}"
            + (
                f", {report.requeued} {'would be queued' if dry_run else 'queued'} to be sent again"
                if report.requeued
                else (" (--reupload sends them again)" if report.gone else "")
            ),
        ),
        (
            "in Immich's trash",
            f"{len(report.trashed)}"
            + (" (restore them in Immich, or empty the trash there)" if report.trashed else ""),
        ),
    ]
    if report.lost:
        rows.append(
            (
                "lost",
                f"{len(report.lost)}: deleted here after Immich confirmed them, and gone from Immich since",
            )
        )
    title = "Verify: rows marked uploaded, checked with Immich"
    ctx.progress.summary(title + (" (dry run: nothing changed)" if dry_run else ""), rows)


def takeout_request(request: UploadRequest, row: PendingUpload, takeout: TakeoutFiles) -> UploadRequest:
    """A zip member's upload: streamed from its zip, named as Immich takes it, favorite and archived as in
    Google Photos, and with a made sidecar for the place, description and date Google knew. The row is read
    again first: a copy's JSON may have reached it since it was queued."""
    from takeout import sidecar_for, upload_name  # only a Takeout run pays for zipfile

    changed = takeout.store is not None and row.id in takeout.refreshed
    fresh = takeout.store.takeout_rows([row.id]) if changed else []  # type: ignore[union-attr]
    if fresh:
        row = row._replace(metadata_info=fresh[0].metadata_info, date_taken=fresh[0].date_taken)
    info = json.loads(row.metadata_info or "{}")
    google = info.get("takeout", {})
    has_gps = info.get("gps_latitude") is not None
    has_date = info.get("date_source") in ("exif", "video")
    return request._replace(
        filename=upload_name(os.path.basename(row.filepath)),
        created_at=created_at(row),
        opener=takeout.opener(row.filepath),
        is_favorite=bool(google.get("favorited")),
        visibility=request.visibility or ("archive" if google.get("archived") else None),
        sidecar_xmp=sidecar_for(google, has_gps, has_date),
    )


def summary_rows(summary: UploadSummary, log_file: object) -> list[tuple[str, str]]:
    rate = summary.bytes_uploaded / summary.elapsed_s if summary.elapsed_s else 0.0
    processed = summary.uploaded + summary.duplicates + summary.skipped + summary.errors
    rows = [
        ("processed", str(processed)),
        ("uploaded", str(summary.uploaded)),
        ("duplicates", str(summary.duplicates)),
        ("skipped", str(summary.skipped)),
        errors_row(summary.errors, log_file),
        *failure_rows(summary),
        ("sent", f"{format_bytes(summary.bytes_uploaded)} at {format_bytes(rate)}/s"),
        ("time", format_duration(summary.elapsed_s)),
    ]
    extras = [
        ("sent by an earlier run", summary.recovered),
        ("still changing", summary.changing),
        ("sent by another machine", summary.elsewhere),
        ("added to albums", summary.added_to_albums),
        ("stacks made", summary.stacks_created),
        ("tagged", summary.tagged),
        ("live photos linked", summary.live_photos),
        ("edits replaced", summary.replaced),
        ("deleted locally", summary.deleted),
    ]
    rows[-2:-2] = [(label, str(count)) for label, count in extras if count]
    if summary.kept:
        at = len(rows) - 2
        rows[at:at] = [("kept locally", str(sum(summary.kept.values())))] + [
            (f"  {count} ×", reason) for reason, count in sorted(summary.kept.items(), key=lambda kv: -kv[1])
        ]
    if summary.server_problem:
        rows.append(("stopped", summary.server_problem))
    return rows


def failure_rows(summary: UploadSummary) -> list[tuple[str, str]]:
    """One line per kind of failure with what to do about it, and the failed files still waiting."""
    rows = [
        (f"  {count} ×", FAILURE_ADVICE.get(kind, kind))
        for kind, count in sorted(summary.error_kinds.items())
    ]
    if summary.waiting_errors:
        rows.append(
            (
                "waiting",
                f"{plural(summary.waiting_errors, 'failed file')} "
                f"{'is' if summary.waiting_errors == 1 else 'are'} tried again on a later run "
                f"(python main.py > Retry errors tries {'it' if summary.waiting_errors == 1 else 'them'} now)",
            )
        )
    return rows


def exit_status(stop: threading.Event, uploader: Uploader, file_errors: int) -> ExitStatus:
    if uploader.aborted.is_set() or uploader.summary.server_problem:
        return ExitStatus.TOO_MANY_ERRORS
    if stop.is_set():
        return ExitStatus.INTERRUPTED
    return ExitStatus.FILES_FAILED if file_errors else ExitStatus.OK


def one_per_content(
    rows: Sequence[PendingUpload],
) -> tuple[list[PendingUpload], list[tuple[PendingUpload, PendingUpload]]]:
    """Rows as a run sends them: one upload per content; the other copies (the same photo under another
    name, an album's copy and its year folder's in a Takeout) as (copy, the row sent) pairs."""
    first: dict[str, PendingUpload] = {}
    sent: list[PendingUpload] = []
    copies: list[tuple[PendingUpload, PendingUpload]] = []
    for row in rows:
        lead = first.get(row.sha1) if row.sha1 else None
        if lead is None:
            if row.sha1:
                first[row.sha1] = row
            sent.append(row)
        else:
            copies.append((row, lead))
    return sent, copies


def dry_run(
    ctx: Context,
    rows: list[PendingUpload],
    run_files: RunFiles,
    extra_rows: Sequence[tuple[str, str]] = (),
    extra_json: dict[str, object] | None = None,
    scan_rows: Sequence[tuple[str, str]] = (),
) -> ExitStatus:
    """What a run would do, changing nothing: which files would be sent (the server is asked which it
    has already, when one is configured) and, with DELETE_UPLOADED, which local files would be deleted:
    those Immich confirms now, and up to as many again among the files the run would send first (and, with
    DELETE_DUPLICATES, those Immich already has), whose deletion the server's confirmation then decides.
    Copies of one content count once, as the real run sends them once. A sync's dry run puts what its scan
    found first (`scan_rows`); a Takeout adds its own lines (`extra_rows`, `extra_json`)."""
    client = None
    # A server setting that is set but wrong stops the dry run as it would stop the real one.
    if ctx.settings.server_problem or (ctx.settings.immich_url and ctx.settings.immich_api_key):
        ctx.settings.require_server()
        client = ImmichClient(ctx.settings, ctx.stop)
    deletions: list[tuple[str, int]] = []
    keeping: Counter[str] = Counter()  # why files the real run could delete would be kept, and how many
    target_id = None
    try:
        held: dict[str, str] = {}
        trashed: set[str] = set()
        if client is not None:
            user = connect(client)
            answers = client.bulk_upload_check([(str(r.id), r.sha1) for r in rows if r.sha1])
            held = {key: a.asset_id or "" for key, a in answers.items() if a.held}
            trashed = {key for key, a in answers.items() if a.held and a.is_trashed}
            target_id = ctx.store.find_target(user.identity)
            if ctx.settings.delete_uploaded and target_id is not None:
                done = organize(
                    client,
                    ctx.store,
                    ctx.settings,
                    ctx.progress,
                    ctx.stop,
                    target_id,
                    run_files,
                    dry_run=True,
                )
                deletions = done.would_delete
                keeping.update(done.kept)
    except (ServerUnreachable, StopRequested) as exc:
        raise StartError(f"could not ask {ctx.settings.display_url} what it has: {exc}") from None
    finally:
        if client is not None:
            client.close()
    to_send, copies = one_per_content([r for r in rows if str(r.id) not in held])
    have = [r for r in rows if str(r.id) in held]
    # Pending files the real run would delete too, each only if Immich confirms its asset then: those Immich
    # holds now (recorded as duplicates, or as this machine's uploads when it sent them in an earlier run),
    # and those it would send first, with the copies of what it sends (duplicates once it is in).
    held_now: list[PendingUpload] = []
    once_sent: list[PendingUpload] = []
    copies_deleted = 0
    if ctx.settings.delete_uploaded and not ctx.settings.takeout_paths:
        roots = real_roots(ctx.settings)
        duplicates = ctx.settings.delete_duplicates

        def deletable(row: PendingUpload, reason: str | None = None) -> bool:
            """Whether the real run would delete `row` (kept for `reason` when one is given), counting why not."""
            if reason is None:
                try:
                    reason = local_obstacle(run_files.path(row), roots)
                except FileNotFoundError:
                    return False  # gone since the scan: neither sent nor deleted
                except OSError:
                    reason = KEPT_UNREADABLE
            if reason is not None:
                keeping[reason] += 1
            return reason is None

        def held_reason(row: PendingUpload) -> str | None:
            if str(row.id) in trashed:
                return KEPT_TRASHED
            # As the real run decides: sent by an earlier run whose answer was lost, it is this machine's.
            offered = target_id is not None and row.sending_to == target_id
            if duplicates or own_upload(
                ctx.store, run_files.scope.shared, row, held[str(row.id)], target_id, offered
            ):
                return None
            return KEPT_DUPLICATE

        held_now = [r for r in have if deletable(r, held_reason(r))]
        once_sent = [r for r in to_send if deletable(r)]
        copied = [c for c, _ in copies if deletable(c, None if duplicates else KEPT_DUPLICATE)]
        once_sent += copied
        copies_deleted = len(copied)
    later = held_now + once_sent
    send_bytes = sum(r.file_size for r in to_send)
    delete_bytes = sum(size for _path, size in deletions) + sum(r.file_size for r in later)
    clips = live_clips_of(ctx, to_send + have, run_files)
    edits = {
        r.id: planned(ctx.store, r.id, r.replaces, r.metadata_info, ctx.settings)
        for r in to_send
        if r.replaces
    }
    replacing = sum(1 for why in edits.values() if why is None)
    if ctx.args.json:
        ctx.emit_json(
            {
                "dry_run": True,
                "would_upload": len(to_send),
                "bytes": send_bytes,
                "already_in_immich": len(have),
                "copies": len(copies),
                "would_delete": len(deletions) + len(later),
                "would_delete_now": len(deletions) + len(held_now),
                "would_delete_after_upload": len(once_sent),
                "would_keep": dict(keeping),
                "delete_bytes": delete_bytes,
                "asked_server": client is not None,
                "live_photos": len(clips),
                "would_replace": replacing,
                **(extra_json or {}),
            }
        )
    else:
        for row in to_send:
            live = f" with its live photo clip {os.path.basename(clips[row.id])}" if row.id in clips else ""
            edit = ""
            if row.id in edits:
                why = edits[row.id]
                edit = (
                    f", kept beside its earlier version ({why})"
                    if why
                    else ", in place of its earlier version"
                )
            ctx.stdout.write(f"would upload {row.filepath} ({format_bytes(row.file_size)}){live}{edit}\n")
        for row in have:
            ctx.stdout.write(f"already in Immich {row.filepath}\n")
        for path, size in deletions:
            ctx.stdout.write(f"would delete {path} ({format_bytes(size)})\n")
        for row in held_now:
            ctx.stdout.write(f"would delete {row.filepath} ({format_bytes(row.file_size)})\n")
        for row in once_sent:
            ctx.stdout.write(f"would delete once in Immich {row.filepath} ({format_bytes(row.file_size)})\n")
        for copy, lead in copies:
            ctx.stdout.write(f"would record as a copy {copy.filepath} (the same bytes as {lead.filepath})\n")
    rows_out = [*scan_rows, ("would upload", f"{plural(len(to_send), 'file')}, {format_bytes(send_bytes)}")]
    if copies:
        rows_out.append(
            ("copies", f"{len(copies)} more with the same bytes as a file sent: recorded, not sent")
        )
    if client is not None:
        rows_out.append(("already in Immich", plural(len(have), "file")))
    else:
        rows_out.append(("server", "not asked (IMMICH_URL or IMMICH_API_KEY not set)"))
    if clips:
        rows_out.append(("live photos", f"{plural(len(clips), 'photo')} linked with its clip"))
    if edits:
        kept = len(edits) - replacing
        whose = "its earlier version" if replacing == 1 else "their earlier versions"
        detail = f"{plural(replacing, 'edited file')} in place of {whose} in Immich"
        rows_out.append(("edits", detail + (f"; {kept} kept beside it" if kept else "")))
    if ctx.settings.delete_uploaded:
        count = len(deletions) + len(later)
        detail = f"{plural(count, 'file')}, {format_bytes(delete_bytes)}"
        if later:
            among = f" ({plural(copies_deleted, 'copy')} of a file sent among them)" if copies_deleted else ""
            detail = (
                f"up to {detail}: {len(deletions) + len(held_now)} Immich holds now, {len(once_sent)} once "
                f"sent{among}; each only if Immich then confirms it"
            )
        rows_out.append(("would delete", detail))
        if keeping:
            rows_out.append(("would keep locally", str(sum(keeping.values()))))
            rows_out += [(f"  {n} ×", reason) for reason, n in sorted(keeping.items(), key=lambda kv: -kv[1])]
    rows_out += extra_rows
    ctx.progress.summary("Dry run: nothing was sent, changed or deleted", rows_out)
    return ExitStatus.OK


def own_upload(
    store: Store, shared: bool, row: PendingUpload, asset_id: str, target_id: int | None, offered: bool
) -> bool:
    """Whether the server's "duplicate" for `row` is this machine's own upload: its bytes were offered to
    this server when it lacked them, and no other row of this database records that asset as its upload
    (another machine's, or a copy under another name). A shared library's row is every machine's: its
    "duplicate" may be another machine's upload."""
    if not offered or target_id is None or not asset_id or not row.sha1 or shared:
        return False
    return not store.asset_recorded_for_another(row.sha1, asset_id, target_id, row.id)


def live_clips_of(ctx: Context, rows: Sequence[PendingUpload], run_files: RunFiles) -> dict[int, str]:
    """Photo row -> its live photo clip's path, for what a dry run lists (a Takeout's are not looked for);
    nothing is recorded."""
    if ctx.settings.takeout_paths:
        return {}
    partners = LivePartners(ctx.store, run_files.scope, ctx.settings, listdir, record=False)
    clips = {}
    for row in rows:
        if live_kind(row.extension) == "photo":
            partner = partners.partner(run_files.path(row), row.id, row.extension)
            if partner is not None:
                clips[row.id] = partner.filepath
    return clips


def finish_in_immich(
    ctx: Context, client: ImmichClient, summary: UploadSummary, target_id: int, run_files: RunFiles
) -> None:
    """Edits' replacements, live photo links, albums, stacks, tags and deletion once the uploads are recorded
    (skipped when the run was stopped). A server that goes away meanwhile stops the run as it stops uploads
    (exit 3): what is not done is done by the next run."""
    if ctx.stop.is_set() or summary.stopped_after_errors:
        return
    try:
        done = organize(client, ctx.store, ctx.settings, ctx.progress, ctx.stop, target_id, run_files)
    except ServerUnreachable as exc:
        log.error("edits, live photos, albums, stacks, tags and deletion not all done: %s", exc)
        summary.server_problem = f"{exc} (after the uploads; the next run finishes what they left)"
        return
    except StopRequested:
        return
    except ImmichError as exc:
        log.error("albums, stacks and tags not updated (nothing was deleted): %s", exc)
        summary.errors += 1
        summary.problems.append(
            RunProblem(
                "(albums, stacks and tags)", f"not updated: {exc}", "they are tried again on the next run"
            )
        )
        return
    summary.added_to_albums, summary.stacks_created, summary.deleted = (
        done.added_to_albums,
        done.stacks_created,
        done.deleted,
    )
    summary.tagged = done.tagged
    summary.live_photos += done.live_photos
    summary.replaced = done.replaced
    summary.kept = dict(done.kept)
    summary.errors += done.errors
    summary.problems += done.problems
