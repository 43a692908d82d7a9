"""After the upload: albums, stacks, deleting local copies, and pausing the server's background jobs.

Everything here works from the state database, so it is exact and resumable: each file's album and stack
are recorded in its row once the server confirmed them, and a rerun makes no calls for files already done.

Albums, stacks and deletion work on this run's files only (`filters.RunFiles`: its folders and filters).

Deletion (`delete_uploaded`) is the last step for a file and follows one rule: a local file is deleted
only when, at that moment, its bytes, hashed again just before, are the bytes of the asset its row names,
as the server confirms by that asset's id (its checksum, its owner this key's user, not in the trash; a bulk
check's "duplicate" is no proof: a server can be wrong or not the user's); the file is a regular file inside
the source folders' real paths and belongs to this run's sources and filters; its album and stack steps are
done; and no stop was asked. What is removed is the file that was checked: it is renamed to a temporary name
recorded in its row, compared, then unlinked (`remove_checked`); a kill leaves the file or its temporary name,
which the next run puts back. A sidecar goes only if it is the very file that went up with its photo (path and
SHA-1 recorded at upload), unchanged, and no other file on disk would take it as its own. Each deletion is
logged before and after; the row keeps the asset id, so a kill at any instant leaves either the file or a row
that says where its content is.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from config import RAW_EXTENSIONS, Settings
from db_manager import DoneFile, RunProblem, Store
from edits import replace_edited
from filters import DELETING_PREFIX, RunFiles, RunScope
from immich_client import MEDIA_QUEUES, ImmichClient, ImmichError, ServerUnreachable, StopRequested
from live_photos import link_live_photos, live_clip
from logger import FILE_EVENT, get_logger
from progress import ProgressTracker
from tags import tagged, update_tags
from utils import (
    FileIdentity,
    SourceRoots,
    display_path,
    extension_of,
    file_identity,
    fingerprint_file,
    format_bytes,
    is_inside,
    plural,
    rename_no_replace,
)

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
    tagged: int = 0  # files whose asset got a tag it lacked
    live_photos: int = 0  # photos linked to their live photo clip after the upload
    replaced: int = (
        0  # earlier versions of edited files moved to Immich's trash, their new ones in their place
    )
    stacks_created: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept: Counter[str] = field(default_factory=Counter)  # why files that could have gone were kept
    would_delete: list[tuple[str, int]] = field(default_factory=list)  # --dry-run: (path, size)
    errors: int = 0
    problems: list[RunProblem] = field(default_factory=list)  # the errors, each with its path and reason


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
        if name and file.album_name != name and not live_clip(file):
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


def deletable_sidecar(file: DoneFile, raw: bytes, scope: RunScope) -> tuple[bytes, FileIdentity] | None:
    """The sidecar that went up with this file, if it is still that very file (with its state as hashed) and
    nothing else claims it."""
    if not file.sidecar_path or not file.sidecar_sha1:
        return None  # none was sent (a duplicate, or written after the upload): it stays
    sidecar = scope.local(file.sidecar_path.encode("utf-8"))
    if os.path.dirname(sidecar) != os.path.dirname(raw):
        return None
    try:
        if stat.S_ISLNK(os.lstat(sidecar).st_mode):
            return None
        fp = fingerprint_file(sidecar)
        if fp.sha1 != file.sidecar_sha1:
            log.info("%s changed since it went up with its photo: kept", file.sidecar_path)
            return None
        claimants = sidecar_claimants(sidecar, raw)
    except OSError:
        return None
    if claimants:
        log.info("%s: kept, %s still takes it as its sidecar", file.sidecar_path, os.fsdecode(claimants[0]))
        return None
    return sidecar, fp.identity


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


# Why a file that could have been deleted was kept, with what to do where the user can do something.
KEPT_DUPLICATE = "Immich already had it before this machine sent it (--delete-duplicates deletes these too)"
KEPT_OTHER_TARGET = "recorded on another Immich server or user"
KEPT_NO_ALBUM = "not in its album yet"
KEPT_NO_STACK = "not stacked with its RAW/JPEG or burst yet"
KEPT_NO_TAGS = "not tagged yet"
KEPT_NO_LIVE_LINK = "its live photo's other half is not in Immich and linked with it yet"
KEPT_LINK = "a symbolic link (neither it nor what it points to is deleted)"
KEPT_OUTSIDE = "lies outside the source folders' real paths (reached through a symbolic link)"
KEPT_NOT_FILE = "not a regular file"
KEPT_UNREADABLE = "could not be read again"
KEPT_CHANGED = "changed since it was uploaded (its new bytes are not in Immich)"
KEPT_RACED = "changed or replaced while it was being checked"
KEPT_NOT_HELD = "Immich does not hold it now (deleted there, or not this server's asset)"
KEPT_OTHER_BYTES = "Immich's asset holds other bytes than the file"
KEPT_OTHER_OWNER = "Immich's asset belongs to another user"
KEPT_TRASHED = "in Immich's trash (restore it there to delete the file here)"
KEPT_NO_ASSET_READ = "the API key may not read assets (give it asset.read to confirm before deleting)"
KEPT_NO_USER = "the API key may not read its user (give it user.read to confirm the owner)"
KEPT_UNCONFIRMED = "Immich could not confirm it (an error; tried again next run)"


def live_linked(file: DoneFile, done_by_id: dict[int, DoneFile]) -> bool:
    """A live photo's photo and clip are both in Immich, linked (or the file is none of a pair)."""
    if file.live_partner_id is None:
        return True
    partner = done_by_id.get(file.live_partner_id)
    if partner is None:
        return False
    photo, clip = (partner, file) if live_clip(file) else (file, partner)
    return photo.live_video_id is not None and photo.live_video_id == clip.asset_id


