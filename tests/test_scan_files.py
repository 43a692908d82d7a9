"""The scanner on real files, on both database backends."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import scan_files
import scanner
from db_manager import DatabaseError, SqliteStore, Store, open_store
from tests.conftest import Env, Library, db_rows, rows_by_name, run_inprocess
from utils import METADATA_READER_VERSION, text_to_path


def scan(env: Env, *extra: str) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(scan_files.main, "--env-file", str(env.path), "--json", *extra)
    return result.status, json.loads(result.stdout), result.stderr


def test_finds_photos_videos_and_raw_case_insensitively_and_skips_junk(env: Env, library: Library) -> None:
    library.photo("2021/IMG_0001.JPG", n=1)
    library.write("2021/IMG_0002.CR2", b"II*\x00" + b"raw-bytes" * 100)
    library.write("2021/clip.mp4", b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 10)
    library.write("2021/IMG_0001.xmp", b"<x:xmpmeta/>")  # sidecar: not a media row
    library.write("2021/notes.txt", b"hello")
    library.write(".hidden/IMG_9.jpg", b"x" * 10)
    library.write("2021/@eaDir/IMG_0001.JPG/SYNOPHOTO_THUMB_XL.jpg", b"x" * 10)
    library.write("#recycle/old.jpg", b"x" * 10)
    library.write("2021/.IMG_hidden.jpg", b"x" * 10)
    status, summary, _ = scan(env)
    assert status == 0
    assert summary["found"] == 3 and summary["new"] == 3
    rows = rows_by_name(env)
    assert set(rows) == {"IMG_0001.JPG", "IMG_0002.CR2", "clip.mp4"}
    assert rows["IMG_0001.JPG"]["extension"] == "jpg" and rows["IMG_0002.CR2"]["media_type"] == "image"
    assert rows["clip.mp4"]["media_type"] == "video"


def test_json_summary_is_the_only_stdout_and_has_the_promised_keys(env: Env, library: Library) -> None:
    library.photos(2)
    result = run_inprocess(scan_files.main, "--env-file", str(env.path), "--json")
    summary = json.loads(result.stdout)  # the whole of stdout parses as one object
    for key in ("found", "new", "changed", "unchanged", "missing", "errors", "bytes_hashed", "elapsed_s"):
        assert key in summary
    assert "Scan finished" in result.stderr


def test_both_hashes_and_metadata_are_recorded(env: Env, library: Library) -> None:
    import hashlib

    path = library.photo("a/IMG_1.jpg", n=3, taken="2019:05:04 10:15:00", offset="+02:00")
    scan(env)
    row = rows_by_name(env)["IMG_1.jpg"]
    data = path.read_bytes()
    assert row["hash"] == hashlib.sha256(data).hexdigest()
    assert row["sha1"] == hashlib.sha1(data).hexdigest()
    assert str(row["date_taken"]).startswith("2019-05-04 08:15:00")  # UTC
    assert row["date_source"] == "exif"
    info = json.loads(str(row["metadata_info"]))
    assert info["camera_make"] == "Canon" and info["camera_model"] == "EOS R5"
    assert info["width"] == 67 and info["height"] == 48
    assert row["mtime_ns"] == path.stat().st_mtime_ns


def test_file_without_exif_date_falls_back_to_mtime(env: Env, library: Library) -> None:
    path = library.photo("a/no_date.jpg", taken=None)
    os.utime(path, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    scan(env)
    row = rows_by_name(env)["no_date.jpg"]
    assert row["date_source"] == "mtime" and str(row["date_taken"]).startswith("2020-09-13 12:26:40")


def test_unchanged_rescan_opens_nothing(env: Env, library: Library, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    library.photos(5)
    scan(env)

    def must_not_hash(*_args: object) -> None:
        raise AssertionError("an unchanged file was opened")

    monkeypatch.setattr(scanner, "fingerprint_file", must_not_hash)
    status, summary, _ = scan(env)
    assert status == 0
    assert summary["unchanged"] == 5 and summary["new"] == 0 and summary["bytes_hashed"] == 0


def test_changed_file_is_rehashed_and_pending_again_keeping_its_asset_id(env: Env, library: Library) -> None:
    paths = library.photos(2)
    scan(env)
    store = open_store(env.settings())
    try:
        from db_manager import UploadOutcome

        row = store.pending_uploads()[0]
        store.record_upload(row.id, UploadOutcome("success", asset_id="asset-old"))
        changed_path = os.fsdecode(text_to_path(row.filepath, row.filepath_b64))
    finally:
        store.close()
    library.photo(os.path.relpath(changed_path, library.root), n=99)  # new content, new mtime
    os.utime(changed_path, ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    _status, summary, _ = scan(env)
    assert summary["changed"] == 1 and summary["unchanged"] == len(paths) - 1
    row_after = rows_by_name(env)[os.path.basename(changed_path)]
    assert row_after["upload_status"] == "pending" and row_after["immich_asset_id"] == "asset-old"


def test_vanished_file_is_marked_missing_not_deleted_and_unmarked_when_it_is_back(
    env: Env, library: Library
) -> None:
    gone, _kept = library.photos(2)
    scan(env)
    data, mtime_ns = gone.read_bytes(), gone.stat().st_mtime_ns
    gone.unlink()
    _, summary, _ = scan(env)
    assert summary["missing"] == 1
    rows = rows_by_name(env)
    assert len(rows) == 2 and rows[gone.name]["missing_since"] is not None
    gone.write_bytes(data)  # the disk is mounted again: the same file, untouched
    os.utime(gone, ns=(mtime_ns, mtime_ns))
    _, summary, _ = scan(env)
    assert summary["unchanged"] == 2 and summary["missing"] == 0
    assert rows_by_name(env)[gone.name]["missing_since"] is None


def test_broken_inputs_are_recorded_and_the_scan_goes_on(env: Env, library: Library) -> None:
    good = library.photo("ok/good.jpg", n=1)
    library.write("bad/empty.jpg", b"")
    truncated = good.read_bytes()[: len(good.read_bytes()) // 3]
    library.write("bad/truncated.jpg", truncated)
    library.write("bad/random.jpg", os.urandom(2000))
    corrupt = bytearray(library.photo("bad/corrupt_exif.jpg", n=2).read_bytes())
    corrupt[30:60] = b"\xff" * 30  # inside the APP1/EXIF segment
    (library.root / "bad/corrupt_exif.jpg").write_bytes(bytes(corrupt))
    status, summary, stderr = scan(env)
    assert status == 0  # damaged metadata is a warning; an empty file is passed over, not an error
    assert summary["found"] == 5 and summary["errors"] == 0 and summary["skipped"] == 1
    rows = rows_by_name(env)
    assert rows["empty.jpg"]["upload_status"] == "skipped" and "empty" in str(rows["empty.jpg"]["last_error"])
    for name in ("truncated.jpg", "random.jpg", "corrupt_exif.jpg", "good.jpg"):
        assert rows[name]["upload_status"] == "pending" and len(str(rows[name]["hash"])) == 64
    corrupt = json.loads(str(rows["corrupt_exif.jpg"]["metadata_info"]))
    assert corrupt["width"] == 66 and "EXIF block present but unreadable (corrupt)" in corrupt["warnings"]
    log_text = env.settings().log_file.read_text()
    assert (
        "corrupt_exif.jpg: metadata partly unreadable" in log_text
        and "empty.jpg: skipped: empty file" in log_text
    )
    assert "Traceback" not in stderr


def test_non_utf8_names_and_very_long_paths_are_recorded(env: Env, library: Library) -> None:
    raw_dir = os.fsencode(library.root) + b"/caf\xe9"
    os.makedirs(raw_dir)
    with open(raw_dir + b"/\xff\xfe.jpg", "wb") as f:
        f.write(library.photo("tmp.jpg", n=5).read_bytes())
    (library.root / "tmp.jpg").unlink()
    deep = library.root
    for i in range(12):
        deep = deep / (f"{i:02d}_" + "d" * 90)
    library.photo(str((deep / "long.jpg").relative_to(library.root)), n=6)
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 2
    store = open_store(env.settings())
    try:
        paths = [text_to_path(r["filepath"], r["filepath_b64"]) for r in store.rows()]
    finally:
        store.close()
    assert raw_dir + b"/\xff\xfe.jpg" in paths
    assert any(len(p) > 1000 for p in paths)
    assert all(os.path.exists(p) for p in paths)


def test_symlinked_files_are_followed_and_dangling_links_are_errors(env: Env, library: Library) -> None:
    target = library.photo("real/a.jpg", n=1)
    os.symlink(target, library.root / "link_to_a.jpg")
    os.symlink(library.root / "nowhere.jpg", library.root / "dangling.jpg")
    status, summary, _ = scan(env)
    assert set(rows_by_name(env)) == {"a.jpg", "link_to_a.jpg"}
    assert summary["found"] == 2 and summary["errors"] == 1 and status == 1  # the dangling link, counted
    assert "dangling.jpg: dangling symbolic link" in env.settings().log_file.read_text()


def test_a_symlinked_folder_is_followed_once_under_the_same_path_every_run(
    env: Env, library: Library, tmp_path: Path
) -> None:
    elsewhere = Library(tmp_path / "disk2")
    elsewhere.photos(2, folder="2019")
    os.symlink(elsewhere.root / "2019", library.root / "b-link")
    os.symlink(elsewhere.root / "2019", library.root / "a-link")  # a second way in: walked once, from a-link
    library.photo("real/x.jpg", n=9)
    os.symlink(library.root / "real", library.root / "real-again")  # into a folder walked anyway
    os.symlink(library.root, library.root / "real" / "loop")  # back to the top
    status, summary, _ = scan(env)
    assert status == 0 and summary["found"] == 3 and summary["errors"] == 0
    paths = sorted(str(r["filepath"]) for r in db_rows(env))
    assert paths == [
        f"{library.root}/a-link/IMG_0000.jpg",
        f"{library.root}/a-link/IMG_0001.jpg",
        f"{library.root}/real/x.jpg",
    ]
    for _ in range(2):  # the same paths again: nothing new, nothing missing
        status, summary, _ = scan(env)
        assert status == 0 and summary["unchanged"] == 3 and summary["new"] == 0 and summary["missing"] == 0


def test_a_symlinked_folder_whose_target_is_gone_leaves_its_rows_alone(
    env: Env, library: Library, tmp_path: Path
) -> None:
    disk = Library(tmp_path / "usb")
    disk.photos(2)
    os.symlink(disk.root / "photos", library.root / "usb")
    library.photo("here.jpg", n=5)
    scan(env)
    (disk.root / "photos").rename(tmp_path / "unmounted")  # the disk is not there tonight
    status, summary, _ = scan(env)
    assert status == 1 and summary["errors"] == 1 and summary["missing"] == 0
    assert all(r["missing_since"] is None for r in db_rows(env))


def test_a_folder_that_cannot_be_listed_is_its_own_error_and_its_rows_are_not_missing(
    env: Env, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    library.photos(2, folder="locked")
    library.photo("open/b.jpg", n=7)
    scan(env)
    real_scandir = os.scandir
    locked = os.fsencode(library.root / "locked")

    def refuse_locked(path):  # type: ignore[no-untyped-def]
        if os.fsencode(path) == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    status, summary, _ = scan(env)
    assert status == 1 and summary["errors"] == 1 and summary["missing"] == 0
    assert all(r["missing_since"] is None for r in db_rows(env))


def test_a_link_to_another_users_file_outside_the_sources_is_not_followed(
    env: Env, library: Library, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")
    secret = tmp_path / "other-user" / "shadow"
    secret.parent.mkdir()
    secret.write_bytes(b"\xff\xd8\xff" + os.urandom(300))  # even a file that looks like a photo
    os.chown(secret, 4242, 4242)
    os.symlink(secret, library.root / "SHADOW.jpg")
    os.lchown(library.root / "SHADOW.jpg", 4343, 4343)  # made by a third user (root's own links are trusted)
    mine = tmp_path / "mine.jpg"
    mine.write_bytes((library.root / library.photo("p.jpg", n=1).name).read_bytes())
    os.symlink(mine, library.root / "link-to-mine.jpg")  # my own file: followed
    status, summary, _ = scan(env)
    assert set(rows_by_name(env)) == {"p.jpg", "link-to-mine.jpg"}
    assert status == 1 and summary["errors"] == 1
    assert "SHADOW.jpg: symbolic link SHADOW.jpg leads to" in env.settings().log_file.read_text()


def test_below_another_users_link_out_of_the_sources_only_their_own_files_are_read(
    env: Env, library: Library, tmp_path: Path
) -> None:
    """Their folder (1777, say) may hold someone else's folder they cannot read; the tool reads as root."""
    if os.geteuid() != 0:
        pytest.skip("making files of other users needs root")
    writer, victim = 4242, 1000
    theirs = tmp_path / "theirs"
    (theirs / "vsub").mkdir(parents=True)
    own = theirs / "own.jpg"
    own.write_bytes(library.photo("x.jpg", n=1).read_bytes())
    (library.root / "x.jpg").unlink()
    (theirs / "vsub" / "diary.jpg").write_bytes(library.photo("y.jpg", n=2).read_bytes())
    (library.root / "y.jpg").unlink()
    (theirs / "stray.jpg").write_bytes(library.photo("z.jpg", n=3).read_bytes())
    (library.root / "z.jpg").unlink()
    for path, uid in (
        (theirs, writer),
        (own, writer),
        (theirs / "vsub", victim),
        (theirs / "stray.jpg", victim),
    ):
        os.chown(path, uid, uid)
    os.symlink(theirs, library.root / "Shared")
    os.lchown(library.root / "Shared", writer, writer)
    status, summary, _ = scan(env)
    assert set(rows_by_name(env)) == {"own.jpg"}
    assert status == 1 and summary["errors"] == 2  # the victim's folder and file, each listed
    log = env.settings().log_file.read_text()
    assert "vsub: not owned by the owner of the symbolic link" in log


