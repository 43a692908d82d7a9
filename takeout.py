"""Google Photos Takeout: the zips (or a folder a Takeout was extracted to), read in place, every photo matched
to Google's JSON whatever Google did to the names, recorded as rows and handed to the uploader like any other
file; Google's metadata that arrives after a photo was sent is applied to it in Immich.

Google delivers an account as `takeout-…-001.zip`, `-002.zip`, … holding `Takeout/Google Photos/<folder>/`
(the service's name is localized): year folders and album folders (whose album JSON, `metadata.json`, a
localized name, or the old `{"albumData": …}`, holds the `title`). Beside each photo or video lies a JSON with
what the file often lacks: `photoTakenTime`, `geoData`, `title` (the original name), `favorited`, `archived`,
`trashed`, `description`. Its name is the media's name plus `.supplemental-metadata` (since 2024; before,
nothing), cut to 46-51 characters (UTF-16 units, sometimes inside a character), then the counter of a repeated
name (`IMG_1.jpg.supplemental-metadata(1).json` for `IMG_1(1).jpg`), then `.json`; long media names are cut
too. An edited copy (`-edited`, `-bearbeitet`, `-modifié`, …) and a live photo's clip have none of their own.
A photo and its JSON may sit in different parts, downloaded days apart, so JSONs are joined to photos by the
folder below `Google Photos/`, whichever part they came in; a cut name is matched by its prefix only where
Google cuts, only when it is the one candidate and only when the JSON's `title` agrees. The copies of one
photo (an album folder's and its year folder's) are one upload whose metadata comes from whichever copy has a
JSON.

Each archive gets a label (its file name; `name (2)` for another archive of that name), recorded with a
fingerprint of its central directory, and rows store `<label>/<member>`, so two zips of one name are two sets
of photos and a moved zip is the same one. A rerun compares the central directories with the rows and with
the JSONs it has read (kept with what they said, table `takeout_json`) and reads no member it has seen.
Members are hashed and uploaded straight from the zip (no extraction); the zips are never written to. A
member that cannot be read (encrypted, damaged, a FIFO in an extracted folder, a JSON too large) is that
member's error: counted, listed, and everything else is imported.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import math
import os
import re
import stat
import struct
import threading
import time
import unicodedata
import zipfile
import zlib
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple
from xml.sax.saxutils import escape

from config import ConfigError, Settings
from db_manager import RunProblem, ScannedFile, Store, TakeoutRow, path_hash
from logger import FILE_EVENT, get_logger
from progress import ProgressTracker
from scanner import MAX_PROBLEMS, PLAUSIBLE_YEARS, KnownIndex, ScanSummary, _SaveBatch, date_taken
from utils import (
    FileChangedError,
    MediaMetadata,
    SourceRoots,
    extension_of,
    fingerprint_stream,
    format_bytes,
    judge_link,
    open_source_file,
    read_image_metadata,
)
from utils import LinkRefused as LinkRefusedByRule  # takeout.LinkRefused is a part's settings error

if TYPE_CHECKING:
    from immich_client import ImmichClient

log = get_logger("takeout")

SCOPE = "t:takeout"
CUT_LENGTHS = range(46, 52)  # where Google cuts a JSON's name (before its counter and ".json")
SUPPLEMENTAL = ".supplemental-metadata"
JSON_MAX_BYTES = 1 << 20  # Google's JSONs are a few KB; a larger one is no JSON of a photo
DESCRIPTION_MAX_CHARS = 10_000
INFLATE_CHUNK_BYTES = 64 << 10  # Deflate64 input per step: at most ~64 MB out of a hostile member
COUNTER = re.compile(r"^(?P<base>.*?)(?P<counter>\(\d+\))$")
# Google's suffixes for an edited copy, in the languages seen in exports; any other "-word" is tried last, and
# only where the original's JSON is there under the original's exact name.
EDITED_SUFFIXES = (
    "-edited", "-bearbeitet", "-modifié", "-modifie", "-editado", "-ha editado", "-editat", "-modificato",
    "-bewerkt", "-redigeret", "-redigerad", "-redigert", "-muokattu", "-edytowane", "-upraveno", "-upravené",
    "-szerkesztett", "-editată", "-изменено", "-змінено", "-düzenlendi", "-編集済み", "-已编辑", "-已編輯",
    "-편집됨", "-effects", "-smile", "-mix",
)  # fmt: skip
OTHER_EDIT = re.compile(r"^(?P<base>.+)-[^\W\d_]{2,20}$")
# The Google Photos folder of a Takeout, in the languages seen; other Google products' folders are not photos.
PHOTOS_SERVICE = re.compile(
    r"google.*(photo|foto|フォト|相簿|相册|相冊|포토|фото|φωτογραφ)|(photo|foto|zdj|фото).*google",
    re.IGNORECASE,
)
MEDIA_JSON_KEYS = ("photoTakenTime", "creationTime", "imageViews", "url", "googlePhotosOrigin")
# A live photo's motion clip: Google's .MP is an MP4, which Immich takes by that extension.
MOTION_EXTENSIONS = {"mp": "mp4"}
CLIP_EXTENSIONS = ("mp", "mp4", "mov", "m4v")
# Characters XML 1.0 forbids (and C1 controls): never in a made sidecar.
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
BROKEN_TAIL = ("\ufffd", "?")  # how a character cut in two is written, when it is not left as invalid bytes


class MemberError(Exception):
    """One member of a Takeout cannot be read; the message says why."""


class LinkNotFollowed(MemberError):
    """A file reached through a symbolic link the walk's rule refuses (or that changed since it was checked)."""


# --- names ----------------------------------------------------------------------------------------------


def normalize(name: str) -> str:
    # Zip tools write names in NFD on some systems and NFC on others.
    return unicodedata.normalize("NFC", name)


def split_counter(stem: str) -> tuple[str, str]:
    """`IMG_1(2)` -> ("IMG_1", "(2)"); no counter -> (stem, "")."""
    match = COUNTER.match(stem)
    return (match["base"], match["counter"]) if match and match["base"] else (stem, "")


class MediaName(NamedTuple):
    full: str  # the name as it is (NFC)
    base: str  # without its counter: `IMG_1(2).jpg` -> `IMG_1.jpg`
    counter: str  # "(2)", or ""


def media_name(name: str) -> MediaName:
    name = normalize(name)
    stem, ext = os.path.splitext(name)
    base, counter = split_counter(stem)
    return MediaName(name, base + ext, counter)


class JsonName(NamedTuple):
    stem: str  # without ".json" and its counter: `IMG_1.jpg.supplemental-metad(2).json` -> `IMG_1.jpg.supplemental-metad`
    media: str  # the media name it stands for, any ".supplemental-metadata" (cut anywhere) taken off
    counter: str


def json_name(name: str) -> JsonName:
    stem, counter = split_counter(normalize(name)[: -len(".json")])
    head, dot, last = stem.rpartition(".")
    media = head if dot and last and SUPPLEMENTAL[1:].startswith(last) else stem
    return JsonName(stem, media, counter)


def json_key(name: str) -> tuple[str, str]:
    """(media name, counter) a media JSON's name stands for when it is not cut inside the media name."""
    parsed = json_name(name)
    return parsed.media, parsed.counter


def media_key(name: str) -> tuple[str, str]:
    parsed = media_name(name)
    return parsed.base, parsed.counter


def broken_tail(text: str) -> bool:
    """Whether a name ends in a character Google cut in two (invalid bytes, U+FFFD or '?')."""
    return bool(text) and (text[-1] in BROKEN_TAIL or "\udc80" <= text[-1] <= "\udcff")


def is_cut(stem: str) -> bool:
    """Whether a JSON name's stem has the length of one Google cut: 46-51 UTF-16 units (Java's length; a
    character cut in two counts as one) or 46-51 bytes."""
    escaped = sum(1 for c in stem if "\udc80" <= c <= "\udcff")
    whole = "".join(c for c in stem if not "\udc80" <= c <= "\udcff")
    units = len(whole.encode("utf-16-le")) // 2 + (1 if escaped else 0)
    size = len(stem.encode("utf-8", "surrogateescape"))
    return units in CUT_LENGTHS or size in CUT_LENGTHS


def uncut(stem: str) -> str:
    """A cut stem without the half character at its end."""
    while stem and ("\udc80" <= stem[-1] <= "\udcff"):
        stem = stem[:-1]
    return stem[:-1] if stem and stem[-1] in BROKEN_TAIL else stem


def loose(text: str) -> str:
    """A name compared as Google may have changed it: case, and the characters it replaces in names."""
    return re.sub(r'[/\\:*?"<>|]', "_", normalize(text)).casefold()


def title_agrees(title: str, name: str) -> bool:
    """Whether a JSON's title (the original name) is this media file's: the same name, or the name Google
    cut from it (a long name keeps its extension and loses the end of its stem)."""
    if not title:
        return False
    t, n = loose(title), loose(name)
    if t == n:
        return True
    t_stem, t_ext = os.path.splitext(t)
    n_stem, n_ext = os.path.splitext(n)
    n_stem = uncut(n_stem)
    return t_ext == n_ext and len(n_stem) >= CUT_LENGTHS[0] - 6 and t_stem.startswith(n_stem)


def edited_original(stem: str, others: bool = False) -> str | None:
    """`IMG_1-edited` -> `IMG_1` (Google's suffix in any language it is known in; with `others`, any
    "-word"); None when it is no edited copy."""
    lowered = stem.lower()
    for suffix in EDITED_SUFFIXES:
        if lowered.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    if others:
        match = OTHER_EDIT.match(stem)
        if match:
            return match["base"]
    return None


def photos_folder(inner: str) -> tuple[str, str] | None:
    """(the folder below "Google Photos/", which is the same in every part; the name) of a member, or None
    for another Google product's files in the same Takeout. Paths without a Takeout folder are taken whole."""
    directory, _, name = inner.rpartition("/")
    folder = folder_key(directory)
    return None if folder is None else (folder, name)


@functools.lru_cache(maxsize=65536)
def folder_key(directory: str) -> str | None:
    """photos_folder() of a directory (each is asked for once: an export has thousands of members per folder)."""
    parts = directory.split("/")
    for i, part in enumerate(parts[:-1]):
        if part == "Takeout":
            if not PHOTOS_SERVICE.search(parts[i + 1]):
                return None
            return "/".join(parts[i + 2 :])
    return directory


