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
import json
import logging
import math
import mmap
import os
import re
import stat
import struct
import sys
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from numbers import Rational
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from config import RAW_EXTENSIONS
from logger import get_logger

if TYPE_CHECKING:
    from PIL import ImageFile

# Under the tool's logger: a plain "utils" logger reached no handler, so LOG_LEVEL=DEBUG never showed its lines.
log = get_logger("utils")

DEFAULT_HASH_CHUNK_BYTES = 1 << 20
_thread_buffers = threading.local()
READ_BUFFER_KEPT_BYTES = 4 << 20  # a long-lived thread keeps no more than this for its reads

# ExifRead warns through its own logger about every odd tag and "File format not recognized" for each file
# without EXIF; those would flood the console. What matters to us comes back in MediaMetadata.warnings.
logging.getLogger("exifread").setLevel(logging.ERROR)
# Pillow logs damaged headers as errors ("More samples per pixel than can be decoded") before it raises what
# MediaMetadata.warnings reports: one line about the file, not two.
logging.getLogger("PIL").setLevel(logging.CRITICAL)


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


def aligned_buffer(size_bytes: int) -> memoryview:
    """A writable buffer that starts on a memory page. Where a buffer starts decides how fast the kernel
    copies a file into it: on this machine's AMD EPYC, a read of 400 KB into one starting 8 to 24 bytes into
    a 64-byte cache line took 280 µs, into an aligned one 50 µs; a bytearray's bytes start 16 bytes into
    one. Private memory: a forked worker's buffer is its own."""
    private = getattr(mmap, "MAP_PRIVATE", None)
    if private is None:  # Windows: no flags to ask for
        return memoryview(bytearray(size_bytes))
    return memoryview(mmap.mmap(-1, size_bytes, flags=private | mmap.MAP_ANONYMOUS))


def read_buffer(size_bytes: int) -> memoryview:
    """This thread's aligned buffer for reading files into, `size_bytes` long (a file's bytes are used before
    the thread reads its next, so one serves all: a new one per file costs its zeroing and page faults). One
    larger than READ_BUFFER_KEPT_BYTES (a HASH_CHUNK_SIZE set high) is the caller's alone, not kept."""
    if size_bytes > READ_BUFFER_KEPT_BYTES:
        return aligned_buffer(size_bytes)
    buffer: memoryview | None = getattr(_thread_buffers, "buffer", None)
    if buffer is None or len(buffer) < size_bytes:
        buffer = _thread_buffers.buffer = aligned_buffer(size_bytes)
    return buffer[:size_bytes]


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
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = os.fstat(fd)
        if before.st_size < chunk_size:
            return _hash_small(fd, before, keep_head)
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1()
        total = 0
        head = b""
        # One buffer for every chunk, filled in place. No bigger than the file (+1 to see it end).
        view = read_buffer(min(chunk_size, before.st_size + 1))
        buffers = [view]
        while n := os.readv(fd, buffers):
            chunk = view[:n]
            if keep_head and not total:
                head = bytes(chunk[:HEAD_BYTES])
            sha256.update(chunk)
            sha1.update(chunk)
            total += n
        after = os.fstat(fd)
    finally:
        os.close(fd)
    identity = file_identity(after)
    if total != before.st_size or identity != file_identity(before):
        return None
    return Fingerprint(sha256.hexdigest(), sha1.hexdigest(), total, after.st_mtime_ns, head, identity)


def _hash_small(fd: int, before: os.stat_result, keep_head: bool) -> Fingerprint | None:
    """A file smaller than a chunk (a small photo): read whole into bytes with bare system calls and hashed
    at once, with no file object or buffer (a third of the fingerprint's cost for a 4 KB photo)."""
    size = before.st_size
    data = os.read(fd, size + 1)  # one byte more: a file that grew is seen (and fstat below sees it too)
    while len(data) < size and (more := os.read(fd, size + 1 - len(data))):
        data += more  # a short read (a network file system): read on to the size
    after = os.fstat(fd)
    identity = file_identity(after)
    if len(data) != size or identity != file_identity(before):
        return None
    return Fingerprint(
        hashlib.sha256(data).hexdigest(),
        hashlib.sha1(data).hexdigest(),
        size,
        after.st_mtime_ns,
        data[:HEAD_BYTES] if keep_head else b"",
        identity,
    )


# --- Source files and symbolic links --------------------------------------------------------------------


class LinkRefused(OSError):
    """A source file reached through a symbolic link the link rule refuses (see resolve_source_path)."""


def is_inside(real: bytes, roots: Sequence[bytes]) -> bool:
    """Whether a real path is one of `roots` (real paths without a trailing slash) or lies below one."""
    return any(real == root or real.startswith(root + b"/") for root in roots)


Identity = tuple[int, int]  # st_dev, st_ino
MAX_LINK_HOPS = 40  # as the kernel's own limit (ELOOP)
_O_PATH = getattr(os, "O_PATH", 0)


class SourceRoots(NamedTuple):
    """The source folders as the link rule reaches them: their real paths (for checks by path: deletion),
    their identities (for checks on open files), and the sources whose own path the rule refuses."""

    paths: tuple[bytes, ...]
    identities: frozenset[Identity]
    refused: tuple[tuple[bytes, str], ...] = ()

    @classmethod
    def of(cls, sources: Sequence[str | os.PathLike[str]]) -> SourceRoots:
        paths, identities, refused = [], set(), []
        empty = cls((), frozenset())
        for source in sources:
            raw = os.fsencode(os.path.abspath(source))
            try:
                fd = resolve_source_path(raw, empty, read=False)
            except LinkRefused as exc:
                refused.append((raw, str(exc)))
                continue
            except OSError:
                paths.append(os.fsencode(os.path.realpath(raw)).rstrip(b"/") or b"/")
                continue  # not there (not mounted): the walk says so; nothing below it is read tonight
            try:
                st = os.fstat(fd)
                identities.add((st.st_dev, st.st_ino))
                paths.append(_verified_real_path(fd, st, raw))
            finally:
                os.close(fd)
        return cls(tuple(paths), frozenset(identities), tuple(refused))


def _verified_real_path(fd: int, st: os.stat_result, raw: bytes) -> bytes:
    """The open file's real path, when that path leads to that very file here (a link into another
    process's view of the files, /proc/PID/root, names a path that leads elsewhere or nowhere); else the
    path as given, which then matches no check by path."""
    try:
        real = os.readlink(b"/proc/self/fd/%d" % fd)
        there = os.stat(real)
    except OSError:
        return raw
    return real.rstrip(b"/") or b"/" if (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino) else raw


class _Judge(NamedTuple):
    """In the queue of path parts: the end of a link's target, where what it led to is judged."""

    owner: int
    link: bytes  # for messages


def resolve_source_path(path: bytes, roots: SourceRoots, read: bool = True) -> int:
    """A descriptor of the file (or, `read` False, the folder) at `path`, reached part by part through
    descriptors, so no link can be pointed elsewhere between a check and the use, with every symbolic link
    judged on what it actually leads to:

    - a link owned by root or by the user running the tool is followed (they made it);
    - another user's link only to something inside a source folder, or to something of its own; from there
      on, everything read must be that user's too (a folder of theirs may hold another user's folder, which
      they could not read themselves).

    LinkRefused when the rule refuses the path; other OSErrors as open() raises them. Linux: elsewhere
    (no O_PATH) the path is opened as it is."""
    return _resolve(path, roots, read)[0]


