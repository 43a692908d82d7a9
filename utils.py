"""Shared helpers with no I/O policy of their own: file fingerprints, media metadata, path encoding, formatting.

This module owns how a file is read to identify it (one pass computing SHA-256 for the database and SHA-1, the
checksum Immich compares), how capture date, camera settings, GPS and dimensions are pulled from images
(ExifRead, Pillow headers) and videos (hachoir), how a file name that is not valid UTF-8 is stored in a text
column and recovered exactly, and how byte counts, durations and timestamps are written for people and for the
Immich API. It prints nothing, runs no SQL and makes no HTTP requests; problems with a file's content come back
as `MediaMetadata.warnings`, problems opening a file as `OSError`.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import logging
import math
import os
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from io import BytesIO
from numbers import Rational
from typing import TYPE_CHECKING, Any, BinaryIO

from config import RAW_EXTENSIONS

if TYPE_CHECKING:
    from PIL import ImageFile

log = logging.getLogger(__name__)

DEFAULT_HASH_CHUNK_BYTES = 1 << 20

# ExifRead warns through its own logger about every odd tag and "File format not recognized" for each file
# without EXIF; those would flood the console. What matters to us comes back in MediaMetadata.warnings.
logging.getLogger("exifread").setLevel(logging.ERROR)


@functools.cache
def _hachoir() -> Any:
    """hachoir, imported on first use (it costs 50 ms at start-up, and most runs read no video).

    hachoir writes "[warn]" and "[err!]" lines straight to stderr. `quiet` drops its warnings; errors (for
    example "Error during metadata extraction") still print unless printing is off, so send them to a logger.
    """
    import hachoir.metadata
    import hachoir.metadata.metadata
    import hachoir.parser
    from hachoir.core import config as hachoir_config
    from hachoir.core.log import log as hachoir_log

    hachoir_config.quiet = True
    hachoir_log.use_print = False
    logger = logging.getLogger("hachoir")
    hachoir_log.on_new_message = lambda level, prefix, text, ctxt: logger.debug("%s %s", prefix, text)
    return hachoir


@functools.cache
def _pil() -> Any:
    """Pillow, imported on first use: a run that reads no new image (the nightly unchanged one) never
    pays its import."""
    from PIL import Image

    # Only image headers are read here, never pixels, so a very large image is no danger; see _open_image().
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # Pillow reports damaged content (e.g. "Corrupt EXIF data" while reading a JPEG's DPI) through
    # `warnings`, which would print on stderr from worker threads; MediaMetadata.warnings reports it instead.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
    return Image


@functools.cache
def _exifread() -> Any:
    import exifread

    return exifread


# Pillow cannot open HEIF or JPEG XL without plugins, and opens TIFF-based RAW files (NEF, CR2, ARW, DNG...)
# as TIFF but reports the small preview in IFD0, not the sensor size. For these, width and height come from
# EXIF (when present) and Pillow's failure is expected, so it is not a warning.
_EXIF_ONLY_EXTENSIONS = frozenset({"heic", "heif", "hif", "jxl", *RAW_EXTENSIONS})

# hachoir containers whose creation time is defined as UTC: QuickTime/MP4 mvhd, Matroska DateUTC, ASF
# FILETIME. Others (AVI's IDIT/ICRD text) hold local wall-clock time and stay naive.
_UTC_CONTAINERS = frozenset({"mov", "matroska", "asf"})
_VIDEO_CATEGORIES = frozenset({"video", "container"})
# Zero creation times (1904-01-01 in QuickTime, 1970-01-01 from Unix-epoch writers) mean "not set".
_FIRST_REAL_VIDEO_YEAR = 1971


# --- Fingerprints -----------------------------------------------------------------------------------------


HEAD_BYTES = 256 << 10  # the start of a file kept from the hashing read: a JPEG's header lies within it


# What tells one file's state from another's: the same inode, size, modification and change time. ctime moves
# with every write and metadata change and cannot be set back (an editor that restores the mtime still moves it).
FileIdentity = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def file_identity(st: os.stat_result) -> FileIdentity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Fingerprint:
    sha256: str  # hex; the project's identity of a file's content
    sha1: str  # hex; Immich's checksum (it shows it in base64)
    size_bytes: int
    mtime_ns: int
    head: bytes = b""  # with keep_head: the file's first bytes, so its metadata needs no second read
    # Of the file whose bytes were hashed (zip members: zeros); two fingerprints of the same bytes are equal.
    identity: FileIdentity = field(default=(0, 0, 0, 0, 0), compare=False)


class FileChangedError(OSError):
    """The file's size or modification time changed while it was hashed, twice in a row."""


