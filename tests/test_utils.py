"""utils.py: fingerprints, metadata from real files written here, path encoding and formatting."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import mmap
import os
import random
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

import utils
from tests import media_corpus
from utils import (
    FileChangedError,
    Fingerprint,
    MediaMetadata,
    date_from_filename,
    fingerprint_file,
    format_bytes,
    format_duration,
    path_to_text,
    read_image_metadata,
    read_metadata,
    read_video_metadata,
    text_to_path,
    to_utc_iso,
)

# --- builders ---------------------------------------------------------------------------------------------


def write_jpeg(
    path: Path,
    *,
    taken: str | None = "2024:05:04 10:15:00",
    offset: str | None = "+02:00",
    size: tuple[int, int] = (64, 48),
    gps: bool = True,
) -> Path:
    """A JPEG whose EXIF holds every field read_image_metadata extracts, as a camera writes them (GPS: in
    Sydney, whose time zone a date without offset is then read in)."""
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS R5"  # Model
    exif[0x0112] = 6  # Orientation: rotate 90° CW
    exif[0x0131] = "Firmware 1.8.1"  # Software
    ifd = exif.get_ifd(0x8769)  # Exif IFD
    if taken:
        ifd[0x9003] = taken  # DateTimeOriginal
    if offset:
        ifd[0x9011] = offset  # OffsetTimeOriginal
    ifd[0x829D] = IFDRational(28, 10)  # FNumber
    ifd[0x829A] = IFDRational(1, 125)  # ExposureTime
    ifd[0x8827] = 400  # ISOSpeedRatings
    ifd[0x920A] = IFDRational(50, 1)  # FocalLength
    ifd[0xA434] = "RF50mm F1.8 STM"  # LensModel
    if gps:
        place = exif.get_ifd(0x8825)  # GPS IFD: Sydney Opera House, 12.5 m below sea level
        place[1] = "S"
        place[2] = (IFDRational(33), IFDRational(51), IFDRational(5436, 100))
        place[3] = "E"
        place[4] = (IFDRational(151), IFDRational(12), IFDRational(54, 10))
        place[5] = b"\x01"
        place[6] = IFDRational(125, 10)
    Image.new("RGB", size, (200, 30, 30)).save(path, "JPEG", exif=exif)
    return path


def mp4_box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


MAC_EPOCH = datetime(1904, 1, 1, tzinfo=timezone.utc)
IDENTITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def write_mp4(path: Path, created: datetime | None, seconds: float = 12.5) -> Path:
    """A minimal MP4: ftyp, and moov holding mvhd (creation time, timescale, duration) and a track's tkhd
    (1920x1080). `created` None writes creation_time 0, i.e. 1904-01-01, as cameras without a clock do."""
    stamp = int((created - MAC_EPOCH).total_seconds()) if created else 0
    timescale, duration = 1000, round(seconds * 1000)
    mvhd = (
        struct.pack(">B3xIIII", 0, stamp, stamp, timescale, duration)
        + struct.pack(">IH10x", 0x00010000, 0x0100)  # rate 1.0, volume 1.0
        + IDENTITY_MATRIX
        + bytes(24)  # pre_defined
        + struct.pack(">I", 2)  # next_track_ID
    )
    tkhd = (
        struct.pack(">B3xIIIIIQhhH2x", 0, stamp, stamp, 1, 0, duration, 0, 0, 0, 0)
        + IDENTITY_MATRIX
        + struct.pack(">II", 1920 << 16, 1080 << 16)
    )
    ftyp = mp4_box(b"ftyp", b"isom" + struct.pack(">I", 512) + b"isomiso2mp41")
    moov = mp4_box(b"moov", mp4_box(b"mvhd", mvhd) + mp4_box(b"trak", mp4_box(b"tkhd", tkhd)))
    path.write_bytes(ftyp + moov + mp4_box(b"mdat", b""))
    return path


# --- images -----------------------------------------------------------------------------------------------


def test_jpeg_exif_fields_all_come_back(tmp_path: Path) -> None:
    meta = read_image_metadata(write_jpeg(tmp_path / "a.jpg"))

    assert meta.warnings == []
    assert meta.date_source == "exif"
    assert meta.date_taken == datetime(2024, 5, 4, 10, 15, tzinfo=timezone(timedelta(hours=2)))
    info = meta.info
    assert info.pop("gps_latitude") == pytest.approx(-(33 + 51 / 60 + 54.36 / 3600), abs=1e-6)
    assert info.pop("gps_longitude") == pytest.approx(151 + 12 / 60 + 5.4 / 3600, abs=1e-6)
    assert info == {
        "camera_make": "Canon",
        "camera_model": "EOS R5",
        "lens_model": "RF50mm F1.8 STM",
        "software": "Firmware 1.8.1",
        "f_number": 2.8,
        "exposure_time": "1/125",
        "exposure_time_s": 0.008,
        "iso": 400,
        "focal_length_mm": 50.0,
        "gps_altitude": -12.5,
        "width": 64,
        "height": 48,
        "orientation": 6,
        "date_taken": "2024-05-04T10:15:00+02:00",
        "offset_time": "+02:00",
        "format": "JPEG",
        "mime": "image/jpeg",
    }


def test_an_exif_reader_none_of_whose_tags_is_there_finds_nothing() -> None:
    """_apply_exif skips a reader whose tags are all absent: that must lose nothing. Every other tag the
    readers know is given a value each reader would take (a number that is also text)."""
    from fractions import Fraction

    known = {f"{prefix} {name}" for prefix, names in utils._TIFF_WANTED.items() for name in names.values()}
    known |= {f"XMP {name}" for _, name in utils._XMP_WANTED}
    known |= {"MakerNote TimeZone", "MakerNote DaylightSavings", "MakerNote ContentIdentifier"}
    for key, read, reads in utils._EXIF_FIELDS:
        if not reads:
            continue
        assert reads <= known, key
        others = {name: [Fraction(3)] for name in known - reads}
        found = {name: value for name, value in read(others).items() if value is not None}
        assert found == {}, f"the {key} reader reads a tag it does not list: {found}"
        everything = {name: [Fraction(3)] for name in known}
        assert any(v is not None for v in read(everything).values()), f"{key}: the values tell nothing"


def test_metadata_info_is_json_serialisable(tmp_path: Path) -> None:
    meta = read_image_metadata(write_jpeg(tmp_path / "a.jpg"))
    assert json.loads(json.dumps(meta.info)) == meta.info


def test_exif_date_without_offset_or_place_is_naive(tmp_path: Path) -> None:
    meta = read_image_metadata(write_jpeg(tmp_path / "a.jpg", offset=None, gps=False))
    assert meta.date_taken == datetime(2024, 5, 4, 10, 15)
    assert meta.info["date_taken"] == "2024-05-04T10:15:00"
    assert "offset_time" not in meta.info


def test_exif_date_with_trailing_garbage_still_parses(tmp_path: Path) -> None:
    meta = read_image_metadata(
        write_jpeg(tmp_path / "a.jpg", taken="2024:05:04 10:15:00 junk", offset=None, gps=False)
    )
    assert meta.date_taken == datetime(2024, 5, 4, 10, 15)


@pytest.mark.parametrize("blank", ["0000:00:00 00:00:00", "    :  :     :  :  "])
def test_blank_exif_date_is_ignored(tmp_path: Path, blank: str) -> None:
    meta = read_image_metadata(write_jpeg(tmp_path / "a.jpg", taken=blank))
    assert (meta.date_taken, meta.date_source) == (None, "none")
    assert "date_taken" not in meta.info
    assert meta.info["camera_make"] == "Canon"


def test_png_without_exif_gives_size_and_no_warnings(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (30, 20)).save(path)
    meta = read_image_metadata(path)
    assert meta == MediaMetadata(
        None, "none", {"width": 30, "height": 20, "format": "PNG", "mime": "image/png"}
    )


def test_corrupt_exif_block_gives_a_warning_not_an_exception(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "a.jpg")
    data = bytearray(path.read_bytes())
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff : tiff + 200] = b"\xff" * 200  # byte order, IFD offset and entries all garbage
    path.write_bytes(data)

    meta = read_image_metadata(path)

    assert meta.warnings == ["EXIF block present but unreadable (corrupt)"]
    assert (meta.info["width"], meta.info["height"]) == (64, 48)
    assert meta.date_taken is None


def test_damaged_exif_entries_keep_what_is_readable(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "a.jpg")
    data = bytearray(path.read_bytes())
    tiff = data.index(b"Exif\x00\x00") + 6
    data[tiff + 10 : tiff + 60] = b"\xff" * 50  # the first IFD0 entries (Make, Model, Orientation...)
    path.write_bytes(data)

    meta = read_image_metadata(path)

    assert "camera_make" not in meta.info
    assert meta.info["width"] == 64
    assert meta.info["gps_altitude"] == -12.5


def test_truncated_jpeg_still_gives_header_and_exif(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "a.jpg", size=(600, 400))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    meta = read_image_metadata(path)
    assert (meta.info["width"], meta.info["height"]) == (600, 400)
    assert meta.date_source == "exif"


def test_jpeg_cut_inside_its_header_gives_a_warning(tmp_path: Path) -> None:
    path = write_jpeg(tmp_path / "a.jpg")
    path.write_bytes(path.read_bytes()[:40])
    meta = read_image_metadata(path)
    assert meta.warnings
    assert "width" not in meta.info


def test_zero_byte_files_give_an_empty_file_warning(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").touch()
    (tmp_path / "a.mp4").touch()
    assert read_image_metadata(tmp_path / "a.jpg").warnings == ["empty file"]
    assert read_video_metadata(tmp_path / "a.mp4").warnings == ["empty file"]


def test_random_bytes_named_jpg_give_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(random.Random(1234).randbytes(4096))  # fixed bytes: no format may match by chance
    meta = read_image_metadata(path)
    assert meta.warnings == ["not an image format Pillow recognises"]
    assert (meta.date_taken, meta.info) == (None, {})


def test_missing_file_becomes_a_warning(tmp_path: Path) -> None:
    assert read_image_metadata(tmp_path / "gone.jpg").warnings == [
        "cannot read the file: No such file or directory"
    ]
    assert read_video_metadata(tmp_path / "gone.mp4").warnings == [
        "cannot read the file: No such file or directory"
    ]


def test_heic_extension_takes_size_from_exif_without_warning(tmp_path: Path) -> None:
    """Pillow cannot open HEIC; ExifRead's width/height are used, and that is not a problem to report."""
    source = Image.new("RGB", (8, 8))
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({0xA002: 4032, 0xA003: 3024, 0x9003: "2023:01:02 03:04:05"})
    path = tmp_path / "IMG_0001.HEIC"
    source.save(path, "JPEG", exif=exif)  # ExifRead goes by content, so a JPEG body stands in
    meta = read_image_metadata(path)
    assert meta.warnings == []
    assert (meta.info["width"], meta.info["height"]) == (4032, 3024)
    assert "format" not in meta.info


