"""The state database: every file the tool has seen and where its upload stands. All SQL lives here.

Two backends behind one interface: SQLite (the embedded default, WAL mode) and MySQL/MariaDB through
PyMySQL when DB_HOST is set. Callers ask for named operations (`known_files()`, `save_scanned()`,
`pending_uploads()`, `record_upload()`); statements are written once with `?` placeholders and adapted per
backend. Scan writes go in batches, one transaction each; an upload's result commits on its own, at once,
because exactly-once depends on it. The schema evolves by named migrations recorded in `schema_migrations`;
the first is the client's original CREATE TABLE, so a database made by it is upgraded in place.

Rows belong to a `scope`: a machine's own files ("m:NAME", absolute paths) or a shared library's ("l:NAME",
paths below its mount point), so several machines share one MariaDB without touching each other's rows;
each run sees only its scope, except where content is shared knowledge (`assets_for_contents`) and in the
reports. Within a scope, rows are keyed by `path_hash`, the SHA-256 of the stored path's raw bytes: unique
however long the path (the client's key covered only 768 characters) and whatever its encoding. Files of a
shared library are claimed (`claim_rows`, `claim_new_paths`) before a machine hashes or uploads them, with a
lease on the database server's clock that a dead machine stops renewing. A path that is not valid UTF-8 is
stored readable in `filepath` (invalid bytes replaced) and exactly, base64-encoded, in `filepath_b64`, so the
file can be opened again (utils.path_to_text / text_to_path).
"""

from __future__ import annotations

import copyreg
import hashlib
import json
import operator
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from config import Settings, mask_url_password
from logger import get_logger

log = get_logger("db")

STATUSES = ("pending", "success", "duplicate", "error", "skipped")
DONE_STATUSES = ("success", "duplicate")
API_RESPONSE_MAX_CHARS = 4000
LIVE_LINKS_STATE = "live_links_to_check"  # per scope: a live photo pair was recorded since the last look
REPLACE_STATE = "replacements_to_check"  # per scope: an edited file's earlier version was recorded
DELETING_STATE = "deletion_in_progress"  # per scope: a run is deleting files (organize.Deleter)
BATCH_ROWS = 1000
CONFLICT_RETRIES = 5
IDLE_PING_S = 10.0  # a MySQL connection unused this long is pinged before a transaction
STREAM_ROWS = 5000


class DatabaseError(Exception):
    """The database cannot be opened or reached; the message says which and what to check."""


def path_hash(raw_path: bytes) -> str:
    return hashlib.sha256(raw_path).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# path_hash, id, file_size, mtime_ns, upload_status, fingerprinted (0/1), missing (0/1)
KnownRow = tuple[str, int, "int | None", "int | None", str, int, int]


class KnownFile(NamedTuple):
    """What the scanner needs of a row to decide whether a file changed."""

    id: int
    file_size: int | None
    mtime_ns: int | None
    upload_status: str
    fingerprinted: bool
    missing: bool


@dataclass
class ScannedFile:
    """One row as the scanner writes it."""

    raw_path: bytes
    filepath: str
    filepath_b64: str | None
    filename: str
    directory: str
    extension: str
    media_type: str
    file_size: int
    mtime_ns: int
    hash: str = ""
    sha1: str | None = None
    date_taken: str | None = None  # UTC, 'YYYY-MM-DD HH:MM:SS'
    date_source: str | None = None
    metadata_info: str | None = None  # JSON text
    upload_status: str = "pending"
    last_error: str | None = None
    warnings: list[str] = field(default_factory=list)  # metadata problems, for the log (not a column)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its values (a scan's workers send every row back): half the cost of the default, which
        # sends a dict of the field names and sets each one back. A subclass, or an attribute set beside the
        # fields, goes the default way (nothing makes one today).
        if type(self) is ScannedFile and len(self.__dict__) == _SCANNED_FILE_FIELDS:
            return ScannedFile, _scanned_file_values(self)
        return copyreg.__newobj__, (type(self),), self.__dict__


class PendingUpload(NamedTuple):
    """A row ready to upload, with what the uploader needs to send and re-check it."""

    id: int
    filepath: str
    filepath_b64: str | None
    file_size: int
    mtime_ns: int | None
    hash: str
    sha1: str | None
    extension: str
    media_type: str | None
    date_taken: str | None
    metadata_info: str | None
    upload_attempts: int
    upload_status: str
    sending_to: int | None = None  # the target its bytes were offered to (the server lacked them then)
    replaces: str | None = None  # its earlier version in Immich, which these bytes are to replace (JSON)


class DoneFile(NamedTuple):
    """A file Immich has (uploaded, or found there): what albums, stacks, deletion and --verify need."""

    id: int
    filepath: str
    filepath_b64: str | None
    upload_status: str
    asset_id: str
    file_size: int
    mtime_ns: int | None
    extension: str
    album_name: str | None
    stack_id: str | None
    sha1: str | None
    target_id: int | None
    media_type: str | None
    date_taken: str | None
    metadata_info: str | None
    sidecar_path: str | None  # the sidecar that went up with the file (its path and SHA-1 then)
    sidecar_sha1: str | None
    deleted: bool  # the local copy was deleted after Immich confirmed it
    tags_done: str | None = None  # JSON list of the tags its asset was given
    live_partner_id: int | None = None  # the row of its live photo partner
    live_video_id: str | None = None  # a photo: the clip asset it is linked to in Immich
    upload_date: str | None = None  # when Immich was found to hold it (UTC)


class UploadedRow(NamedTuple):
    """A row some Immich holds, as a server move or --verify re-checks it."""

    id: int
    sha1: str
    upload_status: str
    target_id: int | None
    asset_id: str | None
    filepath: str
    deleted: bool  # the local copy was deleted after Immich confirmed it


class YearProgress(NamedTuple):
    year: str
    done_files: int
    done_bytes: int
    waiting_files: int
    waiting_bytes: int


class ScopeCounts(NamedTuple):
    scope: str
    files: int
    size_bytes: int
    in_immich: int
    pending: int
    failed: int


class FailedFile(NamedTuple):
    filepath: str
    last_error: str
    attempts: int
    error_kind: str | None
    next_attempt_at: str | None  # UTC, minutes


class TakeoutRow(NamedTuple):
    """A Takeout row as a late JSON, a copy's metadata or an update in Immich needs it."""

    id: int
    path_hash: str
    filepath: str
    upload_status: str
    asset_id: str | None
    target_id: int | None
    metadata_info: str | None
    date_taken: str | None
    date_source: str | None
    mtime_ns: int | None
    sha1: str | None


class LiveRow(NamedTuple):
    """What live photo pairing reads of a row: its name and metadata, and where its upload stands."""

    id: int
    path_hash: str
    filepath: str
    extension: str
    media_type: str | None
    metadata_info: str | None
    fingerprinted: bool
    upload_status: str
    asset_id: str | None
    target_id: int | None
    next_attempt_at: str | None
    live_partner_id: int | None
    live_video_id: str | None


class ReplaceRow(NamedTuple):
    """A file whose earlier version in Immich its new one is to replace (`replaces`, JSON)."""

    id: int
    filepath: str
    filepath_b64: str | None
    upload_status: str
    asset_id: str | None
    target_id: int | None
    sha1: str | None
    media_type: str | None
    date_taken: str | None
    metadata_info: str | None
    sidecar_path: str | None  # the sidecar sent with the new version, if one was
    replaces: str


class LivePair(NamedTuple):
    """A photo and its clip, both in Immich, whose link is still to be made there."""

    photo_id: int
    filepath: str
    filepath_b64: str | None
    photo_status: str
    photo_asset_id: str
    clip_id: int
    clip_asset_id: str
    metadata_info: str | None
    media_type: str | None
    date_taken: str | None


class RunProblem(NamedTuple):
    """Something a run counts as an error that is no failed row (a folder it could not list, a link it would
    not follow, a file it could not delete): kept with the run's summary, so Recent errors can list it."""

    path: str
    reason: str
    advice: str = ""


class UploadOutcome(NamedTuple):
    """The result of one upload attempt as it is recorded."""

    status: str  # success | duplicate | error | skipped
    asset_id: str | None = None
    api_response: str | None = None
    error: str | None = None
    error_kind: str | None = None  # for errors: what failed (see uploader.FAILURE_ADVICE)
    retry_at: str | None = None  # for errors: not tried again before this UTC time
    target_id: int | None = None  # the Immich server and user the status refers to
    sidecar_path: str | None = None  # for success: the sidecar sent with the file
    sidecar_sha1: str | None = None
    live_video_id: str | None = None  # for success: the clip asset the photo was linked to as it was sent


# Records read from the database are NamedTuples: cheap to define at start-up and small in memory (a
# rescan of a million files holds a million KnownFiles).

# --- schema -------------------------------------------------------------------------------------------

# The client's original table, verbatim for MySQL (migration 0001).
CLIENT_TABLE_MYSQL = """
CREATE TABLE IF NOT EXISTS media_files (
    id INT AUTO_INCREMENT PRIMARY KEY,
    filepath VARCHAR(1000) NOT NULL,
    filename VARCHAR(255) NOT NULL,
    directory VARCHAR(745),
    file_size BIGINT,
    hash VARCHAR(64) NOT NULL,
    extension VARCHAR(10),
    upload_status ENUM('pending', 'success', 'duplicate', 'error') DEFAULT 'pending',
    api_response TEXT,
    upload_date TIMESTAMP NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
    INDEX idx_filepath (filepath(255)),
    INDEX idx_hash (hash),
    INDEX idx_status (upload_status),
    UNIQUE KEY uk_filepath (filepath(768))
) DEFAULT CHARSET=utf8mb4
"""

CLIENT_TABLE_SQLITE = """
CREATE TABLE IF NOT EXISTS media_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    filepath TEXT NOT NULL,
    filename TEXT NOT NULL,
    directory TEXT,
    file_size INTEGER,
    hash TEXT NOT NULL,
    extension TEXT,
    upload_status TEXT DEFAULT 'pending',
    api_response TEXT,
    upload_date TIMESTAMP NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)
"""

# Columns the tool adds to the client's table: (name, MySQL type, SQLite type).
TOOL_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("metadata_info", "TEXT NULL", "TEXT"),
    ("path_hash", "CHAR(64) NULL", "TEXT"),
    ("filepath_b64", "TEXT NULL", "TEXT"),
    ("sha1", "CHAR(40) NULL", "TEXT"),
    ("mtime_ns", "BIGINT NULL", "INTEGER"),
    ("media_type", "VARCHAR(10) NULL", "TEXT"),
    ("date_taken", "DATETIME NULL", "TEXT"),
    ("date_source", "VARCHAR(16) NULL", "TEXT"),
    ("immich_asset_id", "VARCHAR(64) NULL", "TEXT"),
    ("upload_attempts", "INT NOT NULL DEFAULT 0", "INTEGER NOT NULL DEFAULT 0"),
    ("last_error", "TEXT NULL", "TEXT"),
    ("missing_since", "TIMESTAMP NULL", "TIMESTAMP"),
)

# Migration 0003: where each file went in Immich (album, stack) and whether its local copy was deleted.
ORGANIZE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("album_name", "TEXT NULL", "TEXT"),
    ("album_id", "VARCHAR(64) NULL", "TEXT"),
    ("stack_id", "VARCHAR(64) NULL", "TEXT"),
    ("deleted_at", "TIMESTAMP NULL", "TIMESTAMP"),
)

# Migration 0005: which Immich (server and user) a row's status refers to, when a failed row is tried
# again and why it failed, and the sidecar that went up with the file (deletion removes only that one).
TARGET_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("target_id", "INT NULL", "INTEGER"),
    ("error_kind", "VARCHAR(16) NULL", "TEXT"),
    ("next_attempt_at", "TIMESTAMP NULL", "TIMESTAMP"),
    ("sidecar_path", "TEXT NULL", "TEXT"),
    ("sidecar_sha1", "CHAR(40) NULL", "TEXT"),
)

# Migration 0011: an edited file's earlier version in Immich that its new one is to replace (JSON: the asset,
# its target and SHA-1, the date and camera it had, how far the replacement got), the row of its live photo
# partner (a photo's motion clip, a clip's photo) and the clip asset the photo was linked to in Immich, and
# the tags the file's asset was given.
FEATURE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("replaces", "TEXT NULL", "TEXT"),
    ("live_partner_id", "INT NULL", "INTEGER"),
    ("live_video_id", "VARCHAR(64) NULL", "TEXT"),
    ("tags_done", "TEXT NULL", "TEXT"),
)

# What was done for a row's asset in Immich (its album, its stack, the sidecar sent with it, its live photo's
# link, its tags): none of it holds for another asset, be it new content or the same content on another server.
ASSET_STEP_COLUMNS = (
    "album_name", "album_id", "stack_id", "sidecar_path", "sidecar_sha1", "live_video_id", "tags_done",
)  # fmt: skip

