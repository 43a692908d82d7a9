"""Live photos and motion photos: a still and a short clip shot together, which Immich shows as one picture when
the clip is uploaded first and the photo names it (`livePhotoVideoId`, ../shared/immich-api.md §7c: Immich links
them and hides the clip).

Which files are a pair is read from what they say, never guessed from a name alone. Apple's content
identifier, the same in the photo's maker note and in the clip's QuickTime keys, pairs a photo and a clip of
one folder (among several photos with the clip's identifier, the one with the clip's own name). Without an
identifier on both, a photo and a clip pair only when they lie in one folder under one name (`IMG_1234.HEIC`
and `IMG_1234.MOV`, Google's `PXL_….MP.jpg` or `PXL_….jpg` and `PXL_….MP`), the clip is short and both were
taken within seconds of each other. Two different identifiers never pair, and a file with two equally good
partners pairs with none: a wrong pair (immich#14459, a photo linked to a video shot weeks later under the same
name) is worse than none. A Takeout's clip has no date or length read here: Google writes no JSON for a
photo's motion part, and a clip that borrows its photo's JSON ("motion") is that evidence instead.

`LivePartners` answers the uploader, for each row it is about to send, which row is its partner (it lists the
folder, on disk or in the Takeout's zips, and reads the rows of the photos and clips in it); a folder with
files the scan has not recorded yet is answered later, once the scan is done. `link_live_photos` links in
Immich, after the uploads, the pairs whose photo went up unlinked (its clip was sent later or failed first, or
Immich had the photo already); each pair is linked once, and remembered in the photo's row.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from config import Settings
from db_manager import DoneFile, LiveRow, RunProblem, Store, path_hash
from filters import JUNK_COMPONENT, RunFiles, RunScope
from immich_client import ImmichClient, ImmichError, ServerUnreachable, StopRequested
from logger import FILE_EVENT, get_logger
from utils import extension_of

log = get_logger("live")

PHOTO_EXTENSIONS = frozenset({"heic", "heif", "hif", "jpg", "jpeg", "jpe"})
# Google's motion part is an .MP (an MP4, which Takeout rows keep under that name).
CLIP_EXTENSIONS = frozenset({"mov", "mp4", "m4v", "mp"})
MAX_CLIP_S = 5.0  # an iPhone's clip lasts about 3 s (1.5 before and after the shot), Google's 1.5-3 s
MAX_APART_S = 3.0  # between the photo's capture time and the clip's
OWN_DATES = frozenset({"exif", "video", "takeout"})  # a capture date the file (or its JSON) states


def live_clip(file: DoneFile) -> bool:
    """A live photo's clip (as paired): Immich shows it behind its photo, so it goes into no album and gets no
    tag (its photo does); Immich's own linking takes such clips out of albums too."""
    return file.live_partner_id is not None and file.media_type == "video"


def live_kind(extension: str) -> str | None:
    """ "photo", "clip" or None (a file that is never half of a live photo)."""
    lowered = extension.lower()
    if lowered in PHOTO_EXTENSIONS:
        return "photo"
    if lowered in CLIP_EXTENSIONS:
        return "clip"
    return None


class LiveFile(NamedTuple):
    """What pairing reads of one photo or clip."""

    id: int
    stem: str  # its name without extension, lowered (`PXL_1.MP.jpg` -> `pxl_1`)
    kind: str  # "photo" | "clip"
    content_id: str | None
    duration_s: float | None
    taken: datetime | None  # its own capture time (aware), else None
    motion_json: bool  # a Takeout clip that borrows its photo's JSON: Google's word that it is its motion


def live_file(row_id: int, name: str, extension: str, metadata_info: str | None) -> LiveFile | None:
    kind = live_kind(extension)
    if kind is None:
        return None
    info = json.loads(metadata_info or "{}")
    stem = os.path.splitext(name)[0].lower()
    if kind == "photo" and stem.endswith(".mp"):
        stem = stem[:-3]  # Google's PXL_….MP.jpg beside its PXL_….MP
    taken = None
    if info.get("date_source") in OWN_DATES and isinstance(info.get("date_used"), str):
        try:
            taken = datetime.fromisoformat(info["date_used"])
        except ValueError:
            taken = None
    duration = info.get("duration_s")
    content_id = info.get("content_id")
    return LiveFile(
        id=row_id,
        stem=stem,
        kind=kind,
        content_id=content_id.strip().upper() if isinstance(content_id, str) and content_id.strip() else None,
        duration_s=float(duration) if isinstance(duration, int | float) else None,
        taken=taken,
        motion_json=info.get("takeout", {}).get("match") == "motion",
    )


