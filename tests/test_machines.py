"""Several machines on one MariaDB (issue 12): each machine's own rows, and shared libraries whose files are
split between the machines syncing them, each hashed and sent once, with leases a dead machine gives up."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import sync_upload
from config import load_settings
from db_manager import open_store
from tests.conftest import (
    API_KEY,
    MYSQL,
    Library,
    drop_mysql_database,
    require_mysql,
    run_inprocess,
    start_process,
)
from tests.immich_server import ImmichTestServer


@pytest.fixture
def database() -> Iterator[str]:
    require_mysql()
    name = f"iu_machines_{uuid.uuid4().hex[:10]}"
    yield name
    drop_mysql_database(name)


def machine_env(
    tmp_path: Path, database: str, machine: str, server: ImmichTestServer, **extra: object
) -> Path:
    path = tmp_path / f"{machine}.env"
    values = {
        "DB_HOST": MYSQL["host"], "DB_PORT": MYSQL["port"], "DB_USER": MYSQL["user"], "DB_NAME": database,
        "MACHINE_NAME": machine, "IMMICH_URL": server.url, "IMMICH_API_KEY": API_KEY,
        "LOG_FILE": tmp_path / "logs" / f"{machine}.log", "RETRY_BACKOFF": "0.01", "SERVER_WAIT": "20",
        **extra,
    }  # fmt: skip
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def rows_of(env: Path) -> list[dict[str, object]]:
    store = open_store(load_settings(env_file=str(env), environ={}))
    try:
        return store.rows()
    finally:
        store.close()


def bodies_per_checksum(server: ImmichTestServer) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in server.uploads:
        if record.size_bytes > 0:
            counts[record.sha1_hex] = counts.get(record.sha1_hex, 0) + 1
    return counts


def failures(results: list[tuple[int, dict[str, object], str]]) -> list[int]:
    """The failed machines' exit statuses; their whole output goes to pytest's captured stdout."""
    for status, _, err in results:
        if status != 0:
            print(f"--- exit {status} ---\n{err}")
    return [status for status, _, _ in results]


def finish(proc: subprocess.Popen[str]) -> tuple[int, dict[str, object], str]:
    out, err = proc.communicate(timeout=120)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, json.loads(lines[-1]) if lines else {}, err


def test_two_machines_at_the_same_path_keep_their_own_rows_and_run_at_once(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    photos = library.photos(4)
    laptop = machine_env(tmp_path, database, "laptop", immich, SOURCE_DIR=library.root)
    desktop = machine_env(tmp_path, database, "desktop", immich, SOURCE_DIR=library.root)
    immich.faults.add(delay_s=0.5, count=2, path="/api/assets", method="POST")
    first = start_process("sync_upload.py", "--env-file", str(laptop), "--json", "--no-progress")
    time.sleep(0.3)
    second = start_process("sync_upload.py", "--env-file", str(desktop), "--json", "--no-progress")
    (status_a, summary_a, err_a), (status_b, summary_b, err_b) = finish(first), finish(second)
    assert status_a == 0 and status_b == 0, err_a + err_b
    assert "another run is in progress" not in err_a + err_b  # one lock per machine, not per database
    assert summary_a["found"] == summary_b["found"] == 4
    assert summary_a["uploaded"] + summary_b["uploaded"] == 4 and len(immich.assets) == 4
    rows = rows_of(laptop)
    assert sorted(str(r["scope"]) for r in rows) == ["m:desktop"] * 4 + ["m:laptop"] * 4
    # A file gone from the desktop's copy is the desktop's business only.
    photos[0].unlink()
    status, summary, _ = finish(start_process("sync_upload.py", "--env-file", str(desktop), "--json"))
    assert status == 0 and summary["missing"] == 1
    missing = {str(r["scope"]) for r in rows_of(laptop) if r["missing_since"] is not None}
    assert missing == {"m:desktop"}


def test_content_a_machine_uploaded_is_a_duplicate_on_another_without_asking_the_server(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    library.photos(3)
    laptop = machine_env(tmp_path, database, "laptop", immich, SOURCE_DIR=library.root)
    assert run_inprocess(sync_upload.main, "--env-file", str(laptop)).status == 0
    copy = tmp_path / "phone-backup"
    subprocess.run(["cp", "-r", str(library.root), str(copy)], check=True)
    desktop = machine_env(tmp_path, database, "desktop", immich, SOURCE_DIR=copy)
    before = len(immich.requests_log)
    result = run_inprocess(sync_upload.main, "--env-file", str(desktop), "--json")
    summary = json.loads(result.stdout)
    assert result.status == 0 and summary["duplicates"] == 3 and summary["uploaded"] == 0
    asked = [p for _, p in immich.requests_log[before:] if p.startswith("/api/assets")]
    assert asked == []  # neither a bulk check nor an upload: the database knew


def test_a_shared_library_is_split_between_three_machines_each_file_hashed_and_sent_once(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    library.photos(60)
    immich.faults.add(delay_s=0.5, count=60, path="/api/assets", method="POST")  # m1 alone: 7.5 s
    procs = []
    for machine in ("m1", "m2", "m3"):
        mount = tmp_path / f"mnt-{machine}"
        mount.symlink_to(library.root)  # the share is mounted at a different path on each machine
        env = machine_env(tmp_path, database, machine, immich, SOURCE_DIR=mount, SHARED_LIBRARY="family")
        procs.append(start_process("sync_upload.py", "--env-file", str(env), "--json", "--no-progress"))
        if machine == "m1":
            # m2 and m3 join (together) once m1 is uploading: a library this small is otherwise all
            # claimed by whichever machine walks it first, and the others rightly find nothing to do.
            deadline = time.monotonic() + 30
            while ("POST", "/api/assets") not in immich.requests_log and time.monotonic() < deadline:
                time.sleep(0.02)
    results = [finish(proc) for proc in procs]
    assert all(status == 0 for status, _, _ in results), failures(results)
    summaries = [summary for _, summary, _ in results]
    assert sum(int(s["new"]) for s in summaries) == 60  # each file hashed by one machine
    assert sum(int(s["uploaded"]) for s in summaries) == 60
    assert max(bodies_per_checksum(immich).values()) == 1 and immich.upload_count() == 60
    assert sum(1 for s in summaries if int(s["uploaded"]) > 0) >= 2, [
        {k: s[k] for k in ("found", "new", "unchanged", "uploaded", "duplicates", "elsewhere", "elapsed_s")}
        for s in summaries
    ]  # the work was shared
    rows = rows_of(tmp_path / "m1.env")
    assert len(rows) == 60 and {r["scope"] for r in rows} == {"l:family"}
    assert all(not str(r["filepath"]).startswith("/") for r in rows)  # stored below the mount point
    assert {r["upload_status"] for r in rows} == {"success"} and {r["claimed_by"] for r in rows} == {None}


def test_four_machines_starting_together_on_a_fresh_database_all_finish(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    for folder in range(9):  # enough files for the machines' claims to overlap
        library.photos(100, folder=f"f{folder}", start=folder * 100)
    procs = []
    for machine in ("m1", "m2", "m3", "m4"):
        mount = tmp_path / f"mnt-{machine}"
        mount.symlink_to(library.root)
        env = machine_env(tmp_path, database, machine, immich, SOURCE_DIR=mount, SHARED_LIBRARY="family")
        procs.append(start_process("sync_upload.py", "--env-file", str(env), "--json", "--no-progress"))
    results = [finish(proc) for proc in procs]
    assert all(status == 0 for status, _, _ in results), failures(results)  # no deadlock lost
    assert immich.upload_count() == 900 and max(bodies_per_checksum(immich).values()) == 1


def test_a_file_another_machine_sent_meanwhile_is_counted_elsewhere_not_as_a_duplicate(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    import threading

    import scan_files
    import uploader
    from db_manager import UploadOutcome
    from immich_client import ImmichClient
    from progress import ProgressTracker

    library.photos(1)
    env_m1 = machine_env(tmp_path, database, "m1", immich, SOURCE_DIR=library.root, SHARED_LIBRARY="family")
    env_m2 = machine_env(tmp_path, database, "m2", immich, SOURCE_DIR=library.root, SHARED_LIBRARY="family")
    assert run_inprocess(scan_files.main, "--env-file", str(env_m1)).status == 0
    settings_m1 = load_settings(env_file=str(env_m1), environ={})
    m1, m2 = open_store(settings_m1), open_store(load_settings(env_file=str(env_m2), environ={}))
    client = ImmichClient(settings_m1, threading.Event())
    try:
        target = m1.target_id("user-1", immich.url, "test@example.com")
        (stale,) = m1.pending_uploads()  # m1 read it as pending...
        m2.record_upload(stale.id, UploadOutcome("success", asset_id="sent-by-m2", target_id=target))
        m2.flush_outcomes()  # committed with its batch
        uploader = uploader.Uploader(
            settings_m1, m1, client, ProgressTracker(), threading.Event(), target
        )  # ...and m2 sent it meanwhile
        uploader._dispatch([stale])
        assert uploader.summary.elsewhere == 1 and uploader.summary.duplicates == 0
        row = m1.row(stale.id)
        assert row["upload_status"] == "success" and row["immich_asset_id"] == "sent-by-m2"
        assert row["claimed_by"] is None
    finally:
        client.close()
        m1.close()
        m2.close()


def test_a_moved_mount_point_is_no_new_library(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    library.photos(5)
    old = tmp_path / "mnt-old"
    old.symlink_to(library.root)
    env = machine_env(tmp_path, database, "nas-client", immich, SOURCE_DIR=old, SHARED_LIBRARY="archive")
    assert run_inprocess(sync_upload.main, "--env-file", str(env)).status == 0
    new = tmp_path / "media" / "archive"
    new.parent.mkdir()
    new.symlink_to(library.root)
    env = machine_env(tmp_path, database, "nas-client", immich, SOURCE_DIR=new, SHARED_LIBRARY="archive")
    result = run_inprocess(sync_upload.main, "--env-file", str(env), "--json")
    summary = json.loads(result.stdout)
    assert (
        result.status == 0 and summary["unchanged"] == 5 and summary["new"] == 0 and summary["missing"] == 0
    )


def test_a_claim_of_a_killed_machine_is_taken_over_after_its_lease(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    library.photos(6)
    for _ in range(6):
        immich.faults.add(delay_s=5.0, path="/api/assets", method="POST")
    # A lease no run outlasts: whether a claim is still live never depends on how fast this machine is.
    # Its end is brought about below, as the database's clock would.
    lease = {"SHARED_LIBRARY": "family", "CLAIM_LEASE": "3600", "UPLOAD_CONCURRENCY": "1"}
    env_a = machine_env(tmp_path, database, "dies", immich, SOURCE_DIR=library.root, **lease)
    proc = start_process("sync_upload.py", "--env-file", str(env_a), "--no-progress")
    deadline = time.monotonic() + 60
    while ("POST", "/api/assets") not in immich.requests_log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ("POST", "/api/assets") in immich.requests_log  # it is sending a file, which it holds
    proc.kill()  # kill -9: no chance to release its claims
    proc.wait(10)
    immich.faults.clear()
    claimed = [r for r in rows_of(env_a) if r["claimed_by"] == "dies"]
    assert claimed  # it held files when it died
    env_b = machine_env(tmp_path, database, "lives", immich, SOURCE_DIR=library.root, **lease)
    result = run_inprocess(sync_upload.main, "--env-file", str(env_b), "--json")
    early = json.loads(result.stdout)
    assert result.status == 0 and int(early["elsewhere"]) == len(claimed)  # within the lease: not taken
    store = open_store(load_settings(env_file=str(env_b), environ={}))
    try:
        assert store.expire_claims("dies") == len(claimed)  # the lease has run out
    finally:
        store.close()
    result = run_inprocess(sync_upload.main, "--env-file", str(env_b), "--json")
    assert result.status == 0
    rows = rows_of(env_b)
    assert {r["upload_status"] for r in rows} <= {"success", "duplicate"} and len(rows) == 6
    assert max(bodies_per_checksum(immich).values()) == 1


def test_statistics_and_the_report_show_every_machine_and_the_menu_can_show_one(
    tmp_path: Path, library: Library, immich: ImmichTestServer, database: str
) -> None:
    import csv
    import io

    import main

    library.photos(3)
    laptop = machine_env(tmp_path, database, "laptop", immich, SOURCE_DIR=library.root)
    assert run_inprocess(sync_upload.main, "--env-file", str(laptop)).status == 0
    other = tmp_path / "attic"
    library_b = Library(other)
    library_b.photos(2, start=10)
    attic = machine_env(tmp_path, database, "attic", immich, SOURCE_DIR=other)
    assert run_inprocess(sync_upload.main, "--env-file", str(attic)).status == 0
    out = io.StringIO()
    main.main(["--env-file", str(laptop)], stdin=io.StringIO("4\n\n4\n1\nq\n"), stdout=out)
    text = out.getvalue()
    assert "By machine" in text
    assert "laptop" in text and "3 files" in text and "attic" in text and "2 files" in text
    assert "5 files recorded," in text  # all machines
    chosen = text.split("Statistics of which machine")[2]
    assert "2 files recorded (attic)," in chosen  # one machine (the list is sorted: attic first)
    report = tmp_path / "report.csv"
    main.main(["--env-file", str(laptop), "--report", str(report)], stdout=io.StringIO())
    rows = list(csv.DictReader(report.open()))
    assert sorted({r["machine"] for r in rows}) == ["attic", "laptop"] and len(rows) == 5