def test_huge_image_size_is_read_despite_decompression_bomb_check(tmp_path: Path) -> None:
    path = tmp_path / "panorama.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", 40000, 30000)  # 1.2 Gpixel
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(data[ihdr : ihdr + 17]))
    path.write_bytes(data)
    meta = read_image_metadata(path)
    assert meta.warnings == []
    assert (meta.info["width"], meta.info["height"]) == (40000, 30000)


def test_bytes_path_with_non_utf8_name_is_read(tmp_path: Path) -> None:
    path = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.jpg")
    write_jpeg(Path(os.fsdecode(path)))
    assert read_image_metadata(path).info["camera_model"] == "EOS R5"


def test_exifread_warnings_do_not_reach_the_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "a.png"  # ExifRead warns "PNG file does not have exif data"
    Image.new("RGB", (4, 4)).save(path)
    with caplog.at_level(logging.INFO):
        read_image_metadata(path)
    assert not [r for r in caplog.records if r.name.startswith("exifread")]


# --- videos -----------------------------------------------------------------------------------------------


def test_mp4_creation_time_is_utc_and_duration_is_read(tmp_path: Path) -> None:
    created = datetime(2023, 7, 14, 18, 30, 5, tzinfo=timezone.utc)
    meta = read_video_metadata(write_mp4(tmp_path / "a.mp4", created))
    assert meta.warnings == []
    assert meta.date_source == "video"
    assert meta.date_taken == created
    assert meta.date_taken.utcoffset() == timedelta(0)
    assert meta.info == {
        "format": "mov",
        "date_taken": "2023-07-14T18:30:05+00:00",
        "duration_s": 12.5,
        "width": 1920,
        "height": 1080,
        "mime": "video/mp4",
    }


def test_mp4_zero_creation_time_is_ignored(tmp_path: Path) -> None:
    meta = read_video_metadata(write_mp4(tmp_path / "a.mp4", None))
    assert (meta.date_taken, meta.date_source) == (None, "none")
    assert meta.info["duration_s"] == 12.5


def test_non_video_named_mp4_gives_a_warning_and_prints_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.mp4"
    text.write_text("shopping list\n" * 100)
    image = write_jpeg(tmp_path / "photo.mp4")
    assert read_video_metadata(text).warnings
    assert read_video_metadata(image).warnings == ["not a video: the content looks like jpeg"]
    assert capsys.readouterr() == ("", "")


def test_read_metadata_dispatches_on_kind(tmp_path: Path) -> None:
    video = write_mp4(tmp_path / "a.mp4", datetime(2023, 1, 1, tzinfo=timezone.utc))
    image = write_jpeg(tmp_path / "a.jpg")
    assert read_metadata(video, "video").date_source == "video"
    assert read_metadata(image, "image").date_source == "exif"
    with pytest.raises(ValueError):
        read_metadata(image, "audio")


