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
from tests.conftest import (
    API_KEY,
    Env,
    Library,
    make_jpeg,
    project_copy,
    run_inprocess,
    run_process,
    script_environment,
    start_process,
    unstamped,
)
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


def test_a_server_failure_is_one_line_and_exit_3_though_the_client_was_imported_late(
    env: Env, library: Library, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """cli catches the client's error without importing the client (a scan never needs it): a run that loads
    it during its work and fails on the server gets the server's line and status 3, not "internal error"."""
    library.photos(1)

    def server_fails(*_args: object, **_kwargs: object) -> None:
        from immich_client import ImmichError

        raise ImmichError("503 the server is restarting", status=503)

    monkeypatch.setattr(scanner.Scanner, "scan", server_fails)
    result = run_inprocess(scan_files.main, "--env-file", str(env.path))
    assert result.status == 3
    assert result.lines[-1] == "immich-uploader: error: the server failed: 503 the server is restarting"


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


def process_title_while_it_runs(env: Env, immich: ImmichTestServer, *flags: str) -> tuple[str, int]:
    """The command line `ps` shows for a sync started with `flags` (read while its first request is held
    at the server), and the run's exit status."""
    immich.faults.add(delay_s=2.0, path="/api/users/me")
    proc = start_process("sync_upload.py", "--env-file", str(env.path), *flags, "--no-progress")
    try:
        deadline = time.monotonic() + 10
        while ("GET", "/api/users/me") not in immich.requests_log and time.monotonic() < deadline:
            time.sleep(0.02)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    finally:
        proc.communicate(timeout=30)
    return cmdline, proc.returncode


def test_a_key_given_on_the_command_line_is_masked_in_the_process_list(
    env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    cmdline, status = process_title_while_it_runs(env, immich, "--url", immich.url, "--key", API_KEY)
    assert API_KEY not in cmdline and "te****ef" in cmdline
    assert status == 0


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
    url = immich.url.replace("http://", "http://alice:s3cret-pw@")
    cmdline, status = process_title_while_it_runs(env, immich, "--url", url, "--key", API_KEY)
    assert "s3cret-pw" not in cmdline and "alice:****@127.0.0.1" in cmdline
    assert status == 0


# --- folders given several ways add up (issue 20) ---------------------------------------------------------


def test_repeated_source_dir_flags_add_up_with_commas_and_folder_arguments(
    env: Env, library: Library, tmp_path: Path
) -> None:
    folders = [tmp_path / name for name in ("a", "b", "c", "d")]
    for n, folder in enumerate(folders):
        make_jpeg(folder / f"IMG_{n}.jpg", color=(n, 9, 9))
    argv = ["--env-file", str(env.path), "--json", "--source-dir", str(folders[0])]
    argv += ["--source-dir", f"{folders[1]},{folders[2]}", str(folders[3])]
    result = run_inprocess(scan_files.main, *argv)
    assert result.status == 0 and json.loads(result.stdout)["found"] == 4
    assert set(rows(env)) == {"IMG_0.jpg", "IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg"}


# --- a Python without the requirements ------------------------------------------------------------------

# Loaded by every Python started with this folder on PYTHONPATH: the project's packages disappear, as for
# the system's python3 without the project's .venv.
WITHOUT_PACKAGES = """\
import sys
sys.path[:] = [p for p in sys.path if "site-packages" not in p and "dist-packages" not in p]
"""
# requests is found, but importing it fails: a broken or half-removed install, met in the middle of a run
# (requests is imported only for a proxy).
REQUESTS_BROKEN = """\
import sys
class Broken:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.split(".")[0] in ("requests", "urllib3"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Broken)
"""


def run_with_site(
    tmp_path: Path, site: str, script: Path, *argv: str, **environ: str
) -> subprocess.CompletedProcess[str]:
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(site)
    return subprocess.run(
        [sys.executable, str(script), *argv],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**script_environment(), "PYTHONPATH": str(folder), **environ},
    )  # fmt: skip


@pytest.mark.parametrize("script", ["main.py", "scan_files.py", "upload_files.py", "sync_upload.py"])
@pytest.mark.parametrize("venv", [True, False])
def test_a_python_without_the_requirements_is_told_how_to_run_the_tool(
    script: str, venv: bool, tmp_path: Path
) -> None:
    scripts = project_copy(tmp_path)
    if venv:  # the project's own Python, set up as the README says
        (scripts / ".venv" / "bin").mkdir(parents=True)
        (scripts / ".venv" / "bin" / "python").symlink_to(sys.executable)
    env = tmp_path / "t.env"
    env.write_text(f"SOURCE_DIR={tmp_path}\nDB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log.txt\n")
    argv = ["--env-file", str(env)] + (["--report", str(tmp_path / "r.csv")] if script == "main.py" else [])
    proc = run_with_site(tmp_path, WITHOUT_PACKAGES, scripts / script, *argv)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert line.startswith(
        f"immich-uploader: error: this Python ({sys.executable}) lacks python-dotenv, Pillow, ExifRead and "
        "5 more, which the tool needs: "
    )
    install = f"{sys.executable} -m pip install -r {scripts / 'requirements.txt'}"
    if venv:
        assert line.endswith(
            f"run it with the project's Python: {scripts}/.venv/bin/python {scripts / script} (or install "
            f"them: {install})"
        )
    else:
        assert line.endswith(
            f"set up the project's Python once: cd {scripts} && python3 -m venv .venv && .venv/bin/pip "
            f"install -r requirements.txt, then run .venv/bin/python {script} (or install them into this "
            f"Python: {install})"
        )
    assert not (tmp_path / "s.db").exists() and not (tmp_path / "log.txt").exists()


def test_a_package_that_fails_to_import_mid_run_is_the_same_one_line(tmp_path: Path) -> None:
    env = tmp_path / "t.env"
    env.write_text(
        f"IMMICH_URL=https://127.0.0.1:9\nIMMICH_API_KEY={API_KEY}\nDB_PATH={tmp_path}/s.db\n"
        f"LOG_FILE={tmp_path}/log.txt\n"
    )
    # requests carries only requests through a proxy: one in the environment makes the run import it.
    proc = run_with_site(
        tmp_path, REQUESTS_BROKEN, PROJECT_DIR / "upload_files.py", "--env-file", str(env),
        https_proxy="http://127.0.0.1:9",
    )  # fmt: skip
    assert proc.returncode == 2
    (line,) = [unstamped(line) for line in proc.stderr.splitlines()]
    assert line.startswith(
        f"immich-uploader: error: this Python ({sys.executable}) lacks requests, which the tool needs: "
    )
    assert f"{sys.executable} -m pip install -r {PROJECT_DIR / 'requirements.txt'}" in line


# --- a refused key says where it came from --------------------------------------------------------------


@pytest.mark.parametrize("given", ["--key", "file", "environment"])
def test_a_refused_key_names_where_it_came_from(
    server_env: Env, immich: ImmichTestServer, given: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--env-file", str(server_env.path)]
    if given == "--key":
        argv += ["--key", "bogus-key-0123"]
        where = "--key"
    elif given == "file":
        server_env.set(IMMICH_API_KEY="bogus-key-0123")
        line = list(server_env.values).index("IMMICH_API_KEY") + 1
        where = f"IMMICH_API_KEY in {server_env.path}, line {line}"
    else:
        monkeypatch.setenv("IMMICH_API_KEY", "bogus-key-0123")
        where = "IMMICH_API_KEY in the environment"
    result = run_inprocess(upload_files.main, *argv)
    assert result.status == 2
    assert result.lines[-1].startswith("immich-uploader: error: the server refused the API key (401 ")
    assert result.lines[-1].endswith(f"): check {where}")
    assert "bogus-key-0123" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        (
            "--url",
            "http//nas:2283",
            "IMMICH_URL (from --url): 'http//nas:2283' is not an http:// or https://",
        ),
        ("--key", "bad key", "IMMICH_API_KEY (from --key) holds a space at position 4: copy the key again"),
    ],
)
def test_a_dry_run_stops_on_a_wrong_server_setting_as_the_real_run_would(
    env: Env, library: Library, setting: str, value: str, said: str
) -> None:
    library.photos(1)
    env.set(IMMICH_URL="http://127.0.0.1:9", IMMICH_API_KEY=API_KEY)
    result = run_inprocess(sync_upload.main, "--env-file", str(env.path), "--dry-run", setting, value)
    assert result.status == 2
    assert result.lines[-1].startswith(f"immich-uploader: error: {said}")
    assert "not asked" not in result.stderr


def test_the_scripts_cache_the_tools_bytecode_where_pythondontwritebytecode_is_set(tmp_path: Path) -> None:
    """Container images set PYTHONDONTWRITEBYTECODE=1: without a cache every run compiles the tool again."""
    from tests.conftest import project_copy, script_environment

    scripts = project_copy(tmp_path)
    pics = tmp_path / "pics"
    pics.mkdir()
    env_file = tmp_path / "run.env"
    env_file.write_text(f"SOURCE_DIR={pics}\nDB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log.txt\n")
    proc = subprocess.run(
        [sys.executable, str(scripts / "scan_files.py"), "--env-file", str(env_file), "--no-progress"],
        capture_output=True, text=True, timeout=120,
        env={**script_environment(), "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cached = {p.name.split(".")[0] for p in (scripts / "__pycache__").glob("*.pyc")}
    assert {"scanner", "db_manager", "cli", "config", "utils"} <= cached
