"""Library features after the upload: albums, stacks, deletion, paused server jobs, filters, live photos."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

import sync_upload
import upload_files
from db_manager import open_store
from organize import PAUSED_STATE
from tests.conftest import API_KEY, Env, Library, db_rows, make_jpeg, run_inprocess, start_process
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
    library.write("shoot/IMG_1.CR2", b"II*\x00" + b"raw data" * 200)
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
    run_start, first_upload = log.index(("GET", "/api/users/me")), log.index(("POST", "/api/assets"))
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
    del immich.assets[by_sha1[hashlib.sha1(gone.read_bytes()).hexdigest()].id]  # deleted in Immich since
    by_sha1[hashlib.sha1(trashed.read_bytes()).hexdigest()].is_trashed = True
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert gone.exists() and trashed.exists() and not fine.exists()


def test_delete_leaves_a_sidecar_another_file_still_needs(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    jpeg = library.photo("s/IMG_1.jpg", n=1)
    raw = library.write("s/IMG_1.CR2", b"II*\x00" + b"raw" * 300)
    shared = library.write("s/IMG_1.xmp", b"<x:xmpmeta/>")
    sync(server_env, "--only-images", "--exclude", "*.CR2")
    status, summary = sync(server_env, "--delete-uploaded", "--only-images", "--exclude", "*.CR2")
    assert status == 0 and summary["deleted"] == 1 and not jpeg.exists()
    assert raw.exists() and shared.exists()  # the RAW, not yet uploaded, keeps its edits


# --- deletion (issue 15): each way a careful user's worst day deleted what was not safe on the server ------


def sha1_of(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def edit_in_place_keeping_size_and_mtime(path: Path) -> None:
    """What `exiftool -P` or a lossless rotation with "keep timestamps" does: new bytes, same size and mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_file_edited_in_place_with_same_size_and_mtime_is_not_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    edited, untouched = library.photos(2)
    sync(server_env)
    edit_in_place_keeping_size_and_mtime(edited)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert edited.exists() and not untouched.exists()  # the server holds only the old bytes of `edited`
    assert immich.asset_by_sha1(sha1_of(edited)) is None


def test_sidecar_of_a_file_immich_already_had_is_never_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (have,) = library.photos(1)
    sidecar = library.write("photos/IMG_0000.jpg.xmp", b"<x:xmpmeta>my edits</x:xmpmeta>")
    immich.add_existing_asset(have.read_bytes())
    status, summary = sync(server_env, "--delete-uploaded", "--delete-duplicates")
    assert status == 0 and summary["duplicates"] == 1 and summary["deleted"] == 1
    assert not have.exists() and sidecar.exists()  # no bytes were sent, so the sidecar never went up


def test_sidecar_written_after_the_upload_is_not_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    sync(server_env)
    late = library.write("photos/IMG_0000.jpg.xmp", b"<x:xmpmeta>edited later</x:xmpmeta>")
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert not photo.exists() and late.exists()


def test_sidecar_changed_after_the_upload_is_not_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    sidecar = library.write("photos/IMG_0000.xmp", b"<x:xmpmeta>v1</x:xmpmeta>")
    sync(server_env)
    assert immich.uploads[-1].sidecar_filename == "IMG_0000.xmp"
    sidecar.write_bytes(b"<x:xmpmeta>v2, never sent</x:xmpmeta>")
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1 and not photo.exists() and sidecar.exists()


