"""Everything that talks HTTP to Immich: one request function, two transports, streamed uploads.

`ImmichClient._request` is the only place a request is sent: it sets timeouts, never follows a redirect
(the `x-api-key` header would go along to wherever it points), and tells three kinds of failure apart.
A server that is away (connection refused or reset, timeouts, 502/503/504 from a proxy while Immich
restarts, 429) is waited for through one `ServerGate` shared by every worker: one line per retry, growing
pauses or the server's Retry-After, and once it has shown no sign of life for SERVER_WAIT seconds
`ServerUnreachable`; an answer is waited for a slice at a time, so a server that takes requests and never
answers is given up on after SERVER_WAIT too, and one busy with a big file is not. A 500 is retried
MAX_RETRIES times. Anything else (400, 413, 401...) fails at once with the server's message and a `kind`
that says whether one file or the whole server is the problem. TLS failures are never retried. Uploads
stream the file from disk through a multipart body (by sendfile on a plain connection, else in 1 MiB reads), so
memory does not grow with the file.
Which fields are sent depends on the server's version (../shared/immich-api.md §3): before v3,
deviceAssetId and deviceId are required. Without a proxy, http and https go through http.client, one
kept-alive connection per thread (DirectConnections); through a proxy, a requests session, imported when
needed. A password in IMMICH_URL (a proxy's basic auth) is sent as a header and never shown.
"""

from __future__ import annotations

import base64
import errno
import functools
import hashlib
import http.client
import json
import math
import os
import random
import re
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from io import BytesIO, FileIO
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

from config import VERSION, Settings
from logger import get_logger
from utils import FileChangedError, format_duration, read_buffer

if TYPE_CHECKING:
    import requests

log = get_logger("immich")
# Answers that mean "the server is away or busy right now": waited for, never held against a file.
AWAY_STATUSES = frozenset({429, 502, 503, 504})
UPLOAD_READ_BYTES = 1 << 20
# A photo goes from the page cache to a plain socket by sendfile(2) (Linux: from the file's own position): no
# read into Python and no copy out of it. First syncs to the test server, in turns: 1,000 photos of 400 KB
# 1.30 s against 1.40 s (the upload threads' CPU 0.40 s against 0.52 s); 300 of 2-5 MB 1.55 s against 1.63 s.
# Larger files are read: a server on the same machine then reads the body in smaller pieces, at more CPU per
# byte (16 videos of 64 MB: no faster, the test server's CPU 1.08 s against 0.89 s; one of 1 GiB: 1.00 s
# against 0.88 s). TLS sockets, and a file a file system will not send so, are read too.
SENDFILE = sys.platform.startswith("linux") and hasattr(os, "sendfile")
SENDFILE_MAX_BYTES = 16 << 20
# The x-immich-checksum header costs Immich a database lookup before it reads the body (v3.1.0's upload
# interceptor): 0.8-1.3 ms of its CPU an upload, measured on a real v3.1.0 (uploads of 100 KB, one at a time,
# Immich's and PostgreSQL's processes: 8.8-9.2 ms with it, 7.9-8.1 without). After a bulk check it only
# saves a transfer in a race, so it goes where an earlier attempt may have landed (a retry; a file an earlier
# run was sending when it stopped), where no bulk check spoke, and with files whose transfer outweighs the
# lookup.
CHECKSUM_HEADER_MIN_BYTES = 8 << 20
BULK_CHECK_BATCH = 5000
MAX_RETRY_AFTER_S = 300.0
MAX_AWAY_PAUSE_S = 30.0
# At start-up a server that does not answer is reported within seconds (two tries of these).
START_CONNECT_TIMEOUT_S = 4.0
START_ANSWER_TIMEOUT_S = 5.0
ANSWER_SLICE_S = 1.0  # a request waits for its answer a slice at a time, checking the server still shows life
# Body bytes the kernels' socket buffers at both ends may hold without the server reading them (Linux grows
# them to 4 MiB to send and 6 MiB to receive): bytes an upload got rid of past this, the server read.
BUFFERED_BYTES = 16 << 20
PROBE_AFTER_S = 10.0  # silence after which a waiting request asks whether the server is there at all
# An answer is waited for at least this long without a sign of life, whatever SERVER_WAIT: 0 means "do not
# wait for a server that is away", not "give up on an answer that takes a moment".
MIN_SILENCE_S = 2.0
PROBE_TIMEOUT_S = 5.0
USER_AGENT = f"immich-uploader/{VERSION}"
UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
ALBUM_ADD_BATCH = 1000
TAG_BATCH = 500
SEARCH_PAGE = 1000  # the most POST /api/search/metadata answers in one page
# The media-processing queues worth pausing during a big import (SDK QueueName); internal ones are left alone.
MEDIA_QUEUES = (
    "thumbnailGeneration", "metadataExtraction", "videoConversion", "faceDetection", "facialRecognition",
    "smartSearch", "duplicateDetection", "ocr", "sidecar",
)  # fmt: skip

# What an error says about the file that caused it. Kinds in FILE_KINDS are that file's own problem and
# never count toward MAX_CONSECUTIVE_ERRORS; the others say the server (or the account) is in trouble.
FILE_KINDS = frozenset({"too_large", "unsupported", "empty", "rejected", "unreadable"})


def error_kind(status: int | None, message: str) -> str:
    """The kind of a failed answer: see FILE_KINDS."""
    lowered = message.lower()
    if status == 413:
        return "too_large"
    if status in (400, 415, 422):
        if "unsupported file type" in lowered:
            return "unsupported"
        if "file is empty" in lowered:
            return "empty"
        if "quota" in lowered:
            return "quota"
        return "rejected"
    if status in (401, 403):
        return "auth"
    return "server"


class ImmichError(Exception):
    """A request failed; carries what a user and a log need to tell why."""

    def __init__(self, message: str, status: int | None = None, method: str = "", url: str = "",
                 body: str = "", kind: str = "server") -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url
        self.body = body
        self.kind = kind

    @property
    def per_file(self) -> bool:
        """True when the failure is this file's own (too large for a proxy, a type the server refuses...)."""
        return self.kind in FILE_KINDS


class ApiKeyRefused(ImmichError):
    """401/403 at the start: the key is wrong or lacks a permission."""


class ServerUnreachable(ImmichError):
    """The server did not answer (at the start), or stayed away longer than SERVER_WAIT (mid-run)."""


class TlsProblem(ImmichError):
    """The TLS handshake failed (untrusted certificate, plain http behind https://): never retried."""


class NotImmich(ImmichError):
    """Something answers at IMMICH_URL, but not like Immich (a web page, another service)."""


class StopRequested(ImmichError):
    """The run was asked to stop while a request waited to be retried: nothing was decided."""