def test_a_file_whose_content_is_not_media_is_skipped_with_its_reason(env: Env, library: Library) -> None:
    library.write("passwd.jpg", b"root:x:0:0:root:/root:/bin/bash\n" * 20)
    library.write("report.jpg", b"%PDF-1.7\n" + bytes(range(256)) * 4)
    library.photo("real.jpg", n=1)
    status, summary, _ = scan(env)
    rows = rows_by_name(env)
    assert status == 0 and summary["skipped"] == 2
    assert rows["passwd.jpg"]["upload_status"] == "skipped" and "text" in str(
        rows["passwd.jpg"]["last_error"]
    )
    assert "PDF" in str(rows["report.jpg"]["last_error"]) and rows["real.jpg"]["upload_status"] == "pending"


def test_immich_own_storage_is_never_scanned(env: Env, library: Library, tmp_path: Path) -> None:
    library.photo("mine/a.jpg", n=1)
    for folder in ("library", "upload", "thumbs", "encoded-video"):
        library.photo(f"nas/immich/{folder}/admin/x{folder}.jpg", n=len(folder))
        library.write(f"nas/immich/{folder}/.immich", b"")
    status, summary, _ = scan(env)
    assert status == 0 and set(rows_by_name(env)) == {"a.jpg"}
    env.set(SOURCE_DIR=library.root / "nas" / "immich" / "library" / "admin")  # a source inside it
    status, summary, stderr = scan(env)
    assert status == 2 and summary["found"] == 0 and "Immich's own storage" in stderr