# --- Google's JSON ------------------------------------------------------------------------------------


def clean_text(value: Any, limit: int = DESCRIPTION_MAX_CHARS) -> str:
    """Text as it may go into XML and the database: no control characters, no lone surrogates, bounded."""
    if not isinstance(value, str):
        return ""
    return NOT_XML.sub("", value.replace("\r\n", "\n").replace("\r", "\n")).strip()[:limit]


def _flag(value: Any) -> bool:
    """Google's booleans, also when written as text or a number: `"false"` is false."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, int | float):
        return math.isfinite(value) and value != 0
    return False


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value) if isinstance(value, int | float | str) else None
    except (ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _timestamp(value: Any) -> datetime | None:
    """`{"timestamp": "1557025445"}` as a date in the years photos can have; anything else (a bare "2019")
    is no date."""
    if not isinstance(value, dict):
        return None
    stamp = value.get("timestamp")
    seconds = _number(stamp.strip() if isinstance(stamp, str) else stamp)
    if seconds is None or seconds <= 0:
        return None
    try:
        moment = datetime.fromtimestamp(int(seconds), timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment if moment.year in PLAUSIBLE_YEARS else None


def _place(geo: Any) -> tuple[float, float, float | None] | None:
    if not isinstance(geo, dict):
        return None
    lat, lon = _number(geo.get("latitude")), _number(geo.get("longitude"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
        return None  # Google writes 0.0, 0.0 for "no place"
    alt = _number(geo.get("altitude"))
    return lat, lon, alt if alt is not None and -20_000 < alt < 100_000 else None


@dataclass
class GoogleInfo:
    """What a media JSON says of its file (values of the wrong type read as what they mean, or as nothing)."""

    json_path: str  # the JSON's row path (`<label>/<member>`)
    title: str = ""
    taken: datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    description: str = ""
    favorited: bool = False
    archived: bool = False
    trashed: bool = False

    @classmethod
    def parse(cls, json_path: str, data: dict[str, Any]) -> GoogleInfo:
        info = cls(json_path, clean_text(data.get("title"), 1000), _timestamp(data.get("photoTakenTime")))
        place = _place(data.get("geoData")) or _place(data.get("geoDataExif"))
        if place is not None:
            info.latitude, info.longitude, info.altitude = place
        info.description = clean_text(data.get("description"))
        info.favorited = _flag(data.get("favorited"))
        info.archived = _flag(data.get("archived"))
        info.trashed = _flag(data.get("trashed"))
        return info

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"json": self.json_path, "title": self.title}
        if self.taken:
            data["taken"] = self.taken.isoformat()
        if self.latitude is not None:
            data["latitude"], data["longitude"], data["altitude"] = (
                self.latitude,
                self.longitude,
                self.altitude,
            )
        for name in ("description", "favorited", "archived", "trashed"):
            if getattr(self, name):
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GoogleInfo:
        taken = data.get("taken")
        return cls(
            str(data.get("json", "")), str(data.get("title", "")),
            datetime.fromisoformat(taken) if taken else None,
            data.get("latitude"), data.get("longitude"), data.get("altitude"),
            str(data.get("description", "")), bool(data.get("favorited")), bool(data.get("archived")),
            bool(data.get("trashed")),
        )  # fmt: skip

    def says_anything(self) -> bool:
        return bool(
            self.taken or self.latitude is not None or self.description or self.favorited or self.archived
        )

    def same_as(self, other: GoogleInfo | None) -> bool:
        """The same metadata (whichever JSON it came from)."""
        return other is not None and self.as_json() | {"json": "", "title": ""} == other.as_json() | {
            "json": "",
            "title": "",
        }


def merged(infos: Sequence[GoogleInfo]) -> GoogleInfo | None:
    """The metadata of one photo from the JSONs of its copies: the first's, completed by the others' (a
    favorite or archived in any copy is so; it is in the trash only if every copy with a JSON says so)."""
    if not infos:
        return None
    whole = copy.copy(infos[0])
    for other in infos[1:]:
        whole.taken = whole.taken or other.taken
        if whole.latitude is None and other.latitude is not None:
            whole.latitude, whole.longitude, whole.altitude = other.latitude, other.longitude, other.altitude
        whole.description = whole.description or other.description
        whole.favorited = whole.favorited or other.favorited
        whole.archived = whole.archived or other.archived
        whole.trashed = whole.trashed and other.trashed
    return whole


class JsonRecord(NamedTuple):
    """What a JSON member said: a photo's metadata, an album's title, or nothing of use."""

    kind: str  # "media" | "album" | "other"
    info: GoogleInfo | None = None
    album: str = ""

    def as_text(self) -> str:
        data: dict[str, Any] = {"kind": self.kind}
        if self.info is not None:
            data["info"] = self.info.as_json()
        if self.album:
            data["album"] = self.album
        return json.dumps(data, ensure_ascii=False)

    @classmethod
    def from_text(cls, text: str) -> JsonRecord:
        data = json.loads(text)
        info = data.get("info")
        return cls(data["kind"], GoogleInfo.from_json(info) if info else None, data.get("album", ""))


def read_json_record(stored: str, name: str, data: Any) -> JsonRecord:
    """A JSON's content as a record: media JSONs by their keys, album JSONs by theirs (any file name)."""
    if not isinstance(data, dict):
        return JsonRecord("other")
    album_data = data.get("albumData")
    if isinstance(album_data, dict):  # the format before 2021
        return JsonRecord("album", album=clean_text(album_data.get("title"), 1000))
    if any(key in data for key in MEDIA_JSON_KEYS):
        return JsonRecord("media", GoogleInfo.parse(stored, data))
    title = clean_text(data.get("title"), 1000)
    return JsonRecord("album", album=title) if title else JsonRecord("other")


# --- archives -------------------------------------------------------------------------------------------


class Member(NamedTuple):
    """One file of a Takeout, wherever it lies: a zip member or a file of an extracted folder."""

    stored: str  # "<label>/<path inside>": the row's path
    folder: str  # the folder below "Google Photos/" (the key that joins zip parts)
    name: str  # the file name (as in the archive; invalid bytes as surrogate escapes)
    size_bytes: int
    mtime_ns: int
    archive: Archive
    crc: int | None = None  # the zip's CRC-32 of it (None in a folder)
    problem: str = ""  # why it cannot be read, known without reading it

    @property
    def is_json(self) -> bool:
        return self.name.lower().endswith(".json")


@functools.lru_cache(maxsize=4096)
def _dos_time_ns(date_time: tuple[int, int, int, int, int, int]) -> int:
    try:
        return int(datetime(*date_time, tzinfo=timezone.utc).timestamp()) * 1_000_000_000
    except (ValueError, OverflowError):
        return 0