def test_sidecar_that_went_up_with_its_photo_goes_with_it(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    sidecar = library.write("photos/IMG_0000.jpg.xmp", b"<x:xmpmeta>sent</x:xmpmeta>")
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert not photo.exists() and not sidecar.exists()
    row = rows(server_env)["IMG_0000.jpg"]
    assert (
        row["sidecar_path"] == str(sidecar)
        and row["sidecar_sha1"] == hashlib.sha1(b"<x:xmpmeta>sent</x:xmpmeta>").hexdigest()
    )


def test_sidecar_of_the_original_stays_when_its_converted_copy_is_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    original = library.write("c/IMG_9.HEIC", b"\x00\x00\x00\x18ftypheic" + b"heic bytes" * 100)
    converted = library.photo("c/IMG_9.HEIC.jpg", n=9)
    sidecar = library.write("c/IMG_9.HEIC.xmp", b"<x:xmpmeta>edits of the HEIC</x:xmpmeta>")
    status, summary = sync(server_env, "--delete-uploaded", "--exclude", "*.HEIC")
    assert status == 0 and summary["uploaded"] == 1 and summary["deleted"] == 1
    assert not converted.exists() and original.exists() and sidecar.exists()
    assert immich.uploads[-1].sidecar_filename is None  # never sent with the copy either


def test_filters_and_sources_limit_what_is_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    kept = library.photo("keep/a.jpg", n=1)
    photo = library.photo("trip/b.jpg", n=2)
    clip = library.write("trip/c.mp4", b"\x00\x00\x00\x18ftypmp42" + b"v" * 500)
    other_source = tmp_path / "old"
    old_file = make_jpeg(other_source / "d.jpg", color=(1, 2, 3))
    server_env.set(SOURCE_DIR=f"{library.root},{other_source}")
    assert sync(server_env)[1]["uploaded"] == 4
    status, summary = sync(server_env, "--exclude", "*/keep/*", "--only-videos", "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1
    assert not clip.exists() and kept.exists() and photo.exists() and old_file.exists()
    status, summary = sync(server_env, "--source-dir", str(library.root), "--delete-uploaded")
    assert summary["deleted"] == 2 and not kept.exists() and not photo.exists()
    assert old_file.exists()  # the files of a source folder this run did not name are not its business


def test_sigterm_stops_deletion_at_once(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = library.photos(30)
    sync(server_env)
    deleted: list[str] = []
    real_unlink = os.unlink

    def unlink_then_signal(path: object, *args: object, **kwargs: object) -> None:
        real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]
        if b".immich-uploader-deleting-" in os.fsencode(path):  # type: ignore[arg-type]
            deleted.append(str(path))
            if len(deleted) == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from another terminal would

    monkeypatch.setattr(os, "unlink", unlink_then_signal)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 130 and summary["deleted"] == 3
    assert sum(p.exists() for p in photos) == 27


def test_failed_album_or_stack_step_holds_deletion_back(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("a/IMG_1.jpg", n=1)
    raw = library.write("a/IMG_1.CR2", b"II*\x00" + b"raw data" * 200)
    alone = library.photo("b/IMG_2.jpg", n=2)
    immich.faults.add(status=400, path="/api/stacks", method="POST")
    status, summary = sync(server_env, "--stack-raw-jpeg", "--delete-uploaded")
    assert summary["stacks_created"] == 0 and summary["deleted"] == 1
    assert photo.exists() and raw.exists() and not alone.exists()  # the stack can still be made
    status, summary = sync(server_env, "--stack-raw-jpeg", "--delete-uploaded")
    assert summary["stacks_created"] == 1 and summary["deleted"] == 2 and not photo.exists()

    other = library.photo("c/IMG_3.jpg", n=3)
    immich.faults.add(status=500, count=10, path="/api/albums*")
    status, summary = sync(server_env, "--album", "Trip", "--delete-uploaded")
    assert status == 1 and other.exists() and summary["deleted"] == 0  # not in its album: kept to try again


def test_raw_waiting_to_be_uploaded_keeps_its_jpeg_when_stacking(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("a/IMG_1.jpg", n=1)
    raw = library.write("a/IMG_1.NEF", b"II*\x00" + b"raw data" * 200)
    status, summary = sync(
        server_env, "--stack-raw-jpeg", "--delete-uploaded", "--only-images", "--exclude", "*.NEF"
    )
    assert status == 0 and summary["deleted"] == 0 and photo.exists() and raw.exists()


def test_deletion_says_how_much_before_and_dry_run_lists_it(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photos = library.photos(3)
    sync(server_env)
    result = run_inprocess(
        upload_files.main, "--env-file", str(server_env.path), "--dry-run", "--delete-uploaded"
    )
    assert result.status == 0
    assert sorted(
        line.split(" (")[0] for line in result.stdout.splitlines() if line.startswith("would delete")
    ) == [f"would delete {p}" for p in sorted(photos)]
    assert all(p.exists() for p in photos)
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--delete-uploaded")
    assert result.status == 0 and not any(p.exists() for p in photos)
    assert "Deleting up to 3 local files (" in result.stderr


def test_a_newline_in_a_file_name_stays_one_log_line(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    odd = library.photo("evil\nINFO forged line.jpg", n=4)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 1 and not odd.exists()
    lines = (tmp_path / "logs" / "uploader.log").read_text().splitlines()
    assert not any(line.startswith("INFO forged line") for line in lines)
    assert any("deleting" in line and "evil\\nINFO forged line.jpg" in line for line in lines)
    assert any(
        line.endswith("deleted " + str(library.root) + "/evil\\nINFO forged line.jpg") for line in lines
    )


def test_kill_9_during_deletion_leaves_each_file_or_a_row_that_says_where_it_is(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    photos = library.photos(60)
    contents = {p: sha1_of(p) for p in photos}
    sync(server_env)
    log_file = tmp_path / "logs" / "uploader.log"
    proc = start_process(
        "sync_upload.py", "--env-file", str(server_env.path), "--no-progress", "--delete-uploaded"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and log_file.read_text().count("deleted ") < 5:
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=20)
    by_path = {str(r["filepath"]): r for r in db_rows(server_env)}
    for path, sha1 in contents.items():
        row = by_path[str(path)]
        assert path.exists() or (
            row["upload_status"] == "success"
            and row["immich_asset_id"]
            and immich.asset_by_sha1(sha1) is not None
        )
    status, _summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and not any(p.exists() for p in photos)
    assert all(immich.asset_by_sha1(sha1) is not None for sha1 in contents.values())


def test_after_a_server_move_album_stack_and_sidecar_are_done_again_before_deletion(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("trip/IMG_1.jpg", n=1)
    sidecar = library.write("trip/IMG_1.jpg.xmp", b"<x:xmpmeta>edits</x:xmpmeta>")
    assert sync(server_env, "--album-from-folder")[0] == 0
    with ImmichTestServer(api_key=API_KEY) as second:
        second.add_existing_asset(photo.read_bytes())  # it has the photo, not the sidecar, in no album
        server_env.set(IMMICH_URL=second.url)
        status, summary = sync(server_env, "--album-from-folder", "--delete-uploaded", "--delete-duplicates")
        assert status == 0 and summary["deleted"] == 1
        assert {a.albumName: len(a.asset_ids) for a in second.albums.values()} == {"trip": 1}
        assert not photo.exists() and sidecar.exists()  # the second server never got this sidecar


def test_a_file_edited_after_upload_goes_into_its_album_again(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("trip/IMG_1.jpg", n=1)
    assert sync(server_env, "--album-from-folder")[0] == 0
    library.photo("trip/IMG_1.jpg", n=2, taken="2022:01:01 10:00:00")  # new content, new asset
    status, summary = sync(server_env, "--album-from-folder", "--delete-uploaded")
    assert status == 0 and summary["uploaded"] == 1 and summary["deleted"] == 1 and not photo.exists()
    (album,) = immich.albums.values()
    assert len(album.asset_ids) == 2  # the new version joined it before its file was deleted


def test_a_burst_with_a_sidecar_is_deleted_once_stacked(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    one = library.photo("b/PXL_20240101_120000000.PORTRAIT_BURST20240101120000123.jpg", n=1)
    cover = library.photo("b/PXL_20240101_120000001.PORTRAIT_BURST20240101120000123_COVER.jpg", n=2)
    library.write(f"b/{cover.name}.xmp", b"<x:xmpmeta/>")  # matches the burst's name; not a photo
    status, summary = sync(server_env, "--stack-bursts", "--delete-uploaded")
    assert status == 0 and summary["stacks_created"] == 1
    assert not one.exists() and not cover.exists() and summary["deleted"] == 2


def test_a_second_cover_beside_a_raw_is_not_waited_for_and_does_not_hold_the_raw(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    jpeg = library.photo("a/IMG_1.jpg", n=1)
    heic = library.photo("a/IMG_1.heic", n=2)  # one cover is stacked with the RAW, the other stays alone
    raw = library.write("a/IMG_1.DNG", b"II*\x00" + b"raw data" * 200)
    status, summary = sync(server_env, "--stack-raw-jpeg", "--delete-uploaded")
    assert status == 0 and summary["stacks_created"] == 1
    (stack,) = immich.stacks.values()
    names = [immich.assets[a].filename for a in stack]
    assert len(names) == 2 and names[0] in (jpeg.name, heic.name) and names[1] == raw.name
    assert not jpeg.exists() and not heic.exists() and not raw.exists() and summary["deleted"] == 3


def test_a_server_gone_between_confirmations_stops_deletion_and_counts_what_went(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import organize

    photos = library.photos(4)
    monkeypatch.setattr(organize, "DELETE_SLICE_FILES", 2)
    sync(server_env)
    server_env.set(SERVER_WAIT="0.5")
    removed = 0
    real_record = organize.Store.record_deleted

    def record_then_go_away(store, row_id):  # type: ignore[no-untyped-def]
        nonlocal removed
        real_record(store, row_id)
        removed += 1
        if removed == 2:  # the first slice went; the server is gone before the second is confirmed
            immich.down()

    monkeypatch.setattr(organize.Store, "record_deleted", record_then_go_away)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 1 and summary["deleted"] == 2 and summary["errors"] == 1
    assert sum(p.exists() for p in photos) == 2
    deleted = [r for r in db_rows(server_env) if r["deleted_at"] is not None]
    assert len(deleted) == 2


# --- deletion checks its own target (issue 22) ---------------------------------------------------------------


def kept_reasons(summary: dict[str, object]) -> dict[str, int]:
    return dict(summary["kept"])  # type: ignore[arg-type]


@pytest.mark.parametrize("lie", ["random", "any_asset"])
def test_a_bulk_check_that_says_duplicate_for_everything_deletes_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer, lie: str
) -> None:
    immich.add_existing_asset(b"some other photo's bytes")
    photos = library.photos(4)
    immich.bulk_check_lie = lie
    status, summary = sync(server_env, "--delete-uploaded", "--delete-duplicates")
    assert status == 0 and summary["duplicates"] == 4 and summary["deleted"] == 0
    assert all(p.exists() for p in photos)
    assert sum(kept_reasons(summary).values()) == 4
    expected = organize_reason("KEPT_NOT_HELD") if lie == "random" else organize_reason("KEPT_OTHER_BYTES")
    assert kept_reasons(summary) == {expected: 4}


def organize_reason(name: str) -> str:
    import organize

    return str(getattr(organize, name))


def test_a_database_pointed_at_a_lying_server_deletes_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photos = library.photos(5)
    assert sync(server_env)[1]["uploaded"] == 5
    with ImmichTestServer(api_key=API_KEY) as liar:
        liar.bulk_check_lie = "random"
        server_env.set(IMMICH_URL=liar.url)
        status, summary = sync(server_env, "--delete-uploaded", "--delete-duplicates")
        assert status == 0 and summary["deleted"] == 0 and all(p.exists() for p in photos)
        assert kept_reasons(summary) == {organize_reason("KEPT_NOT_HELD"): 5}
        assert liar.upload_count() == 0


def test_a_partners_asset_of_the_same_bytes_is_no_reason_to_delete(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    immich.add_existing_asset(photo.read_bytes(), owner_id="partner-user-id")
    immich.bulk_check_lie = "any_asset"  # answers with the partner's asset
    status, summary = sync(server_env, "--delete-uploaded", "--delete-duplicates")
    assert status == 0 and summary["deleted"] == 0 and photo.exists()
    assert kept_reasons(summary) == {organize_reason("KEPT_OTHER_OWNER"): 1}


def test_a_key_that_may_not_read_assets_deletes_nothing_and_says_why(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photos = library.photos(2)
    immich.key_permissions = {"asset.upload", "user.read"}
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and status == 0 and summary["uploaded"] == 2 and summary["deleted"] == 0
    assert all(p.exists() for p in photos)
    assert kept_reasons(summary) == {organize_reason("KEPT_NO_ASSET_READ"): 2}
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--delete-uploaded")
    assert "kept locally" in result.stderr and "asset.read" in result.stderr


def test_a_file_renamed_onto_the_path_while_it_is_deleted_stays(
    server_env: Env,
    library: Library,
    immich: ImmichTestServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import organize

    (photo,) = library.photos(1)
    sync(server_env)
    saved = make_jpeg(tmp_path / "editor-temp.jpg", color=(9, 9, 9))  # an editor's save, written aside
    real_record = organize.Store.record_deleting

    def save_by_rename_then_record(store, row_id, intent):  # type: ignore[no-untyped-def]
        if intent is not None:
            os.rename(saved, photo)  # lands between the last check and the move
        real_record(store, row_id, intent)

    monkeypatch.setattr(organize.Store, "record_deleting", save_by_rename_then_record)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 0 and photo.exists()
    assert immich.asset_by_sha1(sha1_of(photo)) is None  # the bytes at the path were never sent
    assert not [p for p in photo.parent.iterdir() if p.name.startswith(".immich-uploader")]


def test_an_edit_keeping_size_and_mtime_during_the_final_check_is_not_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from immich_client import ImmichClient

    (photo,) = library.photos(1)
    sync(server_env)
    real_asset = ImmichClient.asset

    def edit_while_confirming(client, asset_id):  # type: ignore[no-untyped-def]
        answer = real_asset(client, asset_id)
        edit_in_place_keeping_size_and_mtime(photo)  # after the hash, before the removal
        return answer

    monkeypatch.setattr(ImmichClient, "asset", edit_while_confirming)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == 0 and photo.exists()
    assert kept_reasons(summary) == {organize_reason("KEPT_RACED"): 1}


def test_a_deletion_cut_short_by_a_kill_is_put_back_by_the_next_run(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first, second = library.photos(2)
    sync(server_env)
    newcomer = second.read_bytes()[::-1]
    sent_sha1 = sha1_of(second)
    store = open_store(server_env.settings())
    try:
        ids = {Path(str(r["filepath"])).name: int(r["id"]) for r in store.rows()}  # type: ignore[call-overload]
        # What a kill -9 between the move and the unlink leaves: each file under its recorded temporary name;
        # meanwhile a new file appeared at the second one's path.
        for path in (first, second):
            temp = path.parent / ".immich-uploader-deleting-abc123"
            temp = temp.with_name(temp.name + path.stem)
            store.record_deleting(ids[path.name], f"file:{temp.name}")
            os.rename(path, temp)
        store.set_deleting(True)
    finally:
        store.close()
    second.write_bytes(newcomer)
    status, summary = sync(server_env)
    assert status == 0 and status == 0 and summary["missing"] == 0
    assert first.exists() and sha1_of(first) == rows(server_env)[first.name]["sha1"]
    assert second.read_bytes() == newcomer  # never moved back over the file that appeared
    kept = second.with_name(f"{second.stem} (kept by immich-uploader 1){second.suffix}")
    assert kept.exists() and sha1_of(kept) == sent_sha1
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".immich-uploader")]
    assert all(r["deleting_as"] is None for r in db_rows(server_env))


def test_dry_run_counts_what_the_real_run_would_delete_including_files_it_sends_first(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    sent = library.photos(3)
    sync(server_env)
    new = library.photos(2, folder="new", start=10)
    have = library.photo("have/x.jpg", n=50)
    immich.add_existing_asset(have.read_bytes())
    result = run_inprocess(
        sync_upload.main, "--env-file", str(server_env.path), "--dry-run", "--delete-uploaded", "--json"
    )
    dry = json.loads(result.stdout)
    assert dry["would_delete_now"] == 3 and dry["would_delete_after_upload"] == 2
    assert dry["would_delete"] == 5
    assert all(p.exists() for p in [*sent, *new, have])
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["deleted"] == dry["would_delete"] == 5 and have.exists()
    assert kept_reasons(summary) == {organize_reason("KEPT_DUPLICATE"): 1}


def test_files_reached_through_a_symlinked_folder_are_uploaded_but_never_deleted(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    outside = Library(tmp_path / "other-disk")
    linked = outside.photos(2)
    os.symlink(outside.root / "photos", library.root / "from-other-disk")
    link_to_file = library.root / "one-more.jpg"
    (single,) = outside.photos(1, folder="single", start=5)
    os.symlink(single, link_to_file)
    (own,) = library.photos(1, folder="own", start=7)
    status, summary = sync(server_env, "--delete-uploaded")
    assert status == 0 and summary["uploaded"] == 4 and summary["deleted"] == 1 and not own.exists()
    assert all(p.exists() for p in [*linked, single]) and link_to_file.is_symlink()
    assert kept_reasons(summary) == {organize_reason("KEPT_OUTSIDE"): 2, organize_reason("KEPT_LINK"): 1}


def asset_tags(server: ImmichTestServer, path: Path) -> set[str]:
    asset = server.asset_by_sha1(hashlib.sha1(path.read_bytes()).hexdigest())
    assert asset is not None
    return {server.tags[t].value for t in asset.tag_ids}


def test_tags_and_folder_tags_are_set_once_and_a_rerun_makes_no_calls(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    paris = library.photo("Trips/2019/Paris/a.jpg", n=1)
    top = library.photo("top.jpg", n=2)
    have = library.photo("Trips/b.jpg", n=3)
    immich.add_existing_asset(have.read_bytes())  # a duplicate is tagged too, as it joins albums
    status, summary = sync(server_env, "--tag", "Family", "--tag", "Scans/1990s", "--tags-from-folder")
    assert status == 0 and summary["tagged"] == 3
    assert asset_tags(immich, paris) == {"Family", "Scans/1990s", "Trips/2019/Paris"}
    assert asset_tags(immich, top) == {"Family", "Scans/1990s"}  # no folder below the source
    assert asset_tags(immich, have) == {"Family", "Scans/1990s", "Trips"}
    assert {t.value for t in immich.tags.values()} >= {"Trips", "Trips/2019", "Scans"}  # a hierarchy
    assert json.loads(str(rows(server_env)["a.jpg"]["tags_done"])) == [
        "Family",
        "Scans/1990s",
        "Trips/2019/Paris",
    ]
    before = len(calls(immich, "/api/tags"))
    status, summary = sync(server_env, "--tag", "Family", "--tag", "Scans/1990s", "--tags-from-folder")
    assert status == 0 and summary["tagged"] == 0 and len(calls(immich, "/api/tags")) == before
    status, summary = sync(server_env.set(TAGS="Kids"), "--include", "*/Paris/*")  # exactly this run's files
    assert (
        summary["tagged"] == 1
        and "Kids" in asset_tags(immich, paris)
        and "Kids" not in asset_tags(immich, top)
    )


def test_a_file_is_deleted_only_once_it_is_tagged(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("a/IMG_1.jpg", n=1)
    immich.faults.add(status=500, path="/api/tags", count=3)  # every try of one run
    status, summary = sync(server_env, "--tag", "Family", "--delete-uploaded")
    assert status == 1 and photo.exists() and summary["deleted"] == 0
    status, summary = sync(server_env, "--tag", "Family", "--delete-uploaded")
    assert status == 0 and summary["tagged"] == 1 and summary["deleted"] == 1 and not photo.exists()


# --- albums and stacks for exactly this run's files (issue 20) ------------------------------------------------


def test_an_album_gets_exactly_the_files_of_the_folder_the_run_names(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(5, folder="2021/06/Holiday")
    wedding = library.photos(3, folder="2021/06/Wedding", start=10)
    have = library.photo("2021/06/Wedding/from-a-guest.jpg", n=40)
    immich.add_existing_asset(have.read_bytes())  # already in Immich: it joins the album too
    assert sync(server_env)[0] == 0  # everything synced once, no album
    status, summary = sync(server_env, "--album", "Wedding 2021", str(library.root / "2021/06/Wedding"))
    assert status == 0 and summary["found"] == 4 and summary["added_to_albums"] == 4
    by_sha1 = {a.sha1_hex: a.id for a in immich.assets.values()}
    expected = {by_sha1[sha1_of(p)] for p in [*wedding, have]}
    assert albums_by_name(immich) == {"Wedding 2021": expected}


def test_albums_from_folders_are_made_only_for_this_runs_files_and_never_for_deleted_ones(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("Trip/a.jpg", n=1)
    gone = library.photo("Old/b.jpg", n=2)
    library.photo("Other/c.jpg", n=3)
    sync(server_env, "--delete-uploaded", "--include", "*/Old/*")  # b is uploaded, then deleted here
    assert not gone.exists()
    status, summary = sync(server_env, "--album-from-folder", "--include", "*/Trip/*")
    assert status == 0 and set(albums_by_name(immich)) == {"Trip"} and summary["added_to_albums"] == 1
    status, summary = sync(server_env, "--album-from-folder")
    assert status == 0 and set(albums_by_name(immich)) == {"Trip", "Other"}  # never "Old": deleted long ago


def test_a_stack_partner_outside_the_run_is_left_as_it_is(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    jpeg = library.photo("shoot/IMG_1.jpg", n=1)
    library.write("shoot/IMG_1.CR2", b"II*\x00" + b"raw data" * 200)
    sync(server_env)  # both uploaded, no stack
    status, summary = sync(server_env, "--stack-raw-jpeg", "--include", "*.jpg", "--delete-uploaded")
    assert status == 0 and summary["stacks_created"] == 0 and immich.stacks == {}
    assert jpeg.exists()  # its RAW is not this run's: it is not stacked, so the JPEG waits for it
    status, summary = sync(server_env, "--stack-raw-jpeg")
    assert summary["stacks_created"] == 1


def test_tags_immich_drops_while_it_reads_a_new_assets_metadata_are_given_again(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """A real v3.1.0 lost tags of freshly uploaded photos tagged at once (its metadata job replaces the asset's
    tags with the list it read a moment before): the run looks for them and tags again what was lost."""
    immich.extraction_drops_tags = True
    photos = library.photos(3)
    status, summary = sync(server_env, "--tag", "Family", "--tags-from-folder")
    assert status == 0 and summary["tagged"] == 3
    for photo in photos:
        assert asset_tags(immich, photo) == {"Family", "photos"}
    assert ("POST", "/api/search/metadata") in immich.requests_log


def test_a_dry_run_splits_its_deletions_into_what_immich_holds_now_and_what_it_sends_first(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    first, second = library.photos(2, folder="a")
    copy = library.write("b/copy.jpg", first.read_bytes())  # sent once, with first
    held = library.photo("b/onserver.jpg", n=40)
    immich.add_existing_asset(held.read_bytes())  # in Immich now, sent by another machine
    trashed = library.photo("b/trashed.jpg", n=41)
    immich.add_existing_asset(trashed.read_bytes()).is_trashed = True  # kept: in Immich's trash
    argv = ("--env-file", str(server_env.path), "--delete-uploaded", "--delete-duplicates")
    result = run_inprocess(sync_upload.main, *argv, "--dry-run", "--json")
    dry = json.loads(result.stdout)
    assert (dry["would_upload"], dry["copies"], dry["already_in_immich"]) == (2, 1, 2)
    assert dry["would_delete_now"] == 1 and dry["would_delete_after_upload"] == 3 and dry["would_delete"] == 4
    result = run_inprocess(sync_upload.main, *argv, "--dry-run")
    assert "1 Immich holds now, 3 once sent (1 copy of a file sent among them)" in result.stderr
    assert f"would delete {held} (" in result.stdout
    assert all(p.exists() for p in (first, second, copy, held, trashed))
    status, summary = sync(server_env, *argv[2:])
    assert status == 0 and summary["deleted"] == dry["would_delete"] == 4 and trashed.exists()


def test_a_dry_run_counts_a_file_this_machine_sent_before_its_answer_was_lost_as_its_upload(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    import scan_files

    assert run_inprocess(scan_files.main, "--env-file", str(server_env.path)).status == 0
    immich.add_existing_asset(photo.read_bytes())  # what a killed run's upload left on the server
    from immich_client import ImmichClient
    from uploader import adopt_target, connect

    store = open_store(server_env.settings())
    try:
        client = ImmichClient(server_env.settings())
        target = adopt_target(client, store, connect(client))
        client.close()
        store.mark_sending([int(r["id"]) for r in store.rows()], target)  # offered when Immich lacked it
    finally:
        store.close()
    argv = ("--env-file", str(server_env.path), "--delete-uploaded")
    dry = json.loads(run_inprocess(sync_upload.main, *argv, "--dry-run", "--json").stdout)
    assert dry["would_delete_now"] == 1 and dry["would_delete"] == 1  # without --delete-duplicates
    status, summary = sync(server_env, *argv[2:])
    assert status == 0 and summary["recovered"] == 1 and summary["deleted"] == 1 and not photo.exists()


def test_one_deletion_count_the_dry_run_s_the_real_run_s_announcement_and_what_it_deletes(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    sent = library.photos(2, folder="sent")
    sync(server_env)
    new = library.photo("new/n.jpg", n=30)
    phone = tmp_path / "PhoneSync"  # a folder outside the source, reached through a link inside it
    linked = [make_jpeg(phone / f"p{i}.jpg", color=(i, 99, 9)) for i in range(2)]
    os.symlink(phone, library.root / "Phone")
    argv = ("--env-file", str(server_env.path), "--delete-uploaded")
    dry = run_inprocess(sync_upload.main, *argv, "--dry-run")
    assert "up to 3 files" in dry.stderr and "2 Immich holds now, 1 once sent" in dry.stderr
    assert "Would delete" not in dry.stderr  # one count, said once
    assert dry.stderr.count("would keep locally  2") == 1 and "outside the source folders" in dry.stderr
    said = json.loads(run_inprocess(sync_upload.main, *argv, "--dry-run", "--json").stdout)
    assert said["would_delete"] == 3 and sum(said["would_keep"].values()) == 2
    real = run_inprocess(sync_upload.main, *argv, "--json")
    summary = json.loads(real.stdout)
    assert "Deleting up to 3 local files (" in real.stderr  # not 5: the linked ones are kept, not counted
    assert summary["deleted"] == 3 and summary["kept"] == said["would_keep"]
    assert not any(p.exists() for p in [*sent, new]) and all(p.exists() for p in linked)