def test_the_whole_system_is_refused_as_a_source(env: Env) -> None:
    env.set(SOURCE_DIR="/")
    result = run_inprocess(scan_files.main, "--env-file", str(env.path))
    assert result.status == 2 and "is the whole system" in result.stderr
    assert db_rows(env) == []


def test_single_files_as_arguments_are_a_folder_of_one(env: Env, library: Library) -> None:
    one, two, _three = library.photos(3)
    status, summary, _ = scan(env, str(one), str(two))
    assert status == 0 and summary["found"] == 2 and set(rows_by_name(env)) == {one.name, two.name}
    one.unlink()
    status, summary, _ = scan(env, str(two))
    assert summary["missing"] == 0  # a file not named this time is not this run's business
    status, summary, _ = scan(env, str(one), str(two))
    assert status == 2 and summary["missing"] == 0  # named, gone, and recorded: not mounted?


def test_a_file_still_being_written_is_read_again_next_run_never_half(
    env: Env, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    growing = library.photo("video-copying-in.jpg", n=1)
    real = scanner.fingerprint_file
    appended = []

    def written_meanwhile(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not appended:
            with open(path, "ab") as f:  # the copy goes on between the walk and the read
                f.write(b"more")
            appended.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(scanner, "fingerprint_file", written_meanwhile)
    status, summary, _ = scan(env)
    assert status == 0 and summary["changing"] == 1 and summary["errors"] == 0 and db_rows(env) == []
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 1
    assert rows_by_name(env)[growing.name]["file_size"] == growing.stat().st_size


def test_several_roots_and_ignore_patterns(env: Env, library: Library, tmp_path: Path) -> None:
    library.photo("one.jpg", n=1)
    library.photo("tmp/skip.jpg", n=2)
    second = Library(tmp_path / "disk2")
    second.photo("two.jpg", n=3)
    env.set(SOURCE_DIR=f"{library.root},{second.root}", IGNORE_PATTERNS="*/tmp/*")
    _, _summary, _ = scan(env)
    assert set(rows_by_name(env)) == {"one.jpg", "two.jpg"}


def test_include_hidden_scans_dot_files(env: Env, library: Library) -> None:
    library.photo(".hidden/a.jpg", n=1)
    env.set(INCLUDE_HIDDEN="true")
    scan(env)
    assert "a.jpg" in rows_by_name(env)


def test_a_run_holding_the_lock_makes_a_second_exit_0_at_once(env: Env, library: Library) -> None:
    library.photos(1)
    holder = open_store(env.settings())
    try:
        assert holder.acquire_run_lock()
        result = run_inprocess(scan_files.main, "--env-file", str(env.path))
        assert result.status == 0 and "another run is in progress" in result.stderr
    finally:
        holder.close()


def test_date_from_the_file_name_in_the_configured_time_zone(env: Env, library: Library) -> None:
    library.photo("phone/IMG_20190504_101500.jpg", taken=None)
    library.photo("camera/DSC_0001.jpg", n=2, taken="2020:01:10 12:00:00")  # EXIF without an offset
    env.set(TIME_ZONE="Europe/Berlin")
    scan(env)
    rows = rows_by_name(env)
    phone, camera = rows["IMG_20190504_101500.jpg"], rows["DSC_0001.jpg"]
    assert phone["date_source"] == "filename" and str(phone["date_taken"]).startswith("2019-05-04 08:15:00")
    assert json.loads(str(phone["metadata_info"]))["date_used"] == "2019-05-04T10:15:00+02:00"
    assert camera["date_source"] == "exif" and str(camera["date_taken"]).startswith("2020-01-10 11:00:00")


def test_bad_time_zone_is_one_line_exit_2(env: Env) -> None:
    env.set(TIME_ZONE="Mars/Olympus")
    result = run_inprocess(scan_files.main, "--env-file", str(env.path))
    line = list(env.values).index("TIME_ZONE") + 1
    assert result.status == 2
    assert (
        f"TIME_ZONE (from {env.path}, line {line}): 'Mars/Olympus' is not a time zone name" in result.stderr
    )


def test_fifos_and_other_special_files_are_passed_over(env: Env, library: Library) -> None:
    library.photo("ok.jpg", n=1)
    os.mkfifo(library.root / "pipe.jpg")  # opening it for hashing would block forever
    status, summary, _ = scan(env)
    assert status == 0 and summary["found"] == 1


def test_unreadable_file_is_an_error_row_and_retried_next_scan(
    env: Env, library: Library, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    library.photo("locked.jpg", n=1)
    real = scanner.fingerprint_file

    def denied(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(scanner, "fingerprint_file", denied)  # root reads everything: simulate a denial
    status, summary, _ = scan(env)
    assert status == 1 and summary["errors"] == 1
    row = rows_by_name(env)["locked.jpg"]
    assert row["upload_status"] == "error" and "Permission denied" in str(row["last_error"])
    monkeypatch.setattr(scanner, "fingerprint_file", real)
    status, summary, _ = scan(env)
    assert status == 0 and summary["changed"] == 1
    assert rows_by_name(env)["locked.jpg"]["upload_status"] == "pending"


def test_touched_file_keeps_its_upload_state(env: Env, library: Library) -> None:
    (photo,) = library.photos(1)
    scan(env)
    store = open_store(env.settings())
    try:
        from db_manager import UploadOutcome

        store.record_upload(store.pending_uploads()[0].id, UploadOutcome("success", asset_id="asset-1"))
    finally:
        store.close()
    os.utime(photo, ns=(2_100_000_000_000_000_000, 2_100_000_000_000_000_000))  # same bytes, new mtime
    _, summary, _ = scan(env)
    assert summary["changed"] == 1
    row = rows_by_name(env)[photo.name]
    assert row["upload_status"] == "success" and row["immich_asset_id"] == "asset-1"
    assert row["mtime_ns"] == 2_100_000_000_000_000_000


def test_out_of_range_exif_date_falls_back_and_the_scan_goes_on(env: Env, library: Library) -> None:
    library.photo("odd/far_future.jpg", n=1, taken="9999:12:31 23:00:00", offset="-05:00")
    library.photo("odd/fine.jpg", n=2)
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 2
    row = rows_by_name(env)["far_future.jpg"]
    assert row["date_source"] == "mtime" and row["upload_status"] == "pending"
    assert "out of range" in json.loads(str(row["metadata_info"]))["warnings"][-1]


def test_known_index_finds_each_row_by_its_full_path_hash_in_any_order() -> None:
    from db_manager import KnownFile
    from scanner import KnownIndex

    same_start = "ab" * 8
    rows = [
        ("00" * 32, KnownFile(1, 10, 100, "pending", True, False)),
        (same_start + "01" * 24, KnownFile(2, 20, 200, "success", True, False)),
        (same_start + "02" * 24, KnownFile(3, 30, 300, "error", False, True)),
        ("ff" * 32, KnownFile(4, 40, 400, "duplicate", True, False)),
    ]
    index = KnownIndex((full, *row) for full, row in reversed(rows))  # rows come in table order now
    for full, row in rows:
        found = index.find(full)
        assert found is not None and index.row(found) == row
        assert index.find_digest(bytes.fromhex(full)) == found
    assert index.find(same_start + "03" * 24) is None and index.find("12" * 32) is None
    index.seen[index.find("00" * 32)] = 1  # type: ignore[index]
    assert sorted(index.unseen_ids()) == [2, 4]  # 3 is missing already


@pytest.fixture
def pool_starts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Each process pool the scan starts: its worker count and how they start ("fork", "fork server")."""
    started: list[tuple[int, str]] = []
    real = scanner.start_process_pool

    def start(workers: int, fork: bool = False) -> Any:
        started.append((workers, "fork" if fork else "fork server"))
        return real(workers, fork)

    monkeypatch.setattr(scanner, "start_process_pool", start)
    return started


def test_a_big_first_scan_runs_on_worker_processes_with_the_same_rows(
    env: Env, library: Library, pool_starts: list[tuple[int, str]], backend: str
) -> None:
    library.photos(90)
    damaged = bytearray(library.photo("bad/corrupt_exif.jpg", n=200).read_bytes())
    damaged[30:60] = b"\xff" * 30
    (library.root / "bad/corrupt_exif.jpg").write_bytes(bytes(damaged))
    env.set(HASH_WORKERS=2)
    status, summary, _ = scan(env)
    import multiprocessing

    # Forked where the scan runs no other thread; a MariaDB run keeps its lease on a thread of its own.
    expected = [(2, "fork" if backend == "sqlite" else "fork server")]
    assert pool_starts == expected, f"threads left by earlier tests? {threading.enumerate()}"
    assert status == 0 and summary["new"] == 91
    assert multiprocessing.active_children() == []  # the scan ended its workers
    rows = rows_by_name(env)
    assert all(len(str(r["hash"])) == 64 and r["sha1"] for r in rows.values())
    assert json.loads(str(rows["IMG_0042.jpg"]["metadata_info"]))["camera_make"] == "Canon"
    log_text = env.settings().log_file.read_text()
    assert "corrupt_exif.jpg: metadata partly unreadable" in log_text  # told by the worker, logged here


def _die_starting(scan_pid: int, forked: bool) -> None:
    os._exit(3)


def test_forked_workers_that_die_starting_end_their_pool_and_the_fork_server_starts_others(
    env: Env,
    library: Library,
    pool_starts: list[tuple[int, str]],
    monkeypatch: pytest.MonkeyPatch,
    backend: str,
) -> None:
    """A worker that cannot be forked, or dies at its start, ends its pool at once (no half-made pool, no
    process left); the scan goes on as beside threads, and says why in the log."""
    import multiprocessing

    if backend != "sqlite":
        pytest.skip("a MariaDB run's lease thread: its workers come from the fork server anyway")
    monkeypatch.setattr(scanner, "_worker_start", _die_starting)  # forked, the workers run this one
    library.photos(40)
    env.set(HASH_WORKERS=2)
    status, summary, _ = scan(env)
    assert pool_starts == [(2, "fork"), (2, "fork server")] and status == 0 and summary["new"] == 40
    assert len(rows_by_name(env)) == 40 and multiprocessing.active_children() == []
    assert "cannot fork worker processes" in env.settings().log_file.read_text()


def test_a_forked_worker_ends_on_sigterm_as_a_process_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """It starts with the scan's own SIGTERM handler (which only asks the scan to stop, in the scan): a
    service stopping the whole group would wait on workers that shrug it off."""
    import signal
    import time

    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        pool = scanner.start_process_pool(1, fork=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        (worker,) = list(pool._processes.values())  # type: ignore[attr-defined]
        os.kill(worker.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60  # a condition waited on; the deadline only stops a hung test
        while worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker.exitcode == -signal.SIGTERM
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def test_workers_come_from_the_fork_server_while_another_thread_runs(
    env: Env, library: Library, pool_starts: list[tuple[int, str]]
) -> None:
    """A fork copies the locks other threads hold (an upload's, the log's), held forever in the copy: beside
    a sync's uploads the workers come from the fork server; a scan alone forks them (the test above)."""

    library.photos(40)
    env.set(HASH_WORKERS=2)
    done = threading.Event()
    beside = threading.Thread(target=done.wait, name="an upload")
    beside.start()
    try:
        status, summary, _ = scan(env)
    finally:
        done.set()
        beside.join()
    assert pool_starts == [(2, "fork server")] and status == 0 and summary["new"] == 40


def _log_from_a_worker(text: str) -> int:
    from logger import get_logger

    get_logger("scan").warning("%s", text)
    return os.getpid()


def test_forked_workers_leave_the_log_to_the_scan(tmp_path: Path) -> None:
    """A forked worker starts with the scan's handlers: it would write into the scan's log file (and rotate it
    under the scan) and flush the scan's console. It drops them; what a worker notices reaches the log through
    the scan (its rows' warnings)."""
    import logger

    log_file = tmp_path / "run.log"
    logger.setup_file(log_file, "DEBUG")
    try:
        pool = scanner.start_process_pool(2, fork=True)
        try:
            worker = pool.submit(_log_from_a_worker, "written by a worker").result()
        finally:
            pool.shutdown()
        logger.get_logger("scan").warning("written by the scan")
    finally:
        logger.close_file()
    assert worker != os.getpid()
    lines = log_file.read_text().splitlines()
    assert any("written by the scan" in line for line in lines)
    assert not any("written by a worker" in line for line in lines)


def test_the_metadata_readers_debug_lines_reach_the_log_at_log_level_debug(
    env: Env, library: Library
) -> None:
    """What the reader noticed about a file, in its own words, for whoever turns LOG_LEVEL to DEBUG (files
    described on threads; worker processes keep no handlers: their rows' warnings reach the log)."""
    damaged = bytearray(library.photo("bad/corrupt_exif.jpg", n=200).read_bytes())
    damaged[30:60] = b"\xff" * 30
    (library.root / "bad/corrupt_exif.jpg").write_bytes(bytes(damaged))
    env.set(HASH_WORKERS=1, LOG_LEVEL="DEBUG")
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 1
    told = [line for line in env.settings().log_file.read_text().splitlines() if "corrupt_exif.jpg" in line]
    assert any("DEBUG" in line and "immich_uploader.utils" in line and "EXIF block" in line for line in told)


def test_a_terminal_shows_each_new_file_with_its_camera_and_size(env: Env, library: Library) -> None:
    import io

    from progress import PlainProgress, TtyProgress

    library.photo("photos/IMG_0042.jpg", n=42)
    screens = {"tty": io.StringIO(), "plain": io.StringIO()}
    for name, progress in (
        ("tty", TtyProgress(screens["tty"], color=False)),
        ("plain", PlainProgress(screens["plain"])),
    ):
        store = open_store(env.settings())
        try:
            run = scanner.Scanner(env.settings(), store, progress, threading.Event())
            assert run.scan().new == (1 if name == "tty" else 0)
        finally:
            store.close()
    assert "new       " in screens["tty"].getvalue() and "Canon" in screens["tty"].getvalue()
    assert "IMG_0042" not in screens["plain"].getvalue()  # cron mails list only errors


def test_rows_an_older_metadata_reader_wrote_are_read_again_once_without_hashing(
    env: Env, library: Library
) -> None:
    """Issue 23: a row whose metadata an older reader wrote (no "reader" version: here the sub-seconds and the
    offset it dropped) gets the current reading on the next scan, without its file being hashed again."""
    from tests import media_corpus

    block = media_corpus.tiff_block(
        media_corpus.camera(), [(0x9003, 2, "2023:07:14 18:30:05"), (0x9291, 2, "123"), (0x9011, 2, "-05:00")]
    )
    library.write("old/IMG_1.jpg", media_corpus.jpeg(block))
    scan(env)
    store = open_store(env.settings())
    try:
        (row_id,) = [r["id"] for r in store.rows()]
        old_info = {
            "camera_make": "Canon",
            "date_taken": "2023-07-14T18:30:05",
            "date_used": "2023-07-14T18:30:05",
        }
        store.update_metadata([(int(row_id), "2023-07-14 18:30:05", "exif", json.dumps(old_info))])
        store.set_state(f"metadata_reader:{store.scope}", None)  # as a database of the older version has it
    finally:
        store.close()

    status, summary, _ = scan(env)

    assert status == 0
    assert (summary["unchanged"], summary["bytes_hashed"], summary["reread"]) == (1, 0, 1)
    row = rows_by_name(env)["IMG_1.jpg"]
    assert str(row["date_taken"]).startswith("2023-07-14 23:30:05")  # UTC of 18:30:05-05:00
    info = json.loads(str(row["metadata_info"]))
    assert info["date_taken"] == "2023-07-14T18:30:05.123000-05:00" and info["reader"] == 2
    assert scan(env)[1]["reread"] == 0  # once


def test_a_first_scan_does_not_look_for_rows_of_an_older_reader(
    env: Env, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own rows are all there are: looking would read every row's metadata text (the whole table)."""
    import db_manager

    looked: list[int] = []
    monkeypatch.setattr(
        db_manager.Store, "rows_read_before", lambda self, version: looked.append(version) or []
    )
    library.photos(2)
    assert scan(env)[1]["reread"] == 0
    assert looked == []
    store = open_store(env.settings())
    try:
        assert store.get_state(f"metadata_reader:{store.scope}") == str(METADATA_READER_VERSION)
    finally:
        store.close()


def test_a_fallback_date_later_than_the_mtime_gives_way_to_it_as_immich_does(
    env: Env, library: Library
) -> None:
    """Immich, finding no capture date in a file, shows the earlier of the fileCreatedAt sent and the file's
    mtime: a ModifyDate or a name's date after the mtime would not be what it shows."""
    from tests import media_corpus

    modified_only = media_corpus.tiff_block([*media_corpus.camera(), (0x0132, 2, "2016:01:02 03:04:05")])
    early = library.write("a/modified_later.jpg", media_corpus.jpeg(modified_only))
    named = library.write("a/IMG_20190504_101500.jpg", media_corpus.jpeg())
    kept = library.write("b/modified_earlier.jpg", media_corpus.jpeg(modified_only, seed=2))
    for path in (early, named):
        os.utime(path, (978_310_800, 978_310_800))  # 2001-01-01, before both dates
    scan(env)
    rows = rows_by_name(env)
    assert rows["modified_later.jpg"]["date_source"] == "mtime"
    assert rows["IMG_20190504_101500.jpg"]["date_source"] == "mtime"
    assert rows["modified_earlier.jpg"]["date_source"] == "exif-modified"
    assert kept.stat().st_mtime > 1_500_000_000


def test_large_files_are_hashed_on_threads_without_starting_worker_processes(
    env: Env, library: Library, pool_starts: list[tuple[int, str]]
) -> None:
    for n in range(40):
        library.write(f"videos/clip_{n:02d}.mp4", b"\x00\x00\x00\x18ftypmp42" + os.urandom(300_000))
    env.set(HASH_WORKERS=2)
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 40 and pool_starts == []
    assert all(len(str(r["hash"])) == 64 for r in rows_by_name(env).values())


def test_a_scan_alone_does_not_load_the_http_client_or_the_deletion_code(env: Env, library: Library) -> None:
    """Importing them was a fifth of a scan's start-up; a scan needs the deletion code only to finish a
    deletion a kill interrupted (test_organize covers that it still does)."""
    import subprocess
    import sys

    from tests.conftest import PROJECT_DIR, script_environment

    library.photos(2)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(PROJECT_DIR / "scan_files.py"), "--env-file", str(env.path), "--json"],
        cwd="/", capture_output=True, text=True, timeout=120, env=script_environment(),
    )  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout)["new"] == 2
    imported = {
        line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time")
    }
    assert {"scanner", "db_manager"} <= imported and not {"immich_client", "organize"} & imported


def _pool_script(path: Path, start_args: str, *lines: str) -> Path:
    """A script that starts this scanner's process pool (`start_process_pool(start_args)`), waits for its two
    workers, then runs `lines`."""
    path.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {os.path.dirname(scanner.__file__)!r})\n"
        "import scanner\n"
        "if __name__ == '__main__':\n"
        f"    pool = scanner.start_process_pool({start_args})\n"
        "    for ready in [pool.submit(scanner._worker_ready) for _ in range(2)]:\n"
        "        ready.result()\n" + "".join(f"    {line}\n" for line in lines)
    )
    return path