def fingerprint_file(
    path: str | bytes, chunk_size: int = DEFAULT_HASH_CHUNK_BYTES, keep_head: bool = False, attempts: int = 2
) -> Fingerprint:
    """SHA-256 and SHA-1 of a file in one read pass, with the size, mtime and identity the hashes belong to.

    A file that changes while it is read (size, mtime or ctime moved: a copy still arriving, an editor
    saving) is read again, up to `attempts` reads in all; then FileChangedError. Other OSErrors (missing file,
    no permission) propagate unchanged.
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, not {chunk_size}")
    for attempt in range(1, attempts + 1):
        fingerprint = _hash_if_unchanged(path, chunk_size, keep_head)
        if fingerprint is not None:
            return fingerprint
        log.debug("%s changed while being hashed (attempt %d)", display_path(path), attempt)
    raise FileChangedError(errno.EAGAIN, "file changed while being read", path)


def fingerprint_stream(handle: BinaryIO, chunk_size: int = DEFAULT_HASH_CHUNK_BYTES) -> Fingerprint:
    """SHA-256 and SHA-1 of a stream (a zip member) in one pass, with its first bytes kept for metadata."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    total = 0
    head = b""
    while chunk := handle.read(chunk_size):
        if not total:
            head = chunk[:HEAD_BYTES]
        sha256.update(chunk)
        sha1.update(chunk)
        total += len(chunk)
    return Fingerprint(sha256.hexdigest(), sha1.hexdigest(), total, 0, head)


