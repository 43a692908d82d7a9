"""Tests of the Immich stand-in server (tests/immich_server.py) over real sockets: auth, the server routes, uploads
and their validation as a real v3.1.0 answered (../shared/immich-api.md §7b), streaming multipart parsing,
duplicates, albums, fault injection, correlation ids and the standalone process mode."""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import re
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

from tests.conftest import TlsFiles
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


def date_parts() -> list[bytes]:
    return [form_part(k, v.encode()) for k, v in DATES.items()]


def get_asset(srv: ImmichTestServer, asset_id: str) -> requests.Response:
    return requests.get(f"{srv.url}/api/assets/{asset_id}", headers=AUTH, timeout=10)


def bulk_check(srv: ImmichTestServer, assets: list[dict[str, str]]) -> requests.Response:
    return requests.post(
        f"{srv.url}/api/assets/bulk-upload-check", headers=AUTH, json={"assets": assets}, timeout=10
    )


def urlsafe_digest_data() -> bytes:
    """Bytes whose SHA-1 in base64 has a '+' or '/', i.e. a '-' or '_' in the url-safe alphabet."""
    for i in range(1000):
        data = b"urlsafe %d" % i
        if set(base64.b64encode(hashlib.sha1(data).digest()).decode()) & {"+", "/"}:
            return data
    raise AssertionError("no such data")


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
    assert {".jpg", ".heic", ".dng", ".cr3", ".nef", ".arw", ".mpo"} <= set(types["image"])
    assert {".mp4", ".mov", ".mts", ".m2ts", ".3gp", ".mxf", ".ts"} <= set(types["video"])
    assert ".vob" not in types["video"]  # reported, unconfirmed (§5)
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


def test_server_about_needs_a_key(server: ImmichTestServer) -> None:
    refused = requests.get(f"{server.url}/api/server/about", timeout=10)
    assert refused.status_code == 401 and refused.json() == {"message": "Authentication required"}
    about = requests.get(f"{server.url}/api/server/about", headers=AUTH, timeout=10)
    assert about.status_code == 200 and about.json()["version"] == "v3.1.0"
    assert about.json()["versionUrl"].endswith("/v3.1.0")


def test_server_features_are_public(server: ImmichTestServer) -> None:
    for headers in ({}, AUTH):
        response = requests.get(f"{server.url}/api/server/features", headers=headers, timeout=10)
        assert response.status_code == 200
        assert response.json()["trash"] is True and response.json()["sidecar"] is True


def test_server_statistics(server: ImmichTestServer) -> None:
    upload(server, b"12345", filename="a.jpg")
    upload(server, b"1234567890", filename="b.mp4")
    assert requests.get(f"{server.url}/api/server/statistics", timeout=10).status_code == 401
    response = requests.get(f"{server.url}/api/server/statistics", headers=AUTH, timeout=10)
    assert response.status_code == 200
    stats = response.json()
    assert (stats["photos"], stats["videos"], stats["usage"]) == (1, 1, 15)
    assert (stats["usagePhotos"], stats["usageVideos"]) == (5, 10)
    assert stats["usageByUser"][0]["photos"] == 1 and stats["usageByUser"][0]["usage"] == 15


def test_server_statistics_is_an_admin_route() -> None:
    with ImmichTestServer(api_key=KEY, admin=False) as srv:
        response = requests.get(f"{srv.url}/api/server/statistics", headers=AUTH, timeout=10)
        assert response.status_code == 403 and response.json() == {"message": "Forbidden"}


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


@pytest.mark.parametrize(
    "encode",
    [
        lambda d: d.hex(),
        lambda d: d.hex().upper(),
        lambda d: base64.b64encode(d).decode(),
        lambda d: base64.urlsafe_b64encode(d).decode(),
    ],
    ids=["hex", "HEX", "base64", "urlsafe-base64"],
)
def test_checksum_header_answers_duplicate_early(server: ImmichTestServer, encode) -> None:
    data = urlsafe_digest_data()  # its base64 differs between the two alphabets
    existing = server.add_existing_asset(data)
    header = {"x-immich-checksum": encode(hashlib.sha1(data).digest())}
    response = upload(server, b"whatever body", headers=header)
    assert response.status_code == 200 and response.json() == {"id": existing.id, "status": "duplicate"}
    assert server.uploads[-1].status == 200 and server.upload_count() == 0


@pytest.mark.parametrize(
    "header",
    ["0" * 40, "not a checksum", "zz" * 20, "=" * 28, hashlib.sha256(b"new").hexdigest(), ""],
)
def test_wrong_or_malformed_checksum_header_is_not_checked(server: ImmichTestServer, header: str) -> None:
    server.add_existing_asset(b"already there")
    response = upload(server, b"new", headers={"x-immich-checksum": header})
    assert response.status_code == 201 and response.json()["status"] == "created"


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
        ({"isFavorite": "True"}, 400),
        ({"isFavorite": "1"}, 400),
        ({"isFavorite": "false"}, 201),
        ({"visibility": "public"}, 400),
        ({"visibility": "locked"}, 201),
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


