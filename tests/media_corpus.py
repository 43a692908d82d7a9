"""A varied set of small media files whose metadata a real Immich reads, made here in pure Python.

Each sample is a photo or video as a camera, a phone or an editor writes it (EXIF with and without offsets and
sub-seconds, XMP-only dates, maker notes with a time zone, GPS in odd forms, damaged EXIF blocks, TIFF, PNG,
WebP, HEIC, QuickTime with Apple's keys), built byte by byte so that the same bytes come out on every machine
without exiftool or ffmpeg. `tests/data/immich_exif.json` holds what a real Immich v3.1.0 showed in `exifInfo`
for these files (bench/bench_metadata.py made it); test_utils.py holds the tool's reader against it.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

# Every sample's mtime: a date no sample carries, so a date that falls back to the file's shows as such.
CORPUS_MTIME = datetime(2001, 2, 3, 4, 5, 6, tzinfo=timezone.utc).timestamp()

ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SSHORT, SLONG, SRATIONAL, BYTE = 2, 3, 4, 5, 7, 8, 9, 10, 1
EXIF_POINTER, GPS_POINTER, MAKERNOTE = 0x8769, 0x8825, 0x927C


@dataclass(frozen=True)
class Sample:
    name: str  # the file's name in the corpus folder
    what: str  # what it shows, in a few words
    build: Callable[[], bytes]


# --- TIFF/EXIF blocks -----------------------------------------------------------------------------------------

Entry = tuple[int, int, object]  # tag, TIFF type, value (str, bytes, int, a tuple of ints or of (num, den))


def _encode(kind: int, value: object, order: str) -> tuple[bytes, int]:
    if kind == ASCII:
        raw = value.encode() if isinstance(value, str) else bytes(value)  # type: ignore[arg-type]
        raw = raw if raw.endswith(b"\x00") else raw + b"\x00"
        return raw, len(raw)
    if kind in (UNDEFINED, BYTE) and isinstance(value, bytes | bytearray):
        return bytes(value), len(value)
    values = value if isinstance(value, tuple | list) else (value,)
    if kind in (RATIONAL, SRATIONAL):
        code = "I" if kind == RATIONAL else "i"
        pairs = [v if isinstance(v, tuple) else (v, 1) for v in values]
        return b"".join(struct.pack(order + code * 2, *p) for p in pairs), len(pairs)
    code = {SHORT: "H", LONG: "I", SSHORT: "h", SLONG: "i", BYTE: "B", UNDEFINED: "B"}[kind]
    return struct.pack(order + code * len(values), *values), len(values)


def _ifd(entries: list[Entry], start: int, order: str) -> bytes:
    """One IFD placed at `start` (offsets count from the TIFF header), its long values after it."""
    data_start = start + 2 + 12 * len(entries) + 4
    head, data = struct.pack(order + "H", len(entries)), b""
    for tag, kind, value in sorted(entries, key=lambda e: e[0]):
        if callable(value):  # a maker note that must know where it lands
            value = value(data_start + len(data))
        raw, count = _encode(kind, value, order)
        if len(raw) <= 4:
            field = raw.ljust(4, b"\x00")
        else:
            field = struct.pack(order + "I", data_start + len(data))
            data += raw + b"\x00" * (len(raw) % 2)
        head += struct.pack(order + "HHI", tag, kind, count) + field
    return head + struct.pack(order + "I", 0) + data


def tiff_block(
    ifd0: list[Entry],
    exif: list[Entry] = (),
    gps: list[Entry] = (),
    order: str = "<",  # type: ignore[assignment]
) -> bytes:
    """A TIFF header and IFD0, with an EXIF and a GPS IFD when given (the pointers are made here)."""
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8)

    def build(exif_at: int, gps_at: int) -> bytes:
        entries = list(ifd0)
        if exif:
            entries.append((EXIF_POINTER, LONG, exif_at))
        if gps:
            entries.append((GPS_POINTER, LONG, gps_at))
        return _ifd(entries, 8, order)

    first = build(0, 0)
    exif_at = 8 + len(first)
    exif_bytes = _ifd(list(exif), exif_at, order) if exif else b""
    gps_at = exif_at + len(exif_bytes)
    gps_bytes = _ifd(list(gps), gps_at, order) if gps else b""
    return header + build(exif_at, gps_at) + exif_bytes + gps_bytes


def dms(degrees: float) -> tuple[tuple[int, int], ...]:
    """Degrees as EXIF writes them: degrees, minutes, seconds (hundredths) as rationals."""
    degrees = abs(degrees)
    d = int(degrees)
    m = int((degrees - d) * 60)
    s = round(((degrees - d) * 60 - m) * 60 * 100)
    return ((d, 1), (m, 1), (s, 100))


def gps_entries(lat: float, lon: float, altitude: float | None = None) -> list[Entry]:
    entries: list[Entry] = [
        (0, BYTE, b"\x02\x03\x00\x00"),
        (1, ASCII, "S" if lat < 0 else "N"),
        (2, RATIONAL, dms(lat)),
        (3, ASCII, "W" if lon < 0 else "E"),
        (4, RATIONAL, dms(lon)),
    ]
    if altitude is not None:
        entries += [
            (5, BYTE, b"\x01" if altitude < 0 else b"\x00"),
            (6, RATIONAL, (round(abs(altitude) * 10), 10)),
        ]
    return entries


def camera(make: str = "Canon", model: str = "Canon EOS R5") -> list[Entry]:
    return [(0x010F, ASCII, make), (0x0110, ASCII, model), (0x0112, SHORT, 1)]


# --- containers -----------------------------------------------------------------------------------------------


def _pixels(size: tuple[int, int], seed: int) -> Image.Image:
    image = Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256))
    image.putpixel((0, 0), (255, 255, 255))
    return image


def jpeg(
    exif: bytes | None = None,
    xmp: str | None = None,
    size: tuple[int, int] = (64, 48),
    seed: int = 1,
    extra: list[bytes] = (),  # type: ignore[assignment]
) -> bytes:
    """A JPEG from Pillow with an APP1 Exif segment and an APP1 XMP packet of our own making."""
    out = io.BytesIO()
    _pixels(size, seed).save(out, "JPEG", quality=80)
    body = out.getvalue()[2:]
    segments = [*extra]
    if exif is not None:
        segments.append(app1(b"Exif\x00\x00" + exif))
    if xmp is not None:
        segments.append(app1(b"http://ns.adobe.com/xap/1.0/\x00" + xmp.encode()))
    return b"\xff\xd8" + b"".join(segments) + body


def app1(payload: bytes) -> bytes:
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def xmp_packet(**properties: str) -> str:
    """An XMP packet with one rdf:Description holding `prefix_name="value"` attributes."""
    namespaces = {
        "xmp": "http://ns.adobe.com/xap/1.0/",
        "exif": "http://ns.adobe.com/exif/1.0/",
        "photoshop": "http://ns.adobe.com/photoshop/1.0/",
        "tiff": "http://ns.adobe.com/tiff/1.0/",
    }
    attributes = " ".join(f'{key.replace("_", ":", 1)}="{value}"' for key, value in properties.items())
    declared = " ".join(f'xmlns:{prefix}="{uri}"' for prefix, uri in namespaces.items())
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" {declared} {attributes}/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    )


def png(
    exif: bytes | None = None, xmp: str | None = None, size: tuple[int, int] = (40, 30), seed: int = 2
) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if xmp is not None:
        info.add_itxt("XML:com.adobe.xmp", xmp)
    out = io.BytesIO()
    _pixels(size, seed).save(out, "PNG", pnginfo=info, **({"exif": exif} if exif else {}))
    return out.getvalue()


def webp(exif: bytes, size: tuple[int, int] = (50, 40), seed: int = 3) -> bytes:
    out = io.BytesIO()
    _pixels(size, seed).save(out, "WEBP", exif=exif, quality=80)
    return out.getvalue()


def tiff_file(ifd0: list[Entry], exif: list[Entry] = (), gps: list[Entry] = (), size=(16, 12)) -> bytes:  # type: ignore[assignment]
    """An uncompressed RGB TIFF whose IFD0 also holds the camera's tags; the pixels follow the IFDs."""
    width, height = size
    pixels = _pixels(size, 4).tobytes()
    strip = [
        (0x0100, SHORT, width), (0x0101, SHORT, height), (0x0102, SHORT, (8, 8, 8)), (0x0103, SHORT, 1),
        (0x0106, SHORT, 2), (0x0115, SHORT, 3), (0x0116, SHORT, height), (0x0117, LONG, len(pixels)),
        (0x011C, SHORT, 1),
    ]  # fmt: skip
    # Twice: the first pass finds where the pixels go (after every IFD), the second points there.
    block = tiff_block([*strip, (0x0111, LONG, 0), *ifd0], exif, gps)
    block = tiff_block([*strip, (0x0111, LONG, len(block)), *ifd0], exif, gps)
    return block + pixels


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def heic(exif: bytes, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A HEIF still image as phones write one, reduced to what metadata readers look at: the primary item
    (its HEVC data is a stand-in), its size in `ispe`, and an Exif item pointing at the EXIF block."""
    exif_item = struct.pack(">I", 6) + b"Exif\x00\x00" + exif
    image_data = b"\x00\x00\x00\x01" + bytes(32)
    hdlr = full_box(b"hdlr", 0, 0, b"\x00" * 4 + b"pict" + b"\x00" * 12 + b"\x00")
    pitm = full_box(b"pitm", 0, 0, struct.pack(">H", 1))
    infe1 = full_box(b"infe", 2, 0, struct.pack(">HH", 1, 0) + b"hvc1" + b"\x00")
    infe2 = full_box(b"infe", 2, 0, struct.pack(">HH", 2, 0) + b"Exif" + b"\x00")
    iinf = full_box(b"iinf", 0, 0, struct.pack(">H", 2) + infe1 + infe2)
    iref = full_box(b"iref", 0, 0, box(b"cdsc", struct.pack(">HHH", 2, 1, 1)))
    ispe = full_box(b"ispe", 0, 0, struct.pack(">II", *size))
    hvcc = box(
        b"hvcC",
        bytes(
            [1, 1, 0x60, 0, 0, 0, 0x90, 0, 0, 0, 0, 0, 0x5D, 0xF0, 0, 0xFC, 0xFD, 0xF8, 0xF8, 0, 0, 0x0F, 0]
        ),
    )
    ipco = box(b"ipco", hvcc + ispe)
    ipma = full_box(b"ipma", 0, 0, struct.pack(">IHBBB", 1, 1, 2, 0x81, 0x02))
    iprp = box(b"iprp", ipco + ipma)

    def meta(base: int) -> bytes:
        iloc = full_box(
            b"iloc", 0, 0,
            bytes([0x44, 0x00]) + struct.pack(">H", 2)
            + struct.pack(">HHHII", 1, 0, 1, base, len(image_data))
            + struct.pack(">HHHII", 2, 0, 1, base + len(image_data), len(exif_item)),
        )  # fmt: skip
        return full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp)

    ftyp = box(b"ftyp", b"heic" + struct.pack(">I", 0) + b"mif1heic")
    head = ftyp + meta(0)
    base = len(head) + 8
    return ftyp + meta(base) + box(b"mdat", image_data + exif_item)


MAC_EPOCH = datetime(1904, 1, 1, tzinfo=timezone.utc)
_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def quicktime(
    created: datetime | None,
    keys: dict[str, str] = {},  # noqa: B006 (read only)
    brand: bytes = b"qt  ",
    size: tuple[int, int] = (32, 24),
    frames: int = 3,
) -> bytes:
    """A QuickTime/MP4 movie of `frames` Motion-JPEG frames (players and ffprobe read it), its mvhd/tkhd/mdhd
    creation time `created` (None: 0, as clockless cameras write), and Apple's metadata `keys`
    (com.apple.quicktime.creationdate, .make, .model, .location.ISO6709) in moov/meta."""
    stamp = int((created - MAC_EPOCH).total_seconds()) if created else 0
    frame_jpegs = []
    for n in range(frames):
        out = io.BytesIO()
        _pixels(size, 10 + n).save(out, "JPEG", quality=70)
        frame_jpegs.append(out.getvalue())
    timescale, per_frame = 600, 200
    duration = per_frame * frames
    mvhd = full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", stamp, stamp, timescale, duration) + struct.pack(">IH10x", 0x10000, 0x100)
        + _MATRIX + bytes(24) + struct.pack(">I", 2),
    )  # fmt: skip
    tkhd = full_box(
        b"tkhd", 0, 3,
        struct.pack(">IIIII", stamp, stamp, 1, 0, duration) + bytes(8) + struct.pack(">hhH2x", 0, 0, 0)
        + _MATRIX + struct.pack(">II", size[0] << 16, size[1] << 16),
    )  # fmt: skip
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", stamp, stamp, timescale, duration, 0x55C4, 0))
    hdlr = full_box(b"hdlr", 0, 0, b"mhlrvide" + bytes(12) + b"\x00")
    vmhd = full_box(b"vmhd", 0, 1, bytes(8))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1) + full_box(b"url ", 0, 1, b"")))
    entry = (
        bytes(6) + struct.pack(">H", 1) + bytes(16) + struct.pack(">HH", *size)
        + struct.pack(">II", 0x480000, 0x480000) + bytes(4) + struct.pack(">H", 1)
        + bytes([10]) + b"Photo-JPEG".ljust(31, b"\x00") + struct.pack(">hh", 24, -1)
    )  # fmt: skip
    stsd = full_box(b"stsd", 0, 0, struct.pack(">I", 1) + box(b"jpeg", entry))
    stts = full_box(b"stts", 0, 0, struct.pack(">III", 1, frames, per_frame))
    stsc = full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, frames, 1))
    stsz = full_box(
        b"stsz",
        0,
        0,
        struct.pack(">II", 0, frames) + b"".join(struct.pack(">I", len(f)) for f in frame_jpegs),
    )

    meta = b""
    if keys:
        names = list(keys)
        key_boxes = b"".join(box(b"mdta", name.encode()) for name in names)
        items = b"".join(
            box(struct.pack(">I", i + 1), box(b"data", struct.pack(">II", 1, 0) + keys[name].encode()))
            for i, name in enumerate(names)
        )
        meta = full_box(
            b"meta", 0, 0,
            full_box(b"hdlr", 0, 0, b"\x00" * 4 + b"mdta" + bytes(12) + b"\x00")
            + full_box(b"keys", 0, 0, struct.pack(">I", len(names)) + key_boxes)
            + box(b"ilst", items),
        )  # fmt: skip
        meta = meta[:8] + meta[12:]  # QuickTime's meta is a plain box (no version/flags), as Apple writes it
        meta = struct.pack(">I", len(meta)) + meta[4:]

    def moov(mdat_at: int) -> bytes:
        stco = full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_at + 8))
        stbl = box(b"stbl", stsd + stts + stsc + stsz + stco)
        minf = box(b"minf", vmhd + dinf + stbl)
        mdia = box(b"mdia", mdhd + hdlr + minf)
        trak = box(b"trak", tkhd + mdia)
        return box(b"moov", mvhd + trak + meta)

    ftyp = box(b"ftyp", brand + struct.pack(">I", 0x200) + brand + b"isom")
    mdat_at = len(ftyp) + len(moov(0))
    return ftyp + moov(mdat_at) + box(b"mdat", b"".join(frame_jpegs))


# --- damage -----------------------------------------------------------------------------------------------------


def with_entry_value(block: bytes, tag: int, new_value: bytes, order: str = "<") -> bytes:
    """`block` with the 4-byte value/offset field of the first IFD entry for `tag` replaced."""
    marker = struct.pack(order + "H", tag)
    data = bytearray(block)
    at = 8
    while True:
        at = data.index(marker, at)
        if 1 <= struct.unpack_from(order + "H", data, at + 2)[0] <= 12:  # a type follows: an entry
            data[at + 8 : at + 12] = new_value
            return bytes(data)
        at += 1


# --- maker notes ----------------------------------------------------------------------------------------------


def nikon_makernote(zone_minutes: int, daylight_saving: bool) -> bytes:
    """Nikon's type-3 maker note: its own TIFF header, and WorldTime (0x0024): time zone in minutes, DST."""
    world_time = struct.pack(">hBB", zone_minutes, 1 if daylight_saving else 0, 0)
    inner = tiff_block([(0x0001, UNDEFINED, b"0210"), (0x0024, UNDEFINED, world_time)], order=">")
    return b"Nikon\x00\x02\x10\x00\x00" + inner


def apple_makernote(content_identifier: str) -> bytes:
    """Apple's maker note as an iPhone writes it: "Apple iOS\\0", version 1, "MM", then an IFD whose offsets
    count from the note's start; ContentIdentifier (0x0011) ties a live photo's photo to its clip."""
    entries: list[Entry] = [(0x0001, SLONG, 14), (0x0011, ASCII, content_identifier)]
    return b"Apple iOS\x00\x00\x01MM" + _ifd(entries, 14, ">")


def canon_makernote(zone_minutes: int) -> Callable[[int], bytes]:
    """Canon's maker note: a bare IFD whose offsets count from the EXIF block's TIFF header; TimeInfo
    (0x0035) holds the time zone in minutes, the city and daylight saving."""

    def at(offset: int) -> bytes:
        time_info = struct.pack("<4i", 16, zone_minutes, 0, 0)
        return _ifd([(0x0035, SLONG, struct.unpack("<4i", time_info))], offset, "<")

    return at


# --- the samples ----------------------------------------------------------------------------------------------


def _exif_jpeg(exif: list[Entry] = (), gps: list[Entry] = (), ifd0: list[Entry] | None = None, **kw) -> bytes:  # type: ignore[assignment]
    return jpeg(tiff_block(camera() if ifd0 is None else ifd0, exif, gps), **kw)


SYDNEY, PARIS, NEW_YORK = (-33.8568, 151.2153), (48.8584, 2.2945), (40.6892, -74.0445)
DTO, DTD, OFFSET_TIME, OFFSET_ORIGINAL, OFFSET_DIGITIZED = 0x9003, 0x9004, 0x9010, 0x9011, 0x9012
SUBSEC, SUBSEC_ORIGINAL, SUBSEC_DIGITIZED, MODIFY_DATE = 0x9290, 0x9291, 0x9292, 0x0132


def _samples() -> list[Sample]:
    s: list[Sample] = []

    def add(name: str, what: str, build: Callable[[], bytes]) -> None:
        s.append(Sample(name, what, build))

    # Dates in EXIF
    add(
        "exif_offset.jpg",
        "DateTimeOriginal with OffsetTimeOriginal",
        lambda: _exif_jpeg([(DTO, ASCII, "2024:05:04 10:15:00"), (OFFSET_ORIGINAL, ASCII, "+02:00")]),
    )
    add(
        "exif_naive.jpg",
        "DateTimeOriginal without offset",
        lambda: _exif_jpeg([(DTO, ASCII, "2019:12:31 23:59:58")]),
    )
    add(
        "exif_subsec_offset.jpg",
        "sub-seconds and offset",
        lambda: _exif_jpeg(
            [
                (DTO, ASCII, "2023:07:14 18:30:05"),
                (SUBSEC_ORIGINAL, ASCII, "123"),
                (OFFSET_ORIGINAL, ASCII, "-05:00"),
            ]
        ),
    )
    add(
        "exif_subsec_naive.jpg",
        "sub-seconds, no offset",
        lambda: _exif_jpeg([(DTO, ASCII, "2022:02:22 22:22:22"), (SUBSEC_ORIGINAL, ASCII, "5")]),
    )
    add(
        "exif_subsec_long.jpg",
        "six sub-second digits",
        lambda: _exif_jpeg(
            [
                (DTO, ASCII, "2021:03:04 05:06:07"),
                (SUBSEC_ORIGINAL, ASCII, "098765"),
                (OFFSET_ORIGINAL, ASCII, "+09:00"),
            ]
        ),
    )
    add(
        "exif_subsec_spaces.jpg",
        "sub-seconds padded with spaces",
        lambda: _exif_jpeg([(DTO, ASCII, "2020:08:09 10:11:12"), (SUBSEC_ORIGINAL, ASCII, "42  ")]),
    )
    add(
        "exif_offset_time_only.jpg",
        "OffsetTime (of ModifyDate) but no OffsetTimeOriginal",
        lambda: _exif_jpeg([(DTO, ASCII, "2018:06:01 12:00:00"), (OFFSET_TIME, ASCII, "+03:00")]),
    )
    add(
        "exif_offset_digitized.jpg",
        "DateTimeOriginal with OffsetTimeDigitized only",
        lambda: _exif_jpeg([(DTO, ASCII, "2018:06:02 12:00:00"), (OFFSET_DIGITIZED, ASCII, "+05:30")]),
    )
    add(
        "exif_digitized_only.jpg",
        "only DateTimeDigitized (CreateDate), with its offset and sub-seconds",
        lambda: _exif_jpeg(
            [
                (DTD, ASCII, "2017:04:05 06:07:08"),
                (SUBSEC_DIGITIZED, ASCII, "25"),
                (OFFSET_DIGITIZED, ASCII, "+01:00"),
            ]
        ),
    )
    add(
        "exif_modify_only.jpg",
        "only IFD0 DateTime (ModifyDate)",
        lambda: _exif_jpeg(ifd0=[*camera(), (MODIFY_DATE, ASCII, "2016:01:02 03:04:05")]),
    )
    add(
        "exif_original_and_modify.jpg",
        "DateTimeOriginal and a later ModifyDate",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2015:05:05 05:05:05")],
            ifd0=[*camera(), (MODIFY_DATE, ASCII, "2020:01:01 00:00:00")],
        ),
    )
    add(
        "exif_blank_date.jpg",
        "a blank DateTimeOriginal and a real CreateDate",
        lambda: _exif_jpeg([(DTO, ASCII, "0000:00:00 00:00:00"), (DTD, ASCII, "2014:03:03 03:03:03")]),
    )
    add(
        "exif_date_no_seconds.jpg",
        "a DateTimeOriginal without seconds",
        lambda: _exif_jpeg([(DTO, ASCII, "2013:09:10 11:12")]),
    )
    add(
        "exif_date_dashes.jpg",
        "a DateTimeOriginal written with dashes and a T",
        lambda: _exif_jpeg([(DTO, ASCII, "2012-10-11T12:13:14")]),
    )
    add(
        "exif_offset_utc.jpg",
        "offset +00:00",
        lambda: _exif_jpeg([(DTO, ASCII, "2011:11:11 11:11:11"), (OFFSET_ORIGINAL, ASCII, "+00:00")]),
    )
    add(
        "exif_offset_odd.jpg",
        "an offset no zone uses (+01:23)",
        lambda: _exif_jpeg([(DTO, ASCII, "2011:12:12 12:12:12"), (OFFSET_ORIGINAL, ASCII, "+01:23")]),
    )
    add(
        "exif_bigendian.jpg",
        "a big-endian EXIF block with offset and sub-seconds",
        lambda: jpeg(
            tiff_block(
                camera("NIKON CORPORATION", "NIKON D850"),
                [
                    (DTO, ASCII, "2019:07:08 09:10:11"),
                    (SUBSEC_ORIGINAL, ASCII, "07"),
                    (OFFSET_ORIGINAL, ASCII, "-07:00"),
                ],
                order=">",
            )
        ),
    )
    add(
        "exif_timezoneoffset.jpg",
        "TimeZoneOffset (0x882a, hours) instead of OffsetTimeOriginal",
        lambda: _exif_jpeg([(DTO, ASCII, "2010:06:07 08:09:10"), (0x882A, SSHORT, -4)]),
    )

    # Time zones from places and GPS clocks
    add(
        "gps_sydney_naive.jpg",
        "naive date, GPS in Sydney",
        lambda: _exif_jpeg([(DTO, ASCII, "2024:01:15 09:00:00")], gps_entries(*SYDNEY, 4.0)),
    )
    add(
        "gps_paris_naive.jpg",
        "naive date, GPS in Paris (summer time)",
        lambda: _exif_jpeg([(DTO, ASCII, "2023:07:01 16:45:30")], gps_entries(*PARIS, 35.0)),
    )
    add(
        "gps_newyork_offset.jpg",
        "GPS in New York and an explicit offset that wins",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2022:12:24 20:00:00"), (OFFSET_ORIGINAL, ASCII, "+01:00")], gps_entries(*NEW_YORK)
        ),
    )
    add(
        "gps_stamp_only.jpg",
        "no capture date but a GPS date and time stamp (UTC)",
        lambda: _exif_jpeg(gps=[(7, RATIONAL, ((14, 1), (30, 1), (15, 1))), (29, ASCII, "2021:09:10")]),
    )
    add(
        "gps_stamp_infers_offset.jpg",
        "naive date and a GPS time stamp 2 h earlier, no position",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2021:09:10 16:30:15")],
            [(7, RATIONAL, ((14, 1), (30, 1), (16, 1))), (29, ASCII, "2021:09:10")],
        ),
    )

    # GPS in odd forms
    add(
        "gps_decimal_degrees.jpg",
        "latitude and longitude as one decimal rational each",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:02:02 02:02:02")],
            [
                (1, ASCII, "N"),
                (2, RATIONAL, ((515074, 10000),)),
                (3, ASCII, "W"),
                (4, RATIONAL, ((1278, 10000),)),
            ],
        ),
    )
    add(
        "gps_decimal_minutes.jpg",
        "degrees and decimal minutes, seconds zero",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:03:03 03:03:03")],
            [
                (1, ASCII, "S"),
                (2, RATIONAL, ((22, 1), (546, 100), (0, 1))),
                (3, ASCII, "W"),
                (4, RATIONAL, ((43, 1), (1218, 100), (0, 1))),
            ],
        ),
    )
    add(
        "gps_no_refs.jpg",
        "coordinates without N/S/E/W references",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:04:04 04:04:04")], [(2, RATIONAL, dms(35.6586)), (4, RATIONAL, dms(139.7454))]
        ),
    )
    add(
        "gps_zero_zero.jpg",
        "coordinates 0, 0 (a phone without a fix)",
        lambda: _exif_jpeg([(DTO, ASCII, "2020:05:05 05:05:05")], gps_entries(0.0, 0.0)),
    )
    add(
        "gps_out_of_range.jpg",
        "a latitude of 95 degrees",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:06:06 06:06:06")],
            [
                (1, ASCII, "N"),
                (2, RATIONAL, ((95, 1), (0, 1), (0, 1))),
                (3, ASCII, "E"),
                (4, RATIONAL, dms(10.0)),
            ],
        ),
    )
    add(
        "gps_zero_denominator.jpg",
        "a seconds rational with denominator 0",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:07:07 07:07:07")],
            [
                (1, ASCII, "N"),
                (2, RATIONAL, ((52, 1), (31, 1), (0, 0))),
                (3, ASCII, "E"),
                (4, RATIONAL, ((13, 1), (24, 1), (0, 0))),
            ],
        ),
    )
    add(
        "gps_lowercase_ref.jpg",
        "references in lower case",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2020:08:08 08:08:08")],
            [(1, ASCII, "s"), (2, RATIONAL, dms(34.6037)), (3, ASCII, "w"), (4, RATIONAL, dms(58.3816))],
        ),
    )

    # XMP
    add(
        "xmp_only_createdate.jpg",
        "no EXIF; XMP xmp:CreateDate with offset",
        lambda: jpeg(xmp=xmp_packet(xmp_CreateDate="2019-03-04T05:06:07+05:30")),
    )
    add(
        "xmp_only_datetimeoriginal.jpg",
        "no EXIF; XMP exif:DateTimeOriginal with fraction",
        lambda: jpeg(xmp=xmp_packet(exif_DateTimeOriginal="2018-01-02T03:04:05.678")),
    )
    add(
        "xmp_only_photoshop.jpg",
        "no EXIF; XMP photoshop:DateCreated, a date only",
        lambda: jpeg(xmp=xmp_packet(photoshop_DateCreated="2017-06-07")),
    )
    add(
        "xmp_photoshop_time.jpg",
        "no EXIF; XMP photoshop:DateCreated with time and Z",
        lambda: jpeg(xmp=xmp_packet(photoshop_DateCreated="2016-08-09T10:11:12Z")),
    )
    add(
        "xmp_and_exif_no_date.jpg",
        "EXIF camera without date; XMP CreateDate",
        lambda: _exif_jpeg(xmp=xmp_packet(xmp_CreateDate="2015-10-11T12:13:14")),
    )
    add(
        "xmp_differs_from_exif.jpg",
        "EXIF DateTimeOriginal and a different XMP DateTimeOriginal",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2014:04:04 14:14:14")], xmp=xmp_packet(exif_DateTimeOriginal="2013-03-03T13:13:13")
        ),
    )
    add(
        "xmp_camera.jpg",
        "make and model in XMP only",
        lambda: jpeg(
            xmp=xmp_packet(
                tiff_Make="FUJIFILM", tiff_Model="X-T4", exif_DateTimeOriginal="2022-05-06T07:08:09+09:00"
            )
        ),
    )
    add(
        "xmp_modify_only.jpg",
        "no EXIF; XMP xmp:ModifyDate only",
        lambda: jpeg(xmp=xmp_packet(xmp_ModifyDate="2012-02-03T04:05:06")),
    )

    # Maker notes
    add(
        "makernote_nikon_zone.jpg",
        "naive date; Nikon maker note time zone +01:00 with DST",
        lambda: jpeg(
            tiff_block(
                camera("NIKON CORPORATION", "NIKON Z 6"),
                [(DTO, ASCII, "2021:07:04 12:00:00"), (MAKERNOTE, UNDEFINED, nikon_makernote(60, True))],
            )
        ),
    )
    add(
        "makernote_nikon_nodst.jpg",
        "naive date; Nikon maker note time zone -05:00",
        lambda: jpeg(
            tiff_block(
                camera("NIKON CORPORATION", "NIKON D750"),
                [(DTO, ASCII, "2021:01:04 12:00:00"), (MAKERNOTE, UNDEFINED, nikon_makernote(-300, False))],
            )
        ),
    )
    add(
        "makernote_canon_zone.jpg",
        "naive date; Canon TimeInfo time zone +09:00",
        lambda: jpeg(
            tiff_block(
                camera(), [(DTO, ASCII, "2020:10:10 10:10:10"), (MAKERNOTE, UNDEFINED, canon_makernote(540))]
            )
        ),
    )

    # Camera names
    add(
        "camera_padded.jpg",
        "make and model padded with spaces and NULs",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2019:01:01 01:01:01")],
            ifd0=[(0x010F, ASCII, b"OLYMPUS IMAGING CORP.  \x00\x00"), (0x0110, ASCII, b"E-M5  \x00")],
        ),
    )
    add(
        "camera_none.jpg",
        "EXIF with a date but no camera",
        lambda: _exif_jpeg([(DTO, ASCII, "2019:02:02 02:02:02")], ifd0=[]),
    )

    # Sizes
    add(
        "size_stale_exif.jpg",
        "ExifImageWidth/Height of the original, the JPEG resized since",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2019:03:03 03:03:03"), (0xA002, LONG, 4000), (0xA003, LONG, 3000)], size=(80, 60)
        ),
    )
    add(
        "size_rotated.jpg",
        "orientation 6 (portrait)",
        lambda: _exif_jpeg(
            [(DTO, ASCII, "2019:04:04 04:04:04")],
            ifd0=[(0x010F, ASCII, "Apple"), (0x0110, ASCII, "iPhone 12"), (0x0112, SHORT, 6)],
            size=(96, 64),
        ),
    )

    # Damaged EXIF
    def truncated() -> bytes:
        block = tiff_block(
            camera(),
            [
                (DTO, ASCII, "2018:08:08 08:08:08"),
                (SUBSEC_ORIGINAL, ASCII, "5"),
                (OFFSET_ORIGINAL, ASCII, "+02:00"),
                (0xA434, ASCII, "EF 50mm f/1.8 II lens"),
            ],
        )
        return jpeg(block[: len(block) - 30])

    add("damaged_truncated.jpg", "EXIF block cut short at the end (its last value lost)", truncated)

    def bad_pointer() -> bytes:
        block = tiff_block(camera(), [(DTO, ASCII, "2018:09:09 09:09:09")])
        return jpeg(with_entry_value(block, EXIF_POINTER, struct.pack("<I", 60000)))

    add("damaged_exif_pointer.jpg", "ExifIFD pointer past the block", bad_pointer)

    def bad_value_offset() -> bytes:
        block = tiff_block(
            camera(), [(DTD, ASCII, "2018:10:10 10:10:10"), (DTO, ASCII, "2018:10:10 10:10:10")]
        )
        return jpeg(with_entry_value(block, DTO, struct.pack("<I", 0xFFFF00)))

    add(
        "damaged_value_offset.jpg",
        "DateTimeOriginal's value offset past the block; CreateDate fine",
        bad_value_offset,
    )

    def bad_count() -> bytes:
        block = bytearray(
            tiff_block(camera(), [(DTO, ASCII, "2018:11:11 11:11:11"), (OFFSET_ORIGINAL, ASCII, "-03:00")])
        )
        exif_at = struct.unpack_from("<I", block, block.index(struct.pack("<HH", EXIF_POINTER, LONG)) + 8)[0]
        struct.pack_into("<H", block, exif_at, 40)  # claims 40 entries, has 2
        return jpeg(bytes(block))

    add("damaged_entry_count.jpg", "ExifIFD claims more entries than the block holds", bad_count)

    def garbage_ifd1() -> bytes:
        block = bytearray(tiff_block(camera(), [(DTO, ASCII, "2018:12:12 12:12:12")]))
        count = struct.unpack_from("<H", block, 8)[0]
        struct.pack_into("<I", block, 8 + 2 + 12 * count, 0xDEADBEEF)  # next-IFD pointer
        return jpeg(bytes(block))

    add("damaged_ifd1_pointer.jpg", "IFD0's next-IFD pointer is garbage", garbage_ifd1)

    def two_exif() -> bytes:
        good = tiff_block(camera(), [(DTO, ASCII, "2017:12:12 12:12:12")])
        return jpeg(good, extra=[app1(b"Exif\x00\x00" + b"\xff" * 40)])

    add("damaged_first_app1.jpg", "a garbage Exif segment before the real one", two_exif)

    def wrong_app1_length() -> bytes:
        data = bytearray(_exif_jpeg([(DTO, ASCII, "2017:11:11 11:11:11")]))
        struct.pack_into(">H", data, 4, struct.unpack_from(">H", data, 4)[0] - 20)  # APP1 says 20 bytes less
        return bytes(data)

    add("damaged_app1_length.jpg", "APP1 segment length 20 bytes short", wrong_app1_length)

    # Other containers
    add(
        "tiff_camera.tif",
        "a TIFF whose IFD0 holds camera and date, EXIF IFD sub-seconds and offset",
        lambda: tiff_file(
            [
                (0x010F, ASCII, "Nikon"),
                (0x0110, ASCII, "COOLSCAN V"),
                (MODIFY_DATE, ASCII, "2009:09:09 09:09:09"),
            ],
            [
                (DTO, ASCII, "2009:08:08 08:08:08"),
                (SUBSEC_ORIGINAL, ASCII, "250"),
                (OFFSET_ORIGINAL, ASCII, "+08:00"),
            ],
            gps_entries(*SYDNEY),
        ),
    )
    add(
        "png_exif.png",
        "a PNG with an eXIf chunk",
        lambda: png(
            tiff_block(
                camera("Google", "Pixel 7"),
                [(DTO, ASCII, "2023:03:03 13:13:13"), (OFFSET_ORIGINAL, ASCII, "-08:00")],
            )
        ),
    )
    add(
        "png_xmp.png",
        "a PNG with XMP only",
        lambda: png(xmp=xmp_packet(xmp_CreateDate="2022-04-05T06:07:08.5+02:00")),
    )
    add("png_plain.png", "a PNG without metadata", lambda: png())
    add(
        "webp_exif.webp",
        "a WebP with EXIF",
        lambda: webp(
            tiff_block(
                camera("samsung", "SM-G991B"),
                [
                    (DTO, ASCII, "2021:11:12 13:14:15"),
                    (SUBSEC_ORIGINAL, ASCII, "678"),
                    (OFFSET_ORIGINAL, ASCII, "+01:00"),
                ],
                gps_entries(*PARIS),
            )
        ),
    )
    add(
        "heic_offset.heic",
        "a HEIC as an iPhone writes it: offset, sub-seconds, GPS, 4032x3024",
        lambda: heic(
            tiff_block(
                camera("Apple", "iPhone 13 Pro"),
                [
                    (DTO, ASCII, "2022:06:07 08:09:10"),
                    (SUBSEC_ORIGINAL, ASCII, "456"),
                    (OFFSET_ORIGINAL, ASCII, "+02:00"),
                    (0xA002, LONG, 4032),
                    (0xA003, LONG, 3024),
                ],
                gps_entries(*PARIS, 40.0),
                order=">",
            )
        ),
    )
    add(
        "heic_naive.heic",
        "a HEIC without offset",
        lambda: heic(
            tiff_block(camera("Apple", "iPhone 8"), [(DTO, ASCII, "2018:02:03 04:05:06")], order=">"),
            size=(3024, 4032),
        ),
    )

    # Videos
    add(
        "video_mvhd.mp4",
        "an MP4 with only its mvhd creation time (UTC)",
        lambda: quicktime(datetime(2023, 7, 14, 18, 30, 5, tzinfo=timezone.utc), brand=b"isom"),
    )
    add(
        "video_apple_keys.mov",
        "an iPhone movie: Apple creationdate with offset, make, model, place",
        lambda: quicktime(
            datetime(2021, 6, 7, 6, 9, 10, tzinfo=timezone.utc),
            {
                "com.apple.quicktime.creationdate": "2021-06-07T08:09:10+0200",
                "com.apple.quicktime.make": "Apple",
                "com.apple.quicktime.model": "iPhone 12 mini",
                "com.apple.quicktime.location.ISO6709": "+48.8584+002.2945+035.000/",
            },
        ),
    )
    add(
        "video_zero_time.mp4",
        "an MP4 whose creation time is 0 (1904)",
        lambda: quicktime(None, brand=b"isom"),
    )
    add(
        "video_keys_no_offset.mov",
        "Apple creationdate without offset",
        lambda: quicktime(
            datetime(2020, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
            {"com.apple.quicktime.creationdate": "2020-01-02T10:04:05"},
        ),
    )
    # Added after the reader was written (a check that it was not fitted to the files above)
    add(
        "later_offset_no_colon.jpg",
        "OffsetTimeOriginal written +0530",
        lambda: _exif_jpeg([(DTO, ASCII, "2019:11:12 13:14:15"), (OFFSET_ORIGINAL, ASCII, "+0530")]),
    )
    add(
        "later_digitized_gps_tokyo.jpg",
        "only CreateDate, no offset, GPS in Tokyo",
        lambda: _exif_jpeg([(DTD, ASCII, "2018:04:01 08:00:00")], gps_entries(35.6586, 139.7454)),
    )
    add(
        "later_xmp_fraction_z.jpg",
        "no EXIF; XMP CreateDate with fraction and Z",
        lambda: jpeg(xmp=xmp_packet(xmp_CreateDate="2017-02-03T04:05:06.25Z")),
    )
    add(
        "later_xmp_element_form.jpg",
        "no EXIF; XMP CreateDate as an element, with offset",
        lambda: jpeg(
            xmp=xmp_packet().replace(
                "/></rdf:RDF>",
                "><xmp:CreateDate>2016-05-06T07:08:09-04:00</xmp:CreateDate></rdf:Description></rdf:RDF>",
            )
        ),
    )
    add(
        "later_canon_zone_and_gps.jpg",
        "Canon maker-note zone -04:00 and GPS in Paris: the zone tag wins",
        lambda: jpeg(
            tiff_block(
                camera(),
                [(DTO, ASCII, "2021:08:09 10:11:12"), (MAKERNOTE, UNDEFINED, canon_makernote(-240))],
                gps_entries(*PARIS),
            )
        ),
    )
    add(
        "later_gps_and_stamp.jpg",
        "big-endian, GPS in New York and a GPS time stamp: the place wins",
        lambda: jpeg(
            tiff_block(
                camera("SONY", "ILCE-7M3"),
                [(DTO, ASCII, "2022:07:04 21:30:00")],
                [
                    *gps_entries(*NEW_YORK),
                    (7, RATIONAL, ((1, 1), (30, 1), (0, 1))),
                    (29, ASCII, "2022:07:05"),
                ],
                order=">",
            )
        ),
    )
    add(
        "later_png_xmp_naive.png",
        "a PNG with XMP exif:DateTimeOriginal, no offset",
        lambda: png(xmp=xmp_packet(exif_DateTimeOriginal="2015-09-10T11:12:13")),
    )
    add(
        "later_subsec_long_offset.jpg",
        "six 9s of sub-seconds and offset -03:30",
        lambda: _exif_jpeg(
            [
                (DTO, ASCII, "2014:12:31 23:59:59"),
                (SUBSEC_ORIGINAL, ASCII, "999999"),
                (OFFSET_ORIGINAL, ASCII, "-03:30"),
            ]
        ),
    )
    add(
        "later_impossible_date.jpg",
        "DateTimeOriginal on 30 February; a real CreateDate",
        lambda: _exif_jpeg([(DTO, ASCII, "2020:02:30 10:00:00"), (DTD, ASCII, "2020:02:28 10:00:00")]),
    )
    add(
        "later_mov_negative_offset.mov",
        "Apple creationdate -0700, make and model",
        lambda: quicktime(
            datetime(2019, 3, 3, 20, 0, 0, tzinfo=timezone.utc),
            {
                "com.apple.quicktime.creationdate": "2019-03-03T13:00:00-0700",
                "com.apple.quicktime.make": "Apple",
                "com.apple.quicktime.model": "iPhone XS",
            },
        ),
    )
    add(
        "later_heic_gps_naive.heic",
        "a HEIC without offset, GPS in Sydney",
        lambda: heic(
            tiff_block(
                camera("Apple", "iPhone 11"),
                [(DTO, ASCII, "2020:12:25 08:00:00")],
                gps_entries(*SYDNEY),
                order=">",
            ),
            size=(4032, 3024),
        ),
    )
    return s


SAMPLES = _samples()


def build_corpus(folder: Path) -> list[Path]:
    """Writes every sample into `folder` with the corpus mtime; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for sample in SAMPLES:
        path = folder / sample.name
        path.write_bytes(sample.build())
        os.utime(path, (CORPUS_MTIME, CORPUS_MTIME))
        paths.append(path)
    return paths


# --- agreement with a real Immich -----------------------------------------------------------------------------

EXPECTED_PATH = Path(__file__).parent / "data" / "immich_exif.json"
FIELDS = ("date", "subseconds", "offset", "make", "model", "gps", "size")
VIDEO_EXTENSIONS = frozenset({"mp4", "mov"})
GPS_TOLERANCE_DEGREES = 1e-5  # about a metre


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def immich_facts(exif: dict[str, object]) -> dict[str, object]:
    """What Immich showed, as comparable facts. A date equal to the uploads' fileCreatedAt (the corpus mtime)
    is the server's fallback: it found no date in the file. The offset is localDateTime (the wall clock,
    stored as if UTC) minus dateTimeOriginal (the instant), where Immich knew a time zone."""
    facts: dict[str, object] = dict.fromkeys(FIELDS)
    original = _instant(str(exif["dateTimeOriginal"]))
    if original.timestamp() != CORPUS_MTIME:
        local = _instant(str(exif["localDateTime"])).replace(tzinfo=None)
        facts["date"] = local.isoformat(timespec="seconds")
        facts["subseconds"] = original.microsecond // 1000
        if exif.get("timeZone"):
            facts["offset"] = round((local - original.replace(tzinfo=None)).total_seconds() / 60)
    facts["make"], facts["model"] = exif.get("make"), exif.get("model")
    if exif.get("latitude") is not None and exif.get("longitude") is not None:
        facts["gps"] = (exif["latitude"], exif["longitude"])
    if exif.get("exifImageWidth") and exif.get("exifImageHeight"):
        facts["size"] = (exif["exifImageWidth"], exif["exifImageHeight"])
    return facts


def reader_facts(path: Path, use_exiftool: bool | None = None) -> dict[str, object]:
    """What the tool's reader says about the same file, as the same facts (dates from the file only)."""
    from utils import read_metadata

    kind = "video" if path.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS else "image"
    kwargs = {} if use_exiftool is None else {"use_exiftool": use_exiftool}
    meta = read_metadata(path, kind, **kwargs)
    facts: dict[str, object] = dict.fromkeys(FIELDS)
    if meta.date_taken is not None:
        facts["date"] = meta.date_taken.replace(tzinfo=None).isoformat(timespec="seconds")
        facts["subseconds"] = meta.date_taken.microsecond // 1000
        offset = meta.date_taken.utcoffset()
        facts["offset"] = None if offset is None else round(offset.total_seconds() / 60)
    info = meta.info
    facts["make"], facts["model"] = info.get("camera_make"), info.get("camera_model")
    if info.get("gps_latitude") is not None and info.get("gps_longitude") is not None:
        facts["gps"] = (info["gps_latitude"], info["gps_longitude"])
    if info.get("width") and info.get("height"):
        facts["size"] = (info["width"], info["height"])
    return facts


def compare(ours: dict[str, object], theirs: dict[str, object]) -> list[tuple[str, bool, str]]:
    """(field, agrees, "ours vs theirs") for each fact either side has (sub-seconds: where one is not 0)."""
    rows = []
    for name in FIELDS:
        mine, real = ours[name], theirs[name]
        if name == "subseconds" and not (mine or real):
            continue
        if mine is None and real is None:
            continue
        if name == "gps" and mine is not None and real is not None:
            same = all(abs(a - b) <= GPS_TOLERANCE_DEGREES for a, b in zip(mine, real, strict=True))  # type: ignore[attr-defined]
        else:
            same = mine == real
        rows.append((name, same, f"ours {mine!r} vs Immich {real!r}"))
    return rows
