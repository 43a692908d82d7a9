"""Shared fixtures: a temp library of real media files, a database on each backend, the test Immich server,
and helpers that run the scripts in-process (fast) or as real processes (signals, kill -9, cron).

Tests never read or write the user's settings, logs or database: in-process, each test runs from a folder
of its own with `config.PROJECT_DIR` pointing at an empty one (so a forgotten DB_PATH or LOG_FILE lands
under tmp_path and the developer's `.env` is never read); a script run as a process gets an env file with
DB_PATH and LOG_FILE under tmp_path. A guard fails the test, and the session, that changes the project's
`.env`, `logs/`, `reports/` or database files anyway.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

import config
from config import PROJECT_DIR, SETTING_NAMES, Settings, load_settings
from db_manager import Store, open_store
from tests.immich_server import ImmichTestServer

API_KEY = "test-key-0123456789abcdef"
MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@pytest.fixture(autouse=True)
def no_tag_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tags are looked for again after a pause that lets a real Immich finish reading an asset's metadata; the
    stand-in's counterpart (extraction_drops_tags) is deterministic, so in-process runs need no pause."""
    import tags

    monkeypatch.setattr(tags, "TAG_SETTLE_S", 0.0)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own settings must never leak into a test."""
    for name in (*SETTING_NAMES, *config.ALIASES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


@pytest.fixture(autouse=True)
def isolated_project(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """In-process, the folder beside the scripts is an empty one and the current folder another: the
    default settings file, log and database of a test that names none are there, not the developer's."""
    root = tmp_path_factory.mktemp("project")
    (root / "cwd").mkdir()
    monkeypatch.setattr(config, "PROJECT_DIR", root)
    monkeypatch.chdir(root / "cwd")
    return root


# --- the guard: nothing of the user's changes --------------------------------------------------------

PROTECTED = "the project's .env, logs/, reports/ and database files"


def project_state() -> dict[str, tuple[int, int]]:
    """Size and mtime of each of the user's files a run could touch in the real project folder."""
    state: dict[str, tuple[int, int]] = {}
    candidates = [PROJECT_DIR / ".env", PROJECT_DIR / "logs", PROJECT_DIR / "reports"]
    candidates += [p for p in PROJECT_DIR.iterdir() if ".db" in p.name]
    for path in candidates:
        found = [path, *path.rglob("*")] if path.is_dir() else [path]
        for item in found:
            try:
                info = item.lstat()
            except FileNotFoundError:
                continue
            state[str(item.relative_to(PROJECT_DIR))] = (info.st_size, info.st_mtime_ns)
    return state


