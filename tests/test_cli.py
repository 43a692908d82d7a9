"""What every script shares at its edge: flags, one line for a bug, exit statuses, the version."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import scan_files
import scanner
import sync_upload
import upload_files
from config import PROJECT_DIR, VERSION, load_settings
from db_manager import open_store
from tests.conftest import API_KEY, Env, Library, make_jpeg, run_inprocess, run_process, start_process
from tests.immich_server import ImmichTestServer


def test_a_bug_is_one_line_exit_70_with_the_traceback_in_the_log(
    env: Env, library: Library, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    library.photos(1)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in the scanner")

    monkeypatch.setattr(scanner.Scanner, "scan", broken)
    result = run_inprocess(scan_files.main, "--env-file", str(env.path))
    assert result.status == 70
    assert result.lines[-1].startswith(
        "immich-uploader: error: internal error RuntimeError('a bug in the scanner')"
    )
    assert "Traceback" not in result.stderr
    assert "Traceback" in (env.settings().log_file).read_text()


# --- habits from the official CLI and immich-go (issue 11) ------------------------------------------------


def rows(env: Env) -> dict[str, str]:
    store = open_store(env.settings())
    try:
        return {Path(str(r["filepath"])).name: str(r["upload_status"]) for r in store.rows()}
    finally:
        store.close()


def test_folders_given_as_arguments_are_scanned_instead_of_source_dir(
    env: Env, library: Library, tmp_path: Path
) -> None:
    library.photos(2)  # under SOURCE_DIR: not named, not scanned
    phone = tmp_path / "phone"
    make_jpeg(phone / "PXL_1.jpg", color=(9, 9, 9))
    camera = tmp_path / "camera"
    make_jpeg(camera / "DSC_1.jpg", color=(8, 8, 8))
    result = run_inprocess(scan_files.main, "--env-file", str(env.path), "--json", str(phone), str(camera))
    assert result.status == 0 and json.loads(result.stdout)["found"] == 2
    assert set(rows(env)) == {"PXL_1.jpg", "DSC_1.jpg"}


def test_sync_takes_folders_url_and_key_as_arguments_and_the_key_is_never_shown(
    env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    phone = tmp_path / "phone"
    make_jpeg(phone / "PXL_1.jpg", color=(9, 9, 9))
    argv = ["--env-file", str(env.path), "--url", immich.url, "--key", API_KEY, "--json", "-v", str(phone)]
    result = run_inprocess(sync_upload.main, *argv)
    assert result.status == 0 and json.loads(result.stdout)["uploaded"] == 1
    assert API_KEY not in result.stdout + result.stderr + env.settings().log_file.read_text()
    shown = run_inprocess(sync_upload.main, *argv, "--show-config")
    assert "IMMICH_API_KEY=te****ef  # command line" in shown.stdout and API_KEY not in shown.stdout


def test_a_key_given_on_the_command_line_is_masked_in_the_process_list(
    env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    immich.faults.add(delay_s=2.0, path="/api/users/me")
    proc = start_process(
        "sync_upload.py", "--env-file", str(env.path), "--url", immich.url, "--key", API_KEY, "--no-progress"
    )
    try:
        deadline = time.monotonic() + 10
        while ("GET", "/api/users/me") not in immich.requests_log and time.monotonic() < deadline:
            time.sleep(0.02)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    finally:
        proc.communicate(timeout=30)
    assert API_KEY not in cmdline and "te****ef" in cmdline
    assert proc.returncode == 0


def test_upload_files_takes_folders_as_a_filter_on_what_it_sends(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(2, folder="keep")
    library.photos(3, folder="send", start=2)
    assert run_inprocess(scan_files.main, "--env-file", str(server_env.path)).status == 0
    result = run_inprocess(
        upload_files.main, "--env-file", str(server_env.path), "--json", str(library.root / "send")
    )
    assert result.status == 0 and json.loads(result.stdout)["uploaded"] == 3
    assert sorted(rows(server_env).values()) == ["pending"] * 2 + ["success"] * 3


def test_immich_instance_url_of_the_official_cli_is_read_when_immich_url_is_not_set(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, environ={"IMMICH_INSTANCE_URL": "http://nas:2283/api"})
    assert settings.immich_url == "http://nas:2283"
    assert settings.sources["IMMICH_URL"] == "environment (IMMICH_INSTANCE_URL)"
    both = load_settings(
        env_file=None, environ={"IMMICH_INSTANCE_URL": "http://old:1", "IMMICH_URL": "http://new:2283"}
    )
    assert both.immich_url == "http://new:2283"


@pytest.mark.parametrize("script", ["main.py", "scan_files.py", "upload_files.py", "sync_upload.py"])
def test_every_script_tells_its_version(script: str) -> None:
    result = run_process(script, "--version")
    assert result.status == 0 and result.stdout.strip() == f"immich-uploader {VERSION}"


def test_sync_dry_run_scans_asks_the_server_and_sends_nothing(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    have, *_ = library.photos(3)
    immich.add_existing_asset(have.read_bytes())
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--dry-run")
    assert result.status == 0
    assert result.stdout.count("would upload") == 2 and f"already in Immich {have}" in result.stdout
    assert re.search(r"would upload +2 files,", result.stderr)
    assert not [p for m, p in immich.requests_log if m == "POST" and p == "/api/assets"]
    assert set(rows(server_env).values()) == {"pending"}  # scanned, nothing marked uploaded


def test_ignore_and_include_hidden_are_flags_too(env: Env, library: Library) -> None:
    library.photo("a/one.jpg", n=1)
    library.photo("tmp/two.jpg", n=2)
    library.photo(".hidden/three.jpg", n=3)
    library.write("x.part.jpg", b"partial")
    argv = ["--env-file", str(env.path), "--json", "--ignore", "*/tmp/*", "--ignore", "*.part.jpg"]
    result = run_inprocess(scan_files.main, *argv, "--include-hidden")
    assert result.status == 0 and set(rows(env)) == {"one.jpg", "three.jpg"}


def test_delete_is_accepted_for_delete_uploaded(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    (photo,) = library.photos(1)
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--json", "--delete")
    assert result.status == 0 and json.loads(result.stdout)["deleted"] == 1 and not photo.exists()


def test_a_typescript_file_named_ts_is_passed_over_and_a_transport_stream_is_not(
    env: Env, library: Library
) -> None:
    library.write("code/app.ts", b"export const answer: number = 42;\n" * 20)
    library.write("video/clip.ts", (b"\x47" + bytes(187)) * 20)
    assert run_inprocess(scan_files.main, "--env-file", str(env.path)).status == 0
    assert rows(env) == {"app.ts": "skipped", "clip.ts": "pending"}


def test_an_unchanged_sync_imports_no_module_it_does_not_need(
    server_env: Env, library: Library, backend: str
) -> None:
    # Each costs every run's start 2-80 ms. They are imported where needed: by the scan's workers and
    # EXIF (Pillow, ExifRead, hachoir, fractions), https or a proxy (requests), MySQL, a TIME_ZONE
    # setting, a typo in .env.
    heavy = {
        "requests",
        "urllib3",
        "PIL",
        "exifread",
        "hachoir",
        "pymysql",
        "fractions",
        "zoneinfo",
        "difflib",
    }
    if backend == "mysql":
        heavy.discard("pymysql")
    library.photos(2)
    assert run_inprocess(sync_upload.main, "--env-file", str(server_env.path)).status == 0
    code = (
        "import sys, sync_upload\nstatus = sync_upload.main(sys.argv[1:])\nprint('RUN', status, *sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--env-file", str(server_env.path), "--no-progress"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    status, *loaded = next(line for line in out.splitlines() if line.startswith("RUN ")).split()[1:]
    assert status == "0"
    assert heavy & {name.split(".")[0] for name in loaded} == set()


def test_a_password_in_the_url_given_on_the_command_line_is_masked_in_the_process_list(
    env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    immich.faults.add(delay_s=2.0, path="/api/users/me")
    url = immich.url.replace("http://", "http://alice:s3cret-pw@")
    proc = start_process(
        "sync_upload.py", "--env-file", str(env.path), "--url", url, "--key", API_KEY, "--no-progress"
    )
    try:
        deadline = time.monotonic() + 10
        while ("GET", "/api/users/me") not in immich.requests_log and time.monotonic() < deadline:
            time.sleep(0.02)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    finally:
        proc.communicate(timeout=30)
    assert "s3cret-pw" not in cmdline and "alice:****@127.0.0.1" in cmdline
    assert proc.returncode == 0
