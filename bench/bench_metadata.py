#!/usr/bin/env python3
"""Metadata agreement: the date taken (with sub-seconds and offset), camera make and model, GPS and image size
the tool reads, next to the `exifInfo` a real Immich v3.1.0 shows for the same files.

The files are tests/media_corpus.py's samples (EXIF with and without offsets and sub-seconds, XMP-only dates,
maker notes, GPS in odd forms, damaged EXIF, TIFF, PNG, WebP, HEIC, QuickTime). What the real server showed
for them is kept in tests/data/immich_exif.json, which the test suite holds the reader against; this script
makes that file (`--fetch`, needs a real server) and prints the agreement per field (no server needed).

  --fetch   upload the samples to the real Immich named by IMMICH_BENCH_URL and IMMICH_BENCH_KEY (an admin
            key; it creates a user of its own, metadata-bench@example.com, and uploads as that user), wait
            for its metadata extraction, and write tests/data/immich_exif.json. Each upload sends the file's
            mtime (2001-02-03 04:05:06 UTC) as fileCreatedAt, so a file in which Immich found no date shows it.
  --exiftool-only / --no-exiftool   read with the fast reader alone, or with exiftool too (the default: as
            the tool reads, exiftool where it is installed).

    IMMICH_BENCH_URL=http://127.0.0.1:2283 IMMICH_BENCH_KEY=... .venv/bin/python bench/bench_metadata.py --fetch
    .venv/bin/python bench/bench_metadata.py [--show-all]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from tests.media_corpus import (  # noqa: E402
    CORPUS_MTIME,
    EXPECTED_PATH,
    FIELDS,
    build_corpus,
    compare,
    immich_facts,
    reader_facts,
)

BENCH_USER = {"email": "metadata-bench@example.com", "password": "metadata-bench", "name": "Metadata bench"}
EXTRACTION_TIMEOUT_S = 600


class Api:
    def __init__(self, url: str, key: str | None = None, token: str | None = None) -> None:
        self.url, self.key, self.token = url.rstrip("/") + "/api", key, token

    def call(
        self, method: str, path: str, body: Any = None, data: bytes | None = None, content_type: str = ""
    ) -> Any:
        headers = {"accept": "application/json"}
        if self.key:
            headers["x-api-key"] = self.key
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        if body is not None:
            data, content_type = json.dumps(body).encode(), "application/json"
        if content_type:
            headers["content-type"] = content_type
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                text = response.read()
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{method} {path}: {exc.code} {exc.read()[:300]!r}") from None
        return json.loads(text) if text else None


def bench_user_key(admin: Api) -> str:
    """An API key of the bench's own user (created once), so its uploads count apart from everyone else's."""
    users = admin.call("GET", "/admin/users")
    if not any(u["email"] == BENCH_USER["email"] for u in users):
        admin.call("POST", "/admin/users", {**BENCH_USER, "shouldChangePassword": False})
    login = Api(admin.url[:-4]).call("POST", "/auth/login", {k: BENCH_USER[k] for k in ("email", "password")})
    session = Api(admin.url[:-4], token=login["accessToken"])
    return session.call(
        "POST", "/api-keys", {"name": f"metadata-bench {uuid.uuid4()}", "permissions": ["all"]}
    )["secret"]


def upload(api: Api, path: Path) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(CORPUS_MTIME))
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in (
        ("deviceAssetId", f"metadata-bench-{path.name}"),
        ("deviceId", "metadata-bench"),
        ("fileCreatedAt", when),
        ("fileModifiedAt", when),
    ):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="assetData"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    answer = api.call("POST", "/assets", data=body, content_type=f"multipart/form-data; boundary={boundary}")
    return answer["id"]


def wait_for_extraction(admin: Api, user: Api, ids: dict[str, str]) -> dict[str, Any]:
    """Every asset once the metadata queue is idle and each shows an exifInfo."""
    deadline = time.monotonic() + EXTRACTION_TIMEOUT_S
    while time.monotonic() < deadline:
        queues = admin.call("GET", "/jobs")
        counts = queues["metadataExtraction"]["jobCounts"]
        busy = counts["active"] + counts["waiting"] + counts.get("delayed", 0)
        assets = {name: user.call("GET", f"/assets/{asset_id}") for name, asset_id in ids.items()}
        if not busy and all(a.get("exifInfo") for a in assets.values()):
            return assets
        time.sleep(2)
    raise SystemExit(f"metadata extraction not done in {EXTRACTION_TIMEOUT_S} s")


def fetch(url: str, key: str, folder: Path) -> None:
    admin = Api(url, key=key)
    user = Api(url, key=bench_user_key(admin))
    paths = build_corpus(folder)
    ids = {}
    for path in paths:
        ids[path.name] = upload(user, path)
    assets = wait_for_extraction(admin, user, ids)
    expected = {}
    for name, asset in sorted(assets.items()):
        exif = asset["exifInfo"]
        expected[name] = {
            "dateTimeOriginal": exif.get("dateTimeOriginal"),
            "timeZone": exif.get("timeZone"),
            "localDateTime": asset.get("localDateTime"),
            "make": exif.get("make"),
            "model": exif.get("model"),
            "latitude": exif.get("latitude"),
            "longitude": exif.get("longitude"),
            "exifImageWidth": exif.get("exifImageWidth"),
            "exifImageHeight": exif.get("exifImageHeight"),
        }
    user.call("DELETE", "/assets", {"ids": list(ids.values()), "force": True})
    version = admin.call("GET", "/server/version")
    document = {
        "server": f"Immich v{version['major']}.{version['minor']}.{version['patch']}",
        "fetched": time.strftime("%Y-%m-%d"),
        "assets": expected,
    }
    EXPECTED_PATH.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
    print(f"wrote {EXPECTED_PATH} ({len(expected)} files, {document['server']})")


def report(folder: Path, use_exiftool: bool | None, show_all: bool) -> int:
    expected = json.loads(EXPECTED_PATH.read_text())["assets"]
    paths = build_corpus(folder)
    agree = dict.fromkeys(FIELDS, 0)
    total = dict.fromkeys(FIELDS, 0)
    lines = []
    for path in paths:
        if path.name not in expected:
            continue
        theirs = immich_facts(expected[path.name])
        ours = reader_facts(path, use_exiftool)
        for field, same, shown in compare(ours, theirs):
            total[field] += 1
            agree[field] += same
            if show_all or not same:
                lines.append(f"  {'  ' if same else '✗ '}{path.name:32} {field:10} {shown}")
    print(
        f"Metadata agreement with {json.loads(EXPECTED_PATH.read_text())['server']} on {len(expected)} files"
    )
    for field in FIELDS:
        print(f"  {field:12} {agree[field]:3}/{total[field]:3}")
    facts, same = sum(total.values()), sum(agree.values())
    print(f"  {'all':12} {same:3}/{facts:3} = {100 * same / facts:.1f}%")
    if lines:
        print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetch", action="store_true", help="ask the real Immich (IMMICH_BENCH_URL/KEY)")
    parser.add_argument("--show-all", action="store_true", help="list agreeing facts too")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-exiftool", action="store_true", help="the fast reader alone")
    group.add_argument("--exiftool", action="store_true", help="exiftool where the fast reader needs it")
    args = parser.parse_args()
    use_exiftool = False if args.no_exiftool else True if args.exiftool else None
    with tempfile.TemporaryDirectory(prefix="bench_metadata_") as tmp:
        if args.fetch:
            url, key = os.environ.get("IMMICH_BENCH_URL", ""), os.environ.get("IMMICH_BENCH_KEY", "")
            if not (url and key):
                parser.error("--fetch needs IMMICH_BENCH_URL and IMMICH_BENCH_KEY (an admin key)")
            fetch(url, key, Path(tmp) / "upload")
        return report(Path(tmp) / "read", use_exiftool, args.show_all)


if __name__ == "__main__":
    sys.exit(main())