@pytest.mark.parametrize("fork", [False, True], ids=["fork server", "forked"])
def test_worker_processes_end_when_the_scan_is_killed(tmp_path: Path, fork: bool) -> None:
    """kill -9 (or the out-of-memory killer) closes nothing: the workers waited forever to hand on results
    (the fork server and the resource tracker waited for them: four processes left by each kill). Forked
    workers share the run's lock, which one left behind would hold for good."""
    import select
    import signal
    import subprocess
    import sys
    import time

    script = _pool_script(
        tmp_path / "script.py", f"2, fork={fork}", "print(*pool._processes, flush=True)", "time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None

    def started(pid: int) -> str | None:
        """The process's start time, which tells it from a later process given the same number."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
            return None
        return None if fields[0] == "Z" else fields[19]

    workers: dict[int, str | None] = {}
    try:
        assert select.select([proc.stdout], [], [], 120)[0], "the workers did not start"
        workers = {int(pid): started(int(pid)) for pid in proc.stdout.readline().split()}
        assert len(workers) == 2 and None not in workers.values()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 60  # a condition waited on; the deadline only stops a hung test
        while any(started(pid) == since for pid, since in workers.items()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [pid for pid, since in workers.items() if started(pid) == since]
    finally:
        proc.kill()
        for pid, since in workers.items():
            if started(pid) == since:
                os.kill(pid, signal.SIGKILL)  # what this test found left behind is not left to the next


def test_workers_from_the_fork_server_run_this_scanner_whatever_the_current_folder(tmp_path: Path) -> None:
    """Python 3.11's fork server looks for the modules it preloads in the current folder: run from another
    copy of the tool, the workers ran that copy's scanner (and died where it differed)."""
    import subprocess
    import sys

    other_copy = tmp_path / "old-immich-uploader"
    other_copy.mkdir()
    (other_copy / "scanner.py").write_text("def _worker_ready():\n    raise SystemExit('the other copy')\n")
    script = _pool_script(
        tmp_path / "script.py",
        "2",
        "print(pool.submit(eval, \"__import__('sys').modules['scanner'].__file__\").result())",
        "pool.shutdown()",
    )
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=other_copy, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == scanner.__file__


def test_worker_processes_do_not_run_the_script_again(tmp_path: Path) -> None:
    """multiprocessing runs the main script again in each worker (as __mp_main__) unless told otherwise:
    a script's imports and top-level code are not the workers' business."""
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {os.path.dirname(scanner.__file__)!r})\n"
        "print('top level ran', file=sys.stderr)\n"
        "import scanner\n"
        "if __name__ == '__main__':\n"
        "    pool = scanner.start_process_pool(2)\n"
        "    print(pool.submit(eval, \"vars(__import__('sys').modules['__main__']).get('__file__')\").result())\n"
        "    pool.shutdown()\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"  # the workers' __main__ is their own, not the script
    assert proc.stderr.count("top level ran") == 1


