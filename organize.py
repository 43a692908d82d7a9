"""After the upload: albums, stacks, deleting local copies, and pausing the server's background jobs.

Everything here works from the state database, so it is exact and resumable: each file's album and stack
are recorded in its row once the server confirmed them, and a rerun makes no calls for files already done.
Deletion touches only files whose row says Immich has them (and, unless asked, only those this tool
uploaded), whose size and mtime still match what was uploaded, after that row was committed.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from config import RAW_EXTENSIONS, Settings
from db_manager import DoneFile, Store
from immich_client import MEDIA_QUEUES, ImmichClient, ImmichError
from logger import FILE_EVENT, get_logger
from progress import ProgressTracker
from utils import sidecar_for, text_to_path

log = get_logger("organize")

COVER_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "heic", "heif", "hif"})
# Google/Pixel "…BURST20190504101500123_COVER.jpg", Samsung "…_BURST001_COVER"; the burst id groups them.
BURST = re.compile(r"^(?P<prefix>.*?)_?BURST(?P<id>\d+)", re.IGNORECASE)


@dataclass
class OrganizeSummary:
    added_to_albums: int = 0
    albums_created: int = 0
    stacks_created: int = 0
    deleted: int = 0
    errors: int = 0


def album_for(file: DoneFile, settings: Settings) -> str | None:
    """The album a file belongs in under the settings, or None."""
    if settings.album:
        return settings.album
    if not settings.album_from:
        return None
    folder = os.path.dirname(file.filepath)
    if settings.album_from == "folder":
        return os.path.basename(folder) or None
    for root in settings.source_dirs:
        root_text = str(root).rstrip("/")
        if folder == root_text:
            return os.path.basename(root_text) or None
        if folder.startswith(root_text + "/"):
            return " / ".join(folder[len(root_text) + 1 :].split("/"))
    return os.path.basename(folder) or None


def update_albums(
    client: ImmichClient, store: Store, settings: Settings, files: list[DoneFile]
) -> OrganizeSummary:
    summary = OrganizeSummary()
    wanted: dict[str, list[DoneFile]] = defaultdict(list)
    for file in files:
        name = album_for(file, settings)
        if name and file.album_name != name:
            wanted[name].append(file)
    if not wanted:
        return summary  # everything is where it belongs: no calls
    existing = client.albums()
    for name, members in sorted(wanted.items()):
        album_id = existing.get(name)
        if album_id is None:
            album_id = client.create_album(name)
            existing[name] = album_id
            summary.albums_created += 1
            log.info("created album %r", name)
        outcome = client.add_to_album(album_id, [f.asset_id for f in members])
        added = []
        for file in members:
            error = outcome.get(file.asset_id, "no answer")
            if error is None:
                added.append((file.id, name, album_id))
            else:
                summary.errors += 1
                log.warning("%s: not added to album %r: %s", file.filepath, name, error, extra=FILE_EVENT)
        store.record_albums(added)
        summary.added_to_albums += len(added)
    return summary


def stack_groups(files: list[DoneFile], raw_jpeg: bool, bursts: bool) -> list[list[DoneFile]]:
    """Groups to stack, cover first: a JPEG/HEIC with its RAW (same folder and name), and bursts."""
    groups: list[list[DoneFile]] = []
    if raw_jpeg:
        by_stem: dict[str, list[DoneFile]] = defaultdict(list)
        for file in files:
            by_stem[os.path.splitext(file.filepath)[0].lower()].append(file)
        for members in by_stem.values():
            covers = [f for f in members if f.extension in COVER_EXTENSIONS]
            raws = [f for f in members if f.extension in RAW_EXTENSIONS]
            if covers and raws:
                groups.append(covers[:1] + raws)
    if bursts:
        by_burst: dict[tuple[str, str], list[DoneFile]] = defaultdict(list)
        for file in files:
            match = BURST.match(os.path.basename(file.filepath))
            if match:
                by_burst[(os.path.dirname(file.filepath), match["id"])].append(file)
        for members in by_burst.values():
            if len(members) > 1:
                members.sort(key=lambda f: ("COVER" not in os.path.basename(f.filepath).upper(), f.filepath))
                groups.append(members)
    return groups


def update_stacks(
    client: ImmichClient, store: Store, settings: Settings, files: list[DoneFile]
) -> OrganizeSummary:
    summary = OrganizeSummary()
    for group in stack_groups(files, settings.stack_raw_jpeg, settings.stack_bursts):
        if all(f.stack_id for f in group) or len({f.asset_id for f in group}) < 2:
            continue
        try:
            stack_id = client.create_stack([f.asset_id for f in group])
        except ImmichError as exc:
            summary.errors += 1
            log.warning("could not stack %s: %s", ", ".join(f.filepath for f in group), exc)
            continue
        store.record_stack([f.id for f in group], stack_id)
        summary.stacks_created += 1
    return summary


def confirmed_in_immich(client: ImmichClient, files: list[DoneFile]) -> set[int]:
    """Row ids whose content Immich holds right now, outside the trash: a row's word, possibly months old,
    is not enough to delete the only other copy."""
    answers = client.bulk_upload_check([(str(f.id), f.sha1) for f in files if f.sha1])
    return {
        int(key)
        for key, answer in answers.items()
        if not answer.accepted and answer.asset_id and not answer.is_trashed
    }


def sidecar_shared(raw: bytes, sidecar: bytes) -> bool:
    """`IMG_1.xmp` may also belong to IMG_1.CR2 beside IMG_1.jpg: then it stays."""
    if sidecar.lower().endswith(os.path.basename(raw).lower() + b".xmp"):
        return False  # photo.jpg.xmp names its one photo
    stem = os.path.splitext(raw)[0]
    folder = os.path.dirname(raw) or b"."
    prefix = os.path.basename(stem) + b"."
    return any(
        name.startswith(prefix) and os.path.join(folder, name) not in (raw, sidecar)
        for name in os.listdir(folder)
    )


def delete_uploaded(
    client: ImmichClient, store: Store, settings: Settings, files: list[DoneFile], progress: ProgressTracker
) -> OrganizeSummary:
    """Delete local files Immich confirmed: uploads, and with DELETE_DUPLICATES files it already had. Each
    is checked with the server first (present, not in the trash) and on disk (unchanged since upload)."""
    summary = OrganizeSummary()
    allowed = {"success", "duplicate"} if settings.delete_duplicates else {"success"}
    doomed = [f for f in files if f.upload_status in allowed]
    if not doomed:
        return summary
    confirmed = confirmed_in_immich(client, doomed)
    for file in doomed:
        if file.id not in confirmed:
            log.warning(
                "%s: Immich does not hold it now (deleted or in the trash there): kept", file.filepath
            )
    doomed = [f for f in doomed if f.id in confirmed]
    if doomed:
        progress.message(f"Deleting {len(doomed)} local files that Immich has confirmed (DELETE_UPLOADED)")
    for file in doomed:
        raw = text_to_path(file.filepath, file.filepath_b64)
        try:
            st = os.stat(raw)
        except FileNotFoundError:
            continue
        if st.st_size != file.file_size or st.st_mtime_ns != file.mtime_ns:
            log.warning("%s changed since it was uploaded: not deleted", file.filepath)
            continue
        sidecar = sidecar_for(raw)
        try:
            os.remove(raw)
            if sidecar is not None and not sidecar_shared(raw, sidecar):
                os.remove(sidecar)  # it was sent with the photo
        except OSError as exc:
            summary.errors += 1
            log.warning("%s: could not delete: %s", file.filepath, exc.strerror)
            if os.path.exists(raw):
                continue
        store.record_deleted(file.id)
        log.info("deleted %s (in Immich as %s)", file.filepath, file.asset_id)
        summary.deleted += 1
    return summary


def organize(
    client: ImmichClient, store: Store, settings: Settings, progress: ProgressTracker
) -> OrganizeSummary:
    """Albums, then stacks, then deletion (last: a file leaves the disk only once all else is recorded)."""
    total = OrganizeSummary()
    wants_any = settings.album or settings.album_from or settings.stack_raw_jpeg or settings.stack_bursts
    if not wants_any and not settings.delete_uploaded:
        return total
    files = store.done_files()
    steps = []
    if settings.album or settings.album_from:
        steps.append(update_albums(client, store, settings, files))
    if settings.stack_raw_jpeg or settings.stack_bursts:
        steps.append(update_stacks(client, store, settings, files))
    if settings.delete_uploaded:
        steps.append(delete_uploaded(client, store, settings, files, progress))
    for step in steps:
        total.added_to_albums += step.added_to_albums
        total.albums_created += step.albums_created
        total.stacks_created += step.stacks_created
        total.deleted += step.deleted
        total.errors += step.errors
    return total


PAUSED_STATE = "paused_server_queues"


@contextmanager
def server_jobs_paused(client: ImmichClient, store: Store, settings: Settings) -> Iterator[None]:
    """Pause Immich's media queues for the run and resume them at the end, also on failure or Ctrl+C.
    Queues an admin had paused before stay paused. The paused list is kept in the database, so queues a
    killed run left paused are resumed by the next run."""
    leftover = store.get_state(PAUSED_STATE)
    if leftover:
        resumed = client.set_jobs_paused(False, leftover.split(","))
        log.warning("resumed Immich queues a stopped run had left paused: %s", ", ".join(resumed))
        store.set_state(PAUSED_STATE, None)
    if not settings.pause_server_jobs:
        yield
        return
    if client.server is not None and not client.server.is_admin:
        log.warning("PAUSE_SERVER_JOBS needs an admin's API key; the server's jobs keep running")
        yield
        return
    already = client.paused_queues()
    paused = client.set_jobs_paused(True, [q for q in MEDIA_QUEUES if q not in already])
    store.set_state(PAUSED_STATE, ",".join(paused))
    log.info("paused Immich's queues: %s", ", ".join(paused))
    try:
        yield
    finally:
        try:
            client.set_jobs_paused(False, paused)
            store.set_state(PAUSED_STATE, None)
            log.info("resumed Immich's queues")
        except ImmichError as exc:
            log.error("could not resume Immich's queues (%s): resume them in Administration > Jobs", exc)