def test_filename_field_before_the_sidecar_part_checks_the_sidecar(server: ImmichTestServer) -> None:
    # Immich checks a file part's type by the `filename` field when that field came first, the sidecar too.
    asset = form_part("assetData", b"jpeg 1", filename="photo.jpg")
    sidecar = form_part("sidecarData", b"<xmp/>", filename="photo.jpg.xmp")
    name = form_part("filename", b"photo.jpg")
    before = post_form(server, form_body(*date_parts(), name, asset, sidecar))
    assert before.status_code == 400 and before.json() == {"message": "Unsupported file type photo.jpg"}
    assert server.assets == {} and server.uploads[-1].status == 400
    without = post_form(server, form_body(*date_parts(), asset, sidecar))
    assert without.status_code == 201
    asset2 = form_part("assetData", b"jpeg 2", filename="photo.jpg")
    after = post_form(
        server, form_body(*date_parts(), asset2, sidecar, form_part("filename", b"renamed.jpg"))
    )
    assert after.status_code == 201
    # The DTO is read after multer: a late `filename` does not count for the type check but names the asset.
    assert server.assets[after.json()["id"]].filename == "renamed.jpg"
    assert get_asset(server, after.json()["id"]).json()["originalFileName"] == "renamed.jpg"


def test_late_filename_field_names_the_asset_whatever_its_extension(server: ImmichTestServer) -> None:
    file_part = form_part("assetData", b"jpeg", filename="a.jpg")
    response = post_form(server, form_body(*date_parts(), file_part, form_part("filename", b"notes.txt")))
    assert response.status_code == 201
    assert server.assets[response.json()["id"]].filename == "notes.txt"


def test_empty_sidecar_part(server: ImmichTestServer) -> None:
    files = {"assetData": ("a.jpg", b"jpeg"), "sidecarData": ("a.jpg.xmp", b"")}
    response = requests.post(f"{server.url}/api/assets", headers=AUTH, data=DATES, files=files, timeout=10)
    assert response.status_code == 400 and response.json() == {"message": "File is empty"}
    assert server.assets == {}


@pytest.mark.parametrize(
    ("value", "stored"),
    [("0", 0), ("", 0), ("1500", 1500), ("1e3", 1000), ("0x10", 16), ("1.0", 1), (" 7 ", 7), ("-0", 0)],
)
def test_v3_duration_coerced_like_a_javascript_number(
    server: ImmichTestServer, value: str, stored: int
) -> None:
    response = upload(server, value.encode() + b"-dur", fields={**DATES, "duration": value})
    assert response.status_code == 201, response.text
    assert get_asset(server, response.json()["id"]).json()["duration"] == stored


@pytest.mark.parametrize(
    "value",
    ["0:00:00.000000", "1500.5", "-1", str(2**63), str(2**64), "1e19", "abc", "Infinity", "1_000", "-0x10"],
)
def test_v3_duration_refused(server: ImmichTestServer, value: str) -> None:
    response = upload(server, value.encode() + b"-dur", fields={**DATES, "duration": value})
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "Validation failed" and [e["path"] for e in body["errors"]] == [["duration"]]
    assert server.assets == {}


def test_v3_duration_not_sent_is_null(server: ImmichTestServer) -> None:
    asset_id = upload(server, b"no duration").json()["id"]
    assert get_asset(server, asset_id).json()["duration"] is None


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        "6f1c2d3e-4b5a-1c7d-8e9f-0a1b2c3d4e5f",  # version 1
        "6f1c2d3e-4b5a-7c7d-8e9f-0a1b2c3d4e5f",  # version 7
        "00000000-0000-0000-0000-000000000000",  # nil
        "6f1c2d3e-4b5a-4c7d-0e9f-0a1b2c3d4e5f",  # version 4, but not the RFC variant
    ],
)
def test_v3_live_photo_video_id_must_be_a_uuid_v4(server: ImmichTestServer, value: str) -> None:
    response = upload(server, b"still", fields={**DATES, "livePhotoVideoId": value})
    assert response.status_code == 400
    assert response.json()["message"] == "Validation failed"
    assert response.json()["errors"] == [
        {"code": "invalid_format", "path": ["livePhotoVideoId"], "message": "Invalid UUID"}
    ]


