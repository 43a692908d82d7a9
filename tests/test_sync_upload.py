"""The nightly job: scan and upload as one pipeline, safe under cron, signals and kill -9."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import sync_upload
from db_manager import open_store
from tests.conftest import (
    API_KEY,
    Env,
    Library,
    Result,
    run_inprocess,
    run_process,
    start_process,
    unstamped,
)
from tests.immich_server import ImmichTestServer

SUMMARY_KEYS = (
    "found",
    "new",
    "changed",
    "unchanged",
    "uploaded",
    "duplicates",
    "skipped",
    "errors",
    "bytes_uploaded",
    "elapsed_s",
)


def sync(env: Env, *extra: str) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--json", *extra)
    return result.status, json.loads(result.stdout), result.stderr


def bodies_per_checksum(server: ImmichTestServer) -> dict[str, int]:
    """How often each file's bytes were processed by the server (an early "duplicate" answer from the
    checksum header reads no body and does not count)."""
    counts: dict[str, int] = {}
    for record in server.uploads:
        if record.size_bytes > 0:
            counts[record.sha1_hex] = counts.get(record.sha1_hex, 0) + 1
    return counts


def row_statuses(env: Env) -> list[str]:
    store = open_store(env.settings())
    try:
        return [str(r["upload_status"]) for r in store.rows()]
    finally:
        store.close()


def test_sync_scans_and_uploads_and_a_rerun_sends_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(8)
    status, summary, stderr = sync(server_env)
    assert status == 0, stderr
    assert all(key in summary for key in SUMMARY_KEYS)
    assert summary["found"] == 8 and summary["new"] == 8 and summary["uploaded"] == 8
    assert immich.upload_count() == 8
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["unchanged"] == 8 and summary["uploaded"] == 0
    assert immich.upload_count() == 8 and len(immich.uploads) == 8


def test_rows_left_pending_by_an_earlier_run_are_uploaded_on_the_next(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(3)
    server_env.set(SERVER_WAIT=0.3, UPLOAD_CONCURRENCY=1)
    immich.faults.add(status=503, count=1000, path="/api/assets", method="POST")
    status, _, _ = sync(server_env)
    assert status == 3
    assert set(row_statuses(server_env)) == {"pending"}  # the server was away: no file is marked failed
    immich.faults.clear()
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["uploaded"] == 3 and summary["unchanged"] == 3
    assert set(row_statuses(server_env)) == {"success"}


def test_without_a_server_it_scans_then_names_the_two_settings(env: Env, library: Library) -> None:
    library.photos(2)
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--no-progress")
    assert result.status == 2
    assert result.lines[-1].startswith("immich-uploader: error: IMMICH_URL and IMMICH_API_KEY not set")
    assert row_statuses(env) == ["pending", "pending"]


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Wait on a condition (never on the clock alone); fail with `what` if it never holds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def sync_watching(
    env: Env, until: Callable[[], bool], what: str, look: Callable[[], object], release: threading.Event
) -> tuple[list[object], Result]:
    """A sync run in this process while a watcher waits for `until`, notes `look()` then and sets `release`
    (what the test holds the run on). Returns what the watcher saw (nothing if `until` never held) and the
    run's result."""
    seen: list[object] = []

    def watch_then_release() -> None:
        try:
            wait_for(until, what)
            seen.append(look())
        finally:
            release.set()

    watcher = threading.Thread(target=watch_then_release)
    watcher.start()
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--no-progress")
    watcher.join()
    return seen, result


def uploads_arrived(server: ImmichTestServer) -> int:
    return sum(1 for method, path in server.requests_log if (method, path) == ("POST", "/api/assets"))