def text_of(name: str) -> str:
    """A name as text the database and a terminal take: invalid bytes shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _NamesPatched(io.FileIO):
    """A zip file whose central directory (and local headers) say "not UTF-8" for the names that claim to be
    and are not, so zipfile reads them (as cp437) instead of refusing the whole zip; `patched` holds the
    indexes of those entries, whose names are decoded again by the caller."""

    def __init__(self, path: Path | int) -> None:
        super().__init__(path, "rb")
        self.patches: dict[int, bytes] = {}
        self.patched: set[int] = set()
        endrec = zipfile._EndRecData(self)  # type: ignore[attr-defined]  # the stdlib's own EOCD reader
        if not endrec:
            raise zipfile.BadZipFile("File is not a zip file")
        size_cd, offset_cd = endrec[zipfile._ECD_SIZE], endrec[zipfile._ECD_OFFSET]  # type: ignore[attr-defined]
        concat = endrec[zipfile._ECD_LOCATION] - size_cd - offset_cd  # type: ignore[attr-defined]
        if endrec[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
            concat -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
        self.seek(offset_cd + concat)
        directory = super().read(size_cd)
        pos, index = 0, 0
        while pos + 46 <= len(directory) and directory[pos : pos + 4] == b"PK\x01\x02":
            flags = struct.unpack_from("<H", directory, pos + 8)[0]
            n, e, c = struct.unpack_from("<HHH", directory, pos + 28)
            local = struct.unpack_from("<I", directory, pos + 42)[0] + concat
            name = directory[pos + 46 : pos + 46 + n]
            if flags & 0x800:
                try:
                    name.decode("utf-8")
                except UnicodeDecodeError:
                    self.patches[offset_cd + concat + pos + 8] = struct.pack("<H", flags & ~0x800)
                    self.seek(local + 6)
                    local_flags = struct.unpack("<H", super().read(2))[0]
                    self.patches[local + 6] = struct.pack("<H", local_flags & ~0x800)
                    self.patched.add(index)
            pos += 46 + n + e + c
            index += 1
        self.seek(0)

    def read(self, size: int = -1) -> bytes:
        start = self.tell()
        data = super().read(size)
        if not data or not self.patches:
            return data
        end = start + len(data)
        out = None
        for offset, patch in self.patches.items():
            if start <= offset and offset + 2 <= end:
                out = out or bytearray(data)
                out[offset - start : offset - start + 2] = patch
        return bytes(out) if out is not None else data


class _Deflate64Reader(io.RawIOBase):
    """A Deflate64 member (method 9, which zipfile cannot read) inflated by `inflate64`, its size and CRC
    checked at the end as zipfile checks its own."""

    def __init__(self, raw: BinaryIO, size_bytes: int, crc: int) -> None:
        import inflate64  # only for the rare member that needs it

        self._raw = raw
        self._inflater = inflate64.Inflater()
        self._pending = bytearray()
        self._size, self._crc = size_bytes, crc
        self._seen, self._running = 0, 0
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = len(buffer)
        while len(self._pending) < want and not self._ended:
            chunk = self._raw.read(INFLATE_CHUNK_BYTES)
            if chunk:
                self._pending += self._inflater.inflate(chunk)
            if self._inflater.eof or not chunk:
                if not self._inflater.eof:
                    raise zipfile.BadZipFile("Deflate64 data ends early")
                self._ended = True
        n = min(want, len(self._pending))
        buffer[:n] = self._pending[:n]
        self._running = zlib.crc32(self._pending[:n], self._running)
        del self._pending[:n]
        self._seen += n
        if self._seen > self._size:  # more than the zip says: a damaged member, or a bomb
            raise zipfile.BadZipFile("Deflate64 member: larger than its zip says")
        if self._ended and not self._pending and (self._seen != self._size or self._running != self._crc):
            raise zipfile.BadZipFile("Deflate64 member: its size or CRC-32 is not what the zip says")
        return n

    def close(self) -> None:
        self._raw.close()
        super().close()


class Archive:
    """A Takeout zip, or a folder a Takeout was extracted to. Zip members are opened through one ZipFile
    per zip, shared by the threads (zipfile reads each member through its own seek under a lock)."""

    def __init__(self, path: Path, roots: SourceRoots | None = None) -> None:
        self.path = path
        self.name = path.name
        self.label = path.name  # assign_labels() may make it "name (2)"
        self.is_zip = not path.is_dir()
        # Where a symbolic link may lead without more ado (real paths): inside the folder the user named (a
        # zip's: the folder that holds it). Any other link is followed only under the walk's rule.
        self.roots = roots if roots is not None else real_folder(path if not self.is_zip else path.parent)
        self.reads = 0  # members opened (a rerun with nothing new opens none)
        self._zip: zipfile.ZipFile | None = None
        self._file: BinaryIO | None = None  # the zip's open file (ZipFile leaves a file it was given open)
        self._renamed: set[int] = set()
        self._lock = threading.Lock()
        self._entries: dict[str, Any] | None = None  # stored -> ZipInfo, or the file's path in a folder
        self._fingerprint: str | None = None
        self._prefix = ""  # what an extracted folder's paths lack to start like a zip's ("Takeout/")
        if self.is_zip:
            self._zip, self._file = open_zip(path, self._renamed, self.roots)
        elif path.name == "Takeout" or (not (path / "Takeout").is_dir() and _service_folders(path)):
            self._prefix = "Takeout/"  # the Takeout folder itself (or renamed): its paths start below it

    @property
    def fingerprint(self) -> str:
        """What identifies this archive wherever it lies: a zip's central directory, a folder's path."""
        if self._fingerprint is None:
            digest = sha256()
            if self._zip is not None:
                for info in self._zip.infolist():
                    digest.update(
                        f"{info.orig_filename}\0{info.CRC}\0{info.file_size}\0{info.header_offset}\n".encode(
                            "utf-8", "surrogateescape"
                        )
                    )
            else:
                digest.update(b"dir:" + os.fsencode(self.path.resolve()))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def is_takeout_part(self) -> bool:
        """Whether this zip is a part of a Google Photos Takeout, by its structure (`Takeout/<Google
        Photos in some language>/…`), not by its name."""
        if self._zip is None:
            return True
        for info in self._zip.infolist():
            parts = info.filename.split("/")
            if len(parts) >= 3 and parts[0] == "Takeout" and PHOTOS_SERVICE.search(parts[1]):
                return True
        return False

    def members(self, folders: set[str] | None = None) -> Iterator[Member]:
        """Every member (of these folders), in the archive's order, read from its directory each time (a
        rerun of a large export keeps no list of them)."""
        entries: dict[str, Any] = {}
        if self._zip is not None:
            yield from self._zip_members(entries, folders)
        else:
            yield from (m for m in self._folder_members(entries) if folders is None or m.folder in folders)
        if folders is None:
            self._entries = entries  # complete: the uploader finds each row's member here

    def stored_names(self) -> list[str]:
        """Every member's path as rows store it."""
        if self._entries is None:
            for _member in self.members():
                pass
        assert self._entries is not None
        return list(self._entries)

    def _entry(self, stored: str) -> Any:
        if self._entries is None:
            for _member in self.members():
                pass
        assert self._entries is not None
        return self._entries.get(stored)

    def _zip_members(self, entries: dict[str, Any], folders: set[str] | None = None) -> Iterator[Member]:
        assert self._zip is not None
        seen: set[str] = set()
        for index, info in enumerate(self._zip.infolist()):
            raw = info.filename
            if raw[-1:] == "/":
                continue
            if index in self._renamed:  # invalid bytes kept as surrogate escapes, shown as U+FFFD
                raw = raw.encode("cp437").decode("utf-8", "surrogateescape")
            inner = text_of(raw) if index in self._renamed else raw
            directory, _, name = inner.rpartition("/")
            if name.startswith("._") or directory.startswith("__MACOSX"):
                continue
            folder = folder_key(directory)
            if folder is None:
                continue
            if inner in seen:
                # The same name twice in one zip is two files: the second and later get a place of their own.
                number = 2
                while f"[copy {number}]/{inner}" in seen:
                    number += 1
                inner = f"[copy {number}]/{inner}"
            seen.add(inner)
            if folders is not None and folder not in folders:
                continue
            stored = f"{self.label}/{inner}"
            entries[stored] = info
            problem = ""
            if info.flag_bits & 0x1:
                problem = "encrypted (password-protected) in its zip: it cannot be read"
            elif info.compress_type not in (0, 8, 9, 12, 14):
                problem = f"compressed with a method no reader here knows (zip method {info.compress_type})"
            yield Member(
                stored, folder, raw.rpartition("/")[2], info.file_size, _dos_time_ns(info.date_time), self,
                info.CRC, problem,
            )  # fmt: skip

    def _folder_members(self, entries: dict[str, Any]) -> Iterator[Member]:
        for folder, dirs, names in os.walk(self.path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue  # .DS_Store, AppleDouble "._" files
                full = os.path.join(folder, name)
                inner = os.path.relpath(full, self.path).replace(os.sep, "/")
                key = folder_key((self._prefix + inner).rpartition("/")[0])
                if key is None:
                    continue
                stored = f"{self.label}/{text_of(inner)}"
                entries[stored] = full
                problem = ""
                size, mtime = 0, 0
                try:
                    st = os.lstat(full)
                    if stat.S_ISLNK(st.st_mode):
                        st = os.stat(full)
                        problem = judge_link(os.fsencode(full), self.roots).refusal or ""
                    size, mtime = st.st_size, st.st_mtime_ns
                    if not problem and not stat.S_ISREG(st.st_mode):
                        problem = "not a regular file (a FIFO, socket or device): never opened"
                except FileNotFoundError:
                    problem = "a broken symlink" if os.path.islink(full) else "vanished while it was listed"
                except OSError as exc:
                    problem = f"cannot read it: {exc.strerror or exc}"
                yield Member(stored, key, name, size, mtime, self, None, problem)

    def open(self, stored: str) -> BinaryIO:
        """A member's bytes; MemberError when it cannot be read (never blocks on what is no regular file)."""
        entry = self._entry(stored)
        if entry is None:
            raise MemberError("no longer in its archive")
        with self._lock:
            self.reads += 1
        if self._zip is None:
            return _open_regular(entry, self.roots)
        info: zipfile.ZipInfo = entry
        if info.flag_bits & 0x1:
            raise MemberError("encrypted (password-protected) in its zip: it cannot be read")
        try:
            with self._lock:
                if info.compress_type == 9:
                    raw_info = copy.copy(info)
                    raw_info.compress_type, raw_info.file_size = zipfile.ZIP_STORED, info.compress_size
                    del raw_info.CRC  # the raw bytes have no CRC of their own; the inflated ones are checked
                    return _Deflate64Reader(self._zip.open(raw_info), info.file_size, info.CRC)  # type: ignore[return-value]
                return self._zip.open(info)  # type: ignore[return-value]
        except NotImplementedError as exc:
            raise MemberError(f"cannot be read here: {exc}") from None
        except (zipfile.BadZipFile, RuntimeError, ValueError) as exc:
            raise MemberError(f"damaged in its zip: {exc}") from None

    def stat(self, stored: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a member now, or None when it is not there."""
        entry = self._entry(stored)
        if entry is None:
            return None
        if self._zip is not None:
            return entry.file_size, _dos_time_ns(entry.date_time)
        try:
            st = os.stat(entry)
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._file is not None:
            self._file.close()


def real_folder(path: Path) -> SourceRoots:
    """The folder the user named, as the link rule reaches it: what lies inside it may be linked to."""
    return SourceRoots.of([path])


def _open_regular(path: str, roots: SourceRoots) -> BinaryIO:
    """Open a file of an extracted folder as a source file is opened (`utils.open_source_file`): never
    blocking (a FIFO put there is refused, not waited on), and through symbolic links only as the link rule
    allows, judged part by part on what each link leads to (`roots`: the folder named)."""
    try:
        return open_source_file(os.fsencode(path), roots, buffering=-1)
    except LinkRefusedByRule as exc:
        raise LinkNotFollowed(str(exc)) from None
    except FileChangedError:
        raise MemberError("not a regular file (a FIFO, socket or device): never opened") from None
    except OSError as exc:
        raise MemberError(f"cannot read it: {exc.strerror or exc}") from None


def _subfolders(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _service_folders(path: Path) -> bool:
    return any(PHOTOS_SERVICE.search(p.name) for p in _subfolders(path))


class LinkRefused(ConfigError):
    """A zip reached through a symbolic link the walk's rule refuses: never opened."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"--takeout: {path}: {why}")
        self.why = why


def open_zip(path: Path, renamed: set[int], roots: SourceRoots) -> tuple[zipfile.ZipFile, BinaryIO]:
    """A zip and its open file, also when some of its names claim UTF-8 and are not (their indexes land in
    `renamed`). The file opened is judged as a source file is: reached through a symbolic link to outside
    `roots` (another user's zip), it is read only when the link passes the walk's rule (LinkRefused)."""
    try:
        handle = _open_regular(str(path), roots)
    except LinkNotFollowed as exc:
        raise LinkRefused(path, str(exc)) from None
    except MemberError as exc:
        raise ConfigError(f"--takeout: {path} is not a readable zip ({exc})") from None
    try:
        try:
            return zipfile.ZipFile(handle), handle
        except UnicodeDecodeError:
            patched = None
            try:
                patched = _NamesPatched(os.dup(handle.fileno()))  # FileIO closes it
                renamed.update(patched.patched)
                opened = zipfile.ZipFile(patched)  # type: ignore[arg-type]
            except (zipfile.BadZipFile, OSError, UnicodeDecodeError, struct.error, AttributeError) as exc:
                if patched is not None:
                    patched.close()
                raise ConfigError(f"--takeout: {path} is not a readable zip ({exc})") from None
            handle.close()
            return opened, patched  # type: ignore[return-value]
        except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError) as exc:
            raise ConfigError(f"--takeout: {path} is not a readable zip ({exc})") from None
    except BaseException:
        handle.close()
        raise


class OpenedTakeout(NamedTuple):
    archives: list[Archive]
    passed_over: list[str]  # zips of a folder argument that are no Takeout part, and why
    unreadable: list[tuple[str, str]]  # parts that cannot be read at all (a download cut short): (path, why)


def open_archives(paths: Sequence[Path]) -> OpenedTakeout:
    """The zips and folders named, in order. A folder of zips stands for the Takeout parts among them,
    recognised by their structure; the other zips are passed over, and said so."""
    archives: list[Archive] = []
    passed_over: list[str] = []
    unreadable: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise ConfigError(f"--takeout: {path} does not exist")
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if not path.is_dir():
            try:
                archives.append(Archive(path))
            except ConfigError as exc:
                unreadable.append((str(path), _why(exc)))
            continue
        if path.is_symlink():  # a folder named through a link: the walk's rule, as for a zip
            refusal = judge_link(os.fsencode(os.path.abspath(path)), real_folder(path.parent)).refusal
            if refusal is not None:
                unreadable.append((str(path), refusal))
                continue
        zips = sorted(p for p in path.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
        parts, others = [], []
        inside = real_folder(path)
        for z in zips:
            try:
                archive = Archive(z, inside)
            except ConfigError as exc:
                if isinstance(exc, LinkRefused) or z.name.lower().startswith("takeout"):
                    unreadable.append((str(z), _why(exc)))  # a part, damaged: its photos are missing
                else:
                    others.append(f"{z.name} ({_why(exc)})")
                continue
            if archive.is_takeout_part():
                parts.append(archive)
                seen.add(z.resolve())
            else:
                archive.close()
                others.append(f"{z.name} (no Takeout/Google Photos inside)")
        if parts:
            archives += parts
            passed_over += [f"{path.name}/{other}" for other in others]
        elif (
            (others or unreadable)
            and not (path / "Takeout").is_dir()
            and path.name != "Takeout"
            and not _service_folders(path)
        ):
            if unreadable:
                continue  # only damaged parts here: said below, or as this run's errors
            raise ConfigError(f"--takeout: no Google Takeout in {path}: passed over {', '.join(others)}")
        else:
            archives.append(Archive(path))
            passed_over += [f"{path.name}/{other}" for other in others]
    if not archives and unreadable:
        raise ConfigError(
            "--takeout: no part can be read: " + "; ".join(f"{p} ({why})" for p, why in unreadable)
        )
    return OpenedTakeout(archives, passed_over, unreadable)


def _why(exc: ConfigError) -> str:
    """The reason inside a "not a readable zip (…)" error, or why a link to a zip was not followed."""
    if isinstance(exc, LinkRefused):
        return exc.why
    return str(exc).rsplit("(", 1)[-1].rstrip(")") + "; download it again"


def assign_labels(archives: list[Archive], store: Store) -> list[Archive]:
    """Give each archive its label: its file name, or `name (2)` when another archive of that name is known
    (a zip by its central directory, a folder by its path; a folder that moved keeps its label). The same
    zip named twice is taken once."""
    known = store.takeout_archives()
    kept: list[Archive] = []
    fingerprints: dict[str, Archive] = {}
    for archive in archives:
        if archive.fingerprint in fingerprints:
            log.warning(
                "%s is the same archive as %s: taken once",
                archive.path,
                fingerprints[archive.fingerprint].path,
            )
            archive.close()
            continue
        fingerprints[archive.fingerprint] = archive
        n = 1
        while True:
            label = archive.name if n == 1 else f"{archive.name} ({n})"
            holder = known.get(label)
            taken = any(a.label == label for a in kept)
            if not taken and (
                holder is None or holder[0] == archive.fingerprint or _moved_folder(archive, holder[1])
            ):
                break
            n += 1
        archive.label = label
        if known.get(label) != (archive.fingerprint, str(archive.path)):
            store.set_takeout_archive(label, archive.fingerprint, str(archive.path))
        kept.append(archive)
    return kept


def _moved_folder(archive: Archive, old_path: str) -> bool:
    """An extracted folder moved: the path its label was given to is gone, and this folder has its name."""
    return not archive.is_zip and not os.path.exists(old_path) and os.path.basename(old_path) == archive.name


# --- matching -------------------------------------------------------------------------------------------

MATCH_WORDS = {
    "name": "by name",
    "counter": "by name with a counter, as (1)",
    "cut": "by a name Google cut short (prefix and title)",
    "title": "by the title inside a JSON",
    "edited": "an edited copy, by its original's JSON",
    "motion": "a live photo's clip, by its photo's JSON",
    "copy": "a copy of a photo whose JSON lies in another folder",
    "none": "no JSON found",
}
OWN_JSON = ("name", "counter", "cut", "title")  # the file's own JSON (the others borrow one)
IMAGE_EXTENSIONS_OF_CLIPS = ("jpg", "jpeg", "heic", "heif", "png", "dng")


class Match(NamedTuple):
    info: GoogleInfo | None
    how: str  # see MATCH_WORDS


NO_MATCH = Match(None, "none")


class JsonEntry(NamedTuple):
    member: Member
    info: GoogleInfo
    parsed: JsonName


def _export_of(archive: Archive) -> str:
    """The export a zip part belongs to: `takeout-20241201T100000Z-003.zip` -> `takeout-20241201T100000Z`."""
    return re.sub(r"-\d+\.zip$", "", archive.name, flags=re.IGNORECASE)


class FolderIndex:
    """One folder's media JSONs (from every part) and its media, and which JSON belongs to which file. A
    JSON goes to its own file and never to another: exact names first (a JSON in the file's own zip before
    one in another part), then cut names (by prefix, only where Google cuts, only for the one candidate, only
    when the JSON's title agrees), then titles (unique ones), then edited copies and live photos' clips,
    which borrow their original's."""

    def __init__(self, entries: list[JsonEntry], media: list[Member]) -> None:
        self.entries = entries
        self.media = media
        self._photos_by_stem: dict[str, Match] = {}
        self.exact: dict[tuple[str, str], list[JsonEntry]] = defaultdict(list)
        self.by_stem: dict[tuple[str, str], list[JsonEntry]] = defaultdict(list)
        for entry in entries:
            media_part, counter = entry.parsed.media, entry.parsed.counter
            self.exact[(media_part, counter)].append(entry)
            stem, ext = os.path.splitext(media_part)
            if ext.lstrip(".").lower() in IMAGE_EXTENSIONS_OF_CLIPS:
                self.by_stem[(stem, counter)].append(entry)

    def _pick(self, candidates: Iterable[JsonEntry], archive: Archive) -> JsonEntry | None:
        found = list({id(e): e for e in candidates}.values())
        if not found:
            return None
        for same in (
            lambda e: e.member.archive is archive,
            lambda e: _export_of(e.member.archive) == _export_of(archive),
        ):
            near = [e for e in found if same(e)]
            if near:
                return near[0]
        return found[0]

    def _exact(self, name: MediaName, archive: Archive, without_extension: bool = True) -> JsonEntry | None:
        keys = [(name.full, ""), (name.base, name.counter)]
        if without_extension:  # a file uploaded without an extension has a JSON without one
            keys.append((os.path.splitext(name.base)[0], name.counter))
        for key in keys:
            entry = self._pick(self.exact.get(key, ()), archive)
            if entry is not None:
                return entry
        return None

    def match_all(self) -> dict[str, Match]:
        """stored path of each media file -> its match."""
        names = {m.stored: media_name(m.name) for m in self.media}
        result: dict[str, Match] = {}
        claimed: set[int] = set()
        for m in self.media:
            entry = self._exact(names[m.stored], m.archive)
            if entry is not None:
                result[m.stored] = Match(entry.info, "counter" if names[m.stored].counter else "name")
                claimed.add(id(entry))
        self._match_cut(names, result, claimed)
        self._match_titles(names, result, claimed)
        by_full = {names[m.stored].full: result[m.stored] for m in self.media if m.stored in result}
        self._photos_by_stem = {}  # a live photo's clip finds its photo's match here
        for full, found in by_full.items():
            if found.info is not None and extension_of(full) in IMAGE_EXTENSIONS_OF_CLIPS:
                stem = os.path.splitext(full)[0]
                self._photos_by_stem[stem] = found
                if stem[-3:].upper() == ".MP":  # Google's PXL_….MP.jpg beside its motion part PXL_….MP
                    self._photos_by_stem.setdefault(stem[:-3], found)
        for m in self.media:
            if m.stored not in result:
                found = self._borrowed(m, names[m.stored], by_full)
                if found is not None:
                    result[m.stored] = found
        return result

    def _cut_candidates(
        self, entry: JsonEntry, by_counter: dict[str, list[tuple[str, Member]]]
    ) -> list[Member]:
        prefix = uncut(entry.parsed.stem)
        keys = by_counter.get(entry.parsed.counter, [])
        start = bisect_left(keys, (prefix,))
        found = []
        for key, member in keys[start:]:
            if not key.startswith(prefix):
                break
            found.append(member)
        return found

    def _match_cut(self, names: dict[str, MediaName], result: dict[str, Match], claimed: set[int]) -> None:
        cut = [e for e in self.entries if id(e) not in claimed and is_cut(e.parsed.stem)]
        if not cut:
            return
        by_counter: dict[str, list[tuple[str, Member]]] = defaultdict(list)
        for m in self.media:
            if m.stored not in result:
                n = names[m.stored]
                by_counter[n.counter].append((n.base + SUPPLEMENTAL, m))
        for keys in by_counter.values():
            keys.sort(key=lambda item: item[0])
        for entry in sorted(cut, key=lambda e: e.member.stored):
            candidates = [m for m in self._cut_candidates(entry, by_counter) if m.stored not in result]
            title = entry.info.title
            if len(candidates) == 1:
                chosen = candidates if title_agrees(title, names[candidates[0].stored].base) else []
            else:  # several files share the prefix: only a title naming one of them exactly decides
                chosen = [m for m in candidates if loose(title) == loose(names[m.stored].base)]
            if len(chosen) == 1:
                result[chosen[0].stored] = Match(entry.info, "cut")
                claimed.add(id(entry))

    def _match_titles(self, names: dict[str, MediaName], result: dict[str, Match], claimed: set[int]) -> None:
        by_title: dict[str, list[JsonEntry]] = defaultdict(list)
        for entry in self.entries:
            if id(entry) not in claimed and entry.info.title:
                by_title[loose(entry.info.title)].append(entry)
        if not by_title:
            return
        for m in self.media:
            if m.stored in result:
                continue
            found = by_title.get(loose(names[m.stored].full), [])
            if len(found) == 1 and id(found[0]) not in claimed:
                result[m.stored] = Match(found[0].info, "title")
                claimed.add(id(found[0]))

    def _borrowed(self, m: Member, name: MediaName, by_full: dict[str, Match]) -> Match | None:
        """An edited copy's or a live photo's clip's JSON: its original's."""
        stem, ext = os.path.splitext(name.full)
        base_stem, counter = split_counter(stem)
        for others in (False, True):
            original = edited_original(base_stem, others)
            if original is None:
                continue
            original_name = media_name(original + counter + ext)
            found = by_full.get(original_name.full)
            if found is not None and found.info is not None:
                return Match(found.info, "edited")
            entry = self._exact(original_name, m.archive, without_extension=not others)
            if entry is not None:
                return Match(entry.info, "edited")
            if not others:
                for entry in self.entries:
                    if (
                        is_cut(entry.parsed.stem)
                        and entry.parsed.counter == counter
                        and (original_name.base + SUPPLEMENTAL).startswith(uncut(entry.parsed.stem))
                        and title_agrees(entry.info.title, original_name.base)
                    ):
                        return Match(entry.info, "edited")
        if ext.lstrip(".").lower() in CLIP_EXTENSIONS:
            photo = self._photos_by_stem.get(stem)
            if photo is not None:
                return Match(photo.info, "motion")
            entry = self._pick(self.by_stem.get((base_stem, counter), ()), m.archive)
            if entry is not None:
                return Match(entry.info, "motion")
        return None


# --- what is sent ---------------------------------------------------------------------------------------


def upload_name(name: str) -> str:
    """The name Immich is given: a live photo's `.MP` clip goes as `.MP.mp4`, an extension it takes."""
    replacement = MOTION_EXTENSIONS.get(extension_of(name))
    return f"{name}.{replacement}" if replacement else name


def sidecar_for(info: dict[str, Any], has_gps: bool, has_date: bool) -> bytes | None:
    """An XMP sidecar with what Google knew and the file does not say itself: the place, the description,
    and the date for a file without one. Immich reads it like any sidecar; None when there is nothing.
    Well-formed XML whatever the JSON held: text is escaped, characters XML forbids are left out."""
    lines = []
    latitude, longitude = _number(info.get("latitude")), _number(info.get("longitude"))
    if latitude is not None and longitude is not None and not has_gps:
        lines.append(f"   exif:GPSLatitude='{_xmp_coordinate(latitude, 'N', 'S')}'")
        lines.append(f"   exif:GPSLongitude='{_xmp_coordinate(longitude, 'E', 'W')}'")
        altitude = _number(info.get("altitude"))
        if altitude is not None:
            lines.append(f"   exif:GPSAltitude='{round(abs(altitude) * 100)}/100'")
            lines.append(f"   exif:GPSAltitudeRef='{0 if altitude >= 0 else 1}'")
    taken = _iso_date(info.get("taken"))
    if taken is not None and not has_date:
        lines.append(f"   exif:DateTimeOriginal='{taken.isoformat()}'")
    description = clean_text(info.get("description"))
    if not lines and not description:
        return None
    body = "\n".join(lines)
    described = ""
    if description:
        described = (
            "\n   <dc:description><rdf:Alt><rdf:li xml:lang='x-default'>"
            f"{escape(description)}</rdf:li></rdf:Alt></dc:description>"
        )
    return (
        "<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
        "<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n <rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
        "  <rdf:Description rdf:about='' xmlns:exif='http://ns.adobe.com/exif/1.0/' "
        "xmlns:dc='http://purl.org/dc/elements/1.1/'\n"
        f"{body}>{described}\n  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>\n"
    ).encode()


def _iso_date(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _xmp_coordinate(value: float, positive: str, negative: str) -> str:
    """XMP writes a coordinate as "DD,MM.mmmmmmN"."""
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees},{minutes:.6f}{positive if value >= 0 else negative}"


def own_date(info: dict[str, Any]) -> bool:
    """Whether a row's date is the file's own (EXIF or the video's), which Google's never replaces."""
    return info.get("date_source") in ("exif", "video")


def with_google(
    metadata_info: str | dict[str, Any] | None,
    row_date: tuple[str | None, str | None],
    match: Match,
    album: str | None,
) -> tuple[str, str | None, str | None]:
    """A row's metadata_info, date_taken and date_source once this JSON is known for it: Google's date where
    the file has none of its own, its other fields in `takeout` (what an upload sends, and the summary
    reads)."""
    info = metadata_info if isinstance(metadata_info, dict) else json.loads(metadata_info or "{}")
    takeout = {**(match.info.as_json() if match.info else {}), "match": match.how}
    if album:
        takeout["album"] = album
    if "sent" in info.get("takeout", {}):
        takeout["sent"] = info["takeout"]["sent"]
    info["takeout"] = takeout
    date_text, source = row_date
    if match.info is not None and match.info.taken is not None and not own_date(info):
        date_text = match.info.taken.strftime("%Y-%m-%d %H:%M:%S")
        source = "takeout"
        info["date_used"], info["date_source"] = match.info.taken.isoformat(), source
    return json.dumps(info, default=str, ensure_ascii=False), date_text, source


def _with_path(info: GoogleInfo, json_path: str) -> GoogleInfo:
    other = copy.copy(info)
    other.json_path = json_path
    return other


def google_of(metadata_info: str | None) -> Match:
    """The match a row records."""
    takeout = json.loads(metadata_info or "{}").get("takeout", {})
    how = takeout.get("match", "none")
    return Match(GoogleInfo.from_json(takeout) if takeout.get("json") else None, how)


def describe_member(
    member: Member, match: Match, settings: Settings, album: str | None, media_type: str, extension: str
) -> ScannedFile:
    """Fingerprint a member (read once, from the zip) and describe it: its own metadata, then what its
    JSON says. OSErrors and MemberErrors propagate; content problems end up in the row."""
    directory = member.stored.rpartition("/")[0]
    row = ScannedFile(
        raw_path=member.stored.encode(), filepath=member.stored, filepath_b64=None,
        filename=text_of(member.name), directory=directory, extension=extension, media_type=media_type,
        file_size=member.size_bytes, mtime_ns=member.mtime_ns,
    )  # fmt: skip
    if member.size_bytes == 0:
        row.upload_status, row.last_error = "skipped", "empty file (0 bytes): nothing to upload"
        return row
    with member.archive.open(member.stored) as handle:
        fp = fingerprint_stream(handle, settings.hash_chunk_size)
    if fp.size_bytes != member.size_bytes:
        raise MemberError(f"its zip says {member.size_bytes} bytes, it holds {fp.size_bytes}")
    row.hash, row.sha1, row.file_size = fp.sha256, fp.sha1, fp.size_bytes
    if media_type == "image":
        meta = read_image_metadata(
            text_of(member.name),
            head=fp.head,
            size_bytes=fp.size_bytes,
            opener=lambda: member.archive.open(member.stored),
        )
    else:
        meta = MediaMetadata()  # a video's own dates are read by Immich; Google's JSON gives ours
    info = dict(meta.info)
    found = date_taken(
        meta.date_taken,
        meta.date_source,
        text_of(member.name),
        member.mtime_ns,
        settings.time_zone,
        meta.warnings,
    )
    if found is not None:
        taken, source = found
        row.date_taken = taken.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        row.date_source = source
        info["date_used"], info["date_source"] = taken.isoformat(), source
    if meta.warnings:
        info["warnings"] = row.warnings = meta.warnings
    give(row, match, album, settings, info)
    return row


def give(
    row: ScannedFile, match: Match, album: str | None, settings: Settings, info: dict[str, Any] | None = None
) -> None:
    """Put what a JSON says into a scanned row (its own, or a copy's); `info` is its metadata when at hand."""
    row.metadata_info, row.date_taken, row.date_source = with_google(
        info if info is not None else row.metadata_info, (row.date_taken, row.date_source), match, album
    )
    if (
        match.info is not None
        and match.info.trashed
        and not settings.takeout_trashed
        and row.upload_status == "pending"
    ):
        row.upload_status, row.last_error = "skipped", "in Google Photos' trash (--takeout-trashed sends it)"


# --- scanning -------------------------------------------------------------------------------------------


class Described(NamedTuple):
    member: Member
    row_id: int | None
    work: Future[ScannedFile]
    group: tuple[int, int | None] | None  # its content group, when other members may hold the same bytes


class TakeoutSaveBatch(_SaveBatch):
    """The scanner's batch, and before each save what the batch's photos and the rows of other copies of the
    same bytes know of each other: a copy without a JSON takes its twin's metadata, a twin recorded without
    one takes the new copy's (and, if Immich has it already, is queued for an update there), all in the
    transaction that saves the batch."""

    def __init__(
        self,
        store: Store,
        on_upload_ready: Callable[[list[str]], None] | None,
        scanner: TakeoutScanner,
        uploads_dry: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(store, on_upload_ready, uploads_dry=uploads_dry)
        self.scanner = scanner

    def save(self, then_checkpoint: bool = False) -> None:
        if self.new or self.changed:
            updates, queue = self.scanner.merge_with_twins(
                [*self.new, *(f for _, f in self.changed)], {i for i, _ in self.changed}
            )
            with self.store.atomic():
                self.store.save_scanned(self.new, self.changed)
                if updates or queue:
                    self.store.update_takeout_rows(updates, queue)
            self.new, self.changed = [], []
        super().save(then_checkpoint)


class TakeoutScanner:
    """The scanner for a Takeout: rows for its media, compared with what the database knows by the zips'
    central directories (a rerun reads no member it has seen), matched folder by folder to the JSONs of every
    part, described on a thread pool (hashing and inflating release the GIL), and handed to the uploader as
    they are committed; copies of the same bytes are held until all of them are described, so the one sent
    carries the metadata of whichever has a JSON."""

    def __init__(
        self, settings: Settings, store: Store, progress: ProgressTracker, stop: threading.Event
    ) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress
        self.stop = stop
        self.summary = ScanSummary()
        opened = open_archives(list(settings.takeout_paths))
        self.archives = assign_labels(opened.archives, store)
        self.passed_over = opened.passed_over
        self.unreadable = opened.unreadable
        for what in self.passed_over:
            log.warning("--takeout: passed over %s", what)
        self.late = 0  # rows recorded before whose JSON (or copy with one) arrived in this run
        self.queued = 0  # of them, photos already in Immich: updated there after the uploads
        self.refreshed: set[int] = set()  # rows whose metadata this run changed after they were recorded
        self._replacing = False  # a JSON read before changed: its record is replaced, not added

    @property
    def members_read(self) -> int:
        return sum(a.reads for a in self.archives)

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.archives]

    def _problem(self, where: str, reason: str) -> None:
        """One member's error: counted, listed in the summary and Recent errors (the runs table), logged."""
        self.summary.errors += 1
        self.summary.error_files.append(where)
        if len(self.summary.problems) < MAX_PROBLEMS:
            self.summary.problems.append(RunProblem(where, reason))
        log.warning("%s: %s", where, reason, extra=FILE_EVENT)
        self.progress.file_status("error", where, reason)

    def media_kind(self, name: str) -> tuple[str, str] | None:
        """(media type, extension sent) of a member, or None for what is not a photo or video."""
        ext = extension_of(name)
        ext = MOTION_EXTENSIONS.get(ext, ext)
        kind = self.settings.media_kind(ext)
        return None if kind is None else (kind, ext)

    def scan(
        self,
        on_upload_ready: Callable[[list[str]], None] | None = None,
        uploads_dry: Callable[[], bool] | None = None,
    ) -> ScanSummary:
        started = time.monotonic()
        summary = self.summary
        self.progress.start("scan")
        for path, why in self.unreadable:
            self._problem(path, f"this Takeout part cannot be read: {why}")  # the other parts go on
        known = KnownIndex(self.store.iter_known_files())
        known_json = {
            bytes.fromhex(h): (i, size, mtime, error)
            for h, i, size, mtime, error in self.store.takeout_json_known()
        }
        batch = TakeoutSaveBatch(self.store, on_upload_ready, self, uploads_dry)
        new_json: list[Member] = []
        to_describe: list[tuple[Member, tuple[str, str], int | None]] = []
        touched: set[str] = set()
        # First the central directories alone: what is new, and so which folders' JSONs to match.
        for archive in self.archives:
            for member in archive.members():
                if self.stop.is_set():
                    break
                if member.is_json:
                    if self._json_is_new(member, known_json):
                        new_json.append(member)
                        touched.add(member.folder)
                    continue
                kind = self.media_kind(member.name)
                if kind is None:
                    continue
                summary.found += 1
                if member.problem:
                    self._problem(member.stored, member.problem)
                    self.progress.advance(1, 0)
                    continue
                digest = sha256(member.stored.encode()).digest()
                i = known.find_digest(digest)
                if i is not None:
                    known.seen[i] = 1
                    # What was passed over as trashed is looked at again when the trash is asked for.
                    again = self.settings.takeout_trashed and known.row(i).upload_status == "skipped"
                    if known.unchanged(i, member.size_bytes, member.mtime_ns) and not again:
                        summary.unchanged += 1
                        batch.unchanged(known, i, digest)
                        self.progress.advance(1, 0)
                        continue
                to_describe.append((member, kind, None if i is None else known.ids[i]))
                touched.add(member.folder)
        # Then, only where something is new, every part's media and JSONs of those folders.
        media, jsons, json_ids, unchanged = self._folders(
            touched, known, known_json, {m.stored for m, _, _ in to_describe}
        )
        records = self._read_jsons(new_json)
        matches, albums = self._match(touched, media, jsons, json_ids, records)
        # JSONs read now, and what they change for rows recorded before, in one transaction: a run stopped
        # before it reads them again.
        self._record_jsons(new_json, records, unchanged, matches, albums, touched, media)
        del records, media, jsons, json_ids, unchanged  # what the description needs is in `matches`
        self._describe(to_describe, matches, albums, batch)
        batch.save()
        self.progress.set_total(summary.found)
        self.progress.finish()
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _json_is_new(self, member: Member, known_json: dict[bytes, tuple[int, int, int, str | None]]) -> bool:
        """Whether a JSON member is to be read; a bad one (or one read before and found bad) is an error."""
        if member.problem:
            self._problem(member.stored, member.problem)
            return False
        if member.size_bytes > JSON_MAX_BYTES:
            self._problem(
                member.stored,
                f"a JSON of {format_bytes(member.size_bytes)}: no Google JSON is that large "
                f"(the limit is {format_bytes(JSON_MAX_BYTES)}); not read",
            )
            return False
        record = known_json.get(sha256(member.stored.encode()).digest())
        if record is None:
            return True
        if (record[1], record[2]) != (member.size_bytes, member.mtime_ns):
            self._replacing = True  # a member that changed: its old record goes
            return True
        if record[3]:
            self._problem(member.stored, record[3])  # read before; still the same member
        return False

    def _folders(
        self, touched: set[str], known: KnownIndex, known_json: dict[bytes, tuple[int, int, int, str | None]],
        described: set[str],
    ) -> tuple[dict[str, list[Member]], dict[str, list[Member]], dict[str, int], dict[str, int]]:  # fmt: skip
        """The media and JSONs of these folders in every part; the JSONs read before (by record id) and the
        media recorded before (by row id) among them."""
        media: dict[str, list[Member]] = defaultdict(list)
        jsons: dict[str, list[Member]] = defaultdict(list)
        json_ids: dict[str, int] = {}
        unchanged: dict[str, int] = {}
        if not touched:
            return media, jsons, json_ids, unchanged
        for archive in self.archives:
            for member in archive.members(touched):
                if member.problem:
                    continue
                digest = sha256(member.stored.encode()).digest()
                if member.is_json:
                    if member.size_bytes > JSON_MAX_BYTES:
                        continue
                    jsons[member.folder].append(member)
                    record = known_json.get(digest)
                    if record is not None and (record[1], record[2]) == (member.size_bytes, member.mtime_ns):
                        json_ids[member.stored] = record[0]
                elif self.media_kind(member.name) is not None:
                    media[member.folder].append(member)
                    i = known.find_digest(digest)
                    if i is not None and member.stored not in described:
                        unchanged[member.stored] = known.ids[i]
        return media, jsons, json_ids, unchanged

    def _read_jsons(self, members: list[Member]) -> dict[str, JsonRecord | str]:
        """Each new JSON's record, or why it could not be read (an error for that member alone)."""
        found: dict[str, JsonRecord | str] = {}
        # One by one: a few KB each, parsed holding the GIL, a pool only adds its overhead (measured).
        for member in members:
            if self.stop.is_set():
                break
            outcome = found[member.stored] = read_json_member(member)
            if isinstance(outcome, str):
                self._problem(member.stored, outcome)
        return found

    def _match(
        self, touched: set[str], media: dict[str, list[Member]], jsons: dict[str, list[Member]],
        json_ids: dict[str, int], records: dict[str, JsonRecord | str],
    ) -> tuple[dict[str, Match], dict[str, str]]:  # fmt: skip
        """Every media file of the folders with something new, matched to its JSON; album titles by folder."""
        ids = [json_ids[m.stored] for f in touched for m in jsons.get(f, ()) if m.stored in json_ids]
        loaded = self.store.takeout_json_records(ids)
        matches: dict[str, Match] = {}
        albums: dict[str, str] = {}
        for folder in touched:
            entries = []
            for member in jsons.get(folder, ()):
                record: JsonRecord | str | None = records.get(member.stored)
                if record is None and member.stored in json_ids:
                    text = loaded.get(json_ids[member.stored])
                    record = JsonRecord.from_text(text) if text else None
                if not isinstance(record, JsonRecord):
                    continue
                if record.kind == "album" and record.album:
                    albums.setdefault(folder, record.album)
                elif record.kind == "media" and record.info is not None:
                    entries.append(JsonEntry(member, record.info, json_name(member.name)))
            if media.get(folder):
                matches.update(FolderIndex(entries, media[folder]).match_all())
        return matches, albums

    def _record_jsons(
        self, new_json: list[Member], records: dict[str, JsonRecord | str], unchanged: dict[str, int],
        matches: dict[str, Match], albums: dict[str, str], touched: set[str], media: dict[str, list[Member]],
    ) -> None:  # fmt: skip
        """Save the JSONs read, and give rows recorded before what arrived for them: a JSON, or an album."""
        fresh = {m.stored for m in new_json}
        folder_of: dict[int, str] = {}
        for folder in touched:
            for m in media.get(folder, ()):
                row_id = unchanged.get(m.stored)
                if row_id is None:
                    continue
                match = matches.get(m.stored, NO_MATCH)
                if (match.info is not None and match.info.json_path in fresh) or folder in albums:
                    folder_of[row_id] = folder
        updates: list[tuple[int, str, str | None, str | None, str | None]] = []
        queue: list[str] = []
        for row in self.store.takeout_rows(list(folder_of)):
            match = matches.get(row.filepath, NO_MATCH)
            recorded = google_of(row.metadata_info)
            album = albums.get(folder_of[row.id])
            old_album = json.loads(row.metadata_info or "{}").get("takeout", {}).get("album")
            gains_json = (
                match.info is not None
                and (recorded.info is None or recorded.how == "copy")
                and recorded.info != match.info
            )
            if not gains_json and (album is None or album == old_album):
                continue
            use = match if gains_json else recorded
            update, queued = self.late_update(row, use, album or old_album)
            updates.append(update)
            self.refreshed.add(row.id)
            if queued:
                queue.append(row.path_hash)
            if gains_json:
                self.late += 1
                log.info("%s: its Google JSON arrived (%s)", row.filepath, match.info.json_path)  # type: ignore[union-attr]
        rows = []
        for member in new_json:
            outcome = records.get(member.stored)
            if outcome is None:
                continue
            text, error = (outcome.as_text(), None) if isinstance(outcome, JsonRecord) else (None, outcome)
            rows.append(
                (
                    path_hash(member.stored.encode()),
                    member.stored,
                    member.size_bytes,
                    member.mtime_ns,
                    text,
                    error,
                )
            )
        if rows or updates or queue:
            with self.store.atomic():
                self.store.save_takeout_json(rows, replacing=self._replacing)
                if updates or queue:
                    self.store.update_takeout_rows(updates, queue)
        self.queued += len(queue)

    def late_update(
        self, row: TakeoutRow, match: Match, album: str | None
    ) -> tuple[tuple[int, str, str | None, str | None, str | None], bool]:
        """A recorded row given a JSON (or album) it did not have: its new metadata, and whether Immich holds
        it already (then it is queued for an update there, with what was sent kept to compare)."""
        info = json.loads(row.metadata_info or "{}")
        done = row.upload_status in ("success", "duplicate") and bool(row.asset_id)
        if done and "sent" not in info.get("takeout", {}):
            info.setdefault("takeout", {})["sent"] = sent_values(info, row.date_taken, row.mtime_ns)
        text, date_text, source = with_google(
            json.dumps(info), (row.date_taken, row.date_source), match, album
        )
        skip = None
        if match.info is not None and match.info.trashed and not self.settings.takeout_trashed:
            if row.upload_status in ("pending", "error"):
                skip = "in Google Photos' trash (--takeout-trashed sends it)"
            elif done:
                log.info("%s: Google had it in its trash; it stays in Immich", row.filepath)
        queued = done and match.info is not None and match.info.says_anything()
        return (row.id, text, date_text, source, skip), queued

    def merge_with_twins(
        self, rows: list[ScannedFile], own_ids: set[int]
    ) -> tuple[list[tuple[int, str, str | None, str | None, str | None]], list[str]]:
        """Copies of the same bytes recorded in other rows (earlier runs, other parts): a row without a JSON
        takes its twin's; a twin without one takes this row's (queued for Immich if it is there already)."""
        sha1s = [r.sha1 for r in rows if r.sha1]
        if not sha1s:
            return [], []
        twins: dict[str, list[TakeoutRow]] = defaultdict(list)
        for twin in self.store.takeout_twins(sha1s):
            if twin.id not in own_ids:
                twins[twin.sha1 or ""].append(twin)
        updates, queue = [], []
        for row in rows:
            others = twins.get(row.sha1 or "")
            if not others:
                continue
            mine = google_of(row.metadata_info)
            theirs = [(t, google_of(t.metadata_info)) for t in others]
            whole = self._merge([(row, mine)], [match for _, match in theirs])
            if whole is None:
                continue
            for twin, match in theirs:
                if whole.same_as(match.info):
                    continue
                album = json.loads(twin.metadata_info or "{}").get("takeout", {}).get("album")
                keep = match.info.json_path if match.info is not None else whole.json_path
                update, queued = self.late_update(
                    twin,
                    Match(_with_path(whole, keep), match.how if match.info is not None else "copy"),
                    album,
                )
                updates.append(update)
                self.refreshed.add(twin.id)
                if queued:
                    queue.append(twin.path_hash)
                self.late += 1
        self.queued += len(queue)
        return updates, queue

    def _merge(
        self, rows: list[tuple[ScannedFile, Match]], others: Sequence[Match] = ()
    ) -> GoogleInfo | None:
        """Give copies of one photo the metadata of all their JSONs (see merged()); returns it."""
        ranked = sorted([*(m for _, m in rows), *others], key=lambda m: m.how not in OWN_JSON)
        whole = merged([m.info for m in ranked if m.info is not None])
        if whole is None:
            return None
        for row, match in rows:
            if whole.same_as(match.info):
                continue
            album = json.loads(row.metadata_info or "{}").get("takeout", {}).get("album")
            if match.info is None:
                give(row, Match(whole, "copy"), album, self.settings)
            else:
                give(row, Match(_with_path(whole, match.info.json_path), match.how), album, self.settings)
        return whole

    def _describe(
        self, to_describe: list[tuple[Member, tuple[str, str], int | None]], matches: dict[str, Match],
        albums: dict[str, str], batch: TakeoutSaveBatch,
    ) -> None:  # fmt: skip
        # Copies of one photo (same size and CRC in a zip; same size in a folder, then the same hash) are held
        # until all are described, so the one sent carries what any of them knows.
        groups: Counter[tuple[int, int | None]] = Counter(
            (m.size_bytes, m.crc) for m, _, _ in to_describe if m.size_bytes
        )
        self._held: dict[tuple[int, int | None], list[tuple[Member, int | None, ScannedFile | None]]] = (
            defaultdict(list)
        )
        self._left = Counter(groups)  # counted down as they are described
        with ThreadPoolExecutor(self.settings.hash_workers, thread_name_prefix="takeout") as pool:
            waiting: list[Described] = []
            for member, kind, row_id in to_describe:
                if self.stop.is_set():
                    break
                match = matches.get(member.stored, NO_MATCH)
                album = albums.get(member.folder)
                key = (member.size_bytes, member.crc)
                group = key if groups[key] > 1 else None
                work = pool.submit(describe_member, member, match, self.settings, album, *kind)
                waiting.append(Described(member, row_id, work, group))
                while len(waiting) > self.settings.hash_workers * 4:
                    self._collect(waiting.pop(0), batch)
            for item in waiting:
                self._collect(item, batch)
        for key in list(self._held):
            self._release(key, batch)  # a stopped run: what was described is still saved

    def _collect(self, item: Described, batch: TakeoutSaveBatch) -> None:
        member = item.member
        try:
            scanned: ScannedFile | None = item.work.result()
        except (OSError, MemberError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            self._problem(member.stored, f"cannot read it from {member.archive.label}: {exc}")
            self.progress.advance(1, member.size_bytes)
            scanned = None
        if item.group is None:
            if scanned is not None:
                self._save(member, item.row_id, scanned, batch)
            return
        self._held[item.group].append((member, item.row_id, scanned))
        self._left[item.group] -= 1
        if self._left[item.group] == 0:
            self._release(item.group, batch)

    def _release(self, key: tuple[int, int | None], batch: TakeoutSaveBatch) -> None:
        held = self._held.pop(key, [])
        by_hash: dict[str, list[ScannedFile]] = defaultdict(list)
        for _member, _row_id, scanned in held:
            if scanned is not None and scanned.hash:
                by_hash[scanned.hash].append(scanned)
        for copies in by_hash.values():
            if len(copies) > 1:
                self._merge([(row, google_of(row.metadata_info)) for row in copies])
        for member, row_id, scanned in held:
            if scanned is not None:
                self._save(member, row_id, scanned, batch)

    def _save(
        self, member: Member, row_id: int | None, scanned: ScannedFile, batch: TakeoutSaveBatch
    ) -> None:
        if row_id is None:
            self.summary.new += 1
        else:
            self.summary.changed += 1
        batch.add(row_id, scanned)
        if scanned.upload_status == "skipped":
            self.summary.skipped += 1
            log.info("%s: skipped: %s", scanned.filepath, scanned.last_error)
        else:
            self.summary.bytes_hashed += scanned.file_size
            self.progress.file_status("new" if row_id is None else "changed", scanned.filepath)
        self.progress.advance(1, member.size_bytes)
        batch.save_if_due()


def read_json_member(member: Member) -> JsonRecord | str:
    """A JSON member's record, or why it could not be read. Never reads more than JSON_MAX_BYTES."""
    try:
        with member.archive.open(member.stored) as handle:
            data = handle.read(JSON_MAX_BYTES + 1)
    except (OSError, MemberError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        return f"JSON unreadable: {exc}"
    if len(data) > JSON_MAX_BYTES:
        return f"a JSON larger than {format_bytes(JSON_MAX_BYTES)}: no Google JSON is that large; not read"
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return f"JSON unreadable: {str(exc)[:200]}"
    return read_json_record(member.stored, member.name, parsed)


def sent_values(info: dict[str, Any], date_taken_text: str | None, mtime_ns: int | None) -> dict[str, Any]:
    """What an upload of a row sent Immich of Google's metadata, from the row as it was sent."""
    takeout = info.get("takeout", {})
    if "sent" in takeout:
        return dict(takeout["sent"])
    has_gps = info.get("gps_latitude") is not None
    if date_taken_text:
        date = datetime.fromisoformat(str(date_taken_text)[:19]).replace(tzinfo=timezone.utc)
    else:
        try:
            date = datetime.fromtimestamp((mtime_ns or 0) / 1e9, timezone.utc)
        except (OverflowError, OSError, ValueError):
            date = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return {
        "favorited": bool(takeout.get("favorited")),
        "archived": bool(takeout.get("archived")),
        "description": str(takeout.get("description") or ""),
        "latitude": None if has_gps else takeout.get("latitude"),
        "longitude": None if has_gps else takeout.get("longitude"),
        "date": date.isoformat(),
    }


# --- the uploader's access ------------------------------------------------------------------------------


class TakeoutFiles:
    """The uploader's access to Takeout rows: each row's member, opened from its zip, if that zip is part
    of this run (rows of zips not named this time wait for a run that names them), and the row as it is now
    (a copy's metadata may have arrived since it was queued)."""

    def __init__(
        self, archives: list[Archive], store: Store | None = None, refreshed: set[int] | None = None
    ) -> None:
        self.by_label = {archive.label: archive for archive in archives}
        self.store = store
        self.refreshed = refreshed if refreshed is not None else set()  # rows to read again before sending
        self._by_folder: dict[bytes, list[bytes]] | None = None

    def archive_of(self, stored: str) -> Archive | None:
        return self.by_label.get(stored.split("/", 1)[0])

    def here(self, stored: str) -> bool:
        return self.archive_of(stored) is not None

    def opener(self, stored: str) -> Callable[[], BinaryIO]:
        archive = self.archive_of(stored)
        assert archive is not None

        def open_member() -> BinaryIO:
            try:
                return archive.open(stored)
            except MemberError as exc:
                raise OSError(str(exc)) from None  # the uploader's "cannot read the file"

        return open_member

    def stat(self, stored: str) -> tuple[int, int] | None:
        archive = self.archive_of(stored)
        return None if archive is None else archive.stat(stored)

    def names_in(self, folder: bytes) -> list[bytes] | None:
        """The names of the members in a folder (as rows store it), for live photo pairing."""
        if self._by_folder is None:
            by_folder: dict[bytes, list[bytes]] = defaultdict(list)
            for archive in self.by_label.values():
                for stored in archive.stored_names():
                    where, _, name = stored.encode().rpartition(b"/")
                    by_folder[where].append(name)
            self._by_folder = by_folder
        return self._by_folder.get(folder)

    def close(self) -> None:
        for archive in self.by_label.values():
            archive.close()


# --- Google's metadata for photos Immich has already ---------------------------------------------------


@dataclass
class UpdateSummary:
    updated: int = 0  # photos changed in Immich
    unchanged: int = 0  # nothing to change (already so, or changed there by the user since)
    kept: int = 0  # fields left as the user changed them in Immich
    waiting: int = 0  # queued, their photo not in Immich yet
    errors: int = 0
    error_files: list[str] = field(default_factory=list)
    problems: list[RunProblem] = field(default_factory=list)


def plan_update(
    google: GoogleInfo, sent: dict[str, Any], asset: dict[str, Any], has_gps: bool, has_date: bool
) -> tuple[dict[str, Any], int]:
    """The fields of `PUT /api/assets` that bring Google's metadata to an asset, and how many were left as
    they are because they no longer hold what was sent (the user changed them in Immich since)."""
    changes: dict[str, Any] = {}
    kept = 0
    if google.favorited and not asset.get("isFavorite"):
        if sent.get("favorited"):
            kept += 1  # sent as a favorite, and un-favorited since
        else:
            changes["isFavorite"] = True
    if google.archived and asset.get("visibility") != "archive":
        if asset.get("visibility", "timeline") == "timeline" and not sent.get("archived"):
            changes["visibility"] = "archive"
        else:
            kept += 1
    exif = asset.get("exifInfo") if isinstance(asset.get("exifInfo"), dict) else {}
    if google.description and (exif.get("description") or "") != google.description:
        if (exif.get("description") or "") in ("", sent.get("description") or ""):
            changes["description"] = google.description
        else:
            kept += 1
    if google.latitude is not None and google.longitude is not None and not has_gps:
        now = (_number(exif.get("latitude")), _number(exif.get("longitude")))
        if not _near(now, (google.latitude, google.longitude)):
            if now == (None, None) or _near(now, (sent.get("latitude"), sent.get("longitude"))):
                changes["latitude"], changes["longitude"] = google.latitude, google.longitude
            else:
                kept += 1
    if google.taken is not None and not has_date:
        now_date = _iso_date(exif.get("dateTimeOriginal"))
        if not _same_instant(now_date, google.taken):
            if now_date is None or _same_instant(now_date, _iso_date(sent.get("date"))):
                changes["dateTimeOriginal"] = google.taken.strftime("%Y-%m-%dT%H:%M:%S.000Z")
            else:
                kept += 1
    return changes, kept


def _after(sent: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """What Immich holds of what was sent once these changes are made."""
    now = dict(sent)
    for key, value in changes.items():
        if key == "visibility":
            now["archived"] = value == "archive"
        else:
            now[{"isFavorite": "favorited", "dateTimeOriginal": "date"}.get(key, key)] = value
    return now


def _near(a: tuple[Any, Any], b: tuple[Any, Any]) -> bool:
    if None in a or None in b:
        return False
    return abs(float(a[0]) - float(b[0])) < 1e-5 and abs(float(a[1]) - float(b[1])) < 1e-5


def _same_instant(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and abs((a - b).total_seconds()) < 1


def apply_updates(
    client: ImmichClient, store: Store, target_id: int, stop: threading.Event, dry_run: bool = False
) -> UpdateSummary:
    """Bring Google's metadata that arrived after a photo was sent (a JSON in a later part, a copy with a
    JSON) to the photo in Immich: read the asset, change only what still holds what was sent (or nothing),
    then record it done. A run stopped between the change and the record finds the asset already so and
    records it then: nothing is changed twice, nothing the user changed is undone."""
    from immich_client import ImmichError, ServerUnreachable, StopRequested

    summary = UpdateSummary()
    intents = store.takeout_update_intents()
    for row in store.takeout_update_queue():
        if stop.is_set():
            break
        if row.upload_status not in ("success", "duplicate") or not row.asset_id:
            summary.waiting += 1
            continue
        sent_row = row if row.upload_status == "success" else store.takeout_sent_row(row.asset_id, target_id)
        if sent_row is None or row.target_id != target_id:
            # Immich had these bytes from elsewhere (another tool, another server's record): not ours to change.
            if not dry_run:
                store.takeout_update_done(row.path_hash, None, None)
            continue
        info = json.loads(row.metadata_info or "{}")
        google = google_of(row.metadata_info).info
        if google is None:
            if not dry_run:
                store.takeout_update_done(row.path_hash, None, None)
            continue
        sent_info = json.loads(sent_row.metadata_info or "{}")
        sent = sent_values(sent_info, sent_row.date_taken, sent_row.mtime_ns)
        try:
            asset = client.asset_details(row.asset_id)
            intent = json.loads(intents[row.path_hash]) if row.path_hash in intents else None
            if intent is not None:
                # A run stopped around its update of this asset. Untouched since it read it: the update
                # never arrived. Changed since: it did, and what differs from it now the user changed.
                untouched = bool(intent.get("updatedAt")) and asset.get("updatedAt") == intent["updatedAt"]
                sent = intent["sent"] if untouched else _after(intent["sent"], intent["changes"])
            changes, kept = plan_update(
                google, sent, asset, info.get("gps_latitude") is not None, own_date(info)
            )
            if changes and not dry_run:
                store.set_takeout_update_intent(
                    row.path_hash,
                    json.dumps({"changes": changes, "updatedAt": asset.get("updatedAt"), "sent": sent}),
                )
                client.update_assets([row.asset_id], changes)
        except (ServerUnreachable, StopRequested):
            raise
        except ImmichError as exc:
            summary.errors += 1
            summary.error_files.append(row.filepath)
            log.warning(
                "%s: Google's metadata not applied in Immich: %s", row.filepath, exc, extra=FILE_EVENT
            )
            continue
        summary.kept += kept
        if kept:
            log.info("%s: %d of Google's fields left as they were changed in Immich", row.filepath, kept)
        if changes:
            summary.updated += 1
            log.info("%s: Google's metadata applied in Immich (%s)", row.filepath, ", ".join(sorted(changes)))
        else:
            summary.unchanged += 1
        if dry_run:
            continue
        sent_info.setdefault("takeout", {})["sent"] = _after(sent, changes)
        store.takeout_update_done(
            row.path_hash, sent_row.id, json.dumps(sent_info, default=str, ensure_ascii=False)
        )
    return summary


# --- what the summary says -------------------------------------------------------------------------------


@dataclass
class MatchReport:
    """How the photos of this run's archives were matched to their JSONs (all of them, also those recorded
    by an earlier run or a dry run), for the summary."""

    counts: Counter[str] = field(default_factory=Counter)
    unmatched: list[str] = field(default_factory=list)
    unmatched_total: int = 0
    trashed: int = 0

    @classmethod
    def of(cls, store: Store, labels: Sequence[str]) -> MatchReport:
        counts, trashed, unmatched, unmatched_total = store.takeout_report(labels, 100)
        return cls(Counter(counts), unmatched, unmatched_total, trashed)

    def as_json(self) -> dict[str, Any]:
        return {
            "matched": dict(self.counts),
            "unmatched": self.unmatched,
            "unmatched_total": self.unmatched_total,
            "trashed": self.trashed,
        }

    def rows(self) -> list[tuple[str, str]]:
        rows = [(f"  {MATCH_WORDS.get(how, how)}", str(count)) for how, count in self.counts.most_common()]
        if self.trashed:
            rows.append(
                ("  in Google's trash", f"{self.trashed} (passed over; --takeout-trashed sends them)")
            )
        return rows


def summary_rows(
    scanner: TakeoutScanner, report: MatchReport, updates: UpdateSummary | None
) -> list[tuple[str, str]]:
    """The Takeout's lines of a run's summary: how each photo's JSON was found, which have none, what was
    passed over, and what was brought to photos Immich had already."""
    rows = [("Google JSON", "matched to the media files:"), *report.rows()]
    rows += [("no JSON", path) for path in report.unmatched[:10]]
    if report.unmatched_total > 10:
        rows.append(("", f"… and {report.unmatched_total - 10} more (the log and --json list the first 100)"))
    if scanner.late:
        rows.append(
            ("JSON arrived late", f"{scanner.late} photos recorded before got their Google metadata now")
        )
    if updates is not None and (updates.updated or updates.kept or updates.waiting or updates.errors):
        text = f"{updates.updated} photos updated with Google's metadata"
        if updates.kept:
            text += f", {updates.kept} fields left as changed there"
        if updates.waiting:
            text += f", {updates.waiting} waiting for their upload"
        if updates.errors:
            text += f", {updates.errors} refused (tried again next run; the log says why)"
        rows.append(("in Immich", text))
    rows += [("passed over", what) for what in scanner.passed_over]
    rows.append(("members read", f"{scanner.members_read} (a rerun reads none it has seen)"))
    return rows


def summary_json(
    scanner: TakeoutScanner, report: MatchReport, updates: UpdateSummary | None
) -> dict[str, Any]:
    data = report.as_json()
    data.update(
        late_json=scanner.late, passed_over=scanner.passed_over, members_read=scanner.members_read,
        archives=scanner.labels,
    )  # fmt: skip
    if updates is not None:
        data["updated_in_immich"] = updates.updated
        data["kept_as_changed_in_immich"] = updates.kept
        data["update_errors"] = updates.errors
    return data


def log_unmatched(report: MatchReport) -> None:
    for path in report.unmatched:
        log.info("%s: no Google JSON found (its date and place come from the file alone)", path)


def update_in_immich(
    client: ImmichClient, store: Store, target_id: int, stop: threading.Event
) -> UpdateSummary:
    """apply_updates() at the end of a sync; a server that went away leaves the queue for the next run."""
    from immich_client import ServerUnreachable, StopRequested

    try:
        return apply_updates(client, store, target_id, stop)
    except (ServerUnreachable, StopRequested) as exc:
        log.error("Google's metadata not brought to photos already in Immich (next run does it): %s", exc)
        return UpdateSummary(waiting=store.takeout_update_count())


def report(
    store: Store, scanner: TakeoutScanner, updates: UpdateSummary | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The Takeout's part of a run's summary: (for --json, for the terminal), the log listing the photos
    without a JSON."""
    matched = MatchReport.of(store, scanner.labels)
    log_unmatched(matched)
    return summary_json(scanner, matched, updates), summary_rows(scanner, matched, updates)
