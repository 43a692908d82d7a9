"""Leaving Google Photos (issue 14): Takeout zips with every naming quirk, read in place, matched to their
JSON, uploaded once, placed in their albums, and a rerun that reads nothing it has seen."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from collections import Counter
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


# --- names as real exports have them -----------------------------------------------------------------


def raw_zip(path: Path, members: list[tuple[bytes, bytes]], **special: dict[str, object]) -> Path:
    """A zip written byte by byte, for what zipfile will not write: names that are not valid UTF-8 (flagged
    as UTF-8 all the same), the same name twice, a date of 0, an encrypted member, a Deflate64 member.
    `members` is (name bytes, content); `special[name]` may set `method` (8 deflate, 9 Deflate64, 0 stored),
    `flags`, `dostime`/`dosdate`."""
    import zlib

    import inflate64

    out = io.BytesIO()
    directory = io.BytesIO()
    for name, data in members:
        options = special.get(name.decode("utf-8", "replace"), {})
        method = int(options.get("method", 8))  # type: ignore[call-overload]
        if method == 8:
            packer = zlib.compressobj(6, zlib.DEFLATED, -15)
            packed = packer.compress(data) + packer.flush()
        elif method == 9:
            deflater = inflate64.Deflater()
            packed = deflater.deflate(data) + deflater.flush()
        else:
            packed = data
        flags = 0x800 | int(options.get("flags", 0))  # type: ignore[call-overload]
        dostime = int(options.get("dostime", 0x5000))  # type: ignore[call-overload]
        dosdate = int(options.get("dosdate", 0x5981))  # type: ignore[call-overload]  # 2024-12-01
        crc = zlib.crc32(data)
        offset = out.tell()
        header = (20, flags, method, dostime, dosdate, crc, len(packed), len(data), len(name), 0)
        out.write(b"PK\x03\x04" + struct.pack("<HHHHHIIIHH", *header) + name + packed)
        directory.write(
            b"PK\x01\x02" + struct.pack("<HHHHHHIIIHHHHHII", 20, *header[:-1], 0, 0, 0, 0, 0, offset) + name
        )
    cd = directory.getvalue()
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), out.tell(), 0)
    path.write_bytes(out.getvalue() + cd + end)
    return path


EMOJI = "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗😙😚😋"
SUNSETS = "a" + "🌅" * 30 + ".jpg"  # its JSON's name is cut inside the 23rd emoji (half a surrogate pair)
SUNSETS_JSON = ("a" + "🌅" * 22).encode() + b"\xed\xa0\xbc.json"  # CESU-8 half of U+1F305: invalid UTF-8
FB = "Screenshot_20231027_123303_Facebook"
BACKYARD = "Backyard_ceremony_wedding_photography_xxxxxxx_"
ORIGINAL = "original_1d4caa6f-16c6-4c3d-901b-9387de10e528_"
EXPOSURE = "PXL_20230809_203449253.LONG_EXPOSURE-02.ORIGIN"
LONG_2021 = LONG.replace("2020", "2021")
# Names real users posted to immich-go's, Immich's and GPTH's trackers: (JSON name, the title inside it).
REAL_JSONS: dict[str | bytes, str] = {
    "PXL_20211013_220651983.jpg.json": "PXL_20211013_220651983.jpg",
    EXPOSURE + ".json": EXPOSURE + "AL.jpg",
    "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jp.json": "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jpg",
    EMOJI + ".json": EMOJI + "😛.jpg",
    SUNSETS_JSON: SUNSETS,
    BACKYARD + "(494).json": BACKYARD + "moments.jpg",
    ORIGINAL + ".json": ORIGINAL + "P.jpg",
    "PXL_20210102_221126856.MP~2.jpg.json": "PXL_20210102_221126856.MP~2.jpg",
    "13039_327707840323_537645323_9470255_27214_n.j(1).json": "13039_327707840323_537645323_9470255_27214_n.jpg",
    FB + ".jpg.supple.json": FB + ".jpg",
    FB + ".jpg.supple(1).json": FB + ".jpg",
    "MVIMG_20191230_232926.jpg.supplemental-metadat.json": "MVIMG_20191230_232926.jpg",
    "Scan35.jpg.supplemental-metadata.json": "Scan35.jpg",
    "Scan35.jpg.supplemental-metadata(1).json": "Scan35.jpg",
    "CLIP0001.AVI.supplemental-metadata(10).json": "CLIP0001.AVI",
    "IMAG0061.JPG.supplemental-metadata.json": "IMAG0061.JPG",
    "2234089303984509579.supplemental-metadata.json": "2234089303984509579",
    "IMG-20230325-WA0122~2.jpg.supplemental-metadat.json": "IMG-20230325-WA0122~2.jpg",
    "Screenshot_2024-08-31-00-53-48-647_com.snapcha.json": "Screenshot_2024-08-31-00-53-48-647_com.snapchat.jpg",
    "IMG_1234.jpg.json": "IMG_1234.jpg",
    "DSC_0001.jpg.supplemental-metadata.json": "DSC_0001.jpg",
    (LONG + ".supplemental-metadata")[:46] + ".json": LONG,
    (LONG + ".supplemental-metadata")[:46]
    + "(1).json": LONG_2021,  # Google's counter for a repeated cut name
}
# (media name, the JSON whose date it must get or None, how the summary says it was found)
REAL_MEDIA: list[tuple[str, str | bytes | None, str]] = [
    ("PXL_20211013_220651983.jpg", "PXL_20211013_220651983.jpg.json", "name"),
    ("PXL_20211013_220651958.jpg", None, "none"),  # differs near the end: never 983's JSON
    (EXPOSURE + "A.jpg", EXPOSURE + ".json", "cut"),  # the media name is cut too
    (
        "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jpg",
        "05yqt21kruxwwlhhgrwrdyb6chhwszi9bqmzu16w0 2.jp.json",
        "cut",
    ),
    (EMOJI + "😛.jpg", EMOJI + ".json", "cut"),
    (SUNSETS, SUNSETS_JSON, "cut"),
    (BACKYARD + "m(494).jpg", BACKYARD + "(494).json", "cut"),
    (BACKYARD + "m(185).jpg", None, "none"),  # another counter: another photo
    (ORIGINAL + "P.jpg", ORIGINAL + ".json", "cut"),
    (ORIGINAL + "P(1).jpg", None, "none"),  # another photo of that name, without a JSON
    ("PXL_20210102_221126856.MP~2.jpg", "PXL_20210102_221126856.MP~2.jpg.json", "name"),
    (
        "13039_327707840323_537645323_9470255_27214_n(1).jpg",
        "13039_327707840323_537645323_9470255_27214_n.j(1).json",
        "cut",
    ),
    (FB + ".jpg", FB + ".jpg.supple.json", "name"),
    (FB + "(1).jpg", FB + ".jpg.supple(1).json", "counter"),
    (FB + "-edited.jpg", FB + ".jpg.supple.json", "edited"),
    ("MVIMG_20191230_232926.jpg", "MVIMG_20191230_232926.jpg.supplemental-metadat.json", "name"),
    ("Scan35.jpg", "Scan35.jpg.supplemental-metadata.json", "name"),
    ("Scan35(1).jpg", "Scan35.jpg.supplemental-metadata(1).json", "counter"),
    ("CLIP0001(10).AVI", "CLIP0001.AVI.supplemental-metadata(10).json", "counter"),
    ("IMAG0061-edited.JPG", "IMAG0061.JPG.supplemental-metadata.json", "edited"),
    ("2234089303984509579-edited.jpg", "2234089303984509579.supplemental-metadata.json", "edited"),
    ("IMG-20230325-WA0122~2-edited.jpg", "IMG-20230325-WA0122~2.jpg.supplemental-metadat.json", "edited"),
    (
        "Screenshot_2024-08-31-00-53-48-647_com.snapchat.jpg",
        "Screenshot_2024-08-31-00-53-48-647_com.snapcha.json",
        "cut",
    ),
    ("IMG_1234-modifié.jpg", "IMG_1234.jpg.json", "edited"),
    ("DSC_0001-ha editado.jpg", "DSC_0001.jpg.supplemental-metadata.json", "edited"),
    (LONG, (LONG + ".supplemental-metadata")[:46] + ".json", "cut"),
    (LONG_2021, (LONG + ".supplemental-metadata")[:46] + "(1).json", "title"),
]
ALBUM_JSONS = {  # album folder -> (its metadata file's name, content)
    "Vacances": ("métadonnées.json", {"title": "Vacances"}),
    "Urlaub": ("Metadaten.json", {"title": "Urlaub"}),
    "Vacaciones": ("metadatos.json", {"title": "Vacaciones"}),
    "Trip": ("metadata.json", {"title": "Trip", "description": "", "access": "protected"}),
    "Old": ("metadata.json", {"albumData": {"title": "Old one", "date": "Jan 1, 2015"}}),
}


def names_export(
    tmp_path: Path,
) -> tuple[Path, dict[str, tuple[bytes, str | None, str]], dict[object, datetime]]:
    """A zip with REAL_MEDIA and REAL_JSONS in one year folder (each JSON its own date), and albums with
    every name and format of album metadata."""
    folder = f"{ROOT}/Photos from 2022"
    members: list[tuple[bytes, bytes]] = []
    dates = {name: when(2001 + n, 3, 4, 5) for n, name in enumerate(REAL_JSONS)}
    for name, title in REAL_JSONS.items():
        raw = name.encode() if isinstance(name, str) else name
        members.append((f"{folder}/".encode() + raw, google_json(title, dates[name])))
    expected = {}
    for n, (name, json_file, how) in enumerate(REAL_MEDIA):
        data = MP4 + bytes([n]) if name.endswith(".AVI") else jpeg(100 + n)
        members.append((f"{folder}/{name}".encode(), data))
        expected[name] = (data, json_file, how)
    for i, (album, (meta, content)) in enumerate(ALBUM_JSONS.items()):
        members.append((f"{ROOT}/{album}/{meta}".encode(), json.dumps(content).encode()))
        members.append((f"{ROOT}/{album}/IMG_A{i}.jpg".encode(), jpeg(200 + i)))
    return raw_zip(tmp_path / "takeout-20250101T000000Z-001.zip", members), expected, dates


def test_every_real_name_gets_its_own_json_and_never_another(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    export, expected, dates = names_export(tmp_path)
    status, summary, stderr = sync(server_env, export)
    assert status == 0, stderr
    json_dates = {d.strftime("%Y-%m-%dT%H:%M:%S.000Z"): n for n, d in dates.items()}
    got = {}
    for name, (data, _json_file, _how) in expected.items():
        asset = asset_for(immich, data)
        assert asset is not None, name
        got[name] = json_dates.get(asset.fields["fileCreatedAt"])  # the JSON whose date it got, if any
    assert got == {name: json_file for name, (_d, json_file, _h) in expected.items()}
    hows = Counter(how for _data, _json, how in expected.values())
    hows["none"] += len(ALBUM_JSONS)  # the albums' photos have no JSON of their own
    assert summary["takeout"]["matched"] == dict(hows)  # type: ignore[index]
    albums = {a.albumName: len(a.asset_ids) for a in immich.albums.values()}
    assert albums == {"Vacances": 1, "Urlaub": 1, "Vacaciones": 1, "Trip": 1, "Old one": 1}


# --- values of the wrong type, bad members ------------------------------------------------------------


def test_values_of_the_wrong_type_are_data_and_the_sidecar_stays_well_formed_xml(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    from xml.etree import ElementTree

    folder = f"{ROOT}/Photos from 2019"
    odd = {  # JSON text as Google's (or a broken tool's) may be: NaN, 1e999, text where numbers belong
        "A.jpg": '{"title": "A.jpg", "photoTakenTime": {"timestamp": "1557025445"}, "favorited": "false", '
        '"archived": "true", "geoData": {"latitude": NaN, "longitude": 12.5}, '
        '"description": "tab\\there, bell\\u0007, nul\\u0000, <b>&amp;</b> \\ud800 ]]>"}',
        "B.jpg": '{"title": "B.jpg", "photoTakenTime": "2019", "geoData": [1, 2], "favorited": 1}',
        "C.jpg": '{"title": "C.jpg", "photoTakenTime": {"timestamp": 1e999}, '
        '"geoData": {"latitude": 95, "longitude": 10}, "geoDataExif": {"latitude": 1e999, "longitude": 3}}',
        "D.jpg": '{"title": "D.jpg", "photoTakenTime": {"timestamp": "99999999999999999999"}, '
        '"geoData": {"latitude": "41.5", "longitude": "12.25", "altitude": "x"}, "favorited": "TRUE"}',
    }
    members = {}
    for i, (name, text) in enumerate(odd.items()):
        members[f"{folder}/{name}"] = jpeg(300 + i)
        members[f"{folder}/{name}.json"] = text.encode()
    export = write_zip(tmp_path / "takeout-odd-001.zip", members)
    status, _summary, stderr = sync(server_env, export)
    assert status == 0, stderr
    a, b, c, d = (asset_for(immich, members[f"{folder}/{n}"]) for n in odd)
    assert a.fields["isFavorite"] == "false" and a.fields["visibility"] == "archive"
    assert b.fields["isFavorite"] == "true" and c.fields["isFavorite"] == "false"
    assert d.fields["isFavorite"] == "true"
    assert a.fields["fileCreatedAt"] == "2019-05-05T03:04:05.000Z"
    assert not b.fields["fileCreatedAt"].startswith("1970") and not c.fields["fileCreatedAt"].startswith(
        "1970"
    )
    sidecars = {u.filename: u.sidecar_head for u in immich.uploads if u.status == 201}
    assert sidecars["B.jpg"] == b"" and sidecars["C.jpg"] == b""  # no place, no date, nothing to say
    for name in ("A.jpg", "D.jpg"):
        ElementTree.fromstring(sidecars[name].decode().split("?>", 1)[1].rsplit("<?xpacket", 1)[0])
    assert b"GPSLatitude" not in sidecars["A.jpg"]  # NaN is no place
    text = sidecars["A.jpg"].decode()
    assert (
        "\x07" not in text
        and "\x00" not in text
        and "&lt;b&gt;&amp;amp;&lt;/b&gt;" in text
        and "]]&gt;" in text
    )
    assert b"41,30.000000N" in sidecars["D.jpg"] and b"GPSAltitude" not in sidecars["D.jpg"]


def bad_members(tmp_path: Path) -> tuple[Path, dict[str, bytes], list[str]]:
    """One part with every kind of bad member beside good ones: (the zip, the good photos by name, the bad
    members' names)."""
    y = f"{ROOT}/Photos from 2019"
    good = {f"good{i}.jpg": jpeg(400 + i) for i in range(3)}
    deflate64 = jpeg(410)
    twin_a, twin_b = jpeg(411), jpeg(412)
    undated, odd_name = jpeg(413), jpeg(414)
    members = [(f"{y}/{n}".encode(), data) for n, data in good.items()]
    members += [
        (f"{y}/good0.jpg.json".encode(), google_json("good0.jpg", when(2011))),
        (f"{y}/secret.jpg".encode(), b"\x00" * 300),  # encrypted
        (f"{y}/secret.jpg.json".encode(), b"{}" * 10),  # encrypted too
        (f"{y}/deflate64.jpg".encode(), deflate64),
        (f"{y}/deflate64.jpg.json".encode(), google_json("deflate64.jpg", when(2012))),
        (f"{y}/twin.jpg".encode(), twin_a),  # the same name twice in one zip: two photos
        (f"{y}/twin.jpg".encode(), twin_b),
        (f"{y}/undated.jpg".encode(), undated),  # a zip date of 0
        (f"{y}/caf\xe9.jpg".encode("latin-1"), odd_name),  # flagged UTF-8, it is not
        (f"{y}/huge.jpg.json".encode(), b'{"title": "huge.jpg", "x": "' + b" " * (2 << 20) + b'"}'),
        (f"{y}/broken.jpg.json".encode(), b'{"title": "broken.jpg", "photoTakenTime": {'),
        (f"{y}/list.jpg.json".encode(), b"[1, 2, 3]"),
    ]
    special: dict[str, dict[str, object]] = {
        f"{y}/secret.jpg": {"flags": 0x1},
        f"{y}/secret.jpg.json": {"flags": 0x1},
        f"{y}/deflate64.jpg": {"method": 9},
        f"{y}/undated.jpg": {"dosdate": 0, "dostime": 0},
    }
    export = raw_zip(tmp_path / "takeout-bad-001.zip", members, **special)
    photos = {**good, "deflate64.jpg": deflate64, "twin.jpg": twin_a, "twin.jpg (2)": twin_b,
              "undated.jpg": undated, "caf\ufffd.jpg": odd_name}  # fmt: skip
    return (
        export,
        photos,
        [f"{y}/secret.jpg", f"{y}/secret.jpg.json", f"{y}/huge.jpg.json", f"{y}/broken.jpg.json"],
    )


def test_one_bad_member_costs_only_itself_and_is_listed_and_counted(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    export, photos, bad = bad_members(tmp_path)
    good_part = write_zip(tmp_path / "takeout-bad-002.zip", {f"{ROOT}/Photos from 2020/fine.jpg": jpeg(420)})
    status, summary, stderr = sync(server_env, export, good_part)
    assert status == 1, stderr  # some members failed; everything else is in
    for name, data in {**photos, "fine.jpg": jpeg(420)}.items():
        assert asset_for(immich, data) is not None, name
    assert asset_for(immich, photos["deflate64.jpg"]).fields["fileCreatedAt"] == "2012-01-02T03:04:05.000Z"
    assert asset_for(immich, photos["good0.jpg"]).fields["fileCreatedAt"] == "2011-01-02T03:04:05.000Z"
    listed = summary["error_files"]
    assert sorted(listed) == sorted(f"{export.name}/{b}" for b in bad)  # type: ignore[arg-type]
    assert summary["errors"] == len(bad)
    assert "encrypted" in stderr and "no Google JSON is that large" in stderr and "JSON unreadable" in stderr
    # A rerun reads nothing it has seen, and still says which members are bad.
    sent = immich.upload_count()
    status, summary, _ = sync(server_env, export, good_part)
    assert status == 1 and summary["errors"] == len(bad) and immich.upload_count() == sent
    assert summary["takeout"]["members_read"] == 0  # type: ignore[index]


def test_a_fifo_or_a_broken_symlink_in_an_extracted_folder_is_an_error_and_never_blocks(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    import os

    from tests.conftest import run_process

    folder = tmp_path / "extracted" / "Takeout" / "Google Photos" / "Photos from 2019"
    folder.mkdir(parents=True)
    (folder / "IMG_1.jpg").write_bytes(jpeg(500))
    (folder / "IMG_1.jpg.json").write_bytes(google_json("IMG_1.jpg", when(2013)))
    os.mkfifo(folder / "IMG_2.jpg.json")  # opened for reading, it would wait for a writer forever
    os.mkfifo(folder / "IMG_3.jpg")
    (folder / "IMG_4.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "IMG_5.jpg.json").symlink_to(tmp_path / "gone.json")
    result = run_process(
        "sync_upload.py", "--env-file", str(server_env.path), "--json", "--takeout", str(tmp_path / "extracted"),
        timeout=60,
    )  # fmt: skip
    assert result.status == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["uploaded"] == 1 and summary["errors"] == 4
    assert created(immich, jpeg(500)) == "2013-01-02T03:04:05.000Z"
    assert "not a regular file" in result.stderr and "broken symlink" in result.stderr


def test_the_same_path_in_two_zips_of_one_name_is_two_photos_also_in_separate_runs(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    path = f"{ROOT}/Photos from 2019/IMG_0001.jpg"
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    first = write_zip(
        mine / "takeout-001.zip", {path: jpeg(600), path + ".json": google_json("IMG_0001.jpg", when(2014))}
    )
    second = write_zip(
        theirs / "takeout-001.zip", {path: jpeg(601), path + ".json": google_json("IMG_0001.jpg", when(2015))}
    )
    assert sync(server_env, first)[0] == 0
    assert sync(server_env, second)[0] == 0
    assert created(immich, jpeg(600)) == "2014-01-02T03:04:05.000Z"
    assert created(immich, jpeg(601)) == "2015-01-02T03:04:05.000Z"
    store = open_store(server_env.settings())
    try:
        rows = {r["filepath"]: r["sha1"] for r in store.rows()}
    finally:
        store.close()
    assert rows == {
        f"takeout-001.zip/{path}": hashlib.sha1(jpeg(600)).hexdigest(),
        f"takeout-001.zip (2)/{path}": hashlib.sha1(jpeg(601)).hexdigest(),
    }
    # Each is the same archive again on a rerun (wherever it was moved), and both together are two.
    moved = tmp_path / "moved"
    moved.mkdir()
    first.rename(moved / first.name)
    status, summary, _ = sync(server_env, moved / first.name, second)
    assert status == 0 and summary["unchanged"] == 2 and summary["new"] == 0
    assert summary["takeout"]["members_read"] == 0  # type: ignore[index]


def copies_export(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """An album folder's copy without a JSON in part 1; the same photo in its year folder, with its JSON, in
    part 2 (downloaded later)."""
    photo = jpeg(700)
    part1 = write_zip(
        tmp_path / "takeout-20241201T100000Z-001.zip",
        {
            f"{ROOT}/Trip to Rome/metadata.json": json.dumps({"title": "Trip to Rome"}).encode(),
            f"{ROOT}/Trip to Rome/IMG_0001.jpg": photo,
            f"{ROOT}/Trip to Rome/IMG_0100.jpg": jpeg(701),
        },
    )
    part2 = write_zip(
        tmp_path / "takeout-20241201T100000Z-002.zip",
        {
            f"{ROOT}/Photos from 2019/IMG_0001.jpg": photo,
            f"{ROOT}/Photos from 2019/IMG_0001.jpg.json": google_json(
                "IMG_0001.jpg", when(2019, 5), favorited=True, description="Colosseum at dawn",
                geoData={"latitude": 41.8902, "longitude": 12.4922, "altitude": 21.0},
            ),
        },
    )  # fmt: skip
    return part1, part2, photo


def test_the_copies_of_one_photo_are_one_upload_with_the_metadata_of_the_copy_that_has_a_json(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    part1, part2, photo = copies_export(tmp_path)
    status, summary, stderr = sync(server_env, part1, part2)
    assert status == 0, stderr
    asset = asset_for(immich, photo)
    assert (
        asset.fields["fileCreatedAt"] == "2019-05-02T03:04:05.000Z" and asset.fields["isFavorite"] == "true"
    )
    assert asset.exif["description"] == "Colosseum at dawn" and round(asset.exif["latitude"], 4) == 41.8902
    assert sum(1 for u in immich.uploads if u.sha1_hex == asset.sha1_hex) == 1
    (album,) = immich.albums.values()
    assert album.albumName == "Trip to Rome" and sorted(album.asset_ids) == sorted(
        [asset.id, asset_for(immich, jpeg(701)).id]
    )
    assert summary["takeout"]["matched"] == {"name": 1, "copy": 1, "none": 1}  # type: ignore[index]


def test_a_copy_whose_json_arrives_in_a_later_run_updates_the_photo_already_sent(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    part1, part2, photo = copies_export(tmp_path)
    assert sync(server_env, part1)[0] == 0
    asset = asset_for(immich, photo)
    assert asset.fields["fileCreatedAt"].startswith("2024-12-01")  # the zip's date: nothing better then
    status, summary, _ = sync(server_env, part1, part2)
    assert status == 0 and summary["uploaded"] == 0
    assert (
        asset.exif["dateTimeOriginal"] == "2019-05-02T03:04:05.000Z" and asset.fields["isFavorite"] == "true"
    )
    assert asset.exif["description"] == "Colosseum at dawn" and round(asset.exif["latitude"], 4) == 41.8902
    assert summary["takeout"]["updated_in_immich"] == 1  # type: ignore[index]
    assert len(immich.updates) == 1
    status, summary, _ = sync(server_env, part1, part2)
    assert status == 0 and len(immich.updates) == 1 and summary["takeout"]["members_read"] == 0  # type: ignore[index]


def late_json_export(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """PART1.jpg in part 1; its JSON in part 3, downloaded the next day."""
    photo = jpeg(800)
    y = f"{ROOT}/Photos from 2015"
    part1 = write_zip(tmp_path / "takeout-20241201T100000Z-001.zip", {f"{y}/PART1.jpg": photo})
    part3 = write_zip(
        tmp_path / "takeout-20241201T100000Z-003.zip",
        {
            f"{y}/PART1.jpg.supplemental-metadata.json": google_json(
                "PART1.jpg", when(2015, 7), favorited=True, archived=True, description="From Google",
                geoData={"latitude": -33.8568, "longitude": 151.2153, "altitude": 5.0},
            )
        },
    )  # fmt: skip
    return part1, part3, photo


def test_a_json_in_a_later_part_is_applied_to_the_photo_in_immich_without_undoing_the_users_changes(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    part1, part3, photo = late_json_export(tmp_path)
    assert sync(server_env, part1)[0] == 0
    asset = asset_for(immich, photo)
    assert asset.fields["isFavorite"] == "false" and asset.exif["latitude"] is None
    immich.edit_as_user(asset, description="my own words")  # the user wrote a description in Immich meanwhile
    status, summary, stderr = sync(server_env, part1, part3)
    assert status == 0, stderr
    assert summary["uploaded"] == 0 and summary["takeout"]["updated_in_immich"] == 1  # type: ignore[index]
    assert asset.fields["isFavorite"] == "true" and asset.fields["visibility"] == "archive"
    assert asset.exif["dateTimeOriginal"] == "2015-07-02T03:04:05.000Z"
    assert (round(asset.exif["latitude"], 4), round(asset.exif["longitude"], 4)) == (-33.8568, 151.2153)
    assert asset.exif["description"] == "my own words"
    assert summary["takeout"]["kept_as_changed_in_immich"] == 1  # type: ignore[index]
    assert summary["takeout"]["matched"] == {"name": 1}  # type: ignore[index]
    ((ids, fields),) = immich.updates
    assert ids == [asset.id] and "description" not in fields
    # The next run has nothing to do: nothing read, nothing changed.
    status, summary, _ = sync(server_env, part1, part3)
    assert status == 0 and len(immich.updates) == 1
    assert summary["takeout"]["members_read"] == 0  # type: ignore[index]


def queued_updates(env: Env) -> int:
    store = open_store(env.settings())
    store.scope = "t:takeout"
    try:
        return store.takeout_update_count()
    finally:
        store.close()


def test_a_run_killed_around_the_update_in_immich_sends_it_once_and_never_undoes_the_user(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from db_manager import Store
    from immich_client import ImmichClient

    part1, part3, photo = late_json_export(tmp_path)
    assert sync(server_env, part1)[0] == 0
    asset = asset_for(immich, photo)

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies here

    def run_killed_at(cls: type, name: str) -> None:
        with monkeypatch.context() as patch:
            patch.setattr(cls, name, killed)
            result = run_inprocess(
                sync_upload.main, "--env-file", str(server_env.path), "--takeout", str(part1), str(part3)
            )
        assert result.status == 130

    # Killed after deciding, before the update reached Immich: the next run sends it.
    run_killed_at(ImmichClient, "update_assets")
    assert immich.updates == []
    # Killed after the update reached Immich, before it was recorded; the user un-favorites it meanwhile.
    assert queued_updates(server_env) == 1
    run_killed_at(Store, "takeout_update_done")
    assert len(immich.updates) == 1 and asset.fields["isFavorite"] == "true"
    immich.edit_as_user(asset, {"isFavorite": "false"})
    status, _summary, _ = sync(server_env, part1, part3)
    assert status == 0 and len(immich.updates) == 1  # found done: recorded, not sent again
    assert asset.fields["isFavorite"] == "false"  # the user's change stays
    assert queued_updates(server_env) == 0


def test_a_dry_run_says_what_the_import_will_do_and_the_real_run_after_it_says_how_each_json_was_found(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    part1, part2, _photo = copies_export(tmp_path)
    dry = run_inprocess(
        sync_upload.main, "--env-file", str(server_env.path), "--dry-run", "--takeout", str(part1), str(part2)
    )
    assert dry.status == 0, dry.stderr
    would = [line for line in dry.stdout.splitlines() if line.startswith("would upload")]
    assert len(would) == 2 and "would record as a copy" in dry.stdout
    assert "a copy of a photo whose JSON lies in another folder" in dry.stderr
    status, summary, stderr = sync(server_env, part1, part2)
    assert status == 0 and summary["uploaded"] == len(would)
    assert summary["takeout"]["matched"] == {"name": 1, "copy": 1, "none": 1}  # type: ignore[index]
    assert summary["takeout"]["unmatched"] == [f"{part1.name}/{ROOT}/Trip to Rome/IMG_0100.jpg"]  # type: ignore[index]
    assert "by name" in stderr and "no JSON found" in stderr and "IMG_0100.jpg" in stderr


def test_a_folder_argument_takes_the_takeout_parts_in_it_and_says_which_zips_it_passed_over(
    server_env: Env, immich: ImmichTestServer, takeout: tuple[Path, Path]
) -> None:
    downloads = takeout[0].parent
    write_zip(downloads / "work-scans-confidential.zip", {"scans/contract.jpg": jpeg(900)})
    (downloads / "broken.zip").write_bytes(b"PK not really")
    status, summary, stderr = sync(server_env, downloads)
    assert status == 0, stderr
    assert asset_for(immich, jpeg(900)) is None
    assert summary["uploaded"] == 14  # both parts: all but Google's trash and the album's copy
    passed = summary["takeout"]["passed_over"]  # type: ignore[index]
    assert any("work-scans-confidential.zip" in p for p in passed) and any("broken.zip" in p for p in passed)
    assert "passed over" in stderr and "work-scans-confidential.zip" in stderr
    # A folder with no Takeout at all is one clear line, nothing imported.
    only = downloads.parent / "only-work"
    only.mkdir()
    write_zip(only / "work.zip", {"scans/a.jpg": jpeg(901)})
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--takeout", str(only))
    assert result.status == 2 and "no Google Takeout in" in result.stderr and "work.zip" in result.stderr


def test_an_update_immich_refuses_is_that_photo_s_error_and_is_tried_again_next_run(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    part1, part3, photo = late_json_export(tmp_path)
    assert sync(server_env, part1)[0] == 0
    immich.faults.add(status=400, method="PUT", path="/api/assets")
    status, summary, stderr = sync(server_env, part1, part3)
    assert status == 1 and summary["errors"] == 1 and "refused (tried again next run" in stderr
    assert summary["error_files"] == [f"{part1.name}/{ROOT}/Photos from 2015/PART1.jpg"]
    assert immich.updates == [] and queued_updates(server_env) == 1
    status, summary, _ = sync(server_env, part1, part3)
    assert status == 0 and len(immich.updates) == 1 and queued_updates(server_env) == 0
    assert asset_for(immich, photo).fields["isFavorite"] == "true"


def test_a_part_cut_short_in_its_download_is_an_error_and_the_other_parts_are_imported(
    server_env: Env, immich: ImmichTestServer, takeout: tuple[Path, Path]
) -> None:
    first, second = takeout
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])  # the browser stopped half way
    status, summary, stderr = sync(server_env, first, second)
    assert status == 1 and summary["errors"] == 1 and summary["uploaded"] == 13
    assert summary["error_files"] == [str(second)] and "cannot be read" in stderr
    status, summary, stderr = sync(server_env, first.parent)  # the folder: the same
    assert status == 1 and summary["errors"] == 1 and summary["uploaded"] == 0
    second.write_bytes(b"")
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--takeout", str(second))
    assert result.status == 2 and "no part can be read" in result.stderr


def test_a_takeouts_archived_photos_go_through_visibility_which_the_setting_overrides(
    server_env: Env, immich: ImmichTestServer, takeout: tuple[Path, Path]
) -> None:
    """Google's archive state is sent as `visibility` (archive); --visibility sets it for every upload, Google's
    archived ones included."""
    y20 = f"{ROOT}/Photos from 2020"
    status, _, stderr = sync(server_env, *takeout, extra=("--visibility", "timeline"))
    assert status == 0, stderr
    (record,) = [
        u for u in immich.uploads if u.sha1_hex == hashlib.sha1(part_one()[f"{y20}/IMG_0009.jpg"]).hexdigest()
    ]
    assert record.fields["visibility"] == "timeline"
    assert {u.fields.get("visibility") for u in immich.uploads if u.status == 201} == {"timeline", None}


# --- links made by another user ----------------------------------------------------------------------


def other_users_file(path: Path, data: bytes, uid: int = 1000) -> Path:
    """A file of another user, in a folder only that user can open (as /home/victim is)."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, uid, uid)
    os.chmod(path, 0o600)
    os.chown(path.parent, uid, uid)
    os.chmod(path.parent, 0o700)
    return path


def link_by(link: Path, target: Path, uid: int = 4242) -> Path:
    """A symbolic link made by the user `uid` (anyone who may write to the Takeout's folder)."""
    import os

    link.symlink_to(target)
    os.lchown(link, uid, uid)
    return link


def need_root() -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("making files of other users needs root")


def test_a_link_in_an_extracted_takeout_to_another_users_file_is_that_members_error(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    need_root()
    import os

    folder = tmp_path / "tk" / "Takeout" / "Google Photos" / "Photos from 2020"
    folder.mkdir(parents=True)
    (folder / "IMG_1.jpg").write_bytes(jpeg(801))
    secret = other_users_file(tmp_path / "victim" / "secret.jpg", jpeg(802))
    link_by(folder / "IMG_2.jpg", secret)  # refused: another user's file, outside the folder named
    diary = other_users_file(
        tmp_path / "victim2" / "diary.json", google_json("IMG_1.jpg", when(2011), description="private")
    )
    link_by(folder / "IMG_1.jpg.json", diary)  # refused too: nothing of it reaches Immich
    inside = tmp_path / "tk" / ".kept" / "three.jpg"  # inside the folder named (not listed itself): followed
    inside.parent.mkdir()
    inside.write_bytes(jpeg(803))
    link_by(folder / "IMG_3.jpg", inside)
    own = tmp_path / "linker" / "four.jpg"  # the link's owner's own file: followed
    own.parent.mkdir()
    own.write_bytes(jpeg(804))
    os.chown(own, 4242, 4242)
    link_by(folder / "IMG_4.jpg", own)
    dry = run_inprocess(
        sync_upload.main,
        "--env-file",
        str(server_env.path),
        "--dry-run",
        "--json",
        "--takeout",
        str(tmp_path / "tk"),
    )
    said = json.loads(dry.stdout)
    assert dry.status == 1 and said["errors"] == 2 and said["would_upload"] == 3 and said["found"] == 4
    status, summary, stderr = sync(server_env, tmp_path / "tk")
    assert status == 1 and summary["uploaded"] == 3 and summary["errors"] == 2
    assert asset_for(immich, jpeg(802)) is None and asset_for(immich, jpeg(801)) is not None
    assert all(asset_for(immich, jpeg(n)) is not None for n in (803, 804))
    assert not any("private" in str(a.fields) for a in immich.assets.values())
    assert f"tk/{ROOT}/Photos from 2020/IMG_2.jpg" in summary["error_files"]
    assert "symbolic link IMG_2.jpg leads to" in stderr and "not followed" in stderr


def test_a_link_pointed_at_another_users_file_after_the_listing_is_not_read(tmp_path: Path) -> None:
    need_root()
    import os

    from takeout import Archive, MemberError

    folder = tmp_path / "tk" / "Takeout" / "Google Photos" / "Photos from 2020"
    folder.mkdir(parents=True)
    own = tmp_path / "linker" / "one.jpg"
    own.parent.mkdir()
    own.write_bytes(jpeg(811))
    os.chown(own, 4242, 4242)
    link = link_by(folder / "IMG_1.jpg", own)
    archive = Archive(tmp_path / "tk")
    (member,) = [m for m in archive.members() if m.name == "IMG_1.jpg"]
    assert member.problem == ""  # its owner's own file: taken
    secret = other_users_file(tmp_path / "victim" / "secret.jpg", jpeg(812))
    link.unlink()
    link_by(link, secret)  # its owner points it elsewhere before it is read
    with pytest.raises(MemberError, match="not followed"):
        archive.open(member.stored)
    archive.close()


def test_a_zip_that_is_a_link_to_another_users_zip_is_not_read(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    need_root()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    theirs = tmp_path / "victim" / "takeout-20240101T000000Z-001.zip"
    theirs.parent.mkdir()
    write_zip(theirs, {f"{ROOT}/Photos from 2019/THEIRS.jpg": jpeg(821)})
    other_users_file(theirs, theirs.read_bytes())
    link_by(downloads / "takeout-20241201T100000Z-001.zip", theirs)
    write_zip(
        downloads / "takeout-20241201T100000Z-002.zip", {f"{ROOT}/Photos from 2021/MINE.jpg": jpeg(822)}
    )
    status, summary, stderr = sync(server_env, downloads)
    assert status == 1 and summary["uploaded"] == 1 and summary["errors"] == 1
    assert asset_for(immich, jpeg(821)) is None and asset_for(immich, jpeg(822)) is not None
    assert "takeout-20241201T100000Z-001.zip" in stderr and "not followed" in stderr
    # Named on its own, it is not read either: one line, exit 2.
    result = run_inprocess(
        sync_upload.main,
        "--env-file",
        str(server_env.path),
        "--takeout",
        str(downloads / "takeout-20241201T100000Z-001.zip"),
    )
    assert result.status == 2 and "not followed" in result.stderr and asset_for(immich, jpeg(821)) is None


def test_a_takeout_folder_named_through_another_users_link_to_someone_elses_folder_is_not_read(
    server_env: Env, immich: ImmichTestServer, tmp_path: Path
) -> None:
    need_root()
    import os

    theirs = tmp_path / "victim" / "tk"
    photo = theirs / ROOT / "Photos from 2019" / "THEIRS.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(jpeg(831))
    for path in (photo, *photo.parents):
        os.chown(path, 1000, 1000)
        if path == theirs:
            break
    share = tmp_path / "share"
    share.mkdir()
    link_by(share / "tk", theirs)  # the folder the nightly job names, swapped for a link by another user
    result = run_inprocess(
        sync_upload.main, "--env-file", str(server_env.path), "--takeout", str(share / "tk")
    )
    assert result.status == 2 and "not followed" in result.stderr
    assert asset_for(immich, jpeg(831)) is None
    mine = tmp_path / "mine"  # a link of its owner to its own folder is followed
    mine.mkdir()
    (mine / ROOT / "Photos from 2020").mkdir(parents=True)
    (mine / ROOT / "Photos from 2020" / "MINE.jpg").write_bytes(jpeg(832))
    (share / "mine").symlink_to(mine)
    status, summary, _ = sync(server_env, share / "mine")
    assert status == 0 and summary["uploaded"] == 1 and asset_for(immich, jpeg(832)) is not None