# --- fingerprints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, 4096),
        (100, 4096),
        (1 << 20, 4096),
        ((1 << 20) + 123, 4096),
        (5000, utils.DEFAULT_HASH_CHUNK_BYTES),
    ],
)
def test_fingerprint_matches_hashlib(tmp_path: Path, size: int, chunk_size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert fingerprint_file(str(path), chunk_size) == Fingerprint(
        hashlib.sha256(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        size,
        path.stat().st_mtime_ns,
        identity=utils.file_identity(path.stat()),
    )


def _address(buffer: memoryview) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(buffer))


def test_files_are_read_into_a_page_aligned_buffer_reused_by_its_thread() -> None:
    """The kernel copies a file into a buffer 8 to 24 bytes into a cache line five times slower (AMD EPYC),
    and a bytearray's bytes start 16 bytes into one: reads go into page-aligned memory, one buffer a thread
    (a new one per file costs its zeroing and page faults), grown when a larger read asks."""
    seen: dict[str, memoryview] = {}

    def reads() -> None:  # on a thread of its own: no earlier read left it a buffer
        seen["first"] = utils.read_buffer(400_000)
        seen["first"][:4] = b"kept"
        seen["again"] = utils.read_buffer(1000)
        seen["grown"] = utils.read_buffer(3 << 20)
        seen["large"] = utils.read_buffer(utils.READ_BUFFER_KEPT_BYTES + 1)  # a HASH_CHUNK_SIZE set high
        seen["after"] = utils.read_buffer(1000)

    thread = threading.Thread(target=reads)
    thread.start()
    thread.join()
    first, again, grown = seen["first"], seen["again"], seen["grown"]
    assert len(first) == 400_000 and _address(first) % mmap.PAGESIZE == 0
    assert len(again) == 1000 and _address(again) == _address(first)
    assert len(grown) == 3 << 20 and _address(grown) % mmap.PAGESIZE == 0
    assert bytes(first[:4]) == b"kept"  # the smaller one it replaced is still there, as it was
    large = seen["large"]
    assert _address(large) % mmap.PAGESIZE == 0 and _address(seen["after"]) == _address(grown)  # not kept
    assert _address(utils.read_buffer(1000)) not in {_address(first), _address(grown)}  # this thread's own


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_workers_read_buffer_is_its_own() -> None:
    """The hashing workers are forked from the scan: what one reads into its buffer never shows in another's."""
    buffer = utils.read_buffer(4096)
    buffer[:5] = b"scan!"
    pid = os.fork()
    if pid == 0:  # the child writes into the buffer it inherited, and ends
        utils.read_buffer(4096)[:5] = b"child"
        os._exit(0)
    os.waitpid(pid, 0)
    assert bytes(utils.read_buffer(4096)[:5]) == b"scan!"


class ShortReadsOs:
    """utils' view of the os module on a file system that hands out at most 100 bytes a read (some network
    file systems do): a short read is no end of file."""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def read(self, fd: int, n: int) -> bytes:
        return os.read(fd, min(n, 100))

    def readv(self, fd: int, buffers: list[memoryview]) -> int:
        return os.readv(fd, [buffers[0][:100]])


@pytest.mark.parametrize("size", [1000, 10000], ids=["small", "chunked"])
def test_fingerprint_reads_on_after_short_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    monkeypatch.setattr(utils, "os", ShortReadsOs())
    fingerprint = fingerprint_file(str(path), 4096, keep_head=True)
    assert (fingerprint.sha256, fingerprint.size_bytes) == (hashlib.sha256(data).hexdigest(), size)
    assert fingerprint.head == data[:100] if size > 4096 else fingerprint.head == data


def test_fingerprint_accepts_a_non_utf8_bytes_path(tmp_path: Path) -> None:
    path = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.jpg")
    with open(path, "wb") as f:
        f.write(b"photo")
    assert fingerprint_file(path).sha1 == hashlib.sha1(b"photo").hexdigest()


def test_fingerprint_of_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fingerprint_file(tmp_path / "gone.jpg")


class ChangingOs:
    """utils' view of the os module, where another program changes the file right after the first read of
    each hash pass (`changes`: one per pass, "append" or "touch", "" for none)."""

    def __init__(self, path: str, changes: list[str]) -> None:
        self._path, self._changes = path, changes
        self.passes = 0
        self._change = ""

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def open(self, path: str, flags: int) -> int:
        self.passes += 1
        self._change = self._changes.pop() if self._changes else ""
        return os.open(path, flags)

    def read(self, fd: int, n: int) -> bytes:
        data = os.read(fd, n)
        self._after_read()
        return data

    def readv(self, fd: int, buffers: list[memoryview]) -> int:
        n = os.readv(fd, buffers)
        self._after_read()
        return n

    def _after_read(self) -> None:
        if self._change == "append":
            with open(self._path, "ab") as writer:
                writer.write(b"more")
        elif self._change == "touch":  # same size, new mtime: an in-place edit
            st = os.stat(self._path)
            os.utime(self._path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        self._change = ""


def change_during_reads(monkeypatch: pytest.MonkeyPatch, path: Path, change: str, times: int) -> ChangingOs:
    """The next `times` hash passes see the file change (`change` is "append" or "touch") under them."""
    changing = ChangingOs(str(path), [change] * times)
    monkeypatch.setattr(utils, "os", changing)
    return changing


# A file smaller than a hash chunk is read whole at once, a larger one chunk by chunk: both are covered.
SIZES = pytest.mark.parametrize("size", [1000, 10000], ids=["small", "chunked"])


@SIZES
@pytest.mark.parametrize("change", ["append", "touch"])
def test_fingerprint_reads_again_when_the_file_changes_during_the_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, size: int
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * size)
    changing = change_during_reads(monkeypatch, path, change, times=1)
    fingerprint = fingerprint_file(str(path), 4096)
    assert changing.passes == 2
    data = path.read_bytes()
    assert fingerprint.sha256 == hashlib.sha256(data).hexdigest()  # the content after the change
    assert (fingerprint.size_bytes, fingerprint.mtime_ns) == (len(data), path.stat().st_mtime_ns)


@SIZES
@pytest.mark.parametrize("change", ["append", "touch"])
def test_fingerprint_raises_file_changed_when_it_changes_on_both_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, size: int
) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * size)
    change_during_reads(monkeypatch, path, change, times=2)
    with pytest.raises(FileChangedError, match="file changed while being read") as caught:
        fingerprint_file(str(path), 4096)
    assert isinstance(caught.value, OSError)


# --- paths ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"/photos/2024/IMG_0001.JPG", "/photos/Ürlaub/café 📷.jpg".encode()])
def test_utf8_path_is_stored_as_text_alone(raw: bytes) -> None:
    text, b64 = path_to_text(raw)
    assert (text, b64) == (raw.decode(), None)
    assert text_to_path(text, b64) == raw


@pytest.mark.parametrize("raw", [b"/photos/\xff\xfe.jpg", b"/photos/caf\xe9.jpg"])
def test_non_utf8_path_keeps_a_readable_name_and_its_exact_bytes(raw: bytes) -> None:
    text, b64 = path_to_text(raw)
    assert text.startswith("/photos/") and "\ufffd" in text
    assert b64 is not None
    assert text_to_path(text, b64) == raw


# --- formatting -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (1024, "1 KiB"),
        (12.3 * 1024**2, "12.3 MiB"),
        (1.02 * 1024**3, "1.02 GiB"),
        (512 * 1024**3, "512 GiB"),
        (3 * 1024**4, "3 TiB"),
    ],
)
def test_format_bytes_uses_binary_units(n: float, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, "0.0s"),
        (0.4, "0.4s"),
        (9.96, "10s"),
        (12.2, "12s"),
        (185, "3m05s"),
        (3599.7, "1h00m"),
        (3720, "1h02m"),
    ],
)
def test_format_duration_picks_the_unit(seconds: float, expected: str) -> None:
    assert format_duration(seconds) == expected


