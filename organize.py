"""After the upload: albums, stacks, deleting local copies, and pausing the server's background jobs.

Everything here works from the state database, so it is exact and resumable: each file's album and stack
are recorded in its row once the server confirmed them, and a rerun makes no calls for files already done.

Deletion (`delete_uploaded`) is the last step for a file and follows one rule: a local file is deleted
only when, at that moment, its bytes, hashed again just before, are the bytes of an asset the server holds
now (present, not in the trash, on the server and user this database is tied to); it belongs to this
run's sources and filters; its album and stack steps are done; and no stop was asked. A sidecar goes only
if it is the very file that went up with its photo (path and SHA-1 recorded at upload), unchanged, and no
other file on disk would take it as its own. Each deletion is logged before and after; the row keeps the
asset id, so a kill at any instant leaves either the file or a row that says where its content is.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from config import RAW_EXTENSIONS, Settings
from db_manager import DoneFile, Store
from filters import RunScope, in_sources, wanted
from immich_client import MEDIA_QUEUES, ImmichClient, ImmichError
from logger import FILE_EVENT, get_logger
from progress import ProgressTracker
from utils import extension_of, fingerprint_file, format_bytes

log = get_logger("organize")

COVER_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "heic", "heif", "hif"})
# Google/Pixel "…BURST20190504101500123_COVER.jpg", Samsung "…_BURST001_COVER"; the burst id groups them.
BURST = re.compile(r"^(?P<prefix>.*?)_?BURST(?P<id>\d+)", re.IGNORECASE)


# Deletion confirms with the server again after re-hashing each slice of files: at most this many files
# (or bytes) pass between a file's hash, the server's word on those bytes, and the unlink.
DELETE_SLICE_FILES = 100
DELETE_SLICE_BYTES = 1 << 30


@dataclass
class OrganizeSummary:
    added_to_albums: int = 0
    albums_created: int = 0
    stacks_created: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept: Counter[str] = field(default_factory=Counter)  # why files that could have gone were kept
    would_delete: list[tuple[str, int]] = field(default_factory=list)  # --dry-run: (path, size)
    errors: int = 0


def album_for(file: DoneFile, settings: Settings) -> str | None:
    """The album a file belongs in under the settings, or None."""
    if settings.album:
        return settings.album
    if settings.takeout_paths:  # the album folder's title from its metadata.json
        return json.loads(file.metadata_info or "{}").get("takeout", {}).get("album")
    if not settings.album_from:
        return None
    folder = os.path.dirname(file.filepath)
    if settings.album_from == "folder":
        return os.path.basename(folder) or settings.shared_library or None
    if settings.shared_library:  # its rows hold the path below the mount point already
        return " / ".join(folder.split("/")) if folder else settings.shared_library
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


def stack_name_groups(names: Iterable[str], raw_jpeg: bool, bursts: bool) -> list[list[str]]:
    """The stacks among the names of one folder, cover first: a JPEG/HEIC with its RAWs (same name), and a
    burst's pictures. What is stacked and what deletion waits for are both read from here, so they agree."""
    groups: list[list[str]] = []
    ordered = sorted(names)
    if raw_jpeg:
        by_stem: dict[str, list[str]] = defaultdict(list)
        for name in ordered:
            by_stem[os.path.splitext(name)[0].lower()].append(name)
        for members in by_stem.values():
            covers = [n for n in members if extension_of(n) in COVER_EXTENSIONS]
            raws = [n for n in members if extension_of(n) in RAW_EXTENSIONS]
            if covers and raws:
                groups.append(covers[:1] + raws)
    if bursts:
        by_burst: dict[str, list[str]] = defaultdict(list)
        for name in ordered:
            if match := BURST.match(name):
                by_burst[match["id"]].append(name)
        for members in by_burst.values():
            if len(members) > 1:
                members.sort(key=lambda n: ("COVER" not in n.upper(), n))
                groups.append(members)
    return groups


