"""A small Immich-compatible HTTP server for the tests and benchmarks, standard library only.

It owns the stand-in for a real Immich server (v3.1.0 by default, or v2 behaviour when `version` < 3, as observed
in ../shared/immich-api.md §7b): API-key auth, the server routes (ping, version, media types, features, about,
statistics), streaming multipart uploads that hash the file with SHA-1 while discarding its bytes, v3's zod
validation of the upload fields (JavaScript number coercion for `duration`, UUID v4, metadata items) and the
database's refusal of year 0000, duplicate detection (checksum header, bulk-upload-check, after the body;
checksums decoded as Node's Buffer does), locked assets hidden from API keys, a partner's assets readable but not
the user's own, API keys without a permission (403), the trash (`DELETE /api/assets`), albums, stacks (merged and
their primary changed as Immich does), live photos linked at upload or by `PUT /api/assets/{id}` (the clip hidden),
`PUT /api/assets/copy` (with v3.1.0's deletion of a stack both assets are in already), tags (`PUT /api/tags`,
`PUT /api/tags/assets`, §7c), one-shot fault
injection (error statuses, proxy HTML pages, Retry-After, connection resets, delays) and whole-server outages. It
runs in-process (`ImmichTestServer().start()`) or as a process (`python tests/immich_server.py --port 0 --api-key
KEY` prints `READY http://127.0.0.1:PORT`). Every response carries the correlation-id header (`X-Correlation-ID`
on v3, `x-immich-cid` on v2).

For attacks on the client: `bulk_check_lie` makes bulk-upload-check answer "duplicate" for every checksum.

For benchmarks: `request_delay_s` (`--delay-ms N`) makes every answer wait, like a slower or farther server, and
`GET /__stand-in__/uploads` (test-only, no key, outside /api) lists every upload received as {sha1, status, size}.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import http.client
import http.server
import json
import math
import posixpath
import re
import signal
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, BinaryIO, NamedTuple

CHUNK_SIZE = 1 << 20  # recv size; large reads keep 1 GiB benchmark uploads cheap to parse
JSON_BODY_LIMIT = 10 * 1024 * 1024  # Immich's express json() limit
PART_HEADER_LIMIT = 64 * 1024
FIELD_VALUE_LIMIT = 1024 * 1024  # multer's default fieldSize
CHUNK_LINE_LIMIT = 4096
SIDECAR_HEAD_BYTES = 16 * 1024
SOCKET_TIMEOUT_S = 300.0  # a stalled client must not pin a thread forever, a slow benchmark must not be cut

# ../shared/immich-api.md §5, plus .jp2 and .m2t that the docs list for newer versions, and .mpo, .mxf and .ts that
# a v3.1.0 server accepted (§7b). The other extensions the doc marks unconfirmed (.vob) stay out.
# fmt: off
RAW_EXTENSIONS = (
    ".3fr", ".ari", ".arw", ".cap", ".cin", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".fff",
    ".iiq", ".k25", ".kdc", ".mrw", ".nef", ".nrw", ".orf", ".ori", ".pef", ".psd", ".raf", ".raw",
    ".rw2", ".rwl", ".sr2", ".srf", ".srw", ".x3f",
)
OTHER_IMAGE_EXTENSIONS = (
    ".avif", ".bmp", ".gif", ".heic", ".heif", ".hif", ".insp", ".jp2", ".jpe", ".jpeg", ".jpg", ".jxl",
    ".mpo", ".png", ".svg", ".tif", ".tiff", ".webp",
)
IMAGE_EXTENSIONS = OTHER_IMAGE_EXTENSIONS + RAW_EXTENSIONS
VIDEO_EXTENSIONS = (
    ".3gp", ".3gpp", ".avi", ".flv", ".insv", ".m2t", ".m2ts", ".m4v", ".mkv", ".mov", ".mp4", ".mpe",
    ".mpeg", ".mpg", ".mts", ".mxf", ".ts", ".webm", ".wmv",
)
# fmt: on
SIDECAR_EXTENSIONS = (".xmp",)
UPLOAD_EXTENSIONS = frozenset(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)

VISIBILITIES = ("archive", "timeline", "hidden", "locked")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# zod's uuidv4(): version digit 4 and RFC variant (8, 9, a, b); other versions are "Invalid UUID" on v3.1.0.
_UUID_V4_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)
# zod's iso.datetime({offset: true}) as observed on v3.1.0: seconds optional, any fraction, `Z` or `±HH:MM` only.
_V3_DATETIME_RE = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})"
    r"T(?P<h>[01][0-9]|2[0-3]):(?P<mi>[0-5][0-9])(?::(?P<s>[0-5][0-9])(?:\.(?P<f>[0-9]+))?)?"
    r"(?:Z|(?P<sign>[+-])(?P<oh>[01][0-9]|2[0-3]):(?P<om>[0-5][0-9]))"
)
# What JavaScript's Number(string) takes besides the empty string; [0-9], not \d, which matches other scripts' digits.
_JS_DECIMAL_RE = re.compile(r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_JS_RADIX_RE = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)")
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_MAX_SAFE_INTEGER = 2**53 - 1  # zod 4's int() bound
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Node's base64 decoder reads the standard and the url-safe alphabet alike.
_B64_VALUES = {c: i for i, c in enumerate(_B64_ALPHABET)} | {"-": 62, "_": 63}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_PARAM_RE = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


@dataclass
class Asset:
    id: str
    sha1_hex: str
    size_bytes: int
    filename: str
    fields: dict[str, str]
    sidecar_sha1: str | None
    is_trashed: bool = False
    owner_id: str = ""  # "" = the server's one user; another id = a partner's asset this user may read
    # What metadata extraction found (exiftool reads the sidecar too), and what PUT /api/assets set since.
    exif: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""  # updatedAt: moves whenever the asset changes (an update, the user's edit)
    tag_ids: list[str] = field(default_factory=list)
    stack_id: str | None = None
    created_at: str = ""  # createdAt: when the server took it (its clock), ISO with Z
    extracted: bool = False  # its metadata extraction ran (see extraction_drops_tags)


@dataclass
class Tag:
    id: str
    value: str  # the whole path, "Trips/2019/Paris"
    parent_id: str | None


@dataclass
class UploadRecord:
    fields: dict[str, str]
    filename: str | None  # the assetData part's own filename, as sent
    sha1_hex: str  # "" when no file part arrived
    size_bytes: int
    status: int
    headers: dict[str, str]  # request headers, lower-cased names
    sidecar_filename: str | None
    sidecar_head: bytes = b""  # the sidecar's first bytes (made sidecars are checked by the tests)


@dataclass
class Album:
    id: str
    albumName: str
    asset_ids: list[str] = field(default_factory=list)


@dataclass
class Fault:
    status: int | None
    count: int
    path: str | None
    method: str | None
    retry_after_s: float | None
    html: bool
    reset: bool
    delay_s: float
    drop_answer: bool = (
        False  # handle the request in full (an upload is stored), then reset instead of answering
    )
    # A server that took the request and went silent: "before_body" reads nothing of the body, "after_body" all
    # of it; neither answers, until release_stalled() or stop() closes the connection (see _Handler._stall).
    stall: str | None = None
    # Answer as usual, body read and handled, but only once this is set: a server writing a big file to disk.
    hold: threading.Event | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        # Exact path, or a prefix written with a trailing '*' ("/api/albums*").
        if self.path is None or path == self.path:
            return True
        return self.path.endswith("*") and path.startswith(self.path[:-1])


class FaultQueue:
    """FIFO of one-shot faults; each matching request consumes one use of the first fault that matches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        *,
        status: int | None = None,
        count: int = 1,
        path: str | None = None,
        method: str | None = None,
        retry_after_s: float | None = None,
        html: bool = False,
        reset: bool = False,
        delay_s: float = 0.0,
        drop_answer: bool = False,
        stall: str | None = None,
        hold: threading.Event | None = None,
    ) -> Fault:
        if stall not in (None, "before_body", "after_body"):
            raise ValueError(f"stall: {stall!r} is not before_body or after_body")
        fault = Fault(
            status, count, path, method, retry_after_s, html, reset, delay_s, drop_answer, stall, hold
        )
        if count > 0:
            with self._lock:
                self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> int:
        """Uses left over all queued faults (a fault added with count=2 counts twice)."""
        with self._lock:
            return sum(f.count for f in self._faults)

    def take(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        del self._faults[i]
                    return replace(fault)
        return None


class ClientGone(Exception):
    """The client closed or broke the connection before the request body ended."""


class FramingError(Exception):
    """The HTTP body framing (Content-Length / chunked) is broken; the connection cannot be reused."""


class MultipartError(Exception):
    """The multipart body is malformed; the HTTP framing is still intact."""


class Issue(NamedTuple):
    """One zod issue of a v3 "Validation failed" answer; the path is [field, *subpath]."""

    field: str
    message: str
    code: str = "custom"
    subpath: tuple[str | int, ...] = ()


class ApiError(Exception):
    """An Immich error answer; `issues` ((field, message) pairs or Issues) makes it a validation failure."""

    def __init__(
        self, status: int, message: str, issues: list[Issue] | list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.issues = [Issue(*issue) for issue in issues or []]


class BodyReader:
    """Reads one request body, Content-Length or chunked, into caller buffers without ever over-reading."""

    def __init__(self, rfile: BinaryIO, content_length: str | None, transfer_encoding: str | None) -> None:
        self._rfile = rfile
        self._chunked = "chunked" in (transfer_encoding or "").lower()
        self._left = 0  # bytes owed by the client in the body (or in the current chunk)
        self.done = False
        self.received = 0
        if not self._chunked:
            try:
                self._left = int(content_length or "0")
            except ValueError:
                raise FramingError("Invalid Content-Length") from None
            if self._left < 0:
                raise FramingError("Invalid Content-Length")
            self.done = self._left == 0

    @property
    def declared_length(self) -> int | None:
        return None if self._chunked else self._left + self.received

    def readinto(self, buf: memoryview) -> int:
        """Fill part of `buf`; 0 means the body ended. Raises ClientGone when the peer vanished."""
        if self.done or not len(buf):
            return 0
        if self._chunked and self._left == 0:
            self._start_chunk()
            if self.done:
                return 0
        # Never ask for more than the client owes: BufferedReader.readinto1 may block for the rest of the request.
        try:
            n = self._rfile.readinto1(buf[: min(len(buf), self._left)])  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            raise ClientGone(str(exc)) from exc
        if not n:
            raise ClientGone("connection closed mid-body")
        self._left -= n
        self.received += n
        if self._left == 0:
            if self._chunked:
                self._end_chunk()
            else:
                self.done = True
        return n

    def drain(self) -> None:
        """Read and discard the rest of the body so the connection can carry the next request."""
        if self.done:
            return
        with memoryview(bytearray(CHUNK_SIZE)) as scratch:
            while self.readinto(scratch):
                pass

    def read_all(self, limit: int) -> bytes:
        """The whole (small) body; raises ApiError 413 beyond `limit` after draining it."""
        out = bytearray()
        with memoryview(bytearray(min(CHUNK_SIZE, limit + 1))) as scratch:
            while n := self.readinto(scratch):
                out += scratch[:n]
                if len(out) > limit:
                    self.drain()
                    raise ApiError(413, "request entity too large")
        return bytes(out)

    def _readline(self) -> bytes:
        try:
            line = self._rfile.readline(CHUNK_LINE_LIMIT)
        except (OSError, ValueError) as exc:
            raise ClientGone(str(exc)) from exc
        if not line:
            raise ClientGone("connection closed mid-body")
        if not line.endswith(b"\n"):
            raise FramingError("chunk line too long")
        return line

    def _start_chunk(self) -> None:
        size_text = self._readline().split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FramingError("Invalid chunk size") from None
        if size < 0:
            raise FramingError("Invalid chunk size")
        if size == 0:
            while self._readline().strip():  # trailers end with an empty line
                pass
            self.done = True
        self._left = size

    def _end_chunk(self) -> None:
        if self._readline().strip():
            raise FramingError("chunk data longer than its size")


class PartSink:
    """What parse_multipart feeds; `error` set by begin() stops the parse (the caller drains the rest)."""

    error: str | None = None

    def begin(self, headers: dict[str, str]) -> None: ...
    def data(self, chunk: memoryview) -> None: ...
    def end(self) -> None: ...


def parse_multipart(body: BodyReader, boundary: bytes, sink: PartSink) -> None:
    """Stream a multipart body through `sink`, scanning for the boundary across read edges with bytes.find."""
    delim = b"\r\n--" + boundary
    hold = len(delim) - 1  # bytes kept back at a read edge: they may be the start of a delimiter
    buf = bytearray(CHUNK_SIZE + PART_HEADER_LIMIT + len(delim))
    # Pretend a CRLF precedes the body so the first boundary line matches the same delimiter as the others.
    buf[0:2] = b"\r\n"
    start, end, eof = 0, 2, False
    state = "preamble"
    with memoryview(buf) as view:
        while True:
            progressed = True
            if state == "preamble":
                i = buf.find(delim, start, end)
                if i < 0:
                    start = max(start, end - hold)
                    progressed = False
                else:
                    start, state = i + len(delim), "after_delim"
            elif state == "after_delim":
                if end - start < 2:
                    progressed = False
                elif buf[start : start + 2] == b"--":
                    return  # closing delimiter; any epilogue is drained by the caller
                else:
                    i = buf.find(b"\r\n", start, end)
                    if i < 0:
                        if end - start > 1024:
                            raise MultipartError("Malformed part header")
                        progressed = False
                    else:
                        start, state = i + 2, "headers"
            elif state == "headers":
                if buf.startswith(b"\r\n", start, end):
                    headers, start = {}, start + 2
                else:
                    i = buf.find(b"\r\n\r\n", start, end)
                    if i < 0:
                        if end - start > PART_HEADER_LIMIT:
                            raise MultipartError("Malformed part header")
                        headers, progressed = {}, False
                    else:
                        headers, start = _parse_part_headers(bytes(buf[start:i])), i + 4
                if progressed:
                    sink.begin(headers)
                    if sink.error:
                        return
                    state = "body"
            else:  # body
                i = buf.find(delim, start, end)
                if i >= 0:
                    if i > start:
                        sink.data(view[start:i])
                    sink.end()
                    start, state = i + len(delim), "after_delim"
                else:
                    safe = end - hold
                    if safe > start:
                        sink.data(view[start:safe])
                        start = safe
                    progressed = False
                if sink.error:
                    return
            if progressed:
                continue
            if eof:
                raise MultipartError("Unexpected end of form")
            if start:
                # Only a delimiter-sized tail (or an incomplete part header) is ever left: moving it is cheap.
                buf[0 : end - start] = buf[start:end]
                end, start = end - start, 0
            if end == len(buf):
                raise MultipartError("Malformed part header")
            n = body.readinto(view[end:])
            if n == 0:
                eof = True
            end += n


def _parse_part_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def header_params(value: str) -> dict[str, str]:
    """Parameters of a Content-Type / Content-Disposition value, unquoted; RFC 5987 `name*` decoded."""
    params: dict[str, str] = {}
    for key, raw in _PARAM_RE.findall(value):
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[key.lower()] = raw
    for key in [k for k in params if k.endswith("*")]:
        charset, _, rest = params.pop(key).partition("'")
        encoded = rest.partition("'")[2]
        try:
            params[key[:-1]] = urllib.parse.unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:
            params[key[:-1]] = urllib.parse.unquote(encoded, errors="replace")
    return params


def multipart_boundary(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    boundary = header_params(content_type).get("boundary", "")
    if not boundary or len(boundary) > 200:
        return None
    return boundary.encode("latin-1", "replace")


def has_upload_extension(name: str) -> bool:
    # Immich matches the lower-cased extension only (no content sniffing); node's extname ignores dot files.
    return posixpath.splitext(name)[1].lower() in UPLOAD_EXTENSIONS


def has_sidecar_extension(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in SIDECAR_EXTENSIONS


def is_video(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in VIDEO_EXTENSIONS


class UploadParts(PartSink):
    """Collects one upload's text fields and hashes its file parts as they stream past (bytes are dropped)."""

    def __init__(self) -> None:
        self.error: str | None = None
        self.fields: dict[str, str] = {}
        self.asset_filename: str | None = None
        self.asset_sha1 = hashlib.sha1()
        self.size = 0
        self.sidecar_filename: str | None = None
        self.sidecar_sha1: Any = None
        self.sidecar_head = b""
        self.sidecar_size = 0
        self._target: str | None = None
        self._field_name = ""
        self._text = bytearray()

    def begin(self, headers: dict[str, str]) -> None:
        params = header_params(headers.get("content-disposition", ""))
        name, filename = params.get("name"), params.get("filename")
        self._target = None
        if name is None:
            return  # busboy skips parts without a name
        if filename is None:
            self._target, self._field_name, self._text = "field", name, bytearray()
            return
        # Immich's canUploadFile checks `body.filename || file.originalName` while multer parses, so a `filename`
        # field counts only if it arrived before this file part, and it counts for the sidecar part too:
        # `filename=photo.jpg` then a `photo.jpg.xmp` sidecar is "Unsupported file type photo.jpg".
        checked = self.fields.get("filename") or filename
        if name == "assetData" and self.asset_filename is None:
            if not has_upload_extension(checked):
                self.error = f"Unsupported file type {checked}"
                return
            self._target, self.asset_filename = "asset", filename
        elif name == "sidecarData" and self.sidecar_filename is None:
            if not has_sidecar_extension(checked):
                self.error = f"Unsupported file type {checked}"
                return
            self._target, self.sidecar_filename, self.sidecar_sha1 = "sidecar", filename, hashlib.sha1()
        else:
            self.error = "Unexpected field"  # multer's answer to a file part it was not configured for

    def data(self, chunk: memoryview) -> None:
        if self._target == "asset":
            self.asset_sha1.update(chunk)
            self.size += len(chunk)
        elif self._target == "sidecar":
            self.sidecar_sha1.update(chunk)
            if len(self.sidecar_head) < SIDECAR_HEAD_BYTES:
                self.sidecar_head += bytes(chunk[: SIDECAR_HEAD_BYTES - len(self.sidecar_head)])
            self.sidecar_size += len(chunk)
        elif self._target == "field":
            if len(self._text) + len(chunk) > FIELD_VALUE_LIMIT:
                self.error = "Field value too long"
                return
            self._text += chunk

    def end(self) -> None:
        if self._target == "field":
            self.fields[self._field_name] = self._text.decode("utf-8", "replace")
        self._target = None

    @property
    def sha1_hex(self) -> str:
        return self.asset_sha1.hexdigest() if self.asset_filename is not None else ""

    def record(self, status: int, headers: dict[str, str]) -> UploadRecord:
        return UploadRecord(
            fields=dict(self.fields),
            filename=self.asset_filename,
            sha1_hex=self.sha1_hex,
            size_bytes=self.size,
            status=status,
            headers=headers,
            sidecar_filename=self.sidecar_filename,
            sidecar_head=self.sidecar_head,
        )


def checksum_to_hex(value: str) -> str | None:
    """Immich's fromChecksum, `Buffer.from(value, length 28 ? 'base64' : 'hex')`, as Node decodes: None when
    nothing decodes (never matches). A wrong or malformed value just never matches; it is no error."""
    raw = node_base64(value) if len(value) == 28 else node_hex(value)
    return raw.hex() if raw else None


def node_base64(value: str) -> bytes:
    """Node's lenient base64: both alphabets (so url-safe `-`/`_` work), other characters skipped, stops at '='."""
    out = bytearray()
    bits = nbits = 0
    for char in value:
        if char == "=":
            break
        digit = _B64_VALUES.get(char)
        if digit is None:
            continue
        bits, nbits = (bits << 6) | digit, nbits + 6
        if nbits >= 8:
            nbits -= 8
            out.append((bits >> nbits) & 0xFF)
    return bytes(out)


def node_hex(value: str) -> bytes:
    """Node's hex: pairs of hex digits up to the first pair that is not; an odd last digit is dropped."""
    out = bytearray()
    for i in range(0, len(value) - 1, 2):
        pair = value[i : i + 2]
        if not set(pair) <= _HEX_DIGITS:
            break
        out.append(int(pair, 16))
    return bytes(out)


def _days_in_month(year: int, month: int) -> int:
    # Proleptic Gregorian, year 0 included (a leap year): zod's date regex lets 0000-02-29 through.
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def is_v3_datetime(value: str) -> bool:
    match = _V3_DATETIME_RE.fullmatch(value)
    if not match:
        return False
    month, day = int(match["mo"]), int(match["d"])
    # The regex lets 2024-02-30 through, zod does not; year 0000 passes zod (only the database refuses it).
    return 1 <= month <= 12 and 1 <= day <= _days_in_month(int(match["y"]), month)


def v3_datetime_utc(value: str) -> tuple[int, str]:
    """(UTC year, the instant as JavaScript's toISOString) of a value is_v3_datetime accepted. Immich stores the
    instant, so an offset is converted and the fraction cut to milliseconds on the way back out."""
    m = _V3_DATETIME_RE.fullmatch(value)
    assert m is not None
    year = int(m["y"])
    shift = 400 if year < 400 else 0  # Python has no year 0; the calendar repeats every 400 years
    offset = 0 if m["sign"] is None else int(f"{m['sign']}1") * (int(m["oh"]) * 60 + int(m["om"]))
    micro = int((m["f"] or "")[:6].ljust(6, "0"))
    try:
        local = datetime(
            year + shift, int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"] or 0), micro
        )
        utc = local - timedelta(minutes=offset)
    except OverflowError:
        return 10000, value  # past 9999-12-31 in UTC: fine for the database, too rare to format
    utc_year = utc.year - shift
    return utc_year, f"{utc_year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


def js_number(text: str) -> float:
    """JavaScript's Number(string), which zod's coerce.number() calls: trims, "" is 0, hex/octal/binary literals
    and exponents count, anything else is NaN."""
    text = text.strip(_JS_WHITESPACE)
    if not text:
        return 0.0
    if _JS_RADIX_RE.fullmatch(text):
        try:
            return float(int(text, 0))
        except OverflowError:
            return math.inf
    if _JS_DECIMAL_RE.fullmatch(text):
        return float(text.replace("Infinity", "inf"))
    return math.nan


def duration_issue(text: str) -> Issue | None:
    """zod's coerce.number().int().min(0) on the `duration` field (milliseconds on v3)."""
    value = js_number(text)
    if math.isnan(value) or math.isinf(value):
        received = "NaN" if math.isnan(value) else "Infinity"
        return Issue("duration", f"Invalid input: expected number, received {received}", "invalid_type")
    if not value.is_integer():
        return Issue("duration", "Invalid input: expected int, received number", "invalid_type")
    if value > _MAX_SAFE_INTEGER:
        return Issue("duration", f"Too big: expected int to be <={_MAX_SAFE_INTEGER}", "too_big")
    if value < 0:
        return Issue("duration", "Too small: expected number to be >=0", "too_small")
    return None


def coerced_duration(fields: dict[str, str]) -> int | None:
    """The duration a validated v3 upload stores (None when the field was not sent)."""
    return int(js_number(fields["duration"])) if "duration" in fields else None


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python reads NaN/Infinity, JSON.parse does not


def metadata_issues(text: str) -> list[Issue]:
    """JsonParsed.pipe(z.array({key: z.string(), value: z.record(...)})): JSON of a list of {key, value: object}."""
    try:
        items = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return [Issue("metadata", "Invalid JSON", "custom")]
    if not isinstance(items, list):
        return [
            Issue("metadata", f"Invalid input: expected array, received {_js_type(items)}", "invalid_type")
        ]
    issues: list[Issue] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            message = f"Invalid input: expected object, received {_js_type(item)}"
            issues.append(Issue("metadata", message, "invalid_type", (i,)))
            continue
        key, value = item.get("key"), item.get("value")
        if not isinstance(key, str):
            received = "undefined" if "key" not in item else _js_type(key)
            message = f"Invalid input: expected string, received {received}"
            issues.append(Issue("metadata", message, "invalid_type", (i, "key")))
        if not isinstance(value, dict):  # a record: arrays and null are refused too
            received = "undefined" if "value" not in item else _js_type(value)
            message = f"Invalid input: expected record, received {received}"
            issues.append(Issue("metadata", message, "invalid_type", (i, "value")))
    return issues


def validate_v3(fields: dict[str, str]) -> list[Issue]:
    issues: list[Issue] = []
    for name in ("fileCreatedAt", "fileModifiedAt"):
        value = fields.get(name)
        if value is None:
            issues.append(Issue(name, "Invalid input: expected string, received undefined", "invalid_type"))
        elif not is_v3_datetime(value):
            issues.append(Issue(name, "Invalid ISO datetime", "invalid_format"))
    if "duration" in fields and (issue := duration_issue(fields["duration"])) is not None:
        issues.append(issue)
    if fields.get("isFavorite", "true") not in ("true", "false"):
        issues.append(Issue("isFavorite", 'Invalid option: expected one of "true"|"false"', "invalid_value"))
    if fields.get("visibility", "timeline") not in VISIBILITIES:
        message = 'Invalid option: expected one of "archive"|"timeline"|"hidden"|"locked"'
        issues.append(Issue("visibility", message, "invalid_value"))
    if "livePhotoVideoId" in fields and not _UUID_V4_RE.fullmatch(fields["livePhotoVideoId"]):
        issues.append(Issue("livePhotoVideoId", "Invalid UUID", "invalid_format"))
    if "metadata" in fields:
        issues += metadata_issues(fields["metadata"])
    return issues


def bulk_update_issues(payload: dict[str, Any]) -> list[Issue]:
    """AssetBulkUpdateDto as zod checks it: ids are UUIDs; each field, when present, of its type and range."""
    issues: list[Issue] = []
    ids = payload.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, str) and _UUID_V4_RE.fullmatch(i) for i in ids):
        issues.append(Issue("ids", "Invalid input: expected array of UUIDs"))
    if "isFavorite" in payload and not isinstance(payload["isFavorite"], bool):
        issues.append(
            Issue(
                "isFavorite", f"Invalid input: expected boolean, received {_js_type(payload['isFavorite'])}"
            )
        )
    if "visibility" in payload and payload["visibility"] not in VISIBILITIES:
        issues.append(Issue("visibility", "Invalid option: expected one of archive|timeline|hidden|locked"))
    if "dateTimeOriginal" in payload and not (
        isinstance(payload["dateTimeOriginal"], str) and is_v3_datetime(payload["dateTimeOriginal"])
    ):
        issues.append(Issue("dateTimeOriginal", "Invalid ISO datetime"))
    for name, limit in (("latitude", 90), ("longitude", 180)):
        if name in payload:
            value = payload[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not -limit <= value <= limit:
                issues.append(Issue(name, f"Invalid input: expected number in [-{limit}, {limit}]"))
    if "description" in payload and not isinstance(payload["description"], str):
        issues.append(Issue("description", "Invalid input: expected string"))
    return issues


def asset_update_issues(payload: dict[str, Any]) -> list[Issue]:
    """What UpdateAssetDto adds to the bulk fields: a rating (-1 or 1-5, or null) and livePhotoVideoId."""
    issues: list[Issue] = []
    rating = payload.get("rating")
    if rating is not None and (
        isinstance(rating, bool) or not isinstance(rating, int) or not -1 <= rating <= 5
    ):
        issues.append(Issue("rating", "Invalid input: expected int in [-1, 5]", "invalid_type"))
    elif rating == 0:
        message = "Rating must be -1 (rejected), 1–5 (starred), or null (unrated); 0 is not valid"
        issues.append(Issue("rating", message))
    live = payload.get("livePhotoVideoId")
    if live is not None and not (isinstance(live, str) and _UUID_V4_RE.fullmatch(live)):
        issues.append(Issue("livePhotoVideoId", "Invalid UUID", "invalid_format"))
    return issues


def copy_issues(payload: Any) -> list[Issue]:
    """AssetCopyDto: two UUIDs, and booleans for what to copy (each true when left out)."""
    if not isinstance(payload, dict):
        return [Issue("sourceId", "Invalid input: expected object", "invalid_type")]
    issues = [
        Issue(name, "Invalid UUID", "invalid_format")
        for name in ("sourceId", "targetId")
        if not (isinstance(payload.get(name), str) and _UUID_V4_RE.fullmatch(payload[name]))
    ]
    for name in COPY_PARTS:
        if name in payload and not isinstance(payload[name], bool):
            issues.append(Issue(name, "Invalid input: expected boolean", "invalid_type"))
    return issues


COPY_PARTS = ("sharedLinks", "albums", "sidecar", "stack", "favorite")
_XMP_VALUE = r"(?:=['\"]|>)([^'\"<]+)"


def exif_from_sidecar(head: bytes, created_at: str | None) -> dict[str, Any]:
    """What Immich's metadata extraction (exiftool) takes from a sidecar: its date, place and description;
    without a date the asset's dateTimeOriginal is the fileCreatedAt it was sent with."""
    text = head.decode("utf-8", "replace")
    exif: dict[str, Any] = {"dateTimeOriginal": None, "latitude": None, "longitude": None, "description": ""}
    date = re.search(r"exif:DateTimeOriginal" + _XMP_VALUE, text)
    if date and is_v3_datetime(date.group(1).strip()):
        exif["dateTimeOriginal"] = v3_datetime_utc(date.group(1).strip())[1]
    elif created_at and is_v3_datetime(created_at):
        exif["dateTimeOriginal"] = v3_datetime_utc(created_at)[1]
    for name, key in (("GPSLatitude", "latitude"), ("GPSLongitude", "longitude")):
        found = re.search(rf"exif:{name}" + _XMP_VALUE, text)
        place = re.fullmatch(r"\s*(\d+),([\d.]+)([NSEW])\s*", found.group(1)) if found else None
        if place:
            value = int(place.group(1)) + float(place.group(2)) / 60
            exif[key] = -value if place.group(3) in "SW" else value
    described = re.search(r"<dc:description>.*?<rdf:li[^>]*>(.*?)</rdf:li>", text, re.DOTALL)
    if described:
        exif["description"] = html.unescape(described.group(1))
    return exif


def validate_v2(fields: dict[str, str]) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = []
    for name in ("deviceAssetId", "deviceId"):
        value = fields.get(name)
        if value is None:
            issues.append((name, f"{name} must be a string"))
        if not value:
            issues.append((name, f"{name} should not be empty"))
    for name in ("fileCreatedAt", "fileModifiedAt"):
        try:
            # class-validator's isDateString takes naive values too; Python 3.10 needs "Z" spelled out.
            datetime.fromisoformat(re.sub(r"Z$", "+00:00", fields.get(name, "")))
        except ValueError:
            issues.append((name, f"{name} must be a date string"))
    return issues


def nginx_page(status: int) -> bytes:
    title = f"{status} {_phrase(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    ).encode()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _default_message(status: int) -> str:
    return "Internal server error" if status == 500 else _phrase(status)


def _abort_socket(sock: socket.socket) -> None:
    """Make the coming close() send RST instead of FIN, like a crashed server or proxy."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


STAND_IN_UPLOADS_PATH = "/__stand-in__/uploads"
STAND_IN_ASSETS_PATH = "/__stand-in__/assets"

QUEUE_NAMES = (
    "thumbnailGeneration", "metadataExtraction", "videoConversion", "faceDetection", "facialRecognition",
    "smartSearch", "duplicateDetection", "backgroundTask", "sidecar", "ocr", "library", "notifications",
)  # fmt: skip


def _route(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern.replace("{id}", "(?P<id>[^/]+)") + "/?")


# (method, path pattern, handler method name, public)
_ROUTES: list[tuple[str, re.Pattern[str], str, bool]] = [
    ("GET", _route("/.well-known/immich"), "_well_known", True),
    ("GET", _route("/api/server/ping"), "_ping", True),
    ("GET", _route("/api/server/version"), "_version", True),
    ("GET", _route("/api/server/media-types"), "_media_types", True),
    ("GET", _route("/api/server/features"), "_features", True),
    ("GET", _route("/api/server/about"), "_about", False),
    ("GET", _route("/api/server/statistics"), "_statistics", False),
    ("GET", _route("/api/users/me"), "_users_me", False),
    ("GET", _route("/api/api-keys/me"), "_api_key_me", False),
    ("POST", _route("/api/assets/bulk-upload-check"), "_bulk_upload_check", False),
    ("POST", _route("/api/assets"), "_upload", False),
    ("DELETE", _route("/api/assets"), "_trash_assets", False),
    ("GET", _route("/api/assets/{id}"), "_get_asset", False),
    ("PUT", _route("/api/assets"), "_update_assets", False),
    ("PUT", _route("/api/assets/copy"), "_copy_asset", False),  # before {id}: Nest matches routes in order
    ("PUT", _route("/api/assets/{id}"), "_update_asset", False),
    ("POST", _route("/api/search/metadata"), "_search_metadata", False),
    ("PUT", _route("/api/tags"), "_upsert_tags", False),
    ("PUT", _route("/api/tags/assets"), "_tag_assets", False),
    ("GET", _route("/api/albums"), "_list_albums", False),
    ("POST", _route("/api/albums"), "_create_album", False),
    ("PUT", _route("/api/albums/assets"), "_add_to_albums", False),
    ("GET", _route("/api/albums/{id}"), "_get_album", False),
    ("PUT", _route("/api/albums/{id}/assets"), "_add_album_assets", False),
    ("POST", _route("/api/stacks"), "_create_stack", False),
    ("PUT", _route("/api/stacks/{id}"), "_update_stack", False),
    ("POST", _route("/api/trash/restore/assets"), "_restore_trash", False),
    ("GET", _route("/api/queues"), "_list_queues", False),
    ("PUT", _route("/api/queues/{id}"), "_set_queue", False),
    ("PUT", _route("/api/jobs/{id}"), "_job_command", False),
    # Test-only, outside /api so it cannot collide with an Immich route: what the server received, for benchmarks
    # that run it as a process.
    ("GET", _route(STAND_IN_UPLOADS_PATH), "_stand_in_uploads", True),
    ("GET", _route(STAND_IN_ASSETS_PATH), "_stand_in_assets", True),
]


# The permission each route needs from an API key (Immich's @Authenticated({permission})); a key holding
# "all" may do everything. Routes not listed need only a valid key here.
ROUTE_PERMISSIONS = {
    "_users_me": "user.read",
    "_bulk_upload_check": "asset.upload",
    "_upload": "asset.upload",
    "_trash_assets": "asset.delete",
    "_get_asset": "asset.read",
    "_update_assets": "asset.update",
    "_update_asset": "asset.update",
    "_copy_asset": "asset.copy",
    "_search_metadata": "asset.read",
    "_upsert_tags": "tag.create",
    "_tag_assets": "tag.asset",
    "_update_stack": "stack.update",
    "_list_albums": "album.read",
    "_create_album": "album.create",
    "_get_album": "album.read",
    "_add_album_assets": "albumAsset.create",
    "_add_to_albums": "albumAsset.create",
    "_create_stack": "stack.create",
}


class _RequestHeaders(http.client.HTTPMessage):
    """A request's headers, parsed without a compiled pattern per multipart boundary.

    http.server parses each request's head with Python's email parser. For a multipart Content-Type it
    compiles a pattern for the boundary, though the head has no body. re's cache holds 512 patterns, so
    a client that makes a new boundary per request (curl, ours) cost this server a compile per upload:
    about 15% more of its CPU than a client keeping one boundary per connection, on the cores the
    benchmarks share with it. A real Immich (busboy) pays nothing of the kind. The body's own parser
    (parse_multipart) reads the boundary from the header itself."""

    def get_content_maintype(self) -> str:
        maintype = super().get_content_maintype()
        return "application" if maintype == "multipart" else maintype


class _Handler(http.server.BaseHTTPRequestHandler):
    """HTTP plumbing: framing, keep-alive, faults, auth and routing; state lives in ImmichTestServer."""

    protocol_version = "HTTP/1.1"
    MessageClass = _RequestHeaders
    timeout = SOCKET_TIMEOUT_S
    disable_nagle_algorithm = True  # header and body go out as two writes; Nagle would delay the second
    server: _HTTPServer
    body: BodyReader

    @property
    def app(self) -> ImmichTestServer:
        return self.server.app

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(SOCKET_TIMEOUT_S)
            self.request.do_handshake()  # a client refusing our certificate ends here (an OSError, quiet)
        super().setup()
        self.app._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.app._track(self.connection, add=False)

    def handle(self) -> None:
        if self.app._down:
            self._reset_connection()
            return
        try:
            super().handle()
        except (OSError, ClientGone):
            self.close_connection = True  # the client went away between requests

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests and benchmarks want a silent server

    def _reset_connection(self) -> None:
        _abort_socket(self.connection)
        self.close_connection = True
        # The socket only really closes once the rfile made from it is closed too.
        self.connection.close()
        self.rfile.close()

    def _dispatch(self) -> None:
        app = self.app
        self.cid = uuid.uuid4().hex[:12]
        path, _, query = self.path.partition("?")
        app._log_request(self.command, path)
        try:
            if app._down:
                self._reset_connection()
                return
            self.body = BodyReader(
                self.rfile, self.headers.get("Content-Length"), self.headers.get("Transfer-Encoding")
            )
            fault = app.faults.take(self.command, path)
            if fault is not None and self._apply_fault(fault):
                return
            try:
                status, payload = self._handle_api(path, query)
            except ApiError as exc:
                status, payload = exc.status, self._error_payload(exc)
            if fault is not None and fault.drop_answer:
                self._reset_connection()  # done, but the answer is lost on the way (a cut cable, a proxy)
                return
            if status == 204:
                self._send_raw(204, b"", "application/json")
            else:
                self._send_json(status, payload)
        except (ClientGone, OSError):
            self.close_connection = True  # client vanished mid-request: drop it quietly
        except FramingError as exc:
            self.close_connection = True
            self._send_raw(400, json.dumps({"message": str(exc)}).encode(), "application/json", drain=False)
        except Exception as exc:  # a bug in this server: answer like Immich would and keep it for the tests
            app.errors.append(exc)
            self.close_connection = True
            self._send_json(500, {"message": "Internal server error"}, drain=False)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _apply_fault(self, fault: Fault) -> bool:
        """Apply a fault; True when it answered or killed the request."""
        if fault.delay_s > 0:
            time.sleep(fault.delay_s)
        if fault.stall is not None:
            self._stall(fault.stall)
            return True
        self.answer_held_by = fault.hold
        if fault.reset:
            self._reset_connection()
            return True
        if fault.status is None:
            return False
        extra = {}
        if fault.retry_after_s is not None:
            extra["Retry-After"] = f"{fault.retry_after_s:g}"
        if fault.html:
            self._send_raw(fault.status, nginx_page(fault.status), "text/html", extra)
        else:
            error = ApiError(fault.status, _default_message(fault.status))
            self._send_json(fault.status, self._error_payload(error), extra=extra)
        return True

    def _stall(self, stage: str) -> None:
        """Take the request and never answer: its connection stays open, silent, until the test releases the
        stalled requests or the server stops; then it is closed without an answer."""
        unstall = self.app._unstall
        if stage == "after_body":
            self.body.drain()
        unstall.wait()
        self.close_connection = True

    def _handle_api(self, path: str, query: str) -> tuple[int, Any]:
        for method, pattern, name, public in _ROUTES:
            match = pattern.fullmatch(path) if method == self.command else None
            if match is None:
                continue
            if not public:
                self._authenticate(query)
                self._require_permission(ROUTE_PERMISSIONS.get(name))
            handler: Callable[[dict[str, str]], tuple[int, Any]] = getattr(self, name)
            return handler(match.groupdict())
        raise ApiError(404, "Not Found")

    def _authenticate(self, query: str) -> None:
        # Immich tries session tokens (Bearer, cookies, session headers) before API keys.
        authorization = self.headers.get("Authorization", "")
        if authorization.lower().startswith("bearer ") or self.headers.get("x-immich-user-token"):
            raise ApiError(401, "Invalid user token")
        key = self.headers.get("x-api-key") or urllib.parse.parse_qs(query).get("apiKey", [""])[0]
        if not key:
            raise ApiError(401, "Authentication required")
        if key != self.app.api_key:
            raise ApiError(401, "Invalid API key")

    def _require_permission(self, permission: str | None) -> None:
        held = self.app.key_permissions
        if permission is not None and "all" not in held and permission not in held:
            raise ApiError(403, f"Missing required permission: {permission}")

    # --- responses -------------------------------------------------------------------------------------------

    def _error_payload(self, exc: ApiError) -> dict[str, Any]:
        if self.app.v3:
            if exc.issues:
                errors = [
                    {"code": i.code, "path": [i.field, *i.subpath], "message": i.message} for i in exc.issues
                ]
                return {"message": "Validation failed", "errors": errors}
            return {"message": exc.message}
        message: str | list[str] = [i.message for i in exc.issues] if exc.issues else exc.message
        return {
            "message": message,
            "error": _phrase(exc.status),
            "statusCode": exc.status,
            "correlationId": self.cid,
        }

    def _send_json(
        self, status: int, payload: Any, *, extra: dict[str, str] | None = None, drain: bool = True
    ) -> None:
        if status == 204:  # No Content: Immich's answer to a trash request, no body at all
            self._send_raw(status, b"", "application/json; charset=utf-8", extra, drain=drain)
            return
        self._send_raw(
            status,
            json.dumps(payload, separators=(",", ":")).encode(),  # compact, as express sends it
            "application/json; charset=utf-8",
            extra,
            drain=drain,
        )

    def _send_raw(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra: dict[str, str] | None = None,
        *,
        drain: bool = True,
    ) -> None:
        if drain:
            self.body.drain()  # the next request on this connection starts after this body
        if self.app.request_delay_s > 0:
            # Every answer waits, once the request (and its body) arrived.
            time.sleep(self.app.request_delay_s)
        hold, unstall = getattr(self, "answer_held_by", None), self.app._unstall
        if hold is not None:
            self.answer_held_by = None
            while not (hold.wait(0.05) or unstall.is_set()):
                pass
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(self.app.cid_header, self.cid)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json_body(self) -> Any:
        raw = self.body.read_all(JSON_BODY_LIMIT)
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            raise ApiError(400, "Unexpected token in JSON") from None

    def _lower_headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    # --- routes ----------------------------------------------------------------------------------------------

    def _well_known(self, _: dict[str, str]) -> tuple[int, Any]:
        return 200, {"api": {"endpoint": "/api"}}

    def _ping(self, _: dict[str, str]) -> tuple[int, Any]:
        return 200, {"res": "pong"}

    def _version(self, _: dict[str, str]) -> tuple[int, Any]:
        major, minor, patch = self.app.version
        return 200, {"major": major, "minor": minor, "patch": patch, "prerelease": None}

    def _media_types(self, _: dict[str, str]) -> tuple[int, Any]:
        return 200, {
            "image": list(IMAGE_EXTENSIONS),
            "video": list(VIDEO_EXTENSIONS),
            "sidecar": list(SIDECAR_EXTENSIONS),
        }

    def _features(self, _: dict[str, str]) -> tuple[int, Any]:
        return 200, {
            "smartSearch": True,
            "facialRecognition": True,
            "duplicateDetection": True,
            "map": True,
            "reverseGeocoding": True,
            "importFaces": False,
            "sidecar": True,
            "search": True,
            "trash": True,
            "oauth": False,
            "oauthAutoLaunch": False,
            "passwordLogin": True,
            "configFile": False,
            "email": False,
            "ocr": True,
        }

    def _about(self, _: dict[str, str]) -> tuple[int, Any]:
        version = "v{}.{}.{}".format(*self.app.version)
        return 200, {
            "version": version,
            "versionUrl": f"https://github.com/immich-app/immich/releases/tag/{version}",
            "licensed": False,
            "repository": "immich-app/immich",
            "repositoryUrl": "https://github.com/immich-app/immich",
            "sourceRef": version,
            "sourceUrl": f"https://github.com/immich-app/immich/tree/{version}",
            "nodejs": "v22.18.0",
            "ffmpeg": "7.1.1-7",
            "imagemagick": "7.1.2-0",
            "libvips": "8.17.1",
            "exiftool": "13.30",
        }

    def _statistics(self, _: dict[str, str]) -> tuple[int, Any]:
        self._require_admin()  # an admin route in Immich
        return 200, self.app._statistics_json()

    def _users_me(self, _: dict[str, str]) -> tuple[int, Any]:
        return 200, self.app._user_json()

    def _api_key_me(self, _: dict[str, str]) -> tuple[int, Any]:
        permissions = sorted(self.app.key_permissions)
        return 200, {"id": self.app.api_key_id, "name": "test", "permissions": permissions}

    def _bulk_upload_check(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        items = payload.get("assets") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get("id"), str) and isinstance(i.get("checksum"), str)
            for i in items
        ):
            raise ApiError(
                400, "Validation failed", [("assets", "Invalid input: expected array of {id, checksum}")]
            )
        if not items and self.app.v3:
            # v3.1.0's checksum query fails on an empty list and the service wraps that in a 500.
            raise ApiError(500, "Failed to check bulk upload")
        return 200, {"results": [self.app._check_one(i["id"], i["checksum"]) for i in items]}

    def _upload(self, _: dict[str, str]) -> tuple[int, Any]:
        app = self.app
        app.upload_gate.wait(SOCKET_TIMEOUT_S)  # a test holds uploads here while it does something else
        headers = self._lower_headers()
        existing = app._asset_for_checksum(headers.get("x-immich-checksum", ""))
        if existing is not None:
            # Immich answers before reading the body; we drain first so the connection stays usable.
            self.body.drain()
            app._record_upload(UploadRecord({}, None, existing.sha1_hex, 0, 200, headers, None))
            return 200, {"id": existing.id, "status": "duplicate"}
        parts = UploadParts()
        boundary = multipart_boundary(self.headers.get("Content-Type", ""))
        if boundary is not None:  # without multipart there is simply no file: "File is required"
            try:
                parse_multipart(self.body, boundary, parts)
            except MultipartError as exc:
                parts.error = str(exc)
        self.body.drain()
        try:
            status, payload = app._store_upload(parts)
        except ApiError as exc:
            app._record_upload(parts.record(exc.status, headers))
            raise
        app._record_upload(parts.record(status, headers))
        return status, payload

    def _trash_assets(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        ids = payload.get("ids") if isinstance(payload, dict) else None
        force = payload.get("force", False) if isinstance(payload, dict) else False
        if not isinstance(ids, list) or not all(isinstance(i, str) and _UUID_V4_RE.fullmatch(i) for i in ids):
            raise ApiError(400, "Validation failed", [("ids", "Invalid UUID")])
        if not isinstance(force, bool):
            raise ApiError(400, "Validation failed", [("force", "Invalid input: expected boolean")])
        self.app._trash(ids, force)
        return 204, None

    def _get_asset(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, self.app._asset_json(self.app._asset_or_error(params["id"], "asset.read"))

    def _update_assets(self, _: dict[str, str]) -> tuple[int, Any]:
        """PUT /api/assets (§7c): 204, and exifInfo's date, place and description change at once."""
        payload = self._json_body()
        if not isinstance(payload, dict):
            raise ApiError(400, "Validation failed", [("ids", "Invalid input: expected object")])
        issues = bulk_update_issues(payload)
        if issues:
            raise ApiError(400, "Validation failed", issues)
        self.app._update_assets([str(i) for i in payload["ids"]], payload)
        return 204, None

    def _update_asset(self, params: dict[str, str]) -> tuple[int, Any]:
        """PUT /api/assets/{id} (UpdateAssetDto): the bulk route's fields and a rating, plus `livePhotoVideoId`,
        which links a live photo's clip as an upload's field does (and hides it); 200 with the asset."""
        payload = self._json_body()
        if not isinstance(payload, dict):
            raise ApiError(400, "Validation failed", [("id", "Invalid input: expected object")])
        issues = [i for i in bulk_update_issues({**payload, "ids": []}) if i.field != "ids"]
        issues += asset_update_issues(payload)
        if issues:
            raise ApiError(400, "Validation failed", issues)
        asset = self.app._asset_or_error(params["id"], "asset.update")
        return 200, self.app._asset_json(self.app._update_asset(asset, payload))

    def _copy_asset(self, _: dict[str, str]) -> tuple[int, Any]:
        """PUT /api/assets/copy (§7c): the target gets the source's albums, stack, favorite and sidecar; 204."""
        payload = self._json_body()
        issues = copy_issues(payload)
        if issues:
            raise ApiError(400, "Validation failed", issues)
        self.app._copy(payload)
        return 204, None

    def _search_metadata(self, _: dict[str, str]) -> tuple[int, Any]:
        """POST /api/search/metadata with the filters a client of this tool uses: tagIds (an asset with each
        tag or one below it), albumIds, createdAfter, withDeleted; newest first, `size` (at most 1000) a page."""
        payload = self._json_body()
        if not isinstance(payload, dict):
            raise ApiError(400, "Validation failed", [("size", "Invalid input: expected object")])
        size, page = payload.get("size", 250), payload.get("page", 1)
        issues = []
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 1000:
            issues.append(Issue("size", "Too big: expected number to be <=1000", "too_big"))
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            issues.append(Issue("page", "Too small: expected number to be >=1", "too_small"))
        after = payload.get("createdAfter")
        if after is not None and not (isinstance(after, str) and is_v3_datetime(after)):
            issues.append(Issue("createdAfter", "Invalid ISO datetime", "invalid_format"))
        for name in ("tagIds", "albumIds"):
            ids = payload.get(name)
            if ids is not None and not (
                isinstance(ids, list) and all(isinstance(i, str) and _UUID_V4_RE.fullmatch(i) for i in ids)
            ):
                issues.append(Issue(name, "Invalid UUID", "invalid_format"))
        if issues:
            raise ApiError(400, "Validation failed", issues)
        items, more = self.app._search(payload, size, page)
        return 200, {
            "albums": {"total": 0, "count": 0, "items": [], "facets": []},
            "assets": {"total": len(items), "count": len(items), "items": items, "facets": [],
                       "nextPage": str(page + 1) if more else None},
        }  # fmt: skip

    def _upsert_tags(self, _: dict[str, str]) -> tuple[int, Any]:
        """PUT /api/tags: each value's tag, made with its parents where missing (`/` makes a hierarchy)."""
        payload = self._json_body()
        tags = payload.get("tags") if isinstance(payload, dict) else None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "Validation failed", [("tags", "Invalid input: expected array of strings")])
        return 200, [self.app._tag_json(tag) for tag in self.app._upsert_tags(tags)]

    def _tag_assets(self, _: dict[str, str]) -> tuple[int, Any]:
        """PUT /api/tags/assets: ids this user may not tag or update are passed over, as Immich's checkAccess
        drops them; `count` is the number of (tag, asset) pairs that were not there before."""
        payload = self._json_body()
        tag_ids = payload.get("tagIds") if isinstance(payload, dict) else None
        asset_ids = payload.get("assetIds") if isinstance(payload, dict) else None
        issues = [
            Issue(name, "Invalid UUID", "invalid_format")
            for name, ids in (("tagIds", tag_ids), ("assetIds", asset_ids))
            if not isinstance(ids, list)
            or not all(isinstance(i, str) and _UUID_V4_RE.fullmatch(i) for i in ids)
        ]
        if issues:
            raise ApiError(400, "Validation failed", issues)
        return 200, {"count": self.app._tag_assets(tag_ids, asset_ids)}  # type: ignore[arg-type]

    def _list_albums(self, _: dict[str, str]) -> tuple[int, Any]:
        with self.app._lock:
            return 200, [self.app._album_json(a) for a in self.app.albums.values()]

    def _create_album(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        name = payload.get("albumName") if isinstance(payload, dict) else None
        asset_ids = payload.get("assetIds", []) if isinstance(payload, dict) else []
        if not isinstance(name, str) or not isinstance(asset_ids, list):
            raise ApiError(400, "Validation failed", [("albumName", "Invalid input: expected string")])
        return 201, self.app._album_json(self.app._create_album(name, [str(i) for i in asset_ids]))

    def _get_album(self, params: dict[str, str]) -> tuple[int, Any]:
        return 200, self.app._album_json(self.app._album_or_error(params["id"], "album.read"))

    def _add_album_assets(self, params: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list):
            raise ApiError(400, "Validation failed", [("ids", "Invalid input: expected array")])
        return 200, self.app._add_to_album(params["id"], [str(i) for i in ids])

    def _add_to_albums(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        album_ids = payload.get("albumIds") if isinstance(payload, dict) else None
        asset_ids = payload.get("assetIds") if isinstance(payload, dict) else None
        if not isinstance(album_ids, list) or not isinstance(asset_ids, list):
            raise ApiError(400, "Validation failed", [("albumIds", "Invalid input: expected array")])
        added = False
        for album_id in album_ids:
            results = self.app._add_to_album(str(album_id), [str(i) for i in asset_ids])
            added = added or any(r["success"] for r in results)
        return 200, {"success": True} if added else {"success": False, "error": "duplicate"}

    def _create_stack(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        ids = payload.get("assetIds") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or len(ids) < 2:
            raise ApiError(
                400, "Validation failed", [("assetIds", "Too small: expected array to have >=2 items")]
            )
        return 201, self.app._create_stack([str(i) for i in ids])

    def _update_stack(self, params: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        primary = payload.get("primaryAssetId") if isinstance(payload, dict) else None
        if primary is not None and not (isinstance(primary, str) and _UUID_V4_RE.fullmatch(primary)):
            raise ApiError(400, "Validation failed", [("primaryAssetId", "Invalid UUID", "invalid_format")])
        return 200, self.app._update_stack(params["id"], primary)

    def _require_admin(self) -> None:
        if not self.app.admin:
            raise ApiError(403, "Forbidden")

    def _list_queues(self, _: dict[str, str]) -> tuple[int, Any]:
        self._require_admin()
        return 200, [self.app._queue_json(name) for name in QUEUE_NAMES]

    def _set_queue(self, params: dict[str, str]) -> tuple[int, Any]:
        self._require_admin()
        if self.app.version < (2, 3, 0):
            raise ApiError(404, "Not Found")
        name = params["id"]
        payload = self._json_body()
        if (
            name not in QUEUE_NAMES
            or not isinstance(payload, dict)
            or not isinstance(payload.get("isPaused"), bool)
        ):
            raise ApiError(400, "Validation failed", [("isPaused", "Invalid input")])
        with self.app._lock:
            if payload["isPaused"]:
                self.app.paused_queues.add(name)
            else:
                self.app.paused_queues.discard(name)
        return 200, self.app._queue_json(name)

    def _job_command(self, params: dict[str, str]) -> tuple[int, Any]:
        self._require_admin()
        name = params["id"]
        payload = self._json_body()
        command = payload.get("command") if isinstance(payload, dict) else None
        if name not in QUEUE_NAMES or command not in ("pause", "resume", "start", "empty", "clear-failed"):
            raise ApiError(400, "Validation failed", [("command", "Invalid input")])
        with self.app._lock:
            if command == "pause":
                self.app.paused_queues.add(name)
            elif command == "resume":
                self.app.paused_queues.discard(name)
        return 200, self.app._queue_json(name)

    def _stand_in_uploads(self, _: dict[str, str]) -> tuple[int, Any]:
        with self.app._lock:
            uploads = list(self.app.uploads)
        return 200, [{"sha1": u.sha1_hex, "status": u.status, "size": u.size_bytes} for u in uploads]

    def _stand_in_assets(self, _: dict[str, str]) -> tuple[int, Any]:
        with self.app._lock:
            assets = list(self.app.assets.values())
        return 200, [
            {
                "sha1": a.sha1_hex,
                "fileCreatedAt": self.app._date_json(a.fields.get("fileCreatedAt")),
                "isFavorite": a.fields.get("isFavorite") == "true",
                "visibility": a.fields.get("visibility", "timeline"),
                "dateTimeOriginal": a.exif.get("dateTimeOriginal"),
            }
            for a in assets
        ]

    def _restore_trash(self, _: dict[str, str]) -> tuple[int, Any]:
        payload = self._json_body()
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list):
            raise ApiError(400, "Validation failed", [("ids", "Invalid input: expected array")])
        return 200, {"count": self.app._restore([str(i) for i in ids])}


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not block stop()
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: ImmichTestServer) -> None:
        self.app = app
        self.handlers: list[threading.Thread] = []  # stop() joins them once their connections are cut
        self.tls_context: ssl.SSLContext | None = None
        if app.tls is not None:
            self.tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls_context.load_cert_chain(*app.tls)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # As ThreadingMixIn does, keeping each thread: one left serving a cut connection after stop() would
        # outlive its test (and a scan that forks only where it runs alone would see it in the next test).
        handler = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        self.handlers = [thread for thread in self.handlers if thread.is_alive()]
        self.handlers.append(handler)
        handler.start()

    def get_request(self) -> tuple[socket.socket, Any]:
        """With TLS, each connection is wrapped here and shakes hands in its own thread (_Handler.setup):
        a client that never does must not stop the server accepting others."""
        conn, address = super().get_request()
        if self.tls_context is not None:
            conn = self.tls_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        return conn, address

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]  # type: ignore[assignment]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, (OSError, ClientGone)):
            self.app.errors.append(exc)  # no traceback on stderr; tests can assert `errors` is empty


class ImmichTestServer:
    """An in-memory Immich for one user; start() serves it on a real socket in a daemon thread."""

    def __init__(
        self,
        api_key: str = "test-key",
        version: tuple[int, int, int] = (3, 1, 0),
        admin: bool = True,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        store_nothing: bool = True,  # accepted for symmetry with --sink; file bytes are never stored anyway
        request_delay_s: float = 0.0,  # every request waits this long before its answer (a slower server)
        tls: tuple[str, str] | None = None,  # (certificate file, key file): serve https
    ) -> None:
        self.api_key = api_key
        self.request_delay_s = request_delay_s
        self.version = tuple(version)
        self.admin = admin
        self.url = ""
        self.assets: dict[str, Asset] = {}
        self.uploads: list[UploadRecord] = []
        self.requests_log: list[tuple[str, str]] = []
        self.albums: dict[str, Album] = {}
        self.stacks: dict[str, list[str]] = {}  # stack id -> its assets' ids, the primary first
        self.tags: dict[str, Tag] = {}
        self.copies: list[tuple[str, str, dict[str, bool]]] = []  # every PUT /api/assets/copy done
        self.trash_requests: list[list[str]] = []  # every DELETE /api/assets accepted: its ids
        # A real v3.1.0 reads a new asset's metadata in a job, and that job replaces the asset's tags with the
        # list it read a moment before: tags given meanwhile are lost. True: the first PUT /api/tags/assets
        # that tags an asset after its upload meets that job (and loses them); later ones do not.
        self.extraction_drops_tags = False
        # Every PUT /api/assets that was accepted: (ids, the fields sent).
        self.updates: list[tuple[list[str], dict[str, Any]]] = []
        self.paused_queues: set[str] = set()
        self.errors: list[BaseException] = []  # unexpected exceptions inside the server (bugs), never printed
        # What the API key may do (GET /api/api-keys/me); without "all", routes needing another permission
        # answer 403 "Missing required permission: ..." as Immich does.
        self.key_permissions: set[str] = {"all"}
        # A server that lies in its bulk check (a bug, a proxy's cached answer, a host that is not the user's
        # Immich): "random" answers every checksum "duplicate" with an asset id that exists nowhere,
        # "any_asset" with the id of another user's asset of those bytes, else of some asset with other bytes.
        # None: the truth.
        self.bulk_check_lie: str | None = None
        # The user's storage quota (None: unlimited); an upload past it answers 400 "Quota has been exceeded!".
        self.quota_bytes: int | None = None
        # Cleared, it holds every upload request until it is set again (a test acting while uploads are in flight).
        self.upload_gate = threading.Event()
        self.upload_gate.set()
        self.faults = FaultQueue()
        self.user_id = str(uuid.uuid4())
        self.api_key_id = str(uuid.uuid4())
        self._host, self._port = host, port
        self._lock = threading.RLock()
        self._by_sha1: dict[str, str] = {}
        self._last_touch = datetime.now(timezone.utc)
        self._connections: set[socket.socket] = set()
        self.connections_accepted = 0  # every connection a client opened, kept alive or not
        self._down = False
        self._unstall = threading.Event()  # set: stalled requests end (release_stalled, stop)
        self.tls = tls
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def v3(self) -> bool:
        return self.version[0] >= 3

    @property
    def cid_header(self) -> str:
        return "X-Correlation-ID" if self.v3 else "x-immich-cid"

    # --- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> ImmichTestServer:
        if self._httpd is not None:
            return self
        self._httpd = _HTTPServer((self._host, self._port), self)
        host, port = self._httpd.server_address[:2]
        self.url = f"{'https' if self.tls else 'http'}://{host}:{port}"
        # A short poll interval keeps stop() fast enough to start a fresh server per test.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="immich-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._unstall.set()
        httpd.shutdown()
        httpd.server_close()
        self._abort_connections()  # keep-alive connections would otherwise go on being served
        if self._thread is not None:
            self._thread.join(timeout=5)
        for handler in httpd.handlers:
            handler.join(timeout=5)

    def __enter__(self) -> ImmichTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def down(self) -> None:
        """Simulate an outage: open connections are reset and every new request too; the port stays bound."""
        self._down = True
        self._abort_connections()

    def up(self) -> None:
        self._down = False

    def release_stalled(self) -> None:
        """End the requests `stall` faults hold so far (their connections close without an answer), and let
        held answers go; later stall faults stall again."""
        released, self._unstall = self._unstall, threading.Event()
        released.set()

    def close_idle_connections(self) -> None:
        """What a server does to kept-alive connections idle past its keep-alive timeout (Node's, so
        Immich's, is 5 s): it closes them, with a FIN. Call it when no request is in flight."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # --- state (thread-safe) ---------------------------------------------------------------------------------

    def asset_by_sha1(self, sha1_hex: str) -> Asset | None:
        with self._lock:
            asset_id = self._by_sha1.get(sha1_hex.lower())
            return self.assets.get(asset_id) if asset_id else None

    def add_existing_asset(self, data: bytes, filename: str = "x.jpg", owner_id: str = "") -> Asset:
        """Pretend another tool uploaded `data` (not counted by upload_count). With `owner_id`, the asset is
        another user's (a partner's) that this key may read but that is not in its user's library."""
        with self._lock:
            sha1_hex = hashlib.sha1(data).hexdigest()
            existing = None if owner_id else self.asset_by_sha1(sha1_hex)
            if existing is not None:
                return existing
            asset = Asset(str(uuid.uuid4()), sha1_hex, len(data), filename, {}, None, owner_id=owner_id)
            if owner_id:
                self.assets[asset.id] = asset  # readable, never this user's duplicate
            else:
                self._add_asset(asset)
            return asset

    def upload_count(self) -> int:
        """Assets created by POST /api/assets (answers 201)."""
        with self._lock:
            return sum(1 for u in self.uploads if u.status == 201)

    def _add_asset(self, asset: Asset) -> None:
        self._touch(asset)
        asset.created_at = asset.created_at or asset.updated_at
        self.assets[asset.id] = asset
        self._by_sha1[asset.sha1_hex] = asset.id

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self.connections_accepted += 1
            else:
                self._connections.discard(conn)

    def _abort_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            _abort_socket(conn)
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the handler thread, which then closes with RST
            except OSError:
                pass

    def _log_request(self, method: str, path: str) -> None:
        with self._lock:
            self.requests_log.append((method, path))

    def _record_upload(self, record: UploadRecord) -> None:
        with self._lock:
            self.uploads.append(record)

    def _asset_for_checksum(self, value: str) -> Asset | None:
        sha1_hex = checksum_to_hex(value) if value else None
        return self.asset_by_sha1(sha1_hex) if sha1_hex else None

    def _check_one(self, item_id: str, checksum: str) -> dict[str, Any]:
        asset = self._asset_for_checksum(checksum)
        if asset is None and self.bulk_check_lie == "random":
            asset = Asset(str(uuid.uuid4()), "", 0, "", {}, None)  # exists nowhere
        elif asset is None and self.bulk_check_lie == "any_asset":
            # Another user's asset of the same bytes if there is one (a partner's), else any asset at all.
            sha1_hex = checksum_to_hex(checksum)
            with self._lock:
                same = [a for a in self.assets.values() if a.sha1_hex == sha1_hex]
                asset = same[0] if same else next(iter(self.assets.values()), None)
        if asset is None:
            return {"id": item_id, "action": "accept"}
        return {
            "id": item_id,
            "action": "reject",
            "reason": "duplicate",
            "assetId": asset.id,
            "isTrashed": asset.is_trashed,
        }

    def _store_upload(self, parts: UploadParts) -> tuple[int, dict[str, str]]:
        # Order as in Immich: multer's type check, then the file pipe, then the body's validation, then the
        # service (live photo link, then the insert whose unique constraint turns a duplicate into a 200).
        if parts.error:
            raise ApiError(400, parts.error)
        if parts.asset_filename is None:
            raise ApiError(400, "File is required" if self.v3 else "Field(s) assetData should not be empty")
        if parts.size == 0 or (parts.sidecar_filename is not None and parts.sidecar_size == 0):
            raise ApiError(400, "File is empty")
        fields = dict(parts.fields)
        issues = validate_v3(fields) if self.v3 else validate_v2(fields)
        if issues:
            raise ApiError(400, "Validation failed", issues)
        sha1_hex = parts.sha1_hex
        with self._lock:
            if self.v3 and "livePhotoVideoId" in fields:
                self._link_live_photo(fields["livePhotoVideoId"])
            if self.v3 and any(
                v3_datetime_utc(fields[n])[0] < 1 for n in ("fileCreatedAt", "fileModifiedAt")
            ):
                # zod passes year 0000, Postgres refuses it; the insert fails before any duplicate check.
                raise ApiError(500, "Internal server error")
            existing = self.asset_by_sha1(sha1_hex)
            if existing is not None:
                return 200, {"id": existing.id, "status": "duplicate"}
            if self.quota_bytes is not None and self._usage_bytes() + parts.size > self.quota_bytes:
                raise ApiError(400, "Quota has been exceeded!")
            sidecar = parts.sidecar_sha1.hexdigest() if parts.sidecar_sha1 is not None else None
            # The DTO is read after multer, so a `filename` field names the asset even when it came after the file
            # (too late for the type check).
            name = fields.get("filename") or parts.asset_filename
            exif = exif_from_sidecar(parts.sidecar_head, fields.get("fileCreatedAt"))
            asset = Asset(str(uuid.uuid4()), sha1_hex, parts.size, name, fields, sidecar, exif=exif)
            self._add_asset(asset)
        return 201, {"id": asset.id, "status": "created"}

    def _link_live_photo(self, video_id: str) -> None:
        """Immich's onBeforeLink: the video must exist, be a video of this user; a timeline video gets hidden."""
        video = self.assets.get(video_id)
        if video is None:
            raise ApiError(400, "Live photo video not found")
        if not is_video(video.filename):
            raise ApiError(400, "Live photo video must be a video")
        if video.owner_id:
            raise ApiError(400, "Live photo video does not belong to the user")
        if video.fields.get("visibility", "timeline") == "timeline":
            video.fields["visibility"] = "hidden"

    def _usage_bytes(self) -> int:
        with self._lock:
            return sum(a.size_bytes for a in self.assets.values() if not a.owner_id)

    def _user_json(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "email": "test@example.com",
            "name": "Test",
            "isAdmin": self.admin,
            "quotaSizeInBytes": self.quota_bytes,
            "quotaUsageInBytes": self._usage_bytes(),
            "storageLabel": "admin" if self.admin else None,
        }

    def _asset_or_error(self, asset_id: str, permission: str) -> Asset:
        if not _UUID_RE.fullmatch(asset_id):
            raise ApiError(400, "Validation failed", [("id", "Invalid UUID")])
        with self._lock:
            asset = self.assets.get(asset_id)
        # Locked assets need a session elevated by the PIN code; an API key never has one (checkOwnerAccess).
        if asset is None or (self.v3 and asset.fields.get("visibility") == "locked"):
            raise ApiError(400, f"Not found or no {permission} access")
        return asset

    def _asset_json(self, asset: Asset) -> dict[str, Any]:
        if self.v3:
            duration_out: Any = coerced_duration(asset.fields)
        else:
            duration_out = asset.fields.get("duration", "").strip() or "0:00:00.00000"
        return {
            "id": asset.id,
            "ownerId": asset.owner_id or self.user_id,
            "type": "VIDEO" if is_video(asset.filename) else "IMAGE",
            "checksum": base64.b64encode(bytes.fromhex(asset.sha1_hex)).decode(),
            "originalFileName": asset.filename,
            "fileCreatedAt": self._date_json(asset.fields.get("fileCreatedAt")),
            "fileModifiedAt": self._date_json(asset.fields.get("fileModifiedAt")),
            "isFavorite": asset.fields.get("isFavorite") == "true",
            "visibility": asset.fields.get("visibility", "timeline"),
            "isTrashed": asset.is_trashed,
            "updatedAt": asset.updated_at,
            "duration": duration_out,
            "livePhotoVideoId": asset.fields.get("livePhotoVideoId"),
            "exifInfo": {
                "dateTimeOriginal": asset.exif.get("dateTimeOriginal"),
                "latitude": asset.exif.get("latitude"),
                "longitude": asset.exif.get("longitude"),
                "description": asset.exif.get("description", ""),
                "rating": asset.exif.get("rating"),
            },
            "tags": [self._tag_json(self.tags[t]) for t in asset.tag_ids if t in self.tags],
            "stack": self._stack_json(asset),
        }

    def _stack_json(self, asset: Asset) -> dict[str, Any] | None:
        """Immich's stack of an asset: null unless another member (not the primary) is in the timeline, not
        trashed (the lateral join of AssetRepository.getById)."""
        members = self.stacks.get(asset.stack_id or "")
        if not members:
            return None
        others = [
            i for i in members[1:]
            if i in self.assets and not self.assets[i].is_trashed
            and self.assets[i].fields.get("visibility", "timeline") == "timeline"
        ]  # fmt: skip
        if not others:
            return None
        return {"id": asset.stack_id, "primaryAssetId": members[0], "assetCount": len(others) + 1}

    def _tag_json(self, tag: Tag) -> dict[str, Any]:
        answer = {"id": tag.id, "name": tag.value.split("/")[-1], "value": tag.value}
        if tag.parent_id is not None:
            answer["parentId"] = tag.parent_id
        return answer

    def _date_json(self, value: str | None) -> str | None:
        # v3 stores the instant and answers it in UTC, ms precision; v2 mode keeps the text it was sent.
        if value is None or not self.v3 or not is_v3_datetime(value):
            return value
        return v3_datetime_utc(value)[1]

    def _statistics_json(self) -> dict[str, Any]:
        with self._lock:
            live = [a for a in self.assets.values() if not a.is_trashed and not a.owner_id]
        videos = [a for a in live if is_video(a.filename)]
        photos = [a for a in live if not is_video(a.filename)]
        usage_photos = sum(a.size_bytes for a in photos)
        usage_videos = sum(a.size_bytes for a in videos)
        counts = {
            "photos": len(photos),
            "videos": len(videos),
            "usage": usage_photos + usage_videos,
            "usagePhotos": usage_photos,
            "usageVideos": usage_videos,
        }
        user = {"userId": self.user_id, "userName": "Test", "quotaSizeInBytes": None, **counts}
        return {**counts, "usageByUser": [user]}

    def _album_or_error(self, album_id: str, permission: str) -> Album:
        with self._lock:
            album = self.albums.get(album_id)
        if album is None:
            raise ApiError(400, f"Not found or no {permission} access")
        return album

    def _album_json(self, album: Album) -> dict[str, Any]:
        with self._lock:
            return {
                "id": album.id,
                "albumName": album.albumName,
                "assetCount": len(album.asset_ids),
                "description": "",
                "ownerId": self.user_id,
                "shared": False,
                "albumUsers": [],
            }

    def _create_album(self, name: str, asset_ids: list[str]) -> Album:
        with self._lock:
            # Immich silently drops asset ids the user may not share.
            known = [i for i in dict.fromkeys(asset_ids) if i in self.assets]
            album = Album(str(uuid.uuid4()), name, known)
            self.albums[album.id] = album
            return album

    def _add_to_album(self, album_id: str, asset_ids: list[str]) -> list[dict[str, Any]]:
        album = self._album_or_error(album_id, "albumAsset.create")
        results: list[dict[str, Any]] = []
        with self._lock:
            for asset_id in asset_ids:
                if asset_id in album.asset_ids:
                    results.append({"id": asset_id, "success": False, "error": "duplicate"})
                elif asset_id not in self.assets:
                    results.append({"id": asset_id, "success": False, "error": "no_permission"})
                else:
                    album.asset_ids.append(asset_id)
                    results.append({"id": asset_id, "success": True})
        return results

    def _queue_json(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "isPaused": name in self.paused_queues,
            "statistics": {"active": 0, "waiting": 0},
        }

    def _create_stack(self, asset_ids: list[str]) -> dict[str, Any]:
        """StackRepository.create: stacks whose primary is among the assets are merged into the new one (their
        members not in the trash come along) and deleted; the first asset is the primary."""
        with self._lock:
            if any(i not in self.assets for i in asset_ids):
                raise ApiError(400, "Not found or no asset.update access")
            members = list(dict.fromkeys(asset_ids))
            for old_id, old in list(self.stacks.items()):
                if old and old[0] in asset_ids:
                    members += [i for i in old if i not in members and not self.assets[i].is_trashed]
                    self._delete_stack(old_id)
            stack_id = str(uuid.uuid4())
            for asset_id in members:
                self._leave_stack(self.assets[asset_id])
                self.assets[asset_id].stack_id = stack_id
            self.stacks[stack_id] = members
            assets = [self._asset_json(self.assets[i]) for i in members]
        return {"id": stack_id, "primaryAssetId": asset_ids[0], "assets": assets}

    def _leave_stack(self, asset: Asset) -> None:
        if asset.stack_id in self.stacks:
            self.stacks[asset.stack_id].remove(asset.id)
        asset.stack_id = None

    def _delete_stack(self, stack_id: str) -> None:
        """A stack's row goes; its assets' stackId is set to null (the foreign key's ON DELETE SET NULL)."""
        self.stacks.pop(stack_id, None)
        for asset in self.assets.values():
            if asset.stack_id == stack_id:
                asset.stack_id = None

    def _update_stack(self, stack_id: str, primary: str | None) -> dict[str, Any]:
        with self._lock:
            members = self.stacks.get(stack_id)
            if members is None:
                raise ApiError(400, "Not found or no stack.update access")
            if primary is not None:
                if primary not in members:
                    raise ApiError(400, "Primary asset must be in the stack")
                members.remove(primary)
                members.insert(0, primary)
            assets = [self._asset_json(self.assets[i]) for i in members]
        return {"id": stack_id, "primaryAssetId": members[0], "assets": assets}

    def _owned(self, asset_id: str) -> Asset | None:
        """The asset when this user owns it and an API key may touch it (checkOwnerAccess: trashed ones
        too, locked ones not)."""
        asset = self.assets.get(asset_id)
        if asset is None or asset.owner_id or (self.v3 and asset.fields.get("visibility") == "locked"):
            return None
        return asset

    def _copy(self, payload: dict[str, Any]) -> None:
        """AssetService.copy, including what a real v3.1.0 does when both assets are in one stack already: the
        stack is merged into itself and then deleted, so its assets are in no stack any more."""
        with self._lock:
            source, target = self._owned(payload["sourceId"]), self._owned(payload["targetId"])
            if source is None or target is None:
                raise ApiError(400, "Not found or no asset.copy access")
            if source.id == target.id:
                raise ApiError(400, "Source and target id must be distinct")
            wanted = {name: payload.get(name, True) for name in COPY_PARTS}
            if wanted["albums"]:
                for album in self.albums.values():
                    if source.id in album.asset_ids and target.id not in album.asset_ids:
                        album.asset_ids.append(target.id)
            if wanted["stack"] and source.stack_id is not None:
                if target.stack_id is not None:
                    # StackRepository.merge (every asset of the source's stack into the target's), then the
                    # source's stack is deleted: the same stack when both were in it.
                    for asset_id in list(self.stacks.get(source.stack_id, [])):
                        self.assets[asset_id].stack_id = target.stack_id
                        if asset_id not in self.stacks[target.stack_id]:
                            self.stacks[target.stack_id].append(asset_id)
                    self._delete_stack(source.stack_id)
                else:
                    target.stack_id = source.stack_id
                    self.stacks[source.stack_id].append(target.id)
            if wanted["favorite"]:
                target.fields["isFavorite"] = source.fields.get("isFavorite", "false")
            if wanted["sidecar"] and source.sidecar_sha1 is not None:
                target.sidecar_sha1 = source.sidecar_sha1
            self.copies.append((source.id, target.id, wanted))
            self._touch(target)

    def _update_asset(self, asset: Asset, payload: dict[str, Any]) -> Asset:
        with self._lock:
            if asset.owner_id:
                raise ApiError(400, "Not found or no asset.update access")
            if payload.get("livePhotoVideoId"):
                self._link_live_photo(payload["livePhotoVideoId"])
            self._apply_update(asset, payload)
            if "livePhotoVideoId" in payload:
                if payload["livePhotoVideoId"] is None:
                    asset.fields.pop("livePhotoVideoId", None)
                else:
                    asset.fields["livePhotoVideoId"] = payload["livePhotoVideoId"]
            self.updates.append(([asset.id], dict(payload)))
            return asset

    def _apply_update(self, asset: Asset, payload: dict[str, Any]) -> None:
        if "isFavorite" in payload:
            asset.fields["isFavorite"] = "true" if payload["isFavorite"] else "false"
        if "visibility" in payload:
            asset.fields["visibility"] = payload["visibility"]
        if "dateTimeOriginal" in payload:
            asset.exif["dateTimeOriginal"] = v3_datetime_utc(payload["dateTimeOriginal"])[1]
        for name in ("latitude", "longitude", "description", "rating"):
            if name in payload:
                asset.exif[name] = payload[name]
        self._touch(asset)

    def _upsert_tags(self, values: list[str]) -> list[Tag]:
        """upsertTags: each distinct value's leaf tag, its parents made on the way; empty parts are dropped
        (`/a//b/` is a/b) and a value of no part gives nothing."""
        found: list[Tag] = []
        with self._lock:
            for value in dict.fromkeys(values):
                parent: Tag | None = None
                for part in [p for p in value.split("/") if p]:
                    path = f"{parent.value}/{part}" if parent else part
                    parent = next((t for t in self.tags.values() if t.value == path), None) or self._new_tag(
                        path, parent.id if parent else None
                    )
                if parent is not None:
                    found.append(parent)
        return found

    def _new_tag(self, value: str, parent_id: str | None) -> Tag:
        tag = Tag(str(uuid.uuid4()), value, parent_id)
        self.tags[tag.id] = tag
        return tag

    def _tag_assets(self, tag_ids: list[str], asset_ids: list[str]) -> int:
        count = 0
        with self._lock:
            tags = [t for t in dict.fromkeys(tag_ids) if t in self.tags]
            assets = [a for a in (self._owned(i) for i in dict.fromkeys(asset_ids)) if a is not None]
            for asset in assets:
                before = list(asset.tag_ids)
                for tag_id in tags:
                    if tag_id not in asset.tag_ids:
                        asset.tag_ids.append(tag_id)
                        count += 1
                        self._touch(asset)
                if self.extraction_drops_tags and not asset.extracted:
                    # Its metadata extraction was running: it replaces the asset's tags with the list it read
                    # a moment before (observed on v3.1.0 for freshly uploaded photos tagged at once).
                    asset.tag_ids = before
                asset.extracted = True
        return count

    def _search(self, payload: dict[str, Any], size: int, page: int) -> tuple[list[dict[str, Any]], bool]:
        with self._lock:
            wanted_tags = [self.tags[t] for t in payload.get("tagIds") or [] if t in self.tags]
            if payload.get("tagIds") and len(wanted_tags) < len(payload["tagIds"]):
                return [], False
            albums = [self.albums[a] for a in payload.get("albumIds") or [] if a in self.albums]
            after = v3_datetime_utc(payload["createdAfter"])[1] if payload.get("createdAfter") else None
            found = []
            for asset in self.assets.values():
                if asset.owner_id or asset.fields.get("visibility") == "locked":
                    continue
                if asset.is_trashed and not payload.get("withDeleted"):
                    continue
                if after is not None and asset.created_at < after:
                    continue
                if albums and not all(asset.id in album.asset_ids for album in albums):
                    continue
                values = [self.tags[t].value for t in asset.tag_ids if t in self.tags]
                if not all(
                    any(v == w.value or v.startswith(w.value + "/") for v in values) for w in wanted_tags
                ):
                    continue
                found.append(asset)
            found.sort(
                key=lambda a: (self._date_json(a.fields.get("fileCreatedAt")) or "", a.id), reverse=True
            )
            chosen = found[(page - 1) * size : page * size]
            return [self._asset_json(a) for a in chosen], len(found) > page * size

    def _touch(self, asset: Asset) -> None:
        """A new updatedAt, later than any before (two changes in one millisecond still differ)."""
        now = max(datetime.now(timezone.utc), self._last_touch + timedelta(milliseconds=1))
        self._last_touch = now
        asset.updated_at = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"

    def edit_as_user(self, asset: Asset, fields: dict[str, str] | None = None, **exif: Any) -> None:
        """What a user does to an asset in Immich's web page: its fields (isFavorite, visibility) or its
        exifInfo (description, ...) change, and so does its updatedAt."""
        with self._lock:
            asset.fields.update(fields or {})
            asset.exif.update(exif)
            self._touch(asset)

    def _update_assets(self, asset_ids: list[str], payload: dict[str, Any]) -> None:
        with self._lock:
            assets = [self.assets.get(i) for i in asset_ids]
            if any(
                a is None or a.owner_id or (self.v3 and a.fields.get("visibility") == "locked")
                for a in assets
            ):
                raise ApiError(400, "Not found or no asset.update access")  # a partner's asset too
            for asset in assets:
                assert asset is not None
                self._apply_update(asset, payload)
            self.updates.append((list(asset_ids), dict(payload)))

    def _trash(self, asset_ids: list[str], force: bool) -> None:
        """DELETE /api/assets: into the trash (restorable; trashing one again changes nothing), or gone for good
        with `force`. One id this user may not delete (unknown, a partner's, locked) refuses the whole request,
        as Immich's requireAccess does (observed on v3.1.0)."""
        with self._lock:
            if any(self._owned(i) is None for i in asset_ids):
                raise ApiError(400, "Not found or no asset.delete access")
            self.trash_requests.append(list(asset_ids))
            for asset_id in asset_ids:
                asset = self.assets[asset_id]
                if force:
                    del self.assets[asset_id]
                    self._by_sha1.pop(asset.sha1_hex, None)
                else:
                    asset.is_trashed = True

    def _restore(self, asset_ids: list[str]) -> int:
        count = 0
        with self._lock:
            for asset_id in asset_ids:
                asset = self.assets.get(asset_id)
                if asset is not None and asset.is_trashed:
                    asset.is_trashed = False
                    count += 1
        return count


def parse_version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lstrip("v").split(".")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"version must look like 3.1.0, not {text!r}")
    return parts[0], parts[1], parts[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Immich-compatible test server (stores no file content).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--version", type=parse_version, default=(3, 1, 0))
    parser.add_argument("--non-admin", action="store_true", help="GET /api/users/me answers isAdmin=false")
    parser.add_argument(
        "--sink", action="store_true", help="accepted for compatibility; content is never stored"
    )
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        metavar="N",
        help="answer every request N ms after it arrived (uploads: after their body), like a slower server",
    )
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.delay_ms < 0:
        parser.error("--delay-ms must be >= 0")
    with ImmichTestServer(
        args.api_key,
        args.version,
        not args.non_admin,
        host=args.host,
        port=args.port,
        request_delay_s=args.delay_ms / 1000,
    ) as server:
        print(f"READY {server.url}", flush=True)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