def test_to_utc_iso_converts_an_aware_time() -> None:
    moment = datetime(2024, 5, 4, 10, 15, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert to_utc_iso(moment) == "2024-05-04T08:15:00.123Z"


@pytest.fixture
def berlin_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not hasattr(time, "tzset"):
        pytest.skip("time.tzset is POSIX only")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_to_utc_iso_reads_a_naive_time_as_local_time(berlin_time: None) -> None:
    assert to_utc_iso(datetime(2024, 7, 1, 12, 0)) == "2024-07-01T10:00:00.000Z"  # CEST, UTC+2
    assert to_utc_iso(datetime(2024, 1, 1, 12, 0)) == "2024-01-01T11:00:00.000Z"  # CET, UTC+1


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IMG_20190504_101500.jpg", datetime(2019, 5, 4, 10, 15, 0)),
        ("VID_20190504_101500.mp4", datetime(2019, 5, 4, 10, 15, 0)),
        ("PXL_20190504_101500123.jpg", datetime(2019, 5, 4, 10, 15, 0)),
        ("Screenshot_20190504-101500.png", datetime(2019, 5, 4, 10, 15, 0)),
        ("Screenshot_2019-05-04-10-15-00.png", datetime(2019, 5, 4, 10, 15, 0)),
        ("2019-05-04 10.15.00.jpg", datetime(2019, 5, 4, 10, 15, 0)),
        ("IMG-20190504-WA0001.jpg", datetime(2019, 5, 4)),
        ("IMG_0001.jpg", None),
        ("DSC_1234.JPG", None),
        ("20190230_101500.jpg", None),
        ("photo_123456789.jpg", None),
    ],
)
def test_date_from_filename_reads_phone_and_camera_names(name: str, expected: datetime | None) -> None:
    assert date_from_filename(name) == expected


# --- the JPEG fast path gives exactly what the general path gives (issue 13) ------------------------------


def jpeg_variants(tmp_path: Path) -> list[Path]:
    """JPEGs as cameras and editors write them: full EXIF, none, progressive, an XMP segment before the EXIF,
    an embedded thumbnail, odd sizes, a damaged block, a cut file, one with fill bytes between markers."""
    paths = [write_jpeg(tmp_path / "full.jpg"), write_jpeg(tmp_path / "big.jpg", size=(1201, 799))]
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (33, 17), (1, 2, 3)).save(plain, "JPEG")
    progressive = tmp_path / "progressive.jpg"
    Image.open(paths[0]).save(progressive, "JPEG", progressive=True, exif=Image.open(paths[0]).info["exif"])
    data = paths[0].read_bytes()
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>"
    with_xmp = tmp_path / "xmp_first.jpg"
    with_xmp.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(xmp) + 2) + xmp + data[2:])
    filled = tmp_path / "fill_bytes.jpg"
    filled.write_bytes(data[:2] + b"\xff\xff\xff" + data[3:])
    thumb = tmp_path / "thumbnail.jpg"
    exif = Image.open(paths[0]).getexif()
    Image.new("RGB", (400, 300), (9, 9, 9)).save(thumb, "JPEG", exif=exif.tobytes())
    corrupt = tmp_path / "corrupt.jpg"
    damaged = bytearray(data)
    damaged[30:60] = b"\xff" * 30
    corrupt.write_bytes(bytes(damaged))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(write_jpeg(tmp_path / "cut-source.jpg", size=(600, 400)).read_bytes()[:3000])
    return [*paths, plain, progressive, with_xmp, filled, thumb, corrupt, cut]


def test_jpeg_fast_path_gives_the_same_fields_as_the_general_path(tmp_path: Path) -> None:
    for path in jpeg_variants(tmp_path):
        fast = read_image_metadata(path)
        general = read_image_metadata(path, fast_jpeg=False)
        if path.name == "fill_bytes.jpg":
            # Fill bytes before a marker are valid JPEG; ExifRead over the whole file misses the EXIF
            # behind them, the marker walk does not: more, never less.
            assert general.info.items() <= fast.info.items() and fast.info["camera_make"] == "Canon"
            continue
        assert fast.info == general.info, path.name
        assert (fast.date_taken, fast.date_source) == (general.date_taken, general.date_source), path.name
        assert bool(fast.warnings) == bool(general.warnings), path.name


class _ShortReads(io.RawIOBase):
    """A stream that returns fewer bytes than asked (as a pipe or a zip member may)."""

    def __init__(self, data: bytes, rng: random.Random) -> None:
        self.data, self.rng = io.BytesIO(data), rng

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        piece = self.data.read(min(len(buffer), self.rng.randint(1, 5000)))
        buffer[: len(piece)] = piece
        return len(piece)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.data.seek(offset, whence)


def test_a_jpeg_header_reads_the_same_from_memory_as_from_its_file(tmp_path: Path) -> None:
    """The header is parsed in place from a photo's first bytes, or read on from the file (a header beyond
    them, a zip member): damaged or not, both give the same. Segments of 64 KB make the reads from the file
    cross its read pieces and skip past them."""
    rng = random.Random(24)
    photo = write_jpeg(tmp_path / "a.jpg").read_bytes()
    padding = b"".join(
        b"\xff" + bytes([marker]) + b"\xff\xff" + bytes(range(256)) * 255 + bytes(253)
        for marker in (0xE2, 0xEC, 0xE2)
    )
    seeds = [photo, photo[:2] + padding + photo[2:]]
    for case in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(0, 4)):
            at = rng.randrange(len(data))
            if rng.random() < 0.5:
                data[at] = rng.choice([0xFF, 0x00, 0xD9, 0xDA, 0xE1, 0xC0, 0xD0, rng.randrange(256)])
            else:
                del data[at : at + rng.randint(1, 40)]
        if rng.random() < 0.2:
            data = data[: rng.randrange(len(data))]
        in_memory = utils._read_jpeg_header(bytes(data))
        from_file = utils._read_jpeg_header(b"", io.BytesIO(bytes(data)))
        from_stream = utils._read_jpeg_header(bytes(data[:100]), _ShortReads(bytes(data[100:]), rng))
        assert in_memory == from_file == from_stream, case


def _sof_then_scan(height: int = 48, width: int = 64) -> bytes:
    return b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", height, width) + b"\x03" + bytes(9) + b"\xff\xda"


@pytest.mark.parametrize(("gap", "found"), [(65534, True), (65535, False)])
def test_after_a_lying_length_the_next_marker_is_looked_for_64_kib_ahead_and_no_further(
    gap: int, found: bool
) -> None:
    """A byte where a marker must be: the next marker (0xFF, then neither 0x00 nor 0xFF) is looked for in the
    64 KiB after it, its code byte included, in memory and from a file alike."""
    data = b"\xff\xd8" + b"\x00" + bytes(gap) + _sof_then_scan()
    for header in (utils._read_jpeg_header(data), utils._read_jpeg_header(b"", io.BytesIO(data))):
        assert header is not None
        assert (header.width, header.height, header.complete) == ((64, 48, True) if found else (0, 0, False))


def test_a_file_of_endless_exif_segments_keeps_a_few_of_them() -> None:
    segment = b"\xff\xe1\x00\x10Exif\x00\x00" + bytes(8)
    header = utils._read_jpeg_header(b"\xff\xd8" + segment * 1000 + _sof_then_scan())
    assert header is not None and header.complete and header.exif == bytes(8)
    assert len(header.more_exif) == utils._MAX_RESYNCS


def test_a_file_of_endless_tiny_segments_is_not_walked_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Comments of no length one after another, valid each: the header read from the file stops at
    _MAX_JPEG_HEADER_BYTES (64 MiB; 1 MiB here), not at the file's end."""
    monkeypatch.setattr(utils, "_MAX_JPEG_HEADER_BYTES", 1 << 20)
    path = tmp_path / "endless.jpg"
    path.write_bytes(b"\xff\xd8" + b"\xff\xfe\x00\x02" * (1 << 20))  # 4 MiB
    read_bytes = count_reads(monkeypatch)
    meta = read_image_metadata(path)
    assert sum(read_bytes) <= (1 << 20) + 2 * utils._JPEG_READ_BYTES < path.stat().st_size
    assert meta.warnings  # no size found: the header was cut short