# Migration 0006: whose row it is (a machine's, or a shared library's) and which machine holds it now.
SCOPE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("scope", "VARCHAR(120) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ("claimed_by", "VARCHAR(100) NULL", "TEXT"),
    ("claim_until", "DATETIME NULL", "TEXT"),
)

# Migration 0007: a deletion in progress (the temporary name the file was moved to, recorded before the move,
# so a kill leaves a row that says where the file is), and the Immich target a row's bytes were being sent to
# (set once the server said it lacked them: a "duplicate" answer later is this machine's own upload).
SAFETY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("deleting_as", "TEXT NULL", "TEXT"),
    ("sending_to", "INT NULL", "INTEGER"),
)

KNOWN_COLUMNS = "path_hash, id, file_size, mtime_ns, upload_status, hash <> '', missing_since IS NOT NULL"
PENDING_COLUMNS = (
    "id, filepath, filepath_b64, file_size, mtime_ns, hash, sha1, extension, media_type, date_taken, "
    "metadata_info, upload_attempts, upload_status, sending_to, replaces"
)
REPORT_COLUMNS = (
    "scope", "filepath", "upload_status", "last_error", "immich_asset_id", "file_size", "date_taken", "date_source",
    "upload_attempts", "upload_date", "missing_since", "sha1",
)  # fmt: skip
SCANNED_FIELDS = (
    "filepath", "filepath_b64", "filename", "directory", "extension", "media_type", "file_size", "mtime_ns",
    "hash", "sha1", "date_taken", "date_source", "metadata_info", "upload_status", "last_error",
)  # fmt: skip


RECORD_UPLOAD_SQL = (
    "UPDATE media_files SET upload_status = ?, immich_asset_id = COALESCE(?, immich_asset_id), "
    "api_response = ?, last_error = ?, error_kind = ?, next_attempt_at = ?, "
    "upload_attempts = upload_attempts + ?, "
    "upload_date = CASE WHEN ? = 1 THEN ? ELSE upload_date END, "
    "target_id = CASE WHEN ? = 1 THEN ? ELSE target_id END, "
    "sidecar_path = CASE WHEN ? = 1 THEN ? ELSE sidecar_path END, "
    "sidecar_sha1 = CASE WHEN ? = 1 THEN ? ELSE sidecar_sha1 END, "
    "sending_to = CASE WHEN ? = 1 THEN NULL ELSE sending_to END, "
    "live_video_id = CASE WHEN ? = 1 THEN ? ELSE live_video_id END, "
    "claimed_by = NULL, claim_until = NULL, updated_at = ? WHERE id = ?"
)
OUTCOME_BATCH_ROWS = 64
OUTCOME_WAIT_S = 0.5


class _PendingOutcomes:
    """Upload results waiting for their commit (Store.record_upload), behind a lock of their own: adding
    one never waits for the store."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[tuple[Any, ...]] = []
        self._since = 0.0

    def add(self, values: tuple[Any, ...]) -> bool:
        """Queue one; True when the batch is due."""
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.append(values)
            return len(self._rows) >= OUTCOME_BATCH_ROWS or time.monotonic() - self._since >= OUTCOME_WAIT_S

    def due(self) -> bool:
        with self._lock:
            return bool(self._rows) and time.monotonic() - self._since >= OUTCOME_WAIT_S

    def take(self) -> list[tuple[Any, ...]]:
        with self._lock:
            rows, self._rows = self._rows, []
            return rows


class _StoreLock:
    """The store's reentrant lock. Whoever takes it first (not from inside another use of the store) commits
    the waiting upload results before going on, so no read misses them and no transaction of another
    thread takes them in (to lose them with its own rollback)."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._flush = flush
        self._depth = 0  # changed only by the thread holding the lock

    def __enter__(self) -> None:
        self._lock.acquire()
        self._depth += 1
        if self._depth == 1:
            try:
                self._flush()
            except BaseException:
                self._depth -= 1
                self._lock.release()
                raise

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        self._lock.release()


