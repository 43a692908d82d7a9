"""Tests of the Immich stand-in server (tests/immich_server.py) over real sockets: auth, uploads and their
validation, streaming multipart parsing, duplicates, albums, fault injection and the standalone process mode."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.immich_server import BodyReader, ImmichTestServer, UploadParts, parse_multipart

KEY = "secret-key"
AUTH = {"x-api-key": KEY}
DATES = {"fileCreatedAt": "2024-01-02T03:04:05.000Z", "fileModifiedAt": "2024-01-02T03:04:05.000Z"}
BOUNDARY = "xYzBoundary0123"
SERVER_SCRIPT = Path(__file__).with_name("immich_server.py")


@pytest.fixture
def server() -> Iterator[ImmichTestServer]:
    with ImmichTestServer(api_key=KEY) as srv:
        yield srv
    assert srv.errors == []


def upload(
    srv: ImmichTestServer,
    data: bytes,
    filename: str = "photo.jpg",
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        f"{srv.url}/api/assets",
        headers={**AUTH, **(headers or {})},
        data=DATES if fields is None else fields,
        files={"assetData": (filename, data, "application/octet-stream")},
        timeout=10,
    )


def form_part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def form_body(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def post_form(srv: ImmichTestServer, body: bytes) -> requests.Response:
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return requests.post(
        f"{srv.url}/api/assets", headers={**AUTH, "Content-Type": content_type}, data=body, timeout=10
    )


class StreamedUpload:
    """A large multipart body produced on the fly. requests streams it with Content-Length (it has a len());
    a bare generator from iter() has none, so requests sends it with Transfer-Encoding: chunked."""

    # Contains near-boundaries so the parser has to tell them from the real delimiter across read edges.
    PATTERN = (b"\r\n--" + BOUNDARY[:-3].encode() + bytes(range(256))) * 2000

    def __init__(self, size: int) -> None:
        self.size = size
        self.head = b"".join(form_part(k, v.encode()) for k, v in DATES.items())
        self.head += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="assetData"; filename="big.mp4"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.sha1 = hashlib.sha1()
        for piece in self._file_pieces():
            self.sha1.update(piece)

    def _file_pieces(self) -> Iterator[bytes]:
        left = self.size
        while left:
            piece = self.PATTERN[: min(left, len(self.PATTERN))]
            left -= len(piece)
            yield piece

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        yield from self._file_pieces()
        yield self.tail

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)


# --- public routes and auth -----------------------------------------------------------------------------------


def test_public_routes_need_no_auth(server: ImmichTestServer) -> None:
    assert requests.get(f"{server.url}/api/server/ping").json() == {"res": "pong"}
    assert requests.get(f"{server.url}/api/server/version").json() == {
        "major": 3,
        "minor": 1,
        "patch": 0,
        "prerelease": None,
    }
    types = requests.get(f"{server.url}/api/server/media-types").json()
    assert {".jpg", ".heic", ".dng", ".cr3", ".nef", ".arw"} <= set(types["image"])
    assert {".mp4", ".mov", ".mts", ".m2ts", ".3gp"} <= set(types["video"])
    assert types["sidecar"] == [".xmp"]
    assert requests.get(f"{server.url}/.well-known/immich").json() == {"api": {"endpoint": "/api"}}


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authentication required"),
        ({"x-api-key": "wrong"}, "Invalid API key"),
        ({"Authorization": f"Bearer {KEY}"}, "Invalid user token"),
    ],
)
def test_auth_failures(server: ImmichTestServer, headers: dict[str, str], message: str) -> None:
    response = requests.get(f"{server.url}/api/users/me", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"message": message}
    assert response.headers["X-Correlation-ID"]


def test_me_routes_and_query_key(server: ImmichTestServer) -> None:
    me = requests.get(f"{server.url}/api/users/me", headers=AUTH).json()
    assert me["isAdmin"] is True and me["quotaSizeInBytes"] is None and me["email"] == "test@example.com"
    assert requests.get(f"{server.url}/api/api-keys/me", headers=AUTH).json()["permissions"] == ["all"]
    assert requests.get(f"{server.url}/api/users/me?apiKey={KEY}").status_code == 200
    assert server.requests_log[-1] == ("GET", "/api/users/me")


def test_unknown_route_is_404(server: ImmichTestServer) -> None:
    response = requests.get(f"{server.url}/api/nope", headers=AUTH)
    assert response.status_code == 404 and response.json() == {"message": "Not Found"}


def test_v2_error_shape_and_header() -> None:
    with ImmichTestServer(api_key=KEY, version=(2, 7, 5)) as srv:
        response = requests.get(f"{srv.url}/api/users/me", headers={"x-api-key": "bad"})
        body = response.json()
        assert response.status_code == 401 and response.headers["x-immich-cid"]
        assert body["message"] == "Invalid API key" and body["statusCode"] == 401
        assert body["error"] == "Unauthorized"


# --- uploads --------------------------------------------------------------------------------------------------


def test_upload_created_then_duplicate(server: ImmichTestServer) -> None:
    first = upload(server, b"image bytes")
    assert first.status_code == 201 and first.json()["status"] == "created"
    again = upload(server, b"image bytes", filename="other-name.jpg")
    assert again.status_code == 200 and again.json() == {"id": first.json()["id"], "status": "duplicate"}
    asset = server.asset_by_sha1(hashlib.sha1(b"image bytes").hexdigest())
    assert asset is not None and asset.id == first.json()["id"] and asset.size_bytes == 11
    assert asset.filename == "photo.jpg" and asset.fields == DATES
    assert [u.status for u in server.uploads] == [201, 200] and server.upload_count() == 1
    assert server.uploads[0].filename == "photo.jpg" and server.uploads[0].headers["x-api-key"] == KEY


def test_get_asset_returns_base64_checksum(server: ImmichTestServer) -> None:
    asset_id = upload(server, b"abc", fields={**DATES, "duration": "1500"}).json()["id"]
    body = requests.get(f"{server.url}/api/assets/{asset_id}", headers=AUTH).json()
    assert body["checksum"] == base64.b64encode(hashlib.sha1(b"abc").digest()).decode()
    assert body["originalFileName"] == "photo.jpg" and body["isTrashed"] is False and body["duration"] == 1500


@pytest.mark.parametrize("encode", [lambda d: d.hex(), lambda d: base64.b64encode(d).decode()])
def test_checksum_header_answers_duplicate_early(server: ImmichTestServer, encode) -> None:
    existing = server.add_existing_asset(b"already there")
    header = {"x-immich-checksum": encode(hashlib.sha1(b"already there").digest())}
    response = upload(server, b"whatever body", headers=header)
    assert response.status_code == 200 and response.json() == {"id": existing.id, "status": "duplicate"}
    assert server.uploads[-1].status == 200 and server.upload_count() == 0
    # A wrong checksum on a new file is not checked.
    assert upload(server, b"new", headers={"x-immich-checksum": "0" * 40}).status_code == 201


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("2024-01-02T03:04:05", 400),
        ("2024-01-02T03:04:05Z", 201),
        ("2024-01-02T03:04:05.123456789Z", 201),
        ("2024-01-02T03:04+02:00", 201),
        ("2024-01-02T03:04:05+02:00", 201),
        ("2024-01-02T03:04:05+0200", 400),
        ("2024-02-30T03:04:05Z", 400),
        ("2024-01-02T24:00:00Z", 400),
        ("2024-01-02", 400),
    ],
)
def test_v3_date_validation(server: ImmichTestServer, value: str, status: int) -> None:
    response = upload(server, value.encode(), fields={"fileCreatedAt": value, "fileModifiedAt": value})
    assert response.status_code == status
    if status == 400:
        body = response.json()
        assert body["message"] == "Validation failed"
        assert [e["path"] for e in body["errors"]] == [["fileCreatedAt"], ["fileModifiedAt"]]


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"duration": "0:00:00.000000"}, 400),
        ({"duration": "1500.5"}, 400),
        ({"duration": "0"}, 201),
        ({"duration": ""}, 201),
        ({"isFavorite": "True"}, 400),
        ({"isFavorite": "1"}, 400),
        ({"isFavorite": "false"}, 201),
        ({"visibility": "public"}, 400),
        ({"deviceAssetId": "a-1", "deviceId": "dev", "unknown": "x"}, 201),
    ],
)
def test_v3_other_field_validation(server: ImmichTestServer, extra: dict[str, str], status: int) -> None:
    response = upload(server, repr(extra).encode(), fields={**DATES, **extra})
    assert response.status_code == status
    if status == 400:
        assert response.json()["errors"][0]["path"] == [next(iter(extra))]


def test_v2_requires_device_fields_and_takes_naive_dates() -> None:
    with ImmichTestServer(api_key=KEY, version=(2, 7, 5)) as srv:
        response = upload(srv, b"v2 file")
        assert response.status_code == 400
        assert response.json()["message"] == [
            "deviceAssetId must be a string",
            "deviceAssetId should not be empty",
            "deviceId must be a string",
            "deviceId should not be empty",
        ]
        naive = {"fileCreatedAt": "2024-01-02T03:04:05", "fileModifiedAt": "2024-01-02T03:04:05"}
        fields = {**naive, "deviceAssetId": "photo.jpg-7", "deviceId": "pytest"}
        assert upload(srv, b"v2 file", fields=fields).status_code == 201
        assert srv.errors == []


def test_unsupported_extension(server: ImmichTestServer) -> None:
    response = upload(server, b"text", filename="notes.txt")
    assert response.status_code == 400 and response.json() == {"message": "Unsupported file type notes.txt"}
    assert upload(server, b"raw", filename="IMG_1.CR3").status_code == 201
    assert upload(server, b"noext", filename="README").status_code == 400


def test_filename_field_counts_only_before_the_file(server: ImmichTestServer) -> None:
    dates = [form_part(k, v.encode()) for k, v in DATES.items()]
    file_part = form_part("assetData", b"binary", filename="upload.bin")
    name_part = form_part("filename", b"photo.jpg")
    after = post_form(server, form_body(*dates, file_part, name_part))
    assert after.status_code == 400 and after.json()["message"] == "Unsupported file type upload.bin"
    before = post_form(server, form_body(*dates, name_part, file_part))
    assert before.status_code == 201
    assert server.assets[before.json()["id"]].filename == "photo.jpg"


def test_empty_and_missing_file(server: ImmichTestServer) -> None:
    empty = upload(server, b"")
    assert empty.status_code == 400 and empty.json() == {"message": "File is empty"}
    missing = post_form(server, form_body(*[form_part(k, v.encode()) for k, v in DATES.items()]))
    assert missing.status_code == 400 and missing.json() == {"message": "File is required"}
    assert len(server.uploads) == 2 and server.assets == {}


def test_sidecar_part(server: ImmichTestServer) -> None:
    files = {"assetData": ("a.jpg", b"jpeg"), "sidecarData": ("a.jpg.xmp", b"<xmp/>")}
    response = requests.post(f"{server.url}/api/assets", headers=AUTH, data=DATES, files=files)
    assert response.status_code == 201
    assert server.assets[response.json()["id"]].sidecar_sha1 == hashlib.sha1(b"<xmp/>").hexdigest()
    assert server.uploads[-1].sidecar_filename == "a.jpg.xmp"
    files = {"assetData": ("b.jpg", b"jpeg2"), "sidecarData": ("b.txt", b"x")}
    bad = requests.post(f"{server.url}/api/assets", headers=AUTH, data=DATES, files=files)
    assert bad.status_code == 400 and bad.json()["message"] == "Unsupported file type b.txt"


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_streaming_50mb_upload(server: ImmichTestServer, chunked: bool) -> None:
    body = StreamedUpload(50 * 1024 * 1024)
    response = requests.post(
        f"{server.url}/api/assets",
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        data=iter(body) if chunked else body,
        timeout=30,
    )
    assert response.status_code == 201, response.text
    sent = server.uploads[-1].headers
    assert ("transfer-encoding" in sent) is chunked
    asset = server.assets[response.json()["id"]]
    assert asset.sha1_hex == body.sha1.hexdigest() and asset.size_bytes == body.size


class _TrickleRaw(io.RawIOBase):
    """Hands out at most `step` bytes per read, to push boundaries and chunk lines across read edges."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        piece = self._data[self._pos : self._pos + min(self._step, len(buffer))]
        buffer[: len(piece)] = piece
        self._pos += len(piece)
        return len(piece)


