"""The HTTP client against the loopback Immich stand-in: streaming, retries, redirects, error messages, TLS,
waiting for a server that is away or silent, addresses that are not Immich's API, a password in the address."""

from __future__ import annotations

import base64
import errno
import hashlib
import http.client
import http.server
import io
import os
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import immich_client
import sync_upload
from config import load_settings
from immich_client import (
    BUFFERED_BYTES,
    MIN_SILENCE_S,
    ApiKeyRefused,
    FilePart,
    ImmichClient,
    ImmichError,
    MultipartBody,
    ServerGate,
    ServerInfo,
    ServerUnreachable,
    TlsProblem,
    UploadRequest,
    host_header,
    request_head,
    send_request,
)
from logger import ROOT_NAME
from tests.conftest import API_KEY, MYSQL, Env, Library, TlsFiles, run_inprocess
from tests.immich_server import ImmichTestServer
from utils import FileChangedError


@pytest.fixture(params=["http.client", "requests"])
def transport(request: pytest.FixtureRequest) -> str:
    """Every client test runs on both transports: plain http takes http.client, https and proxies requests."""
    return str(request.param)


def client_for(
    url: str, key: str = API_KEY, retries: int = 2, *, transport: str = "http.client", **environ: str
) -> ImmichClient:
    settings = load_settings(
        environ={
            "IMMICH_URL": url,
            "IMMICH_API_KEY": key,
            "MAX_RETRIES": str(retries),
            "RETRY_BACKOFF": "0.01",
            **environ,
        },
        env_file=None,
    )
    client = ImmichClient(settings)
    client.direct = transport == "http.client"
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


def test_a_photos_body_is_sent_in_three_pieces_text_bytes_text(tmp_path: Path) -> None:
    # Each piece is a send (and a packet): the fields and the part's header go together, as do the tail.
    photo = tmp_path / "p.jpg"
    photo.write_bytes(b"\xff\xd8" + b"p" * 5000)
    part = FilePart("assetData", "p.jpg", bytes(photo), "application/octet-stream")
    body = MultipartBody(
        [("fileCreatedAt", "x"), ("isFavorite", "false")], [part], None, [("filename", "p.jpg")]
    )
    pieces = []
    while piece := body.read():
        pieces.append(bytes(piece))
    assert len(pieces) == 3 and pieces[1] == photo.read_bytes()
    assert (
        pieces[0].endswith(b"Content-Type: application/octet-stream\r\n\r\n") and b"isFavorite" in pieces[0]
    )
    assert pieces[2].startswith(b"\r\n--") and pieces[2].endswith(f"--{body.boundary}--\r\n".encode())
    assert sum(map(len, pieces)) == len(body)


def _photo_and_sidecar_body(tmp_path: Path) -> tuple[MultipartBody, bytes, bytes]:
    """A body of a 3 MiB photo (more than a socket buffer takes at once) and its sidecar, and their bytes."""
    photo = tmp_path / "big.jpg"
    photo_bytes = b"\xff\xd8" + os.urandom(3 << 20)
    photo.write_bytes(photo_bytes)
    sidecar = b"<x:xmpmeta>rating 5</x:xmpmeta>"
    parts = [
        FilePart("assetData", "big.jpg", bytes(photo), "application/octet-stream"),
        FilePart("sidecarData", "big.jpg.xmp", None, "application/xml", True, lambda: io.BytesIO(sidecar), len(sidecar)),
    ]  # fmt: skip
    return (
        MultipartBody([("isFavorite", "false")], parts, None, [("filename", "big.jpg")]),
        photo_bytes,
        sidecar,
    )


def _sent_to_socket(body: MultipartBody, head: bytes) -> bytes:
    """What MultipartBody.send_to puts on a plain (unix) socket, read off its other end."""
    ours, theirs = socket.socketpair()
    received = bytearray()

    def drain() -> None:
        while chunk := theirs.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        ours.settimeout(10)  # as a connection's: non-blocking underneath, so sendfile meets a full buffer
        body.send_to(ours, head)
    finally:
        ours.close()  # the reader sees the end
        reader.join(10)
        theirs.close()
    return bytes(received)


def _read_whole(body: MultipartBody) -> bytes:
    pieces = []
    while piece := body.read():
        pieces.append(bytes(piece))
    return b"".join(pieces)


@pytest.mark.parametrize("by_sendfile", [True, False])
def test_a_photo_goes_to_a_plain_socket_by_sendfile_a_larger_file_is_read_and_the_bytes_are_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_sendfile: bool
) -> None:
    # A larger file is read: a server on the same machine reads a sendfile body in smaller pieces.
    if not by_sendfile:
        monkeypatch.setattr(immich_client, "SENDFILE_MAX_BYTES", 1 << 20)
    body, photo_bytes, sidecar = _photo_and_sidecar_body(tmp_path)
    read_body, _, _ = _photo_and_sidecar_body(tmp_path)
    sent_by_sendfile = []
    real_sendfile = os.sendfile

    def counting_sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        sent = real_sendfile(out_fd, in_fd, offset, count)
        sent_by_sendfile.append(sent)
        return sent

    monkeypatch.setattr(os, "sendfile", counting_sendfile)
    told: list[int] = []  # the progress bar's bytes
    body.on_bytes = told.append
    wire = _sent_to_socket(body, b"HEAD\r\n\r\n")
    expected = b"HEAD\r\n\r\n" + _read_whole(read_body)
    assert wire.replace(body.boundary.encode(), b"B") == expected.replace(read_body.boundary.encode(), b"B")
    # The photo never read into Python (or all of it read); the sidecar read either way.
    assert sum(sent_by_sendfile) == (len(photo_bytes) if by_sendfile else 0)
    assert body.sha1s["sidecarData"] == hashlib.sha1(sidecar).hexdigest() and body.complete
    assert sum(told) == len(body)


