"""Library features after the upload: albums, stacks, deletion, paused server jobs, filters, live photos."""

from __future__ import annotations

import json
from pathlib import Path

import requests

import sync_upload
import upload_files
from db_manager import open_store
from organize import PAUSED_STATE
from tests.conftest import API_KEY, Env, Library, run_inprocess
from tests.immich_server import ImmichTestServer


def sync(env: Env, *extra: str) -> tuple[int, dict[str, object]]:
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--json", *extra)
    assert result.stdout, result.stderr
    return result.status, json.loads(result.stdout)


def calls(server: ImmichTestServer, prefix: str) -> list[tuple[str, str]]:
    return [(m, p) for m, p in server.requests_log if p.startswith(prefix)]


def albums_by_name(server: ImmichTestServer) -> dict[str, set[str]]:
    return {a.albumName: set(a.asset_ids) for a in server.albums.values()}


def rows(env: Env) -> dict[str, dict[str, object]]:
    store = open_store(env.settings())
    try:
        return {Path(str(r["filepath"])).name: r for r in store.rows()}
    finally:
        store.close()


def test_album_from_path_keeps_same_named_folders_apart(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("2019/Holiday/a.jpg", n=1)
    library.photo("2020/Holiday/b.jpg", n=2)
    library.photo("top.jpg", n=3)
    status, summary = sync(server_env, "--album-from-path")
    assert status == 0 and summary["added_to_albums"] == 3
    assert set(albums_by_name(immich)) == {"2019 / Holiday", "2020 / Holiday", "library"}
    assert rows(server_env)["a.jpg"]["album_name"] == "2019 / Holiday"


def test_album_from_folder_joins_same_named_folders_and_a_rerun_makes_no_calls(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("2019/Holiday/a.jpg", n=1)
    library.photo("2020/Holiday/b.jpg", n=2)
    sync(server_env, "--album-from-folder")
    assert {name: len(ids) for name, ids in albums_by_name(immich).items()} == {"Holiday": 2}
    before = len(calls(immich, "/api/albums"))
    status, summary = sync(server_env, "--album-from-folder")
    assert status == 0 and summary["added_to_albums"] == 0
    assert len(calls(immich, "/api/albums")) == before


def test_existing_album_is_reused_and_duplicates_join_it_too(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, _new = library.photos(2)
    known = immich.add_existing_asset(have.read_bytes())
    answer = requests.post(
        f"{immich.url}/api/albums", json={"albumName": "Family"}, headers={"x-api-key": API_KEY}, timeout=5
    )
    album_id = answer.json()["id"]
    status, summary = sync(server_env, "--album", "Family")
    assert status == 0 and summary["duplicates"] == 1 and summary["uploaded"] == 1
    assert len(immich.albums) == 1 and known.id in immich.albums[album_id].asset_ids
    assert len(immich.albums[album_id].asset_ids) == 2


def test_raw_and_jpeg_become_one_stack_with_the_jpeg_on_top(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    jpeg = library.photo("shoot/IMG_1.jpg", n=1)
    library.write("shoot/IMG_1.CR2", b"raw data" * 200)
    library.photo("shoot/IMG_2.jpg", n=2)  # no RAW: not stacked
    status, summary = sync(server_env, "--stack-raw-jpeg")
    assert status == 0 and summary["stacks_created"] == 1
    (stack,) = immich.stacks.values()
    assert immich.assets[stack[0]].filename == jpeg.name and len(stack) == 2
    _, summary = sync(server_env, "--stack-raw-jpeg")
    assert summary["stacks_created"] == 0 and len(immich.stacks) == 1


def test_bursts_are_stacked_cover_first(server_env: Env, library: Library, immich: ImmichTestServer) -> None:
    library.photo("b/PXL_20240101_120000000.PORTRAIT_BURST20240101120000123.jpg", n=1)
    cover = library.photo("b/PXL_20240101_120000001.PORTRAIT_BURST20240101120000123_COVER.jpg", n=2)
    library.photo("b/other.jpg", n=3)
    status, summary = sync(server_env, "--stack-bursts")
    assert status == 0 and summary["stacks_created"] == 1
    (stack,) = immich.stacks.values()
    assert immich.assets[stack[0]].filename == cover.name


def test_delete_uploaded_removes_only_confirmed_uploads(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, new = library.photos(2)
    library.write("photos/IMG_0001.jpg.xmp", b"<x/>")
    immich.add_existing_asset(have.read_bytes())
    result = run_inprocess(
        upload_files.main, "--env-file", str(server_env.path), "--dry-run", "--delete-uploaded"
    )
    assert result.status == 0
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert have.exists() and not new.exists() and not (library.root / "photos/IMG_0001.jpg.xmp").exists()
    assert rows(server_env)[new.name]["deleted_at"] is not None
    status, summary = sync(server_env, "--delete-uploaded", "--delete-duplicates")
    assert summary["deleted"] == 1 and not have.exists()
    assert len(rows(server_env)) == 2  # rows stay, marked


def test_file_changed_after_upload_is_not_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    sync(server_env)
    library.photo("photos/IMG_0000.jpg", n=77)  # edited since: a new version Immich does not have
    store = open_store(server_env.settings())
    try:
        from immich_client import ImmichClient
        from organize import delete_uploaded
        from progress import ProgressTracker

        client = ImmichClient(server_env.settings())
        summary = delete_uploaded(client, store, server_env.settings(), store.done_files(), ProgressTracker())
    finally:
        store.close()
    assert summary.deleted == 0 and photo.exists()


def test_server_jobs_are_paused_for_the_run_and_resumed_after(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(2)
    requests.put(
        f"{immich.url}/api/queues/smartSearch",
        json={"isPaused": True},
        headers={"x-api-key": API_KEY},
        timeout=5,
    )
    status, _ = sync(server_env, "--pause-server-jobs")
    assert status == 0
    log = immich.requests_log
    run_start, first_upload = log.index(("GET", "/api/server/ping")), log.index(("POST", "/api/assets"))
    paused = [p for m, p in log[run_start:first_upload] if m == "PUT" and p.startswith("/api/queues/")]
    assert "/api/queues/thumbnailGeneration" in paused and "/api/queues/smartSearch" not in paused
    assert immich.paused_queues == {"smartSearch"}  # the admin's own pause is kept


def test_queues_left_paused_by_a_killed_run_are_resumed(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    for name in ("thumbnailGeneration", "faceDetection"):
        requests.put(
            f"{immich.url}/api/queues/{name}",
            json={"isPaused": True},
            headers={"x-api-key": API_KEY},
            timeout=5,
        )
    store = open_store(server_env.settings())
    try:
        store.set_state(PAUSED_STATE, "thumbnailGeneration,faceDetection")
    finally:
        store.close()
    assert sync(server_env)[0] == 0
    assert immich.paused_queues == set()


def test_old_servers_are_paused_through_the_jobs_api(env: Env, library: Library) -> None:
    library.photos(1)
    with ImmichTestServer(api_key=API_KEY, version=(2, 1, 0)) as old:
        env.set(IMMICH_URL=old.url, IMMICH_API_KEY=API_KEY, PAUSE_SERVER_JOBS="true")
        status, _ = sync(env)
        assert status == 0 and any(p.startswith("/api/jobs/") for _, p in old.requests_log)
        assert old.paused_queues == set()


def test_pausing_needs_an_admin_key(env: Env, library: Library) -> None:
    library.photos(1)
    with ImmichTestServer(api_key=API_KEY, admin=False) as server:
        env.set(IMMICH_URL=server.url, IMMICH_API_KEY=API_KEY, PAUSE_SERVER_JOBS="true")
        result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--no-progress")
        assert result.status == 0 and "needs an admin's API key" in result.stderr


def test_filters_choose_what_is_uploaded_and_leave_the_rest_pending(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("2018/old.jpg", n=1, taken="2018:03:01 09:00:00")
    library.photo("2023/new.jpg", n=2, taken="2023:03:01 09:00:00")
    library.photo("2023/private/secret.jpg", n=3, taken="2023:04:01 09:00:00")
    library.write("2023/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"v" * 500)
    status, summary = sync(server_env, "--since", "2020-01-01", "--exclude", "*/private/*", "--only-images")
    assert status == 0 and summary["uploaded"] == 1
    statuses = {name: r["upload_status"] for name, r in rows(server_env).items()}
    assert statuses == {
        "old.jpg": "pending",
        "new.jpg": "success",
        "secret.jpg": "pending",
        "clip.mp4": "pending",
    }
    status, summary = sync(server_env, "--only-videos")
    assert summary["uploaded"] == 1 and rows(server_env)["clip.mp4"]["upload_status"] == "success"
    result = run_inprocess(
        upload_files.main, "--env-file", str(server_env.path), "--until", "2019-01-01", "--dry-run"
    )
    assert "old.jpg" in result.stdout and "secret.jpg" not in result.stdout


def test_live_photo_pairs_are_both_uploaded(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("live/IMG_1.jpg", n=1)
    library.write("live/IMG_1.MOV", b"\x00\x00\x00\x14ftypqt  " + b"m" * 800)
    status, summary = sync(server_env)
    assert status == 0 and summary["uploaded"] == 2
    assert sorted(a.filename for a in immich.assets.values()) == ["IMG_1.MOV", "IMG_1.jpg"]


def test_delete_keeps_files_immich_no_longer_holds_or_holds_in_the_trash(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    gone, trashed, fine = library.photos(3)
    sync(server_env)
    by_sha1 = {a.sha1_hex: a for a in immich.assets.values()}
    import hashlib

    del immich.assets[by_sha1[hashlib.sha1(gone.read_bytes()).hexdigest()].id]  # deleted in Immich since
    by_sha1[hashlib.sha1(trashed.read_bytes()).hexdigest()].is_trashed = True
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert gone.exists() and trashed.exists() and not fine.exists()


def test_delete_leaves_a_sidecar_another_file_still_needs(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    jpeg = library.photo("s/IMG_1.jpg", n=1)
    raw = library.write("s/IMG_1.CR2", b"raw" * 300)
    shared = library.write("s/IMG_1.xmp", b"<x:xmpmeta/>")
    sync(server_env, "--only-images", "--exclude", "*.CR2")
    status, summary = sync(server_env, "--delete-uploaded", "--only-images", "--exclude", "*.CR2")
    assert status == 0 and summary["deleted"] == 1 and not jpeg.exists()
    assert raw.exists() and shared.exists()  # the RAW, not yet uploaded, keeps its edits