def _hash_if_unchanged(path: str | bytes, chunk_size: int, keep_head: bool) -> Fingerprint | None:
    """Hashes the file once; None when its size or mtime moved during the read."""
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1()
    total = 0
    head = b""
    with open(path, "rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        # One buffer for every chunk: readinto() fills it in place. No bigger than the file (+1 to see it
        # end): a fresh 1 MiB buffer per 4 KB photo cost more than hashing it.
        view = memoryview(bytearray(min(chunk_size, before.st_size + 1)))
        while n := f.readinto(view):
            chunk = view[:n]
            if keep_head and not total:
                head = bytes(chunk[:HEAD_BYTES])
            sha256.update(chunk)
            sha1.update(chunk)
            total += n
        after = os.fstat(f.fileno())
    identity = file_identity(after)
    if total != before.st_size or identity != file_identity(before):
        return None
    return Fingerprint(sha256.hexdigest(), sha1.hexdigest(), total, after.st_mtime_ns, head, identity)


# --- Metadata -------------------------------------------------------------------------------------------------


@dataclass
class MediaMetadata:
    """What could be read from one file. `date_taken` is aware when the offset is known, naive when EXIF gives
    no offset, None when nothing was found; `info` is JSON-serialisable and holds only keys that were found."""

    date_taken: datetime | None = None
    date_source: str = "none"  # "exif" | "video" | "none"
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _warn(meta: MediaMetadata, path: str | bytes, reason: str) -> None:
    meta.warnings.append(reason)
    log.debug("%s: %s", display_path(path), reason)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def read_metadata(path: str | bytes, kind: str, head: bytes = b"", size_bytes: int = 0) -> MediaMetadata:
    """Metadata of an "image" or a "video"; never raises for bad content (see the two readers). `head`, the
    file's first bytes already read (and `size_bytes`, its size), spares a JPEG a second read."""
    if kind == "image":
        return read_image_metadata(path, head=head, size_bytes=size_bytes)
    if kind == "video":
        return read_video_metadata(path)
    raise ValueError(f"kind must be 'image' or 'video', not {kind!r}")


def read_image_metadata(
    path: str | bytes,
    fast_jpeg: bool = True,
    head: bytes = b"",
    size_bytes: int = 0,
    opener: Callable[[], BinaryIO] | None = None,
) -> MediaMetadata:
    """EXIF (ExifRead) and header fields of an image, from one open file, never decoding pixels. A JPEG is
    read only up to its image data: the EXIF block goes to ExifRead alone and the size comes from the frame
    header, so neither Pillow nor most of the file is touched (`fast_jpeg=False` reads it the general way:
    Pillow for the header, ExifRead over the file; both give the same fields). Corrupt, truncated, empty or
    misnamed files give a MediaMetadata with `warnings` and whatever was read. With `head` (the file's
    first bytes) a JPEG whose header lies within them is not opened again; `opener` opens what is no plain
    file (a zip member), `path` then only names it.
    """
    meta = MediaMetadata()
    if fast_jpeg and head.startswith(b"\xff\xd8") and extension_of(path) not in _EXIF_ONLY_EXTENSIONS:
        header = _read_jpeg_header(BytesIO(head))
        if header is not None and (header.complete or len(head) >= size_bytes):
            tags = _read_tiff_tags(header.exif, path, meta) if header.exif else {}
            _apply_jpeg_header(header, path, meta)
            if header.exif is not None and not tags:
                _warn(meta, path, "EXIF block present but unreadable (corrupt)")
            _apply_exif(tags, path, meta)
            return meta
    try:
        with opener() if opener is not None else open(path, "rb") as f:
            if (size_bytes if opener is not None else os.fstat(f.fileno()).st_size) == 0:
                _warn(meta, path, "empty file")
                return meta
            exif_only = extension_of(path) in _EXIF_ONLY_EXTENSIONS
            header = _read_jpeg_header(f) if fast_jpeg and not exif_only else None
            if header is not None:
                tags = _read_tiff_tags(header.exif, path, meta) if header.exif else {}
                has_exif_block = header.exif is not None
                _apply_jpeg_header(header, path, meta)
            else:
                f.seek(0)
                tags = _read_exif_tags(f, path, meta)
                has_exif_block = False if exif_only else _read_image_header(f, path, meta)
    except OSError as exc:
        _warn(meta, path, f"cannot read the file: {exc.strerror or exc}")
        return meta
    if has_exif_block and not tags:
        # ExifRead gives up silently on a damaged block (bad offsets, garbage IFDs); the header showed it.
        _warn(meta, path, "EXIF block present but unreadable (corrupt)")
    _apply_exif(tags, path, meta)
    return meta


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field


@dataclass
class JpegHeader:
    exif: bytes | None = None  # the TIFF block of the first APP1 "Exif" segment
    width: int = 0
    height: int = 0
    complete: bool = False  # the image data (SOS) was reached: nothing was cut off in the header


def _read_jpeg_header(f: BinaryIO) -> JpegHeader | None:
    """The marker segments of a JPEG up to its image data; None when the file does not start like one."""
    if f.read(2) != b"\xff\xd8":
        return None
    header = JpegHeader()
    while True:
        byte = f.read(1)
        if not byte:
            return header
        if byte != b"\xff":
            return header  # not a marker where one must be: damaged; what was read stands
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            return header
        code = marker[0]
        if code in _JPEG_STANDALONE:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            header.complete = True
            return header
        length_bytes = f.read(2)
        if len(length_bytes) < 2:
            return header
        length = int.from_bytes(length_bytes, "big") - 2
        if length < 0:
            return header
        if code == 0xE1 and header.exif is None:
            segment = f.read(length)
            if segment.startswith(b"Exif\x00\x00"):
                header.exif = segment[6:]
        elif code in _JPEG_SOF and not header.width:
            segment = f.read(length)
            if len(segment) >= 5:
                header.height = int.from_bytes(segment[1:3], "big")
                header.width = int.from_bytes(segment[3:5], "big")
        else:
            f.seek(length, os.SEEK_CUR)


def _apply_jpeg_header(header: JpegHeader, path: str | bytes, meta: MediaMetadata) -> None:
    if header.width > 0 and header.height > 0:
        meta.info["width"], meta.info["height"] = header.width, header.height
    elif not header.complete:
        _warn(meta, path, "image header unreadable: the file ends inside it (truncated)")
    meta.info["format"] = "JPEG"
    meta.info["mime"] = "image/jpeg"


def read_video_metadata(path: str | bytes) -> MediaMetadata:
    """Creation time (UTC for MP4/QuickTime, Matroska, ASF), duration and frame size of a video, via hachoir.

    Unreadable or misnamed files give a MediaMetadata with `warnings` and whatever was read.
    """
    meta = MediaMetadata()
    try:
        # Opened by name as str: hachoir labels its stream with the file's name and fails on a bytes name;
        # os.fsdecode's surrogate escapes reopen a non-UTF-8 name exactly.
        with open(os.fsdecode(path), "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                _warn(meta, path, "empty file")
                return meta
            parser = _hachoir().parser.createParser(f)
            if parser is None:
                _warn(meta, path, "not a video container hachoir recognises")
                return meta
            with parser:
                container = str(parser.PARSER_TAGS.get("id", ""))
                if parser.PARSER_TAGS.get("category") not in _VIDEO_CATEGORIES:
                    _warn(meta, path, f"not a video: the content looks like {container}")
                    return meta
                metadata = _hachoir().metadata.extractMetadata(parser)
    except OSError as exc:
        _warn(meta, path, f"cannot read the file: {exc.strerror or exc}")
        return meta
    # hachoir raises many exception types for malformed input; this is an extraction function, where a
    # broad catch is right: bad content must become a warning, never stop a scan.
    except Exception as exc:
        _warn(meta, path, f"video container unreadable: {_reason(exc)}")
        return meta
    if not metadata:
        _warn(meta, path, f"no metadata found in the {container} container")
        return meta
    meta.info["format"] = container
    _apply_video_metadata(metadata, container, meta)
    return meta


def _read_exif_tags(f: BinaryIO, path: str | bytes, meta: MediaMetadata) -> dict[str, Any]:
    # ExifRead fails in many ways on damaged EXIF (IndexError, struct.error, ValueError...). This is an
    # extraction function, where a broad catch is right: bad content becomes a warning, never an exception.
    try:
        return _exifread().process_file(f, details=False, extract_thumbnail=False)
    except Exception as exc:
        _warn(meta, path, f"EXIF unreadable: {_reason(exc)}")
        return {}


def _read_tiff_tags(tiff: bytes, path: str | bytes, meta: MediaMetadata) -> dict[str, Any]:
    # A damaged block fails in many ways (struct.error, KeyError, ValueError...); like ExifRead, give up
    # on it quietly: the caller reports "EXIF block present but unreadable (corrupt)".
    try:
        return tiff_tags(tiff)
    except Exception as exc:
        log.debug("%s: EXIF block unreadable: %s", display_path(path), _reason(exc))
        return {}


# The EXIF tags this tool stores, by IFD, named as ExifRead names them (so one interpretation serves both):
# a JPEG's block is read for exactly these, at a tenth of ExifRead's cost, which walks every tag.
_TIFF_WANTED = {
    "Image": {0x010F: "Make", 0x0110: "Model", 0x0112: "Orientation", 0x0131: "Software", 0x0132: "DateTime"},
    "EXIF": {
        0x829A: "ExposureTime", 0x829D: "FNumber", 0x8827: "ISOSpeedRatings", 0x9003: "DateTimeOriginal",
        0x9004: "DateTimeDigitized", 0x9010: "OffsetTime", 0x9011: "OffsetTimeOriginal",
        0x9012: "OffsetTimeDigitized", 0x920A: "FocalLength", 0xA002: "ExifImageWidth",
        0xA003: "ExifImageLength", 0xA434: "LensModel",
    },
    "GPS": {1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude",
            5: "GPSAltitudeRef", 6: "GPSAltitude"},
}  # fmt: skip
_EXIF_IFD_POINTER, _GPS_IFD_POINTER = 0x8769, 0x8825
# TIFF field types: (struct code, bytes per value); 2 is ASCII, 5 and 10 are (signed) rationals.
_TIFF_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1),
               8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8)}  # fmt: skip