def test_a_file_its_file_system_will_not_sendfile_is_read_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body, photo_bytes, _ = _photo_and_sidecar_body(tmp_path)

    def refusing_sendfile(*_args: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refusing_sendfile)
    wire = _sent_to_socket(body, b"")
    assert photo_bytes in wire and len(wire) == len(body)


@pytest.mark.parametrize(
    "failure", [errno.EIO, errno.ENOTCONN, errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE]
)
def test_after_a_sendfile_failure_the_rest_of_the_file_goes_the_read_way_from_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: int
) -> None:
    # Whose failure it was (a network mount's file says ENOTCONN, ECONNRESET or ETIMEDOUT as a socket does)
    # the read path tells: a read and a send fail apart there. Here neither fails again: every byte goes once.
    body, photo_bytes, _ = _photo_and_sidecar_body(tmp_path)
    real_sendfile = os.sendfile
    calls = []

    def failing_second_time(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            raise OSError(failure, os.strerror(failure))
        return real_sendfile(out_fd, in_fd, offset, min(count, 1 << 16))

    monkeypatch.setattr(os, "sendfile", failing_second_time)
    wire = _sent_to_socket(body, b"")
    assert len(calls) == 2 and photo_bytes in wire and len(wire) == len(body)


def test_a_file_that_says_again_to_sendfile_on_a_socket_that_takes_bytes_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EAGAIN is the socket's only while the socket is full: after it said it takes bytes, no spin on it.
    body, photo_bytes, _ = _photo_and_sidecar_body(tmp_path)
    calls = []

    def always_again(*_args: object) -> int:
        calls.append(1)
        assert len(calls) <= 3, "sendfile asked again and again"
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "sendfile", always_again)
    wire = _sent_to_socket(body, b"")
    assert photo_bytes in wire and len(wire) == len(body)