def test_v3_live_photo_video_must_exist_and_be_a_video(server: ImmichTestServer) -> None:
    unknown = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    response = upload(server, b"still", fields={**DATES, "livePhotoVideoId": unknown})
    assert response.status_code == 400 and response.json() == {"message": "Live photo video not found"}
    image_id = upload(server, b"an image", filename="a.jpg").json()["id"]
    response = upload(server, b"still", fields={**DATES, "livePhotoVideoId": image_id})
    assert response.status_code == 400 and response.json() == {"message": "Live photo video must be a video"}
    video_id = upload(server, b"a video", filename="a.mov").json()["id"]
    linked = upload(server, b"still", fields={**DATES, "livePhotoVideoId": video_id})
    assert linked.status_code == 201
    assert get_asset(server, linked.json()["id"]).json()["livePhotoVideoId"] == video_id
    assert (
        get_asset(server, video_id).json()["visibility"] == "hidden"
    )  # Immich hides a linked timeline video


def test_v3_live_photo_check_comes_before_the_duplicate(server: ImmichTestServer) -> None:
    upload(server, b"still")
    unknown = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    again = upload(server, b"still", fields={**DATES, "livePhotoVideoId": unknown})
    assert again.status_code == 400 and again.json() == {"message": "Live photo video not found"}


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("not json", ["metadata"]),
        ("NaN", ["metadata"]),
        ("{}", ["metadata"]),
        ('{"key":"x","value":{}}', ["metadata"]),
        ("[1]", ["metadata", 0]),
        ("[{}]", ["metadata", 0, "key"]),
        ('[{"key":"x","value":1}]', ["metadata", 0, "value"]),
        ('[{"key":"x","value":[]}]', ["metadata", 0, "value"]),
        ('[{"key":"x","value":null}]', ["metadata", 0, "value"]),
        ('[{"key":1,"value":{}}]', ["metadata", 0, "key"]),
    ],
)
def test_v3_metadata_refused(server: ImmichTestServer, value: str, path: list) -> None:
    response = upload(server, b"meta", fields={**DATES, "metadata": value})
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "Validation failed" and body["errors"][0]["path"] == path


@pytest.mark.parametrize("value", ["[]", '[{"key":"mobile-app","value":{"iCloudId":"x"}}]'])
def test_v3_metadata_accepted(server: ImmichTestServer, value: str) -> None:
    assert upload(server, b"meta", fields={**DATES, "metadata": value}).status_code == 201


def test_v3_validation_issues_are_zod_shaped(server: ImmichTestServer) -> None:
    fields = {"fileModifiedAt": "2024-01-02T03:04:05", "isFavorite": "yes", "duration": "x"}
    body = upload(server, b"bad", fields=fields).json()
    assert body["message"] == "Validation failed"
    assert [(e["path"], e["code"]) for e in body["errors"]] == [
        (["fileCreatedAt"], "invalid_type"),
        (["fileModifiedAt"], "invalid_format"),
        (["duration"], "invalid_type"),
        (["isFavorite"], "invalid_value"),
    ]
    assert all(isinstance(e["message"], str) and e["message"] for e in body["errors"])


@pytest.mark.parametrize("name", ["fileCreatedAt", "fileModifiedAt"])
def test_v3_year_0000_is_refused_by_the_database(server: ImmichTestServer, name: str) -> None:
    fields = {**DATES, name: "0000-06-01T00:00:00Z"}
    response = upload(server, b"ancient", fields=fields)
    assert response.status_code == 500 and response.json() == {"message": "Internal server error"}
    assert server.assets == {} and server.uploads[-1].status == 500
    # Not a validation failure: a leap day of year 0000 passes zod as well and fails the same way.
    assert upload(server, b"ancient", fields={**DATES, name: "0000-02-29T00:00Z"}).status_code == 500
    assert upload(server, b"ancient", fields={**DATES, name: "0001-01-01T00:00:00Z"}).status_code == 201


def test_v3_dates_come_back_as_utc_instants(server: ImmichTestServer) -> None:
    fields = {"fileCreatedAt": "2024-01-02T03:04+02:00", "fileModifiedAt": "2024-01-02T03:04:05.123456789Z"}
    asset = get_asset(server, upload(server, b"dated", fields=fields).json()["id"]).json()
    assert asset["fileCreatedAt"] == "2024-01-02T01:04:00.000Z"
    assert asset["fileModifiedAt"] == "2024-01-02T03:04:05.123Z"


@pytest.mark.parametrize(("filename", "kind"), [("a.mpo", "IMAGE"), ("a.MXF", "VIDEO"), ("a.ts", "VIDEO")])
def test_newer_media_types_accepted(server: ImmichTestServer, filename: str, kind: str) -> None:
    response = upload(server, filename.encode(), filename=filename)
    assert response.status_code == 201
    assert get_asset(server, response.json()["id"]).json()["type"] == kind


def test_unconfirmed_media_type_still_refused(server: ImmichTestServer) -> None:
    response = upload(server, b"vob", filename="a.vob")
    assert response.status_code == 400 and response.json() == {"message": "Unsupported file type a.vob"}