_MAX_IFD_ENTRIES = 1000


def tiff_tags(tiff: bytes) -> dict[str, Any]:
    """The wanted tags of a TIFF/EXIF block as {"EXIF FNumber": [Fraction(14, 5)], "Image Make": "Canon"}:
    ASCII as text cut at its first NUL (bytes when not UTF-8), numbers as lists, rationals as Fractions
    (None for a zero denominator), the values ExifRead gives. Raises on a damaged block."""
    order = {b"II": "<", b"MM": ">"}[tiff[:2]]
    if struct.unpack_from(order + "H", tiff, 2)[0] != 42:
        raise ValueError("not a TIFF header")
    tags: dict[str, Any] = {}
    pointers = _read_ifd(tiff, order, struct.unpack_from(order + "I", tiff, 4)[0], "Image", tags)
    for pointer, prefix in ((_EXIF_IFD_POINTER, "EXIF"), (_GPS_IFD_POINTER, "GPS")):
        if pointer in pointers:
            _read_ifd(tiff, order, pointers[pointer], prefix, tags)
    return tags


def _read_ifd(tiff: bytes, order: str, offset: int, prefix: str, tags: dict[str, Any]) -> dict[int, int]:
    """Reads one IFD's wanted tags into `tags`; returns the sub-IFD pointers it holds."""
    wanted = _TIFF_WANTED[prefix]
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    if count > _MAX_IFD_ENTRIES or offset + 2 + 12 * count > len(tiff):
        raise ValueError(f"{prefix} IFD runs past the block")
    pointers = {}
    entries = struct.iter_unpack(order + "HHII", tiff[offset + 2 : offset + 2 + 12 * count])
    for number, (tag, kind, n, pointer) in enumerate(entries):
        if prefix == "Image" and tag in (_EXIF_IFD_POINTER, _GPS_IFD_POINTER):
            pointers[tag] = pointer
            continue
        if tag not in wanted or kind not in _TIFF_TYPES:
            continue
        code, size = _TIFF_TYPES[kind]
        length = size * n
        where = offset + 2 + 12 * number + 8 if length <= 4 else pointer
        if where + length > len(tiff):
            raise ValueError(f"{prefix} {wanted[tag]} points past the block")
        if kind == 2:
            raw = tiff[where : where + length].split(b"\x00", 1)[0]
            try:
                value: Any = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = raw
        else:
            numbers = struct.unpack_from(f"{order}{n * len(code)}{code[0]}", tiff, where)
            if len(code) == 2:  # rationals: numerator, denominator pairs
                from fractions import Fraction  # here: a run that reads no EXIF never imports it

                value = [
                    Fraction(a, b) if b else None for a, b in zip(numbers[::2], numbers[1::2], strict=True)
                ]
            else:
                value = list(numbers)
        tags[f"{prefix} {wanted[tag]}"] = value
    return pointers