def test_a_network_mount_failing_under_sendfile_is_the_files_problem_not_the_servers(
    immich: ImmichTestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dropped sshfs mount: sendfile says ENOTCONN, and reads of the file fail from then on (here its
    # descriptor is made a folder's). Taken for the connection's, the run would wait SERVER_WAIT and stop.
    photo = tmp_path / "far.jpg"
    photo.write_bytes(b"\xff\xd8" + os.urandom(3 << 20))
    folder = os.open(tmp_path, os.O_RDONLY)
    real_sendfile = os.sendfile
    calls = []

    def mount_drops(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(count)
        if len(calls) > 1:
            os.dup2(folder, in_fd)  # from now on a read of it fails (EISDIR), as the mount's would
            raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))
        return real_sendfile(out_fd, in_fd, offset, min(count, 1 << 16))

    monkeypatch.setattr(os, "sendfile", mount_drops)
    c = client_for(immich.url, READ_TIMEOUT="5", SERVER_WAIT="2")
    c.connect()
    try:
        with pytest.raises(OSError) as caught:
            c.upload(request_for(photo))
        assert caught.value.errno == errno.EISDIR and not isinstance(caught.value, ImmichError)
        assert c.gate.pause_left_s() == 0  # no worker waits for a server that is fine
        monkeypatch.setattr(os, "sendfile", real_sendfile)
        assert c.upload(request_for(photo)).status == "created"  # and the next upload goes
    finally:
        c.close()
        os.close(folder)


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


# "disk": a file opened by path, which a zero-copy send (tried, 95974ff) would take another way.
@pytest.mark.parametrize("source", ["stream", "disk", "photo"])
def test_a_server_that_stops_taking_the_upload_is_given_up_after_the_connect_timeout(
    tmp_path: Path, transport: str, source: str
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
    c.direct = transport == "http.client"
    c._server = ServerInfo((3, 1, 0), frozenset({"jpg"}), frozenset({"mp4"}))
    try:
        with pytest.raises(ServerUnreachable) as caught:  # it reads nothing: each write waits 0.5 s, not 120
            if source != "stream":
                # sparse: zeros, none written; a photo's size goes by sendfile on plain http, a video's is read
                big = tmp_path / ("big.mp4" if source == "disk" else "big.jpg")
                with big.open("wb") as f:
                    f.truncate(64 << 20 if source == "disk" else immich_client.SENDFILE_MAX_BYTES)
                c.upload(request_for(big))
            else:
                c.upload(request_for_stream("big.mp4", 64 << 20, lambda: io.BytesIO(bytes(64 << 20))))
        assert "the server took nothing of the upload for 0.5 s" in str(caught.value)
    finally:
        c.close()
        listener.close()
        for conn in accepted:
            conn.close()


def test_a_file_that_shrinks_while_it_is_sent_is_never_sent_short(
    immich: ImmichTestServer, tmp_path: Path, transport: str
) -> None:
    photo = tmp_path / "shrinking.jpg"
    photo.write_bytes(b"\xff\xd8" + bytes(3 << 20))
    size = photo.stat().st_size

    def open_then_shrink() -> BinaryIO:
        handle = open(photo, "rb", buffering=0)  # noqa: SIM115 - the upload closes it
        os.truncate(photo, size // 2)  # an editor saving a smaller version while the upload runs
        return handle

    # A short READ_TIMEOUT: were a short body sent, the server would wait for the rest and this would fail
    # within seconds instead of hanging.
    c = client_for(immich.url, transport=transport, READ_TIMEOUT="5", SERVER_WAIT="5")
    c.connect()
    try:
        with pytest.raises(FileChangedError, match="shrank while it was being uploaded"):
            c.upload(request_for_stream(photo.name, size, open_then_shrink))
    finally:
        c.close()
    assert not immich.assets  # the body was cut short: no asset, and the row is checked again next run


def request_for_stream(name: str, size_bytes: int, opener: Callable[[], BinaryIO]) -> UploadRequest:
    return UploadRequest(
        path=name.encode(), filename=name, size_bytes=size_bytes, sha1=None,
        created_at="2024-01-01T00:00:00.000Z", modified_at="2024-01-01T00:00:00.000Z",
        device_asset_id=f"{name}-1", opener=opener,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "environ", "direct"),
    [
        ("http://nas.local:2283", {}, True),
        ("https://photos.example.org", {}, True),  # TLS as we set it up, whatever the environment says
        ("http://me:secret@nas.local:2283", {}, True),  # basic auth is a header
        ("http://nas.local:2283", {"http_proxy": "http://proxy:3128"}, False),
        ("http://nas.local:2283", {"ALL_PROXY": "socks5://proxy:1080"}, False),
        ("https://photos.example.org", {"HTTPS_PROXY": "http://proxy:3128"}, False),
        ("https://photos.example.org", {"http_proxy": "http://proxy:3128"}, True),  # for http only
        ("http://nas.local:2283", {"http_proxy": "http://proxy:3128", "no_proxy": "nas.local"}, True),
    ],
)
def test_without_a_proxy_http_and_https_take_http_client_and_proxies_requests(
    url: str, environ: dict[str, str], direct: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(environ={"IMMICH_URL": url, "IMMICH_API_KEY": API_KEY}, env_file=None)
    assert ImmichClient(settings).direct is direct


def make_client(url: str, transport: str = "http.client", **values: str) -> ImmichClient:
    """A client with these settings (names as in .env) over the given transport."""
    settings = load_settings(
        environ={"IMMICH_URL": url, "IMMICH_API_KEY": API_KEY, "RETRY_BACKOFF": "0.05", **values},
        env_file=None,
    )
    client = ImmichClient(settings)
    client.direct = transport == "http.client"
    return client


def small_photo(tmp_path: Path, name: str = "a.jpg", fill: bytes = b"p") -> Path:
    photo = tmp_path / name
    photo.write_bytes(b"\xff\xd8" + fill * 3000)
    return photo


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout_s:g} s for {what}")
        time.sleep(0.02)


JPEG_ONLY = ServerInfo((3, 1, 0), frozenset({".jpg"}), frozenset({".mp4"}))


# --- TLS: the tool's own settings win (issue 22) ------------------------------------------------------------


@pytest.fixture
def tls_immich(tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch) -> Iterator[ImmichTestServer]:
    """nginx with a self-signed certificate in front of Immich; no CA bundle named by the environment."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    with ImmichTestServer(api_key=API_KEY, tls=(str(tls_files.cert), str(tls_files.key))) as server:
        yield server


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_immich_ca_bundle_wins_over_a_bundle_the_environment_names(
    tls_immich: ImmichTestServer, tls_files: TlsFiles, transport: str, variable: str,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv(variable, str(tls_files.other_cert))  # as on many systems and containers
    c = make_client(tls_immich.url, transport, IMMICH_CA_BUNDLE=str(tls_files.cert))
    try:
        assert c.connect().identity == tls_immich.user_id
        assert c.upload(request_for(small_photo(tmp_path))).status == "created"
    finally:
        c.close()


def test_immich_verify_tls_false_wins_over_a_bundle_the_environment_names(
    tls_immich: ImmichTestServer, tls_files: TlsFiles, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.other_cert))
    c = make_client(tls_immich.url, transport, IMMICH_VERIFY_TLS="false")
    try:
        assert c.connect().identity == tls_immich.user_id
    finally:
        c.close()


def test_without_tls_settings_a_bundle_the_environment_names_is_trusted_as_before(
    tls_immich: ImmichTestServer, tls_files: TlsFiles, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls_files.cert))
    c = make_client(tls_immich.url, transport)
    try:
        assert c.connect().identity == tls_immich.user_id
    finally:
        c.close()


@pytest.mark.parametrize("environment_bundle", [False, True])
def test_an_untrusted_certificate_is_one_line_naming_immich_ca_bundle_and_never_retried(
    tls_immich: ImmichTestServer, tls_files: TlsFiles, transport: str, environment_bundle: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if environment_bundle:
        monkeypatch.setenv("CURL_CA_BUNDLE", str(tls_files.other_cert))
    c = make_client(tls_immich.url, transport)
    with pytest.raises(
        TlsProblem, match=r"^the server's TLS certificate is not trusted .* set IMMICH_CA_BUNDLE"
    ):
        c.connect()
    assert tls_immich.requests_log == []


def test_a_ca_bundle_that_holds_no_certificate_is_named(tls_immich: ImmichTestServer, tmp_path: Path) -> None:
    bundle = tmp_path / "cert.pem"
    bundle.write_text("not a certificate\n")
    c = make_client(tls_immich.url, IMMICH_CA_BUNDLE=str(bundle))
    with pytest.raises(TlsProblem, match=rf"^IMMICH_CA_BUNDLE: cannot use {bundle} \("):
        c.connect()


# --- SERVER_WAIT: the time the server may show no sign of life (issue 20) -----------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_server_wait_is_waited_whole_and_no_longer_with_one_last_try_at_the_limit() -> None:
    clock = FakeClock()
    gate = ServerGate("http://nas:2283", budget_s=15, backoff_s=1, clock=clock)
    gate.ok()  # an answer, then a long scan: a server nobody asks anything is not silent meanwhile
    clock.now += 600
    went_away = clock.now
    tries: list[float] = []
    with pytest.raises(ServerUnreachable) as caught:
        while True:  # every try is refused at once
            tries.append(clock.now - went_away)
            clock.now += gate.failed("connection refused", clock.now)
    assert tries[-1] == 15  # the last pause was shortened to end at the limit, one last try there
    assert len(tries) >= 4 and tries[-2] < 15
    assert str(caught.value).startswith("http://nas:2283 has been away or busy for 15s (connection refused; ")


def test_a_retry_after_past_the_limit_stops_at_once_and_says_so() -> None:
    clock = FakeClock()
    gate = ServerGate("http://nas:2283", budget_s=60, backoff_s=1, clock=clock)
    assert gate.failed("503 Service Unavailable", clock.now, retry_after_s=30) == 30
    clock.now += 30
    with pytest.raises(ServerUnreachable, match=r"for 30s \(503 Service Unavailable, asked to wait 1m00s;"):
        gate.failed("503 Service Unavailable", clock.now, retry_after_s=60)


def test_an_answer_is_waited_for_a_moment_even_with_server_wait_0() -> None:
    clock = FakeClock()
    gate = ServerGate("http://nas:2283", budget_s=0, backoff_s=1, clock=clock)
    assert gate.silence_left_s(clock.now) == MIN_SILENCE_S  # 0: no waiting for a server that is away
    with pytest.raises(ServerUnreachable):
        gate.failed("connection refused", clock.now)


def test_silence_counts_from_the_last_sign_of_life_of_any_request() -> None:
    clock = FakeClock()
    gate = ServerGate("http://nas:2283", budget_s=15, backoff_s=1, clock=clock)
    asked = clock.now
    clock.now += 10
    assert gate.silence_left_s(asked) == 5
    gate.ok()  # another request was answered: the server is there
    clock.now += 10
    assert gate.silence_left_s(asked) == 5
    clock.now += 5
    assert gate.silence_left_s(asked) == 0


def test_body_bytes_are_a_sign_of_life_only_past_what_socket_buffers_hold(immich: ImmichTestServer) -> None:
    clock = FakeClock()
    c = make_client(immich.url, SERVER_WAIT="15")
    c.gate.clock = clock
    sent: list[int] = []
    flowing = c._flowing(sent.append)
    asked = clock.now
    clock.now += 14
    flowing(BUFFERED_BYTES)  # a server that reads nothing still takes this much into buffers
    assert c.gate.silence_left_s(asked) == 1
    flowing(1 << 20)
    assert c.gate.silence_left_s(asked) == 15 and sent == [BUFFERED_BYTES, 1 << 20]


def test_a_quiet_server_is_asked_whether_it_is_there_by_one_request_at_a_time() -> None:
    clock = FakeClock()
    gate = ServerGate("http://nas:2283", budget_s=300, backoff_s=1, clock=clock)
    asked = clock.now
    clock.now += 9
    assert not gate.probe_due(asked)
    clock.now += 1
    assert gate.probe_due(asked) and not gate.probe_due(asked)  # one probe at a time
    gate.probed(answered=False)
    assert not gate.probe_due(asked)  # not again at once
    clock.now += 10
    assert gate.probe_due(asked)
    gate.probed(answered=True)
    assert gate.silence_left_s(asked) == 300


@pytest.mark.parametrize("stage", ["before_body", "after_body"])
def test_a_server_that_takes_requests_and_never_answers_is_given_up_after_server_wait(
    immich: ImmichTestServer, transport: str, stage: str, tmp_path: Path
) -> None:
    immich.faults.add(stall=stage, count=1_000_000)  # every request, a probe's too
    c = make_client(immich.url, transport, SERVER_WAIT="2", READ_TIMEOUT="60")
    c._server = JPEG_ONLY
    photo = small_photo(tmp_path)
    started = time.monotonic()
    try:
        with pytest.raises(ServerUnreachable) as caught:
            c.upload(request_for(photo, sha1=hashlib.sha1(photo.read_bytes()).hexdigest()))
    finally:
        c.close()
    waited_s = time.monotonic() - started
    assert 2 <= waited_s < 30  # SERVER_WAIT, not READ_TIMEOUT (4 x READ_TIMEOUT before)
    assert "SERVER_WAIT is 2.0s" in str(caught.value) and "no answer" in str(caught.value)


def test_a_server_that_never_answers_at_the_start_is_reported_within_seconds(
    immich: ImmichTestServer,
) -> None:
    immich.faults.add(stall="before_body", count=1_000_000)
    c = make_client(immich.url)  # READ_TIMEOUT 600, SERVER_WAIT 300: the defaults (both transports use them)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match=r"^no answer within 5 s$"):
        c.connect()
    assert time.monotonic() - started < 20  # two tries of 5 s (61 s before)
    assert immich.requests_log == [("GET", "/api/users/me")] * 2


def test_an_answer_long_after_the_last_byte_is_waited_for_while_the_server_answers_pings(
    immich: ImmichTestServer, tmp_path: Path
) -> None:
    """Immich writes a big file to disk before it answers (minutes for 10 GB on a slow disk): with nothing
    else going on, a request that waits long asks the server whether it is there."""
    released = threading.Event()
    immich.faults.add(hold=released, path="/api/assets", method="POST")
    c = make_client(immich.url, SERVER_WAIT="2")  # a probe after 0.5 s of silence
    c._server = JPEG_ONLY
    results: list[Any] = []
    sender = threading.Thread(target=lambda: results.append(c.upload(request_for(small_photo(tmp_path)))))
    sender.start()
    try:
        wait_until(
            lambda: pings_since_upload(immich) >= 8, "8 probes (at least 3.5 s, longer than SERVER_WAIT)"
        )
        assert sender.is_alive() and results == []
    finally:
        released.set()
        sender.join(30)
        c.close()
    assert results[0].status == "created"


def test_an_upload_waiting_for_its_answer_is_not_given_up_while_other_requests_are_answered(
    immich: ImmichTestServer, tmp_path: Path
) -> None:
    immich.faults.add(stall="before_body", path="/api/server/ping", count=1_000_000)  # probes get nothing
    released = threading.Event()
    immich.faults.add(hold=released, path="/api/assets", method="POST")
    c = make_client(immich.url, SERVER_WAIT="2")
    c._server = JPEG_ONLY
    results: list[Any] = []
    sender = threading.Thread(target=lambda: results.append(c.upload(request_for(small_photo(tmp_path)))))
    sender.start()
    try:
        wait_until(lambda: ("POST", "/api/assets") in immich.requests_log, "the upload")
        waited_from = time.monotonic()
        while time.monotonic() - waited_from < 5:  # 2.5 x SERVER_WAIT, while another worker gets answers
            c._request("GET", "/server/version")
            time.sleep(0.1)
        assert sender.is_alive() and results == []
    finally:
        released.set()
        sender.join(30)
        c.close()
    assert results[0].status == "created"


def test_an_upload_the_server_never_answers_while_answering_others_fails_after_read_timeout(
    immich: ImmichTestServer, tmp_path: Path
) -> None:
    """Immich's upload folder on a hung NFS mount: uploads hang, pings are answered. Waiting READ_TIMEOUT
    again and again would never end; the file fails (the next run tries it), the server is not "away"."""
    immich.faults.add(stall="after_body", path="/api/assets", method="POST", count=1_000_000)
    c = make_client(immich.url, SERVER_WAIT="60", READ_TIMEOUT="2")
    c._server = JPEG_ONLY
    clock = FakeClock()  # READ_TIMEOUT runs out when the test says, however loaded the machine
    c.gate.clock = clock
    c.gate._last_sign = clock.now
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            c.upload(request_for(small_photo(tmp_path)))
        except ImmichError as exc:
            outcome.append(exc)

    # The clock moves only once the upload waits for its answer (its body all sent): on a loaded machine
    # the body may still be on its way when the server logs the request, and READ_TIMEOUT counts from then.
    waiting = threading.Event()
    await_answer = c._await_answer

    def await_answer_noted(*args: Any) -> None:
        def first_look() -> float:
            now = clock()
            waiting.set()  # after the upload took its "sent at" time
            return now

        c.gate.clock = first_look  # type: ignore[assignment]
        return await_answer(*args)

    c._await_answer = await_answer_noted  # type: ignore[method-assign]
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert waiting.wait(30), "the upload never waited for its answer"
    c.gate.clock = clock
    clock.now += 1
    c._request("GET", "/server/version")  # another request answered while the upload waits
    clock.now += 2  # READ_TIMEOUT is over for the upload
    sender.join(30)
    c.close()
    assert not sender.is_alive(), "still waiting, READ_TIMEOUT after READ_TIMEOUT"
    (error,) = outcome
    assert error.kind == "no_answer" and not isinstance(error, ServerUnreachable)
    assert (
        str(error)
        == "no answer within 2 s (READ_TIMEOUT), though the server answered other requests meanwhile"
    )
    assert immich.requests_log.count(("POST", "/api/assets")) == 1


def pings_since_upload(immich: ImmichTestServer) -> int:
    log = list(immich.requests_log)
    if ("POST", "/api/assets") not in log:
        return 0
    return log[log.index(("POST", "/api/assets")) :].count(("GET", "/api/server/ping"))


# --- an address that answers, but not as Immich's API (issue 20) ------------------------------------------


class _NotImmich(http.server.BaseHTTPRequestHandler):
    answer: tuple[int, dict[str, str], bytes] = (200, {}, b"")
    paths: list[str] = []  # noqa: RUF012 - each test's subclass has its own

    def do_GET(self) -> None:
        self.paths.append(self.path)
        status, headers, body = self.answer
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


WEB_APP = b'<!doctype html><html><head><meta charset="utf-8"><title>Immich</title></head><body></body></html>'
LOGIN = b"<html><head><title>Sign in - Authelia</title></head><body><form></form></body></html>"


@pytest.mark.parametrize(
    ("url_path", "answer", "expected"),
    [
        # A path of the web app the settings do not know already (those, like /photos, stop at the settings).
        ("/my-photos", (406, {"Content-Type": "text/plain"}, b"Not Acceptable"),
         "answered 406 with 'Not Acceptable'; IMMICH_URL should be the server's address, e.g. {origin}, "
         "without /my-photos"),
        ("/my-photos", (200, {"Content-Type": "text/html"}, WEB_APP),
         "answered 200 with an HTML page (title: Immich); IMMICH_URL should be the server's address, e.g. "
         "{origin}, without /my-photos"),
        ("", (200, {"Content-Type": "text/html; charset=utf-8"}, LOGIN),
         "answered 200 with an HTML page (title: Sign in - Authelia); IMMICH_URL should be the address Immich "
         "answers at, e.g. http://127.0.0.1:2283 (its default port)"),
        ("", (404, {"Content-Type": "application/json"}, b'{"detail":"Not Found"}'),
         """answered 404 with '{"detail":"Not Found"}'; IMMICH_URL should be the address Immich answers at"""),
        ("", (302, {"Location": "https://auth.example.org/?rd=https%3A%2F%2Fnas%2Fapi%2Fusers%2Fme"}, b""),
         "redirects GET /api/users/me to https://auth.example.org/, a login page? A proxy in front of Immich "
         "asks for a login in a browser: let /api through it"),
        ("", (401, {"Content-Type": "text/html", "WWW-Authenticate": 'Basic realm="photos"'},
              b"<html><head><title>401 Authorization Required</title></head></html>"),
         "the web server in front of Immich at {url} asks for a login (401 with an HTML page (title: 401 "
         "Authorization Required)): for basic auth put it in IMMICH_URL"),
        ("", (403, {"Content-Type": "text/html"}, b"<html><head><title>Access denied</title></head></html>"),
         "refused the request before Immich saw the API key (403 with an HTML page (title: Access denied))"),
    ],
    ids=["web-app-406", "web-app-page", "login-page", "other-api-404", "login-redirect", "basic-auth", "waf"],
)  # fmt: skip
def test_an_address_that_is_not_immichs_api_is_one_line_saying_what_came_and_what_to_set(
    url_path: str, answer: tuple[int, dict[str, str], bytes], expected: str, transport: str
) -> None:
    handler = type("Answer", (_NotImmich,), {"answer": answer, "paths": []})
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{web.server_address[1]}"
    try:
        c = make_client(origin + url_path, transport)
        with pytest.raises(ImmichError) as caught:
            c.connect()
    finally:
        web.shutdown()
    message = str(caught.value)
    assert expected.replace("{origin}", origin).replace("{url}", origin + url_path) in message
    assert handler.paths == [f"{url_path}/api/users/me"]  # asked once: no retry of an answer
    assert "<" not in message and "\n" not in message and len(message) < 300
    assert not isinstance(caught.value, ApiKeyRefused)  # not "check IMMICH_API_KEY": the key was never judged


def test_a_run_given_immichs_web_app_address_says_which_address_to_set(env: Env, library: Library) -> None:
    handler = type("Answer", (_NotImmich,), {"answer": (406, {}, b"Not Acceptable"), "paths": []})
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{web.server_address[1]}"
    library.photos(1)
    env.set(IMMICH_URL=f"{origin}/photos", IMMICH_API_KEY=API_KEY)
    try:
        result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--no-progress")
    finally:
        web.shutdown()
    assert result.status == 2
    assert [line for line in result.lines if "error" in line] == [
        f"immich-uploader: error: IMMICH_URL (from {env.path}, line {len(env.values) - 1}): '{origin}/photos' is a page of "
        f"Immich's web app, not the server's address: did you mean {origin}?"
    ]
    assert handler.paths == []  # said before anything was asked


# --- a password in IMMICH_URL (issue 22) -------------------------------------------------------------------


def database_text(env: Env) -> str:
    """Everything the test's database holds, as text: SQLite's files as they are on disk, MariaDB's tables."""
    settings = env.settings()
    if settings.backend == "sqlite":
        files = [Path(f"{settings.db_path}{suffix}") for suffix in ("", "-wal", "-journal")]
        return b"".join(f.read_bytes() for f in files if f.exists()).decode("latin-1")
    import pymysql

    conn = pymysql.connect(**MYSQL, database=settings.db_name)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES")
            tables = [row[0] for row in cur.fetchall()]
            dump = []
            for table in tables:
                cur.execute(f"SELECT * FROM `{table}`")
                dump.append(repr(cur.fetchall()))
        return "\n".join(dump)
    finally:
        conn.close()


def test_a_password_in_immich_url_goes_as_basic_auth_and_is_shown_and_stored_nowhere(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    password = "s3cret-Pw0rd"
    url = immich.url.replace("http://", f"http://alice:{password}@")
    shown_url = immich.url.replace("http://", "http://alice:****@")
    server_env.set(IMMICH_URL=url, LOG_LEVEL="DEBUG")
    library.photos(3)
    immich.faults.add(status=503, count=2, path="/api/assets", method="POST")  # "away", then "answers again"
    first = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "-v", "--no-progress")
    assert first.status == 0, first.stderr
    assert f"connected to Immich at {shown_url} as " in first.stderr and "answers again" in first.stderr
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    assert {u.headers.get("authorization") for u in immich.uploads} == {f"Basic {basic}"}
    # A run the server stays away from: its summary (in the runs table) names the server.
    library.photos(1, start=10)
    server_env.set(SERVER_WAIT="0.3")
    immich.faults.add(status=503, count=1_000_000, path="/api/assets", method="POST")
    second = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "-v", "--no-progress")
    assert second.status == 3 and f"{shown_url} has been away or busy" in second.stderr
    show = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--show-config")
    assert f"IMMICH_URL={shown_url}  # {server_env.path}" in show.stdout
    bad = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--url", url + ":99999")
    assert bad.status == 2 and "alice:****@" in bad.stderr
    log_text = Path(server_env.values["LOG_FILE"]).read_text()
    assert shown_url in log_text
    texts = {
        "stdout": first.stdout + second.stdout + bad.stdout,
        "stderr": first.stderr + second.stderr + bad.stderr,
        "--show-config": show.stdout,
        "log file": log_text,
        "database": database_text(server_env),
    }
    assert [where for where, text in texts.items() if password in text] == []


def test_a_servers_message_reaches_the_console_without_control_characters(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    odd = tmp_path / "evil\x1b[2J\nname.txt"  # Immich quotes the file name in its refusal
    odd.write_bytes(b"x")
    with pytest.raises(ImmichError) as caught:
        client.upload(request_for(odd))
    assert str(caught.value).startswith("400 Unsupported file type evil")
    assert all(c.isprintable() for c in str(caught.value)), repr(str(caught.value))


def test_what_a_hostile_server_sends_reaches_the_console_without_control_characters(transport: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def answer_garbage() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"\x1b[2J\x1b]0;owned\x07 200 OK\r\n\r\n")  # clear the screen, set the title
            conn.close()

    answering = threading.Thread(target=answer_garbage, daemon=True)
    answering.start()
    try:
        with pytest.raises(ServerUnreachable) as caught:
            make_client(f"http://127.0.0.1:{listener.getsockname()[1]}", transport).connect()
    finally:
        # Wakes its accept(): a close alone left the thread blocked for good.
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        answering.join()
    assert all(c.isprintable() for c in str(caught.value)), repr(str(caught.value))


def test_live_photo_tags_copy_stack_and_trash_calls_reach_immich_as_it_expects_them(
    client: ImmichClient, immich: ImmichTestServer, tmp_path: Path
) -> None:
    """The calls an edit's replacement, a live photo and tags make, each as §7c describes it."""
    clip, photo, edited = tmp_path / "IMG_1.MOV", tmp_path / "IMG_1.JPG", tmp_path / "IMG_1e.JPG"
    for path, data in ((clip, b"motion"), (photo, b"still"), (edited, b"still, edited")):
        path.write_bytes(data)
    clip_id = client.upload(request_for(clip)).asset_id
    photo_id = client.upload(request_for(photo)._replace(live_photo_video_id=clip_id)).asset_id
    assert immich.assets[photo_id].fields["livePhotoVideoId"] == clip_id
    assert immich.assets[clip_id].fields["visibility"] == "hidden"
    tags = client.upsert_tags(["Trips/2019/Paris", "Family"])
    assert set(tags) == {"Trips/2019/Paris", "Family"}
    assert (
        client.tag_assets([tags["Family"]], [photo_id]) == 1
        and client.tag_assets([tags["Family"]], [photo_id]) == 0
    )
    new_id = client.upload(request_for(edited)._replace(visibility="archive")).asset_id
    assert immich.assets[new_id].fields["visibility"] == "archive"
    client.copy_asset(photo_id, new_id, sidecar=True, stack=False)
    assert immich.copies[-1] == (
        photo_id,
        new_id,
        {**dict.fromkeys(("sharedLinks", "albums", "favorite"), True), "sidecar": True, "stack": False},
    )
    linked = client.update_asset(new_id, {"livePhotoVideoId": clip_id, "rating": 3})
    assert linked["livePhotoVideoId"] == clip_id and linked["exifInfo"]["rating"] == 3
    stack = client.create_stack([photo_id, new_id])
    client.update_stack(stack, new_id)
    assert immich.stacks[stack][0] == new_id
    client.trash_assets([photo_id])
    assert immich.assets[photo_id].is_trashed
    with pytest.raises(ImmichError, match=r"Not found or no asset\.delete access") as refused:
        client.trash_assets(["6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"])
    assert refused.value.status == 400
    with pytest.raises(ImmichError, match="is not an asset id"):
        client.update_asset("../users/me", {})


def test_a_request_a_proxy_keeps_refusing_gives_up_after_server_wait_while_pings_are_answered(
    immich: ImmichTestServer, transport: str
) -> None:
    """A proxy that answers 503 to one route and lets pings through: the gate sees life (the pings) and would
    keep the window open for ever; the request itself stops after SERVER_WAIT of "away" answers."""
    c = make_client(immich.url, transport, SERVER_WAIT="0.5")
    c.connect()
    immich.faults.add(status=503, path="/api/assets", method="DELETE", count=1_000_000)
    with pytest.raises(ServerUnreachable, match=r"503 Service Unavailable; SERVER_WAIT is 0\.5s"):
        c.trash_assets(["6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"])
    if transport == "http.client":  # requests waits for an answer in one read: it sends no pings
        assert ("GET", "/api/server/ping") in immich.requests_log  # the pings that kept the gate open
    c.close()


def test_answer_headers_are_parsed_as_the_email_parser_parses_them() -> None:
    import email.parser
    import http.client

    from immich_client import parse_header_lines

    blocks = [
        [b"Content-Type: application/json; charset=utf-8\r\n", b"Content-Length: 42\r\n", b"\r\n"],
        [
            b"X-Empty:\r\n",
            b"Set-Cookie: a=1\r\n",
            b"set-cookie: b=2\r\n",
            b"Date:  Sat, 05 Dec 2026\t \r\n",
            b"\r\n",
        ],
        [b"Folded: one\r\n", b"  two\r\n", b"Connection: close\r\n", b"\r\n"],
        [b"no colon here\r\n", b"Content-Length: 3\r\n", b"\r\n"],
        [b"Caf\xe9: latin-1 name\r\n", b"Retry-After: 5\r\n", b"\n"],
        [b"Content-Length: 0\r\n", b""],
        [b"\r\n"],
    ]
    for lines in blocks:
        expected = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(
            b"".join(lines).decode("iso-8859-1")
        )
        got = parse_header_lines(lines)
        assert isinstance(got, http.client.HTTPMessage)
        assert got.items() == expected.items(), lines
        assert got.get("content-length") == expected.get("content-length")


def test_a_request_head_is_written_as_http_client_writes_it() -> None:
    """The request line, Host and Accept-Encoding first, then the headers in order: one piece, one send."""
    head = request_head(
        "POST", "/api/assets", "photos.example:2283", {"x-api-key": "k", "Content-Length": "5"}
    )
    assert head == (
        b"POST /api/assets HTTP/1.1\r\nHost: photos.example:2283\r\nAccept-Encoding: identity\r\n"
        b"x-api-key: k\r\nContent-Length: 5\r\n\r\n"
    )


def test_a_host_or_accept_encoding_given_is_sent_once() -> None:
    head = request_head("GET", "/api/x", "a.example", {"Host": "b.example", "accept-encoding": "gzip"})
    assert head.count(b"Host:") == 1 and b"Host: b.example" in head
    assert head.lower().count(b"accept-encoding:") == 1 and b"accept-encoding: gzip" in head


def test_a_request_goes_out_byte_for_byte_as_http_client_sent_it() -> None:
    """What the server receives is what it received before the request was written by hand."""
    sent: list[bytes] = []

    class Capture:
        def sendall(self, data: bytes) -> None:
            sent.append(bytes(data))

    headers = {"x-api-key": "k", "User-Agent": "u", "Content-Type": "application/json", "Content-Length": "9"}
    conn = http.client.HTTPConnection("127.0.0.1", 2283)
    conn.sock = Capture()  # type: ignore[assignment]
    conn.request("PUT", "/api/assets", b'{"a": 1}\n', headers)
    theirs = b"".join(sent)
    sent.clear()
    head = request_head("PUT", "/api/assets", host_header("127.0.0.1", 2283, 80), headers)
    send_request(Capture(), head, b'{"a": 1}\n')  # type: ignore[arg-type]
    assert b"".join(sent) == theirs


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("photos.example", 80, "photos.example"),
        ("photos.example", 2283, "photos.example:2283"),
        ("::1", 2283, "[::1]:2283"),
        ("fe80::1%eth0", 2283, "[fe80::1]:2283"),  # a link-local address's zone stays on this machine
        ("bücher.example", 443, "xn--bcher-kva.example"),
    ],
)
def test_the_host_header_names_the_server_as_http_client_names_it(
    host: str, port: int, expected: str
) -> None:
    default_port = 443 if host.startswith("bücher") else 80
    assert host_header(host, port, default_port) == expected
    if host.isascii():  # what http.client itself puts in the Host header of the same connection
        conn = http.client.HTTPConnection(host, port)
        conn.putrequest("GET", "/")
        assert f"Host: {expected}".encode() in b"".join(conn._buffer)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/assets HTTP/1.1\r\nx-evil: 1", {}),
        ("/api/assets/a b", {}),
        ("/api/assets/é", {}),
        ("/api/assets", {"x-api-key": "key\r\nx-evil: 1"}),
        ("/api/assets", {"x-api-key": "key\nx-evil: 1"}),
        ("/api/assets", {"x-evil\r\nx": "1"}),
        ("/api/assets", {"x-a:b": "1"}),
        ("/api/assets", {"": "1"}),
        ("/api/assets", {" x-api-key": "1"}),
        ("/api/assets", {"x-clé": "1"}),
    ],
)
def test_a_request_that_would_inject_a_line_is_refused_before_anything_is_sent(
    target: str, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        request_head("GET", target, "photos.example", headers)
