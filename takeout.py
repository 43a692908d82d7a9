"""Google Photos Takeout: the zips (or a folder a Takeout was extracted to), read in place, their media
matched to Google's JSON, recorded as rows and handed to the uploader like any other file.

Google delivers an account as `takeout-…-001.zip`, `-002.zip`, … holding `Takeout/Google Photos/<folder>/`:
year folders and album folders (whose album JSON, `metadata.json` or a localized name, holds the `title`).
Beside each photo or video lies a JSON with what the file often lacks: `photoTakenTime`, `geoData`,
`title` (the original name), `favorited`, `archived`, `trashed`, `description`. Its name is the media's
name plus `.supplemental-metadata` (since 2024; before, nothing), cut to 46 characters, then the counter of
a repeated name (`IMG_1.jpg.supplemental-metadata(1).json` for `IMG_1(1).jpg`), then `.json`. An edited
copy (`IMG_1-edited.jpg`, `-bearbeitet`, `-modifié`, …) and a live photo's clip (`IMG_1.MP`) have none of
their own. A photo and its JSON may sit in different zip parts, so every part's JSONs are indexed by the
folder below `Google Photos/`, whichever part they came in.

Rows belong to the scope `t:takeout` and store `<zip or folder name>/<member>`, so a rerun, or a run after
more parts arrive, compares the central directory with the rows and reads nothing it has seen. Members are
hashed and uploaded straight from the zip (no extraction); the zips are never written to or deleted.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from config import ConfigError, Settings
from db_manager import ScannedFile, Store
from logger import FILE_EVENT, get_logger
from progress import ProgressTracker
from scanner import KnownIndex, ScanSummary, _SaveBatch, date_taken
from utils import MediaMetadata, extension_of, fingerprint_stream, read_image_metadata

log = get_logger("takeout")

SCOPE = "t:takeout"
CLIPPED_NAME = 46  # Google cuts "NAME.supplemental-metadata" (or "NAME") to this many characters
SUPPLEMENTAL = "supplemental-metadata"
COUNTER = re.compile(r"^(?P<base>.*?)(?P<counter>\(\d+\))$")
# Google's suffixes for an edited copy, in the languages seen in exports; any other "-word" is tried last.
EDITED_SUFFIXES = (
    "-edited", "-bearbeitet", "-modifié", "-modifie", "-editado", "-modificato", "-bewerkt", "-redigeret",
    "-redigerad", "-muokattu", "-edytowane", "-upraveno", "-編集済み", "-已编辑",
)  # fmt: skip
# A live photo's motion clip: Google's .MP is an MP4, which Immich takes by that extension.
MOTION_EXTENSIONS = {"mp": "mp4"}


class Member(NamedTuple):
    """One file of a Takeout, wherever it lies: a zip member or a file of an extracted folder."""

    stored: str  # "<archive name>/<path inside it>": the row's path
    folder: str  # the folder below "Google Photos/" (the key that joins zip parts), or its full path
    name: str  # the file name
    size_bytes: int
    mtime_ns: int
    archive: Archive


class Archive:
    """A Takeout zip, or a folder a Takeout was extracted to. Zip members are opened through one ZipFile
    per zip, shared by the threads (zipfile reads each member through its own seek under a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self._zip: zipfile.ZipFile | None = None
        self._lock = threading.Lock()
        if path.is_file():
            try:
                self._zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ConfigError(f"--takeout: {path} is not a readable zip ({exc})") from None

    def members(self) -> Iterator[Member]:
        if self._zip is not None:
            for info in self._zip.infolist():
                if not info.is_dir():
                    yield self._member(info.filename, info.file_size, zip_mtime_ns(info))
            return
        for folder, _dirs, names in os.walk(self.path):
            for name in names:
                full = os.path.join(folder, name)
                st = os.stat(full)
                yield self._member(os.path.relpath(full, self.path), st.st_size, st.st_mtime_ns)

    def _member(self, inner: str, size: int, mtime_ns: int) -> Member:
        inner = inner.replace(os.sep, "/")
        folder, _, name = inner.rpartition("/")
        return Member(f"{self.name}/{inner}", photos_folder(folder), name, size, mtime_ns, self)

    def open(self, stored: str) -> BinaryIO:
        inner = stored[len(self.name) + 1 :]
        if self._zip is None:
            return open(self.path / inner, "rb")
        with self._lock:
            return self._zip.open(inner)

    def stat(self, stored: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of a member now, or None when it is not there."""
        inner = stored[len(self.name) + 1 :]
        if self._zip is None:
            try:
                st = os.stat(self.path / inner)
            except FileNotFoundError:
                return None
            return st.st_size, st.st_mtime_ns
        try:
            info = self._zip.getinfo(inner)
        except KeyError:
            return None
        return info.file_size, zip_mtime_ns(info)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def zip_mtime_ns(info: zipfile.ZipInfo) -> int:
    """A member's time as the zip keeps it (to the second, no zone): only ever compared with itself."""
    return int(datetime(*info.date_time, tzinfo=timezone.utc).timestamp()) * 1_000_000_000


def photos_folder(folder: str) -> str:
    """The folder below "Google Photos/" (any language's), which is the same in every zip part."""
    parts = folder.split("/")
    if len(parts) >= 2 and parts[0] == "Takeout":
        return "/".join(parts[2:])
    return folder


def open_archives(paths: list[Path]) -> list[Archive]:
    """The zips and folders named, in order (a folder of zips stands for its zips)."""
    archives: list[Archive] = []
    for path in paths:
        if not path.exists():
            raise ConfigError(f"--takeout: {path} does not exist")
        zips = sorted(path.glob("*.zip")) if path.is_dir() else []
        if zips:
            archives += [Archive(z) for z in zips]
        else:
            archives.append(Archive(path))
    return archives


# --- Google's JSON ------------------------------------------------------------------------------------


@dataclass
class GoogleInfo:
    """What a media JSON says of its file."""

    json_name: str
    title: str
    taken: datetime | None = None
    latitude: float | None = None
    longitude: float | None = None
    altitude: float | None = None
    description: str = ""
    favorited: bool = False
    archived: bool = False
    trashed: bool = False

    @classmethod
    def parse(cls, json_name: str, data: dict[str, Any]) -> GoogleInfo:
        info = cls(json_name, str(data.get("title", "")))
        stamp = (data.get("photoTakenTime") or {}).get("timestamp")
        try:
            if stamp is not None and int(stamp) > 0:
                info.taken = datetime.fromtimestamp(int(stamp), timezone.utc)
        except (TypeError, ValueError, OverflowError, OSError):
            pass
        geo = data.get("geoData") or data.get("geoDataExif") or {}
        lat, lon = geo.get("latitude"), geo.get("longitude")
        # Google writes 0.0, 0.0 for "no place".
        if isinstance(lat, int | float) and isinstance(lon, int | float) and (lat or lon):
            info.latitude, info.longitude = float(lat), float(lon)
            alt = geo.get("altitude")
            info.altitude = float(alt) if isinstance(alt, int | float) else None
        info.description = str(data.get("description") or "").strip()
        info.favorited = bool(data.get("favorited"))
        info.archived = bool(data.get("archived"))
        info.trashed = bool(data.get("trashed"))
        return info

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"json": self.json_name, "title": self.title}
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


def json_key(json_name: str) -> tuple[str, str]:
    """(clipped media name, counter) a media JSON's name stands for: `IMG_1.jpg.supplemental-metad(2).json`
    -> ("IMG_1.jpg", "(2)"). Any prefix of ".supplemental-metadata" is one that was clipped."""
    stem = json_name[: -len(".json")]
    counter = ""
    match = COUNTER.match(stem)
    if match:
        stem, counter = match["base"], match["counter"]
    head, dot, last = stem.rpartition(".")
    if dot and last and SUPPLEMENTAL.startswith(last):
        stem = head
    return normalize(stem), counter


def media_key(name: str) -> tuple[str, str]:
    """(clipped name, counter) of a media file: `IMG_1(2).jpg` -> ("IMG_1.jpg", "(2)")."""
    stem, ext = os.path.splitext(name)
    match = COUNTER.match(stem)
    counter = ""
    if match:
        stem, counter = match["base"], match["counter"]
    return normalize((stem + ext)[:CLIPPED_NAME]), counter


def normalize(name: str) -> str:
    # Zip tools write names in NFD on some systems and NFC on others.
    return unicodedata.normalize("NFC", name)


class Match(NamedTuple):
    info: GoogleInfo | None
    how: str  # see MATCH_WORDS


MATCH_WORDS = {
    "name": "by name",
    "counter": "by name with a counter, as (1)",
    "edited": "an edited copy, by its original's JSON",
    "motion": "a live photo's clip, by its photo's JSON",
    "title": "by the title inside a JSON",
    "none": "no JSON found",
}


@dataclass
class TakeoutIndex:
    """Every media JSON and album title of a Takeout, by the folder below "Google Photos/"."""

    by_key: dict[tuple[str, str, str], GoogleInfo] = field(default_factory=dict)
    by_title: dict[tuple[str, str], GoogleInfo] = field(default_factory=dict)
    by_stem: dict[tuple[str, str, str], GoogleInfo] = field(default_factory=dict)  # for live photos' clips
    albums: dict[str, str] = field(default_factory=dict)  # folder -> album title

    def add(self, member: Member, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if "photoTakenTime" in data or ("creationTime" in data and "title" in data and "url" in data):
            info = GoogleInfo.parse(member.name, data)
            clipped, counter = json_key(member.name)
            self.by_key.setdefault((member.folder, clipped, counter), info)
            self.by_stem.setdefault((member.folder, os.path.splitext(clipped)[0], counter), info)
            if info.title:
                self.by_title.setdefault((member.folder, normalize(info.title)), info)
        elif isinstance(data.get("title"), str) and data["title"]:
            self.albums.setdefault(member.folder, data["title"])  # an album folder's own JSON

    def match(self, member: Member) -> Match:
        """The JSON that belongs to a media file, and how it was found."""
        folder, name = member.folder, member.name
        clipped, counter = media_key(name)
        found = self.by_key.get((folder, clipped, counter))
        if found is not None:
            return Match(found, "counter" if counter else "name")
        stem, ext = os.path.splitext(name)
        original = edited_original(stem)
        if original is not None:
            found = self.by_key.get((folder, *media_key(original + ext)))
            if found is not None:
                return Match(found, "edited")
        if ext.lower().lstrip(".") in ("mp", "mp4", "mov"):
            found = self.by_stem.get((folder, stem[:CLIPPED_NAME], counter))
            if found is not None:
                return Match(found, "motion")
        found = self.by_title.get((folder, normalize(name)))
        if found is not None:
            return Match(found, "title")
        return Match(None, "none")


def edited_original(stem: str) -> str | None:
    """`IMG_1-edited` -> `IMG_1` (Google's suffix in any language); None when it is no edited copy."""
    lowered = stem.lower()
    for suffix in EDITED_SUFFIXES:
        if lowered.endswith(suffix):
            return stem[: -len(suffix)]
    return None


def build_index(
    archives: list[Archive], folders: set[str], on_problem: Callable[[str, str], None]
) -> TakeoutIndex:
    """Read the JSONs of these folders, from every part (a file's JSON may sit in another part), into one
    index; a rerun with nothing new reads none."""
    index = TakeoutIndex()
    for archive in archives:
        for member in archive.members():
            if member.folder not in folders or not member.name.lower().endswith(".json"):
                continue
            try:
                with archive.open(member.stored) as handle:
                    data = json.loads(handle.read())
            except (OSError, ValueError, zipfile.BadZipFile) as exc:
                on_problem(member.stored, f"JSON unreadable: {exc}")
                continue
            index.add(member, data)
    return index


@dataclass
class MatchReport:
    """How the media were matched to their JSONs, for the summary."""

    counts: Counter[str] = field(default_factory=Counter)
    unmatched: list[str] = field(default_factory=list)
    trashed: int = 0

    def note(self, member: Member, match: Match) -> None:
        self.counts[match.how] += 1
        if match.info is None:
            self.unmatched.append(member.stored)

    def rows(self) -> list[tuple[str, str]]:
        rows = [(f"  {MATCH_WORDS[how]}", str(count)) for how, count in self.counts.most_common()]
        if self.trashed:
            rows.append(
                ("  in Google's trash", f"{self.trashed} (passed over; --takeout-trashed sends them)")
            )
        return rows


# --- what is sent --------------------------------------------------------------------------------------


def upload_name(name: str) -> str:
    """The name Immich is given: a live photo's `.MP` clip goes as `.MP.mp4`, an extension it takes."""
    replacement = MOTION_EXTENSIONS.get(extension_of(name))
    return f"{name}.{replacement}" if replacement else name


def sidecar_for(info: dict[str, Any], has_gps: bool, has_date: bool) -> bytes | None:
    """An XMP sidecar with what Google knew and the file does not say itself: the place, the description,
    and the date for a file without one. Immich reads it like any sidecar; None when there is nothing."""
    lines = []
    if info.get("latitude") is not None and not has_gps:
        lines.append(f"   exif:GPSLatitude='{_xmp_coordinate(info['latitude'], 'N', 'S')}'")
        lines.append(f"   exif:GPSLongitude='{_xmp_coordinate(info['longitude'], 'E', 'W')}'")
        if info.get("altitude") is not None:
            lines.append(f"   exif:GPSAltitude='{round(abs(info['altitude']) * 100)}/100'")
            lines.append(f"   exif:GPSAltitudeRef='{0 if info['altitude'] >= 0 else 1}'")
    if info.get("taken") and not has_date:
        lines.append(f"   exif:DateTimeOriginal='{info['taken']}'")
    description = info.get("description")
    if not lines and not description:
        return None
    body = "\n".join(lines)
    described = ""
    if description:
        text = description.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        described = f"\n   <dc:description><rdf:Alt><rdf:li xml:lang='x-default'>{text}</rdf:li></rdf:Alt></dc:description>"
    return (
        "<?xpacket begin='' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
        "<x:xmpmeta xmlns:x='adobe:ns:meta/'>\n <rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
        "  <rdf:Description rdf:about='' xmlns:exif='http://ns.adobe.com/exif/1.0/' "
        "xmlns:dc='http://purl.org/dc/elements/1.1/'\n"
        f"{body}>{described}\n  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>\n"
    ).encode()


def _xmp_coordinate(value: float, positive: str, negative: str) -> str:
    """XMP writes a coordinate as "DD,MM.mmmmmmN"."""
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60
    return f"{degrees},{minutes:.6f}{positive if value >= 0 else negative}"


# --- scanning -------------------------------------------------------------------------------------------


def describe_member(
    member: Member, match: Match, settings: Settings, album: str | None, media_type: str, extension: str
) -> ScannedFile:
    """Fingerprint a member (read once, from the zip) and describe it: its own metadata, then what its
    JSON says. OSErrors propagate; content problems end up in the row."""
    directory = member.stored.rpartition("/")[0]
    row = ScannedFile(
        raw_path=member.stored.encode(), filepath=member.stored, filepath_b64=None, filename=member.name,
        directory=directory, extension=extension, media_type=media_type, file_size=member.size_bytes,
        mtime_ns=member.mtime_ns,
    )  # fmt: skip
    google = match.info
    if member.size_bytes == 0:
        row.upload_status, row.last_error = "skipped", "empty file (0 bytes): nothing to upload"
        return row
    if google is not None and google.trashed and not settings.takeout_trashed:
        row.upload_status, row.last_error = "skipped", "in Google Photos' trash (--takeout-trashed sends it)"
        return row
    with member.archive.open(member.stored) as handle:
        fp = fingerprint_stream(handle, settings.hash_chunk_size)
    row.hash, row.sha1, row.file_size = fp.sha256, fp.sha1, fp.size_bytes
    if media_type == "image":
        meta = read_image_metadata(
            member.name,
            head=fp.head,
            size_bytes=fp.size_bytes,
            opener=lambda: member.archive.open(member.stored),
        )
    else:
        meta = MediaMetadata()  # a video's own dates are read by Immich; Google's JSON gives ours
    info = dict(meta.info)
    own_date = meta.date_taken
    found = date_taken(
        own_date or (google.taken if google else None),
        meta.date_source if own_date else "takeout",
        member.name,
        member.mtime_ns,
        settings.time_zone,
        meta.warnings,
    )
    if found is not None:
        taken, source = found
        row.date_taken = taken.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        row.date_source = source
        info["date_used"], info["date_source"] = taken.isoformat(), source
    info["takeout"] = {**(google.as_json() if google else {}), "match": match.how}
    if album:
        info["takeout"]["album"] = album
    if meta.warnings:
        info["warnings"] = row.warnings = meta.warnings
    row.metadata_info = json.dumps(info, default=str, ensure_ascii=False)
    return row


class TakeoutScanner:
    """The scanner for a Takeout: rows for its media, compared with what the database knows by the zips'
    central directories (a rerun reads no member it has seen), described on a thread pool (hashing and
    inflating release the GIL), handed to the uploader as they are committed."""

    def __init__(
        self, settings: Settings, store: Store, progress: ProgressTracker, stop: threading.Event
    ) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress
        self.stop = stop
        self.summary = ScanSummary()
        self.report = MatchReport()
        self.archives = open_archives(list(settings.takeout_paths))

    def _problem(self, where: str, reason: str) -> None:
        self.summary.errors += 1
        self.summary.error_files.append(where)
        log.warning("%s: %s", where, reason, extra=FILE_EVENT)
        self.progress.file_status("error", where, reason)

    def media_kind(self, name: str) -> tuple[str, str] | None:
        """(media type, extension sent) of a member, or None for what is not a photo or video."""
        ext = extension_of(name)
        ext = MOTION_EXTENSIONS.get(ext, ext)
        kind = self.settings.media_kind(ext)
        return None if kind is None else (kind, ext)

    def scan(self, on_upload_ready: Callable[[list[str]], None] | None = None) -> ScanSummary:
        from concurrent.futures import ThreadPoolExecutor

        started = time.monotonic()
        summary = self.summary
        known = KnownIndex(self.store.iter_known_files())
        batch = _SaveBatch(self.store, on_upload_ready)
        self.progress.start("scan")
        # First the central directories alone: what is new or changed, and so which folders' JSONs to read.
        to_describe: list[tuple[Member, tuple[str, str], int | None]] = []
        for archive in self.archives:
            for member in archive.members():
                if self.stop.is_set():
                    break
                kind = None if member.name.lower().endswith(".json") else self.media_kind(member.name)
                if kind is None:
                    continue
                summary.found += 1
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
        index = build_index(self.archives, {m.folder for m, _, _ in to_describe}, self._problem)
        with ThreadPoolExecutor(self.settings.hash_workers, thread_name_prefix="takeout") as pool:
            waiting: list[tuple[Member, int | None, Any]] = []
            for member, kind, row_id in to_describe:
                if self.stop.is_set():
                    break
                match = index.match(member)
                self.report.note(member, match)
                if match.info is not None and match.info.trashed and not self.settings.takeout_trashed:
                    self.report.trashed += 1
                album = index.albums.get(member.folder)
                work = pool.submit(describe_member, member, match, self.settings, album, *kind)
                waiting.append((member, row_id, work))
                while len(waiting) > self.settings.hash_workers * 4:
                    self._collect(*waiting.pop(0), batch)
            for item in waiting:
                self._collect(*item, batch)
        batch.save()
        self.progress.set_total(summary.found)
        self.progress.finish()
        summary.elapsed_s = time.monotonic() - started
        for path in self.report.unmatched[:50]:
            log.info("%s: no Google JSON found (its date and place come from the file alone)", path)
        return summary

    def _collect(self, member: Member, row_id: int | None, work: Any, batch: _SaveBatch) -> None:
        try:
            scanned: ScannedFile = work.result()
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            self._problem(member.stored, f"cannot read it from {member.archive.name}: {exc}")
            self.progress.advance(1, member.size_bytes)
            return
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


class TakeoutFiles:
    """The uploader's access to Takeout rows: each row's member, opened from its zip, if that zip is part
    of this run (rows of zips not named this time wait for a run that names them)."""

    def __init__(self, archives: list[Archive]) -> None:
        self.by_name = {archive.name: archive for archive in archives}

    def archive_of(self, stored: str) -> Archive | None:
        return self.by_name.get(stored.split("/", 1)[0])

    def here(self, stored: str) -> bool:
        return self.archive_of(stored) is not None

    def opener(self, stored: str) -> Callable[[], BinaryIO]:
        archive = self.archive_of(stored)
        assert archive is not None
        return lambda: archive.open(stored)

    def stat(self, stored: str) -> tuple[int, int] | None:
        archive = self.archive_of(stored)
        return None if archive is None else archive.stat(stored)

    def close(self) -> None:
        for archive in self.by_name.values():
            archive.close()
