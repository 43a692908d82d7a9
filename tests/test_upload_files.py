"""Uploads against the loopback Immich stand-in (real sockets, real multipart), on both database backends."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

import scan_files
import upload_files
import uploader
from db_manager import open_store
from tests.conftest import API_KEY, Env, Library, rows_by_name, run_inprocess, start_process, unstamped
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
    library.photo("IMG_1.jpg", n=1, taken="2019:05:04 10:15:00", offset="+02:00")
    library.write("IMG_1.jpg.xmp", b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    scan(server_env)
    upload(server_env)
    (record,) = [u for u in immich.uploads if u.status == 201]
    assert record.fields["fileCreatedAt"] == "2019-05-04T08:15:00.000Z"
    assert record.fields["fileModifiedAt"].endswith("Z")
    assert record.fields["filename"] == "IMG_1.jpg" and record.fields["isFavorite"] == "false"
    assert "deviceAssetId" not in record.fields and "deviceId" not in record.fields  # v3 server
    assert "x-immich-checksum" not in record.headers  # a photo's first try: see the next tests
    assert record.sidecar_filename == "IMG_1.jpg.xmp"


def test_the_checksum_header_goes_with_large_files_only(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It costs Immich a lookup per upload, and after the bulk check it only saves the transfer of a file
    that arrived meanwhile: worth it for a video, not for a photo."""
    import immich_client

    small = library.photo("small.jpg", n=1)
    large = library.photo("large.jpg", n=2)
    large.write_bytes(large.read_bytes() + bytes(4096))  # after the JPEG's end: readers ignore it
    monkeypatch.setattr(immich_client, "CHECKSUM_HEADER_MIN_BYTES", large.stat().st_size)
    assert small.stat().st_size < large.stat().st_size
    scan(server_env)
    assert upload(server_env)[0] == 0
    headers = {u.fields["filename"]: u.headers for u in immich.uploads if u.status == 201}
    assert "x-immich-checksum" not in headers["small.jpg"]
    assert headers["large.jpg"]["x-immich-checksum"] == hashlib.sha1(large.read_bytes()).hexdigest()