@pytest.mark.parametrize("step", [1, 3, 7, 64])
@pytest.mark.parametrize("chunked", [True, False])
def test_parser_across_tiny_reads(step: int, chunked: bool) -> None:
    content = (b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n\r\n") * 50 + b"end"
    body = form_body(
        form_part("fileCreatedAt", b"2024-01-02T00:00:00Z"), form_part("assetData", content, "a.jpg")
    )
    if chunked:
        pieces = [body[i : i + 37] for i in range(0, len(body), 37)]
        wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nTrailer: x\r\n\r\nNEXT"
        reader = BodyReader(io.BufferedReader(_TrickleRaw(wire, step), 16), None, "chunked")
    else:
        wire = body + b"NEXT"
        reader = BodyReader(io.BufferedReader(_TrickleRaw(wire, step), 16), str(len(body)), None)
    parts = UploadParts()
    parse_multipart(reader, BOUNDARY.encode(), parts)
    reader.drain()
    assert parts.error is None and parts.fields == {"fileCreatedAt": "2024-01-02T00:00:00Z"}
    assert parts.sha1_hex == hashlib.sha1(content).hexdigest() and parts.size == len(content)
    assert reader.done and reader._rfile.read() == b"NEXT"  # never read past the body


def test_concurrent_uploads(server: ImmichTestServer) -> None:
    results: list[int] = []

    def one(i: int) -> None:
        results.append(upload(server, bytes([i]) * 1_000_000, filename=f"{i}.jpg").status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201] * 8 and len(server.assets) == 8


# --- connection handling --------------------------------------------------------------------------------------


def test_keep_alive_survives_early_answers(server: ImmichTestServer) -> None:
    existing = server.add_existing_asset(b"dup")
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
    body = form_body(form_part("assetData", b"x" * 300_000, "a.jpg"))
    content_type = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    conn.request("POST", "/api/assets", body=body, headers={"x-api-key": "wrong", **content_type})
    assert conn.getresponse().read() and conn.sock is not None
    sock = conn.sock
    dup = {**AUTH, **content_type, "x-immich-checksum": hashlib.sha1(b"dup").hexdigest()}
    conn.request("POST", "/api/assets", body=body, headers=dup)
    response = conn.getresponse()
    assert response.status == 200 and existing.id in response.read().decode()
    conn.request("GET", "/api/server/ping")
    assert conn.getresponse().read() == b'{"res":"pong"}'
    assert conn.sock is sock  # the same connection carried all three requests
    conn.close()


def test_client_disconnect_mid_body_is_dropped_quietly(server: ImmichTestServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /api/assets HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\nContent-Length: 10000000\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        )
        sock.sendall(head.encode() + form_part("assetData", b"y" * 100_000, "a.jpg")[:-2])
    time.sleep(0.1)
    assert requests.get(f"{server.url}/api/server/ping").status_code == 200
    assert server.uploads == [] and server.assets == {}


# --- faults ---------------------------------------------------------------------------------------------------


def test_fault_status_count_and_matching(server: ImmichTestServer) -> None:
    server.faults.add(status=500, count=2, path="/api/assets", method="POST")
    assert server.faults.pending() == 2
    assert requests.get(f"{server.url}/api/server/ping").status_code == 200  # does not match
    for _ in range(2):
        failed = upload(server, b"retry me")
        assert failed.status_code == 500 and failed.json() == {"message": "Internal server error"}
    assert upload(server, b"retry me").status_code == 201
    assert server.faults.pending() == 0 and len(server.uploads) == 1
    server.faults.add(status=502, count=5)
    server.faults.clear()
    assert server.faults.pending() == 0


@pytest.mark.parametrize(("status", "retry_after"), [(503, 1), (429, 0)])
def test_fault_retry_after(server: ImmichTestServer, status: int, retry_after: int) -> None:
    server.faults.add(status=status, retry_after_s=retry_after)
    response = upload(server, b"x")
    assert response.status_code == status and response.headers["Retry-After"] == str(retry_after)


def test_fault_html_proxy_page(server: ImmichTestServer) -> None:
    server.faults.add(status=413, html=True)
    response = upload(server, b"big")
    assert response.status_code == 413 and response.headers["Content-Type"].startswith("text/html")
    assert "413 Request Entity Too Large" in response.text and "nginx" in response.text
    assert upload(server, b"big").status_code == 201  # the drained body left the connection usable


def test_fault_reset_and_delay(server: ImmichTestServer) -> None:
    server.faults.add(reset=True)
    with pytest.raises(requests.ConnectionError):
        upload(server, b"reset")
    server.faults.add(delay_s=0.3, path="/api/server/ping")
    started = time.monotonic()
    assert requests.get(f"{server.url}/api/server/ping").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert server.uploads == []


def test_down_and_up(server: ImmichTestServer) -> None:
    session = requests.Session()
    assert session.get(f"{server.url}/api/server/ping").status_code == 200
    server.down()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{server.url}/api/server/ping", timeout=5)
    server.up()
    assert session.get(f"{server.url}/api/server/ping", timeout=5).status_code == 200


# --- bulk check, albums, stacks -------------------------------------------------------------------------------


def test_bulk_upload_check(server: ImmichTestServer) -> None:
    existing = server.add_existing_asset(b"known")
    digest = hashlib.sha1(b"known").digest()
    assets = [
        {"id": "hex", "checksum": digest.hex()},
        {"id": "new", "checksum": hashlib.sha1(b"unknown").hexdigest()},
        {"id": "b64", "checksum": base64.b64encode(digest).decode()},
        {"id": "junk", "checksum": "not a hash"},
    ]
    response = requests.post(
        f"{server.url}/api/assets/bulk-upload-check", headers=AUTH, json={"assets": assets}
    )
    reject = {"action": "reject", "reason": "duplicate", "assetId": existing.id, "isTrashed": False}
    assert response.status_code == 200
    assert response.json()["results"] == [
        {"id": "hex", **reject},
        {"id": "new", "action": "accept"},
        {"id": "b64", **reject},
        {"id": "junk", "action": "accept"},
    ]


def test_albums_and_stacks(server: ImmichTestServer) -> None:
    a = upload(server, b"one").json()["id"]
    b = upload(server, b"two").json()["id"]
    created = requests.post(
        f"{server.url}/api/albums", headers=AUTH, json={"albumName": "Trip", "assetIds": [a]}
    )
    assert created.status_code == 201 and created.json()["assetCount"] == 1
    album_id = created.json()["id"]
    listed = requests.get(f"{server.url}/api/albums", headers=AUTH).json()
    assert [(x["id"], x["albumName"], x["assetCount"]) for x in listed] == [(album_id, "Trip", 1)]
    unknown = "00000000-0000-4000-8000-000000000000"
    added = requests.put(
        f"{server.url}/api/albums/{album_id}/assets", headers=AUTH, json={"ids": [a, b, unknown]}
    )
    assert added.json() == [
        {"id": a, "success": False, "error": "duplicate"},
        {"id": b, "success": True},
        {"id": unknown, "success": False, "error": "no_permission"},
    ]
    assert server.albums[album_id].asset_ids == [a, b]
    stack = requests.post(f"{server.url}/api/stacks", headers=AUTH, json={"assetIds": [b, a]})
    assert stack.status_code == 201 and stack.json()["primaryAssetId"] == b
    assert [x["id"] for x in stack.json()["assets"]] == [b, a]
    assert requests.post(f"{server.url}/api/stacks", headers=AUTH, json={"assetIds": [a]}).status_code == 400


# --- standalone process ---------------------------------------------------------------------------------------


def test_standalone_process_prints_ready_and_serves() -> None:
    command = [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--api-key", KEY]
    command += ["--version", "3.1.0", "--sink"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "server did not print READY"
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split(" ", 1)[1]
        assert requests.get(f"{url}/api/server/ping", timeout=5).json() == {"res": "pong"}
        assert requests.get(f"{url}/api/users/me", headers=AUTH, timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert proc.stderr is not None and proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
