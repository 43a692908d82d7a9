#!/usr/bin/env python3
"""Takeout benchmark: a 50,000-photo Google Photos export in 10 zip parts, imported by sync_upload.py --takeout,
then imported again unchanged.

The export is built once under /tmp (kept for the next run: --rebuild makes it anew) from small real JPEGs, each
with its own date in its JSON, with the quirks real exports have: `.supplemental-metadata.json` and plain
`.json` names, names Google cut to 46 characters, counters on the JSON side (`IMG(1).jpg` with
`IMG.jpg.supplemental-metadata(1).json`), edited copies that take their original's JSON, photos without a
JSON, favorites, archived and trashed photos, JSONs that fall into the next part, and album folders (with
their `metadata.json`) holding copies of year-folder photos. The stand-in server (tests/immich_server.py) runs
as its own process, as in bench_upload.py; our script runs as a real subprocess with its database in a temp
folder, and its peak RSS counts its helper processes.

Printed: wall time and peak RSS of the first import and of the unchanged rerun; how many zip members each run
opened (counted by a sitecustomize hook around zipfile.ZipFile.open, so it counts any version of the tool
alike: a rerun should open none); whether every photo arrived once and with its own JSON's date; immich-go's
reported figure (300 MB peak for a 30,000-photo Takeout) beside ours. Nothing is asserted; exit status 0.

    .venv/bin/python bench/bench_takeout.py [--photos 50000] [--parts 10] [--rebuild] [--stand-in PATH]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
sys.path.insert(0, str(PROJECT_DIR / "bench"))

from bench_upload import (  # noqa: E402
    API_KEY,
    PYTHON,
    Measured,
    Server,
    child_environment,
    run_measured,
    warm_bytecode,
)

ROOT = "Takeout/Google Photos"
MB = 1_000_000
IMMICH_GO_REFERENCE = "immich-go: 300 MB peak RSS for a 30,000-photo Takeout (reported by its users)"
ALBUMS = 20
ALBUM_COPIES = 100  # per album: copies of year-folder photos, without a JSON of their own
FORMAT_VERSION = "3"  # bump when the export's layout changes: a kept export of another layout is rebuilt
OPENS_HOOK = """
import atexit, itertools, os, zipfile
_opens = itertools.count()
_open = zipfile.ZipFile.open
def _counted(self, name, *args, **kwargs):
    next(_opens)
    return _open(self, name, *args, **kwargs)