def host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and everything it wraps (requests wraps urllib3, which wraps the socket error)."""
    found: list[BaseException] = []
    stack = [exc]
    while stack:
        current = stack.pop()
        if current in found:
            continue
        found.append(current)
        for nested in (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *current.args,
        ):
            if isinstance(nested, BaseException):
                stack.append(nested)
    return found


class WireError(Exception):
    """Nothing usable came back: no connection, a reset, a timeout. The message says which, plainly.
    `kind`: "away" (waited for through the gate), "silent" (no sign of life for SERVER_WAIT: nothing to
    recover, nothing left to wait) or "ignored" (no answer within READ_TIMEOUT though the server showed life
    meanwhile: this request's failure, not a server that is away)."""

    def __init__(self, message: str, kind: str = "away") -> None:
        super().__init__(message)
        self.kind = kind


def transport_reason(exc: BaseException, timeout: tuple[float, float]) -> str:
    """What went wrong on the wire, in plain words, never the HTTP library's internals."""
    causes = _causes(exc)
    names = {type(c).__name__ for c in causes}
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "the host name could not be resolved"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection refused (nothing listens on that port)"
    if names & {"ConnectTimeout", "ConnectTimeoutError"}:
        return f"no connection within {timeout[0]:g} s"
    if names & {"ReadTimeout", "ReadTimeoutError"}:
        return f"no answer within {timeout[1]:g} s"
    if any(isinstance(c, TimeoutError) for c in causes):  # a write: urllib3 sends with the connect timeout
        return f"the server took nothing of the upload for {timeout[0]:g} s"
    if any(isinstance(c, http.client.RemoteDisconnected) for c in causes):  # a ConnectionResetError too
        return "the server closed the connection without answering"
    if any(isinstance(c, ConnectionResetError | BrokenPipeError) for c in causes):
        return "the connection was reset"
    for c in causes:
        if isinstance(c, OSError) and c.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to the host (network down?)"
    # Last resort: the innermost message, without "HTTPConnectionPool(...): Max retries exceeded" noise.
    text = str(causes[-1]) or type(causes[-1]).__name__  # may quote what a server sent (a bad status line)
    text = re.sub(r"\b\w+ConnectionPool\(.*?\):\s*|Max retries exceeded with url: \S+\s*", "", text)
    return printable(text[:160]).strip()


def tls_reason(exc: BaseException, url: str) -> str:
    text = " ".join(str(c) for c in _causes(exc))
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text or "http request" in text.lower():
        plain = "http://" + url.split("://", 1)[-1]
        return f"the server does not speak TLS on that port: try IMMICH_URL={plain}"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        if "expired" in text:
            return "the server's TLS certificate has expired"
        if "mismatch" in text or "match" in text:
            return "the server's TLS certificate is for another host name"
        return (
            "the server's TLS certificate is not trusted (self-signed, or a private CA): set IMMICH_CA_BUNDLE "
            "to the CA's certificate file"
        )
    return f"the TLS handshake failed ({text[:120]})"


class ServerGate:
    """Shared by every worker of one client: it keeps the server's last sign of life (any answer; body bytes
    the server read, see BUFFERED_BYTES) and, while the server is away or asks to slow down, makes every
    request wait for the same retry time, with one line per retry. SERVER_WAIT (`budget_s`) is how long the
    server may show no sign of life while it is asked something: a request waiting for its answer gives up
    when that time is over, the last retry pause is shortened to end there, one last try is made at the
    limit, and then every waiting request raises ServerUnreachable. Any answer closes the gap. `clock` is
    time.monotonic, or a test's."""

    def __init__(
        self, url: str, budget_s: float, backoff_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.budget_s = budget_s
        self.backoff_s = backoff_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last_sign = -math.inf
        self._away_since: float | None = None
        self._retry_at = 0.0
        self._rounds = 0
        self._reason = ""
        self._probing = False
        self._last_probe = -math.inf

    def alive(self) -> None:
        """A sign of life that is no answer (the server reads an upload's body): the silence restarts."""
        self._last_sign = self.clock()  # one float stored: no lock needed, and this runs per MiB sent

    def silent_since(self, asked_at: float) -> float:
        """Since when the server has shown no sign of life, for a request that asked at `asked_at`: a server
        nobody asks anything is not silent; one that is away has been silent since it went away."""
        away_since = self._away_since
        return max(asked_at if away_since is None else away_since, self._last_sign)

    def alive_after(self, moment: float) -> bool:
        """Whether the server showed a sign of life after `moment`."""
        return self._last_sign > moment

    def silence_left_s(self, asked_at: float) -> float:
        """Seconds of SERVER_WAIT (at least MIN_SILENCE_S) left for a request that asked at `asked_at`, or
        that waits for its answer since then (0 or less: over)."""
        return max(self.budget_s, MIN_SILENCE_S) - (self.clock() - self.silent_since(asked_at))

    def failed(self, reason: str, asked_at: float, retry_after_s: float | None = None) -> float:
        """Seconds this request (sent at `asked_at`) should wait before trying again; raises
        ServerUnreachable once the server has shown no sign of life for SERVER_WAIT."""
        with self._lock:
            now = self.clock()
            since = self.silent_since(asked_at)
            if self._away_since is None:
                self._away_since, self._rounds = since, 0
            away_s = now - since
            left_s = self.budget_s - away_s
            if now >= self._retry_at:  # a new round: this thread decides the next retry time for all
                self._reason = reason
                if left_s <= 0:
                    self._retry_at = now  # every waiting request gives up with this one
                    raise self._gone(away_s)
                if retry_after_s is not None:
                    if retry_after_s > left_s:  # asked to come back after the limit: stop now, and say so
                        self._retry_at = now
                        self._reason += f", asked to wait {format_duration(retry_after_s)}"
                        raise self._gone(away_s)
                    wait = retry_after_s
                else:
                    wait = min(MAX_AWAY_PAUSE_S, self.backoff_s * 2**self._rounds)
                    wait *= random.uniform(0.8, 1.2)
                self._rounds += 1
                wait = min(wait, left_s)  # the last pause ends at the limit: one last try there
                self._retry_at = now + wait
                # A status means something answered (a proxy while Immich restarts, or Immich asking to
                # slow down); no status, that nothing did.
                state = "busy or restarting" if reason[:3].isdigit() else "unreachable"
                log.warning(
                    "server %s (%s), retrying in %s; waiting up to %s (SERVER_WAIT)",
                    state, reason, format_duration(wait), format_duration(self.budget_s),
                )  # fmt: skip
            elif left_s <= 0:
                raise self._gone(away_s)
            return max(0.0, self._retry_at - now)

    def given_up(self, reason: str, away_s: float) -> ServerUnreachable:
        """One request's answers said "away" for SERVER_WAIT (while others may have been answered)."""
        with self._lock:
            self._reason = reason
            return self._gone(away_s)

    def _gone(self, away_s: float) -> ServerUnreachable:
        return ServerUnreachable(
            f"{self.url} has been away or busy for {format_duration(away_s)} ({self._reason}; SERVER_WAIT is "
            f"{format_duration(self.budget_s)}): stopping; no file was marked failed, the next run goes on"
        )

    def ok(self) -> None:
        """An answer: the server is there."""
        self._last_sign = self.clock()
        if self._away_since is None:
            return
        with self._lock:
            if self._away_since is not None:
                log.warning(
                    "%s answers again after %s", self.url, format_duration(self.clock() - self._away_since)
                )
            self._away_since, self._retry_at, self._rounds = None, 0.0, 0

    def pause_left_s(self) -> float:
        """Seconds until the next retry round when the server is away (others then wait too), else 0."""
        return max(0.0, self._retry_at - self.clock()) if self._away_since is not None else 0.0

    @property
    def probe_after_s(self) -> float:
        return min(PROBE_AFTER_S, max(self.budget_s, MIN_SILENCE_S) / 4)

    def probe_due(self, asked_at: float) -> bool:
        """Whether a request waiting for its answer since `asked_at` should ask the server whether it is
        there (see ImmichClient._probe): after PROBE_AFTER_S (at most a quarter of SERVER_WAIT) without a
        sign of life, by one request at a time. The caller reports the outcome to `probed`."""
        if self.clock() - max(self.silent_since(asked_at), self._last_probe) < self.probe_after_s:
            return False  # the common case, without the lock
        with self._lock:
            now = self.clock()
            quiet_since = max(self.silent_since(asked_at), self._last_probe)
            if self._probing or now - quiet_since < self.probe_after_s:
                return False
            self._probing, self._last_probe = True, now
            return True

    def probed(self, answered: bool) -> None:
        with self._lock:
            self._probing = False
            if answered:
                self._last_sign = self.clock()


class ServerUser(NamedTuple):
    """Who the API key belongs to: `identity` tells Immich servers (and their users) apart."""

    identity: str
    email: str
    name: str
    is_admin: bool
    quota_left_bytes: int | None = None  # None: no quota (or the server did not say)


class ServerInfo(NamedTuple):
    version: tuple[int, int, int]
    image_extensions: frozenset[str]
    video_extensions: frozenset[str]

    @property
    def version_text(self) -> str:
        return "v" + ".".join(str(p) for p in self.version)

    @property
    def needs_device_fields(self) -> bool:
        return self.version[0] < 3

    def accepts(self, extension: str) -> bool:
        dotted = "." + extension.lower()
        return dotted in self.image_extensions or dotted in self.video_extensions


class UploadRequest(NamedTuple):
    path: bytes
    filename: str
    size_bytes: int
    sha1: str | None
    created_at: str  # ISO 8601 with Z
    modified_at: str
    device_asset_id: str
    mtime_ns: int | None = None  # as fingerprinted: a file changed since is not sent under the old checksum
    sidecar_path: bytes | None = None  # where `sidecar_xmp` was read from: it is sent under that name
    is_favorite: bool = False
    # Opens the bytes to send instead of `path` (a source file through its checks, a zip member); the caller checks.
    opener: Callable[[], BinaryIO] | None = None
    sidecar_xmp: bytes | None = None  # the sidecar's bytes: read (and checked) by the caller, or made
    visibility: str | None = None  # "archive" (VISIBILITY, or what Google Photos had archived), "timeline"
    live_photo_video_id: str | None = None  # the asset of this photo's motion clip: Immich links and hides it
    # Ask Immich to look the checksum up before it reads the body (see CHECKSUM_HEADER_MIN_BYTES): an earlier
    # attempt may have landed, or no bulk check spoke for this file.
    checksum_first: bool = False


class UploadResult(NamedTuple):
    status: str  # "created" | "duplicate"
    asset_id: str
    http_status: int
    body: str
    sidecar_sha1: str | None = None  # SHA-1 of the sidecar bytes as they were sent
    # An earlier body of this request went out whole and its answer was lost: a "duplicate" may be its own.
    earlier_body_sent: bool = False


class CheckResult(NamedTuple):
    accepted: bool
    asset_id: str | None = None
    reason: str | None = None
    is_trashed: bool = False
    raw: dict[str, Any] = {}  # noqa: RUF012 - read only

    @property
    def held(self) -> bool:
        """The server holds this content (in the trash or not)."""
        return not self.accepted and self.reason == "duplicate" and bool(self.asset_id)


class AssetState(NamedTuple):
    """What the server says of one asset now (GET /api/assets/{id})."""

    id: str
    sha1: str  # hex; "" when the answer carried no readable checksum
    owner_id: str
    is_trashed: bool


def checksum_hex(value: Any) -> str:
    """Immich answers an asset's SHA-1 in base64; anything unreadable becomes "" (which matches no file)."""
    import base64
    import binascii

    if not isinstance(value, str):
        return ""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return ""
    return raw.hex() if len(raw) == 20 else ""


def _quote_header(value: str) -> str:
    """A form-data name or filename: UTF-8 as browsers send it, quotes and line breaks escaped."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class FilePart(NamedTuple):
    field_name: str
    filename: str
    path: bytes | None
    content_type: str
    hashed: bool = False  # SHA-1 the bytes as they are sent (sidecars: deletion later checks them)
    opener: Callable[[], BinaryIO] | None = None  # instead of `path`: a stream of `size` bytes
    size: int = -1

    def open(self) -> BinaryIO:
        if self.opener is not None:
            return self.opener()
        return open(self.path or b"", "rb", buffering=0)

    def length(self) -> int:
        return self.size if self.opener is not None else os.stat(self.path or b"").st_size


def _joined(segments: list[bytes | FilePart]) -> list[bytes | FilePart]:
    """Neighbouring text segments as one: each piece of a body is a send of its own (with TCP_NODELAY a
    packet of its own too), so a photo's body goes in three (the text before its bytes, its bytes, the text
    after), not five. 1,000 photos of 400 KB: 0.03-0.06 s less of our CPU, in turns; no faster in time."""
    joined: list[bytes | FilePart] = []
    for segment in segments:
        if isinstance(segment, bytes) and joined and isinstance(joined[-1], bytes):
            joined[-1] += segment
        else:
            joined.append(segment)
    return joined


class MultipartBody:
    """A multipart/form-data body streamed from disk: text fields, the file parts, then trailing fields.

    Written here rather than with requests-toolbelt's encoder: that one copies every chunk twice into fresh
    objects, which measured 2x curl's CPU and 270k page faults per GiB (bench/bench_upload.py); this one
    hands a plain connection each file by sendfile (send_to), and reads it otherwise (TLS, a proxy, a zip
    member) with readinto() into its thread's reused buffer (utils.read_buffer). Its length is known
    up front, so the request carries a Content-Length; a file that shrinks mid-upload raises instead of
    sending a short body.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[FilePart],
        on_bytes: Callable[[int], None] | None = None,
        trailing_fields: Sequence[tuple[str, str]] = (),
    ) -> None:
        # As long as RFC 2046 allows (70): a server finds it by a skip search (busboy's streamsearch in
        # Immich, bytes.find in the test server), whose steps grow with its length; the test server spent
        # 8% less CPU on a 1 GiB body than with 32 characters.
        self.boundary = os.urandom(35).hex()
        self.on_bytes = on_bytes
        self._segments: list[bytes | FilePart] = [self._text(fields)]
        self._sizes: dict[int, int] = {}
        self.sha1s: dict[str, str] = {}  # field name -> SHA-1 of what was sent, for hashed parts
        dash = f"--{self.boundary}\r\n".encode()
        for part in files:
            head = (
                f'Content-Disposition: form-data; name="{_quote_header(part.field_name)}"; '
                f'filename="{_quote_header(part.filename)}"\r\nContent-Type: {part.content_type}\r\n\r\n'
            )
            self._segments.append(dash + head.encode())
            self._segments.append(part)
            self._sizes[id(part)] = part.length()
            self._segments.append(b"\r\n")
        self._segments.append(self._text(trailing_fields) + f"--{self.boundary}--\r\n".encode())
        self._segments = _joined(self._segments)
        self.len = sum(len(s) if isinstance(s, bytes) else self._sizes[id(s)] for s in self._segments)
        self._index = 0
        self._handle: BinaryIO | None = None
        self._hasher: Any = None
        self._left = 0

    def _text(self, fields: Sequence[tuple[str, str]]) -> bytes:
        return b"".join(
            f"--{self.boundary}\r\n".encode()
            + f'Content-Disposition: form-data; name="{_quote_header(name)}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields
        )

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def complete(self) -> bool:
        """Every byte of the body was handed to the connection (whatever became of its answer)."""
        return self._index >= len(self._segments)

    def __len__(self) -> int:
        return self.len

    def read(self, _size: int = -1) -> bytes | memoryview:
        """The next chunk (http.client asks for 8-16 KiB; bigger reads cost less Python per byte)."""
        while self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, bytes):
                self._index += 1
                if segment:
                    return self._sent(segment)
                continue
            try:
                chunk = self._next_chunk(segment)
            except OSError as exc:
                # Raised as no OSError: HTTP libraries take an OSError out of the body for the connection's
                # (urllib3 even ignores ECONNRESET there, and waits READ_TIMEOUT for an answer), and a disk
                # that failed (or a file that shrank) is no server that went away.
                self.close()
                raise FileReadFailed(exc) from exc
            if chunk is not None:
                return self._sent(chunk)
            if self._hasher is not None:
                self.sha1s[segment.field_name] = self._hasher.hexdigest()
            self.close()
            self._index += 1
        return b""

    def send_to(self, sock: socket.socket, head: bytes) -> None:
        """The request's `head` and this body on a plain socket (not TLS): the text before each file part in
        one send (the head with the first), each file part up to SENDFILE_MAX_BYTES by sendfile(2) where it
        can go so, the rest as read() gives it."""
        pending = head
        while self._index < len(self._segments):
            segment = self._segments[self._index]
            if isinstance(segment, bytes):
                self._index += 1
                pending += segment
                self._sent(segment)
                continue
            if pending:
                sock.sendall(pending)
                pending = b""
            if not (
                SENDFILE
                and not segment.hashed
                and self._sizes[id(segment)] <= SENDFILE_MAX_BYTES
                and self._send_file(sock, segment)
            ):
                while chunk := self.read():  # the rest a chunk at a time, as on a TLS socket
                    sock.sendall(chunk)
        if pending:
            sock.sendall(pending)

    def _send_file(self, sock: socket.socket, part: FilePart) -> bool:
        """Send `part` from its file by sendfile(2); False when the rest of it (all, or from where its file's
        position is) is to be read: no plain file, or sendfile failed. A failure is not judged here: a
        network mount's file fails with ENOTCONN, ECONNRESET or ETIMEDOUT as a socket does, and on the read
        path a read and a send fail apart (the file's problem, or the connection's). A socket that takes
        nothing for its timeout raises TimeoutError, as sendall does."""
        try:
            self._open(part)
        except OSError as exc:
            raise FileReadFailed(exc) from exc
        if type(self._handle) is not FileIO:  # a zip member, a stream: no descriptor of its bytes
            return False
        out, source = sock.fileno(), self._handle.fileno()
        timeout_s = sock.gettimeout()
        poller: select.poll | None = None
        writable = False  # the socket said it takes bytes: "again" now is the file's
        while self._left > 0:
            try:
                count = os.sendfile(out, source, None, self._left)  # from the file's position, moving it
            except BlockingIOError:  # the socket's buffer is full (a socket with a timeout is non-blocking)
                if writable:
                    return False
                if poller is None:
                    poller = select.poll()
                    poller.register(out, select.POLLOUT)
                if not poller.poll(None if timeout_s is None else math.ceil(timeout_s * 1000)):
                    raise TimeoutError("timed out") from None
                writable = True
                continue
            except OSError:
                return False  # moved by what was sent only: the read path goes on from there
            if not count:
                return False  # the file ended early: the read path finds it shrank
            writable = False
            self._left -= count
            if self.on_bytes is not None:
                self.on_bytes(count)
        self.close()
        self._index += 1
        return True

    def _open(self, part: FilePart) -> None:
        """The part's file, opened at its first byte (once: sendfile and the reads that follow it share it)."""
        if self._handle is None:
            self._handle = part.open()
            self._left = self._sizes[id(part)]
            self._hasher = hashlib.sha1() if part.hashed else None

    def _next_chunk(self, part: FilePart) -> memoryview | None:
        """The next chunk of a file part; None at its end."""
        self._open(part)
        if self._left <= 0:
            return None
        view = read_buffer(min(self._left, UPLOAD_READ_BYTES))
        count = self._handle.readinto(view)
        if not count:
            raise FileChangedError(errno.EAGAIN, f"{part.filename} shrank while it was being uploaded")
        self._left -= count
        if self._hasher is not None:
            self._hasher.update(view[:count])
        return view[:count]

    def _sent(self, chunk: bytes | memoryview) -> bytes | memoryview:
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        return chunk

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _readable(sock: socket.socket, timeout_s: float = 0.0) -> bool:
    """Whether a socket has something to read within `timeout_s` (see _Readable)."""
    return _Readable(sock)(timeout_s)