class _CountingFile:
    """A file whose reads are counted (bytes returned by each read)."""

    def __init__(self, handle: object, read_bytes: list[int]) -> None:
        self.handle = handle
        self.read_bytes = read_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.handle.read(n)  # type: ignore[attr-defined]
        self.read_bytes.append(len(data))
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self.handle, name)

    def __enter__(self) -> _CountingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()  # type: ignore[attr-defined]


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes each read of a file utils opens returns, from now on."""
    read_bytes: list[int] = []
    real_open = open
    monkeypatch.setattr(
        utils, "open", lambda p, mode="r": _CountingFile(real_open(p, mode), read_bytes), raising=False
    )
    return read_bytes


def test_jpeg_fast_path_reads_only_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_jpeg(tmp_path / "a.jpg", size=(3000, 2000))
    read_bytes = count_reads(monkeypatch)
    meta = read_image_metadata(path)
    assert meta.info["width"] == 3000 and meta.info["camera_make"] == "Canon"
    assert sum(read_bytes) < 2000 < path.stat().st_size  # the header, not the picture


# --- dates, cameras and places as a real Immich reads them (issue 23) ---------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    media_corpus.build_corpus(folder)
    return folder


EXPECTED = json.loads(media_corpus.EXPECTED_PATH.read_text())["assets"]


@pytest.mark.parametrize("sample", media_corpus.SAMPLES, ids=[s.name for s in media_corpus.SAMPLES])
def test_the_fast_reader_reads_what_a_real_immich_shows(corpus: Path, sample: media_corpus.Sample) -> None:
    """Date (wall clock, milliseconds, offset), make, model, GPS and size of each corpus file, against the
    exifInfo a real Immich v3.1.0 showed for it (tests/data/immich_exif.json); no exiftool."""
    ours = media_corpus.reader_facts(corpus / sample.name, use_exiftool=False)
    theirs = media_corpus.immich_facts(EXPECTED[sample.name])
    assert [shown for _, same, shown in media_corpus.compare(ours, theirs) if not same] == [], sample.what


def test_every_corpus_file_has_the_real_servers_answer() -> None:
    assert sorted(EXPECTED) == sorted(s.name for s in media_corpus.SAMPLES)


def test_sub_seconds_keep_their_digits_as_a_fraction(tmp_path: Path) -> None:
    """ "5" is half a second and "098765" 98 ms (exiftool's composite, truncated to milliseconds)."""
    for text, millis in (("5", 500), ("098765", 98), ("42  ", 420)):
        block = media_corpus.tiff_block([], [(0x9003, 2, "2021:03:04 05:06:07"), (0x9291, 2, text)])
        (tmp_path / "a.jpg").write_bytes(media_corpus.jpeg(block))
        assert read_image_metadata(tmp_path / "a.jpg").date_taken == datetime(
            2021, 3, 4, 5, 6, 7, millis * 1000
        )


def test_a_date_with_an_offset_no_zone_uses_is_not_a_date() -> None:
    assert utils.parse_stamp("2011:12:12 12:12:12+01:23") is None
    assert utils.parse_stamp("2011:12:12 12:12:12+05:45").offset == timedelta(hours=5, minutes=45)
    assert utils.parse_stamp("2013:09:10 11:12").wall == datetime(2013, 9, 10, 11, 12)


def test_a_naive_date_is_read_in_the_zone_of_its_gps_position() -> None:
    capture = {"DateTimeOriginal": "2024:01:15 09:00:00"}
    taken = utils.immich_capture_time(capture, gps=(-33.8568, 151.2153))
    assert taken is not None and taken.utcoffset() == timedelta(hours=11)  # Sydney in summer
    assert utils.immich_capture_time(capture) == datetime(2024, 1, 15, 9)


def test_a_movies_apple_creation_date_wins_over_its_utc_creation_time(tmp_path: Path) -> None:
    path = tmp_path / "IMG_1.MOV"
    path.write_bytes(
        media_corpus.quicktime(
            datetime(2021, 6, 7, 6, 9, 10, tzinfo=timezone.utc),
            {
                "com.apple.quicktime.creationdate": "2021-06-07T08:09:10+0200",
                "com.apple.quicktime.make": "Apple",
            },
        )
    )
    meta = read_video_metadata(path)
    assert meta.date_taken == datetime(2021, 6, 7, 8, 9, 10, tzinfo=timezone(timedelta(hours=2)))
    assert meta.info["camera_make"] == "Apple"


needs_exiftool = pytest.mark.skipif(utils.exiftool_path() is None, reason="exiftool is not installed")


@needs_exiftool
@pytest.mark.parametrize("sample", media_corpus.SAMPLES, ids=[s.name for s in media_corpus.SAMPLES])
def test_with_exiftool_where_the_fast_reader_stops_short_the_reading_still_agrees(
    corpus: Path, sample: media_corpus.Sample
) -> None:
    ours = media_corpus.reader_facts(corpus / sample.name)  # as the scan reads: exiftool where installed
    theirs = media_corpus.immich_facts(EXPECTED[sample.name])
    assert [shown for _, same, shown in media_corpus.compare(ours, theirs) if not same] == [], sample.what


@needs_exiftool
def test_exiftool_is_asked_only_where_the_fast_reader_stops_short_and_runs_as_one_process(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    started = []
    real_popen = subprocess.Popen

    def counting_popen(*args: object, **kwargs: object) -> object:
        started.append(args)
        return real_popen(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "Popen", counting_popen)
    monkeypatch.setattr(utils, "_exiftool", None)
    read_by = {
        p.name: read_metadata(p, "video" if p.suffix in (".mp4", ".mov") else "image").info.get("read_by")
        for p in sorted(corpus.iterdir())
    }
    asked = {name for name, reader in read_by.items() if reader == "exiftool"}
    assert "exif_subsec_offset.jpg" not in asked and "gps_sydney_naive.jpg" not in asked  # the fast path's
    assert {"heic_naive.heic", "video_mvhd.mp4", "damaged_entry_count.jpg", "exif_modify_only.jpg"} <= asked
    assert len(started) == 1  # one -stay_open process for every file
    utils.shared_exiftool().close()  # type: ignore[union-attr]


def test_without_exiftool_the_reader_reads_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(utils, "exiftool_path", lambda: None)
    monkeypatch.setattr(utils, "_exiftool", None)
    path = tmp_path / "a.heic"
    path.write_bytes(
        media_corpus.SAMPLES[[s.name for s in media_corpus.SAMPLES].index("heic_naive.heic")].build()
    )
    meta = read_metadata(path, "image")
    assert meta.exiftool_may_know and "read_by" not in meta.info
    assert (meta.info["width"], meta.info["height"]) == (3024, 4032)
    assert meta.date_taken == datetime(2018, 2, 3, 4, 5, 6)


def fake_exiftool(tmp_path: Path, body: str) -> str:
    script = tmp_path / "exiftool"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_an_exiftool_that_never_answers_is_ended_and_the_file_read_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(utils, "EXIFTOOL_TIMEOUT_S", 0.2)
    tool = utils.ExifTool(fake_exiftool(tmp_path, "exec sleep 600"))  # reads nothing, answers nothing
    assert tool.read(write_jpeg(tmp_path / "a.jpg")) is None
    assert tool.process is None  # killed, not left behind


def test_an_exiftool_that_dies_is_started_again_for_the_next_file(tmp_path: Path) -> None:
    tool = utils.ExifTool(fake_exiftool(tmp_path, "exit 3"))
    assert tool.read(write_jpeg(tmp_path / "a.jpg")) is None
    assert tool.read(tmp_path / "a.jpg") is None
    assert tool.requests == 2 and tool.process is None


@needs_exiftool
def test_exiftool_reads_a_file_whose_name_starts_with_a_dash_or_is_not_utf8(tmp_path: Path) -> None:
    tool = utils.ExifTool(utils.exiftool_path())  # type: ignore[arg-type]
    try:
        dashed = write_jpeg(tmp_path / "-ver.jpg")
        odd = os.path.join(os.fsencode(tmp_path), b"\xff\xfe.jpg")
        write_jpeg(Path(os.fsdecode(odd)))
        assert tool.read(dashed)["Make"] == "Canon"  # type: ignore[index]
        assert tool.read(odd)["Make"] == "Canon"  # type: ignore[index]
        assert tool.read(os.path.join(os.fsencode(tmp_path), b"new\nline.jpg")) is None  # cannot be passed
    finally:
        tool.close()


@pytest.mark.parametrize("damage", [b"Nikon\x00\x02\x10\x00\x00XX\x00\x2a", b"Nikon\x00\x02", b"\xff" * 40])
def test_a_garbage_maker_note_loses_only_the_maker_notes_zone(tmp_path: Path, damage: bytes) -> None:
    block = media_corpus.tiff_block(
        media_corpus.camera("NIKON CORPORATION", "NIKON Z 6"),
        [(0x9003, 2, "2021:07:04 12:00:00"), (0x927C, 7, damage)],
    )
    (tmp_path / "a.jpg").write_bytes(media_corpus.jpeg(block))
    meta = read_image_metadata(tmp_path / "a.jpg")
    assert meta.date_taken == datetime(2021, 7, 4, 12)
    assert meta.info["camera_model"] == "NIKON Z 6"


def test_a_date_whose_utc_time_is_past_year_9999_is_kept_as_written() -> None:
    taken = utils.immich_capture_time({"DateTimeOriginal": "9999:12:31 23:00:00-05:00"})
    assert taken == datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))