zipfile.ZipFile.open = _counted
atexit.register(lambda: open(os.environ["BENCH_MEMBER_OPENS"], "w").write(str(next(_opens))))
"""


@dataclass
class Photo:
    folder: str
    name: str
    data: bytes
    json_name: str | None
    title: str
    taken: datetime
    extra: dict[str, object]


def tiny_jpeg(n: int) -> bytes:
    """A real 16x16 JPEG, different for every n (no EXIF date: its date comes from its JSON)."""
    from PIL import Image

    out = io.BytesIO()
    image = Image.new("RGB", (16, 16), (n % 256, (n >> 8) % 256, (n >> 16) % 256))
    image.putpixel((n % 16, (n >> 4) % 16), ((n * 7) % 256, 255 - n % 256, 128))
    image.save(
        out, "JPEG", quality=85, comment=f"bench photo {n}".encode()
    )  # distinct bytes whatever JPEG rounds
    return out.getvalue()


def plan(photos: int) -> list[Photo]:
    """The export's photos, in Google's folder order, with every naming quirk in fixed proportions."""
    made: list[Photo] = []
    i = 0
    while len(made) < photos:
        year = 2005 + i % 20
        folder = f"Photos from {year}"
        taken = datetime(year, 1 + i % 12, 1 + i % 28, i % 24, i % 60, i % 60, tzinfo=timezone.utc)
        extra: dict[str, object] = {}
        if i % 7 == 0:
            extra["favorited"] = True
        if i % 50 == 3:
            extra["archived"] = True
        if i % 500 == 11:
            extra["trashed"] = True
        kind = i % 20
        data = tiny_jpeg(len(made))
        if kind <= 10:
            name = f"IMG_{i:06d}.jpg"
            made.append(Photo(folder, name, data, f"{name}.supplemental-metadata.json", name, taken, extra))
        elif kind <= 13:
            name = f"PXL_{i:06d}.jpg"
            made.append(Photo(folder, name, data, f"{name}.json", name, taken, extra))
        elif kind <= 15:
            name = f"Screenshot_{i:06d}_from_a_messenger_application_with_a_long_name.jpg"
            cut = (name + ".supplemental-metadata")[:46] + ".json"
            made.append(Photo(folder, name, data, cut, name, taken, extra))
        elif kind == 16:
            title = f"DSC_{i:06d}.jpg"
            made.append(
                Photo(
                    folder,
                    f"DSC_{i:06d}(1).jpg",
                    data,
                    f"{title}.supplemental-metadata(1).json",
                    title,
                    taken,
                    extra,
                )
            )
        elif kind == 17:
            name = f"IMG_{i:06d}.jpg"
            made.append(Photo(folder, name, data, f"{name}.supplemental-metadata.json", name, taken, extra))
            if len(made) < photos:  # its edited copy: other bytes, the original's JSON
                made.append(
                    Photo(
                        folder,
                        f"IMG_{i:06d}-edited.jpg",
                        tiny_jpeg(len(made)),
                        None,
                        name,
                        taken,
                        {"edited": True},
                    )
                )
        else:
            made.append(Photo(folder, f"MISC_{i:06d}.jpg", data, None, "", taken, {"no_json": True}))
        i += 1
    return made


def google_json(photo: Photo) -> bytes:
    data: dict[str, object] = {
        "title": photo.title,
        "description": "",
        "imageViews": "0",
        "creationTime": {"timestamp": "1700000000", "formatted": "Nov 14, 2023"},
        "photoTakenTime": {"timestamp": str(int(photo.taken.timestamp())), "formatted": "…"},
        "geoData": {"latitude": 0.0, "longitude": 0.0, "altitude": 0.0},
        "url": "https://photos.google.com/photo/x",
        **{k: v for k, v in photo.extra.items() if k in ("favorited", "archived", "trashed")},
    }
    return json.dumps(data).encode()


def build_export(target: Path, photos: int, parts: int) -> dict[str, object]:
    """Write the export's zips into `target` (members in Google's order, split evenly by count); returns what
    the import should do: every photo once (but Google's trash), each with its JSON's date."""
    planned = plan(photos)
    members: list[tuple[str, bytes]] = []
    for photo in planned:
        members.append((f"{ROOT}/{photo.folder}/{photo.name}", photo.data))
        if photo.json_name:
            members.append((f"{ROOT}/{photo.folder}/{photo.json_name}", google_json(photo)))
    with_json = [p for p in planned if p.json_name and not p.extra.get("trashed")]
    for a in range(ALBUMS):
        folder = f"{ROOT}/Album {a:02d} – Trip"
        members.append((f"{folder}/metadata.json", json.dumps({"title": f"Album {a:02d} – Trip"}).encode()))
        stride = max(1, len(with_json) // ALBUM_COPIES)
        for photo in with_json[(a * 37) % stride :: stride][:ALBUM_COPIES]:
            members.append((f"{folder}/{photo.name}", photo.data))
    members.sort(key=lambda m: m[0].rsplit("/", 1)[0])  # Google writes folder by folder
    per_part = -(-len(members) // parts)
    target.mkdir(parents=True, exist_ok=True)
    stamp = (2024, 12, 1, 10, 0, 0)
    for p in range(parts):
        with zipfile.ZipFile(target / f"takeout-20241201T100000Z-{p + 1:03d}.zip", "w") as zf:
            for name, data in members[p * per_part : (p + 1) * per_part]:
                method = zipfile.ZIP_DEFLATED if name.endswith(".json") else zipfile.ZIP_STORED
                zf.writestr(zipfile.ZipInfo(name, date_time=stamp), data, compress_type=method)
    import hashlib

    expected_dates = {}
    for photo in planned:
        if photo.extra.get("trashed") or photo.extra.get("no_json"):
            continue
        expected_dates[hashlib.sha1(photo.data).hexdigest()] = photo.taken.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    expected = {
        "version": FORMAT_VERSION,
        "photos": len(planned),
        "album_copies": sum(1 for name, _ in members if "/Album " in name and name.endswith(".jpg")),
        "uploads": sum(1 for p in planned if not p.extra.get("trashed")),
        "dates": expected_dates,
        "members": len(members),
    }
    (target / "expected.json").write_text(json.dumps(expected))
    return expected


def stand_in_assets(server: Server) -> list[dict[str, object]] | None:
    """Every asset the stand-in holds ({sha1, fileCreatedAt, ...}), or None when this stand-in has no such route."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{server.url}/__stand-in__/assets", timeout=60) as response:
            return list(json.loads(response.read()))
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=50_000)
    parser.add_argument("--parts", type=int, default=10)
    parser.add_argument("--rebuild", action="store_true", help="build the export anew")
    parser.add_argument(
        "--stand-in", type=Path, help="the stand-in server script to run (default: this tree's)"
    )
    args = parser.parse_args(argv)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    export = Path(f"/tmp/immich_bench_takeout_{args.photos}_{args.parts}")
    expected_file = export / "expected.json"
    expected = json.loads(expected_file.read_text()) if expected_file.exists() else {}
    if args.rebuild or expected.get("version") != FORMAT_VERSION:
        shutil.rmtree(export, ignore_errors=True)
        started = time.perf_counter()
        print(f"[data] building a {args.photos}-photo export in {args.parts} parts in {export}", flush=True)
        expected = build_export(export, args.photos, args.parts)
        print(f"[data] built in {time.perf_counter() - started:.1f} s", flush=True)
    parts = sorted(str(p) for p in export.glob("*.zip"))
    size = sum(os.path.getsize(p) for p in parts)
    work = Path(tempfile.mkdtemp(prefix="bench_takeout_", dir="/tmp"))
    hook = work / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OPENS_HOOK)
    if args.stand_in:
        import bench_upload

        bench_upload.SERVER_SCRIPT = args.stand_in.resolve()
    try:
        warm_bytecode()
        with Server(work) as server:
            env_file = work / "bench.env"
            env_file.write_text(
                f"DB_PATH={work / 'state.db'}\nLOG_FILE={work / 'uploader.log'}\n"
                f"IMMICH_URL={server.url}\nIMMICH_API_KEY={API_KEY}\n"
            )
            runs: list[tuple[str, Measured, int]] = []
            for label in ("first import", "unchanged rerun"):
                opens_file = work / f"opens-{len(runs)}"
                env = child_environment(
                    PYTHONPATH=str(hook), BENCH_MEMBER_OPENS=str(opens_file), PYTHONUNBUFFERED="1"
                )
                cmd = [PYTHON, str(PROJECT_DIR / "sync_upload.py"), "--env-file", str(env_file), "--json",
                       "--no-progress", "--takeout", *parts]  # fmt: skip
                run = run_measured(cmd, work, env=env, server=server, timeout=7200)
                opens = int(opens_file.read_text()) if opens_file.exists() else -1
                runs.append((label, run, opens))
                print(f"[run] {label}: exit {run.status}, {run.wall_s:.1f} s", flush=True)
                if run.status not in (0, 1):
                    print(run.stderr[-3000:])
            received = server.received()
            assets = stand_in_assets(server)
    except KeyboardInterrupt:
        print("interrupted")
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    created = [r for r in received if r.get("status") == 201]
    per_sha1 = Counter(str(r["sha1"]) for r in created)
    twice = sum(1 for count in per_sha1.values() if count > 1)
    print()
    print(f"Takeout of {expected['photos']} photos (+{expected['album_copies']} album copies, "
          f"{expected['members']} members) in {len(parts)} parts, {size / MB:.0f} MB; tool: {PROJECT_DIR}")  # fmt: skip
    print(f"{'run':<18}{'wall':>10}{'peak RSS':>12}{'CPU':>10}{'members opened':>17}  summary")
    for label, run, opens in runs:
        summary = run.json()
        takeout = summary.get("takeout", {}) if isinstance(summary.get("takeout"), dict) else {}
        said = (
            f"new {summary.get('new')}, unchanged {summary.get('unchanged')}, uploaded {summary.get('uploaded')}, "
            f"errors {summary.get('errors')}, matched {takeout.get('matched')}"
        )
        print(
            f"{label:<18}{run.wall_s:>9.1f}s{run.peak_rss / MB:>10.0f}MB{run.cpu_s:>9.1f}s{opens:>17}  {said}"
        )
    print(f"{'reference':<18}{'':>10}{'300MB':>12}{'':>10}{'':>17}  {IMMICH_GO_REFERENCE}")
    print(f"uploads created: {len(created)} (expected {expected['uploads']}: every photo but Google's trash, once); "
          f"contents sent twice: {twice}")  # fmt: skip
    if assets is None:
        print("dates: not checked (this stand-in lists no assets)")
    else:
        by_sha1 = {str(a["sha1"]): str(a.get("fileCreatedAt")) for a in assets}
        dates: dict[str, str] = expected["dates"]  # type: ignore[assignment]
        wrong = sum(1 for sha1, date in dates.items() if by_sha1.get(sha1) != date)
        print(
            f"dates: {len(dates) - wrong} of {len(dates)} photos with a JSON have their own JSON's date; {wrong} do not"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
