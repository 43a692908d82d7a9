"""The HTTP client against the loopback Immich stand-in: streaming, retries, redirects, error messages."""

from __future__ import annotations

import errno
import hashlib
import http.server
import io
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from config import load_settings
from immich_client import (
    ApiKeyRefused,
    ImmichClient,
    ImmichError,
    MultipartBody,
    ServerInfo,
    ServerUnreachable,
    UploadRequest,
)
from logger import ROOT_NAME
from tests.conftest import API_KEY
from tests.immich_server import ImmichTestServer


@pytest.fixture(params=["http.client", "requests"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every client test runs on both transports: plain http takes http.client, https and proxies requests."""
    return str(request.param)


def client_for(
    url: str, key: str = API_KEY, retries: int = 2, *, transport: str = "http.client"
) -> ImmichClient:
    settings = load_settings(
        environ={
            "IMMICH_URL": url,
            "IMMICH_API_KEY": key,
            "MAX_RETRIES": str(retries),
            "RETRY_BACKOFF": "0.01",
        },
        env_file=None,
    )
    client = ImmichClient(settings)
    client.plain_http = transport == "http.client"
    return client


@pytest.fixture
def client(immich: ImmichTestServer, transport: str) -> Iterator[ImmichClient]:
    c = client_for(immich.url, transport=transport)
    c.connect()
    c.server  # noqa: B018 - fetched now, so tests count only their own requests
    yield c
    c.close()


def request_for(path: Path, sha1: str | None = None) -> UploadRequest:
    return UploadRequest(
        path=bytes(path),
        filename=path.name,
        size_bytes=path.stat().st_size,
        sha1=sha1,
        created_at="2024-01-01T00:00:00.000Z",
        modified_at="2024-01-01T00:00:00.000Z",
        device_asset_id=f"{path.name}-1",
    )


def test_connect_is_one_request_and_server_details_come_when_first_needed(
    immich: ImmichTestServer, transport: str
) -> None:
    c = client_for(immich.url, transport=transport)
    user = c.connect()
    assert user.identity == immich.user_id and user.email == "test@example.com"
    assert immich.requests_log == [("GET", "/api/users/me")]  # a run with nothing to send stops here
    assert c.server.version == (3, 1, 0) and not c.server.needs_device_fields
    assert c.server.accepts("CR2") and c.server.accepts("mp4") and not c.server.accepts("txt")
    assert c.server.accepts("mpo") and c.server.accepts("ts") and c.server.accepts("mxf")
    c.server  # noqa: B018 - asked once, kept
    assert len(immich.requests_log) == 3


def test_wrong_key_is_refused_clearly(immich: ImmichTestServer, transport: str) -> None:
    c = client_for(immich.url, key="wrong-key-000", transport=transport)
    with pytest.raises(ApiKeyRefused, match="refused the API key"):
        c.connect()


def test_unreachable_server_at_the_start_is_told_in_plain_words(
    immich: ImmichTestServer, transport: str
) -> None:
    immich.down()
    c = client_for(immich.url, retries=1, transport=transport)
    with pytest.raises(ServerUnreachable) as caught:
        c.connect()
    # The reset races the request being written: a write that meets it leaves the read an end of stream
    # (urllib3 and our http.client path both read on, for a server's early answer). Both are plain words.
    assert str(caught.value) in (
        "the connection was reset",
        "the server closed the connection without answering",
    )
    assert len(immich.requests_log) == 0
    c = client_for("http://127.0.0.1:9", transport=transport)
    with pytest.raises(ServerUnreachable, match=r"^connection refused \(nothing listens on that port\)$"):
        c.connect()


def test_upload_streams_from_disk_in_flat_memory(client: ImmichClient, tmp_path: Path) -> None:
    big = tmp_path / "big.mp4"
    with big.open("wb") as f:
        for _ in range(64):
            f.write(hashlib.sha256(f.tell().to_bytes(8, "big")).digest() * 32768)  # 1 MiB each
    tracemalloc.start()
    try:
        result = client.upload(request_for(big))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "created"
    assert peak < 12 * 1024 * 1024  # a few 1 MiB buffers, not the 64 MiB file


def test_the_multipart_boundary_is_as_long_as_rfc_2046_allows() -> None:
    # A server finds it with a skip search whose steps grow with its length: fewer steps per gigabyte.
    boundaries = {MultipartBody([], []).boundary for _ in range(3)}
    assert len(boundaries) == 3 and {len(b) for b in boundaries} == {70}


def test_server_message_is_kept_for_client_errors_and_they_are_not_retried(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    odd = tmp_path / "notes.txt"
    odd.write_bytes(b"x")
    before = len(immich.requests_log)
    with pytest.raises(ImmichError, match=r"400 Unsupported file type notes\.txt") as caught:
        client.upload(request_for(odd))
    assert caught.value.kind == "unsupported"  # a matter of this file, not of the server
    assert len(immich.requests_log) == before + 1


def test_retry_after_is_honoured(client: ImmichClient, immich: ImmichTestServer) -> None:
    immich.faults.add(status=503, retry_after_s=1, path="/api/server/ping")
    started = time.monotonic()
    client._request("GET", "/server/ping")
    assert time.monotonic() - started >= 0.9  # waited as told, not the 0.01 s backoff


def test_reset_after_checksum_header_is_recovered_as_duplicate(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + b"x" * 5000)
    existing = immich.add_existing_asset(photo.read_bytes())
    immich.faults.add(reset=True, count=5, path="/api/assets", method="POST")
    result = client.upload(request_for(photo, sha1=hashlib.sha1(photo.read_bytes()).hexdigest()))
    assert result.status == "duplicate" and result.asset_id == existing.id
    assert immich.faults.pending() == 4  # recovered after the first reset, no blind retries


def test_bulk_upload_check_goes_in_batches(client: ImmichClient, immich: ImmichTestServer) -> None:
    known = immich.add_existing_asset(b"known bytes")
    items = [(str(i), f"{i:040x}") for i in range(12_000)] + [("k", known.sha1_hex)]
    answers = client.bulk_upload_check(items)
    assert len(answers) == 12_001
    assert not answers["k"].accepted and answers["k"].asset_id == known.id and answers["0"].accepted
    assert sum(1 for _, p in immich.requests_log if p == "/api/assets/bulk-upload-check") == 3


class _Redirect(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.target + self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_redirects_are_not_followed_with_the_key(immich: ImmichTestServer, transport: str) -> None:
    handler = type("Redirect", (_Redirect,), {"target": immich.url})
    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        c = client_for(f"http://127.0.0.1:{redirector.server_address[1]}", transport=transport)
        with pytest.raises(ImmichError, match="redirects to"):
            c.connect()
        assert immich.requests_log == []  # the key never went to the other server
    finally:
        redirector.shutdown()


def test_v2_error_bodies_with_message_lists_are_readable(
    immich: ImmichTestServer, tmp_path: Path, transport: str
) -> None:
    with ImmichTestServer(api_key=API_KEY, version=(2, 5, 0)) as old:
        c = client_for(old.url, transport=transport)
        c.connect()
        photo = tmp_path / "a.jpg"
        photo.write_bytes(b"\xff\xd8data")
        result = c.upload(request_for(photo))
        assert result.status == "created"
        c._server = c.server._replace(
            version=(3, 0, 0)
        )  # wrongly omit the device fields: the list comes through
        photo.write_bytes(b"\xff\xd8other")
        with pytest.raises(ImmichError, match="deviceAssetId should not be empty"):
            c.upload(request_for(photo))


def test_unusual_file_names_survive_the_multipart_body(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    photo = tmp_path / 'Café "Nord" 2019.jpg'
    photo.write_bytes(b"\xff\xd8" + b"n" * 3000)
    result = client.upload(request_for(photo))
    assert result.status == "created"
    # The part header escapes the quotes as browsers do; the `filename` field carries the real name.
    assert immich.assets[result.asset_id].filename == photo.name
    assert immich.uploads[-1].filename == "Café %22Nord%22 2019.jpg"
    assert immich.assets[result.asset_id].sha1_hex == hashlib.sha1(photo.read_bytes()).hexdigest()


def test_file_changed_after_hashing_is_not_sent_under_the_old_checksum(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    from utils import FileChangedError

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + b"a" * 3000)
    request = request_for(photo, sha1="0" * 40)
    photo.write_bytes(b"\xff\xd8" + b"b" * 4000)
    with pytest.raises(FileChangedError):
        client.upload(request)
    assert not any(p == "/api/assets" for _, p in immich.requests_log)


def test_requests_share_one_kept_alive_connection_per_thread(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    photo = tmp_path / "a.jpg"
    for n in range(5):
        photo.write_bytes(b"\xff\xd8" + bytes([n]) * 3000)
        assert client.upload(request_for(photo)).status == "created"
    assert immich.connections_accepted == 1  # five uploads and the start-up requests, one connection


def test_a_connection_the_server_closed_while_idle_is_replaced_without_a_retry(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    immich.close_idle_connections()  # the keep-alive timeout passed while the run was busy elsewhere
    time.sleep(0.1)  # the FIN arrives
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8" + b"k" * 3000)
    with caplog.at_level("INFO", logger=ROOT_NAME):
        assert client.upload(request_for(photo)).status == "created"
    assert [r for r in caplog.records if "failed" in r.getMessage()] == []  # no wait, no "server away"
    assert client.gate.pause_left_s() == 0


class _EarlyRefusal(http.server.BaseHTTPRequestHandler):
    """nginx with client_max_body_size: it answers 413 from the Content-Length, before the body, then reads
    and discards the body (its lingering close) so that the client gets to read the answer."""

    def do_POST(self) -> None:
        page = b"<html><head><title>413 Request Entity Too Large</title></head></html>"
        self.send_response(413)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(page)
        self.wfile.flush()
        left = int(self.headers["Content-Length"])
        while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
            left -= len(chunk)
        self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_proxy_refusing_the_size_before_reading_the_body_is_a_413_for_that_file(
    immich: ImmichTestServer, tmp_path: Path, transport: str
) -> None:
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EarlyRefusal)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        c = client_for(f"http://127.0.0.1:{proxy.server_address[1]}", transport=transport)
        # Known already: no start-up requests through this proxy.
        c._server = ServerInfo((3, 1, 0), frozenset({"jpg"}), frozenset({"mp4"}))
        big = tmp_path / "big.mp4"
        big.write_bytes(b"\0" * (8 << 20))
        with pytest.raises(ImmichError) as caught:
            c.upload(request_for(big))
        assert caught.value.status == 413 and caught.value.kind == "too_large"
    finally:
        proxy.shutdown()


class _FailingDisk(io.RawIOBase):
    """A file on a network mount that fails after its first MiB with `error` (SMB resets, NFS times out)."""

    def __init__(self, error: OSError) -> None:
        self.error = error
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.given >= 1 << 20:
            raise self.error
        n = min(len(buffer), (1 << 20) - self.given)
        buffer[:n] = b"\0" * n
        self.given += n
        return n


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ECONNRESET, "Connection reset by peer"), TimeoutError(errno.ETIMEDOUT, "timed out")],
    ids=["reset", "timeout"],
)
def test_a_disk_failing_mid_upload_is_the_files_problem_not_the_servers(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path, error: OSError
) -> None:
    request = request_for_stream("far.mp4", 8 << 20, lambda: _FailingDisk(error))
    with pytest.raises(OSError) as caught:
        client.upload(request)
    assert caught.value is error  # the mount's own error, for the row: not "server unreachable"
    assert client.gate.pause_left_s() == 0  # no worker waits for a server that is fine
    photo = tmp_path / "next.jpg"
    photo.write_bytes(b"\xff\xd8" + b"n" * 3000)
    assert client.upload(request_for(photo)).status == "created"  # and the next file goes


def test_a_server_that_stops_taking_the_upload_is_given_up_after_the_connect_timeout(
    tmp_path: Path, transport: str
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    settings = load_settings(
        environ={
            "IMMICH_URL": f"http://127.0.0.1:{listener.getsockname()[1]}", "IMMICH_API_KEY": API_KEY,
            "CONNECT_TIMEOUT": "0.5", "READ_TIMEOUT": "120", "SERVER_WAIT": "0.1", "RETRY_BACKOFF": "0.01",
        },
        env_file=None,
    )  # fmt: skip
    c = ImmichClient(settings)
    c.plain_http = transport == "http.client"
    c._server = ServerInfo((3, 1, 0), frozenset({"jpg"}), frozenset({"mp4"}))
    try:
        with pytest.raises(ServerUnreachable) as caught:  # it reads nothing: each write waits 0.5 s, not 120
            c.upload(request_for_stream("big.mp4", 64 << 20, lambda: io.BytesIO(bytes(64 << 20))))
        assert "the server took nothing of the upload for 0.5 s" in str(caught.value)
    finally:
        c.close()
        listener.close()
        for conn in accepted:
            conn.close()


def request_for_stream(name: str, size_bytes: int, opener: Callable[[], BinaryIO]) -> UploadRequest:
    return UploadRequest(
        path=name.encode(), filename=name, size_bytes=size_bytes, sha1=None,
        created_at="2024-01-01T00:00:00.000Z", modified_at="2024-01-01T00:00:00.000Z",
        device_asset_id=f"{name}-1", opener=opener,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "environ", "plain"),
    [
        ("http://nas.local:2283", {}, True),
        ("https://photos.example.org", {}, False),  # certificates as requests checks them
        ("http://nas.local:2283", {"http_proxy": "http://proxy:3128"}, False),
        ("http://nas.local:2283", {"ALL_PROXY": "socks5://proxy:1080"}, False),
        ("http://me:secret@nas.local:2283", {}, False),  # requests sends it as basic auth
    ],
)
def test_plain_http_without_a_proxy_takes_http_client_and_the_rest_requests(
    url: str, environ: dict[str, str], plain: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(environ={"IMMICH_URL": url, "IMMICH_API_KEY": API_KEY}, env_file=None)
    assert ImmichClient(settings).plain_http is plain