def _read_image_header(f: BinaryIO, path: str | bytes, meta: MediaMetadata) -> bool:
    """Size and format from the image header; True when the file has an EXIF block."""
    f.seek(0)
    # Broad catch for the same reason as in _read_exif_tags: Pillow's plugins raise many exception types.
    try:
        with _open_image(f) as image:
            width, height = image.size
            image_format = image.format
            has_exif_block = bool(image.info.get("exif"))
    except _pil().UnidentifiedImageError:
        _warn(meta, path, "not an image format Pillow recognises")
        return False
    except Exception as exc:
        _warn(meta, path, f"image header unreadable: {_reason(exc)}")
        return False
    if width > 0 and height > 0:
        meta.info["width"], meta.info["height"] = width, height
    if image_format:
        meta.info["format"] = image_format
        mime = _pil().MIME.get(image_format)
        if mime:
            meta.info["mime"] = mime
    return has_exif_block


def _open_image(f: BinaryIO) -> ImageFile.ImageFile:
    """Image.open (lazy: reads the header only). A huge image (a panorama) fails Pillow's decompression-bomb
    check, which guards decoding; as nothing is decoded here, open it again with the plugin directly."""
    Image = _pil()
    try:
        return Image.open(f)
    except Image.DecompressionBombError:
        f.seek(0)
        prefix = f.read(16)
        for image_format in Image.ID:
            factory, accept = Image.OPEN[image_format]
            accepted = accept is None or accept(prefix)
            if accepted and not isinstance(accepted, str):  # a str is a reason for refusing
                f.seek(0)
                try:
                    return factory(f, "")
                except (SyntaxError, IndexError, TypeError, struct.error):
                    continue
        raise


# --- EXIF interpretation ----------------------------------------------------------------------------------

_EXIF_DATE = re.compile(r"\s*(\d{4})[:\-](\d\d)[:\-](\d\d)[ T](\d\d):(\d\d):(\d\d)")
_EXIF_OFFSET = re.compile(r"\s*([+-])(\d\d):?(\d\d)\s*$")

# Where the capture time may be, best first, each with the offset tags that belong to it.
_EXIF_DATE_TAGS = (
    ("EXIF DateTimeOriginal", ("EXIF OffsetTimeOriginal", "EXIF OffsetTime")),
    ("EXIF DateTimeDigitized", ("EXIF OffsetTimeDigitized", "EXIF OffsetTime")),
    ("Image DateTime", ("EXIF OffsetTime",)),
)


def _apply_exif(tags: dict[str, Any], path: str | bytes, meta: MediaMetadata) -> None:
    if not tags:
        return
    for key, read in _EXIF_FIELDS:
        # One damaged tag must not lose the others: each is read under its own broad catch, which is right
        # here (an extraction function; ExifRead values can be of unexpected types in damaged files).
        try:
            values = read(tags)
        except Exception as exc:
            _warn(meta, path, f"EXIF {key} unreadable: {_reason(exc)}")
            continue
        for name, value in values.items():
            if value is not None:
                meta.info.setdefault(name, value)
    taken = meta.info.get("date_taken")
    if taken:
        meta.date_taken = datetime.fromisoformat(taken)
        meta.date_source = "exif"