def deletion_candidates(
    files: list[DoneFile],
    settings: Settings,
    target_id: int,
    steps_done: bool,
    run_files: RunFiles,
    done_by_id: dict[int, DoneFile] | None = None,
) -> tuple[list[DoneFile], Counter[str]]:
    """Files this run may delete, and why others were kept. A file that is not the run's (outside its
    sources or filters) is simply not its business; for the run's files, each reason to keep one is counted
    (and logged)."""
    allowed = {"success", "duplicate"} if settings.delete_duplicates else {"success"}
    partners = StackPartners(settings, files, run_files.scope)
    candidates: list[DoneFile] = []
    kept: Counter[str] = Counter()

    def keep(file: DoneFile, reason: str) -> None:
        kept[reason] += 1
        log.info("%s: kept: %s", file.filepath, reason)

    for file in files:
        if file.deleted or not run_files.includes(file):
            continue
        if file.upload_status not in allowed:
            keep(file, KEPT_DUPLICATE)
        elif file.target_id != target_id or not file.sha1:
            keep(file, KEPT_OTHER_TARGET)
        elif (
            not steps_done
            and not live_clip(file)
            and (name := album_for(file, settings))
            and file.album_name != name
        ):
            keep(file, KEPT_NO_ALBUM)
        elif not steps_done and not partners.stacked(file):
            keep(file, KEPT_NO_STACK)
        elif not steps_done and not tagged(file, settings):
            keep(file, KEPT_NO_TAGS)
        elif not steps_done and not live_linked(
            file, done_by_id if done_by_id is not None else {f.id: f for f in files}
        ):
            keep(file, KEPT_NO_LIVE_LINK)
        else:
            candidates.append(file)
    return candidates, kept


def real_roots(settings: Settings) -> tuple[bytes, ...]:
    """The source folders' real paths as the link rule reaches them: deletion never touches anything outside
    them (a source whose own path holds another user's link to elsewhere is none)."""
    return SourceRoots.of(settings.source_dirs).paths


def local_obstacle(raw: bytes, roots: tuple[bytes, ...]) -> str | None:
    """Why the file at `raw` may not be deleted whatever the server says (a link, not a regular file, outside
    the sources' real paths), or None. OSErrors propagate (FileNotFoundError: it is gone)."""
    st = os.lstat(raw)
    if stat.S_ISLNK(st.st_mode):
        return KEPT_LINK
    if not stat.S_ISREG(st.st_mode):
        return KEPT_NOT_FILE
    real = os.fsencode(os.path.realpath(raw))
    if not is_inside(real, roots):
        return KEPT_OUTSIDE
    try:
        there = os.lstat(real)
    except OSError:
        return KEPT_OUTSIDE  # its real path leads nowhere here: a link into another process's view (/proc)
    if (there.st_dev, there.st_ino) != (st.st_dev, st.st_ino):
        return KEPT_OUTSIDE
    return None


class Checked(NamedTuple):
    """A candidate after its checks: the bytes on disk now are the row's, and Immich confirmed its asset
    holds exactly them for this user, outside the trash. `identity` is the file's state as it was hashed."""

    file: DoneFile
    raw: bytes
    identity: FileIdentity
    sha1: str