def test_a_file_an_earlier_run_was_sending_carries_the_checksum(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """A run killed mid-upload leaves its file marked as being sent: that upload may still be landing when
    the next run asks, so the next run's upload lets Immich check the checksum before the body."""
    library.photo("first.jpg", n=1)
    scan(server_env)
    assert upload(server_env)[0] == 0
    marked = library.photo("marked.jpg", n=2)
    library.photo("fresh.jpg", n=3)
    scan(server_env)
    store = open_store(server_env.settings())
    try:
        rows = {r["filename"]: r for r in store.rows()}
        store.mark_sending([int(rows["marked.jpg"]["id"])], int(rows["first.jpg"]["target_id"]))
    finally:
        store.close()
    assert upload(server_env)[0] == 0
    headers = {u.fields["filename"]: u.headers for u in immich.uploads if u.status == 201}
    assert headers["marked.jpg"]["x-immich-checksum"] == hashlib.sha1(marked.read_bytes()).hexdigest()
    assert "x-immich-checksum" not in headers["fresh.jpg"]


def test_without_a_bulk_check_every_upload_carries_the_checksum(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """The bulk check failed: the checksum header is then the only way Immich spots a file it has before
    the body is sent."""
    library.photos(2)
    immich.faults.add(status=500, count=10, path="/api/assets/bulk-upload-check", method="POST")
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 2
    assert all("x-immich-checksum" in u.headers for u in immich.uploads)


def test_a_retry_carries_the_checksum(server_env: Env, library: Library, immich: ImmichTestServer) -> None:
    """An attempt cut off may still land while the retry goes (the server writing the file when the
    connection broke): the header lets Immich answer "duplicate" then, before the body is sent again."""
    photo = library.photo("IMG_1.jpg", n=1)
    immich.faults.add(reset=True, path="/api/assets", method="POST")  # the first try: nothing stored
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1
    assert asset_posts(immich) == 2
    (retry,) = immich.uploads
    assert retry.status == 201
    assert retry.headers["x-immich-checksum"] == hashlib.sha1(photo.read_bytes()).hexdigest()


def test_a_link_pointed_at_another_users_file_after_the_scan_is_not_sent(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    """The walk checks a link when it finds it; its owner may point it elsewhere before the upload reads it.
    Here at the same size and mtime, so nothing but the file actually opened tells."""
    if os.geteuid() != 0:
        pytest.skip("making files of another user needs root")
    mallory = 4242
    own = tmp_path / "mallory" / "own.jpg"
    own.parent.mkdir()
    own.write_bytes(library.photo("p.jpg", n=1).read_bytes())
    (library.root / "p.jpg").unlink()
    os.chown(own, mallory, mallory)
    secret = tmp_path / "root-only" / "secret.jpg"
    secret.parent.mkdir()
    data = bytearray(own.read_bytes())
    data[-10:-2] = b"SECRET!!"
    secret.write_bytes(bytes(data))
    os.utime(secret, ns=(own.stat().st_atime_ns, own.stat().st_mtime_ns))
    link = library.root / "pic.jpg"
    os.symlink(own, link)
    os.lchown(link, mallory, mallory)
    sidecar_secret = tmp_path / "root-only" / "notes.xmp"
    sidecar_secret.write_bytes(b"<x:xmpmeta xmlns:x='adobe:ns:meta/'>root's words</x:xmpmeta>")
    os.symlink(sidecar_secret, library.root / "pic.jpg.xmp")
    os.lchown(library.root / "pic.jpg.xmp", mallory, mallory)
    scan(server_env)
    assert rows_by_name(server_env)["pic.jpg"]["upload_status"] == "pending"  # her own file: followed

    link.unlink()
    os.symlink(secret, link)
    os.lchown(link, mallory, mallory)
    status, summary, _ = upload(server_env)
    secret_sha1 = hashlib.sha1(secret.read_bytes()).hexdigest()
    assert all(u.sha1_hex != secret_sha1 for u in immich.uploads) and not immich.assets
    row = rows_by_name(server_env)["pic.jpg"]
    assert status == 1 and summary["errors"] == 1
    assert row["upload_status"] == "error" and "symbolic link pic.jpg leads to" in str(row["last_error"])

    link.unlink()
    os.symlink(own, link)  # pointed back: sent, without the sidecar that leads to root's file
    os.lchown(link, mallory, mallory)
    assert run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--retry-errors").status == 0
    (record,) = [u for u in immich.uploads if u.status == 201]
    assert record.sha1_hex == hashlib.sha1(own.read_bytes()).hexdigest()
    assert record.sidecar_filename is None
    store = open_store(server_env.settings())
    try:
        assert any("pic.jpg.xmp" in p.path for p in store.last_run_problems()[1])  # under Recent errors
    finally:
        store.close()


def test_content_another_client_sends_while_this_one_is_sending_it_is_a_duplicate_not_our_upload(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """Between the bulk check ("lacking") and the upload's answer another machine's upload of the same bytes
    lands: the server's "duplicate" on this first attempt is theirs, not a lost answer of ours."""
    photo = library.photo("IMG_1.jpg", n=1)
    scan(server_env)
    immich.upload_gate.clear()  # our upload waits at the server, its bulk check already answered
    run = start_process("upload_files.py", "--env-file", str(server_env.path), "--json", "--no-progress")
    try:
        for _ in range(3000):  # until our upload has reached the server
            if ("POST", "/api/assets") in immich.requests_log or run.poll() is not None:
                break
            time.sleep(0.01)
        assert ("POST", "/api/assets") in immich.requests_log
        theirs = immich.add_existing_asset(photo.read_bytes(), "IMG_1.jpg")  # another machine's, meanwhile
    finally:
        immich.upload_gate.set()
    out, err = run.communicate(timeout=60)
    summary = json.loads(out)
    assert run.returncode == 0, err
    assert summary["duplicates"] == 1 and summary["uploaded"] == 0 and summary.get("recovered", 0) == 0
    row = rows_by_name(server_env)["IMG_1.jpg"]
    assert row["upload_status"] == "duplicate" and row["immich_asset_id"] == theirs.id


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
    assert (
        "1 failed file is tried again on a later run (python main.py > Retry errors tries it now)" in stderr
    )
    # Retry errors tries it at once.
    status, summary, _ = upload(server_env, "--retry-errors")
    assert status == 0 and summary["uploaded"] == 1
    assert immich.asset_by_sha1(hashlib.sha1(big.read_bytes()).hexdigest()) is not None


def test_failed_rows_wait_longer_after_each_failure() -> None:
    from datetime import datetime, timezone

    from uploader import retry_time

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
    status, summary, stderr = upload(server_env)
    assert status == 3 and summary["errors"] == 3 and "MAX_CONSECUTIVE_ERRORS" in stderr
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
    assert unstamped(stderr.strip().splitlines()[-1]).startswith(
        "immich-uploader: error: the server refused the API key"
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
    library.write("odd.xyz", b"\x00\x01" * 50)
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


def test_file_changed_since_scan_waits_for_the_next_scan_and_is_never_sent_half_read(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    path = library.photo("a.jpg", n=1)
    scan(server_env)
    library.photo("a.jpg", n=50)  # seen changing: still being written, or edited since
    os.utime(path, ns=(3_000_000_000_000_000_000, 3_000_000_000_000_000_000))
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["changing"] == 1 and summary["uploaded"] == 0 and not immich.assets
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1
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


# --- issue 10: what real servers, proxies and machines do --------------------------------------------------


def test_files_a_proxy_refuses_never_stop_the_run(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(9)
    scan(server_env)
    server_env.set(MAX_CONSECUTIVE_ERRORS=5, UPLOAD_CONCURRENCY=1)
    immich.faults.add(status=413, html=True, count=6, path="/api/assets", method="POST")
    status, summary, _ = upload(server_env)
    assert status == 1  # not 3: six refused files are six files' problems, not the server's
    assert summary["errors"] == 6 and summary["uploaded"] == 3 and not summary["stopped_after_errors"]


def down_at_first_upload(immich: ImmichTestServer, back_after_s: float | None) -> threading.Thread:
    """The server goes away while the first upload is in flight (an update restarts it), and comes back
    after `back_after_s` (None: not during the run)."""

    def outage() -> None:
        while ("POST", "/api/assets") not in immich.requests_log:
            time.sleep(0.01)
        immich.down()  # the upload in flight is reset, every new connection too
        if back_after_s is not None:
            time.sleep(back_after_s)
            immich.up()

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def test_a_server_restart_mid_run_is_waited_for_and_no_file_is_marked_failed(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(6)
    scan(server_env)
    server_env.set(UPLOAD_CONCURRENCY=2, RETRY_BACKOFF=0.2, SERVER_WAIT=30)
    immich.faults.add(delay_s=0.3, path="/api/assets", method="POST")
    restarter = down_at_first_upload(immich, back_after_s=1.5)
    status, summary, stderr = upload(server_env)
    restarter.join()
    assert status == 0, stderr
    # The upload cut by the restart may have landed: then it is found there (duplicate), never sent twice.
    assert (
        summary["uploaded"] + summary["duplicates"] == 6
        and summary["errors"] == 0
        and len(immich.assets) == 6
    )
    assert "retrying in" in stderr and "answers again" in stderr
    assert set(statuses(server_env).values()) <= {"success", "duplicate"}


def test_a_server_away_longer_than_server_wait_stops_with_exit_3_and_rows_stay_pending(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(5)
    scan(server_env)
    server_env.set(UPLOAD_CONCURRENCY=1, RETRY_BACKOFF=0.1, SERVER_WAIT=1)
    immich.faults.add(delay_s=0.2, path="/api/assets", method="POST")
    down_at_first_upload(immich, back_after_s=None)
    status, summary, stderr = upload(server_env)
    assert status == 3 and summary["errors"] == 0
    assert "no file was marked failed" in stderr
    assert set(statuses(server_env).values()) == {"pending"}
    immich.up()
    status, summary, _ = upload(server_env)
    sent = summary["uploaded"] + summary["recovered"]  # an upload the outage cut may have landed: ours
    assert status == 0 and sent == 5 and summary["duplicates"] == 0 and len(immich.assets) == 5


def test_a_server_that_does_not_answer_at_the_start_is_one_plain_line_within_seconds(
    env: Env, library: Library
) -> None:
    library.photos(1)
    scan(env)
    env.set(IMMICH_URL="http://127.0.0.1:9", IMMICH_API_KEY=API_KEY)
    started = time.monotonic()
    status, _, stderr = upload(env)
    assert status == 2 and time.monotonic() - started < 5
    (line,) = [unstamped(line) for line in stderr.splitlines() if "error" in line]
    assert line == (
        "immich-uploader: error: cannot reach Immich at 127.0.0.1:9: connection refused (nothing listens on "
        "that port) (tried GET http://127.0.0.1:9/api/users/me twice; check IMMICH_URL, and that the server is running)"
    )
    for internal in ("HTTPConnectionPool", "Max retries", "NewConnectionError", "Traceback"):
        assert internal not in stderr


def test_https_to_a_plain_http_server_is_one_line_and_not_retried(
    env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    scan(env)
    env.set(IMMICH_URL=immich.url.replace("http://", "https://"), IMMICH_API_KEY=API_KEY, MAX_RETRIES=5)
    status, _, stderr = upload(env)
    assert status == 2
    assert f"does not speak TLS on that port: try IMMICH_URL={immich.url}" in stderr
    assert "SSLError" not in stderr and "Traceback" not in stderr


def test_a_server_that_is_not_immich_gets_one_short_line(env: Env, library: Library) -> None:
    import http.server
    import threading

    class Nginx(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = (
                b"<html><head><title>Welcome to nginx!</title></head><body>" + b"x" * 5000 + b"</body></html>"
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Nginx)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        library.photos(1)
        scan(env)
        url = f"http://127.0.0.1:{web.server_address[1]}"
        env.set(IMMICH_URL=url, IMMICH_API_KEY=API_KEY)
        status, _, stderr = upload(env)
    finally:
        web.shutdown()
    assert status == 2
    (line,) = [unstamped(line) for line in stderr.splitlines() if "error" in line]
    assert line.startswith(f"immich-uploader: error: {url} answers, but not like Immich")
    assert "an HTML page (title: Welcome to nginx!)" in line and "<html" not in stderr and len(line) < 300


def test_copies_of_one_photo_are_sent_once_within_a_run_and_across_runs(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first = library.photo("a/one.jpg", n=1)
    for n in range(3):
        library.write(f"copies/copy{n}.jpg", first.read_bytes())
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1 and summary["duplicates"] == 3
    assert asset_posts(immich) == 1  # the copies waited for the one upload, then took its asset id
    asset_id = next(iter(immich.assets))
    assert {r["immich_asset_id"] for r in rows_by_name(server_env).values()} == {asset_id}
    library.write("later/copy-again.jpg", first.read_bytes())
    before = list(immich.requests_log)
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["duplicates"] == 1
    new_requests = immich.requests_log[len(before) :]
    assert not [p for _, p in new_requests if p.startswith("/api/assets")]  # the database knew: nothing asked
    assert rows_by_name(server_env)["copy-again.jpg"]["immich_asset_id"] == asset_id


def test_a_moved_or_new_server_gets_what_it_lacks_and_going_back_sends_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    paths = library.photos(3)
    scan(server_env)
    assert upload(server_env)[0] == 0 and immich.upload_count() == 3
    with ImmichTestServer(api_key=API_KEY) as second:
        second.add_existing_asset(paths[0].read_bytes())  # it already has one of them
        server_env.set(IMMICH_URL=second.url)
        status, summary, stderr = upload(server_env)
        assert status == 0 and summary["uploaded"] == 2 and second.upload_count() == 2
        assert "will be sent there" in stderr
        rows = rows_by_name(server_env)
        assert rows[paths[0].name]["upload_status"] == "duplicate"
        assert {r["target_id"] for r in rows.values()} == {rows[paths[1].name]["target_id"]}
    server_env.set(IMMICH_URL=immich.url)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 0 and immich.upload_count() == 3  # nothing sent again


def test_rows_of_an_earlier_version_are_checked_once_against_the_server(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    paths = library.photos(2)
    scan(server_env)
    upload(server_env)
    store = open_store(server_env.settings())
    try:
        # What a database written before this version looks like: no target, no record of the last one.
        store._write_one("UPDATE media_files SET target_id = NULL")
        store.set_state(f"current_target:{store.scope}", None)
    finally:
        store.close()
    lost = immich.asset_by_sha1(hashlib.sha1(paths[1].read_bytes()).hexdigest())
    assert lost is not None
    del immich.assets[lost.id]  # a server that lost one since (restored from an older backup)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1
    assert set(statuses(server_env).values()) == {"success"}


def test_verify_reports_assets_gone_or_trashed_and_reupload_sends_them_again(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    gone, trashed, fine = library.photos(3)
    scan(server_env)
    upload(server_env)
    by_sha1 = {a.sha1_hex: a for a in immich.assets.values()}
    del immich.assets[by_sha1[hashlib.sha1(gone.read_bytes()).hexdigest()].id]
    by_sha1[hashlib.sha1(trashed.read_bytes()).hexdigest()].is_trashed = True
    posts = asset_posts(immich)
    result = run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--verify")
    assert result.status == 1
    assert f"gone from Immich: {gone}" in result.stdout and f"in Immich's trash: {trashed}" in result.stdout
    assert str(fine) not in result.stdout and asset_posts(immich) == posts  # reported, nothing sent
    result = run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--verify", "--reupload")
    assert result.status == 1  # the trashed one still wants the user's decision
    assert asset_posts(immich) == posts + 1
    assert immich.asset_by_sha1(hashlib.sha1(gone.read_bytes()).hexdigest()) is not None


def test_a_copy_that_fails_on_its_own_does_not_release_the_others_waiting_for_the_upload(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = library.photo("a/one.jpg", n=1)
    broken = library.write("b/one-copy.jpg", first.read_bytes())
    library.write("c/one-copy.jpg", first.read_bytes())
    scan(server_env)
    broken.unlink()
    broken.mkdir()  # it changed into something that cannot be read as a file
    monkeypatch.setattr(uploader, "FEED_BATCH", 1)  # one row at a time: the first is in flight
    immich.faults.add(delay_s=0.5, path="/api/assets", method="POST")
    status, summary, _ = upload(server_env)
    assert status == 1  # one file could not be sent: the run says so in its status
    assert summary["uploaded"] == 1 and summary["duplicates"] == 1 and summary["errors"] == 1
    assert asset_posts(immich) == 1  # the third copy waited for the first; it was not sent again


def test_a_backlog_larger_than_the_queue_is_fed_as_it_drains_and_each_file_sent_once(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.photos(12)
    scan(server_env)
    monkeypatch.setattr(uploader, "FEED_BATCH", 2)
    server_env.set(UPLOAD_CONCURRENCY=1)
    immich.faults.add(delay_s=0.05, count=12, path="/api/assets", method="POST")
    most_queued = 0
    real_feed = uploader.Uploader.feed

    def watched_feed(self, rows):  # type: ignore[no-untyped-def]
        nonlocal most_queued
        real_feed(self, rows)
        most_queued = max(most_queued, self._queue.qsize())

    monkeypatch.setattr(uploader.Uploader, "feed", watched_feed)
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 12 and immich.upload_count() == 12
    assert most_queued <= 2 * 2  # about one batch ahead of the worker, never the whole backlog


def test_id_set_holds_exactly_the_ids_given() -> None:
    ids = uploader.IdSet()
    ids.update([0, 7, 8, 1_000_003])
    assert [i for i in (0, 1, 7, 8, 9, 1_000_002, 1_000_003, 5_000_000) if i in ids] == [0, 7, 8, 1_000_003]


def test_files_that_failed_on_a_full_quota_are_tried_once_the_server_has_room(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first, second = library.photos(2)
    immich.quota_bytes = max(first.stat().st_size, second.stat().st_size) + 10  # room for one
    scan(server_env)
    status, summary, _ = upload(server_env)
    assert summary["uploaded"] == 1 and summary["error_kinds"] == {"quota": 1}
    status, summary, _ = upload(server_env)  # still full: the failed file waits its turn
    assert summary["uploaded"] == 0 and summary["errors"] == 0
    immich.quota_bytes = None  # the admin raised it
    status, summary, _ = upload(server_env)
    assert status == 0 and summary["uploaded"] == 1 and immich.upload_count() == 2


def test_verify_with_dry_run_checks_and_changes_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    gone, _kept = library.photos(2)
    scan(server_env)
    upload(server_env)
    del immich.assets[immich.asset_by_sha1(hashlib.sha1(gone.read_bytes()).hexdigest()).id]  # type: ignore[union-attr]
    before = statuses(server_env)
    result = run_inprocess(
        upload_files.main, "--env-file", str(server_env.path), "--verify", "--reupload", "--dry-run"
    )
    assert result.status == 1 and f"gone from Immich: {gone}" in result.stdout
    assert "would be queued to be sent again" in result.stderr
    assert statuses(server_env) == before and immich.upload_count() == 2


def test_visibility_archive_or_timeline_is_sent_with_each_upload(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first = library.photo("a/IMG_1.jpg", n=1)
    scan(server_env)
    assert upload(server_env, "--visibility", "archive")[0] == 0
    assert (
        immich.asset_by_sha1(hashlib.sha1(first.read_bytes()).hexdigest()).fields["visibility"] == "archive"
    )
    second = library.photo("a/IMG_2.jpg", n=2)
    scan(server_env)
    assert upload(server_env.set(VISIBILITY="timeline"))[0] == 0
    (record,) = [
        u
        for u in immich.uploads
        if u.status == 201 and u.sha1_hex == hashlib.sha1(second.read_bytes()).hexdigest()
    ]
    assert record.fields["visibility"] == "timeline"
    third = library.photo("a/IMG_3.jpg", n=3)
    scan(server_env)
    assert upload(server_env.set(VISIBILITY=""))[0] == 0
    (record,) = [
        u
        for u in immich.uploads
        if u.status == 201 and u.sha1_hex == hashlib.sha1(third.read_bytes()).hexdigest()
    ]
    assert "visibility" not in record.fields  # Immich's own default


def test_a_dry_run_counts_copies_of_one_content_once_as_the_real_run_sends_them(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    one, _two = library.photos(2)
    library.write("copies/one-again.jpg", one.read_bytes())
    scan(server_env)
    result = run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--dry-run", "--json")
    dry = json.loads(result.stdout)
    assert dry["would_upload"] == 2 and dry["copies"] == 1
    status, summary, _ = upload(server_env)
    assert (
        status == 0 and summary["uploaded"] == dry["would_upload"] and summary["duplicates"] == dry["copies"]
    )