def test_second_run_while_one_is_going_exits_0_at_once(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(2)
    immich.upload_gate.clear()  # the first run holds the lock, its uploads held at the server
    first = start_process("sync_upload.py", "--env-file", str(server_env.path), "--no-progress")
    try:
        wait_for(lambda: uploads_arrived(immich) > 0, "the first run's upload")
        second = run_process("sync_upload.py", "--env-file", str(server_env.path))
        assert second.status == 0 and "another run is in progress" in second.stderr
    finally:
        immich.upload_gate.set()
        first.wait(30)
    assert first.returncode == 0


def test_a_database_restart_mid_run_lets_no_second_run_start_beside_it(
    server_env: Env, library: Library, immich: ImmichTestServer, backend: str
) -> None:
    if backend != "mysql":
        pytest.skip("a database server restart is a MySQL matter")
    import pymysql

    from tests.conftest import MYSQL

    photos = library.photos(12)
    server_env.set(UPLOAD_CONCURRENCY=2)
    # Uploads are held at the server from the start: waiting for a first few to land, then closing the gate,
    # raced the run (all 12 could land in between, and then none was held).
    immich.upload_gate.clear()
    first = start_process("sync_upload.py", "--env-file", str(server_env.path), "--no-progress")
    try:
        wait_for(lambda: uploads_arrived(immich) >= 2, "uploads held in flight")
        # What a restart does to the run: every connection it had is gone (its locks with them).
        database = server_env.values["DB_NAME"]
        admin = pymysql.connect(**MYSQL)
        with admin.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s", (database,))
            for (connection_id,) in cur.fetchall():
                cur.execute(f"KILL {int(connection_id)}")
        admin.close()
        second = run_process("sync_upload.py", "--env-file", str(server_env.path), "--no-progress")
        assert second.status == 0 and "another run is in progress" in second.stderr
    finally:
        immich.upload_gate.set()
        first.wait(60)
    assert first.returncode == 0, first.stderr.read() if first.stderr else ""
    assert immich.upload_count() == len(photos)
    assert all(count == 1 for count in bodies_per_checksum(immich).values())


def test_sigterm_stops_cleanly_with_exit_130_and_true_rows(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(10)
    server_env.set(UPLOAD_CONCURRENCY=1)
    for _ in range(10):
        immich.faults.add(delay_s=0.3, path="/api/assets", method="POST")
    proc = start_process("sync_upload.py", "--env-file", str(server_env.path), "--no-progress")
    deadline = time.monotonic() + 20
    while immich.upload_count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "stopping as asked (SIGTERM): finishing the files in progress" in err
    assert "Ctrl+C" not in err  # it was no keyboard
    statuses = row_statuses(server_env)
    uploaded = immich.upload_count()
    assert statuses.count("success") == uploaded and statuses.count("pending") == 10 - uploaded
    assert 0 < uploaded < 10


def test_kill_9_at_any_moment_loses_nothing_and_uploads_nothing_twice(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(12)
    server_env.set(UPLOAD_CONCURRENCY=2)
    for delay_s in (0.0, 0.4, 0.9):
        for _ in range(12):
            immich.faults.add(delay_s=0.15, path="/api/assets", method="POST")
        proc = start_process("sync_upload.py", "--env-file", str(server_env.path), "--no-progress")
        time.sleep(0.5 + delay_s)
        proc.kill()
        proc.wait(10)
        immich.faults.clear()
    status, _summary, stderr = sync(server_env)
    assert status == 0, stderr
    assert set(row_statuses(server_env)) <= {"success", "duplicate"}
    assert len(row_statuses(server_env)) == 12
    assert immich.upload_count() == 12
    assert max(bodies_per_checksum(immich).values()) == 1


def test_server_version_2_gets_device_fields_in_sync(env: Env, library: Library) -> None:
    library.photos(2)
    with ImmichTestServer(api_key=API_KEY, version=(2, 0, 1)) as old:
        env.set(IMMICH_URL=old.url + "/api/", IMMICH_API_KEY=API_KEY)
        status, summary, _ = sync(env)
        assert status == 0 and summary["uploaded"] == 2


def test_watch_uploads_new_files_once_they_settle_and_survives_the_server_going_away(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    server_env.set(WATCH_SETTLE="0.5", MAX_RETRIES=0)
    proc = start_process("sync_upload.py", "--env-file", str(server_env.path), "--watch", "--no-progress")
    try:
        wait_for(lambda: immich.upload_count() == 1, "the first upload")
        library.photo("later/new.jpg", n=5)
        wait_for(lambda: immich.upload_count() == 2, "the new file's upload")
        immich.down()
        library.photo("later/while_down.jpg", n=6)
        time.sleep(2.0)  # a pass fails to connect and waits to retry
        immich.up()
        wait_for(lambda: immich.upload_count() == 3, "the upload after the server came back")
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert max(bodies_per_checksum(immich).values()) == 1


def test_a_malformed_immich_url_is_reported_before_the_scan(env: Env, library: Library) -> None:
    library.photos(2)
    env.set(IMMICH_URL="nas:2283", IMMICH_API_KEY=API_KEY)
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--no-progress")
    assert result.status == 2
    line = list(env.values).index("IMMICH_URL") + 1
    assert result.lines == [
        f"immich-uploader: error: IMMICH_URL (from {env.path}, line {line}): 'nas:2283' is not an http:// "
        "or https:// address (e.g. http://nas:2283): did you mean http://nas:2283?"
    ]
    assert row_statuses(env) == []  # nothing was scanned first


def test_an_unmounted_source_is_one_line_exit_2_and_marks_nothing_missing(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path
) -> None:
    library.photos(3)
    assert sync(server_env)[0] == 0
    parked = tmp_path / "parked"
    library.root.rename(parked)  # the NAS is not mounted tonight: an empty mount point is left
    library.root.mkdir()
    status, summary, stderr = sync(server_env)
    assert status == 2 and summary["missing"] == 0 and summary["unavailable_sources"] == [str(library.root)]
    assert (
        f"immich-uploader: error: {library.root} is empty, but 3 files were recorded there: is it mounted? "
        "Nothing was marked missing; if it really is empty now, run again with --confirm-empty"
    ) in [unstamped(line) for line in stderr.splitlines()]
    store = open_store(server_env.settings())
    try:
        assert all(r["missing_since"] is None for r in store.rows())
    finally:
        store.close()
    library.root.rmdir()  # not even the mount point: same words, same care
    status, summary, stderr = sync(server_env)
    assert status == 2 and "does not exist, but 3 files were recorded there" in stderr
    library.root.mkdir()
    status, summary, _ = sync(server_env, "--confirm-empty")
    assert status == 0 and summary["missing"] == 3


def test_files_the_upload_queue_had_no_room_for_during_the_scan_are_sent_after_it(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import scanner
    import uploader

    library.photos(12)
    monkeypatch.setattr(uploader, "FEED_BATCH", 2)
    monkeypatch.setattr(scanner, "HANDOFF_EVERY_FILES", 2)  # the scan hands over two files at a time
    server_env.set(UPLOAD_CONCURRENCY=1)
    immich.faults.add(delay_s=0.05, count=12, path="/api/assets", method="POST")
    overflowed = []
    real_finish = uploader.Uploader.finish
    monkeypatch.setattr(
        uploader.Uploader, "finish", lambda self: overflowed.append(self.overflowed) or real_finish(self)
    )
    status, summary, _ = sync(server_env)
    assert overflowed == [True]  # the scan outran the uploads: the rest waited in the database
    assert status == 0 and summary["uploaded"] == 12
    assert max(bodies_per_checksum(immich).values()) == 1 and len(bodies_per_checksum(immich)) == 12


def hand_ons_when_dry_after_4(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scan hands rows on only when the uploads run dry, 4 at the least; returns the sizes it handed on."""
    import scanner

    monkeypatch.setattr(scanner, "HANDOFF_FIRST_FILES", 10**6)
    monkeypatch.setattr(scanner, "HANDOFF_EVERY_FILES", 10**6)
    monkeypatch.setattr(scanner, "HANDOFF_DRY_MIN_FILES", 4)
    handed: list[int] = []
    hand_on = scanner._SaveBatch._hand_on

    def recorded(self: scanner._SaveBatch, ready: list[str]) -> None:
        handed.append(len(ready))
        hand_on(self, ready)

    monkeypatch.setattr(scanner._SaveBatch, "_hand_on", recorded)
    return handed


def test_a_sync_hands_rows_on_as_soon_as_its_uploads_run_dry(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uploads tell the scan when they run out of rows: idle at the start, they get the first 4 here,
    not the 12 the counts alone would wait for."""
    library.photos(12)
    handed = hand_ons_when_dry_after_4(monkeypatch)
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["uploaded"] == 12
    assert handed[0] == 4 and sum(handed) == 12
    assert max(bodies_per_checksum(immich).values()) == 1 and len(bodies_per_checksum(immich)) == 12


def test_rows_immich_has_already_are_not_handed_on_early_again_and_again(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows the bulk check settles never reach the upload queue, which then stays dry: once a hand-on queued
    nothing to send, the scan goes back to its counts, instead of a bulk check every 4 files here (a second
    machine's first sync of photos already in Immich: 46 bulk checks for 3,000 photos instead of 8)."""
    import scanner

    for photo in library.photos(12):
        immich.add_existing_asset(photo.read_bytes())
    handed = hand_ons_when_dry_after_4(monkeypatch)
    init = scanner._SaveBatch.__init__

    def writing_in_turn(self: scanner._SaveBatch, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.in_background = False  # each hand-on done before the next file: nothing left to timing

    monkeypatch.setattr(scanner._SaveBatch, "__init__", writing_in_turn)
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["duplicates"] == 12 and immich.upload_count() == 0
    assert handed == [4, 8]


def test_a_failure_of_the_main_thread_mid_upload_closes_nothing_under_the_workers(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import db_manager
    import scanner

    library.photos(40)
    monkeypatch.setattr(scanner, "HANDOFF_EVERY_FILES", 5)
    immich.faults.add(delay_s=0.2, count=40, path="/api/assets", method="POST")
    saves = 0
    real_save = scanner._SaveBatch.save

    def save_then_fail(batch):  # type: ignore[no-untyped-def]
        nonlocal saves
        real_save(batch)
        saves += 1
        if saves == 2:  # uploads of the first batch are in flight
            wait_for(lambda: uploads_arrived(immich) > 0, "an upload in flight")
            raise RuntimeError("a bug in the scan")

    alive_at_close: list[list[str]] = []
    store_close = {name: getattr(db_manager, name).close for name in ("SqliteStore", "MysqlStore")}

    def close_and_look(store):  # type: ignore[no-untyped-def]
        alive_at_close.append([t.name for t in threading.enumerate() if t.name.startswith("upload-")])
        store_close[type(store).__name__](store)

    monkeypatch.setattr(scanner._SaveBatch, "save", save_then_fail)
    monkeypatch.setattr(db_manager.SqliteStore, "close", close_and_look)
    monkeypatch.setattr(db_manager.MysqlStore, "close", close_and_look)
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    assert result.status == 70 and "a bug in the scan" in result.stderr
    assert alive_at_close and alive_at_close[0] == []  # every worker was stopped and joined first
    assert immich.errors == []


def test_the_state_database_deleted_during_a_run_stops_it_with_one_line(
    server_env: Env, library: Library, immich: ImmichTestServer, backend: str
) -> None:
    if backend != "sqlite":
        pytest.skip("a database file is a SQLite matter")
    import threading

    library.photos(6)
    server_env.set(UPLOAD_CONCURRENCY=1)
    database = server_env.settings().db_path
    immich.upload_gate.clear()

    def delete_the_database_mid_run() -> None:
        wait_for(lambda: uploads_arrived(immich) > 0, "the first upload")
        database.unlink()
        immich.upload_gate.set()

    remover = threading.Thread(target=delete_the_database_mid_run)
    remover.start()
    try:
        result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    finally:
        immich.upload_gate.set()
        remover.join()
    assert result.status == 2
    assert "was deleted or replaced during the run" in result.stderr and "Traceback" not in result.stderr


def test_a_file_whose_answer_was_lost_is_this_machines_upload_not_a_duplicate(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photos = library.photos(3)
    # The server stores the first upload, then the connection is cut before its answer arrives.
    immich.faults.add(drop_answer=True, path="/api/assets", method="POST")
    status, summary = sync(server_env, "--delete-uploaded")[:2]
    assert status == 0 and summary["uploaded"] == 3 and summary["duplicates"] == 0
    assert summary["deleted"] == 3 and not any(p.exists() for p in photos)
    assert set(row_statuses(server_env)) == {"success"}


def test_a_finished_upload_is_recorded_while_a_long_one_beside_it_still_runs(
    server_env: Env, library: Library, immich: ImmichTestServer, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upload results wait for a batch's commit (db_manager.Store.record_upload), but not for the end of a
    long upload beside them: once one has waited OUTCOME_WAIT_S, the main thread commits it."""
    if backend != "sqlite":
        pytest.skip("the same Store code on both backends; read here through a second SQLite connection")
    import sqlite3

    import db_manager

    monkeypatch.setattr(db_manager, "OUTCOME_WAIT_S", 0.05)
    library.photos(2)
    server_env.set(UPLOAD_CONCURRENCY=2)
    released = threading.Event()
    immich.faults.add(path="/api/assets", method="POST", hold=released)  # the first upload: a long one
    database = server_env.settings().db_path

    def committed() -> list[str]:
        if not database.exists():
            return []
        reader = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        try:
            return sorted(str(r[0]) for r in reader.execute("SELECT upload_status FROM media_files"))
        except sqlite3.OperationalError:  # no table yet
            return []
        finally:
            reader.close()

    seen, result = sync_watching(
        server_env, lambda: committed() == ["pending", "success"], "the other's result", committed, released
    )
    assert seen == [["pending", "success"]]  # committed while the held upload was still running
    assert result.status == 0 and row_statuses(server_env) == ["success", "success"]


def test_rows_written_are_handed_to_the_uploads_while_a_big_file_is_still_being_hashed(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan writes its rows on a writer thread and hands them on once written: not only when the next
    file's hashing is done (a video of many gigabytes), or a sync's uploads would wait for it."""
    import scanner

    monkeypatch.setattr(scanner, "HANDOFF_EVERY_FILES", 1)
    library.photos(3)
    library.photo("photos/later/big.jpg", n=9)  # walked after the three: a subfolder comes later
    hashed = threading.Event()
    real_describe = scanner.describe_file

    def slow_for_the_big_one(found, *args):  # type: ignore[no-untyped-def]
        if found.raw_path.endswith(b"big.jpg"):
            hashed.wait(60)
        return real_describe(found, *args)

    monkeypatch.setattr(scanner, "describe_file", slow_for_the_big_one)
    seen, result = sync_watching(
        server_env, lambda: immich.upload_count() >= 3, "three uploads", immich.upload_count, hashed
    )
    assert seen == [3]  # uploaded before the big file's hashing ended
    assert result.status == 0 and immich.upload_count() == 4


def test_a_file_sent_by_a_run_killed_before_it_recorded_the_answer_is_this_machines_upload(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    run_process("scan_files.py", "--env-file", str(server_env.path))
    immich.add_existing_asset(photo.read_bytes())  # what the killed run's upload left on the server
    store = open_store(server_env.settings())
    try:
        (row,) = store.rows()
        from immich_client import ImmichClient
        from uploader import adopt_target, connect

        client = ImmichClient(server_env.settings())
        target = adopt_target(client, store, connect(client))
        client.close()
        store.mark_sending([int(row["id"])], target)  # it was offered to this server, which lacked it then
    finally:
        store.close()
    status, summary, _ = sync(server_env, "--delete-uploaded")
    assert (
        status == 0 and summary["recovered"] == 1 and summary["duplicates"] == 0 and summary["deleted"] == 1
    )
    assert summary["uploaded"] == 0 and row_statuses(server_env) == ["success"] and immich.upload_count() == 0


def test_a_dry_run_says_what_its_scan_found_and_the_real_run_after_it_agrees(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(2)
    library.write("b/empty.jpg", b"")  # skipped: 0 bytes
    library.write("b/fake.jpg", b"this is no photo\n")  # skipped: not the media its name claims
    dangling = library.root / "b" / "dangling.jpg"
    dangling.symlink_to(library.root / "nowhere.jpg")  # an error
    dry = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run", "--json")
    said = json.loads(dry.stdout)
    assert dry.status == 1  # as the real run: a file failed
    assert (said["found"], said["new"], said["skipped"], said["errors"]) == (4, 4, 2, 1)
    assert said["would_upload"] == 2 and said["error_files"] == [str(dangling)]
    assert f"error: {dangling}: dangling symbolic link" in dry.stderr  # as the real run shows it
    lines = dry.lines
    for row in (
        "found              4",
        "new                4",
        "skipped            2",
        "errors             1,",
    ):
        assert any(line.startswith("  " + row) for line in lines), (row, lines)
    # The errors the summary counts are listed under Recent errors, as a real run's.
    store = open_store(server_env.settings())
    try:
        assert [p.path for p in store.last_run_problems()[1]] == [str(dangling)]
    finally:
        store.close()
    # The real run after it: the scan is done (nothing new, changed or skipped now), the rest as said.
    status, summary, _ = sync(server_env)
    assert status == 1 and summary["uploaded"] == said["would_upload"] and summary["errors"] == 1
    assert (summary["found"], summary["new"], summary["unchanged"], summary["skipped"]) == (4, 0, 4, 0)


def test_a_dry_run_with_no_progress_still_ends_with_its_scan_counts(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(3)
    library.write("empty.jpg", b"")
    dry = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run", "--no-progress")
    assert dry.status == 0, dry.stderr
    assert dry.lines[0] == "Dry run: nothing was sent, changed or deleted"
    assert [line.split()[0] for line in dry.lines[1:8]] == [
        "found", "new", "changed", "unchanged", "missing", "skipped", "errors"
    ]  # fmt: skip
    assert "found              4" in dry.stderr and "skipped            1" in dry.stderr
