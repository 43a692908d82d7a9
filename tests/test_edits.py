"""Edits follow their asset (edits.py): a photo edited after its upload takes its earlier version's place in
Immich, with its albums, favourite, stack, tags, archive, description and live clip; the earlier one goes to
the trash. A new photo under an old name, a copy, a duplicate or the setting keep both; a kill between the
steps is finished by the next run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

import scan_files
import sync_upload
from db_manager import open_store
from edits import not_the_same_photo
from tests.conftest import Env, Library, make_jpeg, run_inprocess, start_process
from tests.immich_server import Asset, ImmichTestServer

TAKEN = "2021:06:15 10:30:00"


def sync(env: Env, *extra: str) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--json", *extra)
    assert result.stdout, result.stderr
    return result.status, json.loads(result.stdout), result.stderr


def asset_of(server: ImmichTestServer, path: Path) -> Asset:
    asset = server.asset_by_sha1(hashlib.sha1(path.read_bytes()).hexdigest())
    assert asset is not None, path
    return asset


def edit(path: Path, color: tuple[int, int, int] = (10, 200, 10), **kwargs: object) -> Path:
    """What a photo editor does: the same photo, other pixels, written anew (a new mtime)."""
    before = path.stat().st_mtime_ns
    make_jpeg(path, color=color, **{"taken": TAKEN, **kwargs})  # type: ignore[arg-type]
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))
    return path


def row_of(env: Env, name: str) -> dict[str, object]:
    store = open_store(env.settings())
    try:
        return next(r for r in store.rows() if r["filename"] == name)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("old", "new", "same"),
    [
        ({"date_source": "exif", "date_used": "2021-06-15T10:30:00+02:00"}, {"date_source": "exif", "date_used": "2021-06-15T10:30:00.5+02:00"}, True),
        ({"date_source": "exif", "date_used": "2021-06-15T10:30:00+02:00"}, {"date_source": "exif", "date_used": "2021-06-15T10:30:00+00:00"}, True),  # offset dropped by the editor
        ({"date_source": "exif", "date_used": "2021-06-15T10:30:00+02:00", "camera_make": "Apple", "camera_model": "iPhone 8"},
         {"date_source": "exif", "date_used": "2023-01-02T09:00:00+01:00", "camera_make": "Apple", "camera_model": "iPhone 8"}, False),  # a reset phone
        ({"date_source": "mtime", "camera_make": "Canon", "camera_model": "EOS R5"}, {"date_source": "exif", "date_used": "2021-06-15T10:30:00+02:00", "camera_make": "canon", "camera_model": "EOS R5 "}, True),
        ({"date_source": "mtime", "camera_make": "Canon", "camera_model": "EOS R5"}, {"date_source": "mtime"}, False),
        ({"date_source": "filename"}, {"date_source": "filename"}, False),  # nothing in common that says so
    ],
)  # fmt: skip
def test_new_bytes_are_an_edit_only_when_capture_time_or_camera_say_so(
    old: dict, new: dict, same: bool
) -> None:
    assert (not_the_same_photo(old, new) is None) is same


def test_an_edit_takes_its_earlier_versions_place_with_all_it_had_in_immich(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    immich.extraction_drops_tags = True  # tags given to a fresh upload may be lost: they are looked for
    photo = library.photo("2021/IMG_0001.jpg", n=1, taken=TAKEN)
    raw = library.write("2021/IMG_0001.CR2", b"II*\x00" + b"raw data" * 200)
    status, _, stderr = sync(server_env, "--album", "Summer", "--stack-raw-jpeg", "--tag", "Family")
    assert status == 0, stderr
    old = asset_of(immich, photo)
    # What the user did in Immich since: favourite, archive, a description and a rating, a tag, a live clip.
    clip = immich.add_existing_asset(b"motion", "IMG_0001.MOV")
    immich.edit_as_user(old, {"isFavorite": "true", "visibility": "archive", "livePhotoVideoId": clip.id},
                        description="Grandma's garden", rating=4)  # fmt: skip
    (person,) = immich._upsert_tags(["People/Anna"])
    old.tag_ids.append(person.id)
    edit(photo)
    assert run_inprocess(scan_files.main, "--env-file", str(server_env.path), "--no-progress").status == 0
    intent = json.loads(
        str(row_of(server_env, "IMG_0001.jpg")["replaces"])
    )  # the old date and camera survive
    assert intent["asset_id"] == old.id and intent["camera_model"] == "EOS R5"
    assert intent["date_used"].startswith("2021-06-15T10:30:00")
    status, summary, stderr = sync(server_env, "--album", "Summer", "--stack-raw-jpeg", "--tag", "Family")
    assert status == 0 and summary["replaced"] == 1 and summary["uploaded"] == 1, stderr
    new = asset_of(immich, photo)
    assert new.id != old.id and old.is_trashed and not new.is_trashed
    (album,) = immich.albums.values()
    assert new.id in album.asset_ids
    assert new.fields["isFavorite"] == "true" and new.fields["visibility"] == "archive"
    assert new.fields["livePhotoVideoId"] == clip.id
    assert new.exif["description"] == "Grandma's garden" and new.exif["rating"] == 4
    assert {immich.tags[t].value for t in new.tag_ids} == {"Family", "People/Anna"}
    stack = immich.stacks[str(new.stack_id)]
    assert stack[0] == new.id and asset_of(immich, raw).id in stack  # the new version is the cover
    assert row_of(server_env, "IMG_0001.jpg")["immich_asset_id"] == new.id
    assert row_of(server_env, "IMG_0001.jpg")["replaces"] is None
    before = len(immich.requests_log)
    assert sync(server_env, "--album", "Summer", "--stack-raw-jpeg", "--tag", "Family")[1]["replaced"] == 0
    assert not [p for m, p in immich.requests_log[before:] if m in ("PUT", "DELETE")]


def test_a_reset_phones_new_photo_under_an_old_name_keeps_both(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("IMG_0001.jpg", n=1, taken=TAKEN)
    sync(server_env)
    old = asset_of(immich, photo)
    edit(photo, taken="2023:02:03 09:00:00")  # the same camera, another moment: another photo
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["uploaded"] == 1 and summary["replaced"] == 0
    assert not old.is_trashed and not immich.copies
    assert row_of(server_env, "IMG_0001.jpg")["replaces"] is None


def test_an_asset_another_file_maps_to_or_immich_had_already_is_never_replaced(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("a/IMG_1.jpg", n=1, taken=TAKEN)
    copy = library.write("backup/IMG_1.jpg", photo.read_bytes())  # a copy: a duplicate of the same asset
    older = photo.stat().st_mtime_ns - 10**9
    os.utime(copy, ns=(older, older))  # the same date taken: the newer file is sent, the copy recorded after
    had = library.photo("a/IMG_2.jpg", n=2, taken=TAKEN)
    immich.add_existing_asset(had.read_bytes(), "IMG_2.jpg")  # Immich had it: not this database's upload
    sync(server_env)
    first, theirs = asset_of(immich, photo), asset_of(immich, had)
    edit(photo)
    edit(had, color=(1, 2, 3))
    dry = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run")
    assert re.search(
        r"a/IMG_1\.jpg \([^)]*\), kept beside its earlier version \(another file still maps", dry.stdout
    )
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["uploaded"] == 2 and summary["replaced"] == 0
    assert not first.is_trashed and not theirs.is_trashed and not immich.trash_requests


def test_replace_edited_false_keeps_both(server_env: Env, library: Library, immich: ImmichTestServer) -> None:
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    old = asset_of(immich, photo)
    edit(photo)
    result = run_inprocess(
        sync_upload.main, "--env-file", str(server_env.set(REPLACE_EDITED="false").path), "--dry-run"
    )
    assert "kept beside its earlier version (REPLACE_EDITED is false)" in result.stdout
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["replaced"] == 0 and not old.is_trashed


def test_a_moved_file_is_a_new_file_not_an_edit(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("a/IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    old = asset_of(immich, photo)
    (library.root / "b").mkdir()
    moved = photo.rename(library.root / "b/IMG_1.jpg")
    edit(moved)
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["uploaded"] == 1 and summary["replaced"] == 0 and not old.is_trashed


def test_a_dry_run_says_which_edits_replace_their_earlier_version(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    edit(photo)
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run", "--json")
    assert result.status == 0 and json.loads(result.stdout)["would_replace"] == 1
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run")
    assert "in place of its earlier version" in result.stdout
    assert not immich.copies and not immich.trash_requests


def test_a_failure_between_the_steps_is_finished_by_the_next_run_without_copying_twice(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """The copy done, the trash refused by a failing server: the next run only trashes (a second copy between
    two assets of one stack would delete the stack on a real v3.1.0)."""
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    library.write("IMG_1.CR2", b"II*\x00" + b"raw data" * 200)
    sync(server_env, "--stack-raw-jpeg")
    old = asset_of(immich, photo)
    edit(photo)
    immich.faults.add(status=500, path="/api/assets", method="DELETE", count=3)  # every try of one run
    status, summary, _ = sync(server_env, "--stack-raw-jpeg")
    assert status == 1 and summary["replaced"] == 0 and not old.is_trashed and len(immich.copies) == 1
    status, summary, _ = sync(server_env, "--stack-raw-jpeg")
    assert status == 0 and summary["replaced"] == 1 and old.is_trashed and len(immich.copies) == 1
    new = asset_of(immich, photo)
    assert new.stack_id is not None and immich.stacks[new.stack_id][0] == new.id


def test_a_kill_while_the_earlier_version_goes_to_the_trash_is_finished_by_the_next_run(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env, "--album", "A")
    old = asset_of(immich, photo)
    edit(photo)
    immich.faults.add(stall="before_body", path="/api/assets", method="DELETE")
    process = start_process(
        "sync_upload.py", "--env-file", str(server_env.path), "--album", "A", "--no-progress"
    )
    deadline = time.monotonic() + 60
    while ("DELETE", "/api/assets") not in immich.requests_log:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    immich.release_stalled()
    assert not old.is_trashed and immich.copies
    status, summary, _ = sync(server_env, "--album", "A")
    assert status == 0 and summary["replaced"] == 1 and old.is_trashed
    assert (
        len(immich.copies) == 1 and asset_of(immich, photo).id in next(iter(immich.albums.values())).asset_ids
    )


def test_a_server_that_goes_away_between_copy_and_trash_stops_with_exit_3_and_the_next_run_finishes(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """As a real v3.1.0 behind a proxy that answered 503 to the trash request: the run says it stopped (exit
    3, the reason in --json), and the next run trashes the earlier version, without a second copy."""
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    old = asset_of(immich, photo)
    edit(photo)
    immich.faults.add(status=503, path="/api/assets", method="DELETE", count=1000)
    status, summary, _ = sync(server_env.set(SERVER_WAIT="0.5"))
    assert status == 3 and "after the uploads" in str(summary["server_problem"]) and not old.is_trashed
    immich.faults.clear()
    status, summary, _ = sync(server_env.set(SERVER_WAIT="5"))
    assert status == 0 and summary["replaced"] == 1 and old.is_trashed and len(immich.copies) == 1


def test_an_earlier_version_deleted_for_good_before_its_trash_step_ends_the_replacement(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """The copy done, the run stopped before the trash, and the user emptied Immich's trash meanwhile (the
    earlier version is gone for good): the next run finishes without an error, once."""
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    old = asset_of(immich, photo)
    edit(photo)
    immich.faults.add(status=500, path="/api/assets", method="DELETE", count=3)  # every try of one run
    assert sync(server_env)[0] == 1
    immich._trash([old.id], force=True)
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["replaced"] == 1 and old.id not in immich.assets
    assert row_of(server_env, "IMG_1.jpg")["replaces"] is None


def test_a_dry_run_that_deletes_says_what_it_keeps_beside_an_edit_kept_beside_its_earlier_version(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = library.photo("IMG_1.jpg", n=1, taken=TAKEN)
    sync(server_env)
    edit(photo)
    had = library.photo("IMG_2.jpg", n=2, taken=TAKEN)
    immich.add_existing_asset(had.read_bytes(), "IMG_2.jpg")  # kept without --delete-duplicates
    env = server_env.set(REPLACE_EDITED="false")
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--dry-run", "--delete-uploaded")
    assert result.status == 0, result.stderr
    assert "0 edited files in place of their earlier versions in Immich; 1 kept beside it" in result.stderr
    assert "would keep locally  1" in result.stderr