def _tag_values(tags: dict[str, Any], name: str) -> Any:
    tag = tags.get(name)
    return None if tag is None else getattr(tag, "values", tag)


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value)
    if not isinstance(value, str):
        return None
    return value.replace("\x00", " ").strip() or None


def _number(value: Any) -> float | None:
    """A finite float from an EXIF number: Ratio, int, float, or a one-item list/tuple of those."""
    while isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    if not isinstance(value, int | float | Rational):  # ExifRead's Ratio and ours are Fractions
        return None
    try:
        number = float(value)
    except (ZeroDivisionError, OverflowError, ValueError):  # Ratio x/0 from a damaged tag
        return None
    return number if math.isfinite(number) else None


def _positive(value: Any, digits: int = 2) -> float | None:
    number = _number(value)
    return round(number, digits) if number is not None and number > 0 else None


def _read_camera(tags: dict[str, Any]) -> dict[str, Any]:
    return {
        "camera_make": _text(_tag_values(tags, "Image Make")),
        "camera_model": _text(_tag_values(tags, "Image Model")),
        "lens_model": _text(_tag_values(tags, "EXIF LensModel")),
        "software": _text(_tag_values(tags, "Image Software")),
    }


def _read_exposure(tags: dict[str, Any]) -> dict[str, Any]:
    iso = _number(_tag_values(tags, "EXIF ISOSpeedRatings"))
    seconds = _positive(_tag_values(tags, "EXIF ExposureTime"), digits=6)
    return {
        "f_number": _positive(_tag_values(tags, "EXIF FNumber")),
        "exposure_time": None if seconds is None else _exposure_text(seconds),
        "exposure_time_s": seconds,
        "iso": int(iso) if iso is not None and iso > 0 else None,
        "focal_length_mm": _positive(_tag_values(tags, "EXIF FocalLength")),
    }


def _exposure_text(seconds: float) -> str:
    """How cameras show a shutter speed: "1/125" below a quarter second, else "0.5", "2", "30"."""
    if seconds <= 0.25:
        return f"1/{round(1 / seconds)}"
    return f"{seconds:.1f}".removesuffix(".0")


def _read_orientation_and_size(tags: dict[str, Any]) -> dict[str, Any]:
    orientation = _number(_tag_values(tags, "Image Orientation"))
    width = _number(_tag_values(tags, "EXIF ExifImageWidth"))
    height = _number(_tag_values(tags, "EXIF ExifImageLength"))
    size_known = width is not None and height is not None and width > 0 and height > 0
    return {
        "orientation": int(orientation) if orientation is not None and 1 <= orientation <= 8 else None,
        # Only used when Pillow gave no size (HEIC, RAW): setdefault keeps Pillow's.
        "width": int(width) if size_known else None,
        "height": int(height) if size_known else None,
    }


def _read_gps(tags: dict[str, Any]) -> dict[str, Any]:
    latitude = _gps_degrees(tags, "GPS GPSLatitude", "GPS GPSLatitudeRef", "S", 90)
    longitude = _gps_degrees(tags, "GPS GPSLongitude", "GPS GPSLongitudeRef", "W", 180)
    if latitude is None or longitude is None:
        return {}
    altitude = _number(_tag_values(tags, "GPS GPSAltitude"))
    if altitude is not None:
        below_sea = _tag_values(tags, "GPS GPSAltitudeRef")
        if isinstance(below_sea, list | tuple) and below_sea:
            below_sea = below_sea[0]
        if below_sea in (1, "1", b"\x01"):
            altitude = -altitude
        altitude = round(altitude, 2)
    return {
        "gps_latitude": latitude,
        "gps_longitude": longitude,
        "gps_altitude": altitude,
    }


def _gps_degrees(
    tags: dict[str, Any], name: str, ref_name: str, negative_ref: str, limit: float
) -> float | None:
    values = _tag_values(tags, name)
    if not isinstance(values, list | tuple) or not values:
        return None
    parts = [_number(v) for v in values[:3]]
    if any(p is None for p in parts):
        return None
    degrees = sum(p / 60**i for i, p in enumerate(parts))  # degrees, minutes, seconds
    if (_text(_tag_values(tags, ref_name)) or "").upper().startswith(negative_ref):
        degrees = -degrees
    return round(degrees, 7) if abs(degrees) <= limit else None