class _Readable:
    """Whether a socket has something to read within a number of seconds; made once for many looks. poll()
    where there is one: select() fails on descriptors past 1024, which a process with a raised file limit
    reaches. A TLS socket may hold decrypted bytes already read from the socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.poller = select.poll() if hasattr(select, "poll") else None
        if self.poller is not None:
            self.poller.register(sock, select.POLLIN)

    def __call__(self, timeout_s: float) -> bool:
        if self.tls and self.sock.pending():  # type: ignore[attr-defined]
            return True
        if self.poller is not None:
            return bool(self.poller.poll(math.ceil(timeout_s * 1000)))
        return bool(select.select([self.sock], [], [], timeout_s)[0])


def proxy_for(url: str) -> str | None:
    """The proxy the environment sets for `url` (the variables requests reads), None when there is none or
    NO_PROXY names its host."""
    parts = urlsplit(url)
    names = (f"{parts.scheme}_proxy", "all_proxy")
    if not any(os.environ.get(n) or os.environ.get(n.upper()) for n in names):
        return None  # most runs: no need to import urllib.request (5 ms)
    import urllib.request

    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        return None
    return proxy


def tls_context(ca_bundle: str, verify: bool) -> ssl.SSLContext:
    """What direct https trusts: IMMICH_CA_BUNDLE when set, nothing is checked with IMMICH_VERIFY_TLS=false;
    else what requests would trust, so a run behaves as it did through it: REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE, else certifi's bundle, else the system's. Raises TlsProblem for a bundle it cannot use."""
    source, path = ("IMMICH_CA_BUNDLE", ca_bundle)
    if not ca_bundle and verify:
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            if os.environ.get(name):
                source, path = name, os.environ[name]
                break
    try:
        if path:
            folder = os.path.isdir(path)
            context = ssl.create_default_context(
                cafile=None if folder else path, capath=path if folder else None
            )
        else:
            context = ssl.create_default_context()
            if verify:
                try:
                    import certifi
                except ImportError:
                    pass  # the system's certificates, loaded above
                else:
                    context = ssl.create_default_context(cafile=certifi.where())
    except (OSError, ssl.SSLError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise TlsProblem(f"{source}: cannot use {path} ({why})") from None
    if not verify and not ca_bundle:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")  # what the email parser takes for a field name


def parse_header_lines(lines: list[bytes]) -> http.client.HTTPMessage:
    """An answer's header lines (as http.client reads them, the blank line last) as http.client's
    HTTPMessage, the same fields the email parser makes of them, for a fifth of the Python. Anything but
    plain `Name: value` lines (continued or folded lines, a line without a name) goes to the email parser."""
    message = http.client.HTTPMessage()
    for raw in lines[:-1]:
        line = raw.decode("iso-8859-1")
        name, colon, value = line.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):
            import email.parser

            text = b"".join(lines).decode("iso-8859-1")
            return email.parser.Parser(_class=http.client.HTTPMessage).parsestr(text)  # type: ignore[return-value]
        message[name] = value.lstrip(" \t").rstrip("\r\n")
    return message


class _QuickResponse(http.client.HTTPResponse):
    """http.client's answer with its header lines read by parse_header_lines: the email parser it uses took
    a fifth of an upload thread's Python (1,000 photos of 400 KB, profiled). begin() is the standard
    library's, less its debug prints."""

    def begin(self) -> None:
        if self.headers is not None:
            return
        while True:
            version, status, reason = self._read_status()  # type: ignore[attr-defined]
            if status != http.client.CONTINUE:
                break
            http.client._read_headers(self.fp)  # type: ignore[attr-defined]
        self.code = self.status = status
        self.reason = reason.strip()
        if version in ("HTTP/1.0", "HTTP/0.9"):
            self.version = 10
        elif version.startswith("HTTP/1."):
            self.version = 11
        else:
            raise http.client.UnknownProtocol(version)
        self.headers = self.msg = parse_header_lines(http.client._read_headers(self.fp))  # type: ignore[attr-defined]
        encoding = self.headers.get("transfer-encoding")
        self.chunked = bool(encoding and encoding.lower() == "chunked")  # type: ignore[assignment]
        self.chunk_left = None
        self.will_close = self._check_close()  # type: ignore[attr-defined]
        self.length = None
        length = self.headers.get("content-length")
        if length and not self.chunked:
            try:
                self.length = int(length)
            except ValueError:
                self.length = None
            else:
                if self.length < 0:
                    self.length = None
        if status in (http.client.NO_CONTENT, http.client.NOT_MODIFIED) or 100 <= status < 200:
            self.length = 0
        if self._method == "HEAD":  # type: ignore[attr-defined]
            self.length = 0
        if not self.will_close and not self.chunked and self.length is None:
            self.will_close = True