def test_v3_locked_asset_is_not_readable_by_api_key(server: ImmichTestServer) -> None:
    locked = upload(server, b"secret", fields={**DATES, "visibility": "locked"})
    assert locked.status_code == 201
    response = get_asset(server, locked.json()["id"])
    assert response.status_code == 400 and response.json() == {"message": "Not found or no asset.read access"}
    assert get_asset(server, upload(server, b"open").json()["id"]).status_code == 200
    # Its checksum is still the user's: the upload and bulk-upload-check both find it.
    assert upload(server, b"secret").json() == {"id": locked.json()["id"], "status": "duplicate"}
    result = bulk_check(server, [{"id": "x", "checksum": hashlib.sha1(b"secret").hexdigest()}]).json()
    assert result["results"][0]["assetId"] == locked.json()["id"]


def test_request_heads_compile_no_pattern_per_multipart_boundary(
    server: ImmichTestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python's email parser (http.server's header parser) compiles a pattern for each new multipart boundary,
    # though a request's head has no body: a cost per upload for clients that make a boundary per request
    # (curl, ours, requests) that a real Immich does not charge, on the cores a benchmark shares with it.
    patterns: list[object] = []
    real_compile = re.compile
    monkeypatch.setattr(
        re, "compile", lambda pattern, *a: patterns.append(pattern) or real_compile(pattern, *a)
    )
    for n in range(3):
        assert upload(server, b"photo %d" % n).status_code == 201
    assert len(server.uploads) == 3
    assert [p for p in patterns if "(?P<sep>" in str(p)] == []


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


def test_request_delay_holds_every_answer() -> None:
    with ImmichTestServer(api_key=KEY, request_delay_s=0.2) as srv:
        for call in (
            lambda: requests.get(f"{srv.url}/api/server/ping", timeout=10),
            lambda: requests.get(f"{srv.url}/api/users/me", timeout=10),  # refused (no key): delayed as well
            lambda: upload(srv, b"delayed"),
        ):
            started = time.monotonic()
            call()
            assert time.monotonic() - started >= 0.2
        assert srv.upload_count() == 1
    assert srv.errors == []


def test_stand_in_uploads_route_lists_what_was_received(server: ImmichTestServer) -> None:
    assert upload(server, b"first").status_code == 201
    assert upload(server, b"first").status_code == 200  # the whole body again, a duplicate after it
    assert upload(server, b"", "empty.jpg").status_code == 400
    response = requests.get(f"{server.url}/__stand-in__/uploads", timeout=10)  # no key needed
    assert response.status_code == 200
    sha1 = hashlib.sha1(b"first").hexdigest()
    assert response.json() == [
        {"sha1": sha1, "status": 201, "size": 5},
        {"sha1": sha1, "status": 200, "size": 5},
        {"sha1": hashlib.sha1(b"").hexdigest(), "status": 400, "size": 0},
    ]
    assert response.json() == [
        {"sha1": u.sha1_hex, "status": u.status, "size": u.size_bytes} for u in server.uploads
    ]
    # Outside /api: the Immich routes are untouched, and nothing under /api answers it.
    assert requests.get(f"{server.url}/api/__stand-in__/uploads", headers=AUTH, timeout=10).status_code == 404


def _raw_request(srv: ImmichTestServer, head: str) -> tuple[int, dict[str, str]]:
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}


def test_every_v3_response_carries_a_correlation_id(server: ImmichTestServer) -> None:
    answers: list[requests.Response] = [
        requests.get(f"{server.url}/api/server/ping", timeout=10),
        requests.get(f"{server.url}/.well-known/immich", timeout=10),
        requests.get(f"{server.url}/api/nope", headers=AUTH, timeout=10),  # 404
        requests.get(f"{server.url}/api/users/me", timeout=10),  # 401
        upload(server, b"cid"),  # 201
        upload(server, b"cid"),  # 200 duplicate
        upload(server, b"cid", fields={}),  # 400 validation
        upload(server, b"x", filename="x.txt"),  # 400 type
        upload(server, b"cid", fields={**DATES, "fileCreatedAt": "0000-01-01T00:00:00Z"}),  # 500
        bulk_check(server, []),  # 500
    ]
    server.faults.add(status=503, retry_after_s=1)
    answers.append(requests.get(f"{server.url}/api/server/ping", timeout=10))
    server.faults.add(status=502, html=True)
    answers.append(requests.get(f"{server.url}/api/server/ping", timeout=10))
    ids = [r.headers.get("X-Correlation-ID") for r in answers]
    assert all(ids), [(r.status_code, i) for r, i in zip(answers, ids, strict=True)]
    assert len(set(ids)) == len(ids)  # one per request
    assert all("x-immich-cid" not in r.headers for r in answers)
    # Broken framing is answered too.
    status, headers = _raw_request(
        server, "POST /api/assets HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"
    )
    assert status == 400 and headers.get("x-correlation-id")


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