class Store:
    """The interface both backends share. Every public method is thread-safe and commits its own work."""

    backend = "?"
    placeholder = "?"
    backend_errors: tuple[type[Exception], ...] = (sqlite3.Error,)
    now_sql = ""  # the database server's current UTC time: leases run on one clock for every machine
    ignore_duplicate_sql = ""  # the INSERT suffix that leaves an existing row alone
    replace_value_sql = ""  # the INSERT suffix that sets `value` (and its time) on an existing row instead
    autocommits = False  # a statement outside a transaction is committed on its own

    def __init__(self, scope: str = "m:local", machine: str = "local") -> None:
        self._lock = _StoreLock(self._flush_outcomes)
        self._outcomes = _PendingOutcomes()
        self._in_transaction = False
        self.scope = scope  # whose rows this run works on (config.Settings.scope)
        self.machine = machine

    # -- backend hooks
    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...
    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]: ...
    def _begin(self) -> None: ...
    def _commit(self) -> None: ...
    def _rollback(self) -> None: ...
    def _columns(self) -> set[str]: ...
    def _migrate_tool_columns(self) -> None: ...
    def acquire_run_lock(self) -> bool: ...
    def release_run_lock(self) -> None: ...

    def run_lock_lost(self) -> bool:
        """Another run took this run's lock over (after a database restart): stop before the next upload."""
        return False

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        yield  # SQLite: the run lock is already the database's one lock

    def checkpoint_in_background(self) -> None:
        """Start copying what was written so far into the database file while the run goes on (SQLite's
        WAL); close() waits for it. Nothing to do on MySQL."""

    def close(self) -> None: ...

    def describe(self) -> str:
        return self.backend

    def sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """One transaction: commits at the end, rolls back on any exception."""
        with self._lock:
            if self._in_transaction:
                yield
                return
            self._begin()
            self._in_transaction = True
            try:
                yield
            except BaseException:
                self._in_transaction = False
                self._rollback()
                raise
            self._in_transaction = False
            self._commit()

    def _is_lost(self, exc: Exception) -> bool:
        return False

    def _reconnect(self) -> None: ...

    def _transaction(self, work: Callable[[], Any], single_statement: bool = False) -> Any:
        """Run `work` in one transaction. One lost to a dropped connection is replayed once on a new one,
        one that lost a deadlock to another machine a few times after a short random wait (the server
        rolled it back either way, so replaying cannot write anything twice). A single statement on a
        connection that autocommits is its own transaction: no BEGIN and COMMIT round trips."""
        with self._lock:
            conflicts = 0
            while True:
                try:
                    with self._unit(single_statement):
                        return work()
                except self.backend_errors as exc:
                    if self._in_transaction:
                        raise
                    if self._is_conflict(exc) and conflicts < CONFLICT_RETRIES:
                        conflicts += 1
                        log.debug("transaction lost to another machine's (%s); again (%d)", exc, conflicts)
                        time.sleep(random.uniform(0.01, 0.05) * conflicts)
                        continue
                    if not self._is_lost(exc):
                        raise DatabaseError(f"the {self.backend} database failed: {exc}") from exc
                    log.warning("database connection lost (%s); reconnecting and retrying once", exc)
                    self._reconnect()
                    try:
                        with self.atomic():
                            return work()
                    except self.backend_errors as again:
                        raise DatabaseError(f"the {self.backend} database failed: {again}") from again

    def _is_conflict(self, exc: Exception) -> bool:
        """A deadlock or lock wait lost to another writer: worth trying again."""
        return False

    def _unit(self, single_statement: bool) -> AbstractContextManager[None]:
        return nullcontext() if single_statement and self.autocommits else self.atomic()

    def _write_one(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._transaction(lambda: self._execute(sql, params), single_statement=True))

    def _write_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._transaction(lambda: self._executemany(sql, rows))

    # -- migrations
    def migrate(self) -> list[str]:
        """Apply every migration not yet recorded; returns the names applied."""
        with self._lock:
            self._execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name VARCHAR(100) PRIMARY KEY, "
                "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
            )
            self._execute(
                "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY "
                + ("AUTO_INCREMENT" if self.backend == "mysql" else "AUTOINCREMENT")
                + ", kind VARCHAR(20) NOT NULL, started_at TIMESTAMP NULL, finished_at TIMESTAMP NULL, "
                "exit_status INT, summary " + ("MEDIUMTEXT" if self.backend == "mysql" else "TEXT") + ")"
            )
            done = {row[0] for row in self._query("SELECT name FROM schema_migrations")}
            applied = []
            for name, step in self._migrations():
                if name in done:
                    continue
                log.info("applying database migration %s", name)
                step()
                self._execute(self.sql("INSERT INTO schema_migrations (name) VALUES (?)"), (name,))
                applied.append(name)
            return applied

    def _migrations(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("0001_client_media_files", self._create_client_table),
            ("0002_tool_columns", self._migrate_tool_columns),
            ("0003_album_stack_delete", lambda: self._add_columns(ORGANIZE_COLUMNS)),
            ("0004_tool_state", self._create_state_table),
            ("0005_targets_retries_sidecars", self._migrate_targets),
            ("0006_machines_and_shared_libraries", self._migrate_scopes),
            ("0007_deletion_intents_and_sending", lambda: self._add_columns(SAFETY_COLUMNS)),
            ("0009_scrub_url_passwords", self._scrub_url_passwords),
            ("0010_takeout_archives_json_updates", self._create_takeout_tables),
            ("0011_edits_live_photos_tags", lambda: self._add_columns(FEATURE_COLUMNS)),
            ("0012_claims_index_of_claimed_rows", self._index_claimed_rows_only),
        ]

    def _index_claimed_rows_only(self) -> None:
        """SQLite: idx_claims holds only the rows a machine has claimed (every lookup is `claimed_by = ?`),
        not a NULL entry for each of a first scan's rows (a tenth of its inserts' cost). MySQL has no
        partial indexes: its index stays."""
        if self.backend == "sqlite":
            with self.atomic():  # one transaction: never a table without the index, nor two runs creating it
                self._execute("DROP INDEX IF EXISTS idx_claims")
                self._execute(
                    "CREATE INDEX IF NOT EXISTS idx_claims ON media_files (claimed_by) WHERE claimed_by IS NOT NULL"
                )

    def _scrub_url_passwords(self) -> None:
        """Earlier versions stored IMMICH_URL as written, the password of a user:password@ in it included,
        where every machine of a shared database can read it: the targets' addresses and the runs'
        summaries (their messages name the server) get it masked, as Settings.display_url does now."""
        like = self.sql("SELECT id, server_url FROM immich_targets WHERE server_url LIKE ?")
        for target_id, url in self._query(like, ("%@%",)):
            if mask_url_password(url) != url:
                update = self.sql("UPDATE immich_targets SET server_url = ? WHERE id = ?")
                self._execute(update, (mask_url_password(url), target_id))
        for run_id, text in self._query(
            self.sql("SELECT id, summary FROM runs WHERE summary LIKE ?"), ("%@%",)
        ):
            try:
                masked = json.dumps(_mask_strings(json.loads(text)))
            except ValueError:  # not written by record_run: masked as text
                masked = mask_url_password(text)
            if masked != text:
                self._execute(self.sql("UPDATE runs SET summary = ? WHERE id = ?"), (masked, run_id))

    def _migrate_targets(self) -> None:
        auto = "AUTO_INCREMENT" if self.backend == "mysql" else "AUTOINCREMENT"
        self._execute(
            f"CREATE TABLE IF NOT EXISTS immich_targets (id INTEGER PRIMARY KEY {auto}, "
            "identity VARCHAR(100) NOT NULL UNIQUE, server_url TEXT, user_email TEXT, "
            "first_seen_at TIMESTAMP NULL, last_seen_at TIMESTAMP NULL)"
        )
        self._add_columns(TARGET_COLUMNS)
        self._add_index("idx_sha1", "sha1")

    def _create_state_table(self) -> None:
        self._execute(
            "CREATE TABLE IF NOT EXISTS tool_state (name VARCHAR(100) PRIMARY KEY, value TEXT, "
            "updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
        )

    def get_state(self, name: str) -> str | None:
        """A small named value that must outlive a run (e.g. the queues a killed run left paused)."""
        with self._lock:
            rows = self._query(self.sql("SELECT value FROM tool_state WHERE name = ?"), (name,))
        return rows[0][0] if rows else None

    def set_deleting(self, running: bool) -> None:
        """Recorded while a run of this scope deletes files (organize.Deleter), cleared once none is left under
        a temporary name: a state still set at the next run's start says a kill interrupted it."""
        self.set_state(f"{DELETING_STATE}:{self.scope}", "running" if running else None)

    def deletion_interrupted(self) -> bool:
        return self.get_state(f"{DELETING_STATE}:{self.scope}") is not None

    def set_state(self, name: str, value: str | None) -> None:
        # One statement: machines starting together each write their state, and a DELETE then INSERT
        # lets two of them insert the same name (READ COMMITTED takes no gap lock on the missing row).
        if value is None:
            self._write_one(self.sql("DELETE FROM tool_state WHERE name = ?"), (name,))
        else:
            upsert = f"INSERT INTO tool_state (name, value) VALUES (?, ?) {self.replace_value_sql}"
            self._write_one(self.sql(upsert), (name, value))

    def _migrate_scopes(self) -> None:
        """Rows of earlier versions belong to the machine that runs this migration; the unique key becomes
        (scope, path_hash), so the same path on two machines is two files."""
        self._add_columns(SCOPE_COLUMNS)
        self._execute(self.sql("UPDATE media_files SET scope = ? WHERE scope = ''"), (f"m:{self.machine}",))
        self._execute(
            self.sql("UPDATE tool_state SET name = ? WHERE name = 'current_target'"),
            (f"current_target:m:{self.machine}",),
        )
        if "scope" not in set(self._column_names("runs")):
            self._execute("ALTER TABLE runs ADD COLUMN scope VARCHAR(120) NULL")
        self._execute(self.sql("UPDATE runs SET scope = ? WHERE scope IS NULL"), (f"m:{self.machine}",))
        self._rekey_by_scope()

    def _rekey_by_scope(self) -> None: ...

    def _add_columns(self, columns: Sequence[tuple[str, str, str]]) -> None:
        """ADD COLUMN for each (name, MySQL type, SQLite type) the table lacks: re-runnable."""
        existing = self._columns()
        for name, mysql_type, sqlite_type in columns:
            if name not in existing:
                column_type = mysql_type if self.backend == "mysql" else sqlite_type
                self._execute(f"ALTER TABLE media_files ADD COLUMN {name} {column_type}")

    def _add_index(self, name: str, columns: str) -> None:
        if self.backend == "mysql":
            if name not in {r[2] for r in self._query("SHOW INDEX FROM media_files")}:
                self._execute(f"ALTER TABLE media_files ADD INDEX {name} ({columns})")
        else:
            self._execute(f"CREATE INDEX IF NOT EXISTS {name} ON media_files ({columns})")

    def _create_client_table(self) -> None:
        self._execute(CLIENT_TABLE_MYSQL if self.backend == "mysql" else CLIENT_TABLE_SQLITE)

    # -- scanning
    def iter_known_files(self) -> Iterator[KnownRow]:
        """Every row as (path_hash, then the fields of KnownFile), streamed, so a rescan of a million files
        builds its compact index without a million-row list in between. In table order: through an index
        on scope, each row is one more lookup (3.5x slower for a million rows in SQLite); the `+` keeps
        SQLite off those indexes. MySQL ignores the `+` and chooses by cost: a table scan when the scope
        holds most rows, its index when many machines share the table. Plain tuples: a record object per
        row was a tenth of an unchanged rescan."""
        sql = self.sql(f"SELECT {KNOWN_COLUMNS} FROM media_files WHERE +scope = ?")
        return self._stream(sql, (self.scope,))

    def count_under(self, folder: str | None) -> int:
        """Rows of this scope present on disk (as last scanned) whose path lies under `folder`, or is it (a
        source named as a file) (None: all; a shared library's rows lie under its mount point wherever that is)."""
        sql = "SELECT COUNT(*) FROM media_files WHERE scope = ? AND missing_since IS NULL"
        params: list[Any] = [self.scope]
        if folder is not None:
            prefix = folder.rstrip("/") + "/"
            sql += " AND (SUBSTR(filepath, 1, ?) = ? OR filepath = ?)"
            params += [len(prefix), prefix, folder.rstrip("/")]
        with self._lock:
            rows = self._query(self.sql(sql), params)
        return int(rows[0][0])

    def paths_of(self, ids: Sequence[int]) -> list[tuple[int, str, str | None]]:
        """(id, filepath, filepath_b64) of these rows."""
        found: list[tuple[int, str, str | None]] = []
        for chunk in _chunks(list(ids), BATCH_ROWS):
            sql = f"SELECT id, filepath, filepath_b64 FROM media_files WHERE id IN ({', '.join('?' * len(chunk))})"
            with self._lock:
                found += [(int(r[0]), r[1], r[2]) for r in self._query(self.sql(sql), chunk)]
        return found

    def save_scanned(self, new: Sequence[ScannedFile], changed: Sequence[tuple[int, ScannedFile]]) -> None:
        """Insert new rows and update changed ones, in one transaction. A changed file goes back to its
        new status (pending, or error when it could not be read) and keeps its earlier asset id."""
        now = utc_now()
        columns = ("scope", "path_hash", *SCANNED_FIELDS, "created_at", "updated_at")
        insert = f"INSERT INTO media_files ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        # Same content (a touched file, or a row of the client's own table without mtime): the upload state
        # stays. New content is a new asset: tried at once whatever wait an earlier failure had earned, and
        # its album, stack and sidecar are still to be done. The CASEs come first: MySQL evaluates SET left
        # to right on the new values, and `hash` is set below. A file seen on disk was not deleted, whatever
        # a row says; only this machine's own claim on the row is let go.
        same = "hash = ? AND upload_status IN ('success', 'duplicate')"
        kept = [c for c in SCANNED_FIELDS if c not in ("upload_status", "last_error")]
        reset_on_new_content = ("next_attempt_at", "error_kind", *ASSET_STEP_COLUMNS)
        update = (
            "UPDATE media_files SET "
            + ", ".join(f"{c} = CASE WHEN hash = ? THEN {c} ELSE NULL END" for c in reset_on_new_content)
            + f", last_error = CASE WHEN {same} THEN last_error ELSE ? END, "
            f"upload_status = CASE WHEN {same} THEN upload_status ELSE ? END, "
            + ", ".join(f"{c} = ?" for c in kept)
            + ", missing_since = NULL, deleted_at = NULL, replaces = ?, "
            "claim_until = CASE WHEN claimed_by = ? THEN NULL ELSE claim_until END, "
            "claimed_by = CASE WHEN claimed_by = ? THEN NULL ELSE claimed_by END, updated_at = ? WHERE id = ?"
        )

        def write() -> None:
            if new:
                self._executemany(
                    self.sql(insert),
                    [(self.scope, path_hash(f.raw_path), *_scanned_values(f), now, now) for f in new],
                )
            if changed:
                replaces = self._replace_intents(changed)
                self._executemany(
                    self.sql(update),
                    [
                        (
                            *(f.hash for _ in reset_on_new_content),
                            f.hash,
                            f.last_error,
                            f.hash,
                            f.upload_status,
                            *(getattr(f, c) for c in kept),
                            replaces.get(row_id),
                            self.machine,
                            self.machine,
                            now,
                            row_id,
                        )
                        for row_id, f in changed
                    ],
                )

        self._transaction(write)

    def _replace_intents(self, changed: Sequence[tuple[int, ScannedFile]]) -> dict[int, str | None]:
        """What `replaces` becomes for rows scanned again (read in the scan's transaction): a file this
        database had sent that now holds other bytes at the same path records the asset it had and the date
        and camera it was taken with, which the rescan overwrites in the row (edits.py decides, after the new
        bytes are in Immich, whether they replace it). An intent already there stays through more edits; a file
        back to the bytes it had sent has nothing to replace. A Takeout's zips are not edited in place."""
        if self.scope.startswith("t:"):
            return {}
        intents: dict[int, str | None] = {}
        by_id = dict(changed)
        for chunk in _chunks(list(by_id), BATCH_ROWS):
            rows = self._query(
                self.sql(
                    "SELECT id, hash, upload_status, immich_asset_id, target_id, sha1, date_taken, metadata_info, "
                    f"replaces FROM media_files WHERE id IN ({', '.join('?' * len(chunk))})"
                ),
                chunk,
            )
            for row_id, old_hash, status, asset_id, target_id, sha1, taken, info, replaces in rows:
                scanned = by_id[int(row_id)]
                if scanned.hash == old_hash or not scanned.hash:
                    intents[int(row_id)] = replaces  # the same bytes, or none read: as it was
                elif replaces is not None:
                    back = json.loads(replaces).get("sha1") == scanned.sha1
                    intents[int(row_id)] = None if back else replaces
                elif (
                    status == "success"
                    and asset_id
                    and target_id is not None
                    and scanned.upload_status == "pending"
                ):
                    old = json.loads(info or "{}")
                    intents[int(row_id)] = json.dumps(
                        {
                            "asset_id": asset_id, "target_id": target_id, "sha1": sha1,
                            "date_taken": taken if isinstance(taken, str) or taken is None else str(taken)[:19],
                            "date_used": old.get("date_used"), "date_source": old.get("date_source"),
                            "camera_make": old.get("camera_make"), "camera_model": old.get("camera_model"),
                        }
                    )  # fmt: skip
        if any(value is not None for value in intents.values()):
            self.set_state(f"{REPLACE_STATE}:{self.scope}", "1")
        return intents

    def replacements(self) -> list[ReplaceRow] | None:
        """Rows of this scope with an earlier version to replace in Immich; None when none was recorded since
        the last look (nothing is read then)."""
        if self.get_state(f"{REPLACE_STATE}:{self.scope}") is None:
            return None
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT id, filepath, filepath_b64, upload_status, immich_asset_id, target_id, sha1, media_type, "
                    "date_taken, metadata_info, sidecar_path, replaces FROM media_files "
                    "WHERE scope = ? AND replaces IS NOT NULL ORDER BY id"
                ),
                (self.scope,),
            )
        return [ReplaceRow(*_date_to_text(r, 8)) for r in rows]

    def set_replaces(self, row_id: int, replaces: str | None) -> None:
        """A replacement's progress (JSON), or None once it is done or given up."""
        self._write_one(
            self.sql("UPDATE media_files SET replaces = ?, updated_at = ? WHERE id = ?"),
            (replaces, utc_now(), row_id),
        )

    def replacements_looked_at(self) -> None:
        self.set_state(f"{REPLACE_STATE}:{self.scope}", None)

    def asset_mapped_by_others(self, asset_id: str, target_id: int, row_id: int) -> bool:
        """Another row (of any machine) records `asset_id` on this target as where its file is: its file on disk,
        or deleted here after Immich confirmed it (that asset is then its only copy)."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT 1 FROM media_files WHERE immich_asset_id = ? AND target_id = ? AND id <> ? "
                    "AND upload_status IN ('success', 'duplicate') AND (missing_since IS NULL OR deleted_at IS NOT NULL) "
                    "LIMIT 1"
                ),
                (asset_id, target_id, row_id),
            )
        return bool(rows)

    # -- claims on a shared library's files
    def _lease_until(self, lease_s: float) -> tuple[str, list[Any]]: ...

    def claim_rows(self, ids: Sequence[int], lease_s: float, waiting_only: bool = True) -> set[int]:
        """Claim these rows for this machine where no other machine holds a live claim (and, with
        `waiting_only`, the row still waits for upload); returns the ids won. Nobody else uploads or
        re-hashes a row while it is held."""
        won: set[int] = set()
        until, until_params = self._lease_until(lease_s)
        for chunk in _chunks(list(ids), BATCH_ROWS):
            marks = ", ".join("?" * len(chunk))
            update = self.sql(
                f"UPDATE media_files SET claimed_by = ?, claim_until = {until} WHERE id IN ({marks}) AND scope = ? "
                + ("AND upload_status IN ('pending', 'error') " if waiting_only else "")
                + f"AND (claimed_by IS NULL OR claimed_by = ? OR claim_until < {self.now_sql})"
            )
            self._write_one(update, [self.machine, *until_params, *chunk, self.scope, self.machine])
            with self._lock:
                rows = self._query(
                    self.sql(f"SELECT id FROM media_files WHERE id IN ({marks}) AND claimed_by = ?"),
                    [*chunk, self.machine],
                )
            won.update(int(r[0]) for r in rows)
        return won

    def claim_new_paths(self, files: Sequence[ScannedFile], lease_s: float) -> dict[str, int]:
        """For files a scan of a shared library found that must be hashed: a claimed placeholder row each
        (no hash yet) or the expired placeholder of a machine that died. Returns path_hash -> row id of the
        files this machine won; a file another machine holds is that machine's to hash."""
        if not files:
            return {}
        now = utc_now()
        until, until_params = self._lease_until(lease_s)
        files = sorted(files, key=lambda f: path_hash(f.raw_path))  # one lock order for every machine
        keys = [path_hash(f.raw_path) for f in files]
        columns = ("scope", "path_hash", *SCANNED_FIELDS, "created_at", "updated_at", "claimed_by")
        insert = self.sql(
            f"INSERT INTO media_files ({', '.join(columns)}, claim_until) VALUES ({', '.join('?' * len(columns))}, "
            f"{until}) {self.ignore_duplicate_sql}"
        )
        marks = ", ".join("?" * len(keys))
        take_over = self.sql(
            f"UPDATE media_files SET claimed_by = ?, claim_until = {until} WHERE scope = ? AND path_hash IN ({marks}) "
            f"AND hash = '' AND (claimed_by IS NULL OR claimed_by = ? OR claim_until < {self.now_sql})"
        )

        def write() -> None:
            self._executemany(
                insert,
                [
                    (self.scope, key, *_scanned_values(f), now, now, self.machine, *until_params)
                    for key, f in zip(keys, files, strict=True)
                ],
            )
            self._execute(take_over, [self.machine, *until_params, self.scope, *keys, self.machine])

        self._transaction(write)
        with self._lock:
            rows = self._query(
                self.sql(
                    f"SELECT path_hash, id FROM media_files WHERE scope = ? AND path_hash IN ({marks}) "
                    "AND claimed_by = ? AND hash = ''"
                ),
                [self.scope, *keys, self.machine],
            )
        return {str(r[0]): int(r[1]) for r in rows}

    def renew_claims(self, lease_s: float) -> int:
        """Extend this machine's claims (a long upload keeps its file); a dead machine's just run out."""
        until, until_params = self._lease_until(lease_s)
        return self._write_one(
            self.sql(f"UPDATE media_files SET claim_until = {until} WHERE claimed_by = ? AND scope = ?"),
            [*until_params, self.machine, self.scope],
        )

    def expire_claims(self, machine: str) -> int:
        """Let `machine`'s claims here run out now, as they do when its lease passes unrenewed (a machine
        known to be dead need not be waited for; tests drive the lease's clock with it)."""
        until, until_params = self._lease_until(-1)
        return self._write_one(
            self.sql(f"UPDATE media_files SET claim_until = {until} WHERE claimed_by = ? AND scope = ?"),
            [*until_params, machine, self.scope],
        )

    def release_claims(self) -> int:
        """At the end of a run: what this machine claimed and did not finish is free for others at once."""
        return self._write_one(
            self.sql(
                "UPDATE media_files SET claimed_by = NULL, claim_until = NULL WHERE claimed_by = ? AND scope = ?"
            ),
            [self.machine, self.scope],
        )

    def set_missing(self, ids: Sequence[int], missing: bool) -> None:
        """Mark rows whose file disappeared (never delete them), or clear the mark when it came back (a file
        deleted after upload and put back is then a file on disk again)."""
        now = utc_now()
        if missing:
            sql = self.sql("UPDATE media_files SET missing_since = ?, updated_at = ? WHERE id = ?")
        else:
            sql = self.sql(
                "UPDATE media_files SET missing_since = ?, deleted_at = NULL, updated_at = ? WHERE id = ?"
            )
        for chunk in _chunks(ids, BATCH_ROWS):
            self._write_many(sql, [(now if missing else None, now, i) for i in chunk])

    # -- uploading
    def pending_uploads(
        self,
        limit: int | None = None,
        ids: Sequence[int] | None = None,
        path_hashes: Sequence[str] | None = None,
        failed_only: bool = False,
    ) -> list[PendingUpload]:
        """Rows to upload, fingerprinted and present on disk: pending ones newest first (date taken, else
        mtime), then failed ones whose wait is over, so a file that keeps failing never crowds out new
        ones. With `ids` or `path_hashes`, only those rows (the sync pipeline asks for what it just scanned);
        with `failed_only`, every failed row, waiting or not (Retry errors)."""
        sql, params = self._pending_query(limit, ids, path_hashes, failed_only)
        if sql is None:
            return []
        with self._lock:
            rows = self._query(self.sql(sql), params)
        return [PendingUpload(*_date_to_text(r)) for r in rows]

    def iter_pending_uploads(self, failed_only: bool = False) -> Iterator[PendingUpload]:
        """pending_uploads() streamed, in the same order, for a library too big to hold in memory."""
        sql, params = self._pending_query(None, None, None, failed_only)
        assert sql is not None
        for r in self._stream(self.sql(sql), params):
            yield PendingUpload(*_date_to_text(r))

    def _pending_query(
        self,
        limit: int | None,
        ids: Sequence[int] | None,
        path_hashes: Sequence[str] | None,
        failed_only: bool,
    ) -> tuple[str | None, list[Any]]:
        if failed_only:
            where = "scope = ? AND upload_status = 'error' AND hash <> '' AND missing_since IS NULL"
            params: list[Any] = [self.scope]
        else:
            where = (
                "scope = ? AND (upload_status = 'pending' OR (upload_status = 'error' AND "
                "(next_attempt_at IS NULL OR next_attempt_at <= ?))) AND hash <> '' AND missing_since IS NULL"
            )
            params = [self.scope, utc_now()]
        for column, values in (("id", ids), ("path_hash", path_hashes)):
            if values is None:
                continue
            if not values:
                return None, []
            where += f" AND {column} IN ({', '.join('?' * len(values))})"
            params.extend(values)
        # date_taken is NULL only for rows of older versions; they sort by mtime.
        order = (
            "CASE WHEN upload_status = 'error' THEN 1 ELSE 0 END, "
            "CASE WHEN date_taken IS NULL THEN 1 ELSE 0 END, date_taken DESC, mtime_ns DESC, id"
        )
        sql = f"SELECT {PENDING_COLUMNS} FROM media_files WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql, params

    def waiting_errors(self) -> tuple[int, str | None]:
        """Failed rows still waiting before their next attempt, and the earliest time one is due."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT COUNT(*), MIN(next_attempt_at) FROM media_files WHERE scope = ? AND "
                    "upload_status = 'error' AND next_attempt_at > ? AND missing_since IS NULL"
                ),
                (self.scope, utc_now()),
            )
        count, due = rows[0]
        return int(count or 0), None if due is None else str(due)[:19]

    def record_upload(self, row_id: int, outcome: UploadOutcome, count_attempt: bool = True) -> None:
        """Record one upload's result. A file Immich has now carries the target it is on and the sidecar that
        went up with it (none for a duplicate: the server kept its own).

        Results are committed OUTCOME_BATCH_ROWS at a time (or once the oldest has waited OUTCOME_WAIT_S),
        and before any other use of the store, so everything this process reads or writes next sees them.
        A commit per upload queued the eight upload threads behind one another: upload_files.py sending
        1,000 photos of 400 KB to the test server took 2.4-2.7 s, 1.6-1.7 s with batches.
        A kill loses at most the last batch, and nothing is sent twice for it: each of those rows was marked
        `sending_to` its target before its bytes went, so the next run's check finds them in Immich as
        this machine's own uploads."""
        now = utc_now()
        done = outcome.status in DONE_STATUSES
        values = (
            outcome.status,
            outcome.asset_id,
            _clip(outcome.api_response),
            _clip(outcome.error),
            outcome.error_kind,
            outcome.retry_at,
            1 if count_attempt else 0,
            int(done),
            now,
            int(done),
            outcome.target_id,
            int(done),
            outcome.sidecar_path,
            int(done),
            outcome.sidecar_sha1,
            int(done),
            int(done),
            outcome.live_video_id,
            now,
            row_id,
        )
        if self._outcomes.add(values):
            self.flush_outcomes()  # under the store's lock: batches commit in the order they were taken

    def flush_outcomes(self, due_only: bool = False) -> None:
        """Commit the upload results still waiting (see record_upload); with `due_only`, only once the oldest
        has waited OUTCOME_WAIT_S (the uploader's main thread asks while long uploads run)."""
        if due_only and not self._outcomes.due():
            return
        with self._lock:
            pass  # taking the lock commits them

    def _flush_before_close(self) -> None:
        try:
            self.flush_outcomes()
        except DatabaseError as exc:
            # The run is ending on this error already (its own line says so); those files are in Immich and
            # the next run finds them there as this machine's uploads.
            log.error("the last upload results could not be recorded: %s", exc)

    def _flush_outcomes(self) -> None:
        rows = self._outcomes.take()
        if rows:
            self._write_many(self.sql(RECORD_UPLOAD_SQL), rows)

    # -- live photos
    def live_rows(self, path_hashes: Sequence[str]) -> list[LiveRow]:
        """This scope's rows at these paths (of files on disk), as live photo pairing reads them."""
        found: list[LiveRow] = []
        for chunk in _chunks(list(path_hashes), BATCH_ROWS):
            sql = self.sql(
                "SELECT id, path_hash, filepath, extension, media_type, metadata_info, hash <> '', upload_status, "
                "immich_asset_id, target_id, next_attempt_at, live_partner_id, live_video_id FROM media_files "
                f"WHERE scope = ? AND missing_since IS NULL AND path_hash IN ({', '.join('?' * len(chunk))})"
            )
            with self._lock:
                rows = self._query(sql, [self.scope, *chunk])
            found += [
                LiveRow(int(r[0]), str(r[1]), str(r[2]), str(r[3] or ""), r[4], r[5], bool(r[6]), str(r[7]),
                        r[8], r[9], None if r[10] is None else str(r[10])[:19], r[11], r[12])
                for r in rows
            ]  # fmt: skip
        return found

    def record_live_pairs(self, partners: Sequence[tuple[int, int | None]]) -> None:
        """(row id, its live photo partner's row id or None) for rows whose pairing changed; a pair asks the
        next organize step to link it in Immich (a state flag, so runs without pairs do not look)."""
        sql = self.sql("UPDATE media_files SET live_partner_id = ?, updated_at = ? WHERE id = ?")
        now = utc_now()
        self._write_many(sql, [(partner, now, row_id) for row_id, partner in partners])
        if any(partner is not None for _, partner in partners):
            self.ask_to_link_live_photos()

    def ask_to_link_live_photos(self) -> None:
        """A live photo pair of this scope may be linkable in Immich now (unlinked_live_pairs looks)."""
        self.set_state(f"{LIVE_LINKS_STATE}:{self.scope}", "1")

    def unlinked_live_pairs(self, target_id: int) -> list[LivePair] | None:
        """Pairs of this scope whose photo and clip are both in Immich (on `target_id`) and not linked as
        recorded; None when no pair was recorded since the last look (nothing is read then)."""
        if self.get_state(f"{LIVE_LINKS_STATE}:{self.scope}") is None:
            return None
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT p.id, p.filepath, p.filepath_b64, p.upload_status, p.immich_asset_id, c.id, "
                    "c.immich_asset_id, p.metadata_info, p.media_type, p.date_taken FROM media_files p "
                    "JOIN media_files c ON c.id = p.live_partner_id WHERE p.scope = ? AND p.media_type = 'image' "
                    "AND p.upload_status IN ('success', 'duplicate') AND p.target_id = ? "
                    "AND p.immich_asset_id IS NOT NULL AND c.upload_status IN ('success', 'duplicate') "
                    "AND c.target_id = ? AND c.immich_asset_id IS NOT NULL "
                    "AND (p.live_video_id IS NULL OR p.live_video_id <> c.immich_asset_id) ORDER BY p.id"
                ),
                (self.scope, target_id, target_id),
            )
        return [LivePair(*_date_to_text(r)) for r in rows]

    def live_links_looked_at(self) -> None:
        """Every recorded pair was looked at: the next run reads none until a new one is recorded."""
        self.set_state(f"{LIVE_LINKS_STATE}:{self.scope}", None)

    def record_live_link(self, photo_id: int, clip_asset_id: str | None) -> None:
        """The photo's asset is linked to this clip asset in Immich (None: to none this tool made)."""
        self._write_one(
            self.sql("UPDATE media_files SET live_video_id = ?, updated_at = ? WHERE id = ?"),
            (clip_asset_id, utc_now(), photo_id),
        )

    def retry_now(self, error_kind: str, max_size_bytes: int | None = None) -> int:
        """Failed rows of this kind (and at most this size) are tried on this run, whatever wait they earned
        (the server has room again after a full quota, say). Returns how many."""
        sql = (
            "UPDATE media_files SET next_attempt_at = NULL WHERE scope = ? AND upload_status = 'error' "
            "AND error_kind = ? AND next_attempt_at IS NOT NULL"
        )
        params: list[Any] = [self.scope, error_kind]
        if max_size_bytes is not None:
            sql += " AND file_size <= ?"
            params.append(max_size_bytes)
        return self._write_one(self.sql(sql), params)

    def mark_sending(self, row_ids: Sequence[int], target_id: int) -> None:
        """These rows' bytes are about to be sent to `target_id`, which said it lacks them: should the answer be
        lost (a cut connection, a kill, the database away), a later "duplicate" from that server is this
        machine's own upload, not another's. One transaction per batch."""
        sql = self.sql("UPDATE media_files SET sending_to = ? WHERE id = ?")
        for chunk in _chunks(list(row_ids), BATCH_ROWS):
            self._write_many(sql, [(target_id, row_id) for row_id in chunk])

    def asset_recorded_for_another(self, sha1: str, asset_id: str, target_id: int, row_id: int) -> bool:
        """Another row of this database records `asset_id` (of content `sha1`) as its own upload there."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT 1 FROM media_files WHERE sha1 = ? AND immich_asset_id = ? AND target_id = ? "
                    "AND id <> ? AND upload_status = 'success' LIMIT 1"
                ),
                (sha1, asset_id, target_id, row_id),
            )
        return bool(rows)

    def record_duplicates(self, found: Sequence[tuple[int, str, str]], target_id: int | None = None) -> None:
        """(row id, asset id, why) for files the server already has: one transaction per batch. Only rows
        still waiting are written, and none another machine holds: in a shared library the machine that
        sent a file has recorded it already."""
        now = utc_now()
        sql = self.sql(
            "UPDATE media_files SET upload_status = 'duplicate', immich_asset_id = ?, "
            "api_response = ?, last_error = NULL, error_kind = NULL, next_attempt_at = NULL, "
            "upload_date = ?, target_id = ?, sidecar_path = NULL, sidecar_sha1 = NULL, sending_to = NULL, "
            "claimed_by = NULL, "
            "claim_until = NULL, updated_at = ? WHERE id = ? AND upload_status IN ('pending', 'error') "
            f"AND (claimed_by IS NULL OR claimed_by = ? OR claim_until < {self.now_sql})"
        )
        for chunk in _chunks(found, BATCH_ROWS):
            self._write_many(
                sql,
                [
                    (asset_id, _clip(answer), now, target_id, now, row_id, self.machine)
                    for row_id, asset_id, answer in chunk
                ],
            )

    def assets_for_contents(self, sha1s: Sequence[str], target_id: int) -> dict[str, str]:
        """SHA-1 -> asset id for content some row already has on this target: the same photo under another
        name (or on another machine) is recorded as a duplicate without asking the server."""
        found: dict[str, str] = {}
        for chunk in _chunks(list(dict.fromkeys(sha1s)), BATCH_ROWS):
            sql = (
                "SELECT sha1, immich_asset_id FROM media_files WHERE sha1 IN "
                f"({', '.join('?' * len(chunk))}) AND upload_status IN ('success', 'duplicate') "
                "AND target_id = ? AND immich_asset_id IS NOT NULL"
            )
            with self._lock:
                rows = self._query(self.sql(sql), [*chunk, target_id])
            found.update({str(r[0]): str(r[1]) for r in rows})
        return found

    # -- which Immich the rows refer to
    def target_id(self, identity: str, server_url: str, user_email: str) -> int:
        """The id of an Immich target (a server's user, by the user's id there), recorded on first sight;
        machines meeting a new server at the same moment insert it once and the others find it."""
        now = utc_now()

        def upsert() -> int:
            self._execute(
                self.sql(
                    "INSERT INTO immich_targets (identity, server_url, user_email, first_seen_at, last_seen_at) "
                    f"VALUES (?, ?, ?, ?, ?) {self.ignore_duplicate_sql}"
                ),
                (identity, server_url, user_email, now, now),
            )
            self._execute(
                self.sql(
                    "UPDATE immich_targets SET server_url = ?, user_email = ?, last_seen_at = ? WHERE identity = ?"
                ),
                (server_url, user_email, now, identity),
            )
            return int(
                self._query(self.sql("SELECT id FROM immich_targets WHERE identity = ?"), (identity,))[0][0]
            )

        return int(self._transaction(upsert))

    def find_target(self, identity: str) -> int | None:
        """The id of a known target, without recording anything (dry runs change nothing)."""
        with self._lock:
            rows = self._query(self.sql("SELECT id FROM immich_targets WHERE identity = ?"), (identity,))
        return int(rows[0][0]) if rows else None

    def uploaded_rows(
        self, after_id: int, limit: int, *, on_target: int | None = None, not_on_target: int | None = None
    ) -> list[UploadedRow]:
        """Rows some Immich holds (success or duplicate, with a SHA-1), by id after `after_id`: those recorded
        on `on_target`, or those not recorded on `not_on_target` (rows of earlier versions have none)."""
        where = "id > ? AND scope = ? AND upload_status IN ('success', 'duplicate') AND sha1 IS NOT NULL"
        params: list[Any] = [after_id, self.scope]
        if on_target is not None:
            where += " AND target_id = ?"
            params.append(on_target)
        if not_on_target is not None:
            where += " AND (target_id IS NULL OR target_id <> ?)"
            params.append(not_on_target)
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT id, sha1, upload_status, target_id, immich_asset_id, filepath, deleted_at "
                    f"FROM media_files WHERE {where} ORDER BY id LIMIT {int(limit)}"
                ),
                params,
            )
        return [
            UploadedRow(int(r[0]), str(r[1]), str(r[2]), r[3], r[4], str(r[5]), r[6] is not None)
            for r in rows
        ]

    def move_to_target(
        self, target_id: int, held: Sequence[tuple[int, str, str, bool]], not_held: Sequence[int]
    ) -> None:
        """After a server move: `held` (row id, status, asset id, another asset) are on `target_id` already;
        where that is another asset than the row knew, its album, stack and sidecar are not done there.
        `not_held` rows are not there, and go back to pending so they are sent. One transaction per call."""
        now = utc_now()

        def write() -> None:
            if held:
                self._executemany(
                    self.sql(
                        "UPDATE media_files SET upload_status = ?, immich_asset_id = ?, target_id = ?, "
                        + "".join(
                            f"{c} = CASE WHEN ? = 1 THEN NULL ELSE {c} END, " for c in ASSET_STEP_COLUMNS
                        )
                        + "updated_at = ? WHERE id = ?"
                    ),
                    [
                        (status, asset_id, target_id, *([int(other)] * len(ASSET_STEP_COLUMNS)), now, row_id)
                        for row_id, status, asset_id, other in held
                    ],
                )
            if not_held:
                self._executemany(
                    self.sql(
                        "UPDATE media_files SET upload_status = 'pending', target_id = ?, last_error = NULL, "
                        "error_kind = NULL, next_attempt_at = NULL, "
                        + "".join(f"{c} = NULL, " for c in ASSET_STEP_COLUMNS)
                        + "updated_at = ? WHERE id = ?"
                    ),
                    [(target_id, now, row_id) for row_id in not_held],
                )

        self._transaction(write)

    def rows_read_before(self, reader_version: int, page_rows: int = 1000) -> Iterator[tuple[Any, ...]]:
        """(id, filepath, filepath_b64, filename, file_size, mtime_ns, media_type) of this scope's present,
        fingerprinted rows whose metadata_info an older reader wrote (no `"reader": N`); Takeout's rows (their
        metadata came with the zip) are left out. Paged by id: the caller writes between pages."""
        marker = f'%"reader": {reader_version}%'
        sql = self.sql(
            "SELECT id, filepath, filepath_b64, filename, file_size, mtime_ns, media_type FROM media_files "
            "WHERE scope = ? AND id > ? AND missing_since IS NULL AND hash IS NOT NULL AND hash <> '' "
            "AND upload_status <> 'skipped' "
            "AND (metadata_info IS NULL OR (metadata_info NOT LIKE ? AND metadata_info NOT LIKE ?)) "
            f"ORDER BY id LIMIT {int(page_rows)}"
        )
        last = 0
        while True:
            with self._lock:
                page = self._query(sql, (self.scope, last, marker, '%"takeout"%'))
            yield from page
            if len(page) < page_rows:
                return
            last = page[-1][0]

    def update_metadata(self, rows: Sequence[tuple[int, str | None, str | None, str]]) -> None:
        """(row id, date_taken, date_source, metadata_info) of files whose metadata was read again."""
        sql = self.sql(
            "UPDATE media_files SET date_taken = ?, date_source = ?, metadata_info = ? WHERE id = ?"
        )
        self._write_many(sql, [(taken, source, info, row_id) for row_id, taken, source, info in rows])

    def update_fingerprint(self, row_id: int, file: ScannedFile) -> None:
        """A file changed between scan and upload: store its new fingerprint before it is sent."""
        self.save_scanned([], [(row_id, file)])

    # -- after upload: albums, stacks, deletion
    def done_files(self) -> list[DoneFile]:
        """Rows of this scope Immich has (success or duplicate, with an asset id) whose file is on disk or
        was deleted after Immich confirmed it (albums and stacks still count those)."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT id, filepath, filepath_b64, upload_status, immich_asset_id, file_size, mtime_ns, "
                    "extension, album_name, stack_id, sha1, target_id, media_type, date_taken, metadata_info, "
                    "sidecar_path, sidecar_sha1, deleted_at, tags_done, live_partner_id, live_video_id, "
                    "upload_date FROM media_files WHERE scope = ? "
                    "AND upload_status IN ('success', 'duplicate') AND immich_asset_id IS NOT NULL "
                    "AND (missing_since IS NULL OR deleted_at IS NOT NULL) ORDER BY id"
                ),
                (self.scope,),
            )
        return [
            DoneFile(*_date_to_text(r, 13)[:17], r[17] is not None, *r[18:21], _text_time(r[21]))
            for r in rows
        ]

    def record_tags(self, tagged: Sequence[tuple[int, str]]) -> None:
        """(row id, JSON list of tags) for files whose asset now carries those tags."""
        sql = self.sql("UPDATE media_files SET tags_done = ?, updated_at = ? WHERE id = ?")
        now = utc_now()
        for chunk in _chunks(tagged, BATCH_ROWS):
            self._write_many(sql, [(tags, now, row_id) for row_id, tags in chunk])

    def record_albums(self, added: Sequence[tuple[int, str, str]]) -> None:
        """(row id, album name, album id) for files now in that album."""
        sql = self.sql("UPDATE media_files SET album_name = ?, album_id = ?, updated_at = ? WHERE id = ?")
        now = utc_now()
        for chunk in _chunks(added, BATCH_ROWS):
            self._write_many(sql, [(name, album_id, now, row_id) for row_id, name, album_id in chunk])

    def record_stack(self, row_ids: Sequence[int], stack_id: str) -> None:
        sql = self.sql("UPDATE media_files SET stack_id = ?, updated_at = ? WHERE id = ?")
        now = utc_now()
        self._write_many(sql, [(stack_id, now, row_id) for row_id in row_ids])

    def record_deleted(self, row_id: int) -> None:
        """The local copy was deleted after Immich confirmed it: the row stays, marked."""
        now = utc_now()
        self._write_one(
            self.sql(
                "UPDATE media_files SET deleted_at = ?, missing_since = ?, deleting_as = NULL, updated_at = ? "
                "WHERE id = ?"
            ),
            (now, now, now, row_id),
        )

    def record_deleting(self, row_id: int, intent: str | None) -> None:
        """Before a file is moved to a temporary name to be deleted, that name (`intent`); None once the
        deletion ended either way. Committed at once: a kill in between leaves a row that says where it is."""
        self._write_one(
            self.sql("UPDATE media_files SET deleting_as = ?, updated_at = ? WHERE id = ?"),
            (intent, utc_now(), row_id),
        )

    def interrupted_deletions(self) -> list[tuple[int, str, str | None, str | None, str]]:
        """(id, filepath, filepath_b64, sidecar_path, deleting_as) of this scope's rows whose deletion a
        kill interrupted."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT id, filepath, filepath_b64, sidecar_path, deleting_as FROM media_files "
                    "WHERE scope = ? AND deleting_as IS NOT NULL"
                ),
                (self.scope,),
            )
        return [(int(r[0]), str(r[1]), r[2], r[3], str(r[4])) for r in rows]

    # -- reports
    def status_counts(self, scope: str | None = None) -> dict[str, tuple[int, int]]:
        """upload_status -> (files, bytes), missing files counted under 'missing'; every machine's rows, or
        one scope's."""
        where, params = _scope_filter(scope)
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT CASE WHEN missing_since IS NOT NULL THEN 'missing' ELSE upload_status END AS s, "
                    f"COUNT(*), COALESCE(SUM(file_size), 0) FROM media_files {where} GROUP BY s"
                ),
                params,
            )
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def scope_counts(self) -> list[ScopeCounts]:
        """Per machine and shared library: files, bytes, in Immich, waiting, failed."""
        with self._lock:
            rows = self._query(
                "SELECT scope, COUNT(*), COALESCE(SUM(file_size), 0), "
                "SUM(CASE WHEN upload_status IN ('success', 'duplicate') THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN upload_status = 'pending' THEN 1 ELSE 0 END), "
                "SUM(CASE WHEN upload_status = 'error' THEN 1 ELSE 0 END) "
                "FROM media_files WHERE missing_since IS NULL GROUP BY scope ORDER BY scope"
            )
        return [ScopeCounts(str(r[0]), *(int(v or 0) for v in r[1:])) for r in rows]

    def year_progress(self, scope: str | None = None) -> list[YearProgress]:
        """Per year taken: files and bytes Immich has, and waiting (pending or failed), on disk."""
        where, params = _scope_filter(scope, "(missing_since IS NULL OR deleted_at IS NOT NULL)")
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT COALESCE(SUBSTR(CAST(date_taken AS CHAR), 1, 4), 'unknown') AS y, "
                    "SUM(CASE WHEN upload_status IN ('success', 'duplicate') THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN upload_status IN ('success', 'duplicate') THEN file_size ELSE 0 END), "
                    "SUM(CASE WHEN upload_status IN ('pending', 'error') THEN 1 ELSE 0 END), "
                    "SUM(CASE WHEN upload_status IN ('pending', 'error') THEN file_size ELSE 0 END) "
                    f"FROM media_files {where} GROUP BY y ORDER BY y"
                ),
                params,
            )
        return [YearProgress(str(r[0]), *(int(v or 0) for v in r[1:])) for r in rows]

    def counts_by(self, grouping: str, scope: str | None = None) -> list[tuple[str, int, int]]:
        """(group, files, bytes) by 'year' taken or by 'extension', for the statistics screen."""
        expression = {
            "year": "COALESCE(SUBSTR(CAST(date_taken AS CHAR), 1, 4), 'unknown')",
            "extension": "COALESCE(extension, '')",
        }[grouping]
        where, params = _scope_filter(scope)
        with self._lock:
            rows = self._query(
                self.sql(
                    f"SELECT {expression} AS g, COUNT(*), COALESCE(SUM(file_size), 0) FROM media_files {where} "
                    "GROUP BY g ORDER BY g"
                ),
                params,
            )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def report_rows(self) -> Iterator[tuple[Any, ...]]:
        """One tuple per file of every machine for the CSV report: what happened to it and why, in
        REPORT_COLUMNS order."""
        with self._lock:
            rows = self._query(
                f"SELECT {', '.join(REPORT_COLUMNS)} FROM media_files ORDER BY scope, upload_status, filepath"
            )
        yield from rows

    def recent_errors(self, limit: int = 20) -> list[FailedFile]:
        """The latest failed rows: why, how often, and when they are tried again."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT filepath, COALESCE(last_error, ''), upload_attempts, error_kind, next_attempt_at "
                    "FROM media_files WHERE scope = ? AND upload_status = 'error' AND missing_since IS NULL "
                    "ORDER BY updated_at DESC, id DESC LIMIT ?"
                ),
                (self.scope, limit),
            )
        return [
            FailedFile(r[0], r[1], int(r[2]), r[3], None if r[4] is None else str(r[4])[:16]) for r in rows
        ]

    def row(self, row_id: int) -> dict[str, Any]:
        """One row as a dict (tests and the report)."""
        with self._lock:
            rows = self._query(self.sql("SELECT * FROM media_files WHERE id = ?"), (row_id,))
            names = self._column_names("media_files")
        return dict(zip(names, rows[0], strict=True)) if rows else {}

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._query("SELECT * FROM media_files ORDER BY id")
            names = self._column_names("media_files")
        return [dict(zip(names, r, strict=True)) for r in rows]

    def _column_names(self, table: str) -> list[str]: ...

    # -- Google Takeout (takeout.py)
    def _create_takeout_tables(self) -> None:
        """Migration 0010: each Takeout archive's label and fingerprint; every JSON member read, with what it
        said (a rerun reads none again); and the rows whose Google metadata Immich still has to get."""
        auto = "AUTO_INCREMENT" if self.backend == "mysql" else "AUTOINCREMENT"
        self._execute(
            "CREATE TABLE IF NOT EXISTS takeout_archives (scope VARCHAR(120) NOT NULL, label VARCHAR(255) NOT NULL, "
            "fingerprint CHAR(64) NOT NULL, path TEXT, PRIMARY KEY (scope, label))"
        )
        self._execute(
            f"CREATE TABLE IF NOT EXISTS takeout_json (id INTEGER PRIMARY KEY {auto}, scope VARCHAR(120) NOT NULL, "
            "path_hash CHAR(64) NOT NULL, filepath TEXT, file_size BIGINT, mtime_ns BIGINT, info TEXT, error TEXT, "
            "UNIQUE (scope, path_hash))"
        )
        self._execute(
            "CREATE TABLE IF NOT EXISTS takeout_updates (scope VARCHAR(120) NOT NULL, path_hash CHAR(64) NOT NULL, "
            "queued_at TIMESTAMP NULL, intent TEXT, PRIMARY KEY (scope, path_hash))"
        )

    def takeout_archives(self) -> dict[str, tuple[str, str]]:
        """label -> (fingerprint, path) of every Takeout archive this scope has seen."""
        with self._lock:
            rows = self._query(
                self.sql("SELECT label, fingerprint, path FROM takeout_archives WHERE scope = ?"),
                (self.scope,),
            )
        return {r[0]: (r[1], r[2] or "") for r in rows}

    def set_takeout_archive(self, label: str, fingerprint: str, path: str) -> None:
        def write() -> None:
            self._execute(
                self.sql("DELETE FROM takeout_archives WHERE scope = ? AND label = ?"), (self.scope, label)
            )
            self._execute(
                self.sql(
                    "INSERT INTO takeout_archives (scope, label, fingerprint, path) VALUES (?, ?, ?, ?)"
                ),
                (self.scope, label, fingerprint, path),
            )

        self._transaction(write)

    def takeout_json_known(self) -> Iterator[tuple[str, int, int, int, str | None]]:
        """(path_hash, id, size, mtime_ns, error) of every JSON member read before, streamed."""
        sql = "SELECT path_hash, id, file_size, mtime_ns, error FROM takeout_json WHERE scope = ?"
        return self._stream(self.sql(sql), (self.scope,))

    def takeout_json_records(self, ids: Sequence[int]) -> dict[int, str]:
        """id -> what these JSON members said (their record's text)."""
        found: dict[int, str] = {}
        for chunk in _chunks(list(ids), BATCH_ROWS):
            sql = f"SELECT id, info FROM takeout_json WHERE id IN ({', '.join('?' * len(chunk))})"
            with self._lock:
                found.update((int(r[0]), r[1]) for r in self._query(self.sql(sql), chunk) if r[1])
        return found

    def save_takeout_json(
        self, rows: Sequence[tuple[str, str, int, int, str | None, str | None]], replacing: bool = True
    ) -> None:
        """Record JSON members read: (path_hash, filepath, size, mtime_ns, record text, error). With
        `replacing`, some of them were recorded before (a member that changed) and their old record goes."""
        if not rows:
            return
        delete = self.sql("DELETE FROM takeout_json WHERE scope = ? AND path_hash = ?")
        insert = self.sql(
            "INSERT INTO takeout_json (scope, path_hash, filepath, file_size, mtime_ns, info, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)"
        )

        def write() -> None:
            for chunk in _chunks(list(rows), BATCH_ROWS):
                if replacing:
                    self._executemany(delete, [(self.scope, r[0]) for r in chunk])
                self._executemany(insert, [(self.scope, *r) for r in chunk])

        self._transaction(write)

    def _takeout_select(self, where: str, params: Sequence[Any]) -> list[TakeoutRow]:
        sql = (
            "SELECT id, path_hash, filepath, upload_status, immich_asset_id, target_id, metadata_info, date_taken, "
            f"date_source, mtime_ns, sha1 FROM media_files WHERE scope = ? AND {where}"
        )
        with self._lock:
            rows = self._query(self.sql(sql), (self.scope, *params))
        return [TakeoutRow(*_date_to_text(r, 7)) for r in rows]

    def takeout_rows(self, ids: Sequence[int]) -> list[TakeoutRow]:
        found: list[TakeoutRow] = []
        for chunk in _chunks(list(ids), BATCH_ROWS):
            found += self._takeout_select(f"id IN ({', '.join('?' * len(chunk))})", chunk)
        return found

    def takeout_twins(self, sha1s: Sequence[str]) -> list[TakeoutRow]:
        """This scope's rows holding any of these contents."""
        found: list[TakeoutRow] = []
        for chunk in _chunks(sorted(set(sha1s)), BATCH_ROWS):
            found += self._takeout_select(f"sha1 IN ({', '.join('?' * len(chunk))})", chunk)
        return found

    def update_takeout_rows(
        self, updates: Sequence[tuple[int, str, str | None, str | None, str | None]], queue: Sequence[str]
    ) -> None:
        """Give rows the Google metadata that arrived for them ((id, metadata_info, date_taken, date_source,
        why it is passed over now or None)) and queue rows (by path_hash) for an update in Immich, in one
        transaction (or the caller's)."""
        now = utc_now()
        update = self.sql(
            "UPDATE media_files SET metadata_info = ?, date_taken = ?, date_source = ?, updated_at = ?, "
            "upload_status = CASE WHEN ? IS NULL THEN upload_status ELSE 'skipped' END, "
            "last_error = CASE WHEN ? IS NULL THEN last_error ELSE ? END WHERE id = ?"
        )
        insert = self.sql("INSERT INTO takeout_updates (scope, path_hash, queued_at) VALUES (?, ?, ?)")

        def write() -> None:
            if updates:
                self._executemany(
                    update,
                    [
                        (text, taken, source, now, skip, skip, skip, row_id)
                        for row_id, text, taken, source, skip in updates
                    ],
                )
            # A row queued already keeps its place (and the intent of an update that may have been sent).
            for chunk in _chunks(sorted(set(queue)), BATCH_ROWS):
                there = self._query(
                    self.sql(
                        f"SELECT path_hash FROM takeout_updates WHERE scope = ? AND path_hash IN "
                        f"({', '.join('?' * len(chunk))})"
                    ),
                    (self.scope, *chunk),
                )
                known = {r[0] for r in there}
                self._executemany(insert, [(self.scope, h, now) for h in chunk if h not in known])

        self._transaction(write)

    def takeout_update_queue(self) -> list[TakeoutRow]:
        """The rows queued for an update in Immich, oldest first."""
        return self._takeout_select(
            "path_hash IN (SELECT path_hash FROM takeout_updates WHERE scope = ?) ORDER BY id", (self.scope,)
        )

    def takeout_update_intents(self) -> dict[str, str]:
        """path_hash -> the update a run was about to send when it stopped (see takeout.apply_updates)."""
        with self._lock:
            rows = self._query(
                self.sql(
                    "SELECT path_hash, intent FROM takeout_updates WHERE scope = ? AND intent IS NOT NULL"
                ),
                (self.scope,),
            )
        return {r[0]: r[1] for r in rows}

    def set_takeout_update_intent(self, path_hash_value: str, intent: str) -> None:
        self._write_one(
            self.sql("UPDATE takeout_updates SET intent = ? WHERE scope = ? AND path_hash = ?"),
            (intent, self.scope, path_hash_value),
        )

    def takeout_update_count(self) -> int:
        with self._lock:
            rows = self._query(
                self.sql("SELECT COUNT(*) FROM takeout_updates WHERE scope = ?"), (self.scope,)
            )
        return int(rows[0][0])

    def takeout_sent_row(self, asset_id: str, target_id: int) -> TakeoutRow | None:
        """The row whose upload made this asset on this target."""
        rows = self._takeout_select(
            "immich_asset_id = ? AND target_id = ? AND upload_status = 'success' ORDER BY id",
            (asset_id, target_id),
        )
        return rows[0] if rows else None

    def takeout_update_done(
        self, path_hash_value: str, sent_row_id: int | None, sent_metadata: str | None
    ) -> None:
        """An update in Immich is done: off the queue, and what the asset holds now kept with the row that
        sent it (the next update compares with that), in one transaction."""

        def write() -> None:
            self._execute(
                self.sql("DELETE FROM takeout_updates WHERE scope = ? AND path_hash = ?"),
                (self.scope, path_hash_value),
            )
            if sent_row_id is not None and sent_metadata is not None:
                self._execute(
                    self.sql("UPDATE media_files SET metadata_info = ?, updated_at = ? WHERE id = ?"),
                    (sent_metadata, utc_now(), sent_row_id),
                )

        self._transaction(write)

    def takeout_report(self, labels: Sequence[str], limit: int) -> tuple[dict[str, int], int, list[str], int]:
        """How the photos of these archives were matched to their JSONs, as their rows record it: (count by
        kind, how many were in Google's trash, the first `limit` without a JSON, how many have none)."""
        if not labels:
            return {}, 0, [], 0
        label = "SUBSTR(filepath, 1, INSTR(filepath, '/') - 1)"
        how = self._json_text("'$.takeout.match'")
        trashed = f"CASE WHEN upload_status = 'skipped' THEN {self._json_text(chr(39) + '$.takeout.trashed' + chr(39))} END"
        where = f"scope = ? AND missing_since IS NULL AND {label} IN ({', '.join('?' * len(labels))})"
        with self._lock:
            groups = self._query(
                self.sql(f"SELECT {how}, {trashed}, COUNT(*) FROM media_files WHERE {where} GROUP BY 1, 2"),
                (self.scope, *labels),
            )
            unmatched = self._query(
                self.sql(
                    f"SELECT filepath FROM media_files WHERE {where} AND {how} = 'none' ORDER BY id LIMIT {int(limit)}"
                ),
                (self.scope, *labels),
            )
        counts: dict[str, int] = {}
        trashed_count = 0
        for kind, in_trash, count in groups:
            if kind is None:
                continue
            counts[str(kind)] = counts.get(str(kind), 0) + int(count)
            if str(in_trash).lower() in ("1", "true"):
                trashed_count += int(count)
        return counts, trashed_count, [r[0] for r in unmatched], counts.get("none", 0)

    def _json_text(self, path: str) -> str:
        """SQL for a JSON text value of metadata_info at `path`."""
        if self.backend == "mysql":
            return f"CASE WHEN JSON_VALID(metadata_info) THEN JSON_UNQUOTE(JSON_EXTRACT(metadata_info, {path})) END"
        return f"CASE WHEN json_valid(metadata_info) THEN json_extract(metadata_info, {path}) END"

    def record_run(self, kind: str, started_at: str, exit_status: int, summary: dict[str, Any]) -> None:
        self._write_one(
            self.sql(
                "INSERT INTO runs (kind, started_at, finished_at, exit_status, summary, scope) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            ),
            (kind, started_at, utc_now(), exit_status, json.dumps(summary), self.scope),
        )

    def last_run(self, kind: str | None = None) -> dict[str, Any] | None:
        """This scope's last run (of `kind`)."""
        sql = "SELECT kind, started_at, finished_at, exit_status, summary FROM runs WHERE scope = ?"
        params: tuple[Any, ...] = (self.scope,)
        if kind:
            sql += " AND kind = ?"
            params = (self.scope, kind)
        with self._lock:
            rows = self._query(self.sql(sql + " ORDER BY id DESC LIMIT 1"), params)
        if not rows:
            return None
        r = rows[0]
        return {"kind": r[0], "started_at": str(r[1]), "finished_at": str(r[2]), "exit_status": r[3],
                "summary": json.loads(r[4] or "{}")}  # fmt: skip

    def last_run_problems(self) -> tuple[str, list[RunProblem]]:
        """When this scope's last run finished and what it counted as errors that are no failed row (a
        folder it could not list, a link it would not follow, a file it could not delete)."""
        last = self.last_run()
        if last is None:
            return "", []
        problems = []
        for item in last["summary"].get("problems") or []:
            if isinstance(item, list) and item and all(isinstance(part, str) for part in item):
                problems.append(RunProblem(*item[:3]))
        return last["finished_at"][:16], problems


def _mask_strings(value: Any) -> Any:
    """A JSON value with every address in its strings shown as config.mask_url_password shows it."""
    if isinstance(value, str):
        return mask_url_password(value)
    if isinstance(value, list):
        return [_mask_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_strings(v) for k, v in value.items()}
    return value


def _scope_filter(scope: str | None, condition: str = "") -> tuple[str, list[Any]]:
    """A WHERE clause for one scope's rows (None: every machine's), with `condition` too."""
    parts = ([condition] if condition else []) + (["scope = ?"] if scope is not None else [])
    return ("WHERE " + " AND ".join(parts) if parts else ""), ([] if scope is None else [scope])


def scope_label(scope: str) -> str:
    """How a scope reads: "laptop", "family (shared library)"."""
    kind, _, name = scope.partition(":")
    return f"{name} (shared library)" if kind == "l" else name


_scanned_values: Callable[[ScannedFile], tuple[Any, ...]] = operator.attrgetter(*SCANNED_FIELDS)  # one C call
_scanned_file_values: Callable[[ScannedFile], tuple[Any, ...]] = operator.attrgetter(
    *(f.name for f in fields(ScannedFile))
)
_SCANNED_FILE_FIELDS = len(fields(ScannedFile))


def _date_to_text(row: tuple[Any, ...], index: int = 9) -> tuple[Any, ...]:
    # MySQL returns DATETIME as datetime, SQLite as text: callers get text either way.
    values = list(row)
    if isinstance(values[index], datetime):
        values[index] = values[index].strftime("%Y-%m-%d %H:%M:%S")
    return tuple(values)


def _text_time(value: Any) -> str | None:
    """A TIMESTAMP as 'YYYY-MM-DD HH:MM:SS' text from either backend (MySQL answers a datetime)."""
    if value is None:
        return None
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value)[:19]


def _clip(text: str | None) -> str | None:
    if text is None or len(text) <= API_RESPONSE_MAX_CHARS:
        return text
    return text[:API_RESPONSE_MAX_CHARS] + "…"


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- SQLite -------------------------------------------------------------------------------------------


class SqliteStore(Store):
    backend = "sqlite"
    placeholder = "?"
    now_sql = "datetime('now')"
    ignore_duplicate_sql = "ON CONFLICT DO NOTHING"
    replace_value_sql = "ON CONFLICT DO UPDATE SET value = excluded.value, updated_at = CURRENT_TIMESTAMP"

    def __init__(self, path: Path, scope: str = "m:local", machine: str = "local") -> None:
        super().__init__(scope, machine)
        self.path = path
        self._lock_file: Any = None
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_guard = threading.Lock()
        self._closing = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are opened explicitly by atomic().
            self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # A first scan writes every index of a growing table: with SQLite's 2 MB page cache and a
            # checkpoint every 4 MB of WAL, its inserts cost twice what they do with these (bench_scan.py).
            # Each checkpoint copies the pages the WAL holds: at a million rows, where every transaction
            # dirties index pages all over, one every 40 MB cost a fifth of the scan (inserting 1,000,000
            # rows 5,000 at a time: 128 s, 98 s with 400 MB). The WAL file shrinks back after the run.
            self.conn.execute("PRAGMA cache_size=-32768")  # KiB: at most 32 MiB
            self.conn.execute("PRAGMA wal_autocheckpoint=100000")  # pages: about 400 MB of WAL
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"cannot open the SQLite database {path}: {exc} (check DB_PATH)") from None
        self.conn.create_function("sha256_hex", 1, _sha256_text, deterministic=True)
        st = os.stat(path)
        self._file_id = (st.st_dev, st.st_ino)

    def describe(self) -> str:
        return f"sqlite ({self.path})"

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(sql, params).rowcount

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise DatabaseError(f"the SQLite database {self.path} failed: {exc}") from exc

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        # The one connection is shared: it is held until the last row is read.
        with self._lock:
            cursor = self.conn.execute(sql, params)
            while rows := cursor.fetchmany(STREAM_ROWS):
                yield from rows

    def _begin(self) -> None:
        self._check_file()
        self.conn.execute("BEGIN IMMEDIATE")

    def _check_file(self) -> None:
        """The database file is still the one opened: one deleted (or replaced) during a run would take every
        later write with it, unseen. A stat per transaction (a microsecond or two)."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._file_id
        except OSError:
            same = False
        if not same:
            raise DatabaseError(
                f"the state database {self.path} was deleted or replaced during the run: stopping. What this run "
                "recorded since is lost; the next run asks Immich what it already has, so nothing is sent twice"
            )

    def _commit(self) -> None:
        self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def _column_names(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]

    def _columns(self) -> set[str]:
        return set(self._column_names("media_files"))

    def _migrate_tool_columns(self) -> None:
        with self.atomic():
            self._add_columns(TOOL_COLUMNS)
            self._execute("UPDATE media_files SET path_hash = sha256_hex(filepath) WHERE path_hash IS NULL")
            self._execute("DROP INDEX IF EXISTS uk_filepath")
            self._execute("CREATE UNIQUE INDEX IF NOT EXISTS uk_path_hash ON media_files (path_hash)")
            self._execute("CREATE INDEX IF NOT EXISTS idx_filepath ON media_files (filepath)")
            self._execute("CREATE INDEX IF NOT EXISTS idx_hash ON media_files (hash)")
            self._execute("CREATE INDEX IF NOT EXISTS idx_status ON media_files (upload_status, date_taken)")

    def _lease_until(self, lease_s: float) -> tuple[str, list[Any]]:
        return "datetime('now', ?)", [f"{lease_s:+g} seconds"]

    def _rekey_by_scope(self) -> None:
        self._execute("DROP INDEX IF EXISTS uk_path_hash")
        self._execute("CREATE UNIQUE INDEX IF NOT EXISTS uk_scope_path ON media_files (scope, path_hash)")
        self._execute("DROP INDEX IF EXISTS idx_status")
        self._execute(
            "CREATE INDEX IF NOT EXISTS idx_scope_status ON media_files (scope, upload_status, date_taken)"
        )
        self._execute("CREATE INDEX IF NOT EXISTS idx_claims ON media_files (claimed_by)")

    def acquire_run_lock(self) -> bool:
        """An exclusive flock on a file beside the database (SQLite serves one machine, one run at a time):
        the kernel drops it when the process dies, so a run killed with -9 never blocks the next one."""
        import fcntl

        handle = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle
        return True

    def release_run_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def checkpoint_in_background(self) -> None:
        # Closing the last connection copies the whole WAL into the database file and syncs both: after a
        # first scan of 20,000 small photos, 70-100 ms on one core once the scan is done, most of it waiting
        # for the disk. A checkpoint on a connection of its own copies what is written while the scan's last
        # files are described (PASSIVE: it waits for no reader or writer); the close copies only the rest.
        with self._checkpoint_guard:
            if self._closing or (self._checkpointer is not None and self._checkpointer.is_alive()):
                return
            thread = threading.Thread(target=self._checkpoint, name="checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had (a limit on processes): the close does it all
                log.debug("no checkpoint in the background: %s", exc)
                return
            self._checkpointer = thread

    def _checkpoint(self) -> None:
        try:
            conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            finally:
                conn.close()
        except sqlite3.Error as exc:  # nothing is lost: the close copies it all instead
            log.debug("the checkpoint in the background failed: %s", exc)

    def close(self) -> None:
        self._flush_before_close()
        with self._checkpoint_guard:
            self._closing = True  # no checkpoint starts after this one (a write still under way may ask)
            checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.join()  # before the close: the last connection to close finishes the WAL
        # Under the store's lock: never in the middle of another thread's statement (closing a connection
        # under a running statement can crash the interpreter); a later call fails as a DatabaseError.
        with self._lock:
            self.release_run_lock()
            self.conn.close()


def _sha256_text(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


# --- MySQL / MariaDB ----------------------------------------------------------------------------------

# PyMySQL error codes for a connection that went away mid-statement: retried once after a reconnect.
MYSQL_LOST_CONNECTION = {2006, 2013, 2055, 0}
MYSQL_ACCESS_DENIED = {1044, 1045, 1698}
MYSQL_CONFLICT = {1205, 1213}  # lock wait timeout, deadlock
MYSQL_UNKNOWN_DATABASE = 1049


RUN_LOCK_LEASE_S = 60


class ThisProcess(NamedTuple):
    """Who holds a run lock: the machine (host name and boot) and the process (pid and start time, so a
    reused pid is not taken for the holder)."""

    host: str
    process: str

    def knows_dead(self, host: str, process: str) -> bool:
        """True when the holder surely is gone: it ran on this machine, since this boot, and its process is
        not there any more. A holder on another machine is judged by its lease alone."""
        if host != self.host:
            return False
        pid_text, _, started = process.partition(":")
        try:
            pid = int(pid_text)
        except ValueError:
            return True
        return _process_start(pid) != started


def _process_start(pid: int) -> str | None:
    """The start time of a process (clock ticks since boot, from /proc), "" where /proc cannot tell, None
    when no such process runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""