def _taken_together(photo: LiveFile, clip: LiveFile) -> bool:
    """Both capture times known and within seconds: as instants, or as wall clocks when one of them had no
    zone of its own and was read in a guessed one."""
    if photo.taken is None or clip.taken is None:
        return False
    instant = abs((photo.taken - clip.taken).total_seconds()) if _aware(photo, clip) else None
    wall = abs((photo.taken.replace(tzinfo=None) - clip.taken.replace(tzinfo=None)).total_seconds())
    return (instant is not None and instant <= MAX_APART_S) or wall <= MAX_APART_S


def _aware(*files: LiveFile) -> bool:
    return all(f.taken is not None and f.taken.tzinfo is not None for f in files)


def _short(clip: LiveFile) -> bool:
    if clip.duration_s is not None:
        return 0 < clip.duration_s <= MAX_CLIP_S
    return clip.motion_json


def pair_folder(files: Iterable[LiveFile]) -> dict[int, int]:
    """The live photo pairs among the photos and clips of one folder, as row id -> partner row id (both ways).
    Ranks: the same content identifier and name, the same identifier, the same name with a short clip taken
    within seconds. A file pairs with its one best candidate only if that candidate's one best is it."""
    photos = [f for f in files if f.kind == "photo"]
    clips = [f for f in files if f.kind == "clip"]
    if not photos or not clips:
        return {}
    clips_by_id: dict[str, list[LiveFile]] = defaultdict(list)
    clips_by_stem: dict[str, list[LiveFile]] = defaultdict(list)
    for clip in clips:
        if clip.content_id:
            clips_by_id[clip.content_id].append(clip)
        clips_by_stem[clip.stem].append(clip)
    ranked: dict[tuple[int, int], int] = {}
    for photo in photos:
        candidates = {c.id: c for c in clips_by_id.get(photo.content_id or "", [])}
        candidates.update({c.id: c for c in clips_by_stem.get(photo.stem, [])})
        for clip in candidates.values():
            rank = _rank(photo, clip)
            if rank is not None:
                ranked[(photo.id, clip.id)] = rank
    best_of: dict[int, list[tuple[int, int]]] = defaultdict(list)  # file id -> [(rank, partner id)]
    for (photo_id, clip_id), rank in ranked.items():
        best_of[photo_id].append((rank, clip_id))
        best_of[clip_id].append((rank, photo_id))

    def only_best(file_id: int) -> int | None:
        options = sorted(best_of.get(file_id, []))
        if not options or (len(options) > 1 and options[1][0] == options[0][0]):
            return None  # none, or two equally good: no pair
        return options[0][1]

    pairs: dict[int, int] = {}
    for photo in photos:
        clip_id = only_best(photo.id)
        if clip_id is not None and only_best(clip_id) == photo.id:
            pairs[photo.id], pairs[clip_id] = clip_id, photo.id
    return pairs


def _rank(photo: LiveFile, clip: LiveFile) -> int | None:
    if photo.content_id and clip.content_id:
        if photo.content_id != clip.content_id:
            return None  # the files say they are two different pictures
        return 0 if photo.stem == clip.stem else 1
    if photo.stem == clip.stem and _short(clip) and (_taken_together(photo, clip) or clip.motion_json):
        return 2
    return None


class Folder(NamedTuple):
    rows: dict[int, LiveRow]  # the photos' and clips' rows
    pairs: dict[int, int]
    complete: bool  # every photo and clip on disk has a row (else the scan has not reached them all yet)