class _SavesCounted:
    """A Store stand-in for _SaveBatch: keeps how many new rows each save wrote."""

    def __init__(self) -> None:
        self.saved: list[int] = []

    def save_scanned(self, new: list[object], changed: list[object]) -> None:
        self.saved.append(len(new))


def _add_new_files(batches: list[scanner._SaveBatch], count: int) -> None:
    """`count` new files, each added to every batch (and each batch saved when due)."""
    from db_manager import ScannedFile

    for n in range(count):
        path = f"/p/{n}.jpg"
        for batch in batches:
            batch.add(None, ScannedFile(path.encode(), path, None, f"{n}.jpg", "/p", "jpg", "image", 1, 1))
            batch.save_if_due()


def test_a_sync_hands_its_first_64_rows_on_then_every_500_and_a_scan_writes_5000_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync's first uploads start early, while the scan goes on; then larger batches, each a transaction."""
    monkeypatch.setattr(scanner, "SAVE_EVERY_S", 3600.0)  # by count alone: a slow machine must not add saves
    handed: list[int] = []
    sync_store, scan_store = _SavesCounted(), _SavesCounted()
    sync = scanner._SaveBatch(sync_store, lambda keys: handed.append(len(keys)))  # type: ignore[arg-type]
    scan = scanner._SaveBatch(scan_store, None)  # type: ignore[arg-type]
    _add_new_files([sync, scan], 10_500)
    assert handed == [64] + [500] * 20 and sync_store.saved == [64] + [500] * 20
    assert scan_store.saved == [5000, 5000]