def _resolve(path: bytes, roots: SourceRoots, read: bool) -> tuple[int, int | None]:
    """resolve_source_path, and who must own everything below what it returns (None: anyone)."""
    if not _O_PATH:
        return os.open(path, (os.O_RDONLY | os.O_NONBLOCK) if read else os.O_RDONLY), None
    trusted = (0, os.geteuid())
    parts: deque[bytes | _Judge] = deque(p for p in path.split(b"/") if p and p != b".")
    names_left = len(parts)
    cur = os.open(b"/" if path.startswith(b"/") else b".", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    taint: _Judge | None = None  # another user's link led out of the sources: all must be theirs
    hops = 0
    judging = 0  # other users' links whose targets are being followed
    obj = -1  # the final file, once opened
    try:
        while parts:
            part = parts.popleft()
            if isinstance(part, _Judge):
                judging -= 1
                taint = _judge(part, obj if obj >= 0 else cur, cur, roots)
                continue
            names_left -= 1
            fd = os.open(part, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            st = os.fstat(fd)
            # Inside another user's link's target only what it leads to counts (judged at its end).
            if taint is not None and not judging and st.st_uid != taint.owner:
                os.close(fd)
                raise LinkRefused(
                    f"{display_path(path)}: {display_path(part)} is not owned by the owner of the link "
                    f"{display_path(taint.link)} that leads to it: not read"
                )
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                try:
                    target = os.readlink(b"", dir_fd=fd)
                finally:
                    os.close(fd)
                if hops > MAX_LINK_HOPS:
                    raise OSError(errno.ELOOP, "too many levels of symbolic links", path)
                if st.st_uid not in trusted:
                    parts.appendleft(_Judge(st.st_uid, part))
                    judging += 1
                pieces = [p for p in target.split(b"/") if p and p != b"."]
                parts.extendleft(reversed(pieces))
                names_left += len(pieces)
                if target.startswith(b"/"):
                    os.close(cur)
                    cur = os.open(b"/", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                continue
            if names_left:
                if not stat.S_ISDIR(st.st_mode):
                    os.close(fd)
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", path)
                os.close(cur)
                cur = fd
                continue
            if not read:
                obj = fd  # what the path names, as a descriptor to judge it by
                continue
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise IsADirectoryError(errno.EISDIR, "a folder", path)
                raise FileChangedError(f"{display_path(path)} is no longer a regular file")
            # The file itself, opened for reading from the same folder; the same file as just judged.
            os.close(fd)
            obj = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=cur)
            now = os.fstat(obj)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise FileChangedError(f"{display_path(path)} was replaced while it was opened")
        if obj < 0:  # the path named a folder: it is `cur`
            obj, cur = cur, -1
        result, obj = obj, -1
        return result, taint.owner if taint is not None else None
    finally:
        if obj >= 0:
            os.close(obj)
        if cur >= 0:
            os.close(cur)


def _judge(link: _Judge, reached: int, folder: int, roots: SourceRoots) -> _Judge | None:
    """Another user's link, judged on what it led to (`reached`, in `folder`): the taint from there on."""
    st = os.fstat(reached)
    if _within(reached, st, folder, roots):
        return None
    if st.st_uid == link.owner:
        return link
    real = _verified_real_path(reached, st, b"?")
    raise LinkRefused(
        f"symbolic link {display_path(link.link)} leads to {display_path(real)}, outside the source folders "
        "and owned by another user than the link: not followed"
    )


def _within(reached: int, st: os.stat_result, folder: int, roots: SourceRoots) -> bool:
    """Whether an open file or folder (`st` its stat) is a source or lies below one, by identities up to /."""
    if (st.st_dev, st.st_ino) in roots.identities:
        return True
    if not roots.identities:
        return False
    fd = os.dup(folder if not stat.S_ISDIR(st.st_mode) else reached)
    try:
        for _ in range(4096):
            here = os.fstat(fd)
            if (here.st_dev, here.st_ino) in roots.identities:
                return True
            parent = os.open(b"..", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = parent
            up = os.fstat(fd)
            if (up.st_dev, up.st_ino) == (here.st_dev, here.st_ino):
                return False  # at /
        return False
    finally:
        os.close(fd)


class LinkVerdict(NamedTuple):
    refusal: str | None  # why the link may not be followed; None: it may
    owner: int | None  # who must own everything below it (another user's link out of the sources)


def judge_link(link: bytes, roots: SourceRoots) -> LinkVerdict:
    """Whether the walk may follow a symbolic link it found (the rule of resolve_source_path)."""
    try:
        fd, owner = _resolve(link, roots, read=False)
        try:
            judged = os.fstat(fd)
        finally:
            os.close(fd)
        walked = os.stat(link)  # what the walk itself will list: the kernel's way through the link
    except LinkRefused as exc:
        return LinkVerdict(str(exc), None)
    except OSError as exc:
        return LinkVerdict(f"cannot follow the link: {exc.strerror or exc}", None)
    if (walked.st_dev, walked.st_ino) != (judged.st_dev, judged.st_ino):
        return LinkVerdict(
            "symbolic link into another process's view of the files (/proc): not followed", None
        )
    return LinkVerdict(None, owner)


def open_source_file(
    path: bytes,
    roots: SourceRoots,
    size_bytes: int | None = None,
    mtime_ns: int | None = None,
    buffering: int = 0,
) -> BinaryIO:
    """A source file opened for reading through resolve_source_path: a regular file reached as the link
    rule allows, still of the size and mtime it was hashed with (when given). FileChangedError when it
    changed (or is no regular file), LinkRefused when a link leads where it may not, OSError otherwise."""
    return _checked_file(resolve_source_path(path, roots), path, size_bytes, mtime_ns, buffering)


def _checked_file(
    fd: int,
    path: bytes,
    size_bytes: int | None,
    mtime_ns: int | None,
    buffering: int = 0,
    st: os.stat_result | None = None,
) -> BinaryIO:
    """The descriptor `fd` of `path` (`st` its stat, when known) as a file to read, once it is checked to be
    a regular file still of the size and mtime it was hashed with; closed when it is not."""
    try:
        st = st or os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChangedError(f"{display_path(path)} is no longer a regular file")
        if (size_bytes is not None and st.st_size != size_bytes) or (
            mtime_ns is not None and st.st_mtime_ns != mtime_ns
        ):
            raise FileChangedError(
                f"{display_path(path)} changed since it was hashed; it is checked again next run"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


@dataclass(slots=True)
class _HeldFolder:
    """A folder SourceFolders reached: its descriptor (-1: each file walks its own way), the threads opening
    through it, and when it was walked."""

    fd: int
    users: int
    walked_at: float


class SourceFolders:
    """The upload threads' way to their source files: what open_source_file and sidecar_for answer, for fewer
    system calls. Each folder is reached through the link rule once (resolve_source_path) and its files are
    opened from that descriptor; the names of its XMP sidecars are listed once a minute. An upload's file and
    sidecar then cost 5 calls instead of about 20 (a walk from / and four looks for a sidecar). Each call
    hands Python's lock to another thread: eight upload threads beside the scan's spent longer getting it
    back than in the calls. What the walk must judge goes the walk's way: a folder another user's link led
    to, a link in the folder, anything but a regular file. Shared by the threads: a descriptor is closed
    only when no thread is opening through it, and all of them by close(), once the threads are done."""

    # Uploads go newest first, so the folders of a batch interleave; the descriptors held are these at most
    # (and one more for each thread opening in a folder beyond them).
    KEEP_FOLDERS = 32
    KEEP_LISTINGS = 64  # sidecar names, small: retries and held live photos come back to earlier folders
    # A folder is walked again after a minute, and a sidecar written meanwhile is sent with the photos
    # uploaded after that; a folder gone from its place (renamed, deleted, a stale NFS handle) at once.
    AGE_S = 60.0

    def __init__(self, roots: SourceRoots, clock: Callable[[], float] = time.monotonic) -> None:
        self.roots = roots
        self.clock = clock
        self._lock = threading.Lock()
        self._fds: dict[bytes, _HeldFolder] = {}
        # folder -> when listed, and its sidecars' names in lower case (None: not listed, each is looked for)
        self._xmps: dict[bytes, tuple[float, frozenset[bytes] | None]] = {}

    def open(self, path: bytes, size_bytes: int | None = None, mtime_ns: int | None = None) -> BinaryIO:
        """As open_source_file(path, roots, size_bytes, mtime_ns)."""
        folder, name = os.path.split(path)
        if not (_O_PATH and name and folder):
            return open_source_file(path, self.roots, size_bytes, mtime_ns)
        dir_fd = self._take(folder)
        fd = -1
        try:
            if dir_fd >= 0:
                fd, judged = self._open_in(dir_fd, name)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
                raise
            self._forget(folder, dir_fd)  # the folder may be gone from its place: the walk says
        finally:
            self._give_back(folder)
        if fd < 0:
            return open_source_file(path, self.roots, size_bytes, mtime_ns)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (judged.st_dev, judged.st_ino):
                raise FileChangedError(f"{display_path(path)} was replaced while it was opened")
        except BaseException:
            os.close(fd)
            raise
        return _checked_file(fd, path, size_bytes, mtime_ns, st=now)

    @staticmethod
    def _open_in(dir_fd: int, name: bytes) -> tuple[int, os.stat_result]:
        """The regular file `name` in the folder, opened for reading, and its stat as judged before the
        open; (-1, ...) for anything else (a link, a folder, a device): the walk judges those."""
        handle = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            judged = os.fstat(handle)
            if not stat.S_ISREG(judged.st_mode):
                return -1, judged
            return os.open(
                name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
            ), judged
        finally:
            os.close(handle)

    def sidecar_for(self, raw_path: bytes) -> bytes | None:
        """As sidecar_for(raw_path), looking only for the sidecars the folder's listing names (in any case:
        on a card's or a share's file system `IMG_1.JPG.xmp` is `IMG_1.jpg.XMP`)."""
        folder = os.path.dirname(raw_path)
        known = self._xmps.get(folder)  # one lookup: atomic
        if known is None or self.clock() - known[0] > self.AGE_S:
            listed_at = self.clock()
            try:
                names = frozenset(
                    lower for n in os.listdir(folder or b".") if (lower := n.lower()).endswith(b".xmp")
                )
            except OSError:
                names = None
            known = (listed_at, names)
            with self._lock:
                self._xmps.pop(folder, None)
                if len(self._xmps) >= self.KEEP_LISTINGS:
                    del self._xmps[next(iter(self._xmps))]
                self._xmps[folder] = known
        if known[1] is not None and not known[1]:
            return None  # no sidecar in the folder: the common case, without a look
        return sidecar_for(raw_path, known[1])

    def _take(self, folder: bytes) -> int:
        """The folder's descriptor (-1: none), held until _give_back(folder)."""
        old = -1
        with self._lock:
            held = self._fds.pop(folder, None)
            if held is not None and (held.users or self.clock() - held.walked_at <= self.AGE_S):
                held.users += 1
                self._fds[folder] = held  # the most recently used last: the oldest goes first
                return held.fd
            if held is not None:
                old = held.fd  # walked a minute ago and unused: walked again
        if old >= 0:
            os.close(old)
        walked = self._walk(folder)
        with self._lock:
            held = self._fds.get(folder)
            if held is None:
                self._fds[folder] = _HeldFolder(walked, 1, self.clock())
                return walked
            held.users += 1  # another thread walked it meanwhile
        if walked >= 0:
            os.close(walked)
        return held.fd

    def _forget(self, folder: bytes, dir_fd: int) -> None:
        """Walk the folder again at its next use (the entry is still held: closed once unused)."""
        with self._lock:
            held = self._fds.get(folder)
            if held is not None and held.fd == dir_fd:
                held.walked_at = -math.inf

    def _give_back(self, folder: bytes) -> None:
        with self._lock:
            self._fds[folder].users -= 1
            if len(self._fds) <= self.KEEP_FOLDERS:
                return
            unused = [f for f, held in self._fds.items() if not held.users]
            dropped = [self._fds.pop(f).fd for f in unused[: len(self._fds) - self.KEEP_FOLDERS]]
        for fd in dropped:
            if fd >= 0:
                os.close(fd)

    def _walk(self, folder: bytes) -> int:
        try:
            fd, owner = _resolve(folder, self.roots, read=False)
        except OSError:
            return -1  # each file's own walk says what is wrong, naming the file
        if owner is not None:  # another user's link led here: each file is judged on its own
            os.close(fd)
            return -1
        return fd

    def close(self) -> None:
        """Close every descriptor: once no thread opens files through this any more."""
        with self._lock:
            fds = [held.fd for held in self._fds.values()]
            self._fds.clear()
            self._xmps.clear()
        for fd in fds:
            if fd >= 0:
                os.close(fd)


# --- Metadata -------------------------------------------------------------------------------------------------

# The reader's version, kept in each row's metadata_info ("reader"): rows an older reader described are read
# again once (scanner.Scanner.reread_old_metadata). 2: dates, cameras and places as Immich reads them.
METADATA_READER_VERSION = 2


@dataclass
class MediaMetadata:
    """What could be read from one file. `date_taken` is aware when the offset is known, naive when EXIF gives
    no offset, None when nothing was found; `info` is JSON-serialisable and holds only keys that were found."""

    date_taken: datetime | None = None
    date_source: str = "none"  # "exif" | "video" | "none"
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # This reader stopped short where exiftool (Immich's reader) may read more: a damaged or unknown block,
    # metadata without a date, a RAW or HEIF file, a video.
    exiftool_may_know: bool = False


def _warn(meta: MediaMetadata, path: str | bytes, reason: str) -> None:
    meta.warnings.append(reason)
    log.debug("%s: %s", display_path(path), reason)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def read_metadata(
    path: str | bytes, kind: str, head: bytes = b"", size_bytes: int = 0, use_exiftool: bool | None = None
) -> MediaMetadata:
    """Metadata of an "image" or a "video"; never raises for bad content (see the two readers). `head`, the
    file's first bytes already read (and `size_bytes`, its size), spares a JPEG a second read. Where the fast
    readers stop short (MediaMetadata.exiftool_may_know), exiftool reads the date, camera, place and size as
    Immich does, when it is installed (`use_exiftool` None), always (True) or never (False)."""
    if kind == "image":
        meta = read_image_metadata(path, head=head, size_bytes=size_bytes)
    elif kind == "video":
        meta = read_video_metadata(path)
    else:
        raise ValueError(f"kind must be 'image' or 'video', not {kind!r}")
    if use_exiftool or (use_exiftool is None and meta.exiftool_may_know):
        exiftool = shared_exiftool()
        if exiftool is not None:
            _apply_exiftool(exiftool.read(path, video=kind == "video"), kind == "video", meta)
    return meta


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
        header = _read_jpeg_header(head)
        if header is not None and (header.complete or len(head) >= size_bytes):
            tags = _jpeg_tags(header, path, meta)
            _apply_jpeg_header(header, path, meta)
            if header.exif is not None and not _has_exif(tags):
                _warn(meta, path, "EXIF block present but unreadable (corrupt)")
            _apply_exif(tags, path, meta)
            meta.exiftool_may_know = _may_know_more(meta, header.other_metadata or tags or header.xmp)
            return meta
    try:
        with opener() if opener is not None else open(path, "rb") as f:
            if (size_bytes if opener is not None else os.fstat(f.fileno()).st_size) == 0:
                _warn(meta, path, "empty file")
                return meta
            exif_only = extension_of(path) in _EXIF_ONLY_EXTENSIONS
            header = _read_jpeg_header(b"", f) if fast_jpeg and not exif_only else None
            if header is not None:
                tags = _jpeg_tags(header, path, meta)
                has_exif_block = header.exif is not None
                has_metadata = header.other_metadata or has_exif_block or header.xmp is not None
                _apply_jpeg_header(header, path, meta)
            else:
                f.seek(0)
                tags = _read_exif_tags(f, path, meta)
                blocks = _EmbeddedBlocks() if exif_only else _read_image_header(f, path, meta)
                has_exif_block = blocks.exif is not None
                if not tags and blocks.exif:  # a WebP's EXIF chunk, which ExifRead does not find
                    tags = _read_tiff_tags(blocks.exif.removeprefix(b"Exif\x00\x00"), path, meta)
                if blocks.xmp:
                    tags.update(xmp_tags(blocks.xmp))
                if exif_only and extension_of(path) in _HEIF_EXTENSIONS:
                    _apply_heif_size(f, meta)
                    if (_text(_tag_values(tags, "Image Make")) or "").startswith("Apple"):
                        tags.update(_apple_heif_tags(f, path))
                has_metadata = exif_only or bool(tags) or has_exif_block or blocks.xmp is not None
                has_metadata = has_metadata or meta.info.get("format") not in _PLAIN_FORMATS
    except OSError as exc:
        _warn(meta, path, f"cannot read the file: {exc.strerror or exc}")
        return meta
    if has_exif_block and not _has_exif(tags):
        # ExifRead gives up silently on a damaged block (bad offsets, garbage IFDs); the header showed it.
        _warn(meta, path, "EXIF block present but unreadable (corrupt)")
    _apply_exif(tags, path, meta)
    meta.exiftool_may_know = opener is None and (
        extension_of(path) in _EXIF_ONLY_EXTENSIONS or _may_know_more(meta, has_metadata)
    )
    return meta


# Formats whose metadata, when Pillow shows none, is none that Immich reads (a screenshot, a drawing).
_PLAIN_FORMATS = frozenset({"PNG", "GIF", "BMP", "ICO", "PPM"})


def _may_know_more(meta: MediaMetadata, has_metadata: object) -> bool:
    """Whether exiftool may read more than this reader did: a damaged file, or metadata without a date."""
    return bool(meta.warnings) or (meta.date_taken is None and bool(has_metadata))


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
# Markers whose segment is passed over: all but those read (APP1, a frame), noted (APP12, APP13), ending the
# header (EOI, SOS), without a length, and a fill byte.
_JPEG_PASSED_OVER = (
    frozenset(range(256)) - _JPEG_SOF - _JPEG_STANDALONE - {0xE1, 0xEC, 0xED, 0xD9, 0xDA, 0xFF}
)


@dataclass
class JpegHeader:
    exif: bytes | None = None  # the TIFF block of the first APP1 "Exif" segment
    width: int = 0
    height: int = 0
    complete: bool = False  # the image data (SOS) was reached: nothing was cut off in the header
    more_exif: list[bytes] = field(default_factory=list)  # later "Exif" segments (the first may be garbage)
    xmp: bytes | None = None  # the XMP packet of the first APP1 XMP segment
    other_metadata: bool = False  # segments exiftool reads and this reader does not (IPTC, APP12...)


def _read_jpeg_header(data: bytes, f: BinaryIO | None = None) -> JpegHeader | None:
    """The marker segments of a JPEG up to its image data; None when the file does not start like one.
    `data` is the file's start; `f`, when given, is the file just after it, read on as far as the header goes
    (without it, `data` is all there is). Parsed in place: a small photo's header costs a few index steps a
    segment, not a read call per byte (6 µs a photo before)."""
    if f is not None and len(data) < 4:
        data += _read_at_least(f, 4 - len(data))
    if data[:2] != b"\xff\xd8":
        return None
    header = JpegHeader()
    resyncs = 0
    at, end = 2, len(data)
    while True:
        # The common case first, in a tight loop: a segment passed over (tables, APP0...), whole in the window.
        while at + 4 <= end and data[at] == 0xFF and data[at + 1] in _JPEG_PASSED_OVER:
            after = at + 2 + (data[at + 2] << 8 | data[at + 3])
            if after > end or after < at + 4:  # beyond the window, or a length below 2: the general way
                break
            at = after
        if end - at < 4 and f is not None:  # a marker and its length: from the file when the window ends
            data, at, end = _read_on(data, at, f, 4)
        if at >= end:
            return header
        if data[at] != 0xFF:
            # Not a marker where one must be (a segment length that lies): like exiftool, look for the next,
            # a few times (a large file that is no JPEG is not walked to its end).
            resyncs += 1
            if resyncs > _MAX_RESYNCS:
                return header
            at += 1
            if f is not None:
                data, at, end = _read_on(data, at, f, _MARKER_SEARCH_BYTES)
            at = _next_marker(data, at, min(end, at + _MARKER_SEARCH_BYTES))
            if at < 0:
                return header
        else:
            at += 1
        while True:  # fill bytes
            if at >= end and f is not None:
                data, at, end = _read_on(data, at, f, 1)
            if at >= end:
                return header
            if data[at] != 0xFF:
                break
            at += 1
        code = data[at]
        at += 1
        if code in _JPEG_STANDALONE:
            continue
        if code in (0xD9, 0xDA):  # end of image, start of scan: the header is over
            header.complete = True
            return header
        if end - at < 2 and f is not None:
            data, at, end = _read_on(data, at, f, 2)
        if end - at < 2:
            return header
        length = (data[at] << 8 | data[at + 1]) - 2
        at += 2
        if length < 0:
            return header
        if code == 0xE1 or (code in _JPEG_SOF and not header.width):
            if end - at < length and f is not None:
                data, at, end = _read_on(data, at, f, length)
            segment = data[at : at + length]
            if code != 0xE1:
                if len(segment) >= 5:
                    header.height = int.from_bytes(segment[1:3], "big")
                    header.width = int.from_bytes(segment[3:5], "big")
            elif segment.startswith(b"Exif\x00\x00"):
                if header.exif is None:
                    header.exif = segment[6:]
                elif len(header.more_exif) < _MAX_RESYNCS:  # a few, not a file made of them
                    header.more_exif.append(segment[6:])
            elif segment.startswith(_XMP_SIGNATURE) and header.xmp is None:
                header.xmp = segment[len(_XMP_SIGNATURE) :]
        elif code in (0xEC, 0xED):  # APP12 (Ducky, picture info), APP13 (IPTC): dates exiftool may find
            header.other_metadata = True
        at += length
        if at > end and f is not None:  # a segment passed over beyond the window: skipped in the file
            f.seek(at - end, os.SEEK_CUR)
            data, at, end = b"", 0, 0


_XMP_SIGNATURE = b"http://ns.adobe.com/xap/1.0/\x00"
_MARKER_SEARCH_BYTES = 64 << 10  # how far past a damaged segment the next marker is looked for
_MAX_RESYNCS = 8
# A header read from a file goes on in pieces of this size (more where a segment needs it), up to where it
# stops: far beyond any camera's or editor's (a phone's depth map in extended XMP is a few MB).
_JPEG_READ_BYTES = 512
_MAX_JPEG_HEADER_BYTES = 64 << 20


def _read_on(data: bytes, at: int, f: BinaryIO, wanted: int) -> tuple[bytes, int, int]:
    """The window from `at` on with at least `wanted` bytes, read on from `f` (fewer at the file's end, and
    nothing more past _MAX_JPEG_HEADER_BYTES: a file of endless tiny segments is not walked to its end), as
    (window, where `at` now is in it, its end)."""
    rest = data[at:]
    if len(rest) >= wanted:
        return data, at, len(data)
    if f.tell() <= _MAX_JPEG_HEADER_BYTES:
        rest += _read_at_least(f, max(wanted - len(rest), _JPEG_READ_BYTES))
    return rest, 0, len(rest)


def _read_at_least(f: BinaryIO, size: int) -> bytes:
    """`size` bytes of `f`, fewer only at its end (a stream may return less than asked)."""
    data = f.read(size)
    while 0 < len(data) < size and (more := f.read(size - len(data))):
        data += more
    return data


def _next_marker(data: bytes, at: int, end: int) -> int:
    """Where the code of the next marker (0xFF then neither 0x00 nor 0xFF) in data[at:end] lies; -1 if none."""
    while (at := data.find(b"\xff", at, end)) != -1 and at + 1 < end:
        if data[at + 1] not in (0x00, 0xFF):
            return at + 1
        at += 1
    return -1


def _jpeg_tags(header: JpegHeader, path: str | bytes, meta: MediaMetadata) -> dict[str, Any]:
    """The tags of the first readable Exif segment (a garbage one may come before the real one) and XMP's."""
    tags: dict[str, Any] = {}
    for block in [header.exif, *header.more_exif] if header.exif is not None else []:
        tags = _read_tiff_tags(block, path, meta)
        if tags:
            break
    if header.xmp:
        tags.update(xmp_tags(header.xmp))
    return tags


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
            meta.exiftool_may_know = True  # Immich reads what hachoir does not: a read is small beside a hash
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
    if container == "mov":
        _apply_quicktime_metadata(path, meta)
    return meta


def _apply_quicktime_metadata(path: str | bytes, meta: MediaMetadata) -> None:
    """Apple's and Android's metadata in a QuickTime/MP4 movie, which hachoir does not read: the capture time
    with its offset (com.apple.quicktime.creationdate, which Immich prefers to the UTC creation time), the
    camera and the place. A movie's date without an offset is UTC to Immich."""
    try:
        with open(path, "rb") as f:
            tags = quicktime_tags(f)
    except (OSError, ValueError, struct.error) as exc:
        log.debug("%s: QuickTime metadata unreadable: %s", display_path(path), exc)
        return
    if not tags:
        return
    capture: dict[str, Any] = {"CreationDate": tags.get("creationdate")}
    if meta.date_taken is not None:
        capture["CreateDate"] = meta.date_taken.astimezone(timezone.utc).replace(tzinfo=None).isoformat()
    place = _ISO6709.match(tags.get("location", ""))
    gps = None
    if place:
        latitude, longitude = float(place.group(1)), float(place.group(2))
        if abs(latitude) <= 90 and abs(longitude) <= 180 and (latitude or longitude):
            gps = (latitude, longitude)
            meta.info["gps_latitude"], meta.info["gps_longitude"] = round(latitude, 7), round(longitude, 7)
    taken = immich_capture_time(capture, is_video=True, gps=gps)
    if taken is not None:
        meta.date_taken, meta.date_source = taken, "video"
        meta.info["date_taken"] = taken.isoformat()
    for key, name in (("camera_make", "make"), ("camera_model", "model"), ("content_id", "content_id")):
        if tags.get(name):
            meta.info[key] = tags[name]


_ISO6709 = re.compile(r"\s*([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)")
_QUICKTIME_KEYS = {
    b"com.apple.quicktime.creationdate": "creationdate", b"com.apple.quicktime.make": "make",
    b"com.apple.quicktime.model": "model", b"com.apple.quicktime.location.ISO6709": "location",
    b"com.apple.quicktime.content.identifier": "content_id",
}  # fmt: skip
_UDTA_TAGS = {b"\xa9xyz": "location", b"\xa9mak": "make", b"\xa9mod": "model"}
_MAX_MOOV_BYTES = 64 << 20


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the ISO-BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1 and at + 16 <= end:
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def quicktime_tags(f: BinaryIO) -> dict[str, str]:
    """creationdate, make, model and location (ISO 6709) from a movie's moov: Apple's keys/ilst metadata and
    the udta atoms Android writes. The moov box may follow the media data: top-level boxes are skipped."""
    f.seek(0, os.SEEK_END)
    file_end = f.tell()
    at = 0
    moov = b""
    while at + 8 <= file_end:
        f.seek(at)
        head = f.read(16)
        if len(head) < 8:
            break
        size, kind = struct.unpack_from(">I4s", head)
        header = 8
        if size == 1 and len(head) >= 16:
            size, header = struct.unpack_from(">Q", head, 8)[0], 16
        elif size == 0:
            size = file_end - at
        if size < header:
            break
        if kind == b"moov":
            if size > _MAX_MOOV_BYTES:
                break
            f.seek(at + header)
            moov = f.read(size - header)
            break
        at += size
    tags: dict[str, str] = {}
    for kind, start, end in _boxes(moov):
        if kind == b"meta":
            tags.update(_keys_metadata(moov, start, end))
        elif kind == b"udta":
            for inner, inner_start, inner_end in _boxes(moov, start, end):
                if inner in _UDTA_TAGS and inner_end - inner_start > 4:
                    (length,) = struct.unpack_from(">H", moov, inner_start)  # text length, then language
                    text = moov[inner_start + 4 : inner_start + 4 + length].decode("utf-8", "replace")
                    tags.setdefault(_UDTA_TAGS[inner], text.strip("\x00 "))
                elif inner == b"meta":
                    tags.update(_keys_metadata(moov, inner_start, inner_end))
    return tags


def _keys_metadata(data: bytes, start: int, end: int) -> dict[str, str]:
    """Apple's `mdta` metadata: a keys box names the items of the ilst box, by index from 1."""
    if data[start + 4 : start + 8] != b"hdlr":  # an MP4-style meta box: version and flags first
        start += 4
    names: list[bytes] = []
    values: dict[str, str] = {}
    for kind, box_start, box_end in _boxes(data, start, end):
        if kind == b"keys":
            for _, key_start, key_end in _boxes(data, box_start + 8, box_end):
                names.append(data[key_start:key_end])
        elif kind == b"ilst":
            for index, item_start, item_end in _boxes(data, box_start, box_end):
                number = int.from_bytes(index, "big")
                if not 1 <= number <= len(names) or names[number - 1] not in _QUICKTIME_KEYS:
                    continue
                for inner, value_start, value_end in _boxes(data, item_start, item_end):
                    if inner == b"data" and value_end - value_start > 8:
                        text = data[value_start + 8 : value_end].decode("utf-8", "replace").strip("\x00 ")
                        values.setdefault(_QUICKTIME_KEYS[names[number - 1]], text)
    return values


def _read_exif_tags(f: BinaryIO, path: str | bytes, meta: MediaMetadata) -> dict[str, Any]:
    # ExifRead fails in many ways on damaged EXIF (IndexError, struct.error, ValueError...). This is an
    # extraction function, where a broad catch is right: bad content becomes a warning, never an exception.
    try:
        return _exifread().process_file(f, details=False, extract_thumbnail=False)
    except Exception as exc:
        _warn(meta, path, f"EXIF unreadable: {_reason(exc)}")
        return {}


def _apple_heif_tags(f: BinaryIO, path: str | bytes) -> dict[str, Any]:
    """An iPhone HEIC's maker note tags (its live photo's content identifier), which ExifRead's quick mode
    does not read."""
    try:
        block = heif_exif_block(f)
        if block is None:
            return {}
        return {k: v for k, v in tiff_tags(block).items() if k.startswith("MakerNote ")}
    except (ValueError, struct.error, KeyError, IndexError) as exc:
        log.debug("%s: HEIF maker note unreadable: %s", display_path(path), exc)
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
    "Image": {0x010F: "Make", 0x0110: "Model", 0x0112: "Orientation", 0x0131: "Software", 0x0132: "DateTime",
              0x882A: "TimeZoneOffset"},
    "EXIF": {
        0x829A: "ExposureTime", 0x829D: "FNumber", 0x8827: "ISOSpeedRatings", 0x9003: "DateTimeOriginal",
        0x9004: "DateTimeDigitized", 0x9010: "OffsetTime", 0x9011: "OffsetTimeOriginal",
        0x9012: "OffsetTimeDigitized", 0x920A: "FocalLength", 0xA002: "ExifImageWidth",
        0xA003: "ExifImageLength", 0xA434: "LensModel", 0x9290: "SubSecTime", 0x9291: "SubSecTimeOriginal",
        0x9292: "SubSecTimeDigitized", 0x882A: "TimeZoneOffset", 0x927C: "MakerNote",
    },
    "GPS": {1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude",
            5: "GPSAltitudeRef", 6: "GPSAltitude", 7: "GPSTimeStamp", 29: "GPSDate"},
}  # fmt: skip
_EXIF_IFD_POINTER, _GPS_IFD_POINTER = 0x8769, 0x8825
# TIFF field types: (struct code, bytes per value); 2 is ASCII, 5 and 10 are (signed) rationals.
_TIFF_TYPES = {1: ("B", 1), 2: ("s", 1), 3: ("H", 2), 4: ("I", 4), 5: ("II", 8), 6: ("b", 1), 7: ("B", 1),
               8: ("h", 2), 9: ("i", 4), 10: ("ii", 8), 11: ("f", 4), 12: ("d", 8)}  # fmt: skip
_MAX_IFD_ENTRIES = 1000
# Each IFD's wanted tags by their full names ("EXIF FNumber"), and the structs of each byte order (made once:
# a small photo's block is read in a few microseconds, and these were a third of it).
_TIFF_NAMES = {
    prefix: {tag: f"{prefix} {name}" for tag, name in names.items()} for prefix, names in _TIFF_WANTED.items()
}
_TIFF_BYTE_ORDERS = {b"II": "<", b"MM": ">"}
_TIFF_STRUCTS = {
    order: (struct.Struct(order + "H"), struct.Struct(order + "I"), struct.Struct(order + "HHII"))
    for order in "<>"
}


def tiff_tags(tiff: bytes) -> dict[str, Any]:
    """The wanted tags of a TIFF/EXIF block as {"EXIF FNumber": [Fraction(14, 5)], "Image Make": "Canon"}:
    ASCII as text cut at its first NUL (bytes when not UTF-8), numbers as lists, rationals as Fractions
    (None for a zero denominator), the values ExifRead gives. Like exiftool, a damaged part is passed over and
    the rest kept: an IFD that runs past the block, a value that points outside it. Raises when the header
    or IFD0 is unreadable."""
    order = _TIFF_BYTE_ORDERS[tiff[:2]]
    u16, u32, _ = _TIFF_STRUCTS[order]
    if u16.unpack_from(tiff, 2)[0] != 42:
        raise ValueError("not a TIFF header")
    tags: dict[str, Any] = {}
    pointers = _read_ifd(tiff, order, u32.unpack_from(tiff, 4)[0], "Image", tags)
    for pointer, prefix in ((_EXIF_IFD_POINTER, "EXIF"), (_GPS_IFD_POINTER, "GPS")):
        if pointer in pointers:
            try:
                _read_ifd(tiff, order, pointers[pointer], prefix, tags)
            except (ValueError, struct.error) as exc:
                log.debug("EXIF block: %s IFD passed over: %s", prefix, exc)
    maker_note = tags.pop("EXIF MakerNote", None)
    if maker_note is not None:
        try:
            tags.update(_maker_note_zone(tiff, maker_note, _text(tags.get("Image Make")) or ""))
            tags.update(_apple_maker_note(maker_note[1]))
        except (ValueError, struct.error, KeyError) as exc:  # KeyError: no byte order mark in Nikon's
            log.debug("EXIF block: maker note passed over: %s", exc)
    return tags


_APPLE_MAKER_NOTE = b"Apple iOS\x00"
_APPLE_CONTENT_IDENTIFIER = 0x0011


def _apple_maker_note(data: bytes) -> dict[str, str]:
    """The ContentIdentifier of Apple's maker note (a live photo's photo and clip carry the same one):
    "Apple iOS\0", a version, a byte order mark, then an IFD whose offsets count from the note's start."""
    if not data.startswith(_APPLE_MAKER_NOTE) or len(data) < 16:
        return {}
    order = {b"II": "<", b"MM": ">"}[data[12:14]]
    (count,) = struct.unpack_from(order + "H", data, 14)
    for number in range(min(count, _MAX_IFD_ENTRIES)):
        tag, kind, n, pointer = struct.unpack_from(order + "HHII", data, 16 + 12 * number)
        if tag == _APPLE_CONTENT_IDENTIFIER and kind == 2 and 0 < n <= 256:
            raw = data[16 + 12 * number + 8 :][:n] if n <= 4 else data[pointer : pointer + n]
            text = raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip()
            return {"MakerNote ContentIdentifier": text} if text else {}
    return {}


def _read_ifd(tiff: bytes, order: str, offset: int, prefix: str, tags: dict[str, Any]) -> dict[int, int]:
    """Reads one IFD's wanted tags into `tags`; returns the sub-IFD pointers it holds."""
    names = _TIFF_NAMES[prefix]
    u16, _, entry = _TIFF_STRUCTS[order]
    (count,) = u16.unpack_from(tiff, offset)
    if count > _MAX_IFD_ENTRIES or offset + 2 + 12 * count > len(tiff):
        raise ValueError(f"{prefix} IFD runs past the block")
    pointers = {}
    entries = entry.iter_unpack(tiff[offset + 2 : offset + 2 + 12 * count])
    for number, (tag, kind, n, pointer) in enumerate(entries):
        name = names.get(tag)
        if name is None:  # a tag not read (most of a camera's), or the pointer to a sub-IFD
            if prefix == "Image" and tag in (_EXIF_IFD_POINTER, _GPS_IFD_POINTER):
                pointers[tag] = pointer
            continue
        field_type = _TIFF_TYPES.get(kind)
        if field_type is None:
            continue
        code, size = field_type
        length = size * n
        where = offset + 2 + 12 * number + 8 if length <= 4 else pointer
        if where + length > len(tiff):
            log.debug("EXIF block: %s points past the block", name)
            continue  # exiftool passes over the entry and keeps the others
        if (
            tag == 0x927C
        ):  # the maker note: its bytes and where they lie (Canon's offsets count from the block)
            value: Any = (where, tiff[where : where + length])
        elif kind == 2:
            raw = tiff[where : where + length].split(b"\x00", 1)[0]
            try:
                value = raw.decode("utf-8")
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
        tags[name] = value
    return pointers


def _maker_note_zone(tiff: bytes, maker_note: tuple[int, bytes], make: str) -> dict[str, str]:
    """The camera's time zone from Nikon's (WorldTime) or Canon's (TimeInfo) maker note, as exiftool names
    it: {"MakerNote TimeZone": "+09:00", "MakerNote DaylightSavings": "Yes"}; {} for other makers."""
    _, data = maker_note
    if make.lower().startswith("nikon") and data.startswith(b"Nikon\x00\x02"):
        inner = data[10:]
        order = {b"II": "<", b"MM": ">"}[inner[:2]]
        first = struct.unpack_from(order + "I", inner, 4)[0]
        (count,) = struct.unpack_from(order + "H", inner, first)
        for number in range(min(count, _MAX_IFD_ENTRIES)):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", inner, first + 2 + 12 * number)
            if tag == 0x0024 and n >= 4:  # WorldTime: TimeZone int16s minutes, DaylightSavings byte
                raw = value if n <= 4 else inner[struct.unpack(order + "I", value)[0] :][:4]
                minutes, daylight_saving = struct.unpack(order + "hB", raw[:3])
                return {
                    "MakerNote TimeZone": _offset_text(minutes),
                    "MakerNote DaylightSavings": "Yes" if daylight_saving else "No",
                }
    elif make.lower().startswith("canon"):
        order = "<" if tiff[:2] == b"II" else ">"
        (count,) = struct.unpack_from(order + "H", data, 0)
        for number in range(min(count, _MAX_IFD_ENTRIES)):
            tag, kind, n, pointer = struct.unpack_from(order + "HHII", data, 2 + 12 * number)
            if tag == 0x0035 and kind == 9 and n >= 2:  # TimeInfo: int32s size (16), TimeZone minutes, ...
                size, minutes = struct.unpack_from(order + "ii", tiff, pointer)
                if size == 16:
                    return {"MakerNote TimeZone": _offset_text(minutes)}
    return {}


def _offset_text(minutes: int) -> str:
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


class _EmbeddedBlocks(NamedTuple):
    exif: bytes | None = None
    xmp: bytes | None = None


def _read_image_header(f: BinaryIO, path: str | bytes, meta: MediaMetadata) -> _EmbeddedBlocks:
    """Size and format from the image header; the EXIF and XMP blocks Pillow found in it."""
    f.seek(0)
    # Broad catch for the same reason as in _read_exif_tags: Pillow's plugins raise many exception types.
    try:
        with _open_image(f) as image:
            width, height = image.size
            image_format = image.format
            exif, xmp = image.info.get("exif"), image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
    except _pil().UnidentifiedImageError:
        _warn(meta, path, "not an image format Pillow recognises")
        return _EmbeddedBlocks()
    except Exception as exc:
        _warn(meta, path, f"image header unreadable: {_reason(exc)}")
        return _EmbeddedBlocks()
    if width > 0 and height > 0:
        meta.info["width"], meta.info["height"] = width, height
    if image_format:
        meta.info["format"] = image_format
        mime = _pil().MIME.get(image_format)
        if mime:
            meta.info["mime"] = mime
    return _EmbeddedBlocks(
        exif if isinstance(exif, bytes) and exif else None,
        xmp.encode() if isinstance(xmp, str) else xmp if isinstance(xmp, bytes) and xmp else None,
    )


_HEIF_EXTENSIONS = frozenset({"heic", "heif", "hif", "avif"})
_HEIF_HEAD_BYTES = 256 << 10


def heif_exif_block(f: BinaryIO) -> bytes | None:
    """The TIFF block of a HEIF's Exif item (its `iinf` entry, its `iloc` extent in the file), or None: what
    ExifRead reads too, but whole, maker note included (ExifRead's quick mode passes maker notes over)."""
    f.seek(0)
    head = f.read(_HEIF_HEAD_BYTES)
    meta = next(((start, end) for kind, start, end in _boxes(head) if kind == b"meta"), None)
    if meta is None:
        return None
    exif_item = None
    extent = None
    for kind, start, end in _boxes(head, meta[0] + 4, meta[1]):  # a full box: version and flags first
        if kind == b"iinf":
            version = head[start]
            at = start + 4 + (2 if version == 0 else 4)
            for entry, entry_start, _entry_end in _boxes(head, at, end):
                entry_version = head[entry_start]
                if entry != b"infe" or entry_version < 2:
                    continue
                id_size = 2 if entry_version == 2 else 4
                item = int.from_bytes(head[entry_start + 4 : entry_start + 4 + id_size], "big")
                item_type = head[entry_start + 4 + id_size + 2 : entry_start + 4 + id_size + 6]
                if item_type == b"Exif":
                    exif_item = item
        elif kind == b"iloc":
            extent = _iloc_extents(head, start, end)
    if exif_item is None or extent is None or exif_item not in extent:
        return None
    offset, length = extent[exif_item]
    if not 8 <= length <= _HEIF_HEAD_BYTES:
        return None
    f.seek(offset)
    item = f.read(length)
    (tiff_at,) = struct.unpack_from(">I", item, 0)  # the TIFF header's offset after this field ("Exif\0\0")
    return item[4 + tiff_at :] if 4 + tiff_at < len(item) else None


def _iloc_extents(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """item id -> (file offset, length) of each single-extent item an `iloc` box stores in the file."""
    version = data[start]
    sizes = data[start + 4]
    offset_size, length_size = sizes >> 4, sizes & 0x0F
    base_size, index_size = data[start + 5] >> 4, (data[start + 5] & 0x0F) if version in (1, 2) else 0
    at = start + 6

    def number(size: int) -> int:
        nonlocal at
        if at + size > end:
            raise ValueError("iloc runs past its box")
        value = int.from_bytes(data[at : at + size], "big")
        at += size
        return value

    found: dict[int, tuple[int, int]] = {}
    for _ in range(number(2 if version < 2 else 4)):
        item = number(2 if version < 2 else 4)
        method = number(2) & 0x0F if version in (1, 2) else 0
        number(2)  # data_reference_index
        base = number(base_size)
        extents = [(number(index_size), number(offset_size), number(length_size)) for _ in range(number(2))]
        if method == 0 and len(extents) == 1:
            found[item] = (base + extents[0][1], extents[0][2])
    return found


def _apply_heif_size(f: BinaryIO, meta: MediaMetadata) -> None:
    """A HEIF's size from its `ispe` properties (what exiftool reports), the largest: the primary image
    of an iPhone photo is a grid whose tiles and thumbnail have smaller ones."""
    f.seek(0)
    head = f.read(_HEIF_HEAD_BYTES)
    best = (0, 0)
    at = 0
    while (at := head.find(b"ispe", at)) != -1:
        if at + 16 <= len(head):
            width, height = struct.unpack_from(">II", head, at + 8)
            # Immich stores sizes as 32-bit signed integers and drops larger ones.
            if width * height > best[0] * best[1] and max(width, height) < 1 << 31:
                best = (width, height)
        at += 4
    if best[0] and best[1]:
        meta.info["width"], meta.info["height"] = best


# XMP properties exiftool reads for the capture date and camera, by the namespace prefixes writers use.
_XMP_PROPERTY = re.compile(
    rb"(xmp|exif|photoshop|tiff):(CreateDate|DateTimeOriginal|DateCreated|Make|Model)"
    rb"""(?:\s*=\s*["']([^"'<]*)["']|>([^<]*)</)"""
)


def xmp_tags(packet: bytes) -> dict[str, str]:
    """The dates and camera of an XMP packet: {"XMP CreateDate": "2019-03-04T05:06:07+05:30", ...}, first
    value of each (attribute or element form)."""
    tags: dict[str, str] = {}
    for match in _XMP_PROPERTY.finditer(packet):
        prefix, name = match.group(1), match.group(2).decode()
        if (prefix, name) not in _XMP_WANTED:
            continue
        value = (match.group(3) if match.group(3) is not None else match.group(4)).decode("utf-8", "replace")
        if value.strip():
            tags.setdefault(f"XMP {name}", value.strip())
    return tags


_XMP_WANTED = frozenset({
    (b"xmp", "CreateDate"), (b"exif", "DateTimeOriginal"), (b"photoshop", "DateCreated"),
    (b"tiff", "Make"), (b"tiff", "Model"),
})  # fmt: skip


def _has_exif(tags: dict[str, Any]) -> bool:
    """Whether `tags` holds EXIF's: XMP's are added after them, so the first name tells."""
    return bool(tags) and not next(iter(tags)).startswith("XMP ")


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


# --- EXIF interpretation ---------------------------------------------------------------------------------


def _apply_exif(tags: dict[str, Any], path: str | bytes, meta: MediaMetadata) -> None:
    if not tags:
        return
    present = tags.keys()
    for key, read, reads in _EXIF_FIELDS:
        if reads and present.isdisjoint(reads):
            continue  # none of its tags (most photos have no GPS or exposure): it would find nothing
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
    if value is None:  # the usual case (a tag the camera does not write): no isinstance checks
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, list | tuple):
        value = " ".join(str(v) for v in value)
    if not isinstance(value, str):
        return None
    return value.replace("\x00", " ").strip() or None


def _number(value: Any) -> float | None:
    """A finite float from an EXIF number: Ratio, int, float, or a one-item list/tuple of those."""
    if value is None:  # the usual case: no checks against the Rational ABC (slow)
        return None
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
        "camera_make": _text(_tag_values(tags, "Image Make")) or _text(_tag_values(tags, "XMP Make")),
        "camera_model": _text(_tag_values(tags, "Image Model")) or _text(_tag_values(tags, "XMP Model")),
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
    if latitude is None or longitude is None or (latitude == 0 and longitude == 0):
        return {}  # 0, 0 is a phone without a fix (Immich drops it too)
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
    if (_text(_tag_values(tags, ref_name)) or "").startswith(negative_ref):  # exiftool: "s" is no south
        degrees = -degrees
    return round(degrees, 7) if abs(degrees) <= limit else None


# --- The capture time, as Immich reads it ---------------------------------------------------------------------
# Immich (v3.1) reads with exiftool through exiftool-vendored and takes the first date of IMMICH_DATE_TAGS that
# parses; the time zone comes from the zone tags, else the GPS position, else a date that carries its own
# offset, else (videos) UTC, else the gap between the camera's clock and the GPS clock. A date without an offset
# is read in that zone. The names below are exiftool's; `_capture_tags` makes them from an EXIF block the way
# exiftool's composite tags do (SubSecDateTimeOriginal = DateTimeOriginal + SubSecTimeOriginal +
# OffsetTimeOriginal; MWG's DateTimeOriginal falls back to XMP photoshop:DateCreated; GPSDateTime is UTC).

IMMICH_DATE_TAGS = (
    "SubSecDateTimeOriginal", "SubSecCreateDate", "DateTimeOriginal", "CreationDate", "CreateDate",
    "MediaCreateDate", "DateTimeCreated", "GPSDateTime", "DateTimeUTC", "SonyDateTime2", "SourceImageCreateTime",
)  # fmt: skip
# The dates exiftool-vendored looks at for an offset of their own or a gap to the GPS clock.
_CAPTURED_AT_TAGS = (
    "SubSecDateTimeOriginal", "SubSecCreateDate", "DateTimeOriginal", "CreateDate", "MediaCreateDate",
    "CreationDate", "DateTimeCreated", "TimeCreated",
)  # fmt: skip
_ZONE_TAGS = ("TimeZone", "OffsetTimeOriginal", "OffsetTimeDigitized", "TimeZoneOffset")
_UTC_CLOCK_TAGS = ("GPSDateTime", "DateTimeUTC", "GPSDateTimeStamp", "SonyDateTime2")
# The UTC offsets in use (exiftool-vendored's list): any other offset makes the date unreadable to Immich.
_VALID_OFFSET_MINUTES = frozenset(
    sign * (h * 60 + m)
    for sign, hours_minutes in ((-1, "11:00 10:00 9:30 9:00 8:30 8:00 7:00 6:00 5:00 4:00 3:30 3:00 2:30 2:00 1:00"),
                                (1, "0:00 1:00 2:00 3:00 3:30 4:00 4:30 5:00 5:30 5:45 6:00 6:30 7:00 8:00 8:30 8:45 9:00 "
                                    "9:30 9:45 10:00 10:30 11:00 12:00 12:45 13:00 13:45 14:00"))
    for h, m in (tuple(map(int, hm.split(":"))) for hm in hours_minutes.split())
)  # fmt: skip
_MAX_CLOCK_GAP_MINUTES = 30  # how far the camera-GPS clock gap may be from a real offset to be read as one
_DATE_TEXT = re.compile(
    r"\s*(\d{4})[:\-](\d\d)[:\-](\d\d)[ T](\d\d):(\d\d)(?::(\d\d))?(?:[.,](\d+))?\s*(Z|[+\-−]\d\d(?::?\d\d)?)?"
)


@dataclass(frozen=True)
class Stamp:
    """A date and time as written: its wall clock (to the millisecond) and its own offset, if it has one."""

    wall: datetime  # naive
    offset: timedelta | None
    utc_written: bool  # written as "Z" or "+00:00"


def parse_stamp(text: str | None) -> Stamp | None:
    """ "2024:05:04 10:15:00", with optional seconds, fraction and offset ("Z", "+02:00", "-0500"), ISO's "-"
    and "T" too; anything after it is ignored. None for blanks, impossible dates and offsets no zone uses."""
    match = _DATE_TEXT.match(text or "")
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        wall = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                        int((fraction or "0")[:3].ljust(3, "0")) * 1000)  # fmt: skip
    except ValueError:
        return None
    if zone is None:
        return Stamp(wall, None, False)
    minutes = _offset_minutes(zone)
    if minutes is None:
        return None
    return Stamp(wall, timedelta(minutes=minutes), zone == "Z" or minutes == 0)


def _offset_minutes(text: str) -> int | None:
    """Minutes east of UTC of "Z", "+02:00", "+0200", "-05", or None when no zone uses that offset."""
    text = text.strip().replace("−", "-")
    if text in ("Z", "UTC", "GMT"):
        return 0
    match = re.fullmatch(r"(?:UTC|GMT)?([+-])(\d{1,2})(?::?(\d\d))?", text)
    if not match:
        return None
    sign, hours, minutes = match.groups()
    total = (int(hours) * 60 + int(minutes or 0)) * (-1 if sign == "-" else 1)
    return total if total in _VALID_OFFSET_MINUTES else None


def _zone_of(value: Any) -> int | None:
    """A zone tag's offset in minutes: text ("+02:00") or hours (TimeZoneOffset: -4, or a list of them)."""
    while isinstance(value, list | tuple):
        if not value:
            return None
        value = value[0]
    if isinstance(value, int | float) and not isinstance(value, bool):
        minutes = round(value * 60)
        return minutes if minutes in _VALID_OFFSET_MINUTES else None
    if isinstance(value, str) and value.strip():
        return _offset_minutes(value)
    return None


@functools.cache
def _zone_at(latitude: float, longitude: float) -> tzinfo | None:
    """The time zone at a place (tzfpy's polygons, as geo-tz's in Immich), None where unknown or without tzfpy."""
    try:
        from zoneinfo import ZoneInfo

        import tzfpy

        name = tzfpy.get_tz(longitude, latitude)
        return ZoneInfo(name) if name else None
    except (ImportError, ValueError, KeyError, OSError):  # no tzfpy, or a zone this machine's tzdata lacks
        return None


def capture_zone(
    capture: dict[str, Any],
    is_video: bool,
    gps: tuple[float, float] | None,
    stamps: dict[str, Stamp | None] | None = None,
) -> tzinfo | None:
    """The time zone Immich gives a file (exiftool-vendored's order), or None. `stamps`: the capture's
    dates already parsed."""
    if stamps is None:
        stamps = _stamps(capture)
    for name in _ZONE_TAGS:
        value = capture.get(name)
        minutes = None if value is None else _zone_of(value)
        if minutes is not None:
            daylight_saving = str(capture.get("DaylightSavings", "")).lower() in ("yes", "true", "1")
            if daylight_saving and re.search(r"\bnikon\b", str(capture.get("Make", "")), re.I):
                minutes += 60  # Nikon's TimeZone leaves summer time out
            return timezone(timedelta(minutes=minutes))
    if gps is not None:
        zone = _zone_at(*gps)
        if zone is not None:
            return zone
    for name in _CAPTURED_AT_TAGS:
        stamp = stamps.get(name)
        if stamp is not None and stamp.offset:  # an offset of its own, not UTC
            return timezone(stamp.offset)
    if is_video:
        return timezone.utc
    return _zone_from_clock_gap(stamps)


def _zone_from_clock_gap(stamps: dict[str, Stamp | None]) -> tzinfo | None:
    """The offset between the camera's clock and the GPS (UTC) clock, rounded to a real offset."""
    utc = next((s.wall for n in _UTC_CLOCK_TAGS if (s := stamps.get(n)) is not None and not s.offset), None)
    if utc is None:
        return None
    for name in _CAPTURED_AT_TAGS:
        stamp = stamps.get(name)
        if stamp is not None and stamp.offset is None:
            gap = (stamp.wall.replace(microsecond=0) - utc.replace(microsecond=0)).total_seconds() / 60
            nearest = min(_VALID_OFFSET_MINUTES, key=lambda m: abs(m - gap))
            if abs(nearest - gap) > _MAX_CLOCK_GAP_MINUTES:
                return None
            return timezone.utc if nearest == 0 else timezone(timedelta(minutes=nearest))
    return None


_DATE_NAMES = frozenset({*IMMICH_DATE_TAGS, *_CAPTURED_AT_TAGS, *_UTC_CLOCK_TAGS})


def _stamps(capture: dict[str, Any]) -> dict[str, Stamp | None]:
    """Each date of the capture parsed once."""
    return {name: parse_stamp(_text_value(v)) for name, v in capture.items() if name in _DATE_NAMES}


def immich_capture_time(
    capture: dict[str, Any], is_video: bool = False, gps: tuple[float, float] | None = None
) -> datetime | None:
    """The capture time Immich shows: aware in the zone it found, naive (the wall clock) when it found none."""
    stamps = _stamps(capture)
    if not any(stamps.values()):
        return None
    zone = capture_zone(capture, is_video, gps, stamps)
    for name in IMMICH_DATE_TAGS:
        stamp = stamps.get(name)
        if stamp is None:
            continue
        if stamp.offset is not None:
            moment = stamp.wall.replace(tzinfo=timezone(stamp.offset))
        elif "UTC" in name or name.startswith("GPS") or is_video:
            moment = stamp.wall.replace(tzinfo=timezone.utc)
        elif zone is not None:
            return stamp.wall.replace(tzinfo=zone)
        else:
            return stamp.wall
        try:
            return moment.astimezone(zone or timezone.utc)
        except OverflowError:  # year 9999 with an offset: the caller finds it out of range
            return moment
    return None


def _text_value(value: Any) -> str | None:
    return value if isinstance(value, str) else _text(value)


def _capture_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """exiftool's names for the dates and zones of an EXIF block (tag names as ExifRead gives them), XMP's
    values where EXIF has none, and the composites exiftool makes of them."""

    def text(name: str) -> str | None:
        value = tags.get(name)
        return None if value is None else _text(getattr(value, "values", value))

    capture: dict[str, Any] = {}
    for composite, date_name, subsec_name, offset_name in (
        (
            "SubSecDateTimeOriginal",
            "EXIF DateTimeOriginal",
            "EXIF SubSecTimeOriginal",
            "EXIF OffsetTimeOriginal",
        ),
        (
            "SubSecCreateDate",
            "EXIF DateTimeDigitized",
            "EXIF SubSecTimeDigitized",
            "EXIF OffsetTimeDigitized",
        ),
    ):
        date = text(date_name)
        if date is None:
            continue
        subsec = re.match(r"\d+", text(subsec_name) or "")
        offset = text(offset_name)
        if subsec or offset:
            date = date.strip()[:19] + (f".{subsec.group()}" if subsec else "") + (offset or "")
            capture[composite] = date
        capture[composite.removeprefix("SubSec")] = date  # MWG's tag: the composite's value when there is one
    for name, exif_name in _CAPTURE_TEXT_TAGS:
        if exif_name in tags and (value := text(exif_name)) is not None:
            capture[name] = value
    for name in ("EXIF TimeZoneOffset", "Image TimeZoneOffset"):
        if name in tags:
            capture.setdefault("TimeZoneOffset", _tag_values(tags, name))
    gps_day = text("GPS GPSDate") if "GPS GPSDate" in tags else None
    gps_time = _tag_values(tags, "GPS GPSTimeStamp")
    if gps_day and isinstance(gps_time, list | tuple) and len(gps_time) == 3:
        parts = [_number(v) for v in gps_time]
        if all(p is not None for p in parts):
            hours, minutes, seconds = parts  # type: ignore[misc]
            clock = f"{int(hours):02d}:{int(minutes):02d}:{int(seconds):02d}"  # type: ignore[arg-type]
            capture["GPSDateTime"] = capture["GPSDateTimeStamp"] = f"{gps_day} {clock}Z"
    # MWG: DateTimeOriginal is EXIF's, else XMP photoshop:DateCreated; else XMP's own exif:DateTimeOriginal.
    if (
        "DateTimeOriginal" not in capture
        and "CreateDate" not in capture
        and not any(name.startswith("XMP ") for name in tags)
    ):
        return capture
    if "DateTimeOriginal" not in capture:
        xmp_original = text("XMP DateCreated") or text("XMP DateTimeOriginal")
        if xmp_original:
            capture["DateTimeOriginal"] = xmp_original
    if "CreateDate" not in capture and text("XMP CreateDate"):
        capture["CreateDate"] = text("XMP CreateDate")
    return capture


_CAPTURE_TEXT_TAGS = (
    ("OffsetTimeOriginal", "EXIF OffsetTimeOriginal"), ("OffsetTimeDigitized", "EXIF OffsetTimeDigitized"),
    ("Make", "Image Make"), ("TimeZone", "MakerNote TimeZone"), ("DaylightSavings", "MakerNote DaylightSavings"),
)  # fmt: skip


# Tags that can give a date a zone, sub-seconds or another source: without any, a camera's plain
# DateTimeOriginal is the capture time as written (most small photos: the scan's common case, 5 µs less).
_CAPTURE_DETAIL_TAGS = frozenset({
    "EXIF SubSecTimeOriginal", "EXIF SubSecTimeDigitized", "EXIF OffsetTimeOriginal", "EXIF OffsetTimeDigitized",
    "EXIF TimeZoneOffset", "Image TimeZoneOffset", "GPS GPSLatitude", "GPS GPSDate", "GPS GPSTimeStamp",
    "MakerNote TimeZone", "XMP DateCreated", "XMP DateTimeOriginal", "XMP CreateDate",
})  # fmt: skip


def _read_date(tags: dict[str, Any]) -> dict[str, Any]:
    plain = tags.get("EXIF DateTimeOriginal") if tags.keys().isdisjoint(_CAPTURE_DETAIL_TAGS) else None
    stamp = parse_stamp(plain) if isinstance(plain, str) else None
    digitized = tags.get("EXIF DateTimeDigitized")  # an offset written into it would zone the original
    digitized_stamp = parse_stamp(digitized) if isinstance(digitized, str) else None
    if (
        stamp is not None
        and stamp.offset is None
        and (digitized_stamp is None or digitized_stamp.offset is None)
    ):
        taken: datetime | None = stamp.wall
    else:
        gps = _gps_position(tags) if "GPS GPSLatitude" in tags else None
        taken = immich_capture_time(_capture_tags(tags), gps=gps)
    result: dict[str, Any] = {}
    if taken is not None:
        result["date_taken"] = taken.isoformat()
        if taken.tzinfo is not None:
            result["offset_time"] = taken.isoformat()[-6:]
            if not isinstance(taken.tzinfo, timezone):
                result["time_zone"] = str(taken.tzinfo)
    modified = parse_stamp(_text(_tag_values(tags, "Image DateTime"))) if "Image DateTime" in tags else None
    if modified is not None:
        result["modify_date"] = modified.wall.isoformat()  # not a capture date: a fallback after the name's
    return result


def _gps_position(tags: dict[str, Any]) -> tuple[float, float] | None:
    gps = _read_gps(tags)
    if not gps:
        return None
    return gps["gps_latitude"], gps["gps_longitude"]


def _read_content_id(tags: dict[str, Any]) -> dict[str, Any]:
    """Apple's ContentIdentifier: a live photo's photo and motion clip carry the same one."""
    return {"content_id": _text(_tag_values(tags, "MakerNote ContentIdentifier"))}


# Each reader with the tags it reads (empty: always run); a reader none of whose tags is there is not called.
_EXIF_FIELDS: tuple[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], frozenset[str]], ...] = (
    ("date", _read_date, frozenset()),
    (
        "camera",
        _read_camera,
        frozenset({"Image Make", "XMP Make", "Image Model", "XMP Model", "EXIF LensModel", "Image Software"}),
    ),
    ("live photo", _read_content_id, frozenset({"MakerNote ContentIdentifier"})),
    (
        "exposure",
        _read_exposure,
        frozenset({"EXIF ISOSpeedRatings", "EXIF ExposureTime", "EXIF FNumber", "EXIF FocalLength"}),
    ),
    (
        "orientation/size",
        _read_orientation_and_size,
        frozenset({"Image Orientation", "EXIF ExifImageWidth", "EXIF ExifImageLength"}),
    ),
    ("GPS", _read_gps, frozenset({"GPS GPSLatitude"})),  # no latitude, no position
)


