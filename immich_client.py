"""Everything that talks HTTP to Immich: one session, one request function, streamed uploads.

`ImmichClient._request` is the only place a request is sent: it sets timeouts, never follows a redirect
(the `x-api-key` header would go along to wherever it points), and retries transient failures (connection
errors, timeouts, 429, 500, 502, 503, 504) with exponential backoff and jitter, honouring Retry-After.
Other 4xx answers fail at once with the server's message. Uploads stream the file from disk through a
multipart encoder in 1 MiB reads, so memory does not grow with the file. Which fields are sent depends on
the server's version (../shared/immich-api.md §3): before v3, deviceAssetId and deviceId are required.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import requests

from config import Settings
from logger import get_logger
from utils import FileChangedError

log = get_logger("immich")

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
UPLOAD_READ_BYTES = 1 << 20
BULK_CHECK_BATCH = 5000
MAX_RETRY_AFTER_S = 300.0
USER_AGENT = "immich-uploader/0.1"
ALBUM_ADD_BATCH = 1000
# The media-processing queues worth pausing during a big import (SDK QueueName); internal ones are left alone.
MEDIA_QUEUES = (
    "thumbnailGeneration", "metadataExtraction", "videoConversion", "faceDetection", "facialRecognition",
    "smartSearch", "duplicateDetection", "ocr", "sidecar",
)  # fmt: skip


class ImmichError(Exception):
    """A request failed; carries what a user and a log need to tell why."""

    def __init__(self, message: str, status: int | None = None, method: str = "", url: str = "",
                 body: str = "", transient: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.method = method
        self.url = url
        self.body = body
        self.transient = transient


class ApiKeyRefused(ImmichError):
    """401/403 at the start: the key is wrong or lacks a permission."""


class ServerUnreachable(ImmichError):
    """No answer from the server after the retries."""


class StopRequested(ImmichError):
    """The run was asked to stop while a request waited to be retried: nothing was decided."""


@dataclass(frozen=True)
class ServerInfo:
    version: tuple[int, int, int]
    user_email: str
    user_name: str
    is_admin: bool
    image_extensions: frozenset[str]
    video_extensions: frozenset[str]
    sidecar_extensions: frozenset[str]

    @property
    def version_text(self) -> str:
        return "v" + ".".join(str(p) for p in self.version)

    @property
    def needs_device_fields(self) -> bool:
        return self.version[0] < 3

    def accepts(self, extension: str) -> bool:
        dotted = "." + extension.lower()
        return dotted in self.image_extensions or dotted in self.video_extensions


@dataclass(frozen=True)
class UploadRequest:
    path: bytes
    filename: str
    size_bytes: int
    sha1: str | None
    created_at: str  # ISO 8601 with Z
    modified_at: str
    device_asset_id: str
    mtime_ns: int | None = None  # as fingerprinted: a file changed since is not sent under the old checksum
    sidecar_path: bytes | None = None
    is_favorite: bool = False


@dataclass(frozen=True)
class UploadResult:
    status: str  # "created" | "duplicate"
    asset_id: str
    http_status: int
    body: str


@dataclass(frozen=True)
class CheckResult:
    accepted: bool
    asset_id: str | None = None
    reason: str | None = None
    is_trashed: bool = False
    raw: dict[str, Any] = field(default_factory=dict)


def _quote_header(value: str) -> str:
    """A form-data name or filename: UTF-8 as browsers send it, quotes and line breaks escaped."""
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """A multipart/form-data body streamed from disk: text parts first, then the file (and sidecar) parts.

    Written here rather than with requests-toolbelt's encoder: that one copies every chunk twice into fresh
    objects, which measured 2x curl's CPU and 270k page faults per GiB (bench/bench_upload.py); this one
    reads each file with readinto() into one reused 1 MiB buffer. Its length is known up front, so the
    request carries a Content-Length; a file that shrinks mid-upload raises instead of sending a short body.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        files: Sequence[tuple[str, str, bytes, str]],
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.boundary = uuid.uuid4().hex
        self.on_bytes = on_bytes
        self._segments: list[bytes | tuple[bytes, int]] = []
        dash = f"--{self.boundary}\r\n".encode()
        text = b"".join(
            dash
            + f'Content-Disposition: form-data; name="{_quote_header(name)}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
            for name, value in fields
        )
        self._segments.append(text)
        for field_name, filename, path, content_type in files:
            head = (
                f'Content-Disposition: form-data; name="{_quote_header(field_name)}"; '
                f'filename="{_quote_header(filename)}"\r\nContent-Type: {content_type}\r\n\r\n'
            )
            self._segments.append(dash + head.encode())
            self._segments.append((path, os.stat(path).st_size))
            self._segments.append(b"\r\n")
        self._segments.append(f"--{self.boundary}--\r\n".encode())
        self.len = sum(len(s) if isinstance(s, bytes) else s[1] for s in self._segments)
        self._buffer = bytearray(UPLOAD_READ_BYTES)
        self._index = 0
        self._handle: BinaryIO | None = None
        self._left = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

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
            if self._handle is None:
                self._handle = open(segment[0], "rb", buffering=0)  # noqa: SIM115 - closed below
                self._left = segment[1]
            if self._left > 0:
                view = memoryview(self._buffer)[: min(self._left, len(self._buffer))]
                count = self._handle.readinto(view)
                if not count:
                    self.close()
                    raise OSError(f"{os.fsdecode(segment[0])} shrank while it was being uploaded")
                self._left -= count
                return self._sent(view[:count])
            self.close()
            self._index += 1
        return b""

    def _sent(self, chunk: bytes | memoryview) -> bytes | memoryview:
        if self.on_bytes is not None:
            self.on_bytes(len(chunk))
        return chunk

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _message_of(response: requests.Response) -> str:
    """The server's message, parsed loosely: v1/v2 bodies carry a string or a list, v3 a string plus
    zod issues; a non-JSON body comes from a proxy in front of Immich."""
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