def stack_groups(files: list[DoneFile], raw_jpeg: bool, bursts: bool) -> list[list[DoneFile]]:
    """Groups of these files to stack, cover first (see stack_name_groups)."""
    by_folder: dict[str, dict[str, DoneFile]] = defaultdict(dict)
    for file in files:
        folder, name = os.path.split(file.filepath)
        by_folder[folder][name] = file
    return [
        [by_name[name] for name in names]
        for by_name in by_folder.values()
        for names in stack_name_groups(by_name, raw_jpeg, bursts)
    ]


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


def sidecar_claimants(sidecar: bytes, leaving: bytes) -> list[bytes]:
    """Files other than `leaving` that would take `sidecar` as their own: `NAME` for NAME.xmp (the
    photo.jpg.xmp form) and any `NAME.ext` (the photo.xmp form, e.g. a RAW beside its JPEG, or a live
    photo's clip). Compared without case, so a doubt keeps the sidecar."""
    folder = os.path.dirname(sidecar) or b"."
    owner = os.path.splitext(os.path.basename(sidecar))[0].lower()
    claimants = []
    for name in os.listdir(folder):
        lowered = name.lower()
        if lowered.endswith(b".xmp") or os.path.join(folder, name) == leaving:
            continue
        if lowered == owner or os.path.splitext(lowered)[0] == owner:
            claimants.append(os.path.join(folder, name))
    return claimants


def deletable_sidecar(file: DoneFile, raw: bytes, scope: RunScope) -> bytes | None:
    """The sidecar that went up with this file, if it is still that very file and nothing else claims it."""
    if not file.sidecar_path or not file.sidecar_sha1:
        return None  # none was sent (a duplicate, or written after the upload): it stays
    sidecar = scope.local(file.sidecar_path.encode("utf-8"))
    if os.path.dirname(sidecar) != os.path.dirname(raw):
        return None
    try:
        if fingerprint_file(sidecar).sha1 != file.sidecar_sha1:
            log.info("%s changed since it went up with its photo: kept", file.sidecar_path)
            return None
        claimants = sidecar_claimants(sidecar, raw)
    except OSError:
        return None
    if claimants:
        log.info("%s: kept, %s still takes it as its sidecar", file.sidecar_path, os.fsdecode(claimants[0]))
        return None
    return sidecar


class StackPartners:
    """Files on disk that would be stacked with a given file (its RAW or JPEG, its burst): deletion
    waits until they are all in Immich and stacked with it."""

    def __init__(self, settings: Settings, done: list[DoneFile], scope: RunScope) -> None:
        self.settings = settings
        self.scope = scope
        self.by_path = {f.filepath: f for f in done}
        self._partners: dict[str, dict[str, list[str]]] = {}

    def _partners_in(self, folder: str) -> dict[str, list[str]]:
        """For each photo or video on disk in a folder (given as its rows store it; read once), the paths
        it would be stacked with."""
        if folder not in self._partners:
            try:
                where = self.scope.local(os.fsencode(folder)) if folder else self.scope.root or b"."
                names = [os.fsdecode(name) for name in os.listdir(where)]
            except OSError:
                names = []
            media = [n for n in names if self.settings.media_kind(extension_of(n)) is not None]
            partners: dict[str, list[str]] = defaultdict(list)
            for group in stack_name_groups(media, self.settings.stack_raw_jpeg, self.settings.stack_bursts):
                for name in group:
                    partners[name] += [os.path.join(folder, other) for other in group if other != name]
            self._partners[folder] = partners
        return self._partners[folder]

    def partners(self, file: DoneFile) -> list[str]:
        folder, name = os.path.split(file.filepath)
        return self._partners_in(folder).get(name, [])

    def stacked(self, file: DoneFile) -> bool:
        if not (self.settings.stack_raw_jpeg or self.settings.stack_bursts):
            return True
        for path in self.partners(file):
            partner = self.by_path.get(path)
            if partner is None or not file.stack_id or partner.stack_id != file.stack_id:
                return False
        return True