def test_a_sync_hands_rows_on_sooner_while_its_uploads_run_dry_but_never_fewer_than_64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rows that wait for the 500th file leave the server idle while they are hashed: once the uploads say
    they are running out, what waits goes to them at the next file, 64 rows at the least (a slow disk must
    not make a bulk check a file). Uploads that have rows to send change nothing."""
    monkeypatch.setattr(scanner, "SAVE_EVERY_S", 3600.0)
    dry = [False]
    handed: list[int] = []
    store = _SavesCounted()
    batch = scanner._SaveBatch(store, lambda keys: handed.append(len(keys)), uploads_dry=lambda: dry[0])  # type: ignore[arg-type]
    _add_new_files([batch], 64 + 100)  # the first hand-on; then 100 wait while the uploads are busy
    assert handed == [64]
    dry[0] = True
    _add_new_files([batch], 1)
    assert handed == [64, 101] and store.saved == [64, 101]
    _add_new_files([batch], 63)  # running dry again: too few to hand on
    assert handed == [64, 101]
    _add_new_files([batch], 1)
    assert handed == [64, 101, 64] and store.saved == [64, 101, 64]


def test_a_save_for_dry_uploads_never_waits_for_a_write_under_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's thread hands rows on early only when that costs it nothing: with a write still running,
    the rows wait for the next file after it (or the usual count)."""
    monkeypatch.setattr(scanner, "SAVE_EVERY_S", 3600.0)
    release = threading.Event()
    store = _SavesCounted()
    write = scanner._SaveBatch._write

    def slow_write(self: scanner._SaveBatch, *args: Any) -> None:
        release.wait(60)
        write(self, *args)

    monkeypatch.setattr(scanner._SaveBatch, "_write", slow_write)
    batch = scanner._SaveBatch(store, lambda keys: None, in_background=True, uploads_dry=lambda: True)  # type: ignore[arg-type]
    try:
        _add_new_files([batch], 64)  # the first save: its write waits
        _add_new_files([batch], 100)
        assert store.saved == [] and batch.files == 100  # not saved: that would wait for the write
        release.set()
        batch.finish()
    finally:
        release.set()
        batch.close()
    assert store.saved == [64, 100]