@needs_exiftool
@pytest.mark.skipif(sys.platform != "linux", reason="ended by the parent's death signal on Linux")
def test_exiftool_ends_with_a_process_killed_under_it(tmp_path: Path) -> None:
    """exiftool -stay_open does not end at the end of its input: a scan worker that dies (os._exit, as a pool
    worker leaves, or SIGKILL) must not leave it running."""
    import subprocess

    photo = write_jpeg(tmp_path / "a.jpg")
    code = (
        "import os, sys, utils\n"
        f"tool = utils.shared_exiftool(); tool.read({str(photo)!r})\n"
        "print(tool.process.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    child = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(utils.__file__).parent,
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(child.stdout)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    assert not _running(pid)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_large_file_of_garbage_named_jpg_is_not_walked_to_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "big.jpg"
    # Starts like a JPEG, then 8 MiB in which every segment is followed by bytes that are no marker.
    path.write_bytes(b"\xff\xd8" + (b"\xff\xe2\x00\x04\x00\x00" + bytes(1000)) * 8000)
    read_bytes = count_reads(monkeypatch)
    meta = read_image_metadata(path)
    # Each of the few resyncs allowed looks a bounded way ahead; the rest of the 8 MiB is never read.
    assert (
        sum(read_bytes) <= (utils._MAX_RESYNCS + 1) * utils._MARKER_SEARCH_BYTES < path.stat().st_size // 10
    )
    assert meta.warnings  # no size found: the header was cut short


@pytest.mark.parametrize(
    ("digitized", "offset"),
    [("2020:01:02 03:04:05", None), ("2020:01:02 03:04:05+03:00", timedelta(hours=3))],
)
def test_a_plain_camera_date_is_zoned_only_by_what_the_file_says(
    tmp_path: Path, digitized: str, offset: timedelta | None
) -> None:
    """The common case (DateTimeOriginal, nothing else about time) as the full logic reads it: a CreateDate
    that carries an offset of its own gives the original its zone, as in exiftool-vendored."""
    block = media_corpus.tiff_block(
        media_corpus.camera(), [(0x9003, 2, "2020:01:02 03:04:05"), (0x9004, 2, digitized)]
    )
    (tmp_path / "a.jpg").write_bytes(media_corpus.jpeg(block))
    taken = read_image_metadata(tmp_path / "a.jpg").date_taken
    assert taken is not None and taken.replace(tzinfo=None) == datetime(2020, 1, 2, 3, 4, 5)
    assert taken.utcoffset() == offset


def test_a_damaged_tiff_header_is_one_warning_and_nothing_on_the_console(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    data = bytearray(media_corpus.tiff_file([]))
    at = data.index(struct.pack("<HHI", 0x0115, 3, 1))  # SamplesPerPixel: 3 -> 2048
    struct.pack_into("<H", data, at + 8, 2048)
    (tmp_path / "a.tif").write_bytes(data)
    with caplog.at_level(logging.INFO):
        meta = read_image_metadata(tmp_path / "a.tif")
    assert meta.warnings == ["not an image format Pillow recognises"]
    assert not [r for r in caplog.records if r.name.startswith("PIL")]
    assert capsys.readouterr() == ("", "")


LIVE_ID = "1E2B3C4D-5F60-4718-92A3-B4C5D6E7F809"


def iphone_exif() -> bytes:
    return media_corpus.tiff_block(
        media_corpus.camera("Apple", "iPhone 13"),
        [
            (media_corpus.DTO, media_corpus.ASCII, "2023:08:01 12:00:00"),
            (media_corpus.OFFSET_ORIGINAL, media_corpus.ASCII, "+02:00"),
            (media_corpus.MAKERNOTE, media_corpus.UNDEFINED, media_corpus.apple_makernote(LIVE_ID)),
        ],
    )


@pytest.mark.parametrize("use_exiftool", [False, pytest.param(True, marks=needs_exiftool)])
def test_a_live_photos_content_identifier_is_read_from_photo_and_clip(
    tmp_path: Path, use_exiftool: bool
) -> None:
    """Apple's ContentIdentifier, in the photo's maker note (JPEG or HEIC) and the clip's QuickTime keys,
    with or without exiftool: what pairs a live photo's two files."""
    jpeg = tmp_path / "IMG_1.JPG"
    jpeg.write_bytes(media_corpus.jpeg(iphone_exif()))
    heic = tmp_path / "IMG_2.HEIC"
    heic.write_bytes(media_corpus.heic(iphone_exif()))
    clip = tmp_path / "IMG_2.MOV"
    keys = {"com.apple.quicktime.content.identifier": LIVE_ID, "com.apple.quicktime.make": "Apple"}
    clip.write_bytes(media_corpus.quicktime(datetime(2023, 8, 1, 10, 0, tzinfo=timezone.utc), keys))
    for path, kind in ((jpeg, "image"), (heic, "image"), (clip, "video")):
        meta = utils.read_metadata(path, kind, use_exiftool=use_exiftool)
        assert meta.info.get("content_id") == LIVE_ID, (path.name, meta.info, meta.warnings)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(media_corpus.jpeg(media_corpus.tiff_block(media_corpus.camera())))
    assert "content_id" not in utils.read_metadata(plain, "image", use_exiftool=use_exiftool).info


def test_a_damaged_apple_maker_note_loses_only_the_content_identifier(tmp_path: Path) -> None:
    note = media_corpus.apple_makernote(LIVE_ID)
    for damaged in (note[:20], note[:12] + b"XX" + note[14:], note[:16] + b"\xff" * 40):
        exif = media_corpus.tiff_block(
            media_corpus.camera("Apple", "iPhone 13"),
            [(media_corpus.DTO, media_corpus.ASCII, "2023:08:01 12:00:00"),
             (media_corpus.MAKERNOTE, media_corpus.UNDEFINED, damaged)],
        )  # fmt: skip
        path = tmp_path / "IMG_1.JPG"
        path.write_bytes(media_corpus.jpeg(exif))
        meta = utils.read_metadata(path, "image", use_exiftool=False)
        assert "content_id" not in meta.info and meta.info["camera_model"] == "iPhone 13"
        assert meta.date_taken is not None


def _owned_link(target: Path | str, link: Path, uid: int) -> None:
    os.symlink(target, link)
    os.lchown(link, uid, uid)


@pytest.mark.parametrize("through_folders", [False, True], ids=["walk", "source-folders"])
def test_the_link_rule_is_applied_part_by_part_to_what_each_link_actually_leads_to(
    tmp_path: Path, through_folders: bool
) -> None:
    """As root over a folder others can write to (uid 4242 the writer, 1000 the victim): another user's link
    is followed only into the sources or to something of its own, and below that only to its own files;
    links root made are followed; the magic links of /proc (another process's view) are never taken. The
    same through an upload thread's SourceFolders, which opens a folder's files from one walk of it."""
    if os.geteuid() != 0:
        pytest.skip("making files of other users needs root")
    writer, victim = 4242, 1000
    source = tmp_path / "source"
    (source / "a").mkdir(parents=True)
    (source / "a" / "x.jpg").write_bytes(b"mine")
    theirs = tmp_path / "writer"
    (theirs / "vsub").mkdir(parents=True)
    (theirs / "own.jpg").write_bytes(b"own")
    os.chown(theirs, writer, writer)
    os.chown(theirs / "own.jpg", writer, writer)
    (theirs / "vsub" / "d.jpg").write_bytes(b"victim's, in the writer's folder")
    os.chown(theirs / "vsub", victim, victim)
    (theirs / "victims.jpg").write_bytes(b"victim's file, in the writer's folder")
    os.chown(theirs / "victims.jpg", victim, victim)
    private = tmp_path / "victim"
    private.mkdir(mode=0o700)
    (private / "v.jpg").write_bytes(b"victim's")
    os.chown(private, victim, victim)
    nas = tmp_path / "nas"
    nas.mkdir()
    (nas / "n.jpg").write_bytes(b"nas")
    os.chown(nas, victim, victim)
    _owned_link(theirs, source / "theirs", writer)
    _owned_link(private, source / "private", writer)
    _owned_link(f"/proc/self/root{private}", source / "via-proc", writer)
    _owned_link("../a/x.jpg", source / "a" / "again.jpg", writer)  # inside the sources: fine
    _owned_link(nas, source / "nas", 0)  # root made it
    os.mkfifo(source / "pipe.jpg")
    roots = utils.SourceRoots.of([source])
    folders = utils.SourceFolders(roots)

    def _read(path: Path, roots: utils.SourceRoots, size_bytes: int | None = None) -> bytes:
        raw = os.fsencode(path)
        if through_folders and roots is folders.roots:
            with folders.open(raw, size_bytes) as handle:
                return handle.read()
        with utils.open_source_file(raw, roots, size_bytes) as handle:
            return handle.read()

    assert _read(source / "a" / "x.jpg", roots) == b"mine"
    assert _read(source / "theirs" / "own.jpg", roots) == b"own"
    assert _read(source / "a" / "again.jpg", roots) == b"mine"
    assert _read(source / "nas" / "n.jpg", roots) == b"nas"
    with pytest.raises(utils.LinkRefused, match="outside the source folders"):
        _read(source / "private" / "v.jpg", roots)
    with pytest.raises(utils.LinkRefused, match="not owned by the owner of the link"):
        _read(source / "theirs" / "vsub" / "d.jpg", roots)
    for _ in range(2):  # the second time from a folder already reached
        with pytest.raises(utils.LinkRefused, match="not owned by the owner of the link"):
            _read(source / "theirs" / "victims.jpg", roots)
    with pytest.raises(utils.LinkRefused):
        _read(source / "via-proc" / "v.jpg", roots)
    with pytest.raises(utils.FileChangedError, match="no longer a regular file"):
        _read(source / "pipe.jpg", roots)  # and no hang on the FIFO
    with pytest.raises(utils.FileChangedError):
        _read(source / "a" / "x.jpg", roots, size_bytes=5)
    assert _read(source / "a" / "x.jpg", roots) == b"mine"  # again, from the same folder
    assert (
        _read(source / "a" / "x.jpg", utils.SourceRoots.of([])) == b"mine"
    )  # no sources known (upload_files)
    folders.close()


@pytest.mark.skipif(
    not utils._O_PATH, reason="folders are reached by descriptor where there is O_PATH (Linux)"
)
def test_source_folders_walk_a_folder_once_for_its_files_and_a_link_in_it_on_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    (source / "a").mkdir(parents=True)
    for n in range(3):
        (source / "a" / f"{n}.jpg").write_bytes(b"photo %d" % n)
    (source / "a" / "link.jpg").symlink_to("0.jpg")
    folders = utils.SourceFolders(utils.SourceRoots.of([source]))
    walked: list[bytes] = []
    real_resolve = utils._resolve
    monkeypatch.setattr(
        utils, "_resolve", lambda path, *a, **k: walked.append(path) or real_resolve(path, *a, **k)
    )
    for n in range(3):
        with folders.open(os.fsencode(source / "a" / f"{n}.jpg")) as handle:
            assert handle.read() == b"photo %d" % n
    assert walked == [os.fsencode(source / "a")]
    with folders.open(os.fsencode(source / "a" / "link.jpg")) as handle:
        assert handle.read() == b"photo 0"
    assert walked[1:] == [os.fsencode(source / "a" / "link.jpg")]  # the link judged by the walk
    with pytest.raises(FileNotFoundError):
        folders.open(os.fsencode(source / "a" / "gone.jpg"))
    with pytest.raises(utils.FileChangedError, match="changed since it was hashed"):
        folders.open(os.fsencode(source / "a" / "1.jpg"), size_bytes=3)
    opened = len(os.listdir("/proc/self/fd"))
    folders.close()
    assert len(os.listdir("/proc/self/fd")) == opened - 1  # the folder's descriptor


@pytest.mark.skipif(
    not utils._O_PATH, reason="folders are reached by descriptor where there is O_PATH (Linux)"
)
def test_a_folder_descriptor_stays_open_while_a_thread_opens_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threads share SourceFolders: folders other threads pass through push a folder out of those kept, but
    its descriptor is closed only once the thread opening a file through it is done (a number closed and
    reused under it would open a file of another folder)."""
    for folder in "abcd":
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "p.jpg").write_bytes(folder.encode() * 3)
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]))
    folders.KEEP_FOLDERS = 1
    in_a, others_done = threading.Event(), threading.Event()
    real_open = os.open

    def held_open(path: bytes, flags: int, *args: object, dir_fd: int | None = None) -> int:
        if path == b"p.jpg" and dir_fd is not None and threading.current_thread().name == "in-a":
            in_a.set()
            assert others_done.wait(10)
        return real_open(path, flags, *args, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", held_open)
    read_in_a: list[bytes] = []

    def read_a() -> None:
        with folders.open(os.fsencode(tmp_path / "a" / "p.jpg")) as handle:
            read_in_a.append(handle.read())

    thread = threading.Thread(target=read_a, name="in-a")
    thread.start()
    assert in_a.wait(10)
    for folder in "bcd":
        with folders.open(os.fsencode(tmp_path / folder / "p.jpg")) as handle:
            assert handle.read() == folder.encode() * 3
    others_done.set()
    thread.join(10)
    assert read_in_a == [b"aaa"]
    folders.close()


@pytest.mark.skipif(
    not utils._O_PATH, reason="folders are reached by descriptor where there is O_PATH (Linux)"
)
def test_a_folder_moved_away_and_made_again_is_walked_again(tmp_path: Path) -> None:
    """A folder renamed and another made in its place while its files are sent: each file is read from
    where its path leads now (the walk's answer), not from the folder first reached."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"first")
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]))
    with folders.open(os.fsencode(folder / "a.jpg")) as handle:
        assert handle.read() == b"first"
    folder.rename(tmp_path / "old")
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"second")
    with folders.open(os.fsencode(folder / "b.jpg")) as handle:
        assert handle.read() == b"second"
    (tmp_path / "old" / "a.jpg").rename(folder / "a.jpg")
    with folders.open(os.fsencode(folder / "a.jpg")) as handle:
        assert handle.read() == b"first"
    folders.close()