def test_bulk_upload_check_url_safe_base64(server: ImmichTestServer) -> None:
    data = urlsafe_digest_data()
    existing = server.add_existing_asset(data)
    checksum = base64.urlsafe_b64encode(hashlib.sha1(data).digest()).decode()
    assert "-" in checksum or "_" in checksum
    results = bulk_check(server, [{"id": "u", "checksum": checksum}]).json()["results"]
    assert results == [
        {"id": "u", "action": "reject", "reason": "duplicate", "assetId": existing.id, "isTrashed": False}
    ]


def test_v3_bulk_upload_check_with_no_assets_is_a_500(server: ImmichTestServer) -> None:
    response = bulk_check(server, [])
    assert response.status_code == 500 and response.json() == {"message": "Failed to check bulk upload"}
    assert response.headers["X-Correlation-ID"]


def test_v2_bulk_upload_check_with_no_assets_is_unchanged() -> None:
    with ImmichTestServer(api_key=KEY, version=(2, 7, 5)) as srv:
        response = bulk_check(srv, [])
        assert response.status_code == 200 and response.json() == {"results": []}


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


def test_standalone_process_delay_ms_and_uploads_route() -> None:
    command = [sys.executable, str(SERVER_SCRIPT), "--port", "0", "--api-key", KEY, "--delay-ms", "150"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "server did not print READY"
        url = proc.stdout.readline().split()[1]
        started = time.monotonic()
        assert requests.get(f"{url}/api/server/ping", timeout=5).status_code == 200
        assert time.monotonic() - started >= 0.15
        response = requests.post(
            f"{url}/api/assets",
            headers=AUTH,
            data=DATES,
            files={"assetData": ("photo.jpg", b"bytes", "application/octet-stream")},
            timeout=10,
        )
        assert response.status_code == 201
        sha1 = hashlib.sha1(b"bytes").hexdigest()
        uploads = requests.get(f"{url}/__stand-in__/uploads", timeout=5).json()
        assert uploads == [{"sha1": sha1, "status": 201, "size": 5}]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- servers that go silent, answer late, or speak TLS (the client's transport tests use these) -----------


def _request_to_stall(srv: ImmichTestServer, body: bytes) -> socket.socket:
    host, port = srv.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST /api/assets/bulk-upload-check HTTP/1.1\r\nHost: x\r\nx-api-key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


@pytest.mark.parametrize("stage", ["before_body", "after_body"])
def test_fault_stall_takes_the_request_and_never_answers(server: ImmichTestServer, stage: str) -> None:
    server.faults.add(stall=stage, path="/api/assets/bulk-upload-check")
    sock = _request_to_stall(server, b'{"assets": []}')
    try:
        assert select.select([sock], [], [], 0.5)[0] == []  # silent, the connection open
        assert requests.get(f"{server.url}/api/server/ping", timeout=10).status_code == 200  # others answered
        server.release_stalled()
        sock.settimeout(10)
        assert sock.recv(100) == b""  # closed without an answer
    finally:
        sock.close()
    with pytest.raises(ValueError, match="stall"):
        server.faults.add(stall="sometimes")


def test_fault_hold_answers_only_when_released(server: ImmichTestServer) -> None:
    released = threading.Event()
    server.faults.add(hold=released, path="/api/assets", method="POST")
    answers: list[requests.Response] = []
    sender = threading.Thread(target=lambda: answers.append(upload(server, b"\xff\xd8 held")))
    sender.start()
    deadline = time.monotonic() + 10
    while not server.assets and time.monotonic() < deadline:  # stored: the body was read and handled
        time.sleep(0.01)
    assert server.assets and answers == []
    released.set()
    sender.join(10)
    assert answers[0].status_code == 201


def test_tls_with_the_certificate_given(tls_files: TlsFiles) -> None:
    with ImmichTestServer(api_key=KEY, tls=(str(tls_files.cert), str(tls_files.key))) as srv:
        assert srv.url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{srv.url}/api/server/ping", timeout=10, verify=str(tls_files.other_cert))
        answer = requests.get(f"{srv.url}/api/server/ping", timeout=10, verify=str(tls_files.cert))
        assert answer.json() == {"res": "pong"}
    assert srv.errors == []


def test_bulk_update_of_assets_answers_204_and_changes_exif_at_once(server: ImmichTestServer) -> None:
    """§7c: PUT /api/assets with ids and fields answers 204; exifInfo's date, place and description change at
    once, favorite and visibility too, and updatedAt moves."""
    asset_id = upload(server, b"update me").json()["id"]
    before = requests.get(f"{server.url}/api/assets/{asset_id}", headers=AUTH, timeout=10).json()
    assert before["exifInfo"] == {
        "dateTimeOriginal": "2024-01-02T03:04:05.000Z", "latitude": None, "longitude": None, "description": "",
        "rating": None,
    }  # fmt: skip
    fields = {"isFavorite": True, "visibility": "archive", "dateTimeOriginal": "2015-07-02T03:04:05.000Z",
              "latitude": -33.85, "longitude": 151.2, "description": "From Google"}  # fmt: skip
    answer = requests.put(
        f"{server.url}/api/assets", headers=AUTH, json={"ids": [asset_id], **fields}, timeout=10
    )
    assert answer.status_code == 204 and answer.content == b""
    after = requests.get(f"{server.url}/api/assets/{asset_id}", headers=AUTH, timeout=10).json()
    assert after["isFavorite"] is True and after["visibility"] == "archive"
    assert after["exifInfo"] == {
        "dateTimeOriginal": "2015-07-02T03:04:05.000Z", "latitude": -33.85, "longitude": 151.2,
        "description": "From Google", "rating": None,
    }  # fmt: skip
    assert after["updatedAt"] > before["updatedAt"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"ids": ["not-a-uuid"], "isFavorite": True}, 400, "Validation failed"),
        ({"ids": [], "isFavorite": "true"}, 400, "Validation failed"),
        ({"ids": [], "visibility": "gone"}, 400, "Validation failed"),
        ({"ids": [], "latitude": 95}, 400, "Validation failed"),
        ({"ids": [], "dateTimeOriginal": "2015-07-02 03:04:05"}, 400, "Validation failed"),
        (
            {"ids": ["1c0ffee0-0000-4000-8000-000000000000"], "isFavorite": True},
            400,
            "Not found or no asset.update access",
        ),
        ({"ids": [], "isFavorite": True}, 204, None),
    ],
)
def test_bulk_update_refuses_what_zod_and_access_checks_refuse(
    server: ImmichTestServer, body: dict[str, object], status: int, message: str | None
) -> None:
    answer = requests.put(f"{server.url}/api/assets", headers=AUTH, json=body, timeout=10)
    assert answer.status_code == status
    if message:
        assert answer.json()["message"] == message
    assert server.updates == ([] if status != 204 else [([], body)])