def test_the_rows_waiting_when_the_walk_ends_are_written_while_the_last_files_are_described(
    env: Env, library: Library, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan's last write no longer waits for the last files' hashes: what was collected when the walk
    ended goes to the writer at once (the last 5,000 rows of a first scan took a tenth of a second after the
    hashing was done), then SQLite's WAL starts being copied into the database file, and the files still
    being described follow in a last small write."""
    monkeypatch.setattr(scanner, "SAVE_EVERY_FILES", 10**6)  # saved at the walk's end and the last only
    monkeypatch.setattr(scanner, "SAVE_EVERY_S", 3600.0)
    monkeypatch.setattr(scanner.Describer, "BATCH_FILES", 4)  # a read-ahead of 64 files
    events: list[tuple[str, int, bool]] = []  # on the scan's thread, in order
    checkpoints: list[Store] = []  # on the writer's
    save, collect_job = scanner._SaveBatch.save, scanner.Scanner._collect_job

    def saving(self: scanner._SaveBatch, then_checkpoint: bool = False) -> None:
        events.append(("save", len(self.new), then_checkpoint))
        save(self, then_checkpoint)

    def collecting(self: scanner.Scanner, job: scanner.Job, *args: Any) -> int:
        events.append(("collect", len(job[0]), False))
        return collect_job(self, job, *args)

    for backend in (Store, SqliteStore):
        checkpoint = backend.checkpoint_in_background

        def checkpointing(self: Store, checkpoint: Callable[[Store], None] = checkpoint) -> None:
            checkpoints.append(self)
            checkpoint(self)

        monkeypatch.setattr(backend, "checkpoint_in_background", checkpointing)
    monkeypatch.setattr(scanner._SaveBatch, "save", saving)
    monkeypatch.setattr(scanner.Scanner, "_collect_job", collecting)
    library.photos(100)
    env.set(HASH_WORKERS=1)  # files one by one on a thread: a job a file
    status, summary, _ = scan(env)
    assert status == 0 and summary["new"] == 100 and len(rows_by_name(env)) == 100
    saves = [
        (at, rows, then_checkpoint)
        for at, (kind, rows, then_checkpoint) in enumerate(events)
        if kind == "save"
    ]
    (walk_end, at_walk_end, checkpoint_then), (last, at_last, _) = saves
    assert at_walk_end == 100 - 64 and at_last == 64  # the read-ahead was still being described
    assert sum(n for kind, n, _ in events[walk_end:last] if kind == "collect") == 64
    assert last == len(events) - 1
    assert checkpoint_then and len(checkpoints) == 1


class _StoreCalls:
    """A Store stand-in for _SaveBatch: keeps its calls in order (a write may be made to fail)."""

    def __init__(self, failing: bool = False) -> None:
        self.calls: list[str] = []
        self.failing = failing

    def save_scanned(self, new: list[object], changed: list[object]) -> None:
        if self.failing:
            raise DatabaseError("disk full")
        self.calls.append(f"save {len(new)}")

    def checkpoint_in_background(self) -> None:
        self.calls.append("checkpoint")


def test_the_checkpoint_asked_with_a_save_starts_once_its_rows_are_written() -> None:
    store = _StoreCalls()
    batch = scanner._SaveBatch(store, None, in_background=True)  # type: ignore[arg-type]
    try:
        _add_new_files([batch], 10)
        batch.save(then_checkpoint=True)
        _add_new_files([batch], 5)
        batch.finish()
    finally:
        batch.close()
    assert store.calls == ["save 10", "checkpoint", "save 5"]


def test_a_write_that_failed_starts_no_checkpoint() -> None:
    store = _StoreCalls(failing=True)
    batch = scanner._SaveBatch(store, None, in_background=True)  # type: ignore[arg-type]
    try:
        _add_new_files([batch], 10)
        batch.save(then_checkpoint=True)
        with pytest.raises(DatabaseError):
            batch.finish()
    finally:
        batch.close()
    assert store.calls == []


def test_a_scan_into_a_large_database_writes_a_twentieth_of_its_rows_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each row dirties index pages all over a large database: bigger transactions write each page once for
    more rows (a first scan of 1,000,000 files: 168 s at 5,000 rows a transaction, 102 s)."""
    monkeypatch.setattr(scanner, "SAVE_EVERY_S", 3600.0)  # by count alone here
    store = _SavesCounted()
    batch = scanner._SaveBatch(store, None, rows_before=200_000)  # type: ignore[arg-type]
    _add_new_files([batch], 30_000)
    assert store.saved == [10_000, 10_500]  # 200,000 rows: 10,000 at a time; 210,000: 10,500
