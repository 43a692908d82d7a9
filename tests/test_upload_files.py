"""Uploads against the loopback Immich stand-in (real sockets, real multipart), on both database backends."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import scan_files
import upload_files
from db_manager import open_store
from tests.conftest import API_KEY, Env, Library, run_inprocess
from tests.immich_server import ImmichTestServer


def scan(env: Env) -> None:
    assert run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress").status in (0, 1)


def upload(env: Env, *extra: str) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(upload_files.main, "--env-file", str(env.path), "--json", *extra)
    summary = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.status, summary, result.stderr


def statuses(env: Env) -> dict[str, str]:
    store = open_store(env.settings())
    try:
        return {str(r["filename"]): str(r["upload_status"]) for r in store.rows()}
    finally:
        store.close()


def asset_posts(server: ImmichTestServer) -> int:
    return sum(
        1
        for method, path in server.requests_log
        if method == "POST" and path.startswith("/api/assets") and "bulk" not in path
    )


def test_every_file_is_uploaded_once_and_a_rerun_sends_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    paths = library.photos(6)
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 6
    assert immich.upload_count() == 6
    assert {a.sha1_hex for a in immich.assets.values()} == {
        hashlib.sha1(p.read_bytes()).hexdigest() for p in paths
    }
    posts = asset_posts(immich)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 0
    assert asset_posts(immich) == posts  # nothing sent again
    store = open_store(server_env.settings())
    try:
        assert all(r["upload_status"] == "success" and r["immich_asset_id"] for r in store.rows())
    finally:
        store.close()


def test_files_already_in_immich_become_duplicates_without_a_byte_sent(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, _new = library.photos(2)
    existing = immich.add_existing_asset(have.read_bytes(), "other-name.jpg")
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["duplicates"] == 1 and summary["uploaded"] == 1
    assert asset_posts(immich) == 1  # only the new file's body was sent
    store = open_store(server_env.settings())
    try:
        rows = {r["filename"]: r for r in store.rows()}
    finally:
        store.close()
    assert (
        rows[have.name]["upload_status"] == "duplicate" and rows[have.name]["immich_asset_id"] == existing.id
    )


def test_same_content_at_two_paths_is_stored_once(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first = library.photo("a/one.jpg", n=1)
    for n in range(2, 9):
        library.write(f"copies/copy{n}.jpg", first.read_bytes())
    scan(server_env)
    status, _summary, _ = upload(server_env)  # 4 workers: the copies must not be sent side by side
    assert status == 0 and immich.upload_count() == 1
    assert [u.size_bytes > 0 for u in immich.uploads].count(True) == 1
    assert sorted(statuses(server_env).values()) == ["duplicate"] * 7 + ["success"]


def test_fields_follow_the_current_api(server_env: Env, library: Library, immich: ImmichTestServer) -> None:
    photo = library.photo("IMG_1.jpg", n=1, taken="2019:05:04 10:15:00", offset="+02:00")
    library.write("IMG_1.jpg.xmp", b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    scan(server_env)
    upload(server_env)
    (record,) = [u for u in immich.uploads if u.status == 201]
    assert record.fields["fileCreatedAt"] == "2019-05-04T08:15:00.000Z"
    assert record.fields["fileModifiedAt"].endswith("Z")
    assert record.fields["filename"] == "IMG_1.jpg" and record.fields["isFavorite"] == "false"
    assert "deviceAssetId" not in record.fields and "deviceId" not in record.fields  # v3 server
    assert record.headers["x-immich-checksum"] == hashlib.sha1(photo.read_bytes()).hexdigest()
    assert record.sidecar_filename == "IMG_1.jpg.xmp"


def test_servers_before_v3_get_device_fields(env: Env, library: Library) -> None:
    library.photos(2)
    with ImmichTestServer(api_key=API_KEY, version=(2, 7, 5)) as old:
        env.set(IMMICH_URL=old.url, IMMICH_API_KEY=API_KEY)
        scan(env)
        status, summary, _ = upload(env)
        assert status == 0 and summary["uploaded"] == 2
        assert all(u.fields.get("deviceAssetId") and u.fields.get("deviceId") for u in old.uploads)


def test_transient_failures_are_retried(server_env: Env, library: Library, immich: ImmichTestServer) -> None:
    library.photos(1)
    scan(server_env)
    server_env.set(MAX_RETRIES=4)
    immich.faults.add(status=500, count=1, path="/api/assets", method="POST")
    immich.faults.add(status=503, retry_after_s=0, path="/api/assets", method="POST")
    immich.faults.add(reset=True, path="/api/assets", method="POST")
    immich.faults.add(status=429, retry_after_s=0, path="/api/assets", method="POST")
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1 and immich.upload_count() == 1
    assert immich.faults.pending() == 0


def test_a_file_the_proxy_refuses_waits_and_never_crowds_out_new_files(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (big,) = library.photos(1)
    scan(server_env)
    immich.faults.add(status=413, html=True, path="/api/assets", method="POST")
    status, summary, stderr = upload(server_env)
    assert status == 1 and summary["errors"] == 1 and summary["error_kinds"] == {"too_large": 1}
    assert "raise its body limit" in stderr  # the summary says what to do
    store = open_store(server_env.settings())
    try:
        (row,) = store.rows()
        assert (
            row["upload_status"] == "error"
            and "413" in str(row["last_error"])
            and row["upload_attempts"] == 1
        )
        assert row["error_kind"] == "too_large" and row["next_attempt_at"] is not None
    finally:
        store.close()
    # The next night: the new file goes, the refused one waits its turn.
    library.photos(1, start=1)
    scan(server_env)
    status, summary, stderr = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1 and summary["waiting_errors"] == 1
    assert "python main.py > Retry errors" in stderr
    # Retry errors tries it at once.
    store = open_store(server_env.settings())
    try:
        assert store.retry_errors() == 1
    finally:
        store.close()
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1
    assert immich.asset_by_sha1(hashlib.sha1(big.read_bytes()).hexdigest()) is not None


def test_failed_rows_wait_longer_after_each_failure() -> None:
    from datetime import datetime, timezone

    from upload_files import retry_time

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    hours = [
        (datetime.strptime(retry_time(n), "%Y-%m-%d %H:%M:%S") - now).total_seconds() / 3600
        for n in (1, 2, 3, 4, 9)
    ]
    assert [round(h) for h in hours] == [1, 4, 16, 64, 168]  # then a week at most


def test_consecutive_failures_stop_the_run_with_exit_3(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(12)
    scan(server_env)
    server_env.set(MAX_RETRIES=0, MAX_CONSECUTIVE_ERRORS=3, UPLOAD_CONCURRENCY=1)
    immich.faults.add(status=500, count=1000, path="/api/assets", method="POST")
    status, _summary, _ = upload(server_env)
    assert status == 3
    counts = list(statuses(server_env).values())
    assert counts.count("error") == 3 and counts.count("pending") == 9  # an outage does not spoil the library


def test_wrong_api_key_is_one_line_exit_2_and_nothing_sent(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    scan(server_env)
    server_env.set(IMMICH_API_KEY="not-the-key-123")
    status, _, stderr = upload(server_env)
    assert status == 2
    assert (
        stderr.strip().splitlines()[-1].startswith("immich-uploader: error: the server refused the API key")
    )
    assert "not-the-key-123" not in stderr and asset_posts(immich) == 0


def test_server_down_at_start_is_one_line_exit_2(env: Env, library: Library) -> None:
    library.photos(1)
    scan(env)
    env.set(IMMICH_URL="http://127.0.0.1:9", IMMICH_API_KEY=API_KEY, MAX_RETRIES=0)
    status, _, stderr = upload(env)
    assert status == 2 and "cannot reach Immich" in stderr and "Traceback" not in stderr
    assert set(statuses(env).values()) == {"pending"}


def test_unsupported_types_are_skipped_with_the_reason(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.write("odd.xyz", b"x" * 100)
    server_env.set(IMAGE_EXTENSIONS="jpg,xyz")
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["skipped"] == 1 and asset_posts(immich) == 0
    store = open_store(server_env.settings())
    try:
        (row,) = store.rows()
    finally:
        store.close()
    assert row["upload_status"] == "skipped" and "does not accept .xyz" in str(row["last_error"])


def test_dry_run_asks_the_server_and_sends_nothing_and_limit_sends_n(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, *_ = library.photos(5)
    immich.add_existing_asset(have.read_bytes())
    scan(server_env)
    result = run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--dry-run")
    assert result.status == 0 and result.stdout.count("would upload") == 4
    assert f"already in Immich {have}" in result.stdout
    assert asset_posts(immich) == 0 and set(statuses(server_env).values()) == {"pending"}
    _status, summary, _ = upload(server_env, "--limit", "2")
    assert summary["uploaded"] == 2 and immich.upload_count() == 2


def test_file_changed_since_scan_is_rehashed_before_sending(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    path = library.photo("a.jpg", n=1)
    scan(server_env)
    library.photo("a.jpg", n=50)
    os.utime(path, ns=(3_000_000_000_000_000_000, 3_000_000_000_000_000_000))
    status, _, _ = upload(server_env)
    assert status == 0
    (asset,) = immich.assets.values()
    assert asset.sha1_hex == hashlib.sha1(path.read_bytes()).hexdigest()


def test_file_vanished_since_scan_is_not_sent(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    gone, _ = library.photos(2)
    scan(server_env)
    gone.unlink()
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1 and summary["skipped"] == 1


def test_api_key_never_reaches_the_log_file(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    library.photos(2)
    scan(server_env)
    server_env.set(LOG_LEVEL="DEBUG")
    immich.faults.add(status=500, count=1, path="/api/assets", method="POST")
    upload(server_env)
    server_env.set(IMMICH_API_KEY=API_KEY + "-wrong")
    upload(server_env)
    log_text = (tmp_path / "logs" / "uploader.log").read_text()
    assert "uploaded" in log_text or "success" in log_text
    assert API_KEY not in log_text


def test_stop_while_waiting_to_retry_leaves_the_row_untouched(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    import signal
    import time

    from tests.conftest import start_process

    library.photos(1)
    scan(server_env)
    server_env.set(MAX_RETRIES=5, UPLOAD_CONCURRENCY=1, SERVER_WAIT=600)
    immich.faults.add(status=503, retry_after_s=60, count=10, path="/api/assets", method="POST")
    proc = start_process("upload_files.py", "--env-file", str(server_env.path), "--no-progress")
    deadline = time.monotonic() + 20
    while asset_posts(immich) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # now waiting out the Retry-After
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    store = open_store(server_env.settings())
    try:
        (row,) = store.rows()
    finally:
        store.close()
    assert row["upload_status"] == "pending" and row["upload_attempts"] == 0