def test_a_sidecar_s_place_date_and_description_are_the_asset_s_exif(server: ImmichTestServer) -> None:
    """Immich reads a sidecar with exiftool: its values are what GET /api/assets/{id} shows in exifInfo."""
    xmp = (
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>"
        b"<rdf:Description rdf:about='' xmlns:exif='http://ns.adobe.com/exif/1.0/' "
        b"xmlns:dc='http://purl.org/dc/elements/1.1/' exif:GPSLatitude='41,53.412000N' "
        b"exif:GPSLongitude='12,29.532000W' exif:DateTimeOriginal='2019-05-02T03:04:05+00:00'>"
        b"<dc:description><rdf:Alt><rdf:li xml:lang='x-default'>Caf&amp;e</rdf:li></rdf:Alt></dc:description>"
        b"</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    answer = requests.post(
        f"{server.url}/api/assets",
        headers=AUTH,
        data=DATES,
        files={
            "assetData": ("p.jpg", b"with sidecar", "image/jpeg"),
            "sidecarData": ("p.jpg.xmp", xmp, "application/xml"),
        },
        timeout=10,
    )
    exif = requests.get(f"{server.url}/api/assets/{answer.json()['id']}", headers=AUTH, timeout=10).json()[
        "exifInfo"
    ]
    assert exif["dateTimeOriginal"] == "2019-05-02T03:04:05.000Z" and exif["description"] == "Caf&e"
    assert (round(exif["latitude"], 4), round(exif["longitude"], 4)) == (41.8902, -12.4922)


# --- tags, copy, single-asset updates, stacks, trash (§7c; answers of a real v3.1.0, 2026-12-04) ----------------


def put(srv: ImmichTestServer, path: str, body: object) -> requests.Response:
    return requests.put(f"{srv.url}/api{path}", headers=AUTH, json=body, timeout=10)


def test_tags_upsert_as_a_hierarchy_and_tag_assets_counting_new_pairs(server: ImmichTestServer) -> None:
    """PUT /api/tags makes each value's tag with its parents (reused next time); PUT /api/tags/assets counts
    the (tag, asset) pairs it added and passes over ids the user may not tag, as a real v3.1.0 answered."""
    photo = upload(server, b"tag me").json()["id"]
    first = put(server, "/tags", {"tags": ["Trips/2019/Paris", "Family", "Family"]})
    assert first.status_code == 200
    assert [(t["name"], t["value"]) for t in first.json()] == [
        ("Paris", "Trips/2019/Paris"),
        ("Family", "Family"),
    ]
    assert "parentId" in first.json()[0] and "parentId" not in first.json()[1]
    again = put(server, "/tags", {"tags": ["Trips/2019/Paris"]}).json()
    assert (
        again[0]["id"] == first.json()[0]["id"] and len(server.tags) == 4
    )  # Trips, Trips/2019, its Paris, Family
    assert [t["value"] for t in put(server, "/tags", {"tags": ["/a//b/", ""]}).json()] == ["a/b"]
    ids = [t["id"] for t in first.json()]
    unknown = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    assert put(server, "/tags/assets", {"tagIds": ids, "assetIds": [photo, unknown]}).json() == {"count": 2}
    assert put(server, "/tags/assets", {"tagIds": ids, "assetIds": [photo]}).json() == {"count": 0}
    assert put(server, "/tags/assets", {"tagIds": [unknown], "assetIds": [photo]}).json() == {"count": 0}
    assert put(server, "/tags/assets", {"tagIds": ["x"], "assetIds": []}).status_code == 400
    tags = get_asset(server, photo).json()["tags"]
    assert [t["value"] for t in tags] == ["Trips/2019/Paris", "Family"]