def _parsed(response: requests.Response, shape: type, method: str, path: str) -> Any:
    """The JSON body if it is a `shape`; a 2xx page that is not (an auth proxy's login page, say) becomes
    an ImmichError that says what came instead, not a crash."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, shape):
        text = " ".join(response.text.split())[:120]
        raise ImmichError(
            f"{method} {path} answered {response.status_code} with something that is not Immich's answer "
            f"(a proxy or login page in front of it?): {text!r}",
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
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # neither seconds nor an HTTP date: back off as usual
    return min(MAX_RETRY_AFTER_S, max(0.0, parsed.timestamp() - time.time()))


class ImmichClient:
    def __init__(
        self, settings: Settings, stop: threading.Event | None = None, backoff_s: float | None = None
    ) -> None:
        self.base_url = settings.immich_url
        self.api_url = settings.immich_url + "/api"
        self.max_retries = settings.max_retries
        self.backoff_s = settings.retry_backoff_s if backoff_s is None else backoff_s
        self.timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.stop = stop or threading.Event()
        self.session = requests.Session()
        self.session.headers.update(
            {"x-api-key": settings.immich_api_key, "User-Agent": USER_AGENT, "Accept": "application/json"}
        )
        self.session.verify = settings.ca_bundle or settings.verify_tls
        self.session.trust_env = True
        self.server: ServerInfo | None = None
        self.device_id = f"immich-uploader-{socket.gethostname()}"

    def close(self) -> None:
        self.session.close()

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
    ) -> requests.Response:
        """Send with retries. `body_factory` builds a fresh streamed body (and its headers) per attempt.
        `recover`, after a transport failure, may return a value that makes a retry unnecessary; it is
        then returned as is (used to learn whether an interrupted upload arrived after all)."""
        url = self.api_url + path
        attempts = 1 + (self.max_retries if retries is None else retries)
        for attempt in range(1, attempts + 1):
            wait: float | None = None
            headers: dict[str, str] = {}
            data = None
            if body_factory is not None:
                data, headers = body_factory()
            try:
                response = self.session.request(
                    method, url, json=json_body, data=data, headers=headers,
                    timeout=self.timeout, allow_redirects=False,
                )  # fmt: skip
            except (requests.ConnectionError, requests.Timeout) as exc:
                reason = f"{type(exc).__name__}: {_short(exc)}"
                if recover is not None:
                    recovered = recover()
                    if recovered is not None:
                        return recovered
                if attempt == attempts:
                    raise ServerUnreachable(
                        f"no answer from {self.base_url} ({reason})", None, method, url, transient=True
                    ) from None
                log.info("%s %s failed: %s; retrying (%d/%d)", method, path, reason, attempt, attempts - 1)
            else:
                if response.is_redirect:
                    target = response.headers.get("Location", "?")
                    raise ImmichError(
                        f"{self.base_url} redirects to {target}: set IMMICH_URL to the final address "
                        "(the API key is not sent on to a redirect)", response.status_code, method, url
                    )  # fmt: skip
                if response.status_code < 400:
                    return response
                message = _message_of(response)
                transient = response.status_code in TRANSIENT_STATUSES
                if not transient or attempt == attempts:
                    raise self._error(response, message, method, url, transient)
                wait = _retry_after_s(response)
                log.info("%s %s answered %d %s; retrying (%d/%d)", method, path, response.status_code,
                         message, attempt, attempts - 1)  # fmt: skip
            if wait is None:
                wait = min(60.0, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
            if self.stop.wait(wait):
                raise StopRequested("stopped while waiting to retry", None, method, url, transient=True)
        raise AssertionError("unreachable")

    def _call(self, method: str, path: str, shape: type = dict, **kwargs: Any) -> Any:
        """_request, then its JSON body, which must be a `shape` (dict or list)."""
        return _parsed(self._request(method, path, **kwargs), shape, method, path)

    def _error(
        self, response: requests.Response, message: str, method: str, url: str, transient: bool
    ) -> ImmichError:
        status = response.status_code
        if status == 413:
            message = "file too large for the web server in front of Immich (raise its body size limit)"
        error_type = ApiKeyRefused if status in (401, 403) else ImmichError
        return error_type(f"{status} {message}", status, method, url, response.text[:2000], transient)

    # -- start of a run
    def connect(self) -> ServerInfo:
        """Ping, version, the key's user, the accepted media types. Raises ServerUnreachable or ApiKeyRefused."""
        self._request("GET", "/server/ping")
        version = self._call("GET", "/server/version")
        try:
            user = self._call("GET", "/users/me", retries=1)
        except ApiKeyRefused as exc:
            raise ApiKeyRefused(
                f"the server refused the API key ({exc}): check IMMICH_API_KEY",
                exc.status,
                exc.method,
                exc.url,
            ) from None
        types = self._call("GET", "/server/media-types")
        self.server = ServerInfo(
            version=(
                int(version.get("major", 0)),
                int(version.get("minor", 0)),
                int(version.get("patch", 0)),
            ),
            user_email=str(user.get("email", "")),
            user_name=str(user.get("name", "")),
            is_admin=bool(user.get("isAdmin", False)),
            image_extensions=frozenset(e.lower() for e in types.get("image", [])),
            video_extensions=frozenset(e.lower() for e in types.get("video", [])),
            sidecar_extensions=frozenset(e.lower() for e in types.get("sidecar", [])),
        )
        return self.server

    # -- ask before sending
    def bulk_upload_check(self, items: Sequence[tuple[str, str]]) -> dict[str, CheckResult]:
        """(your id, sha1 hex) -> what the server says, in batches of 5000."""
        results: dict[str, CheckResult] = {}
        for start in range(0, len(items), BULK_CHECK_BATCH):
            batch = items[start : start + BULK_CHECK_BATCH]
            payload = {"assets": [{"id": key, "checksum": sha1} for key, sha1 in batch]}
            answer = self._call("POST", "/assets/bulk-upload-check", json_body=payload)
            for result in answer.get("results", []):
                results[str(result.get("id"))] = CheckResult(
                    accepted=result.get("action") == "accept",
                    asset_id=result.get("assetId"),
                    reason=result.get("reason"),
                    is_trashed=bool(result.get("isTrashed", False)),
                    raw=result,
                )
        return results

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

    # -- background jobs
    def _has_queues_api(self) -> bool:
        return self.server is None or self.server.version >= (2, 3, 0)

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
    def upload(self, req: UploadRequest, on_bytes: Callable[[int], None] | None = None) -> UploadResult:
        """Stream one file. 201 → created, 200 → duplicate. Raises ImmichError (with .transient)."""
        fields: list[tuple[str, str]] = [
            # Text fields first: the server checks the type from `filename` only if it arrives before the file.
            ("filename", req.filename),
            ("fileCreatedAt", req.created_at),
            ("fileModifiedAt", req.modified_at),
            ("isFavorite", "true" if req.is_favorite else "false"),
        ]
        if self.server is None or self.server.needs_device_fields:
            fields += [("deviceAssetId", req.device_asset_id), ("deviceId", self.device_id)]
        headers = {"x-immich-checksum": req.sha1} if req.sha1 else {}
        files = [("assetData", req.filename, req.path, "application/octet-stream")]
        if req.sidecar_path is not None:
            sidecar_name = os.fsdecode(os.path.basename(req.sidecar_path))
            files.append(("sidecarData", sidecar_name, req.sidecar_path, "application/xml"))
        bodies: list[MultipartBody] = []

        def body_factory() -> tuple[Any, dict[str, str]]:
            st = os.stat(req.path)
            if st.st_size != req.size_bytes or (req.mtime_ns is not None and st.st_mtime_ns != req.mtime_ns):
                raise FileChangedError(
                    f"{req.filename} changed since it was hashed; it is checked again next run"
                )
            body = MultipartBody(fields, files, on_bytes)
            bodies.append(body)
            return body, {**headers, "Content-Type": body.content_type}

        def recover() -> Any:
            # The server may answer "duplicate" from the checksum header and drop the body mid-stream.
            if not req.sha1:
                return None
            try:
                check = self.bulk_upload_check([("probe", req.sha1)]).get("probe")
            except ImmichError:
                return None
            if check is not None and not check.accepted and check.asset_id:
                return UploadResult("duplicate", check.asset_id, 200, json.dumps(check.raw))
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
        return UploadResult(status, str(body.get("id", "")), answer.status_code, answer.text[:2000])


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."
