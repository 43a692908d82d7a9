"""Which files a run works on: under its source folders, not hidden or NAS junk (unless INCLUDE_HIDDEN), not
matched by IGNORE_PATTERNS, and passing the upload filters (--since/--until, --include/--exclude,
--only-images/--only-videos). The scanner, the uploader and deletion all ask here, so a file a run would
not scan or upload is never deleted by it either.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable
from datetime import date
from typing import NamedTuple, Protocol

from config import JUNK_NAMES, ConfigError, Settings
from utils import text_to_path

# A file deletion renamed aside for a moment (organize.remove_checked): hidden, and never scanned whatever
# INCLUDE_HIDDEN says.
DELETING_PREFIX = b".immich-uploader-deleting-"

# One compiled pattern: an fnmatch call per junk name per file cost 13% of a rescan.
JUNK = re.compile("|".join(fnmatch.translate(name) for name in JUNK_NAMES).encode())


class RunScope(NamedTuple):
    """Whose rows a run works on, and where their files are on this machine. This machine's own rows
    (`m:NAME`) store absolute paths. A shared library's rows (`l:NAME`, the same on every machine that
    mounts the share) store the path below its mount point, so each machine finds them under its own
    mount point, and a mount point that moves is no new library."""

    key: str
    machine: str
    root: bytes | None  # a shared library's mount point here, without a trailing /

    @classmethod
    def of(cls, settings: Settings) -> RunScope:
        if not settings.shared_library:
            return cls(settings.scope, settings.machine_name, None)
        if not settings.source_dirs:
            raise ConfigError("SHARED_LIBRARY needs SOURCE_DIR: the library's mount point on this machine")
        return cls(settings.scope, settings.machine_name, os.fsencode(settings.source_dirs[0]).rstrip(b"/"))

    @property
    def shared(self) -> bool:
        return self.root is not None

    def stored(self, raw: bytes) -> bytes:
        """A file's path as its row stores it."""
        if self.root is None:
            return raw
        if not raw.startswith(self.root + b"/"):
            raise ValueError(f"{os.fsdecode(raw)} is not in the shared library at {os.fsdecode(self.root)}")
        return raw[len(self.root) + 1 :]

    def local(self, stored: bytes) -> bytes:
        """The file a stored path names, on this machine."""
        return stored if self.root is None else self.root + b"/" + stored

    def path_of(self, filepath: str, filepath_b64: str | None) -> bytes:
        return self.local(text_to_path(filepath, filepath_b64))


class DatedRow(Protocol):
    """What the upload filters read of a row (pending or done): its path, kind and date."""

    @property
    def filepath(self) -> str: ...
    @property
    def media_type(self) -> str | None: ...
    @property
    def date_taken(self) -> str | None: ...
    @property
    def metadata_info(self) -> str | None: ...


def is_ignored(relative: bytes, name: bytes, patterns: tuple[bytes, ...]) -> bool:
    """IGNORE_PATTERNS globs match the path below the source folder ('/2019/tmp/a.jpg', so '*/tmp/*'
    works) or, without a '/', any file or folder name ('*.part', 'Backup')."""
    return any(
        fnmatch.fnmatchcase(relative, p) or (b"/" not in p and fnmatch.fnmatchcase(name, p)) for p in patterns
    )


# A path component the walk passes over unless INCLUDE_HIDDEN: hidden (a dot-name) or NAS junk. One search of
# the whole relative path: a check per component cost 4 µs a row, seconds for a million pending rows.
JUNK_COMPONENT = re.compile(
    rb"/(?:\.|(?:"
    + b"|".join(re.escape(n.encode()).replace(rb"\*", rb"[^/]*") for n in JUNK_NAMES if not n.startswith("."))
    + rb")(?:/|$))"
)


class Sources:
    """The run's source folders and files as the walk sees them: whether a path lies in one of them and the
    walk would not pass it over (hidden or junk, IGNORE_PATTERNS). Built once per run."""

    def __init__(self, settings: Settings) -> None:
        self.roots = tuple(os.fsencode(root).rstrip(b"/") for root in settings.source_dirs)
        self.skip_hidden = not settings.include_hidden
        self.ignore = tuple(os.fsencode(p) for p in settings.ignore_patterns)

    def __contains__(self, raw_path: bytes) -> bool:
        for prefix in self.roots:
            if raw_path == prefix:
                return True  # a file named as a source
            if not raw_path.startswith(prefix + b"/"):
                continue
            relative = raw_path[len(prefix) :]
            if self.skip_hidden and JUNK_COMPONENT.search(relative):
                return False
            if self.ignore:
                # Each folder on the way counts, as in the walk: an ignored folder hides everything below it.
                names = relative.strip(b"/").split(b"/")
                for depth in range(1, len(names) + 1):
                    if is_ignored(b"/" + b"/".join(names[:depth]), names[depth - 1], self.ignore):
                        return False
            return True
        return False


class PathRow(DatedRow, Protocol):
    @property
    def filepath_b64(self) -> str | None: ...


class RunFiles:
    """This run's files: the one answer to "is this file the run's business?" that the upload, albums, stacks
    and deletion all ask, so no step touches a file the run was not given. A file is the run's when it lies
    under the run's source folders (SOURCE_DIR, or the folders and files named on the command line; every row
    of the scope when the run names none, as upload_files.py without SOURCE_DIR) and passes its filters. A
    Takeout run's files are the members of the zips it was given (`takeout_here`)."""

    def __init__(
        self,
        settings: Settings,
        scope: RunScope | None = None,
        takeout_here: Callable[[str], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.scope = scope or RunScope.of(settings)
        self.takeout_here = takeout_here
        self.sources = Sources(settings)

    def path(self, row: PathRow) -> bytes:
        """Where the row's file is on this machine."""
        return self.scope.path_of(row.filepath, row.filepath_b64)

    def includes(self, row: PathRow) -> bool:
        if self.takeout_here is not None:
            return self.takeout_here(row.filepath) and wanted(row, self.settings)
        path = self.path(row)
        if self.sources.roots and path not in self.sources:
            return False
        return wanted(row, self.settings, os.fsdecode(path))


def taken_day(row: DatedRow) -> date | None:
    """The local calendar day the file was taken (the date as the camera or file name gave it)."""
    if row.metadata_info:
        used = json.loads(row.metadata_info).get("date_used")
        if used:
            return date.fromisoformat(str(used)[:10])
    return date.fromisoformat(str(row.date_taken)[:10]) if row.date_taken else None


def wanted(row: DatedRow, settings: Settings, path: str | None = None) -> bool:
    """The --since/--until/--include/--exclude/--only-* filters; rows left out stay pending (and are
    never deleted by this run). Globs match `path` (the file's path here), else the stored one."""
    if settings.only and row.media_type != settings.only.rstrip("s"):
        return False
    if settings.since or settings.until:
        day = taken_day(row)
        if (
            day is None
            or (settings.since and day < settings.since)
            or (settings.until and day > settings.until)
        ):
            return False
    path = row.filepath if path is None else path
    if settings.include and not any(fnmatch.fnmatch(path, p) for p in settings.include):
        return False
    return not any(fnmatch.fnmatch(path, p) for p in settings.exclude)
