"""Live photos and motion photos: which photo and clip are one picture (live_photos.pair_folder), the clip sent
first and the photo naming it, pairs linked after the fact, and files that only look like a pair left alone."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import sync_upload
import upload_files
from db_manager import open_store
from live_photos import LiveFile, pair_folder
from tests import media_corpus
from tests.conftest import Env, Library, run_inprocess
from tests.immich_server import Asset, ImmichTestServer

WHEN = datetime(2023, 8, 1, 10, 0, 0, tzinfo=timezone.utc)
CID = "1E2B3C4D-5F60-4718-92A3-B4C5D6E7F809"


def live(
    row_id: int, stem: str, kind: str, *, cid: str | None = None, seconds: float | None = 2.0, at: float = 0.0
) -> LiveFile:
    return LiveFile(
        row_id, stem, kind, cid, seconds if kind == "clip" else None, WHEN + timedelta(seconds=at), False
    )


def test_a_content_identifier_pairs_whatever_the_names_and_different_ones_never_do() -> None:
    photo = live(1, "img_1234", "photo", cid=CID)
    clip = live(
        2, "img_1234_hevc", "clip", cid=CID, seconds=9.0, at=400
    )  # icloudpd's name, and no time needed
    assert pair_folder([photo, clip]) == {1: 2, 2: 1}
    other = live(3, "img_1234", "clip", cid="0000-OTHER", at=0.5)
    assert pair_folder([photo, other]) == {}  # the files say they are two pictures, whatever their names


def test_without_identifiers_a_pair_needs_its_name_a_short_clip_and_the_same_moment() -> None:
    photo = live(1, "img_1", "photo")
    assert pair_folder([photo, live(2, "img_1", "clip", at=1.5)]) == {1: 2, 2: 1}
    # immich#14459: the same name, shot weeks later
    assert pair_folder([photo, live(2, "img_1", "clip", at=17 * 86400)]) == {}
    assert (
        pair_folder([photo, live(2, "img_1", "clip", seconds=40.0, at=1)]) == {}
    )  # a video, not a motion clip
    assert pair_folder([photo, live(2, "img_1", "clip", seconds=None, at=1)]) == {}  # a length nobody read
    assert pair_folder([photo, live(2, "img_2", "clip", at=0)]) == {}
    no_date = LiveFile(2, "img_1", "clip", None, 2.0, None, False)
    assert pair_folder([photo, no_date]) == {}


def test_two_equally_good_partners_make_no_pair_and_the_clips_own_name_wins_among_identifiers() -> None:
    heic, jpeg = live(1, "img_1", "photo"), live(2, "img_1", "photo")
    assert pair_folder([heic, jpeg, live(3, "img_1", "clip")]) == {}
    original, edited = live(1, "img_1", "photo", cid=CID), live(2, "img_e1", "photo", cid=CID)
    assert pair_folder([original, edited, live(3, "img_1", "clip", cid=CID)]) == {1: 3, 3: 1}


def test_a_clock_read_in_a_guessed_zone_still_meets_its_clip() -> None:
    """A photo without an offset is read in TIME_ZONE (or this machine's zone); its clip carries its own. The
    wall clocks agree to the second where the instants do not."""
    naive_read_as_utc = LiveFile(
        1, "img_1", "photo", None, None, datetime(2023, 8, 1, 12, 0, 0, tzinfo=timezone.utc), False
    )
    clip = LiveFile(
        2,
        "img_1",
        "clip",
        None,
        2.0,
        datetime(2023, 8, 1, 12, 0, 1, tzinfo=timezone(timedelta(hours=2))),
        False,
    )
    assert pair_folder([naive_read_as_utc, clip]) == {1: 2, 2: 1}


# --- files -------------------------------------------------------------------------------------------------


def iphone_photo(
    path: Path, taken: datetime, cid: str | None = None, seed: int = 0, heic: bool = False
) -> Path:
    local = taken.astimezone(timezone(timedelta(hours=2)))
    exif = [
        (media_corpus.DTO, media_corpus.ASCII, local.strftime("%Y:%m:%d %H:%M:%S")),
        (media_corpus.OFFSET_ORIGINAL, media_corpus.ASCII, "+02:00"),
    ]
    if cid:
        exif.append((media_corpus.MAKERNOTE, media_corpus.UNDEFINED, media_corpus.apple_makernote(cid)))
    block = media_corpus.tiff_block(media_corpus.camera("Apple", "iPhone 13"), exif)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = media_corpus.heic(block) if heic else media_corpus.jpeg(block, seed=seed)
    path.write_bytes(data + bytes([seed]))
    return path


def iphone_clip(path: Path, taken: datetime, cid: str | None = None, frames: int = 3, seed: int = 0) -> Path:
    keys = {"com.apple.quicktime.make": "Apple", "com.apple.quicktime.model": f"iPhone 13 {seed}"}
    if cid:
        keys["com.apple.quicktime.content.identifier"] = cid
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(media_corpus.quicktime(taken, keys, frames=frames))  # 3 frames: 1 s; 30: 10 s
    return path


def asset_of(server: ImmichTestServer, path: Path) -> Asset:
    asset = server.asset_by_sha1(hashlib.sha1(path.read_bytes()).hexdigest())
    assert asset is not None, path
    return asset


def sync(env: Env, *extra: str) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--json", *extra)
    assert result.stdout, result.stderr
    return result.status, json.loads(result.stdout), result.stderr


def linked(server: ImmichTestServer, photo: Path, clip: Path) -> bool:
    still, motion = asset_of(server, photo), asset_of(server, clip)
    return still.fields.get("livePhotoVideoId") == motion.id and motion.fields.get("visibility") == "hidden"


def test_live_pairs_are_linked_the_clip_sent_first_and_look_alikes_left_alone(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    root = library.root
    heic = iphone_photo(root / "2023/IMG_0001.HEIC", WHEN, CID, heic=True)
    hevc = iphone_clip(root / "2023/IMG_0001_HEVC.MOV", WHEN + timedelta(seconds=1), CID)  # icloudpd's name
    jpeg = iphone_photo(root / "2023/IMG_0002.JPG", WHEN + timedelta(minutes=5), seed=2)
    mov = iphone_clip(root / "2023/IMG_0002.MOV", WHEN + timedelta(minutes=5, seconds=1), seed=2)
    # immich#14459: a reset phone's IMG_0003 photo and a video shot weeks later under the same name
    lonely = iphone_photo(root / "2023/IMG_0003.JPG", WHEN, seed=3)
    later = iphone_clip(root / "2023/IMG_0003.MOV", WHEN + timedelta(days=17), seed=3)
    library.write("2023/._IMG_0002.MOV", b"\x00\x05\x16\x07 an AppleDouble file")  # hidden: never a candidate
    # the same name in another folder is no pair either
    away = iphone_clip(root / "elsewhere/IMG_0002.MOV", WHEN + timedelta(minutes=5, seconds=1), seed=4)
    status, summary, stderr = sync(server_env, "--visibility", "archive")
    assert status == 0, stderr
    assert linked(immich, heic, hevc) and linked(immich, jpeg, mov)
    assert summary["live_photos"] == 2 and summary["uploaded"] == 7
    for path in (lonely, later, away):
        assert asset_of(immich, path).fields.get("livePhotoVideoId") is None
        assert asset_of(immich, path).fields["visibility"] == "archive"
    assert asset_of(immich, jpeg).fields["visibility"] == "archive"  # the clips went without it: hidden now
    order = [u.sha1_hex for u in immich.uploads if u.status == 201]
    for photo, clip in ((heic, hevc), (jpeg, mov)):
        assert order.index(asset_of(immich, clip).sha1_hex) < order.index(asset_of(immich, photo).sha1_hex)
    # A rerun makes no call: the pairs are recorded as linked.
    before = len(immich.requests_log)
    assert sync(server_env)[1]["live_photos"] == 0
    assert not [p for m, p in immich.requests_log[before:] if m == "PUT"]


def test_a_clip_that_fails_first_lets_its_photo_go_and_is_linked_once_it_is_sent(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    immich.faults.add(
        status=413, path="/api/assets", method="POST", count=1, html=True
    )  # the first upload: the clip
    status, summary, _ = sync(server_env)
    assert status == 1 and summary["uploaded"] == 1 and summary["live_photos"] == 0
    assert asset_of(immich, photo).fields.get("livePhotoVideoId") is None
    status, summary, _ = run_upload_retry(server_env)
    assert status == 0 and linked(immich, photo, clip) and summary["live_photos"] == 1


def run_upload_retry(env: Env) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(upload_files.main, "--env-file", str(env.path), "--json", "--retry-errors")
    return result.status, json.loads(result.stdout), result.stderr


def test_a_clip_immich_has_already_is_the_one_the_photo_names(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    existing = immich.add_existing_asset(clip.read_bytes(), "IMG_1.MOV")
    status, summary, _ = sync(server_env)
    assert status == 0 and summary["duplicates"] == 1 and summary["uploaded"] == 1
    assert asset_of(immich, photo).fields["livePhotoVideoId"] == existing.id


def test_a_photo_immich_has_is_linked_afterwards_unless_it_has_a_clip_of_its_own(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    other_photo = iphone_photo(library.root / "b/IMG_2.JPG", WHEN, seed=2)
    other_clip = iphone_clip(library.root / "b/IMG_2.MOV", WHEN, seed=2)
    immich.add_existing_asset(photo.read_bytes(), "IMG_1.JPG")
    theirs = immich.add_existing_asset(other_photo.read_bytes(), "IMG_2.JPG")
    someone_elses_clip = immich.add_existing_asset(b"their own motion clip", "IMG_2.MOV")
    theirs.fields["livePhotoVideoId"] = someone_elses_clip.id
    status, summary, _ = sync(server_env)
    assert status == 0 and linked(immich, photo, clip) and summary["live_photos"] == 1
    assert theirs.fields["livePhotoVideoId"] == someone_elses_clip.id  # left as the user has it
    assert asset_of(immich, other_clip).fields.get("visibility", "timeline") == "timeline"


def test_a_clip_the_scan_had_not_recorded_is_waited_for_and_the_pair_linked_when_it_is(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    """upload_files.py after a scan that did not see the clip: the photo waits for the end of the run (its
    folder holds a clip without a row), goes alone, and the next sync sends the clip and links them."""
    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    assert run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run").status == 0
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)  # arrives after the scan
    result = run_inprocess(upload_files.main, "--env-file", str(server_env.path), "--json")
    assert result.status == 0 and json.loads(result.stdout)["uploaded"] == 1
    status, summary, _ = sync(server_env)
    assert status == 0 and linked(immich, photo, clip) and summary["live_photos"] == 1


def test_a_dry_run_names_the_pairs_and_records_none(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run")
    assert result.status == 0
    assert "with its live photo clip IMG_1.MOV" in result.stdout
    store = open_store(server_env.settings())
    try:
        assert all(r["live_partner_id"] is None for r in store.rows())
    finally:
        store.close()
    assert immich.upload_count() == 0


def test_a_live_photo_is_deleted_locally_only_once_both_halves_are_linked(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    immich.faults.add(status=413, path="/api/assets", method="POST", count=1, html=True)  # the clip
    status, summary, _ = sync(server_env, "--delete-uploaded")
    assert photo.exists() and clip.exists() and summary["deleted"] == 0
    status, summary, _ = run_upload_retry(server_env.set(DELETE_UPLOADED="true"))
    assert status == 0 and summary["deleted"] == 2 and not photo.exists() and not clip.exists()


@pytest.mark.parametrize("heic", [False, True])
def test_a_pair_without_identifiers_is_linked_by_name_and_moment(
    server_env: Env, library: Library, immich: ImmichTestServer, heic: bool
) -> None:
    ext = "HEIC" if heic else "JPG"
    photo = iphone_photo(library.root / f"a/IMG_1.{ext}", WHEN, heic=heic)
    clip = iphone_clip(library.root / "a/IMG_1.MOV", WHEN + timedelta(seconds=2))
    assert sync(server_env)[0] == 0 and linked(immich, photo, clip)


def test_a_takeouts_motion_photos_are_linked_and_a_video_with_its_own_json_is_not(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    """Google writes a JSON for a photo and none for its motion part (`PXL_….MP.jpg` or `PXL_….jpg` beside
    `PXL_….MP`): that clip borrows the photo's and is its pair. immich#14459's IMG_9140.JPG and IMG_9140.MOV
    each have their own JSON, with dates weeks apart: two pictures."""
    from tests.test_takeout import MP4, ROOT, google_json, jpeg, when, write_zip

    year = f"{ROOT}/Photos from 2021"
    members = {
        f"{year}/PXL_20210101_010101000.MP.jpg": jpeg(1),
        f"{year}/PXL_20210101_010101000.MP.jpg.supplemental-metadata.json": google_json(
            "PXL_20210101_010101000.MP.jpg", when(2021, 1, 1)
        ),
        f"{year}/PXL_20210101_010101000.MP": MP4 + b"1",
        f"{year}/PXL_0002.jpg": jpeg(2),
        f"{year}/PXL_0002.jpg.json": google_json("PXL_0002.jpg", when(2021, 2)),
        f"{year}/PXL_0002.MP": MP4 + b"2",
        f"{year}/IMG_9140.JPG": jpeg(3),
        f"{year}/IMG_9140.JPG.json": google_json("IMG_9140.JPG", when(2024, 8, 15)),
        f"{year}/IMG_9140.MOV": MP4 + b"3",
        f"{year}/IMG_9140.MOV.json": google_json("IMG_9140.MOV", when(2024, 9, 1)),
    }
    part = write_zip(tmp_path / "takeout-20241201T100000Z-001.zip", members)
    result = run_inprocess(
        sync_upload.main, "--env-file", str(server_env.path), "--json", "--takeout", str(part)
    )
    assert result.status == 0, result.stderr
    assert json.loads(result.stdout)["live_photos"] == 2

    def asset(name: str) -> Asset:
        found = immich.asset_by_sha1(hashlib.sha1(members[f"{year}/{name}"]).hexdigest())
        assert found is not None
        return found

    for photo, clip in (
        ("PXL_20210101_010101000.MP.jpg", "PXL_20210101_010101000.MP"),
        ("PXL_0002.jpg", "PXL_0002.MP"),
    ):
        assert (
            asset(photo).fields["livePhotoVideoId"] == asset(clip).id
            and asset(clip).fields["visibility"] == "hidden"
        )
    assert "livePhotoVideoId" not in asset("IMG_9140.JPG").fields
    assert asset("IMG_9140.MOV").fields.get("visibility", "timeline") == "timeline"


def test_pairs_are_never_recorded_from_half_a_folder(server_env: Env, library: Library) -> None:
    """While the scan has not recorded every photo and clip of a folder (a third file may make a pair
    ambiguous), nothing is recorded; once the scan is over, the pairs of what it recorded are."""
    from filters import RunScope
    from live_photos import LivePartners, listdir

    photo = iphone_photo(library.root / "a/IMG_1.JPG", WHEN, CID)
    iphone_clip(library.root / "a/IMG_1.MOV", WHEN, CID)
    assert run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run").status == 0
    iphone_photo(library.root / "a/IMG_1.HEIC", WHEN, CID, heic=True)  # not scanned yet
    settings = server_env.settings()
    store = open_store(settings)
    try:
        partners = LivePartners(store, RunScope.of(settings), settings, listdir)
        raw = bytes(photo)
        assert not partners.ready(raw, "jpg")
        assert all(r["live_partner_id"] is None for r in store.rows())
        partners.forget()  # the scan is over
        assert partners.partner(
            raw, next(r["id"] for r in store.rows() if r["filename"] == "IMG_1.JPG"), "jpg"
        )
        assert sorted(r["live_partner_id"] is not None for r in store.rows()) == [True, True]
    finally:
        store.close()