def _read_date(tags: dict[str, Any]) -> dict[str, Any]:
    for date_name, offset_names in _EXIF_DATE_TAGS:
        taken = _parse_exif_datetime(_text(_tag_values(tags, date_name)))
        if taken is None:
            continue
        for offset_name in offset_names:
            offset_text = _text(_tag_values(tags, offset_name))
            offset = _parse_exif_offset(offset_text)
            if offset is not None:
                return {
                    "date_taken": taken.replace(tzinfo=offset).isoformat(),
                    "offset_time": offset_text,
                }
        return {"date_taken": taken.isoformat()}
    return {}


def _parse_exif_datetime(text: str | None) -> datetime | None:
    """ "YYYY:MM:DD HH:MM:SS" with anything after it; None for blanks and "0000:00:00 00:00:00"."""
    match = _EXIF_DATE.match(text or "")
    if not match:
        return None
    try:
        return datetime(*(int(part) for part in match.groups()))
    except ValueError:
        return None


def _parse_exif_offset(text: str | None) -> timezone | None:
    match = _EXIF_OFFSET.match(text or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    if delta > timedelta(hours=14) or int(minutes) >= 60:
        return None
    return timezone(-delta if sign == "-" else delta)


_EXIF_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]], ...] = (
    ("date", _read_date),
    ("camera", _read_camera),
    ("exposure", _read_exposure),
    ("orientation/size", _read_orientation_and_size),
    ("GPS", _read_gps),
)


# --- Video interpretation ---------------------------------------------------------------------------------


def _apply_video_metadata(metadata: Any, container: str, meta: MediaMetadata) -> None:
    created = _hachoir_value(metadata, "creation_date")
    if isinstance(created, datetime) and created.year >= _FIRST_REAL_VIDEO_YEAR:
        if container in _UTC_CONTAINERS and created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        meta.date_taken = created
        meta.date_source = "video"
        meta.info["date_taken"] = created.isoformat()
    duration = _hachoir_value(metadata, "duration")
    if isinstance(duration, timedelta) and duration.total_seconds() > 0:
        meta.info["duration_s"] = round(duration.total_seconds(), 3)
    width = _hachoir_value(metadata, "width")
    height = _hachoir_value(metadata, "height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        meta.info["width"], meta.info["height"] = width, height
    mime = _hachoir_value(metadata, "mime_type")
    if isinstance(mime, str) and mime:
        meta.info["mime"] = mime


def _hachoir_value(metadata: Any, key: str) -> Any:
    """First value of `key` in the metadata or, for multi-stream files (MKV, AVI), in a stream's group."""
    groups = [metadata]
    if isinstance(metadata, _hachoir().metadata.metadata.MultipleMetadata):
        groups.extend(metadata.iterGroups())
    for group in groups:
        item = group.getItem(key, 0)
        if item is not None:
            return item.value
    return None


# Formats that are surely no photo or video: what a link to a system file, a document or an archive named
# .jpg would hold. Anything else (exotic RAW formats included) is left for Immich to judge.
_NOT_MEDIA_MAGIC = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
    (b"\x7fELF", "a program"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"SQLite format 3\x00", "a database"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
)
_TEXT_BYTES = frozenset(b"\t\n\r\x0c" + bytes(range(0x20, 0x7F)))


def content_problem(extension: str, head: bytes) -> str | None:
    """Why a file's first bytes cannot be the photo or video its name claims (text, a document, an archive,
    a program), or None. Only surely-not-media content is refused: a PNG named .jpg is still a photo, and a
    format this check does not know passes (Immich judges it)."""
    for magic, what in _NOT_MEDIA_MAGIC:
        if head.startswith(magic):
            return f"its content is {what}, not a photo or video"
    sample = head[:4096]
    if extension != "svg" and sample and all(b in _TEXT_BYTES for b in sample):
        return "its content is text, not a photo or video"
    return None


def is_transport_stream(path: str | bytes) -> bool:
    """An MPEG transport stream starts with the sync byte 0x47 every 188 bytes (after a 4-byte timecode
    in 192-byte M2TS packets); a TypeScript source file named .ts does not."""
    with open(path, "rb") as f:
        head = f.read(192 * 3)
    for packet, offset in ((188, 0), (192, 4)):
        marks = [head[offset + packet * i] for i in range(3) if offset + packet * i < len(head)]
        if marks and all(b == 0x47 for b in marks):
            return True
    return False


# --- Paths ------------------------------------------------------------------------------------------------

# The database stores paths in text columns (utf8mb4), but a POSIX file name is any bytes, and names copied
# from old Windows or camera cards are often Latin-1 or CP437. Such a name is stored as readable text (with
# U+FFFD for the bad bytes) plus the exact bytes in base64, so the file can always be opened again.


def path_to_text(raw: bytes) -> tuple[str, str | None]:
    """(text, None) for a UTF-8 path; (text with U+FFFD replacements, base64 of the bytes) otherwise."""
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="replace"), base64.b64encode(raw).decode("ascii")