# --- exiftool, where the fast readers stop short ----------------------------------------------------------
# Immich reads every file with exiftool. Where this module's readers stop short (MediaMetadata.
# exiftool_may_know), exiftool, when installed, is asked the tags Immich uses, with Immich's options (MWG
# composites, the date tags as text, GPS as signed degrees), through one `-stay_open` process per process of
# the scan (each worker process has its own), so a file costs a request, not a Perl start (about 0.3 s).

EXIFTOOL_TIMEOUT_S = 60.0  # one file's read; a damaged file that makes exiftool loop costs no more
_EXIFTOOL_TAGS = (
    *IMMICH_DATE_TAGS, "TimeCreated", *_ZONE_TAGS, "DaylightSavings", "GPSDateStamp", "GPSTimeStamp",
    "GPSLatitude#", "GPSLongitude#", "Make", "Model", "AndroidMake", "AndroidModel", "ImageSize",
    "ImageWidth", "ImageHeight", "ContentIdentifier",
)  # fmt: skip
_EXIFTOOL_ARGS = (
    "-json",
    "-use",
    "MWG",
    "-api",
    "largefilesupport=1",
    *(f"-{tag}" for tag in _EXIFTOOL_TAGS),
)


class ExifTool:
    """A persistent `exiftool -stay_open True -@ -` process: one file per request, under a lock (the scan's
    threads share it). A request that fails or times out ends the process; the next one starts another."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.process: Any = None
        self.lock = threading.Lock()
        self.requests = 0

    def read(self, path: str | bytes, video: bool = False) -> dict[str, Any] | None:
        """exiftool's tags of the file, or None when it could not read it (the reason is logged)."""
        raw = os.path.abspath(os.fsencode(path))  # absolute: a name starting with "-" is no option
        if b"\n" in raw or b"\r" in raw:
            return None  # the argument file is line by line: such a name cannot be passed
        with self.lock:
            try:
                return self._request(raw, video)
            except (OSError, ValueError, TimeoutError) as exc:
                log.debug("%s: exiftool failed: %s", display_path(path), exc)
                self._stop(kill=True)
                return None

    def _request(self, raw: bytes, video: bool) -> dict[str, Any] | None:
        if self.process is None or self.process.poll() is not None:
            import subprocess

            # exiftool -stay_open does not end at the end of its input: it must end with its parent. Linux
            # ends it with the thread that started it (a scan pool's thread, or a worker process, even one
            # killed); elsewhere it is ended at exit (atexit, and multiprocessing's exit for workers).
            self.process = subprocess.Popen(
                [self.executable, "-stay_open", "True", "-@", "-"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl+C reaches the scan, which ends it; not exiftool mid-answer
                preexec_fn=_end_with_parent if sys.platform == "linux" else None,
            )  # fmt: skip
        self.requests += 1
        ready = b"{ready%d}" % self.requests
        args = [*_EXIFTOOL_ARGS, *(("-ee",) if video else ()), "-charset", "filename=utf8"]
        lines = [a.encode() for a in args] + [raw, b"-execute%d" % self.requests]
        self.process.stdin.write(b"\n".join(lines) + b"\n")
        self.process.stdin.flush()
        output = self._read_until(ready)
        text = output[: output.rindex(ready)].decode("utf-8", "replace").strip()
        if not text:
            return None
        answer = json.loads(text)
        tags = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], dict) else None
        return None if tags is None or "Error" in tags else tags

    def _read_until(self, ready: bytes) -> bytes:
        import select

        deadline = time.monotonic() + EXIFTOOL_TIMEOUT_S
        stdout = self.process.stdout
        output = b""
        while ready not in output:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise TimeoutError(f"no answer in {EXIFTOOL_TIMEOUT_S:g} s")
            chunk = os.read(stdout.fileno(), 1 << 16)
            if not chunk:
                raise ValueError("exiftool ended")
            output += chunk
        return output

    def close(self) -> None:
        with self.lock:
            self._stop(kill=False)

    def _stop(self, kill: bool) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if not kill:
                process.stdin.write(b"-stay_open\nFalse\n")
                process.stdin.flush()
                process.wait(timeout=2)
        except (OSError, ValueError) as exc:
            log.debug("exiftool did not stop when asked: %s", exc)
        except Exception as exc:  # subprocess.TimeoutExpired: a broad catch, it is stopped below anyway
            log.debug("exiftool did not stop in time: %s", exc)
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError as exc:  # a request still buffered for a process that died: nobody to read it
                log.debug("exiftool's pipe: %s", exc)


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM when the thread that started it ends (prctl PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


_exiftool_lock = threading.Lock()
_exiftool: ExifTool | None = None


def shared_exiftool() -> ExifTool | None:
    """This process's exiftool, started on first use; None when exiftool is not installed."""
    global _exiftool
    with _exiftool_lock:
        if _exiftool is None:
            executable = exiftool_path()
            if executable is None:
                return None
            _exiftool = ExifTool(executable)
            import atexit
            import multiprocessing.util

            atexit.register(_exiftool.close)
            multiprocessing.util.Finalize(_exiftool, _exiftool.close, exitpriority=10)  # a pool worker's exit
        return _exiftool


@functools.cache
def exiftool_path() -> str | None:
    import shutil

    return shutil.which("exiftool")


def _apply_exiftool(tags: dict[str, Any] | None, is_video: bool, meta: MediaMetadata) -> None:
    """exiftool's reading of the date, camera, place and size replaces this reader's (it is Immich's)."""
    if tags is None:
        return
    latitude, longitude = tags.get("GPSLatitude"), tags.get("GPSLongitude")
    gps = None
    numbers = isinstance(latitude, int | float) and isinstance(longitude, int | float)
    if numbers and abs(latitude) <= 90 and abs(longitude) <= 180 and (latitude or longitude):  # type: ignore[arg-type]
        gps = (float(latitude), float(longitude))  # type: ignore[arg-type]
    for key in ("date_taken", "offset_time", "time_zone", "gps_latitude", "gps_longitude", "gps_altitude"):
        meta.info.pop(key, None)
    taken = immich_capture_time(tags, is_video, gps)
    meta.date_taken, meta.date_source = taken, ("none" if taken is None else "video" if is_video else "exif")
    if taken is not None:
        meta.info["date_taken"] = taken.isoformat()
        if taken.tzinfo is not None:
            meta.info["offset_time"] = taken.isoformat()[-6:]
            if not isinstance(taken.tzinfo, timezone):
                meta.info["time_zone"] = str(taken.tzinfo)
    if gps is not None:
        meta.info["gps_latitude"], meta.info["gps_longitude"] = round(gps[0], 7), round(gps[1], 7)
    for key, names in (("camera_make", ("Make", "AndroidMake")), ("camera_model", ("Model", "AndroidModel"))):
        value = next((_text(tags[n]) for n in names if _text(tags.get(n))), None)
        if value is not None:
            meta.info[key] = value
        else:
            meta.info.pop(key, None)
    size = re.fullmatch(r"(\d+)x(\d+)", str(tags.get("ImageSize", "")))
    width, height = (
        (int(size[1]), int(size[2])) if size else (tags.get("ImageWidth"), tags.get("ImageHeight"))
    )
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        meta.info["width"], meta.info["height"] = width, height
    if isinstance(tags.get("ContentIdentifier"), str) and tags["ContentIdentifier"].strip():
        meta.info["content_id"] = tags["ContentIdentifier"].strip()
    meta.info["read_by"] = "exiftool"


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
_NOT_MEDIA_PREFIXES = tuple(magic for magic, _ in _NOT_MEDIA_MAGIC)
_TEXT_BYTES = b"\t\n\r\x0c" + bytes(range(0x20, 0x7F))


def content_problem(extension: str, head: bytes) -> str | None:
    """Why a file's first bytes cannot be the photo or video its name claims (text, a document, an archive,
    a program), or None. Only surely-not-media content is refused: a PNG named .jpg is still a photo, and a
    format this check does not know passes (Immich judges it)."""
    if head.startswith(_NOT_MEDIA_PREFIXES):  # one call for the common case: none of them
        for magic, what in _NOT_MEDIA_MAGIC:
            if head.startswith(magic):
                return f"its content is {what}, not a photo or video"
    # Text throughout its first 4 KB: a first byte that is no text (every photo's) ends the check at once.
    if (
        head
        and head[0] in _TEXT_BYTES
        and extension != "svg"
        and not head[:4096].translate(None, _TEXT_BYTES)
    ):
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


def sidecar_for(raw_path: bytes, xmp_names: Container[bytes] | None = None) -> bytes | None:
    """The XMP sidecar that travels with a photo: `photo.jpg.xmp`, else `photo.xmp`, as Immich's own CLI
    looks for them. `IMG_9.HEIC.xmp` beside `IMG_9.HEIC.jpg` is the sidecar of `IMG_9.HEIC` when that file
    exists, not of the converted copy. With `xmp_names` (the names of the folder's sidecars as listed, in lower
    case), only those are looked for."""

    def listed(candidate: bytes) -> bool:
        return xmp_names is None or os.path.basename(candidate).lower() in xmp_names

    for candidate in (raw_path + b".xmp", raw_path + b".XMP"):
        if listed(candidate) and os.path.isfile(candidate):
            return candidate
    stem = os.path.splitext(raw_path)[0]
    candidates = [c for c in (stem + b".xmp", stem + b".XMP") if listed(c)]
    if not candidates or os.path.exists(stem):
        return None
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    return None