def test_copy_carries_albums_favorite_stack_and_sidecar_but_not_tags_or_visibility(
    server: ImmichTestServer,
) -> None:
    old = requests.post(
        f"{server.url}/api/assets", headers=AUTH, data={**DATES, "isFavorite": "true"},
        files={"assetData": ("a.jpg", b"old"), "sidecarData": ("a.jpg.xmp", b"<x/>")}, timeout=10,
    ).json()["id"]  # fmt: skip
    raw = upload(server, b"raw", filename="a.dng").json()["id"]
    new = upload(server, b"new").json()["id"]
    album = requests.post(
        f"{server.url}/api/albums", headers=AUTH, json={"albumName": "A", "assetIds": [old]}
    )
    stack = requests.post(f"{server.url}/api/stacks", headers=AUTH, json={"assetIds": [old, raw]}).json()
    tag = put(server, "/tags", {"tags": ["T"]}).json()[0]["id"]
    put(server, "/tags/assets", {"tagIds": [tag], "assetIds": [old]})
    put(server, f"/assets/{old}", {"visibility": "archive", "description": "d", "rating": 4})
    answer = put(server, "/assets/copy", {"sourceId": old, "targetId": new})
    assert answer.status_code == 204 and answer.content == b""
    copied = get_asset(server, new).json()
    assert copied["isFavorite"] is True and server.albums[album.json()["id"]].asset_ids == [old, new]
    assert copied["stack"] == {"id": stack["id"], "primaryAssetId": old, "assetCount": 3}
    assert server.assets[new].sidecar_sha1 == hashlib.sha1(b"<x/>").hexdigest()
    assert copied["tags"] == [] and copied["visibility"] == "timeline"
    assert copied["exifInfo"]["description"] == "" and copied["exifInfo"]["rating"] is None


def test_a_second_copy_between_assets_of_one_stack_deletes_the_stack(server: ImmichTestServer) -> None:
    """A real v3.1.0 merges the source's stack into the target's and deletes the source's: when both are the
    same stack (a copy done twice), the stack is gone."""
    old, raw, new = (upload(server, data).json()["id"] for data in (b"old", b"raw", b"new"))
    stack = requests.post(f"{server.url}/api/stacks", headers=AUTH, json={"assetIds": [old, raw]}).json()
    put(server, "/assets/copy", {"sourceId": old, "targetId": new})
    assert get_asset(server, new).json()["stack"]["id"] == stack["id"]
    put(server, "/assets/copy", {"sourceId": old, "targetId": new})
    assert get_asset(server, raw).json()["stack"] is None and server.stacks == {}
    put(server, "/assets/copy", {"sourceId": old, "targetId": new, "stack": False})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sourceId": "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"}, "Not found or no asset.copy access"),
        ({"sourceId": None}, "Source and target id must be distinct"),
        ({"sourceId": "not-a-uuid"}, "Validation failed"),
        ({"albums": "yes"}, "Validation failed"),
    ],
)
def test_copy_refuses_what_a_real_server_refuses(server: ImmichTestServer, body: dict, message: str) -> None:
    target = upload(server, b"target").json()["id"]
    payload = {"sourceId": target, "targetId": target, **body}
    if payload["sourceId"] is None:
        payload["sourceId"] = target
    answer = put(server, "/assets/copy", payload)
    assert answer.status_code == 400 and answer.json()["message"] == message