# What http.client refuses in a request line or header (a header injected through a value, a path with a space).
_BAD_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")
_BAD_IN_HEADER = re.compile(r"[\x00\r\n]")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110's token: what a header name may be


def host_header(host: str, port: int, default_port: int) -> str:
    """The Host header http.client sends for a connection: an IPv6 address in brackets without its zone
    (`%eth0`), the port unless it is the scheme's, a name beyond ASCII in IDNA. ValueError for a host with a
    control character, as http.client refuses it."""
    if _BAD_IN_TARGET.search(host):
        raise ValueError(f"invalid host {host!r}")
    try:
        name = host.encode("ascii").decode()
    except UnicodeEncodeError:
        name = host.encode("idna").decode("ascii")
    if ":" in name:
        name = f"[{name.partition('%')[0]}]"
    return name if port == default_port else f"{name}:{port}"


def request_head(method: str, target: str, host: str, headers: dict[str, str]) -> bytes:
    """A request's line and headers in one piece, as http.client's request() writes them (Host and
    Accept-Encoding first). Through it each header is a call that checks it on its own, and each piece of a
    body a send of its own: a fifth of an upload thread's CPU for photos of 400 KB. ValueError for what it
    refuses too: a control character in the path, a line break in a header."""
    if _BAD_IN_TARGET.search(target) or not target.isascii() or _BAD_IN_TARGET.search(method):
        raise ValueError(f"cannot send {method} {target!r}: not a valid request line")
    lines = [f"{method} {target} HTTP/1.1"]
    given = {name.lower() for name in headers}
    if "host" not in given:
        lines.append(f"Host: {host}")
    if "accept-encoding" not in given:
        lines.append("Accept-Encoding: identity")
    for name, value in headers.items():
        if not _HEADER_TOKEN.fullmatch(name) or _BAD_IN_HEADER.search(value):
            raise ValueError(f"invalid HTTP header {name!r}")
        lines.append(f"{name}: {value}")
    lines += ("", "")
    return "\r\n".join(lines).encode("latin-1")


def send_request(sock: socket.socket, head: bytes, body: bytes | MultipartBody | None) -> None:
    """The request on `sock`: its head with the body's first piece in one send (no wait on a delayed
    acknowledgement between them, as http.client does it), then the rest of the body (on a plain socket, its
    files by sendfile: MultipartBody.send_to)."""
    if body is None or isinstance(body, bytes):
        sock.sendall(head + body if body else head)
        return
    if not isinstance(sock, ssl.SSLSocket):
        body.send_to(sock, head)
        return
    sock.sendall(head + body.read())
    while chunk := body.read():
        sock.sendall(chunk)


class DirectConnections:
    """Each thread's kept-alive http.client connection to the server when no proxy stands between: plain http,
    or https with a TLS context of our own (tls_context).

    Why not requests there: importing it costs 60-80 ms of every run's start (a tenth of a 1 GiB upload's
    time on this machine), each request through it costs more Python than the bytes it carries, and urllib3
    waits for an answer in one blocking read, where a request here waits a slice at a time and can tell a
    silent server from a busy one (ImmichClient._await_answer). Its environment variables also overrode the
    tool's own TLS settings (psf/requests#3829). Proxies stay with requests. A connection the server closed
    while it sat idle (Immich's keep-alive timeout is 5 s) is noticed before it is used, as urllib3 does."""

    def __init__(self, scheme: str, host: str, port: int, tls: Callable[[], ssl.SSLContext]) -> None:
        self.scheme, self.host, self.port = scheme, host, port
        self._tls = tls
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @functools.cached_property
    def host_header(self) -> str:
        """Worked out at the first request, as http.client does: a name IDNA cannot encode fails there."""
        return host_header(self.host, self.port, 443 if self.scheme == "https" else 80)

    def open(self) -> http.client.HTTPConnection:
        """A new connection, not kept (the probe's); not connected yet."""
        conn = (
            http.client.HTTPSConnection(self.host, self.port, context=self._tls())
            if self.scheme == "https"
            else http.client.HTTPConnection(self.host, self.port)
        )
        conn.response_class = _QuickResponse
        return conn

    def get(self, connect_timeout_s: float) -> http.client.HTTPConnection:
        """This thread's connection; connect() waits at most `connect_timeout_s` (each write too)."""
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.open()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        elif conn.sock is not None and _readable(conn.sock):
            conn.close()  # readable while idle: the server closed it (or sent what nobody asked for)
        conn.timeout = connect_timeout_s
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