class DeletionStopped(Exception):
    """The server went away (or a stop was asked) while deletion confirmed files: the rest stay."""


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


class Deleter:
    """Deletes local files under the rule in this module's docstring. Each file is hashed again, its asset
    confirmed by id on the server (`GET /api/assets/{id}`: its checksum is the file's SHA-1, its owner this
    key's user, it is not in the trash; a bulk check's "duplicate" is no proof), and then removed so that what
    is removed is what was checked: the file is renamed to a temporary name (recorded in its row first), the
    renamed inode compared with the hashed one, and only then unlinked; anything else is put back, never over
    a file that appeared at the path meanwhile."""

    def __init__(
        self,
        client: ImmichClient,
        store: Store,
        settings: Settings,
        run_files: RunFiles,
        progress: ProgressTracker,
        stop: threading.Event,
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.run_files = run_files
        self.progress = progress
        self.stop = stop
        self.summary = OrganizeSummary()
        self.real_roots = real_roots(settings)
        self._lock = threading.Lock()

    def keep(self, file: DoneFile, reason: str, detail: str = "") -> None:
        with self._lock:  # checks run on a thread pool
            self.summary.kept[reason] += 1
        log.warning(
            "%s: kept: %s%s", file.filepath, reason, f" ({detail})" if detail else "", extra=FILE_EVENT
        )

    def run(self, candidates: list[DoneFile], dry_run: bool) -> OrganizeSummary:
        """Delete the candidates that pass every check; a dry run lists them instead (its summary says how
        many, with the files it would send first: one count, said once)."""
        candidates = [f for f in candidates if self.local_candidate(f)]
        if not candidates:
            return self.summary
        if not dry_run:
            total = sum(f.file_size for f in candidates)
            self.progress.message(
                f"Deleting up to {plural(len(candidates), 'local file')} ({format_bytes(total)}) that Immich "
                "holds, each hashed again and confirmed by its asset first (DELETE_UPLOADED)"
            )
        from concurrent.futures import ThreadPoolExecutor

        if not dry_run:
            self.store.set_deleting(True)
        try:
            with ThreadPoolExecutor(self.settings.upload_concurrency, thread_name_prefix="confirm") as pool:
                for chunk in _slices(candidates):
                    if self.stop.is_set():
                        break
                    # Hashing and asking the server overlap; the removals come after, in order, one by one.
                    for file, checked in zip(chunk, pool.map(self.check, chunk), strict=True):
                        if self.stop.is_set():
                            break
                        if checked is None:
                            continue
                        if dry_run:
                            self.summary.would_delete.append((file.filepath, file.file_size))
                        else:
                            self.remove(checked)
        except DeletionStopped as exc:
            self.summary.errors += 1
            self.summary.problems.append(RunProblem("(deletion)", str(exc), "the next run goes on"))
            log.error("deletion stopped: %s; the files not yet deleted stay", exc)
        if not dry_run:
            self.store.set_deleting(False)
        if self.stop.is_set():
            log.warning("deletion stopped as asked; the files not yet deleted stay")
        return self.summary

    def local_candidate(self, file: DoneFile) -> bool:
        """Whether the file on disk may be deleted at all (a regular file inside the sources' real paths),
        before anything is announced; a file kept here is counted with its reason, one gone is not. `check`
        looks again right before the file's removal."""
        try:
            obstacle = local_obstacle(self.run_files.path(file), self.real_roots)
        except FileNotFoundError:
            return False  # gone already; the next scan marks it missing
        except OSError as exc:
            self.keep(file, KEPT_UNREADABLE, str(exc.strerror or exc))
            return False
        if obstacle is not None:
            self.keep(file, obstacle)
            return False
        return True

    def check(self, file: DoneFile) -> Checked | None:
        """The file, hashed now and confirmed by the server; None when it is kept (counted) or gone."""
        if self.stop.is_set():
            return None
        raw = self.run_files.path(file)
        try:
            obstacle = local_obstacle(raw, self.real_roots)
            if obstacle is not None:
                self.keep(file, obstacle)
                return None
            fp = fingerprint_file(raw, self.settings.hash_chunk_size)
        except FileNotFoundError:
            return None  # gone already; the next scan marks it missing
        except OSError as exc:
            self.keep(file, KEPT_UNREADABLE, str(exc.strerror or exc))
            return None
        if fp.sha1 != file.sha1:
            self.keep(file, KEPT_CHANGED)
            return None
        reason = self.confirm(file, fp.sha1)
        if reason is not None:
            self.keep(file, reason, f"asset {file.asset_id}")
            return None
        return Checked(file, raw, fp.identity, fp.sha1)

    def confirm(self, file: DoneFile, sha1: str) -> str | None:
        """None when the server holds exactly these bytes as this user's asset, outside the trash; else why not."""
        user = self.client.user
        if user is None or user.identity.startswith("key:"):
            return KEPT_NO_USER
        try:
            asset = self.client.asset(file.asset_id)
        except (ServerUnreachable, StopRequested) as exc:
            raise DeletionStopped(str(exc)) from None
        except ImmichError as exc:
            if exc.status == 403:
                return KEPT_NO_ASSET_READ
            if exc.status is not None and exc.status < 500:
                return KEPT_NOT_HELD
            return KEPT_UNCONFIRMED
        if asset.sha1 != sha1:
            return KEPT_OTHER_BYTES
        if asset.owner_id != user.identity:
            return KEPT_OTHER_OWNER
        if asset.is_trashed:
            return KEPT_TRASHED
        return None

    def remove(self, checked: Checked) -> None:
        file = checked.file
        sidecar = deletable_sidecar(file, checked.raw, self.run_files.scope)
        log.info("deleting %s (in Immich as asset %s, SHA-1 %s)", file.filepath, file.asset_id, checked.sha1)
        outcome = remove_checked(self.store, file.id, "file", checked.raw, checked.identity)
        if outcome is None:
            log.info("deleted %s", file.filepath)
            self.summary.deleted += 1
            self.summary.deleted_bytes += file.file_size
        elif isinstance(outcome, OSError):
            self.summary.errors += 1
            reason = f"could not be deleted: {outcome.strerror or outcome}"
            self.summary.problems.append(RunProblem(file.filepath, reason, "check the folder's permissions"))
            log.warning("%s: %s", file.filepath, reason, extra=FILE_EVENT)
            return
        else:
            self.keep(file, outcome)
            return
        if sidecar is not None:
            path, identity = sidecar
            gone = remove_checked(self.store, file.id, "sidecar", path, identity)
            if gone is None:
                log.info("deleted %s, the sidecar that went up with it", file.sidecar_path)
            else:
                log.warning("%s: kept: %s", file.sidecar_path, gone)


def remove_checked(
    store: Store, row_id: int, what: str, raw: bytes, identity: FileIdentity
) -> str | OSError | None:
    """Remove `raw` if it is still the file whose state is `identity`: None when removed (or already gone),
    else why it was kept (an OSError when the removal itself failed). The file is first renamed to a hidden
    temporary name in its folder, recorded in the row before the rename; the renamed inode is compared with
    the one checked (a file renamed onto the path meanwhile is another inode, an edit moves the mtime); only
    then is it unlinked. What is not the checked file goes back, never over a file that appeared since."""
    try:
        st = os.lstat(raw)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    if not stat.S_ISREG(st.st_mode) or file_identity(st) != identity:
        return KEPT_RACED
    temp_name = DELETING_PREFIX + os.urandom(6).hex().encode()
    temp = os.path.join(os.path.dirname(raw), temp_name)
    store.record_deleting(row_id, f"{what}:{temp_name.decode()}")
    try:
        os.rename(raw, temp)
    except FileNotFoundError:
        store.record_deleting(row_id, None)
        return None
    except OSError as exc:
        store.record_deleting(row_id, None)
        return exc
    moved = os.lstat(temp)
    # A rename moves the ctime; the inode, size and mtime say it is the file that was checked.
    if file_identity(moved)[:4] != identity[:4]:
        put_back(temp, raw)
        store.record_deleting(row_id, None)
        return KEPT_RACED
    try:
        os.unlink(temp)
    except OSError as exc:
        put_back(temp, raw)
        store.record_deleting(row_id, None)
        return exc
    if what == "file":
        store.record_deleted(row_id)
    else:
        store.record_deleting(row_id, None)
    return None


def put_back(temp: bytes, original: bytes) -> bytes:
    """Move a file from its temporary name back to where it was, or, when a file appeared there meanwhile,
    beside it under a name of its own; returns where it is now."""
    target = original
    for n in range(1, 1000):
        try:
            rename_no_replace(temp, target)
        except FileExistsError:
            stem, ext = os.path.splitext(original)
            target = stem + f" (kept by immich-uploader {n})".encode() + ext
            continue
        if target != original:
            log.warning(
                "%s: a new file appeared at its path while it was being deleted; it was kept as %s",
                display_path(original), display_path(target),
            )  # fmt: skip
        return target
    raise OSError(f"no free name to put {display_path(original)} back")


def finish_interrupted_deletions(store: Store, scope: RunScope) -> int:
    """A run killed mid-deletion leaves a file under its temporary name (or gone, if the kill came after the
    unlink): put each back where it was (never over a file that appeared since), or record the deletion.
    Returns how many rows it settled. Cheap when nothing was interrupted: one state lookup."""
    if not store.deletion_interrupted():
        return 0
    settled = 0
    for row_id, filepath, filepath_b64, sidecar_path, intent in store.interrupted_deletions():
        what, _, temp_name = intent.partition(":")
        if what == "sidecar" and sidecar_path:
            original = scope.local(sidecar_path.encode("utf-8"))
        else:
            original = scope.path_of(filepath, filepath_b64)
        temp = os.path.join(os.path.dirname(original), temp_name.encode())
        if os.path.lexists(temp):
            where = put_back(temp, original)
            log.warning("a deletion was interrupted: %s is back in its place", display_path(where))
            store.record_deleting(row_id, None)
        elif what == "file" and not os.path.lexists(original):
            store.record_deleted(row_id)  # it was confirmed and unlinked; only the record was missing
        else:
            store.record_deleting(row_id, None)  # the rename never happened
        settled += 1
    store.set_deleting(False)
    return settled


def organize(
    client: ImmichClient,
    store: Store,
    settings: Settings,
    progress: ProgressTracker,
    stop: threading.Event,
    target_id: int,
    run_files: RunFiles,
    dry_run: bool = False,
) -> OrganizeSummary:
    """Albums, then stacks, then deletion (last: a file leaves the disk only once all else is recorded), each
    for this run's files only (`run_files`). A dry run changes nothing in Immich or on disk; it reports what
    deletion would remove."""
    total = OrganizeSummary()
    if not dry_run:
        # First: the copy carries the earlier version's albums and stack, which the steps below then find.
        replaced = replace_edited(client, store, settings, target_id, run_files, stop)
        linked = link_live_photos(client, store, target_id, run_files, stop)
        total.replaced, total.live_photos = replaced.replaced, linked.linked
        total.errors, total.problems = replaced.errors + linked.errors, replaced.problems + linked.problems
    albums = settings.album or settings.album_from or settings.takeout_paths
    tags = settings.tags or settings.tags_from_folder
    wants_any = albums or tags or settings.stack_raw_jpeg or settings.stack_bursts
    if not wants_any and not settings.delete_uploaded:
        return total
    done = store.done_files()
    files = [f for f in done if not f.deleted and run_files.includes(f)]
    steps = []
    if not dry_run and albums:
        steps.append(update_albums(client, store, settings, files))
    if not dry_run and (settings.stack_raw_jpeg or settings.stack_bursts):
        steps.append(update_stacks(client, store, settings, files))
    if not dry_run and tags:
        tagging = update_tags(client, store, settings, files, stop)
        steps.append(OrganizeSummary(tagged=tagging.tagged, errors=tagging.errors, problems=tagging.problems))
    if settings.delete_uploaded and settings.takeout_paths:
        log.warning("a Takeout's zips are never changed: --delete-uploaded does nothing to them")
    elif settings.delete_uploaded and not stop.is_set():
        if steps:
            done = store.done_files()
            files = [f for f in done if not f.deleted and run_files.includes(f)]
        candidates, kept = deletion_candidates(
            files, settings, target_id, dry_run, run_files, {f.id: f for f in done}
        )
        deleter = Deleter(client, store, settings, run_files, progress, stop)
        deleter.summary.kept = kept
        steps.append(deleter.run(candidates, dry_run) if candidates else deleter.summary)
    for step in steps:
        total.added_to_albums += step.added_to_albums
        total.tagged += step.tagged
        total.albums_created += step.albums_created
        total.stacks_created += step.stacks_created
        total.deleted += step.deleted
        total.deleted_bytes += step.deleted_bytes
        total.kept += step.kept
        total.would_delete += step.would_delete
        total.errors += step.errors
        total.problems += step.problems
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