class LivePartners:
    """Each row's live photo partner, folder by folder, for the uploader. `listing(folder)` names what a
    folder holds (bytes names; None when it cannot be listed). Pairs that changed are recorded in both rows,
    once the folder's files are all recorded (or the scan is over: `final`), never from half a folder."""

    def __init__(
        self,
        store: Store,
        scope: RunScope,
        settings: Settings,
        listing: Callable[[bytes], Sequence[bytes] | None],
        takeout: bool = False,
        record: bool = True,
    ) -> None:
        self.store = store
        self.scope = scope
        self.settings = settings
        self.listing = listing
        self.takeout = takeout
        self.record = record  # a dry run records nothing
        self._folders: dict[bytes, Folder] = {}
        self._lock = threading.Lock()
        self._flagged = False
        self.final = False  # the scan is over: a folder is as complete as it gets

    def forget(self, final: bool = True) -> None:
        """Read folders again from here on (the scan has recorded more files since)."""
        with self._lock:
            self._folders.clear()
            self.final = final

    def ready(self, raw_path: bytes, extension: str) -> bool:
        """False while the file's folder holds photos or clips the scan has not recorded yet: its partner
        is asked for once the scan is done."""
        return live_kind(extension) is None or self._folder(os.path.dirname(raw_path)).complete

    def partner(self, raw_path: bytes, row_id: int, extension: str) -> LiveRow | None:
        """The row of the file's live photo partner (the clip of a photo, the photo of a clip), or None."""
        if live_kind(extension) is None:
            return None
        folder = self._folder(os.path.dirname(raw_path))
        partner_id = folder.pairs.get(row_id)
        if partner_id is None:
            return None
        if self.record and not self._flagged:
            self.store.ask_to_link_live_photos()  # once a run: a pair of it may be linkable at its end
            self._flagged = True
        return folder.rows.get(partner_id)

    def _folder(self, raw_folder: bytes) -> Folder:
        with self._lock:
            known = self._folders.get(raw_folder)
        if known is not None:
            return known
        names = self._candidates(raw_folder)
        if not names or not any(live_kind(extension_of(n)) == "clip" for n in names):
            folder = Folder({}, {}, True)  # no clip, no pair: no query
        else:
            keys = {path_hash(self.scope.stored(os.path.join(raw_folder, name))): name for name in names}
            found = self.store.live_rows(list(keys))
            recorded = {r.path_hash for r in found}
            rows = {r.id: r for r in found if r.fingerprinted}
            files = [
                f
                for r in rows.values()
                if (f := live_file(r.id, os.path.basename(r.filepath), r.extension, r.metadata_info))
                is not None
            ]
            pairs = pair_folder(files)
            complete = set(keys) <= recorded
            changed = [(r.id, pairs.get(r.id)) for r in rows.values() if r.live_partner_id != pairs.get(r.id)]
            if changed and self.record and (complete or self.final):
                self.store.record_live_pairs(changed)
                rows = {i: r._replace(live_partner_id=pairs.get(i)) for i, r in rows.items()}
            folder = Folder(rows, pairs, complete)
        with self._lock:
            self._folders[raw_folder] = folder
        return folder

    def _candidates(self, raw_folder: bytes) -> list[bytes]:
        """The folder's photos and clips the scan would record (not hidden or junk; of the scanned types)."""
        names = self.listing(raw_folder)
        if names is None:
            return []
        found = []
        for name in names:
            extension = extension_of(name)
            if live_kind(extension) is None:
                continue
            if not self.takeout and (
                self.settings.media_kind(extension) is None
                or (not self.settings.include_hidden and JUNK_COMPONENT.search(b"/" + name))
            ):
                continue
            found.append(name)
        return found


def listdir(folder: bytes) -> list[bytes] | None:
    try:
        return os.listdir(folder or b".")
    except OSError:
        return None


@dataclass
class LinkSummary:
    linked: int = 0
    errors: int = 0
    problems: list[RunProblem] = field(default_factory=list)


def link_live_photos(
    client: ImmichClient, store: Store, target_id: int, run_files: RunFiles, stop: threading.Event
) -> LinkSummary:
    """Link in Immich the recorded pairs whose photo is not linked to its clip yet (`PUT /api/assets/{id}` with
    livePhotoVideoId; Immich hides the clip). A photo this database did not send (Immich had it) is linked only
    when it has no clip of its own there; one that has another is left as it is. Only this run's photos."""
    summary = LinkSummary()
    pairs = store.unlinked_live_pairs(target_id)
    if pairs is None:
        return summary
    left = False
    for pair in pairs:
        if stop.is_set():
            return summary
        if not run_files.includes(pair):
            left = True
            continue
        try:
            if pair.photo_status == "duplicate":
                current = client.asset_details(pair.photo_asset_id).get("livePhotoVideoId")
                if current and current != pair.clip_asset_id:
                    log.info("%s: Immich links it to another clip already; left as it is", pair.filepath)
                    store.record_live_pairs([(pair.photo_id, None), (pair.clip_id, None)])
                    store.record_live_link(pair.photo_id, str(current))
                    continue
            client.update_asset(pair.photo_asset_id, {"livePhotoVideoId": pair.clip_asset_id})
        except (ServerUnreachable, StopRequested):
            raise
        except ImmichError as exc:
            summary.errors += 1
            reason = f"not linked to its live photo clip: {exc}"
            summary.problems.append(RunProblem(pair.filepath, reason, "tried again on the next run"))
            log.warning("%s: %s", pair.filepath, reason, extra=FILE_EVENT)
            left = True
            continue
        store.record_live_link(pair.photo_id, pair.clip_asset_id)
        summary.linked += 1
        log.info("%s: linked to its live photo clip (asset %s)", pair.filepath, pair.clip_asset_id)
    if not left:
        store.live_links_looked_at()
    return summary