def state_change(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> str:
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    return ", ".join(
        f"{name} ({'created' if name not in before else 'removed' if name not in after else 'changed'})"
        for name in changed
    )


SESSION_START_STATE = project_state()  # taken when pytest loads this file, before any test runs


@pytest.fixture(autouse=True)
def users_files_untouched() -> Iterator[None]:
    """Fails the test that changed the user's files (the session check below catches the rest)."""
    before = project_state()
    yield
    change = state_change(before, project_state())
    if change:
        pytest.fail(f"this test changed {PROTECTED}: {change}", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    change = state_change(SESSION_START_STATE, project_state())
    if change:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = f"the test session changed {PROTECTED}: {change}"
        if reporter is not None:
            reporter.write_line(f"FAILED: {message}", red=True, bold=True)
        else:
            sys.stderr.write(message + "\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- media files -------------------------------------------------------------------------------------


def make_jpeg(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30),
              taken: str | None = "2021:06:15 10:30:00", offset: str | None = None,
              make: str = "Canon", model: str = "EOS R5") -> Path:  # fmt: skip
    """A real JPEG with EXIF written by Pillow. Distinct colours make distinct bytes (and SHA-1s)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x010F] = make
    exif[0x0110] = model
    ifd = exif.get_ifd(0x8769)
    if taken:
        ifd[0x9003] = taken
    if offset:
        ifd[0x9011] = offset
    Image.new("RGB", size, color).save(path, "JPEG", exif=exif.tobytes())
    return path


def unique_color(n: int) -> tuple[int, int, int]:
    return (n * 37 % 256, n * 91 % 256, n * 53 % 256)


@dataclass
class Library:
    root: Path

    def photo(self, relative: str, n: int = 0, **kwargs: object) -> Path:
        return make_jpeg(self.root / relative, color=unique_color(n), size=(64 + n % 50, 48), **kwargs)  # type: ignore[arg-type]

    def photos(self, count: int, folder: str = "photos", start: int = 0) -> list[Path]:
        return [self.photo(f"{folder}/IMG_{i:04d}.jpg", n=i) for i in range(start, start + count)]

    def write(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path


@pytest.fixture
def library(tmp_path: Path) -> Library:
    root = tmp_path / "library"
    root.mkdir()
    return Library(root)


# --- databases ---------------------------------------------------------------------------------------


def mysql_available() -> str | None:
    """None when the local MariaDB answers, else why not."""
    try:
        import pymysql

        pymysql.connect(**MYSQL, connect_timeout=3).close()
        return None
    except Exception as exc:  # any failure means "not available" here
        return str(exc)


_MYSQL_PROBLEM: list[str | None] = []


def require_mysql() -> None:
    if not _MYSQL_PROBLEM:
        _MYSQL_PROBLEM.append(mysql_available())
    problem = _MYSQL_PROBLEM[0]
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"MySQL/MariaDB is required under CI and does not answer on 127.0.0.1:3306: {problem}")
    pytest.skip(f"MySQL/MariaDB not available on 127.0.0.1:3306 ({problem})")


def drop_mysql_database(name: str) -> None:
    import pymysql

    conn = pymysql.connect(**MYSQL)
    with conn.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
    conn.close()


@dataclass
class Env:
    """The settings of one test: written to an env file the scripts read with --env-file."""

    path: Path
    values: dict[str, str]

    def set(self, **values: object) -> Env:
        self.values.update({k: str(v) for k, v in values.items()})
        self.path.write_text("".join(f"{k}={v}\n" for k, v in self.values.items()))
        return self

    def settings(self) -> Settings:
        return load_settings(env_file=str(self.path), environ={})


@pytest.fixture(params=["sqlite", "mysql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def env(tmp_path: Path, backend: str, library: Library) -> Iterator[Env]:
    """Settings for a run on `backend`: a fresh SQLite file, or a throw-away MariaDB database."""
    values = {
        "SOURCE_DIR": str(library.root),
        "DB_PATH": str(tmp_path / "state.db"),
        "LOG_FILE": str(tmp_path / "logs" / "uploader.log"),
        "UPLOAD_DELAY": "0",
        "RETRY_BACKOFF": "0.01",
        "MAX_RETRIES": "2",
        "SERVER_WAIT": "5",  # a test that sends the server away waits seconds, not minutes
    }
    database = None
    if backend == "mysql":
        require_mysql()
        database = f"iu_test_{uuid.uuid4().hex[:10]}"
        values.update(
            DB_HOST=MYSQL["host"], DB_PORT=str(MYSQL["port"]), DB_USER=MYSQL["user"], DB_NAME=database
        )
    yield Env(tmp_path / "test.env", {}).set(**values)
    if database:
        drop_mysql_database(database)


def db_rows(env: Env) -> list[dict[str, object]]:
    """Every row of the test's database, as the scripts left it."""
    store = open_store(env.settings())
    try:
        return store.rows()
    finally:
        store.close()


def rows_by_name(env: Env) -> dict[str, dict[str, object]]:
    return {str(r["filename"]): r for r in db_rows(env)}


@pytest.fixture
def store(env: Env) -> Iterator[Store]:
    s = open_store(env.settings())
    yield s
    s.close()


# --- the Immich stand-in -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 (what nginx in front of Immich is often given), its key, and
    another self-signed certificate that does not vouch for it."""

    cert: Path
    key: Path
    other_cert: Path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Made by the openssl command, here and now: nothing is downloaded."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")

    def self_signed(name: str) -> tuple[Path, Path]:
        cert, key = folder / f"{name}.pem", folder / f"{name}.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        return cert, key

    cert, key = self_signed("immich")
    other_cert, _ = self_signed("other")
    return TlsFiles(cert, key, other_cert)


@pytest.fixture
def immich() -> Iterator[ImmichTestServer]:
    with ImmichTestServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def server_env(env: Env, immich: ImmichTestServer) -> Env:
    return env.set(IMMICH_URL=immich.url, IMMICH_API_KEY=API_KEY)


# --- running the scripts -----------------------------------------------------------------------------


@dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        """stderr's lines without the timestamp plain output puts in front of each."""
        return [unstamped(line) for line in self.stderr.splitlines()]


STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def unstamped(line: str) -> str:
    return STAMP.sub("", line)


def run_inprocess(main: Callable[..., int], *argv: str) -> Result:
    """Call a script's main(argv) with captured streams; fast, for most behaviour."""
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), stdout=out, stderr=err)
    return Result(status, out.getvalue(), err.getvalue())


def run_process(
    script: str, *argv: str, cwd: Path | str = "/", timeout: float = 120, **kwargs: object
) -> Result:
    """Run a script as cron would: its own process, started from another folder."""
    proc = subprocess.run(
        [sys.executable, str(PROJECT_DIR / script), *argv],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=script_environment(), **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip
    return Result(proc.returncode, proc.stdout, proc.stderr)


def start_process(script: str, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / script), *argv],
        cwd="/", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_environment(),
    )  # fmt: skip


def project_copy(tmp_path: Path) -> Path:
    """The scripts in a folder of their own, for the rules about what lies beside them (their .env, their
    .venv): the real project's are never touched."""
    import shutil

    copy = tmp_path / "immich-uploader"
    copy.mkdir()
    for source in PROJECT_DIR.glob("*.py"):
        shutil.copy(source, copy / source.name)
    return copy


def script_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
