"""The state database, on both backends (the `backend` fixture runs each test on SQLite and MariaDB)."""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

import scan_files
from config import load_settings
from db_manager import (
    CLIENT_TABLE_MYSQL,
    DatabaseError,
    KnownFile,
    ScannedFile,
    SqliteStore,
    Store,
    UploadOutcome,
    open_store,
    path_hash,
)
from tests.conftest import (
    MYSQL,
    Env,
    db_rows,
    drop_mysql_database,
    require_mysql,
    run_inprocess,
    run_process,
)
from utils import path_to_text, text_to_path


def scanned(path: str | bytes, size: int = 10, mtime_ns: int = 1, **kw: object) -> ScannedFile:
    raw = path if isinstance(path, bytes) else path.encode()
    text, b64 = path_to_text(raw)
    return ScannedFile(
        raw_path=raw, filepath=text, filepath_b64=b64, filename=text.rsplit("/", 1)[-1],
        directory=text.rsplit("/", 1)[0], extension="jpg", media_type="image", file_size=size,
        mtime_ns=mtime_ns, hash="a" * 64, sha1="b" * 40, date_taken="2021-06-15 10:30:00", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_scanned_row_comes_back_whole_from_a_worker_process() -> None:
    """Rows cross from the scan's worker processes pickled as their values: every field comes back."""
    import pickle
    from dataclasses import fields

    row = scanned(
        b"/p/\xff.jpg", date_source="exif", metadata_info="{}", upload_status="skipped", last_error="why",
        warnings=["odd"],
    )  # fmt: skip
    assert all(getattr(row, f.name) != f.default for f in fields(ScannedFile) if f.name != "warnings")
    assert pickle.loads(pickle.dumps(row, pickle.HIGHEST_PROTOCOL)) == row
    row.note = "set beside the fields"  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(row)).note == "set beside the fields"
    marked = _Marked(**{f.name: getattr(row, f.name) for f in fields(ScannedFile)}, mark=7)
    assert pickle.loads(pickle.dumps(marked)) == marked


@dataclass
class _Marked(ScannedFile):
    mark: int = 0


def test_new_database_is_created_and_migrated(store: Store) -> None:
    assert list(store.iter_known_files()) == []
    assert store.migrate() == []  # applying twice does nothing


def test_known_rows_stream_every_row_of_this_machine_and_no_other(env: Env, store: Store) -> None:
    store.save_scanned([scanned("/p/a.jpg"), scanned("/p/b.jpg", size=20), scanned("/p/c.jpg")], [])
    other = open_store(load_settings(env_file=str(env.path), environ={"MACHINE_NAME": "other-machine"}))
    try:
        other.save_scanned([scanned("/p/a.jpg"), scanned("/p/d.jpg")], [])
    finally:
        other.close()
    streamed = list(store.iter_known_files())
    assert sorted(row[0] for row in streamed) == sorted(
        path_hash(p) for p in (b"/p/a.jpg", b"/p/b.jpg", b"/p/c.jpg")
    )
    known = {row[0]: KnownFile(*row[1:]) for row in streamed}
    row = known[path_hash(b"/p/b.jpg")]
    assert row.file_size == 20 and row.upload_status == "pending" and row.fingerprinted and not row.missing


def test_paths_longer_than_768_characters_stay_unique(store: Store) -> None:
    base = "/" + "x" * 1200
    store.save_scanned([scanned(base + "/one.jpg"), scanned(base + "/two.jpg")], [])
    rows = store.rows()
    assert len(rows) == 2
    assert {r["filepath"] for r in rows} == {base + "/one.jpg", base + "/two.jpg"}


def test_non_utf8_names_are_stored_so_the_file_can_be_opened_again(store: Store) -> None:
    raw1, raw2 = b"/p/caf\xe9.jpg", b"/p/caf\xe8.jpg"  # Latin-1 names: both display as caf?.jpg
    store.save_scanned([scanned(raw1), scanned(raw2)], [])
    rows = store.rows()
    assert len(rows) == 2
    assert {text_to_path(r["filepath"], r["filepath_b64"]) for r in rows} == {raw1, raw2}


