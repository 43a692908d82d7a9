"""Leaving Google Photos (issue 14): Takeout zips with every naming quirk, read in place, matched to their
JSON, uploaded once, placed in their albums, and a rerun that reads nothing it has seen."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from PIL import Image

import sync_upload
from db_manager import open_store
from takeout import is_cut, json_key, json_name, media_key
from tests.conftest import Env, run_inprocess
from tests.immich_server import ImmichTestServer

ROOT = "Takeout/Google Photos"


def jpeg(n: int, taken: str | None = None, gps: bool = False) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Google"
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken
    if gps:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2], ifd[3], ifd[4] = "N", (1.0, 2.0, 3.0), "E", (4.0, 5.0, 6.0)
    out = io.BytesIO()
    Image.new("RGB", (40 + n, 30), (n * 37 % 256, n * 11 % 256, 90)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def google_json(title: str, taken: datetime, **extra: object) -> bytes:
    data: dict[str, object] = {
        "title": title,
        "photoTakenTime": {"timestamp": str(int(taken.timestamp())), "formatted": "…"},
        "geoData": {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0},
        **extra,
    }
    return json.dumps(data).encode()


def when(year: int, month: int = 1, day: int = 2, hour: int = 3) -> datetime:
    return datetime(year, month, day, hour, 4, 5, tzinfo=timezone.utc)


LONG = "Screenshot_from_a_messenger_application_with_a_long_name_2020.jpg"
MP4 = b"\x00\x00\x00\x18ftypmp42" + b"m" * 700


def part_one() -> dict[str, bytes]:
    """The first zip: every quirk of naming, a live photo, an album, a trashed and an archived photo."""
    y19, y20 = f"{ROOT}/Photos from 2019", f"{ROOT}/Photos from 2020"
    rome = f"{ROOT}/Trip to Rome"
    return {
        f"{y19}/IMG_0001.jpg": jpeg(1),  # no date of its own
        f"{y19}/IMG_0001.jpg.json": google_json(
            "IMG_0001.jpg",
            when(2019, 5),
            favorited=True,
            description="Colosseum at dawn",
            geoData={"latitude": 41.8902, "longitude": 12.4922, "altitude": 21.0},
        ),
        f"{y19}/IMG_0002.jpg": jpeg(2, taken="2018:07:08 09:10:11"),  # its own date wins
        f"{y19}/IMG_0002.jpg.supplemental-metadata.json": google_json("IMG_0002.jpg", when(2019, 6)),
        f"{y20}/{LONG}": jpeg(3),
        f"{y20}/{(LONG + '.supplemental-metadata')[:46]}.json": google_json(LONG, when(2020, 3)),
        f"{y20}/IMG_0004.jpg": jpeg(4),
        f"{y20}/IMG_0004(1).jpg": jpeg(5),
        f"{y20}/IMG_0004.jpg.supplemental-metadata.json": google_json("IMG_0004.jpg", when(2020, 4)),
        f"{y20}/IMG_0004.jpg.supplemental-metadata(1).json": google_json("IMG_0004.jpg", when(2020, 5)),
        f"{y20}/IMG_0006(1).jpg": jpeg(6),
        f"{y20}/IMG_0006.jpg(1).json": google_json("IMG_0006.jpg", when(2020, 6)),
        f"{y20}/IMG_0005.jpg": jpeg(7),
        f"{y20}/IMG_0005-edited.jpg": jpeg(8),
        f"{y20}/IMG_0005.jpg.json": google_json("IMG_0005.jpg", when(2020, 7)),
        f"{y20}/IMG_0007-bearbeitet.jpg": jpeg(9),
        f"{y20}/IMG_0007.jpg.supplemental-metad.json": google_json("IMG_0007.jpg", when(2020, 8)),
        f"{y20}/IMG_0008.jpg": jpeg(10),
        f"{y20}/IMG_0008.jpg.json": google_json("IMG_0008.jpg", when(2020, 9), trashed=True),
        f"{y20}/IMG_0009.jpg": jpeg(11),
        f"{y20}/IMG_0009.jpg.json": google_json("IMG_0009.jpg", when(2020, 10), archived=True),
        f"{y20}/PXL_0010.jpg": jpeg(12),
        f"{y20}/PXL_0010.MP": MP4,
        f"{y20}/PXL_0010.jpg.supplemental-metadata.json": google_json("PXL_0010.jpg", when(2020, 11)),
        f"{y20}/orphan.jpg": jpeg(13),  # Google wrote no JSON for it
        f"{ROOT}/Photos from 2021/IMG_0011.jpg.json": google_json(
            "IMG_0011.jpg", when(2021, 2)
        ),  # its photo: part 2
        f"{rome}/metadata.json": json.dumps({"title": "Trip to Rome", "description": ""}).encode(),
        f"{rome}/IMG_0001.jpg": jpeg(1),  # the same bytes as in its year folder: one asset, in the album
        f"{rome}/IMG_0001.jpg.json": google_json("IMG_0001.jpg", when(2019, 5)),
        f"{ROOT}/archive_browser.html": b"<html></html>",
    }


def part_two() -> dict[str, bytes]:
    return {f"{ROOT}/Photos from 2021/IMG_0011.jpg": jpeg(14)}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2024, 12, 1, 10, 0, 0)), data)
    return path


@pytest.fixture
def takeout(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path / "downloads"
    folder.mkdir()
    yield (
        write_zip(folder / "takeout-20241201T100000Z-001.zip", part_one()),
        write_zip(folder / "takeout-20241201T100000Z-002.zip", part_two()),
    )


def sync(env: Env, *paths: Path, extra: tuple[str, ...] = ()) -> tuple[int, dict[str, object], str]:
    result = run_inprocess(
        sync_upload.main, "--env-file", str(env.path), "--json", *extra, "--takeout", *map(str, paths)
    )
    assert result.stdout, result.stderr
    return result.status, json.loads(result.stdout), result.stderr


def asset_for(server: ImmichTestServer, data: bytes):  # type: ignore[no-untyped-def]
    return server.asset_by_sha1(hashlib.sha1(data).hexdigest())


def created(server: ImmichTestServer, data: bytes) -> str:
    asset = asset_for(server, data)
    assert asset is not None
    return asset.fields["fileCreatedAt"]


def test_json_names_are_read_with_every_quirk() -> None:
    assert json_key("IMG_1.jpg.json") == media_key("IMG_1.jpg") == ("IMG_1.jpg", "")
    assert json_key("IMG_1.jpg.supplemental-metadata.json") == ("IMG_1.jpg", "")
    assert json_key("IMG_1.jpg.supplemental-me.json") == ("IMG_1.jpg", "")
    assert (
        json_key("IMG_1.jpg.supplemental-metadata(1).json")
        == media_key("IMG_1(1).jpg")
        == ("IMG_1.jpg", "(1)")
    )
    assert json_key("IMG_1.jpg(2).json") == media_key("IMG_1(2).jpg")
    clipped = (LONG + ".supplemental-metadata")[:46] + ".json"
    assert len(clipped) == 51 and is_cut(json_name(clipped).stem) and LONG.startswith(json_name(clipped).stem)


def test_a_takeout_is_uploaded_once_with_googles_dates_places_and_albums_and_the_zips_untouched(
    server_env: Env, immich: ImmichTestServer, takeout: tuple[Path, Path]
) -> None:
    before = {z: (z.stat().st_mtime_ns, hashlib.sha256(z.read_bytes()).hexdigest()) for z in takeout}
    status, summary, stderr = sync(server_env, *takeout)
    assert status == 0, stderr
    one, two = part_one(), part_two()
    y19, y20 = f"{ROOT}/Photos from 2019", f"{ROOT}/Photos from 2020"
    # Dates: Google's when the file has none, the file's own otherwise; each counter its own JSON.
    assert created(immich, one[f"{y19}/IMG_0001.jpg"]) == "2019-05-02T03:04:05.000Z"
    assert created(immich, one[f"{y19}/IMG_0002.jpg"]).startswith("2018-07-08")
    assert created(immich, one[f"{y20}/{LONG}"]) == "2020-03-02T03:04:05.000Z"
    assert created(immich, one[f"{y20}/IMG_0004.jpg"]) == "2020-04-02T03:04:05.000Z"
    assert created(immich, one[f"{y20}/IMG_0004(1).jpg"]) == "2020-05-02T03:04:05.000Z"
    assert created(immich, one[f"{y20}/IMG_0006(1).jpg"]) == "2020-06-02T03:04:05.000Z"
    assert created(immich, one[f"{y20}/IMG_0005-edited.jpg"]) == "2020-07-02T03:04:05.000Z"
    assert created(immich, one[f"{y20}/IMG_0007-bearbeitet.jpg"]) == "2020-08-02T03:04:05.000Z"
    assert created(immich, two[f"{ROOT}/Photos from 2021/IMG_0011.jpg"]) == "2021-02-02T03:04:05.000Z"
    # One asset for the photo that is in its year folder and its album, placed in the album.
    colosseum = asset_for(immich, one[f"{y19}/IMG_0001.jpg"])
    assert colosseum is not None and colosseum.fields["isFavorite"] == "true"
    (album,) = immich.albums.values()
    assert album.albumName == "Trip to Rome" and album.asset_ids == [colosseum.id]
    # The place and the description Google knew go in a made sidecar; the archive state as visibility.
    (record,) = [u for u in immich.uploads if u.sha1_hex == colosseum.sha1_hex and u.status == 201]
    assert record.sidecar_filename == "IMG_0001.jpg.xmp"
    assert b"41,53.412000N" in record.sidecar_head and b"Colosseum at dawn" in record.sidecar_head
    assert asset_for(immich, one[f"{y20}/IMG_0009.jpg"]).fields["visibility"] == "archive"
    # Google's trash is passed over; the live photo's clip goes as an .mp4 Immich takes.
    assert asset_for(immich, one[f"{y20}/IMG_0008.jpg"]) is None
    assert asset_for(immich, one[f"{y20}/PXL_0010.MP"]).filename == "PXL_0010.MP.mp4"
    media = [n for n in {**one, **two} if not n.endswith((".json", ".html"))]
    assert immich.upload_count() == len(media) - 2  # the trashed one, and the album's copy of IMG_0001
    assert (
        max(
            sum(1 for u in immich.uploads if u.sha1_hex == a.sha1_hex and u.size_bytes)
            for a in immich.assets.values()
        )
        == 1
    )
    # The summary says how each file was matched, and which had no JSON.
    matched = summary["takeout"]["matched"]  # type: ignore[index]
    assert matched == {"name": 9, "cut": 1, "counter": 2, "edited": 2, "motion": 1, "none": 1}
    assert summary["takeout"]["unmatched"] == [f"takeout-20241201T100000Z-001.zip/{y20}/orphan.jpg"]  # type: ignore[index]
    assert "no JSON found" in stderr and "orphan.jpg" in stderr
    # The zips were read in place and never written.
    assert {z: (z.stat().st_mtime_ns, hashlib.sha256(z.read_bytes()).hexdigest()) for z in takeout} == before


def test_a_rerun_reads_nothing_it_has_seen_and_more_parts_are_added_later(
    server_env: Env, immich: ImmichTestServer, takeout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import takeout as module

    first, second = takeout
    status, summary, _ = sync(server_env, first)
    assert status == 0 and summary["new"] == 15
    sent = immich.upload_count()
    opened: list[str] = []
    real = module.Archive.open
    monkeypatch.setattr(
        module.Archive, "open", lambda self, stored: opened.append(stored) or real(self, stored)
    )
    status, summary, _ = sync(server_env, first, second)  # the second part arrived
    assert status == 0 and summary["new"] == 1 and summary["unchanged"] == 15 and summary["uploaded"] == 1
    assert immich.upload_count() == sent + 1
    # Its JSON sits in the first part, read by the first run and kept: only the new photo is read (to hash
    # it, then to send it).
    new_folder = f"{ROOT}/Photos from 2021/"
    assert set(opened) == {f"{second.name}/{new_folder}IMG_0011.jpg"}
    assert created(immich, part_two()[f"{new_folder}IMG_0011.jpg"]) == "2021-02-02T03:04:05.000Z"
    opened.clear()
    status, summary, _ = sync(server_env, first, second)
    assert status == 0 and summary["unchanged"] == 16 and summary["uploaded"] == 0
    assert opened == []  # nothing new: not a photo, not a JSON was read
    assert immich.upload_count() == sent + 1


def test_an_extracted_takeout_folder_works_the_same(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    folder = tmp_path / "extracted"
    for name, data in {**part_one(), **part_two()}.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    status, summary, _ = sync(server_env, folder, extra=("--takeout-trashed",))
    assert status == 0 and summary["uploaded"] == 15  # with Google's trash this time
    assert created(immich, part_two()[f"{ROOT}/Photos from 2021/IMG_0011.jpg"]) == "2021-02-02T03:04:05.000Z"
    assert asset_for(immich, part_one()[f"{ROOT}/Photos from 2020/IMG_0008.jpg"]) is not None
    store = open_store(server_env.settings())
    try:
        assert {r["scope"] for r in store.rows()} == {"t:takeout"}
    finally:
        store.close()