def deletion_candidates(
    files: list[DoneFile], settings: Settings, target_id: int, steps_done: bool, scope: RunScope
) -> tuple[list[DoneFile], Counter[str]]:
    """Files this run may delete, and why others were kept. Outside the run's sources or filters a file
    is simply not this run's business; inside, each reason to keep it is counted (and logged)."""
    allowed = {"success", "duplicate"} if settings.delete_duplicates else {"success"}
    partners = StackPartners(settings, files, scope)
    candidates: list[DoneFile] = []
    kept: Counter[str] = Counter()

    def keep(file: DoneFile, reason: str) -> None:
        kept[reason] += 1
        log.info("%s: kept: %s", file.filepath, reason)

    for file in files:
        if file.deleted or file.upload_status not in allowed:
            continue
        raw = scope.path_of(file.filepath, file.filepath_b64)
        if not in_sources(raw, settings) or not wanted(file, settings, os.fsdecode(raw)):
            continue
        if file.target_id != target_id or not file.sha1:
            keep(file, "recorded on another Immich server or user")
        elif not steps_done and (name := album_for(file, settings)) and file.album_name != name:
            keep(file, "not in its album yet")
        elif not steps_done and not partners.stacked(file):
            keep(file, "not stacked with its RAW/JPEG or burst yet")
        else:
            candidates.append(file)
    return candidates, kept


def held_now(client: ImmichClient, items: list[tuple[DoneFile, str]]) -> set[int]:
    """Row ids whose given SHA-1 is an asset the server holds right now, outside the trash."""
    answers = client.bulk_upload_check([(str(f.id), sha1) for f, sha1 in items])
    return {
        f.id
        for f, _sha1 in items
        if (answer := answers.get(str(f.id))) is not None and answer.held and not answer.is_trashed
    }