def test_pending_uploads_newest_first_and_results_commit(store: Store) -> None:
    old = scanned("/p/old.jpg")
    old.date_taken = "2010-01-01 00:00:00"
    new = scanned("/p/new.jpg")
    new.date_taken = "2024-01-01 00:00:00"
    broken = scanned("/p/broken.jpg")
    broken.hash, broken.upload_status, broken.last_error = "", "error", "empty file"
    store.save_scanned([old, new, broken], [])
    pending = store.pending_uploads()
    assert [p.filepath for p in pending] == ["/p/new.jpg", "/p/old.jpg"]  # unreadable rows are not uploaded
    store.record_upload(
        pending[0].id, UploadOutcome("success", asset_id="asset-1", api_response='{"id":"asset-1"}')
    )
    store.record_upload(pending[1].id, UploadOutcome("error", error="500 boom"))
    assert [p.filepath for p in store.pending_uploads()] == ["/p/old.jpg"]  # error rows are retried
    row = store.row(pending[1].id)
    assert row["upload_status"] == "error" and row["upload_attempts"] == 1 and row["last_error"] == "500 boom"
    done = store.row(pending[0].id)
    assert done["immich_asset_id"] == "asset-1" and done["upload_date"] is not None


def test_upload_results_are_committed_in_batches_and_before_any_other_use_of_the_store(
    env: Env, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit per upload queued the upload threads behind one another. Results wait for a batch, and any
    use of the store commits them first, so nothing this process reads or writes next misses them."""
    import db_manager

    store.save_scanned([scanned(f"/p/{n}.jpg") for n in range(3)], [])
    ids = [p.id for p in store.pending_uploads()]
    other = open_store(env.settings())  # another connection: what another machine (or the next run) reads
    try:
        store.record_upload(ids[0], UploadOutcome("success", asset_id="asset-0"))
        store.record_upload(ids[1], UploadOutcome("success", asset_id="asset-1"))
        assert [r["upload_status"] for r in other.rows()] == ["pending"] * 3  # waiting for their batch
        assert store.row(ids[0])["immich_asset_id"] == "asset-0"  # this store's next use commits them
        assert [r["upload_status"] for r in other.rows()] == ["success", "success", "pending"]
        monkeypatch.setattr(db_manager, "OUTCOME_BATCH_ROWS", 1)
        store.record_upload(ids[2], UploadOutcome("error", error="500 boom"))  # a full batch: at once
        assert [r["upload_status"] for r in other.rows()] == ["success", "success", "error"]
    finally:
        other.close()


def test_closing_the_store_commits_the_upload_results_still_waiting(env: Env) -> None:
    store = open_store(env.settings())
    store.save_scanned([scanned("/p/a.jpg")], [])
    store.record_upload(store.pending_uploads()[0].id, UploadOutcome("success", asset_id="asset-1"))
    store.close()
    (row,) = db_rows(env)
    assert row["upload_status"] == "success" and row["immich_asset_id"] == "asset-1"


def sqlite_store(tmp_path: Path) -> tuple[Path, SqliteStore]:
    """A new SQLite store of its own (the checkpoint's tests: SQLite only) and its database file."""
    path = tmp_path / "state.db"
    store = open_store(load_settings(flags={"DB_PATH": str(path)}, env_file=None, environ={}))
    assert isinstance(store, SqliteStore)
    return path, store


def test_sqlite_indexes_only_claimed_rows_and_finds_a_machines_claims_by_it(tmp_path: Path) -> None:
    """A first scan writes no entry into idx_claims for each of its rows (none is claimed), and renewing
    or releasing a machine's claims still searches that index, not the table. A database whose index
    an earlier version made over every row gets the new one."""
    path, store = sqlite_store(tmp_path)
    store.close()
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP INDEX idx_claims; CREATE INDEX idx_claims ON media_files (claimed_by); "
        "DELETE FROM schema_migrations WHERE name LIKE '0012%';"
    )
    conn.close()
    _, store = sqlite_store(tmp_path)
    try:
        store.save_scanned([scanned(f"/p/{n}.jpg") for n in range(50)], [])
        assert store.claim_rows([1, 2], lease_s=60, waiting_only=False) == {1, 2}
    finally:
        store.close()
    conn = sqlite3.connect(path)
    try:
        claimed = "SELECT count(*) FROM media_files INDEXED BY idx_claims WHERE claimed_by IS NOT NULL"
        assert conn.execute(claimed).fetchone() == (2,)
        (_, _, _, plan), *_ = conn.execute(
            "EXPLAIN QUERY PLAN UPDATE media_files SET claim_until = NULL WHERE claimed_by = ? AND scope = ?",
            ("m", "s"),
        ).fetchall()
        assert "USING INDEX idx_claims" in plan
        (index_sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'idx_claims'").fetchone()
        assert "WHERE claimed_by IS NOT NULL" in index_sql
    finally:
        conn.close()


def checkpoint_then_close(store: Store, caplog: pytest.LogCaptureFixture) -> str:
    """Ask for a checkpoint in the background and close the store; what the store logged meanwhile."""
    with caplog.at_level(logging.DEBUG, logger="immich_uploader.db"):
        store.checkpoint_in_background()
        store.close()
    return caplog.text


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "checkpoint"]


def test_a_checkpoint_in_the_background_copies_the_rows_into_the_database_file(tmp_path: Path) -> None:
    """A scan starts one when its walk ends, so that closing the store (which copies what SQLite's WAL
    holds into the database file, and syncs both) is short once the last file is described."""
    path, store = sqlite_store(tmp_path)
    try:
        store.save_scanned([scanned(f"/p/{n}.jpg") for n in range(2000)], [])
        page_size, pages = (
            store.conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count")
        )
        assert path.stat().st_size < page_size * pages  # the rows are in the WAL only
        store.checkpoint_in_background()
        store.save_scanned([scanned("/p/during.jpg")], [])  # the store's own connection goes on meanwhile
        for thread in _checkpoint_threads():
            thread.join(timeout=60)
        assert path.stat().st_size >= page_size * pages
    finally:
        store.close()
    assert len(store_rows(path)) == 2001


def test_closing_the_store_waits_for_its_checkpoint_and_leaves_no_wal(tmp_path: Path) -> None:
    path, store = sqlite_store(tmp_path)
    store.save_scanned([scanned(f"/p/{n}.jpg") for n in range(500)], [])
    store.checkpoint_in_background()
    store.close()
    assert _checkpoint_threads() == []
    assert not Path(f"{path}-wal").exists()
    assert len(store_rows(path)) == 500


def test_a_checkpoint_that_fails_is_logged_and_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, store = sqlite_store(tmp_path)
    store.save_scanned([scanned("/p/a.jpg")], [])

    def refused(*_args: object, **_kwargs: object) -> sqlite3.Connection:
        raise sqlite3.OperationalError("unable to open database file")

    monkeypatch.setattr(sqlite3, "connect", refused)
    logged = checkpoint_then_close(store, caplog)
    monkeypatch.undo()
    assert "the checkpoint in the background failed: unable to open database file" in logged
    assert len(store_rows(path)) == 1


def test_no_thread_for_a_checkpoint_costs_the_run_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A limit on processes (a container's) refuses the thread: the close copies everything, as before."""
    path, store = sqlite_store(tmp_path)
    store.save_scanned([scanned("/p/a.jpg")], [])
    start = threading.Thread.start

    def refused(thread: threading.Thread) -> None:
        if thread.name == "checkpoint":
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", refused)
    assert "no checkpoint in the background: can't start new thread" in checkpoint_then_close(store, caplog)
    assert len(store_rows(path)) == 1 and not Path(f"{path}-wal").exists()


def test_no_checkpoint_starts_once_the_store_is_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write still under way when the run stops (a second Ctrl+C) may ask for one after the close began."""
    _, store = sqlite_store(tmp_path)
    store.save_scanned([scanned("/p/a.jpg")], [])
    store.close()
    release = threading.Event()
    monkeypatch.setattr(
        SqliteStore, "_checkpoint", lambda _store: release.wait(timeout=60)
    )  # alive if started
    try:
        store.checkpoint_in_background()
        assert _checkpoint_threads() == []
    finally:
        release.set()


def store_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT filepath FROM media_files").fetchall()
    finally:
        conn.close()


def test_missing_files_are_marked_never_deleted(store: Store) -> None:
    store.save_scanned([scanned("/p/a.jpg")], [])
    row_id = store.pending_uploads()[0].id
    store.set_missing([row_id], missing=True)
    assert store.pending_uploads() == []
    assert store.status_counts()["missing"][0] == 1
    store.set_missing([row_id], missing=False)
    assert len(store.pending_uploads()) == 1


def test_a_failed_batch_leaves_no_half_written_rows(store: Store) -> None:
    good, dup = scanned("/p/a.jpg"), scanned("/p/a.jpg")  # same path twice violates the unique key
    with pytest.raises(Exception):  # noqa: B017 - the backend's own integrity error
        store.save_scanned([good, dup], [])
    assert store.rows() == []


def test_named_state_written_by_two_machines_at_once_keeps_one_value(env: Env) -> None:
    import threading

    stores = [open_store(env.settings()), open_store(env.settings())]
    barrier = threading.Barrier(2)
    failures: list[BaseException] = []

    def write(store: Store, value: str) -> None:
        for _ in range(30):
            barrier.wait()
            try:
                store.set_state("current_target", value)
            except BaseException as exc:
                failures.append(exc)
            barrier.wait()
            if value == "a":
                store.set_state("current_target", None)  # a fresh start for the next round

    try:
        threads = [threading.Thread(target=write, args=(s, v)) for s, v in zip(stores, "ab", strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        stores[0].set_state("current_target", "c")  # an existing name gets the new value
        assert stores[1].get_state("current_target") == "c"
        stores[1].set_state("current_target", None)
        assert stores[0].get_state("current_target") is None
    finally:
        for store in stores:
            store.close()


def test_run_lock_admits_one_run(env: Env) -> None:
    first, second = open_store(env.settings()), open_store(env.settings())
    try:
        assert first.acquire_run_lock()
        assert not second.acquire_run_lock()
        first.release_run_lock()
        assert second.acquire_run_lock()
    finally:
        first.close()
        second.close()


def test_client_sqlite_database_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "client.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE media_files (id INTEGER PRIMARY KEY AUTOINCREMENT, filepath TEXT NOT NULL, "
        "filename TEXT NOT NULL, directory TEXT, file_size INTEGER, hash TEXT NOT NULL, extension TEXT, "
        "upload_status TEXT DEFAULT 'pending', api_response TEXT, upload_date TIMESTAMP NULL, "
        "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
    )
    conn.execute("CREATE UNIQUE INDEX uk_filepath ON media_files(filepath)")
    conn.execute(
        "INSERT INTO media_files (filepath, filename, directory, file_size, hash, extension, upload_status) "
        "VALUES ('/old/a.jpg', 'a.jpg', '/old', 5, ?, 'jpg', 'success')",
        ("c" * 64,),
    )
    conn.commit()
    conn.close()
    store = open_store(load_settings(flags={"DB_PATH": str(path)}, env_file=None, environ={}))
    try:
        rows = store.rows()
        assert rows[0]["upload_status"] == "success" and rows[0]["hash"] == "c" * 64
        assert path_hash(b"/old/a.jpg") in {row[0] for row in store.iter_known_files()}
    finally:
        store.close()


def test_client_mysql_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """The client's own table: rows, statuses and answers survive the upgrade and the first scan, also for
    paths that the new collation would call equal."""
    require_mysql()
    import hashlib

    import pymysql

    photos = tmp_path / "photos"
    photos.mkdir()
    names = ["a.jpg", "Straße.jpg", "Strasse.jpg", "pending.jpg"]
    for i, name in enumerate(names):
        (photos / name).write_bytes(b"\xff\xd8" + bytes([i]) * 500)
    name = "iu_test_client_schema"
    drop_mysql_database(name)
    conn = pymysql.connect(**MYSQL, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci")
        cur.execute(f"USE `{name}`")
        cur.execute(
            CLIENT_TABLE_MYSQL.replace(
                "DEFAULT CHARSET=utf8mb4", "DEFAULT CHARSET=utf8mb4 COLLATE utf8mb4_bin"
            )
        )
        for file_name in names:
            path = photos / file_name
            status = "pending" if file_name == "pending.jpg" else "success"
            cur.execute(
                "INSERT INTO media_files (filepath, filename, directory, file_size, hash, extension, "
                "upload_status, api_response) VALUES (%s, %s, %s, %s, %s, 'jpg', %s, %s)",
                (str(path), file_name, str(photos), path.stat().st_size,
                 hashlib.sha256(path.read_bytes()).hexdigest(), status, '{"id":"x"}'),
            )  # fmt: skip
    conn.close()
    env = tmp_path / "mysql.env"
    env.write_text(
        f"DB_HOST=127.0.0.1\nDB_USER=root\nDB_NAME={name}\nSOURCE_DIR={photos}\nMACHINE_NAME=studio\n"
    )
    try:
        result = run_inprocess(scan_files.main, "--env-file", str(env), "--no-progress")
        assert result.status == 0, result.stderr
        store = open_store(load_settings(env_file=str(env), environ={}))
        rows = {r["filename"]: r for r in store.rows()}
        assert len(rows) == 4
        assert {n: rows[n]["upload_status"] for n in names} == {
            "a.jpg": "success", "Straße.jpg": "success", "Strasse.jpg": "success", "pending.jpg": "pending",
        }  # fmt: skip
        assert rows["a.jpg"]["api_response"] == '{"id":"x"}' and rows["a.jpg"]["sha1"]
        assert {r["scope"] for r in rows.values()} == {"m:studio"}  # the machine that ran the migration
        long_path = "/" + "y" * 900
        store.save_scanned([scanned(long_path + "/1.jpg"), scanned(long_path + "/2.jpg")], [])
        assert len(store.rows()) == 6
        store.close()
    finally:
        drop_mysql_database(name)


def test_wrong_mysql_password_is_one_line_exit_2(tmp_path: Path) -> None:
    require_mysql()
    env = tmp_path / "bad.env"
    env.write_text(
        f"DB_HOST=127.0.0.1\nDB_USER=nobody_here\nDB_PASSWORD=s3cr3t-pw\nSOURCE_DIR={tmp_path}\n"
        f"LOG_FILE={tmp_path}/log.txt\n"
    )
    result = run_process("scan_files.py", "--env-file", str(env))
    assert result.status == 2
    assert result.lines[0].startswith(
        "immich-uploader: error: MySQL at 127.0.0.1:3306 refused user 'nobody_here'"
    )
    assert "Traceback" not in result.stderr and "s3cr3t-pw" not in result.stderr


def test_unreachable_mysql_is_one_line_exit_2(tmp_path: Path) -> None:
    env = tmp_path / "down.env"
    env.write_text(f"DB_HOST=127.0.0.1\nDB_PORT=1\nSOURCE_DIR={tmp_path}\nLOG_FILE={tmp_path}/log.txt\n")
    result = run_process("scan_files.py", "--env-file", str(env))
    assert result.status == 2
    assert (
        "cannot connect to MySQL at 127.0.0.1:1" in result.stderr
        and "check DB_HOST and DB_PORT" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_unwritable_sqlite_path_is_one_line_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseError, match="DB_PATH"):
        open_store(load_settings(flags={"DB_PATH": str(blocker / "x.db")}, environ={}))


def test_mysql_transaction_lost_to_a_dropped_connection_is_replayed_once(env: Env, backend: str) -> None:
    if backend != "mysql":
        pytest.skip("connection loss is a MySQL matter")
    store = open_store(env.settings())
    try:
        import pymysql

        store.conn.ping = lambda reconnect=False: None  # type: ignore[attr-defined] # let the loss reach the statement
        killer = pymysql.connect(**MYSQL, autocommit=True)
        with killer.cursor() as cur:
            cur.execute("KILL %s", (store.conn.thread_id(),))  # type: ignore[attr-defined]
        killer.close()
        store.save_scanned([scanned("/p/after-kill.jpg")], [])  # the transaction fails, reconnects, replays
        assert [p.filepath for p in store.pending_uploads()] == ["/p/after-kill.jpg"]
    finally:
        store.close()


def test_mysql_single_write_lost_to_a_dropped_connection_is_made_on_a_new_one(env: Env, backend: str) -> None:
    if backend != "mysql":
        pytest.skip("connection loss is a MySQL matter")
    store = open_store(env.settings())
    try:
        import pymysql

        store.save_scanned([scanned("/p/sent.jpg")], [])
        row_id = store.pending_uploads()[0].id
        killer = pymysql.connect(**MYSQL, autocommit=True)
        with killer.cursor() as cur:
            cur.execute("KILL %s", (store.conn.thread_id(),))  # type: ignore[attr-defined]
        killer.close()
        store.record_upload(
            row_id, UploadOutcome("success", asset_id="asset-1")
        )  # committed by the read below
        assert (
            store.row(row_id)["upload_status"] == "success"
            and store.row(row_id)["immich_asset_id"] == "asset-1"
        )
    finally:
        store.close()


def test_addresses_stored_with_a_password_are_masked_by_a_migration(env: Env) -> None:
    """Earlier versions stored IMMICH_URL as written: the password of a proxy's basic auth in it was there for
    every machine of a shared database to read, in the targets and in the runs' summaries."""
    store = open_store(env.settings())
    try:
        store.target_id("user-1", "http://alice:s3cret-pw@nas:2283", "a@example.com")
        summary = {
            "server_problem": "http://alice:s3cret-pw@nas:2283 has been away",
            "error_files": ["a@b.jpg"],
        }
        store.record_run("upload", "2026-01-01 00:00:00", 3, summary)
        store._execute(
            store.sql("DELETE FROM schema_migrations WHERE name = ?"), ("0009_scrub_url_passwords",)
        )
        assert store.migrate() == ["0009_scrub_url_passwords"]
        (url,) = store._query("SELECT server_url FROM immich_targets")[0]
        assert url == "http://alice:****@nas:2283"
        last = store.last_run("upload")
        assert last is not None and last["summary"] == {
            "server_problem": "http://alice:****@nas:2283 has been away",
            "error_files": ["a@b.jpg"],
        }
    finally:
        store.close()