def test_a_folder_walked_a_minute_ago_is_walked_again(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_bytes(b"first")
    now = [0.0]
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]), clock=lambda: now[0])
    with folders.open(os.fsencode(tmp_path / "p" / "a.jpg")) as handle:
        assert handle.read() == b"first"
    (tmp_path / "p").rename(tmp_path / "q")
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.jpg").write_bytes(b"later")  # same name, same size: only the walk tells them apart
    now[0] += utils.SourceFolders.AGE_S + 1
    with folders.open(os.fsencode(tmp_path / "p" / "a.jpg")) as handle:
        assert handle.read() == b"later"
    folders.close()


def test_sidecar_names_are_matched_in_any_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a card's or a share's file system (exFAT, SMB) `IMG_1.JPG.xmp` names `IMG_1.jpg.Xmp`: the listing
    must not rule out what a look would find there."""
    (tmp_path / "IMG_1.JPG").write_bytes(b"x")
    (tmp_path / "IMG_1.jpg.Xmp").write_bytes(b"<x/>")
    photo = os.fsencode(tmp_path / "IMG_1.JPG")
    asked: list[bytes] = []
    monkeypatch.setattr(os.path, "isfile", lambda p: asked.append(os.path.basename(p)) or True)  # as there
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]))
    assert folders.sidecar_for(photo) == photo + b".xmp"
    assert asked == [b"IMG_1.JPG.xmp"]


def test_source_folders_find_the_sidecars_sidecar_for_finds(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "a.jpg.xmp", "b.jpg", "b.xmp", "c.jpg", "c.XMP", "d.jpg", "e.jpg", "IMG_9.HEIC",
                 "IMG_9.HEIC.jpg", "IMG_9.HEIC.xmp"):  # fmt: skip
        (folder / name).write_bytes(b"x")
    (folder / "e.jpg.xmp").mkdir()  # no file: no sidecar
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]))
    expected = {"a.jpg": "a.jpg.xmp", "b.jpg": "b.xmp", "c.jpg": "c.XMP", "d.jpg": None, "e.jpg": None,
                "IMG_9.HEIC": "IMG_9.HEIC.xmp", "IMG_9.HEIC.jpg": None}  # fmt: skip
    for photo, sidecar in expected.items():
        raw = os.fsencode(folder / photo)
        want = os.fsencode(folder / sidecar) if sidecar else None
        assert utils.sidecar_for(raw) == want and folders.sidecar_for(raw) == want, photo


def test_a_sidecar_written_after_its_folder_was_listed_goes_with_photos_sent_a_minute_later(
    tmp_path: Path,
) -> None:
    (tmp_path / "d.jpg").write_bytes(b"x")
    now = [0.0]
    folders = utils.SourceFolders(utils.SourceRoots.of([tmp_path]), clock=lambda: now[0])
    photo = os.fsencode(tmp_path / "d.jpg")
    assert folders.sidecar_for(photo) is None
    (tmp_path / "d.jpg.xmp").write_bytes(b"<x/>")
    assert folders.sidecar_for(photo) is None  # the folder as listed
    now[0] += utils.SourceFolders.AGE_S + 1
    assert folders.sidecar_for(photo) == photo + b".xmp"
    (tmp_path / "d.jpg.xmp").unlink()
    assert folders.sidecar_for(photo) is None  # listed, but gone: each is looked at before it is sent


def test_a_source_whose_own_path_holds_another_users_link_elsewhere_is_refused(tmp_path: Path) -> None:
    """Someone who can write the folder holding a source swaps the source for a link to another user's
    folder: the source is refused, not read, and nothing below it counts as inside the sources."""
    if os.geteuid() != 0:
        pytest.skip("making files of other users needs root")
    share = tmp_path / "share"
    share.mkdir()
    private = tmp_path / "victim"
    private.mkdir()
    os.chown(private, 1000, 1000)
    _owned_link(private, share / "photos", 4242)
    roots = utils.SourceRoots.of([share / "photos"])
    assert roots.paths == () and roots.identities == frozenset()
    assert roots.refused and "owned by another user than the link" in roots.refused[0][1]


def test_a_link_into_another_mount_namespace_is_neither_followed_nor_deleted_through(tmp_path: Path) -> None:
    """/proc/PID/root leads into another process's view of the files, where someone may have mounted a
    folder they cannot read over an empty one of theirs: the walk does not follow such a link, and deletion
    never takes a file reached through one for a file of the sources."""
    import shutil
    import subprocess

    from organize import KEPT_OUTSIDE, local_obstacle

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    source = tmp_path / "source"
    (source / ".mnt").mkdir(parents=True)
    private = tmp_path / "victim"
    private.mkdir()
    (private / "family.jpg").write_bytes(b"victim's")
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount --bind '{private}' '{source / '.mnt'}' && exec sleep 120"],
    )  # fmt: skip
    try:
        seen = Path(f"/proc/{holder.pid}/root{source}/.mnt/family.jpg")
        for _ in range(500):  # the mount is made: the file shows through the holder's view
            if seen.exists() or holder.poll() is not None:
                break
            time.sleep(0.01)
        if not seen.exists():
            pytest.skip("this machine does not allow mount namespaces")
        _owned_link(f"/proc/{holder.pid}/root{source}/.mnt", source / "Album", 4242)
        roots = utils.SourceRoots.of([source])
        assert utils.judge_link(os.fsencode(source / "Album"), roots).refusal is not None
        assert local_obstacle(os.fsencode(source / "Album" / "family.jpg"), roots.paths) == KEPT_OUTSIDE
        with pytest.raises(FileNotFoundError):
            utils.open_source_file(os.fsencode(source / "Album" / "family.jpg"), roots)  # the empty folder
    finally:
        holder.kill()
        holder.wait()