class FileReadFailed(Exception):
    """Out of a request body: the file being sent failed; `error` is its OSError, for the caller."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class LightResponse:
    """An answer read with http.client, with the few parts of requests.Response the client uses."""

    def __init__(self, status: int, headers: Any, body: bytes, url: str) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.url = url

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def is_redirect(self) -> bool:
        return self.status_code in (301, 302, 303, 307, 308) and "Location" in self.headers


def _message_of(response: requests.Response) -> str:
    """The server's message, parsed loosely (and printable, on one line: see `printable`)."""
    return printable(_raw_message_of(response))


def _raw_message_of(response: requests.Response) -> str:
    """v1/v2 bodies carry a string or a list, v3 a string plus zod issues; a non-JSON body comes from a
    proxy in front of Immich."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]
        return f"non-JSON answer (a proxy in front of Immich?): {text}" if text else "empty answer"
    if not isinstance(body, dict):
        return str(body)[:300]
    message = body.get("message", "")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        details = [
            f"{'.'.join(str(p) for p in e.get('path', []))}: {e.get('message', '')}"
            for e in errors
            if isinstance(e, dict)
        ]
        message = f"{message} ({'; '.join(details)})"
    return str(message) or json.dumps(body)[:300]


def describe_body(response: requests.Response) -> str:
    return describe_text(response.text, response.headers.get("Content-Type", ""))


def describe_text(text: str, content_type: str = "") -> str:
    """A few words on what came back: "an HTML page (title: 404 Not Found)", never the page itself, nor a
    control character a hostile page could send to the terminal."""
    text = printable(text[:4096]).strip()
    if not text:
        return "an empty answer"
    if "html" in content_type.lower() or text.startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.IGNORECASE | re.DOTALL)
        return f"an HTML page (title: {' '.join(title[1].split())[:60]})" if title else "an HTML page"
    return f"{' '.join(text.split())[:60]!r}"


def printable(text: str) -> str:
    """`text` a server sent, safe to print on one line: a line break becomes a space, any other control
    character (a terminal's escape) "?"."""
    return "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)


def _json_object(text: str) -> bool:
    """Whether an answer's body is a JSON object, as all of Immich's are (a proxy's pages are not)."""
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _parsed(response: requests.Response, shape: type, method: str, path: str) -> Any:
    """The JSON body if it is a `shape`; a 2xx page that is not (an auth proxy's login page, say) becomes
    NotImmich, which says in a few words what came instead, not a crash."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, shape):
        raise NotImmich(
            f"{method} /api{path} answered {response.status_code} with {describe_body(response)}, not Immich's "
            "answer (a proxy or login page in front of it?)",
            response.status_code, method, response.url, response.text[:2000],
        )  # fmt: skip
    return body


def _retry_after_s(response: requests.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        import email.utils  # rare: most servers send seconds

        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither seconds nor an HTTP date: back off as usual
    return min(MAX_RETRY_AFTER_S, max(0.0, parsed.timestamp() - time.time()))


class ImmichClient:
    def __init__(
        self, settings: Settings, stop: threading.Event | None = None, backoff_s: float | None = None
    ) -> None:
        # What messages, errors and the database show: a password in IMMICH_URL as ****. What is sent: the
        # address without its user:password@, which goes as basic auth (a proxy's) instead.
        self.base_url = settings.display_url
        self.api_url = self.base_url + "/api"
        parts = urlsplit(settings.immich_url)
        host = parts.netloc.rpartition("@")[2]
        self._api_path = parts.path + "/api"
        self._wire_api_url = f"{parts.scheme}://{host}{self._api_path}"
        self.max_retries = settings.max_retries
        self.backoff_s = settings.retry_backoff_s if backoff_s is None else backoff_s
        self.timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.quick_timeout = (
            min(self.timeout[0], START_CONNECT_TIMEOUT_S),
            min(self.timeout[1], START_ANSWER_TIMEOUT_S),
        )
        self.stop = stop or threading.Event()
        self.gate = ServerGate(self.base_url, settings.server_wait_s, self.backoff_s)
        self.key_origin = str(settings.origin("IMMICH_API_KEY"))  # for the line that asks to check it
        self.headers = {
            "x-api-key": settings.immich_api_key,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        if parts.username is not None:
            user, password = unquote(parts.username), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"
        # IMMICH_CA_BUNDLE wins over IMMICH_VERIFY_TLS=false, as it always did; both over the environment.
        self.ca_bundle, self.verify_tls = settings.ca_bundle, settings.verify_tls
        self.verify: str | bool = settings.ca_bundle or settings.verify_tls
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()
        self._session: requests.Session | None = None
        # Without a proxy, http and https go through http.client (DirectConnections); through one, requests.
        self.direct = proxy_for(self._wire_api_url) is None
        self._connections = DirectConnections(
            parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80),
            self._tls_context,
        )  # fmt: skip
        self.user: ServerUser | None = None
        self._server: ServerInfo | None = None
        self._server_lock = threading.Lock()
        self.device_id = f"immich-uploader-{socket.gethostname()}"

    def close(self) -> None:
        self._connections.close()
        if self._session is not None:
            self._session.close()

    def _tls_context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                self._tls = tls_context(self.ca_bundle, self.verify_tls)
            return self._tls

    # -- the one request function
    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body_factory: Callable[[], tuple[Any, dict[str, str]]] | None = None,
        retries: int | None = None,
        recover: Callable[[], Any] | None = None,
        patient: bool = True,
        timeout: tuple[float, float] | None = None,
    ) -> requests.Response:
        """Send with retries. A server that is away is waited for through the gate (`patient`), or, at
        the start of a run (patient=False), tried `retries` more times at once. A 500 is tried MAX_RETRIES
        (or `retries`) more times. `body_factory` builds a fresh streamed body (and its headers) per
        attempt. `recover`, after a transport failure, may return a value that makes a retry unnecessary;
        it is then returned as is (used to learn whether an interrupted upload arrived after all)."""
        url = self.api_url + path  # as messages show it
        timeout = timeout or self.timeout
        retries_left = self.max_retries if retries is None else retries
        # When this request's own answers began to say "away" (503, 429, no connection...): it gives up after
        # SERVER_WAIT of them, even when other requests (or pings) are answered meanwhile, which keep the
        # gate's window open for ever (a proxy that refuses one route, and lets the rest through).
        away_since: float | None = None
        while True:
            if patient:
                self._wait(self.gate.pause_left_s(), method, url)
            headers: dict[str, str] = {}
            data = None
            if body_factory is not None:
                data, headers = body_factory()
            retry_after: float | None = None
            asked_at = self.gate.clock()
            try:
                if self.direct:
                    response = self._send_direct(method, path, json_body, data, headers, timeout, patient)
                else:
                    response = self._send_requests(method, path, json_body, data, headers, timeout, patient)
            except WireError as exc:
                reason = str(exc)
                if recover is not None and exc.kind != "silent":
                    recovered = recover()
                    if recovered is not None:
                        return recovered
                log.info("%s %s failed: %s", method, path, reason)
                if exc.kind == "ignored":  # waiting READ_TIMEOUT again would not help: the next run tries
                    raise ImmichError(
                        f"{reason} (READ_TIMEOUT), though the server answered other requests meanwhile", None,
                        method, url, kind="no_answer",
                    ) from None  # fmt: skip
            else:
                if response.is_redirect:
                    raise self._redirected(response, method, path)
                if response.status_code < 400:
                    self.gate.ok()
                    return response
                message = _message_of(response)
                if response.status_code not in AWAY_STATUSES:
                    self.gate.ok()  # it answered: whatever is wrong, it is not away
                    if response.status_code < 500 or retries_left <= 0:
                        raise self._error(response, message, method, url)
                    retries_left -= 1
                    log.info("%s %s answered %d %s; retrying", method, path, response.status_code, message)
                    self._wait(self._backoff(), method, url)
                    continue
                reason = f"{response.status_code} {message}"
                retry_after = _retry_after_s(response)
                log.info("%s %s answered %s", method, path, reason)
            # The server is away, or asks everyone to slow down.
            if patient:
                away_since = asked_at if away_since is None else away_since
                if self.gate.clock() - away_since >= max(self.gate.budget_s, MIN_SILENCE_S):
                    raise self.gate.given_up(reason, self.gate.clock() - away_since)
                self._wait(self.gate.failed(reason, asked_at, retry_after), method, url)
                continue
            if retries_left <= 0:
                raise ServerUnreachable(reason, None, method, url)
            retries_left -= 1
            self._wait(retry_after if retry_after is not None else self._backoff(), method, url)

    def _redirected(self, response: requests.Response, method: str, path: str) -> ImmichError:
        """Redirects are never followed (the API key would go along). The same request at another address
        (http to https, another host) names the address to set; anything else is a login page's."""
        target = urljoin(self._wire_api_url + path, response.headers.get("Location", ""))
        moved = printable(urlsplit(target)._replace(query="", fragment="").geturl())
        url = self.api_url + path
        if moved.endswith("/api" + path):
            base = moved[: -len("/api" + path)]
            return ImmichError(
                f"{self.base_url} redirects to {base}: set IMMICH_URL={base} (the API key is not sent on to a "
                "redirect)", response.status_code, method, url,
            )  # fmt: skip
        return ImmichError(
            f"{self.base_url} redirects {method} /api{path} to {moved[:100]}, a login page? A proxy in front "
            "of Immich asks for a login in a browser: let /api through it (the API key is Immich's login), "
            "or set IMMICH_URL to an address that reaches Immich without it", response.status_code, method, url,
        )  # fmt: skip

    @property
    def session(self) -> requests.Session:
        """requests, imported on first use: proxies only."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.headers.update(self.headers)
            self._session.verify = self.verify
            self._session.trust_env = True
            if self.verify is False:
                # IMMICH_VERIFY_TLS=false was the user's choice: urllib3 would warn about it on stderr at
                # every request, in words that are not the tool's.
                import urllib3

                urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        return self._session

    def _send_requests(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: Any,
        headers: dict[str, str],
        timeout: tuple[float, float],
        patient: bool,
    ) -> requests.Response:
        """One request through requests (a proxy). urllib3 waits for an answer in one blocking read: a patient
        request's waits are bounded by what is left of SERVER_WAIT (so an answer that takes longer than
        SERVER_WAIT is given up on here even while the server is busy with it)."""
        import requests

        asked_at = self.gate.clock()
        if patient:
            limit_s = max(1.0, self.gate.silence_left_s(asked_at))
            timeout = (min(timeout[0], limit_s), min(timeout[1], limit_s))
        try:
            return self.session.request(
                method,
                self._wire_api_url + path,
                json=json_body,
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                # Given here, not only on the session: requests lets REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE
                # override the session's setting (psf/requests#3829), not a request's.
                verify=self.verify,
            )
        except FileReadFailed as failed:
            raise failed.error from None  # the file, not the server
        except requests.exceptions.SSLError as exc:
            raise TlsProblem(tls_reason(exc, self.base_url), None, method, self.api_url + path) from None
        except requests.RequestException as exc:
            # Refused, reset, timed out, or an answer cut off mid-way (a restart): the server is away.
            silent = patient and self.gate.silence_left_s(asked_at) <= 0
            raise WireError(transport_reason(exc, timeout), "silent" if silent else "away") from None

    def _send_direct(
        self,
        method: str,
        path: str,
        json_body: Any,
        data: MultipartBody | None,
        headers: dict[str, str],
        timeout: tuple[float, float],
        patient: bool,
    ) -> LightResponse:
        """One request with http.client on this thread's kept-alive connection (see DirectConnections)."""
        body: bytes | MultipartBody | None = data
        headers = {**self.headers, **headers}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        if body is not None:
            headers["Content-Length"] = str(len(body))  # never chunked: Immich and proxies want a length
        # As urllib3 does: the connection and each write wait at most the connect timeout (never past
        # SERVER_WAIT when the server is away), the answer the read timeout.
        connect_s = timeout[0]
        if patient:
            connect_s = min(connect_s, max(1.0, self.gate.silence_left_s(self.gate.clock())))
        conn = self._connections.get(connect_s)
        stage = "connect"
        try:
            if conn.sock is None:
                conn.connect()
            stage = "send"
            conn.sock.settimeout(connect_s)
            cut_short = False
            head = request_head(method, self._api_path + path, self._connections.host_header, headers)
            try:
                send_request(conn.sock, head, body)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                # A server (or proxy) may answer before it has read the whole body, a 413 say, and close:
                # its answer is still there to read (urllib3 does the same). The connection is not used again.
                cut_short = True
            stage = "answer"
            if not cut_short:
                self._await_answer(conn.sock, timeout[1], patient)
            conn.sock.settimeout(timeout[1])
            # Read here, not through conn.getresponse(): the request was not written through conn either.
            answer = _QuickResponse(conn.sock, method=method)
            answer.begin()
            content = answer.read()
            if cut_short or answer.will_close:
                conn.close()
            return LightResponse(answer.status, answer.headers, content, self.api_url + path)
        except BaseException as exc:
            conn.close()  # whatever happened, this connection is mid-request: never used again
            if isinstance(exc, FileReadFailed):
                raise exc.error from None  # the file, not the server
            if isinstance(exc, WireError):
                raise
            if (
                stage == "connect"
                and isinstance(exc, ssl.SSLError)
                and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
            ):
                raise TlsProblem(tls_reason(exc, self.base_url), None, method, self.api_url + path) from None
            if isinstance(exc, TimeoutError):
                raise WireError(
                    {
                        "connect": f"no connection within {connect_s:g} s",
                        "send": f"the server took nothing of the upload for {connect_s:g} s",
                        "answer": f"no answer within {timeout[1]:g} s",
                    }[stage]
                ) from exc
            if isinstance(exc, OSError | http.client.HTTPException):
                raise WireError(transport_reason(exc, timeout)) from None
            raise

    def _await_answer(self, sock: socket.socket, read_timeout_s: float, patient: bool) -> None:
        """Wait for the answer to begin, ANSWER_SLICE_S at a time: at most READ_TIMEOUT after the last byte
        sent and, for a patient request, only while the server shows signs of life (SERVER_WAIT), so a
        server that swallowed the request and went silent is given up on, and one still busy with it
        (Immich writes a big file to disk before it answers) is not: another request's answer counts, and
        a server quiet for a while is asked whether it is there (_probe)."""
        clock = self.gate.clock
        sent_at = clock()
        readable = _Readable(sock)
        while True:
            slice_s = min(ANSWER_SLICE_S, sent_at + read_timeout_s - clock())
            if patient:
                left_s = self.gate.silence_left_s(sent_at)
                if left_s > 0 and self.gate.probe_due(sent_at):
                    self._probe(left_s)
                    continue
                slice_s = min(slice_s, left_s, self.gate.probe_after_s)
            if readable(max(0.0, slice_s)):
                return
            if slice_s > 0:
                continue
            # Judged only now, after a last look at the socket: after a pause of this process (a loaded
            # machine) an answer already there is taken, not judged late.
            if sent_at + read_timeout_s <= clock():
                ignored = patient and self.gate.alive_after(sent_at)
                raise WireError(f"no answer within {read_timeout_s:g} s", "ignored" if ignored else "away")
            raise WireError("connected, but no answer", "silent")

    def _probe(self, left_s: float) -> None:
        """GET /api/server/ping (it needs no key) on a connection of its own, briefly (never past the
        `left_s` seconds left of SERVER_WAIT): any answer but a proxy's "Immich is away" is a sign of life."""
        answered = False
        conn: http.client.HTTPConnection | None = None
        wait_s = max(0.1, min(PROBE_TIMEOUT_S, left_s))
        try:
            conn = self._connections.open()
            conn.timeout = min(self.timeout[0], wait_s)
            conn.connect()
            conn.sock.settimeout(wait_s)
            conn.request("GET", self._api_path + "/server/ping", headers=self.headers)
            status = conn.getresponse().status
            answered = status < 500 and status not in AWAY_STATUSES
            log.debug("a request waits long for its answer; GET /api/server/ping answered %d", status)
        except (OSError, http.client.HTTPException, TlsProblem) as exc:
            log.debug("a request waits long for its answer; GET /api/server/ping failed: %s", exc)
        finally:
            if conn is not None:
                conn.close()
            self.gate.probed(answered)

    def _backoff(self) -> float:
        return min(MAX_AWAY_PAUSE_S, self.backoff_s) * random.uniform(0.5, 1.5)

    def _wait(self, seconds: float, method: str, url: str) -> None:
        if seconds > 0 and self.stop.wait(seconds):
            raise StopRequested("stopped while waiting to retry", None, method, url)

    def _call(self, method: str, path: str, shape: type = dict, **kwargs: Any) -> Any:
        """_request, then its JSON body, which must be a `shape` (dict or list)."""
        return _parsed(self._request(method, path, **kwargs), shape, method, path)

    def _error(self, response: requests.Response, message: str, method: str, url: str) -> ImmichError:
        status = response.status_code
        kind = error_kind(status, message)
        if status == 413:
            message = "Request Entity Too Large from the web server in front of Immich"
        error_type = ApiKeyRefused if status in (401, 403) else ImmichError
        return error_type(f"{status} {message}", status, method, url, response.text[:2000], kind=kind)

    # -- start of a run
    def connect(self) -> ServerUser:
        """Who the key belongs to, in one request that also proves the server is there and is Immich.
        Quick: a server that does not answer is reported within seconds (ServerUnreachable), as are a
        refused key (ApiKeyRefused), TLS trouble (TlsProblem) and something that is not Immich (NotImmich,
        whose message is the whole line: what came back, and what IMMICH_URL should be)."""
        quick: dict[str, Any] = {"patient": False, "retries": 1, "timeout": self.quick_timeout}
        try:
            me = self._call("GET", "/users/me", **quick)
        except ApiKeyRefused as exc:
            if not _json_object(exc.body):  # not Immich refusing the key: a proxy in front of it
                raise self._refused_by_proxy(exc) from None
            if exc.status != 403:
                raise ApiKeyRefused(
                    f"the server refused the API key ({exc}): check {self.key_origin}",
                    exc.status,
                    exc.method,
                    exc.url,
                ) from None
            # A key without user.read still says who it is through /api-keys/me, which needs no permission.
            key = self._call("GET", "/api-keys/me", **quick)
            me = {"id": f"key:{key.get('id', '')}", "email": "", "name": str(key.get("name", ""))}
        except NotImmich as exc:  # a 2xx that is no answer of Immich's
            raise self._not_immich(exc.status, exc.body) from None
        except ImmichError as exc:
            # 404, 405, 406...: Immich answers GET /api/users/me with a user, whatever the version.
            if exc.status is not None and 400 <= exc.status < 500:
                raise self._not_immich(exc.status, exc.body) from None
            raise
        if not me.get("id"):
            raise self._not_immich(200, json.dumps(me))
        quota, usage = me.get("quotaSizeInBytes"), me.get("quotaUsageInBytes")
        quota_left = quota - usage if isinstance(quota, int) and isinstance(usage, int) else None
        self.user = ServerUser(
            identity=str(me["id"]),
            email=str(me.get("email", "")),
            name=str(me.get("name", "")),
            is_admin=bool(me.get("isAdmin", False)),
            quota_left_bytes=quota_left,
        )
        return self.user

    def _not_immich(self, status: int | None, body: str) -> NotImmich:
        """An address that answers, but not as Immich's API (its web app's page under /photos, another web
        server, another service's API): what came back and what IMMICH_URL should be, in one line."""
        parts = urlsplit(self.base_url)
        advice = "IMMICH_URL should be the address Immich answers at"
        if parts.path:
            advice = (
                f"IMMICH_URL should be the server's address, e.g. {parts.scheme}://{parts.netloc}, without "
            )
            advice += parts.path
        elif parts.scheme == "http" and (parts.port or 80) != 2283:
            advice += f", e.g. http://{parts.hostname}:2283 (its default port)"
        else:
            advice += " (the one its apps log in to)"
        return NotImmich(
            f"{self.base_url} answers, but not like Immich: GET {self._api_path}/users/me answered {status} "
            f"with {describe_text(body)}; {advice}", status, "GET", self.api_url + "/users/me", body,
        )  # fmt: skip

    def _refused_by_proxy(self, exc: ImmichError) -> NotImmich:
        """401/403 with a page that is not Immich's JSON: the web server in front of Immich refused first."""
        answered = f"{exc.status} with {describe_text(exc.body)}"
        if exc.status == 401 and "Authorization" in self.headers:
            text = (
                f"the web server in front of Immich at {self.base_url} refused the user name and password in "
                f"IMMICH_URL ({answered})"
            )
        elif exc.status == 401:
            text = (
                f"the web server in front of Immich at {self.base_url} asks for a login ({answered}): for "
                "basic auth put it in IMMICH_URL (http://USER:PASSWORD@host), or use an address that reaches "
                "Immich without it"
            )
        else:
            text = (
                f"the web server in front of Immich at {self.base_url} refused the request before Immich saw "
                f"the API key ({answered}): it blocks this machine or the API; use an address that reaches "
                "Immich"
            )
        return NotImmich(text, exc.status, exc.method, exc.url, exc.body)

    @property
    def server(self) -> ServerInfo:
        """Version and accepted media types, asked once, when first needed: a run with nothing to send
        never asks (one request per run is enough to know the server is there and is the same)."""
        with self._server_lock:
            if self._server is None:
                version = self._call("GET", "/server/version")
                types = self._call("GET", "/server/media-types")
                self._server = ServerInfo(
                    version=(
                        int(version.get("major", 0)),
                        int(version.get("minor", 0)),
                        int(version.get("patch", 0)),
                    ),
                    image_extensions=frozenset(e.lower() for e in types.get("image", [])),
                    video_extensions=frozenset(e.lower() for e in types.get("video", [])),
                )
            return self._server

    # -- ask before sending
    def bulk_upload_check(
        self, items: Sequence[tuple[str, str]], patient: bool = True
    ) -> dict[str, CheckResult]:
        """(your id, sha1 hex) -> what the server says, in batches of 5000 (never an empty one: the
        server answers 500 to that)."""
        results: dict[str, CheckResult] = {}
        for start in range(0, len(items), BULK_CHECK_BATCH):
            batch = items[start : start + BULK_CHECK_BATCH]
            payload = {"assets": [{"id": key, "checksum": sha1} for key, sha1 in batch]}
            answer = self._call(
                "POST", "/assets/bulk-upload-check", json_body=payload, patient=patient,
                **({} if patient else {"retries": 0, "timeout": self.quick_timeout}),
            )  # fmt: skip
            for result in answer.get("results", []):
                results[str(result.get("id"))] = CheckResult(
                    accepted=result.get("action") == "accept",
                    asset_id=result.get("assetId"),
                    reason=result.get("reason"),
                    is_trashed=bool(result.get("isTrashed", False)),
                    raw=result,
                )
        return results

    def asset(self, asset_id: str) -> AssetState:
        """One asset as the server holds it now. An unknown id, another user's asset it may not read, and a
        locked one all answer 400 "Not found or no asset.read access"; a key without asset.read, 403: both
        raise ImmichError (kind "rejected" / "auth"). An id that is no UUID (a server's answer is not trusted
        to name a path) is refused before any request."""
        if not UUID.fullmatch(asset_id):
            raise ImmichError(f"{asset_id!r} is not an asset id", None, "GET", "", kind="rejected")
        answer = self._call("GET", f"/assets/{asset_id}")
        return AssetState(
            id=str(answer.get("id", "")),
            sha1=checksum_hex(answer.get("checksum")),
            owner_id=str(answer.get("ownerId", "")),
            is_trashed=bool(answer.get("isTrashed", False)),
        )

    # -- albums and stacks
    def albums(self) -> dict[str, str]:
        """Album name -> id; album names are not unique in Immich, the oldest listed wins."""
        found: dict[str, str] = {}
        for album in self._call("GET", "/albums", list):
            found.setdefault(str(album.get("albumName", "")), str(album.get("id")))
        return found

    def create_album(self, name: str) -> str:
        return str(self._call("POST", "/albums", json_body={"albumName": name}).get("id", ""))

    def add_to_album(self, album_id: str, asset_ids: Sequence[str]) -> dict[str, str | None]:
        """asset id -> None when it is in the album now (added, or already there), else the server's error."""
        outcome: dict[str, str | None] = {}
        for start in range(0, len(asset_ids), ALBUM_ADD_BATCH):
            batch = list(asset_ids[start : start + ALBUM_ADD_BATCH])
            answer = self._call("PUT", f"/albums/{album_id}/assets", list, json_body={"ids": batch})
            for item in answer:
                error = item.get("error")
                outcome[str(item.get("id"))] = (
                    None if item.get("success") or error == "duplicate" else str(error)
                )
        return outcome

    def create_stack(self, asset_ids: Sequence[str]) -> str:
        """A stack of two or more assets; the first becomes the cover."""
        return str(self._call("POST", "/stacks", json_body={"assetIds": list(asset_ids)}).get("id", ""))

    # -- assets (a Takeout's metadata that arrives after its photo was sent)
    def asset_details(self, asset_id: str) -> dict[str, Any]:
        """GET /api/assets/{id} whole: isFavorite, visibility, updatedAt and exifInfo as the server holds
        them now (asset() reads what deletion needs). An id that is no UUID is refused before any request."""
        if not UUID.fullmatch(asset_id):
            raise ImmichError(f"{asset_id!r} is not an asset id", None, "GET", "", kind="rejected")
        return dict(self._call("GET", f"/assets/{asset_id}"))

    def update_assets(self, asset_ids: Sequence[str], fields: dict[str, Any]) -> None:
        """PUT /api/assets: set these fields (isFavorite, visibility, dateTimeOriginal, latitude, longitude,
        description) on these assets; 204. Setting a value twice leaves it as once."""
        self._request("PUT", "/assets", json_body={"ids": list(asset_ids), **fields})

    def update_asset(self, asset_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """PUT /api/assets/{id}: set these fields (livePhotoVideoId links a live photo's clip and hides it;
        description, rating, visibility, isFavorite); answers the asset."""
        self._check_id(asset_id, "PUT")
        return dict(self._call("PUT", f"/assets/{asset_id}", json_body=fields))

    def copy_asset(self, source_id: str, target_id: str, *, sidecar: bool, stack: bool) -> None:
        """PUT /api/assets/copy: the target gets the source's albums, shared links, favorite and, as asked,
        its stack and sidecar (204). A real v3.1.0 deletes the stack when both assets are in it already
        (observed): pass stack=False then."""
        for asset_id in (source_id, target_id):
            self._check_id(asset_id, "PUT")
        body = {"sourceId": source_id, "targetId": target_id, "sidecar": sidecar, "stack": stack}
        self._request("PUT", "/assets/copy", json_body=body)

    def trash_assets(self, asset_ids: Sequence[str]) -> None:
        """DELETE /api/assets without force: into Immich's trash, restorable there for as long as the server
        keeps its trash (30 days by default)."""
        for asset_id in asset_ids:
            self._check_id(asset_id, "DELETE")
        self._request("DELETE", "/assets", json_body={"ids": list(asset_ids)})

    def update_stack(self, stack_id: str, primary_asset_id: str) -> None:
        self._check_id(stack_id, "PUT")
        self._call("PUT", f"/stacks/{stack_id}", json_body={"primaryAssetId": primary_asset_id})

    def upsert_tags(self, values: Sequence[str]) -> dict[str, str]:
        """PUT /api/tags: tag value (`Trips/2019/Paris`, a hierarchy) -> its id, made where missing."""
        found: dict[str, str] = {}
        for start in range(0, len(values), TAG_BATCH):
            answer = self._call(
                "PUT", "/tags", list, json_body={"tags": list(values[start : start + TAG_BATCH])}
            )
            for tag in answer:
                if (
                    isinstance(tag, dict)
                    and isinstance(tag.get("value"), str)
                    and UUID.fullmatch(str(tag.get("id")))
                ):
                    found[tag["value"]] = str(tag["id"])
        return found

    def tag_assets(self, tag_ids: Sequence[str], asset_ids: Sequence[str]) -> int:
        """PUT /api/tags/assets: give these assets these tags; returns how many (tag, asset) pairs were not
        there before. Immich passes over ids the key may not update without saying which."""
        added = 0
        for start in range(0, len(asset_ids), ALBUM_ADD_BATCH):
            body = {"tagIds": list(tag_ids), "assetIds": list(asset_ids[start : start + ALBUM_ADD_BATCH])}
            added += int(self._call("PUT", "/tags/assets", json_body=body).get("count", 0) or 0)
        return added

    def tagged_assets(self, tag_id: str, created_after: str) -> set[str]:
        """The ids of the assets created since `created_after` (ISO, UTC) that carry this tag
        (POST /api/search/metadata, a page of 1000 at a time)."""
        found: set[str] = set()
        page: int | None = 1
        while page is not None:
            body = {"tagIds": [tag_id], "createdAfter": created_after, "size": SEARCH_PAGE, "page": page}
            answer = self._call("POST", "/search/metadata", json_body=body).get("assets") or {}
            found.update(str(a.get("id")) for a in answer.get("items") or [] if isinstance(a, dict))
            next_page = answer.get("nextPage")
            page = (
                int(next_page)
                if isinstance(next_page, str) and next_page.isdigit() and int(next_page) > page
                else None
            )
        return found

    def _check_id(self, asset_id: str, method: str) -> None:
        """An id that is no UUID (a server's answer is not trusted to name a path) is refused before sending."""
        if not UUID.fullmatch(asset_id):
            raise ImmichError(f"{asset_id!r} is not an asset id", None, method, "", kind="rejected")

    # -- background jobs
    def _has_queues_api(self) -> bool:
        return self.server.version >= (2, 3, 0)

    def paused_queues(self) -> set[str]:
        """Queues already paused (by an admin, before this run); empty where the server cannot tell."""
        if not self._has_queues_api():
            return set()
        answer = self._call("GET", "/queues", list, retries=1)
        return {str(q.get("name")) for q in answer if isinstance(q, dict) and q.get("isPaused")}

    def set_jobs_paused(self, paused: bool, names: Sequence[str] = MEDIA_QUEUES) -> list[str]:
        """Pause or resume Immich's queues (admin key). Returns the queues changed. v2.3+ has /queues;
        older servers the /jobs commands. A queue the server refuses is passed over."""
        changed = []
        modern = self._has_queues_api()
        for name in names:
            try:
                if modern:
                    self._request("PUT", f"/queues/{name}", json_body={"isPaused": paused}, retries=1)
                else:
                    command = "pause" if paused else "resume"
                    self._request(
                        "PUT", f"/jobs/{name}", json_body={"command": command, "force": False}, retries=1
                    )
            except ImmichError as exc:
                if exc.status in (401, 403):
                    raise
                log.debug("queue %s not %s: %s", name, "paused" if paused else "resumed", exc)
                continue
            changed.append(name)
        return changed

    # -- upload
    def _flowing(self, on_bytes: Callable[[int], None] | None) -> Callable[[int], None]:
        """`on_bytes` for one attempt's body, which also tells the gate the server reads it: each chunk is
        read for sending once the one before went into the socket, and past BUFFERED_BYTES that means the
        server took it, a sign of life while the upload's answer (or another request's) is waited for."""
        offered = 0

        def chunk(count: int) -> None:
            nonlocal offered
            offered += count
            if offered > BUFFERED_BYTES:
                self.gate.alive()
            if on_bytes is not None:
                on_bytes(count)

        return chunk

    def upload(self, req: UploadRequest, on_bytes: Callable[[int], None] | None = None) -> UploadResult:
        """Stream one file. 201 → created, 200 → duplicate. Raises ImmichError (with .kind)."""
        fields: list[tuple[str, str]] = [
            ("fileCreatedAt", req.created_at),
            ("fileModifiedAt", req.modified_at),
            ("isFavorite", "true" if req.is_favorite else "false"),
        ]
        if req.visibility:
            fields.append(("visibility", req.visibility))
        if req.live_photo_video_id:
            fields.append(("livePhotoVideoId", req.live_photo_video_id))
        if self.server.needs_device_fields:
            fields += [("deviceAssetId", req.device_asset_id), ("deviceId", self.device_id)]
        files = [
            FilePart(
                "assetData",
                req.filename,
                req.path,
                "application/octet-stream",
                False,
                req.opener,
                req.size_bytes,
            )
        ]
        if req.sidecar_xmp is not None:
            made = req.sidecar_xmp
            sidecar_name = (
                os.fsdecode(os.path.basename(req.sidecar_path))
                if req.sidecar_path is not None
                else req.filename + ".xmp"
            )
            files.append(
                FilePart(
                    "sidecarData",
                    sidecar_name,
                    None,
                    "application/xml",
                    True,
                    lambda: BytesIO(made),
                    len(made),
                )
            )
        # `filename` (the name Immich keeps, exact in UTF-8) goes last: Immich checks each file part's
        # type by this field when it arrived before that part, and refuses a sidecar checked as a .jpg
        # (observed on v3.1.0, ../shared/immich-api.md §7b); after the parts, each is checked by its own name.
        trailing = [("filename", req.filename)]
        bodies: list[MultipartBody] = []

        def body_factory() -> tuple[Any, dict[str, str]]:
            st = os.stat(req.path) if req.opener is None else None
            if st is not None and (
                st.st_size != req.size_bytes or (req.mtime_ns is not None and st.st_mtime_ns != req.mtime_ns)
            ):
                raise FileChangedError(
                    f"{req.filename} changed since it was hashed; it is checked again next run"
                )
            body = MultipartBody(fields, files, self._flowing(on_bytes), trailing)
            headers = {"Content-Type": body.content_type}
            if req.sha1 and (bodies or req.checksum_first or req.size_bytes >= CHECKSUM_HEADER_MIN_BYTES):
                headers["x-immich-checksum"] = req.sha1
            bodies.append(body)
            return body, headers

        def recover() -> Any:
            # The server may answer "duplicate" from the checksum header and drop the body mid-stream.
            if not req.sha1:
                return None
            try:
                check = self.bulk_upload_check([("probe", req.sha1)], patient=False).get("probe")
            except ImmichError:
                return None
            if check is not None and check.held:
                sent = any(b.complete for b in bodies)
                return UploadResult("duplicate", check.asset_id or "", 200, json.dumps(check.raw), None, sent)
            return None

        try:
            answer = self._request("POST", "/assets", body_factory=body_factory, recover=recover)
        finally:
            for body in bodies:
                body.close()
        if isinstance(answer, UploadResult):
            return answer
        body = _parsed(answer, dict, "POST", "/assets")
        status = "duplicate" if answer.status_code == 200 and body.get("status") == "duplicate" else "created"
        sidecar_sha1 = bodies[-1].sha1s.get("sidecarData") if bodies and status == "created" else None
        return UploadResult(
            status,
            str(body.get("id", "")),
            answer.status_code,
            answer.text[:2000],
            sidecar_sha1,
            any(b.complete for b in bodies[:-1]),
        )