def _slices(files: list[DoneFile]) -> Iterator[list[DoneFile]]:
    chunk: list[DoneFile] = []
    size = 0
    for file in files:
        chunk.append(file)
        size += file.file_size
        if len(chunk) >= DELETE_SLICE_FILES or size >= DELETE_SLICE_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def delete_uploaded(
    client: ImmichClient,
    store: Store,
    settings: Settings,
    files: list[DoneFile],
    progress: ProgressTracker,
    stop: threading.Event,
    target_id: int,
    dry_run: bool = False,
) -> OrganizeSummary:
    """Delete local files under the rule in this module's docstring: uploads, and with DELETE_DUPLICATES
    files Immich already had. With `dry_run`, everything is checked and nothing deleted."""
    summary = OrganizeSummary()
    scope = RunScope.of(settings)
    candidates, summary.kept = deletion_candidates(files, settings, target_id, dry_run, scope)
    if not candidates:
        return summary
    # A first word from the server, so the run can say how much it is about to delete.
    confirmed = held_now(client, [(f, f.sha1 or "") for f in candidates])
    for file in candidates:
        if file.id not in confirmed:
            summary.kept["not in Immich now (deleted or in the trash there)"] += 1
            log.warning(
                "%s: Immich does not hold it now (deleted or in the trash there): kept", file.filepath
            )
    doomed = [f for f in candidates if f.id in confirmed]
    if not doomed:
        return summary
    total = sum(f.file_size for f in doomed)
    verb = "Would delete" if dry_run else "Deleting"
    progress.message(
        f"{verb} up to {len(doomed)} local file{'s' if len(doomed) != 1 else ''} ({format_bytes(total)}) that "
        "Immich holds, each hashed again and confirmed first (DELETE_UPLOADED)"
    )
    for chunk in _slices(doomed):
        if stop.is_set():
            break
        hashed: list[tuple[DoneFile, bytes, tuple[int, int, int, int], str]] = []
        for file in chunk:
            if stop.is_set():
                break
            raw = scope.path_of(file.filepath, file.filepath_b64)
            try:
                before = os.stat(raw)
                fp = fingerprint_file(raw, settings.hash_chunk_size)
            except FileNotFoundError:
                continue  # gone already; the next scan marks it missing
            except OSError as exc:
                summary.kept["could not be read again"] += 1
                log.warning("%s: could not be read again (%s): kept", file.filepath, exc)
                continue
            if fp.sha1 != file.sha1:
                summary.kept["changed since it was uploaded"] += 1
                log.warning("%s: its bytes changed since they went to Immich: kept", file.filepath)
                continue
            # The identity of what was hashed: another file renamed into its place is not these bytes.
            hashed.append((file, raw, (before.st_dev, before.st_ino, fp.size_bytes, fp.mtime_ns), fp.sha1))
        if not hashed:
            continue
        # The server's word on exactly the bytes just read, moments before they go.
        try:
            held = held_now(client, [(f, sha1) for f, _raw, _st, sha1 in hashed])
        except ImmichError as exc:
            summary.errors += 1
            log.error("deletion stopped: Immich could not confirm the next files (%s); the rest kept", exc)
            break
        for file, raw, identity, sha1 in hashed:
            if stop.is_set():
                break
            if file.id not in held:
                summary.kept["not in Immich now (deleted or in the trash there)"] += 1
                log.warning("%s: Immich does not hold it now: kept", file.filepath)
                continue
            try:
                st = os.stat(raw)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != identity:
                summary.kept["changed while it was checked"] += 1
                log.warning("%s: changed while it was checked: kept", file.filepath)
                continue
            if dry_run:
                summary.would_delete.append((file.filepath, file.file_size))
                continue
            sidecar = deletable_sidecar(file, raw, scope)
            log.info("deleting %s (in Immich as asset %s, SHA-1 %s)", file.filepath, file.asset_id, sha1)
            try:
                os.remove(raw)
            except OSError as exc:
                summary.errors += 1
                log.warning("%s: could not delete: %s", file.filepath, exc.strerror, extra=FILE_EVENT)
                continue
            store.record_deleted(file.id)
            log.info("deleted %s", file.filepath)
            summary.deleted += 1
            summary.deleted_bytes += file.file_size
            if sidecar is not None:
                try:
                    os.remove(sidecar)
                    log.info("deleted %s, the sidecar that went up with it", file.sidecar_path)
                except OSError as exc:
                    log.warning("%s: could not delete: %s", file.sidecar_path, exc.strerror)
    if stop.is_set():
        log.warning("deletion stopped as asked; the files not yet deleted stay")
    return summary


def organize(
    client: ImmichClient,
    store: Store,
    settings: Settings,
    progress: ProgressTracker,
    stop: threading.Event,
    target_id: int,
    dry_run: bool = False,
) -> OrganizeSummary:
    """Albums, then stacks, then deletion (last: a file leaves the disk only once all else is recorded).
    A dry run changes nothing in Immich or on disk; it reports what deletion would remove."""
    total = OrganizeSummary()
    albums = settings.album or settings.album_from or settings.takeout_paths
    wants_any = albums or settings.stack_raw_jpeg or settings.stack_bursts
    if not wants_any and not settings.delete_uploaded:
        return total
    files = store.done_files()
    steps = []
    if not dry_run and albums:
        steps.append(update_albums(client, store, settings, files))
    if not dry_run and (settings.stack_raw_jpeg or settings.stack_bursts):
        steps.append(update_stacks(client, store, settings, files))
    if settings.delete_uploaded and settings.takeout_paths:
        log.warning("a Takeout's zips are never changed: --delete-uploaded does nothing to them")
    elif settings.delete_uploaded and not stop.is_set():
        if steps:
            files = store.done_files()  # with the albums and stacks just recorded
        steps.append(delete_uploaded(client, store, settings, files, progress, stop, target_id, dry_run))
    for step in steps:
        total.added_to_albums += step.added_to_albums
        total.albums_created += step.albums_created
        total.stacks_created += step.stacks_created
        total.deleted += step.deleted
        total.deleted_bytes += step.deleted_bytes
        total.kept += step.kept
        total.would_delete += step.would_delete
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
    if client.user is not None and not client.user.is_admin:
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