def _this_process() -> ThisProcess:
    import socket

    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    pid = os.getpid()
    return ThisProcess(f"{socket.gethostname()}/{boot}"[:255], f"{pid}:{_process_start(pid) or ''}")


class RunLease:
    """Renews a run lock's lease on a thread of its own, every quarter lease; `lost` is set when another run
    holds the lock now (it took over after a database restart made this run look gone)."""

    def __init__(
        self, name: str, token: str, lease_s: float, renew: Callable[[str, str, float], bool]
    ) -> None:
        self.name, self.token, self.lease_s = name, token, lease_s
        self.lost = threading.Event()
        self._done = threading.Event()
        self._renew = renew
        self._thread = threading.Thread(target=self._keep, name="run-lease", daemon=True)
        self._thread.start()

    def _keep(self) -> None:
        while not self._done.wait(self.lease_s / 4):
            try:
                held = self._renew(self.name, self.token, self.lease_s)
            except DatabaseError:
                continue  # the database is away: tried again next time; the lease outlives a restart
            if not held:
                log.error(
                    "another run took over this machine's run lock (after a database restart?): stopping"
                )
                self.lost.set()
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join(5)


class MysqlStore(Store):
    backend = "mysql"
    placeholder = "%s"
    now_sql = "UTC_TIMESTAMP()"
    ignore_duplicate_sql = "ON DUPLICATE KEY UPDATE id = id"  # a no-op: INSERT IGNORE would hide other errors
    replace_value_sql = "ON DUPLICATE KEY UPDATE value = VALUES(value), updated_at = CURRENT_TIMESTAMP"
    autocommits = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.scope, settings.machine_name)
        import pymysql  # only when MySQL is configured

        self._pymysql = pymysql
        self.backend_errors = (pymysql.err.Error,)
        self.settings = settings
        self._lock_conn: Any = None
        self._lease: RunLease | None = None
        self.conn = self._connect()
        self._used_at = time.monotonic()

    def describe(self) -> str:
        s = self.settings
        return f"mysql ({s.db_user}@{s.db_host}:{s.db_port}/{s.db_name})"

    def _connect(self, database: bool = True) -> Any:
        s = self.settings
        pymysql = self._pymysql
        try:
            conn = pymysql.connect(
                host=s.db_host, port=s.db_port, user=s.db_user, password=s.db_password,
                database=s.db_name if database else None, charset="utf8mb4", autocommit=True,
                connect_timeout=10, read_timeout=300, write_timeout=300,
                init_command="SET time_zone = '+00:00'",  # every TIMESTAMP in UTC, as utc_now() writes
            )  # fmt: skip
            # Machines sharing the database write the same rows. Under READ COMMITTED an UPDATE that has to
            # scan keeps no lock on the rows it passes over, so it does not deadlock with another
            # machine's inserts; every claim is a conditional UPDATE, safe without repeatable reads.
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            return conn
        except pymysql.err.OperationalError as exc:
            code = exc.args[0] if exc.args else 0
            where = f"MySQL at {s.db_host}:{s.db_port}"
            if code == MYSQL_UNKNOWN_DATABASE and database:
                self._create_database()
                return self._connect()
            if code in MYSQL_ACCESS_DENIED:
                raise DatabaseError(
                    f"{where} refused user {s.db_user!r}: wrong DB_USER or DB_PASSWORD, or no access to {s.db_name}"
                ) from None
            raise DatabaseError(
                f"cannot connect to {where} ({exc.args[-1]}): check DB_HOST and DB_PORT"
            ) from None

    def _create_database(self) -> None:
        conn = self._connect(database=False)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"CREATE DATABASE IF NOT EXISTS `{self.settings.db_name}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
                )
        finally:
            conn.close()

    def _is_conflict(self, exc: Exception) -> bool:
        return bool(exc.args) and exc.args[0] in MYSQL_CONFLICT

    def _is_lost(self, exc: Exception) -> bool:
        err = self._pymysql.err
        if isinstance(exc, err.InterfaceError):
            return True
        return (
            isinstance(exc, err.OperationalError) and bool(exc.args) and exc.args[0] in MYSQL_LOST_CONNECTION
        )

    def _retry_once(self, work: Callable[[Any], Any]) -> Any:
        """Run `work(cursor)`; outside a transaction, a statement lost to a dropped connection is retried once
        on a new connection (inside one, the whole transaction is retried by atomic())."""
        try:
            with self.conn.cursor() as cur:
                result = work(cur)
            self._used_at = time.monotonic()  # a connection just used needs no ping
            return result
        except (
            self._pymysql.err.OperationalError,
            self._pymysql.err.InterfaceError,
        ) as exc:
            if not self._is_lost(exc) or self._in_transaction:
                raise
            log.warning("lost the MySQL connection (%s); reconnecting", exc)
            self._reconnect()
            with self.conn.cursor() as cur:
                return work(cur)

    def _reconnect(self) -> None:
        try:
            self.conn.close()
        except Exception:  # the old connection is already broken; closing it may fail any way
            pass
        self.conn = self._connect()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        # A transaction interrupted by a dropped connection was rolled back by the server; atomic() cannot
        # replay the caller's block, so it reconnects for the next caller and lets the error surface. A
        # connection idle for a while is pinged first (servers close idle ones); a busy one is not, as
        # _transaction() replays a block lost to a dropped connection.
        with self._lock:
            if not self._in_transaction and time.monotonic() - self._used_at > IDLE_PING_S:
                try:
                    self.conn.ping(reconnect=False)
                except self._pymysql.err.Error:
                    log.warning("the MySQL connection was lost; reconnecting")
                    self._reconnect()
            with super().atomic():
                yield

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._retry_once(lambda cur: cur.execute(sql, params))

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._retry_once(lambda cur: cur.executemany(sql, rows))

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run(cur: Any) -> list[tuple[Any, ...]]:
            cur.execute(sql, params or None)
            return list(cur.fetchall())

        try:
            return self._retry_once(run)
        except self._pymysql.err.Error as exc:
            raise DatabaseError(f"the MySQL database failed: {exc}") from exc

    def _stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        # An unbuffered cursor on a connection of its own: rows arrive as they are read, and the main
        # connection (and the store's lock) stays free for the writes made meanwhile.
        conn = self._connect()
        try:
            with conn.cursor(self._pymysql.cursors.SSCursor) as cur:
                cur.execute(sql, params or None)
                while rows := cur.fetchmany(STREAM_ROWS):
                    yield from rows
        finally:
            conn.close()

    def _begin(self) -> None:
        self.conn.begin()

    def _commit(self) -> None:
        self.conn.commit()

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except self._pymysql.err.Error:  # connection gone: the server rolled back already
            self._reconnect()

    def _column_names(self, table: str) -> list[str]:
        return [r[0] for r in self._query(f"SHOW COLUMNS FROM {table}")]

    def _columns(self) -> set[str]:
        return set(self._column_names("media_files"))

    def _indexes(self) -> set[str]:
        return {r[2] for r in self._query("SHOW INDEX FROM media_files")}

    def _migrate_tool_columns(self) -> None:
        # MySQL DDL commits implicitly; every step checks first, so a run cut short re-runs cleanly.
        self._add_columns(TOOL_COLUMNS)
        # The prefix key goes first: paths equal under the new collation ('Straße', 'Strasse') are
        # different files, and path_hash is the unique key from now on.
        if "uk_filepath" in self._indexes():
            self._execute("ALTER TABLE media_files DROP INDEX uk_filepath")
        statuses = ", ".join(f"'{s}'" for s in STATUSES)
        self._execute(
            "ALTER TABLE media_files CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci, "
            "MODIFY filepath TEXT NOT NULL, MODIFY directory TEXT, MODIFY extension VARCHAR(16), "
            f"MODIFY upload_status ENUM({statuses}) DEFAULT 'pending'"
        )
        self._execute("UPDATE media_files SET path_hash = SHA2(filepath, 256) WHERE path_hash IS NULL")
        indexes = self._indexes()
        if "uk_path_hash" not in indexes:
            self._execute("ALTER TABLE media_files ADD UNIQUE KEY uk_path_hash (path_hash)")
        if "idx_pending" not in indexes:
            self._execute("ALTER TABLE media_files ADD INDEX idx_pending (upload_status, date_taken)")

    def acquire_run_lock(self) -> bool:
        """One run per machine and scope (other machines, and this machine's other folders, run beside it),
        held as a lease in the `run_locks` table rather than by a connection: a lock that dies with its
        connection is released by a database restart while the run goes on, and a second run would start
        beside it. A keeper thread renews the lease; a run whose lease was taken over stops before its next
        upload (`run_lock_lost`). A holder that died is taken over at once when it ran on this machine (its
        process is gone), else when its lease runs out."""
        me = _this_process()
        name = self._lock_name(f"run {self.scope} {self.machine}")
        token = os.urandom(16).hex()
        lease = RUN_LOCK_LEASE_S
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS run_locks (name VARCHAR(64) PRIMARY KEY, holder CHAR(32) NOT NULL, "
                    "host VARCHAR(255) NOT NULL, process VARCHAR(64) NOT NULL, started_at DATETIME NOT NULL, "
                    "lease_until DATETIME NOT NULL)"
                )
                cur.execute(
                    "INSERT INTO run_locks (name, holder, host, process, started_at, lease_until) VALUES "
                    "(%s, %s, %s, %s, UTC_TIMESTAMP(), UTC_TIMESTAMP() + INTERVAL %s SECOND) "
                    "ON DUPLICATE KEY UPDATE name = name",
                    (name, token, me.host, me.process, lease),
                )
                cur.execute(
                    "SELECT holder, host, process, lease_until < UTC_TIMESTAMP() FROM run_locks WHERE name = %s",
                    (name,),
                )
                holder, host, process, expired = cur.fetchone()
                if holder != token:
                    if not (expired or me.knows_dead(str(host), str(process))):
                        conn.close()
                        return False
                    taken = cur.execute(
                        "UPDATE run_locks SET holder = %s, host = %s, process = %s, started_at = UTC_TIMESTAMP(), "
                        "lease_until = UTC_TIMESTAMP() + INTERVAL %s SECOND WHERE name = %s AND holder = %s",
                        (token, me.host, me.process, lease, name, holder),
                    )
                    if taken != 1:
                        conn.close()  # another run took it over first
                        return False
                    log.info("took over the run lock of a run that is gone (%s, %s)", host, process)
        except self._pymysql.err.Error as exc:
            conn.close()
            raise DatabaseError(f"the MySQL database failed while taking the run lock: {exc}") from exc
        self._lock_conn = conn
        self._lease = RunLease(name, token, lease, self._lease_renewal)
        return True

    def _lease_renewal(self, name: str, token: str, lease_s: float) -> bool:
        """Extend this run's lease; False when another run holds it now. A lost connection is replaced."""
        for attempt in (1, 2):
            try:
                if self._lock_conn is None:
                    self._lock_conn = self._connect()
                with self._lock_conn.cursor() as cur:
                    cur.execute(
                        "UPDATE run_locks SET lease_until = UTC_TIMESTAMP() + INTERVAL %s SECOND "
                        "WHERE name = %s AND holder = %s",
                        (int(lease_s), name, token),
                    )
                    cur.execute("SELECT holder FROM run_locks WHERE name = %s", (name,))
                    row = cur.fetchone()
                return row is not None and row[0] == token
            except (self._pymysql.err.Error, DatabaseError) as exc:
                log.warning(
                    "could not renew the run lock (%s); %s", exc, "reconnecting" if attempt == 1 else "later"
                )
                try:
                    if self._lock_conn is not None:
                        self._lock_conn.close()
                except self._pymysql.err.Error:
                    pass
                self._lock_conn = None
        raise DatabaseError("the database is away")

    def run_lock_lost(self) -> bool:
        return self._lease is not None and self._lease.lost.is_set()

    def _lock_name(self, what: str) -> str:
        # Lock names are limited to 64 characters: a digest of the database and what is locked.
        return "immich_uploader." + hashlib.sha1(f"{self.settings.db_name} {what}".encode()).hexdigest()

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        """Machines upgrading the same database at once take turns."""
        conn = self._connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT GET_LOCK(%s, 300)", (self._lock_name("migrate"),))
                if cur.fetchone()[0] != 1:
                    raise DatabaseError("another machine has been upgrading the database for 5 minutes")
            yield
        finally:
            conn.close()

    def _lease_until(self, lease_s: float) -> tuple[str, list[Any]]:
        return "UTC_TIMESTAMP() + INTERVAL ? SECOND", [int(lease_s)]

    def _rekey_by_scope(self) -> None:
        # DDL commits implicitly; each step checks first, so a run cut short re-runs cleanly.
        indexes = self._indexes()
        if "uk_scope_path" not in indexes:
            self._execute("ALTER TABLE media_files ADD UNIQUE KEY uk_scope_path (scope, path_hash)")
        if "uk_path_hash" in indexes:
            self._execute("ALTER TABLE media_files DROP INDEX uk_path_hash")
        if "idx_scope_pending" not in indexes:
            self._execute(
                "ALTER TABLE media_files ADD INDEX idx_scope_pending (scope, upload_status, date_taken)"
            )
        if "idx_pending" in indexes:
            self._execute("ALTER TABLE media_files DROP INDEX idx_pending")
        if "idx_claims" not in indexes:
            self._execute("ALTER TABLE media_files ADD INDEX idx_claims (claimed_by)")

    def release_run_lock(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.stop()
            if not lease.lost.is_set():
                try:
                    conn = self._lock_conn or self._connect()
                    with conn.cursor() as cur:
                        cur.execute(
                            "DELETE FROM run_locks WHERE name = %s AND holder = %s", (lease.name, lease.token)
                        )
                    self._lock_conn = conn
                except (self._pymysql.err.Error, DatabaseError) as exc:
                    log.warning(
                        "could not release the run lock (%s): it runs out after %ds", exc, lease.lease_s
                    )
        if self._lock_conn is not None:
            try:
                self._lock_conn.close()
            except self._pymysql.err.Error:
                pass
            self._lock_conn = None

    def close(self) -> None:
        self._flush_before_close()
        with self._lock:  # never in the middle of another thread's statement
            self.release_run_lock()
            try:
                self.conn.close()
            except self._pymysql.err.Error:
                pass


def open_store(settings: Settings, migrate: bool = True) -> Store:
    """The configured backend, migrated and ready (a run that takes the run lock migrates after taking
    it: migrate=False). Raises DatabaseError with a clear message."""
    if settings.db_host:
        store: Store = MysqlStore(settings)
    else:
        store = SqliteStore(settings.db_path, settings.scope, settings.machine_name)
    if migrate:
        migrate_store(store)
    return store


def migrate_store(store: Store) -> None:
    try:
        with store.migration_lock():
            store.migrate()
    except store.backend_errors as exc:
        store.close()
        raise DatabaseError(f"cannot upgrade the {store.describe()} database: {exc}") from None