def text_to_path(text: str, raw_b64: str | None) -> bytes:
    """The exact path bytes stored by path_to_text."""
    if raw_b64:
        return base64.b64decode(raw_b64, validate=True)
    return text.encode("utf-8")


def display_path(path: str | bytes) -> str:
    """A path as printable text for log lines (surrogate escapes would break a UTF-8 log file)."""
    return path_to_text(os.fsencode(path))[0]


def extension_of(path: str | bytes) -> str:
    """A file's extension as the settings list them: "IMG_1.JPG" -> "jpg", no extension -> ""."""
    return os.fsdecode(os.path.splitext(path)[1]).lstrip(".").lower()


# --- Formatting -------------------------------------------------------------------------------------------

_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float) -> str:
    """Binary units, two decimals under 10, one under 100: "0 B", "1.5 KiB", "12.3 MiB", "1.02 GiB", "512 GiB"."""
    value = float(n)
    unit = 0
    while abs(value) >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{value:.0f} B"
    decimals = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {_BINARY_UNITS[unit]}"


def plural(count: int, noun: str) -> str:
    """ "1 file", "2 files", "1,234 files"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def format_duration(seconds: float) -> str:
    """ "0.4s" under ten seconds, "12s" under a minute, "3m05s" under an hour, then "1h02m"."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def to_utc_iso(dt: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and "Z", as Immich wants; a naive time is taken as local time."""
    utc = dt.astimezone(timezone.utc)  # astimezone() reads a naive datetime as the machine's local time
    return utc.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


# Dates that phones and cameras write into file names: IMG_20190504_101500.jpg, VID_…, PXL_20190504_101500123,
# Screenshot_20190504-101500.png, Screenshot_2019-05-04-10-15-00.png, "2019-05-04 10.15.00.jpg",
# IMG-20190504-WA0001.jpg (WhatsApp: the date only). The year must be 19xx/20xx so counters don't match.
_FILENAME_DATE = re.compile(
    r"(?<!\d)(?P<y>(?:19|20)\d\d)[-_.]?(?P<m>0[1-9]|1[0-2])[-_.]?(?P<d>0[1-9]|[12]\d|3[01])"
    r"(?:[ _T.-]{0,3}(?P<H>[01]\d|2[0-3])[-_.:h]?(?P<M>[0-5]\d)[-_.:m]?(?P<S>[0-5]\d)(?:\d{1,3})?)?(?!\d)"
)


def date_from_filename(name: str) -> datetime | None:
    """The local date and time a file name carries, or None. Naive: the camera's wall-clock time."""
    for match in _FILENAME_DATE.finditer(name):
        parts = match.groupdict()
        try:
            return datetime(
                int(parts["y"]), int(parts["m"]), int(parts["d"]),
                int(parts["H"] or 0), int(parts["M"] or 0), int(parts["S"] or 0),
            )  # fmt: skip
        except ValueError:  # 2019-02-30 and the like
            continue
    return None


def rename_no_replace(source: bytes, target: bytes) -> None:
    """Rename `source` to `target` unless something is at `target`: then FileExistsError, and nothing moved.
    Linux's renameat2(RENAME_NOREPLACE) where the file system has it; else a hard link and an unlink (as
    atomic about the target); where neither works (FAT, some network shares), a check just before a rename."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, source, at_fdcwd, target, rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), target)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), source)
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target) from None
        os.rename(source, target)
        return
    os.unlink(source)


def sidecar_for(raw_path: bytes) -> bytes | None:
    """The XMP sidecar that travels with a photo: `photo.jpg.xmp`, else `photo.xmp`, as Immich's own CLI
    looks for them. `IMG_9.HEIC.xmp` beside `IMG_9.HEIC.jpg` is the sidecar of `IMG_9.HEIC` when that file
    exists, not of the converted copy."""
    for candidate in (raw_path + b".xmp", raw_path + b".XMP"):
        if os.path.isfile(candidate):
            return candidate
    stem = os.path.splitext(raw_path)[0]
    if os.path.exists(stem):
        return None
    for candidate in (stem + b".xmp", stem + b".XMP"):
        if os.path.isfile(candidate):
            return candidate
    return None