def test_put_asset_links_a_live_photo_and_refuses_what_immich_refuses(server: ImmichTestServer) -> None:
    photo = upload(server, b"still").json()["id"]
    clip = upload(server, b"motion", filename="IMG_1.MOV").json()["id"]
    assert put(server, f"/assets/{photo}", {"livePhotoVideoId": photo}).json() == {
        "message": "Live photo video must be a video"
    }
    partner = server.add_existing_asset(
        b"partner's clip", "p.mov", owner_id="7e57a55e-0000-4000-8000-000000000001"
    )
    refused = put(server, f"/assets/{photo}", {"livePhotoVideoId": partner.id})
    assert refused.status_code == 400 and refused.json() == {
        "message": "Live photo video does not belong to the user"
    }
    upload_refused = upload(server, b"still 2", fields={**DATES, "livePhotoVideoId": partner.id})
    assert upload_refused.json() == {"message": "Live photo video does not belong to the user"}
    linked = put(server, f"/assets/{photo}", {"livePhotoVideoId": clip})
    assert linked.status_code == 200 and linked.json()["livePhotoVideoId"] == clip
    assert get_asset(server, clip).json()["visibility"] == "hidden"
    zero = put(server, f"/assets/{photo}", {"rating": 0})
    assert zero.status_code == 400 and zero.json()["errors"][0]["path"] == ["rating"]
    assert (
        put(server, f"/assets/{photo}", {"rating": 5, "description": "x"}).json()["exifInfo"]["rating"] == 5
    )
    unknown = put(server, "/assets/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f", {"rating": 5})
    assert unknown.json() == {"message": "Not found or no asset.update access"}


def test_stack_primary_is_changed_and_trash_refuses_an_id_it_may_not_delete(server: ImmichTestServer) -> None:
    a, b = upload(server, b"a").json()["id"], upload(server, b"b").json()["id"]
    stack = requests.post(f"{server.url}/api/stacks", headers=AUTH, json={"assetIds": [a, b]}).json()["id"]
    assert put(server, f"/stacks/{stack}", {"primaryAssetId": b}).json()["primaryAssetId"] == b
    outsider = upload(server, b"c").json()["id"]
    assert put(server, f"/stacks/{stack}", {"primaryAssetId": outsider}).json() == {
        "message": "Primary asset must be in the stack"
    }
    assert (
        put(server, "/stacks/6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f", {"primaryAssetId": b}).status_code == 400
    )
    unknown = "6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    refused = requests.delete(
        f"{server.url}/api/assets", headers=AUTH, json={"ids": [a, unknown]}, timeout=10
    )
    assert refused.status_code == 400 and refused.json() == {"message": "Not found or no asset.delete access"}
    assert not server.assets[a].is_trashed
    for _ in range(2):  # trashing one already in the trash is no error
        done = requests.delete(f"{server.url}/api/assets", headers=AUTH, json={"ids": [a]}, timeout=10)
        assert done.status_code == 204
    assert get_asset(server, a).json()["isTrashed"] is True


def search(srv: ImmichTestServer, **body: object) -> requests.Response:
    return requests.post(f"{srv.url}/api/search/metadata", headers=AUTH, json=body, timeout=10)


def test_search_by_tag_finds_assets_with_it_or_one_below_it_a_page_at_a_time(
    server: ImmichTestServer,
) -> None:
    ids = [upload(server, f"photo {n}".encode()).json()["id"] for n in range(5)]
    trips, paris = (t["id"] for t in put(server, "/tags", {"tags": ["Trips", "Trips/Paris"]}).json())
    put(server, "/tags/assets", {"tagIds": [trips], "assetIds": ids[:2]})
    put(server, "/tags/assets", {"tagIds": [paris], "assetIds": ids[2:4]})
    first = search(server, tagIds=[trips], size=3, page=1).json()["assets"]
    second = search(server, tagIds=[trips], size=3, page=2).json()["assets"]
    assert first["nextPage"] == "2" and second["nextPage"] is None
    assert {a["id"] for a in first["items"] + second["items"]} == set(ids[:4])  # Paris is below Trips
    assert {a["id"] for a in search(server, tagIds=[paris], size=10).json()["assets"]["items"]} == set(
        ids[2:4]
    )
    assert search(server, tagIds=[trips], size=1001).json()["errors"][0]["path"] == ["size"]
    assert (
        search(server, tagIds=[trips], createdAfter="2999-01-01T00:00:00.000Z").json()["assets"]["items"]
        == []
    )


def test_a_new_assets_metadata_extraction_can_drop_the_tags_given_meanwhile(server: ImmichTestServer) -> None:
    """As observed on v3.1.0: the job that reads a new asset's metadata replaces its tags with the list it read
    a moment before; the stand-in plays that job on the first tagging after an upload, when asked to."""
    server.extraction_drops_tags = True
    asset = upload(server, b"fresh").json()["id"]
    tag = put(server, "/tags", {"tags": ["T"]}).json()[0]["id"]
    assert put(server, "/tags/assets", {"tagIds": [tag], "assetIds": [asset]}).json() == {"count": 1}
    assert get_asset(server, asset).json()["tags"] == []  # lost
    assert put(server, "/tags/assets", {"tagIds": [tag], "assetIds": [asset]}).json() == {"count": 1}
    assert [t["value"] for t in get_asset(server, asset).json()["tags"]] == ["T"]
