"""Every setting the uploader knows, where each value came from, and what makes one invalid.

Settings are resolved once per run, strongest source first: a command-line flag, the process environment,
the settings file, the built-in default. Which file: `--env-file PATH` if given; else `.env` in the current
folder, but only when it names this tool's server (`IMMICH_URL`, `IMMICH_API_KEY` or the official CLI's
`IMMICH_INSTANCE_URL`: Immich's own docker-compose `.env`, often kept in the same folder, never does);
else `.env` beside the scripts. A `.env` passed over changes no setting (`-v` and `--show-config` say so).
Relative paths written in a file or the environment are taken relative to the project folder (cron starts
scripts from `/`); relative paths given as flags are taken relative to the current folder, as with any
command. A bad value raises `ConfigError`, naming the setting and where its value came from.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, tzinfo
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from logger import get_logger

log = get_logger("config")

VERSION = "0.3.0"  # the one place the tool's version is written (pyproject.toml reads it from here)
PROJECT_DIR = Path(__file__).resolve().parent
# The official CLI's names, read when ours are not set (people arrive with them in their environment).
ALIASES = {"IMMICH_INSTANCE_URL": "IMMICH_URL"}

# Camera RAW formats Immich accepts (../shared/immich-api.md §5); also used for RAW+JPEG stacks.
RAW_EXTENSIONS = (
    "3fr", "ari", "arw", "cap", "cin", "cr2", "cr3", "crw", "dcr", "dng", "erf", "fff", "iiq", "k25", "kdc",
    "mrw", "nef", "nrw", "orf", "ori", "pef", "raf", "raw", "rw2", "rwl", "sr2", "srf", "srw", "x3f",
)  # fmt: skip
# The client's lists plus what Immich accepts: RAW formats and more video.
DEFAULT_IMAGE_EXTENSIONS = ",".join(
    (
        *("jpg", "jpeg", "png", "webp", "tiff", "tif", "bmp", "heic", "heif"),
        *("avif", "gif", "hif", "jpe", "jxl", "jp2", "insp", "psd", "mpo", "svg"),
        *RAW_EXTENSIONS,
    )
)
# .ts is also TypeScript's extension: the scanner passes over a .ts file that is no MPEG transport stream.
DEFAULT_VIDEO_EXTENSIONS = (
    "mp4,mov,avi,mkv,wmv,flv,webm,m4v,3gp,3gpp,insv,m2ts,m2t,mts,mpe,mpeg,mpg,vob,mxf,ts"
)

# NAS boxes and desktops leave these; hidden names (dot-files) are skipped separately.
JUNK_NAMES = (
    "@eaDir",
    "#recycle",
    "#snapshot",
    ".Trash-*",
    ".thumbnails",
    "Thumbs.db",
    "desktop.ini",
)


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it and says how to fix it. `setting` names the
    setting at fault, so that load_settings can add where its value came from."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class ServerNotConfigured(ConfigError):
    """IMMICH_URL or IMMICH_API_KEY is not set yet: a first run may still scan."""


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    secret: bool = False


# The one list of settings; .env.example documents the same names.
# fmt: off
SETTINGS: tuple[Setting, ...] = (
    Setting("IMMICH_URL", "", "Immich server address, e.g. http://nas:2283 (a trailing / or /api is fine; http://USER:PASSWORD@host for a proxy's basic auth)"),
    Setting("IMMICH_API_KEY", "", "API key from Immich: Account Settings > API Keys", secret=True),
    Setting("SOURCE_DIR", "", "Folder(s) to scan, comma-separated"),
    Setting("DB_HOST", "", "MySQL/MariaDB host; empty = the embedded SQLite file DB_PATH"),
    Setting("DB_PORT", "3306", "MySQL/MariaDB port"),
    Setting("DB_USER", "root", "MySQL/MariaDB user"),
    Setting("DB_PASSWORD", "", "MySQL/MariaDB password", secret=True),
    Setting("DB_NAME", "immich_uploader", "MySQL/MariaDB database (created if missing)"),
    Setting("DB_PATH", "immich_uploader.db", "SQLite database file (used when DB_HOST is empty)"),
    Setting("MACHINE_NAME", "", "This machine's name in a database several machines share; empty = the host name (with SQLite: 'local')"),
    Setting("SHARED_LIBRARY", "", "Name of the shared library SOURCE_DIR is the mount point of (a NAS share): the same name on every machine"),
    Setting("CLAIM_LEASE", "600", "Seconds a machine's claim on a shared library's file lasts unless renewed (a dead machine's claims expire)"),
    Setting("IMAGE_EXTENSIONS", DEFAULT_IMAGE_EXTENSIONS, "Image extensions to scan, comma-separated"),
    Setting("VIDEO_EXTENSIONS", DEFAULT_VIDEO_EXTENSIONS, "Video extensions to scan, comma-separated"),
    Setting("INCLUDE_HIDDEN", "false", "Also scan hidden files/folders and NAS junk (@eaDir, #recycle...)"),
    Setting("IGNORE_PATTERNS", "", "Globs of paths to skip, comma-separated, e.g. */tmp/*,*.part"),
    Setting("HASH_CHUNK_SIZE", "1048576", "Bytes read per hashing step (1 MiB: see README, measured)"),
    Setting("HASH_WORKERS", "0", "Files hashed in parallel; 0 = one per CPU core"),
    Setting("UPLOAD_CONCURRENCY", "8", "Uploads in flight at once (8: measured, see README)"),
    Setting("UPLOAD_DELAY", "0", "Seconds each upload worker rests between two uploads; 0 = none (a busy server's 429/503 pause every worker)"),
    Setting("MAX_CONSECUTIVE_ERRORS", "5", "Stop the run (exit 3) after this many failed uploads in a row"),
    Setting("MAX_RETRIES", "4", "Retries of a request that failed for a transient reason (network, 429, 5xx)"),
    Setting("RETRY_BACKOFF", "1.0", "Seconds before the first retry; doubles each time, with jitter"),
    Setting("SERVER_WAIT", "300", "Seconds the server may show no sign of life (away, or silent) mid-run before the run stops with exit 3"),
    Setting("CONNECT_TIMEOUT", "30", "Seconds to connect to the server (also each socket write)"),
    Setting("READ_TIMEOUT", "600", "Seconds to wait for the server's answer after the last byte while it shows signs of life"),
    Setting("IMMICH_CA_BUNDLE", "", "CA certificate file for a server with a private certificate"),
    Setting("IMMICH_VERIFY_TLS", "true", "Verify the server's TLS certificate (leave true)"),
    Setting("LOG_LEVEL", "INFO", "Log file detail: DEBUG, INFO, WARNING or ERROR"),
    Setting("LOG_FILE", "logs/immich_uploader.log", "Log file (rotated at 5 MB, 5 kept)"),
    Setting("TIME_ZONE", "", "Zone of cameras that store local time without an offset, e.g. Europe/Berlin; empty = this machine's"),
    Setting("ALBUM", "", "Put every uploaded file into this album (--album NAME)"),
    Setting("ALBUM_FROM", "", "Album per file from its folder: 'folder' (parent folder name) or 'path' (path below the source, joined with ' / ')"),
    Setting("STACK_RAW_JPEG", "false", "Stack a RAW file and its JPEG (same name, same folder) in Immich"),
    Setting("STACK_BURSTS", "false", "Stack burst photos (…BURST…, _COVER) in Immich"),
    Setting("TAGS", "", "Tag every file in Immich with these tags, comma-separated; '/' makes a hierarchy, e.g. Family,Trips/Paris (--tag NAME)"),
    Setting("TAGS_FROM_FOLDER", "false", "Tag each file with its folder path below the source as a hierarchical tag, e.g. Trips/2019/Paris"),
    Setting("VISIBILITY", "", "Where uploads appear in Immich: 'archive' or 'timeline'; empty = Immich's default (the timeline; a Takeout's archived photos archived)"),
    Setting("REPLACE_EDITED", "true", "A photo edited after its upload replaces its earlier version in Immich (albums, favourite, stack, tags... carried over; the old one to Immich's trash); false keeps both"),
    Setting("DELETE_UPLOADED", "false", "Delete local files once Immich confirmed them (off unless you are sure)"),
    Setting("DELETE_DUPLICATES", "false", "With DELETE_UPLOADED, also delete files Immich already had"),
    Setting("PAUSE_SERVER_JOBS", "false", "Pause Immich's background jobs during the run (admin key) and resume them after"),
    Setting("SINCE", "", "Upload only files taken on or after this date (YYYY-MM-DD)"),
    Setting("UNTIL", "", "Upload only files taken on or before this date (YYYY-MM-DD)"),
    Setting("INCLUDE", "", "Upload only paths matching these globs, comma-separated, e.g. */2024/*"),
    Setting("EXCLUDE", "", "Do not upload paths matching these globs, comma-separated"),
    Setting("ONLY", "", "Upload only 'images' or only 'videos'; empty = both"),
    Setting("WATCH_SETTLE", "10", "Watch mode: seconds a file must stay unchanged before it is uploaded"),
)
# fmt: on
SETTING_NAMES = frozenset(s.name for s in SETTINGS)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class Settings:
    immich_url: str
    immich_api_key: str = field(repr=False)
    source_dirs: tuple[Path, ...]
    db_host: str
    db_port: int
    db_user: str
    db_password: str = field(repr=False)
    db_name: str
    db_path: Path
    machine_name: str
    shared_library: str
    claim_lease_s: float
    image_extensions: frozenset[str]
    video_extensions: frozenset[str]
    include_hidden: bool
    ignore_patterns: tuple[str, ...]
    hash_chunk_size: int
    hash_workers: int
    upload_concurrency: int
    upload_delay_s: float
    max_consecutive_errors: int
    max_retries: int
    retry_backoff_s: float
    server_wait_s: float
    connect_timeout_s: float
    read_timeout_s: float
    ca_bundle: str
    verify_tls: bool
    log_level: str
    log_file: Path
    time_zone: tzinfo | None
    album: str
    album_from: str
    stack_raw_jpeg: bool
    stack_bursts: bool
    tags: tuple[str, ...]
    tags_from_folder: bool
    visibility: str
    replace_edited: bool
    delete_uploaded: bool
    delete_duplicates: bool
    pause_server_jobs: bool
    since: date | None
    until: date | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    only: str
    watch_settle_s: float
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    origins: Mapping[str, Origin] = field(default_factory=dict, compare=False, repr=False)
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    env_file: Path | None = None  # the settings file read (None: none)
    env_file_passed_over: Path | None = None  # a .env in the current folder that is not this tool's
    env_file_passed_over_why: str = ""
    server_problem: str | None = None
    takeout_paths: tuple[Path, ...] = ()  # --takeout: Google Photos Takeout zips or folders to sync
    takeout_trashed: bool = False  # --takeout-trashed: send what Google had in its trash too

    @property
    def backend(self) -> str:
        return "mysql" if self.db_host else "sqlite"

    @property
    def display_url(self) -> str:
        """IMMICH_URL as every message, log line and stored row shows it: a password in it as ****."""
        return mask_url_password(self.immich_url)

    @property
    def secrets(self) -> tuple[str, ...]:
        """What the log's secret filter hides wherever it appears: the key, the database password and the
        password of a user:password@ in IMMICH_URL (as written and decoded)."""
        password = urlsplit(self.immich_url).password or ""
        return (self.immich_api_key, self.db_password, password, unquote(password))

    @property
    def scope(self) -> str:
        """Whose rows a run works on: a shared library's ("l:NAME", the same on every machine) or this
        machine's own ("m:NAME")."""
        if self.takeout_paths:
            return "t:takeout"
        return f"l:{self.shared_library}" if self.shared_library else f"m:{self.machine_name}"

    def media_kind(self, extension: str) -> str | None:
        """'image', 'video' or None for a lower-case extension without the dot."""
        if extension in self.image_extensions:
            return "image"
        if extension in self.video_extensions:
            return "video"
        return None

    def origin(self, name: str) -> Origin:
        """Where setting `name` came from; str() of it says so in words: '--key',
        'IMMICH_API_KEY in /home/me/immich-uploader/.env, line 2', 'IMMICH_API_KEY in the environment'."""
        return self.origins.get(name) or Origin("default", name)

    def require_server(self) -> None:
        if self.server_problem:
            raise ConfigError(self.server_problem)
        missing = [
            n
            for n, v in (
                ("IMMICH_URL", self.immich_url),
                ("IMMICH_API_KEY", self.immich_api_key),
            )
            if not v
        ]
        if missing:
            raise ServerNotConfigured(
                f"{' and '.join(missing)} not set: add {'them' if len(missing) > 1 else 'it'} to "
                f"{self.env_file or PROJECT_DIR / '.env'} (see .env.example) to upload"
            )

    def require_sources(self) -> None:
        """Set, and each a folder or a single file (a folder of one). A folder that is missing is the
        scanner's call: a share that is not mounted tonight is not a typo (scanner.Scanner.available_roots)."""
        if not self.source_dirs:
            raise ConfigError(
                "SOURCE_DIR is not set: give --source-dir FOLDER, or set SOURCE_DIR in "
                f"{self.env_file or PROJECT_DIR / '.env'}"
            )
        for folder in self.source_dirs:
            if folder.exists() and not (folder.is_dir() or folder.is_file()):
                where = self.origin("SOURCE_DIR").after("SOURCE_DIR")
                raise ConfigError(f"SOURCE_DIR{where}: {folder} is neither a folder nor a file")

    def display_rows(self) -> list[tuple[str, str, str]]:
        """(name, value, source) for every setting, secrets masked: for --show-config and the menu."""
        secret = {s.name for s in SETTINGS if s.secret}
        rows = []
        for s in SETTINGS:
            value = self.raw.get(s.name, s.default)
            if s.name in secret and value:
                value = mask_secret(value)
            elif s.name == "IMMICH_URL":
                value = mask_url_password(value, whole_value=True)
            rows.append((s.name, value, self.sources.get(s.name, "default")))
        return rows

    def changed_rows(self) -> list[tuple[str, str, Origin]]:
        """(name, value, origin) of each setting whose value is not its default, secrets masked: what a
        run's first log line says."""
        defaults = {s.name: s.default for s in SETTINGS}
        return [
            (name, value, self.origin(name))  # display_rows masked the secrets and the URL's password
            for name, value, source in self.display_rows()
            if source != "default" and self.raw.get(name) != defaults[name]
        ]


def settings_file_for(env_file: str | None) -> Path:
    """The file settings are saved to: `--env-file` if given, else the file a run reads (choose_env_file),
    else .env beside the scripts (created)."""
    if env_file:
        return Path(env_file).expanduser()
    return choose_env_file(None).path or PROJECT_DIR / ".env"


def save_settings(path: Path, values: Mapping[str, str]) -> None:
    """Write settings into a .env file, keeping its other lines; it holds the API key, so only its owner
    may read it (0600)."""
    from dotenv import set_key

    unknown = set(values) - SETTING_NAMES
    if unknown:
        raise ValueError(f"not settings: {', '.join(sorted(unknown))}")
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    for name, value in values.items():
        set_key(str(path), name, value, quote_mode="auto")


def mask_secret(value: str) -> str:
    return "****" if len(value) < 12 else f"{value[:2]}****{value[-2:]}"


# The password of a user:password@ part, up to the last @ (a password may hold @ or /, unescaped); an @ in a
# path masks the path too, which costs nothing in a message. In a setting's whole value, spaces too.
_URL_PASSWORD = re.compile(r"(?P<user>(?://|^(?![^/]*//))[^\s/:@]*):\S*@")
_VALUE_PASSWORD = re.compile(r"(?P<user>(?://|^(?![^/]*//))[^\s/:@]*):.*@")


def mask_url_password(url: str, *, whole_value: bool = False) -> str:
    """`url` with the password of a user:password@ part (a proxy's basic auth) as ****, even in a malformed
    address (it is quoted back in settings errors), or in a message holding addresses. `whole_value`: `url`
    is a setting's value, where a (malformed) password may hold spaces."""
    return (_VALUE_PASSWORD if whole_value else _URL_PASSWORD).sub(r"\g<user>:****@", url)


# A `.env` in the current folder is this tool's only when it names the server; Immich's own never does.
SERVER_NAMES = ("IMMICH_URL", "IMMICH_API_KEY", "IMMICH_INSTANCE_URL")
BOM = "\ufeff"  # the byte-order mark some editors put first in a UTF-8 file
# Patterns as text: re compiles (and caches) each the first time it is needed, which most runs never do.
_NAMES_SERVER = rf"(?m)^[ \t]*(?:export[ \t]+)?(?:{'|'.join(SERVER_NAMES)})\b"
_FIRST_WORD = r"[ \t]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_.]*)[ \t]*(=?)"


@dataclass(frozen=True)
class EnvFileChoice:
    """The settings file a run reads (None: none), and a `.env` it passed over, with why."""

    path: Path | None
    passed_over: Path | None = None
    why: str = ""


@dataclass(frozen=True)
class Origin:
    """Where one setting's value came from: a flag, the environment, a line of a file, or the default.
    `name` is what it was given as: the setting, an alias (IMMICH_INSTANCE_URL) or a flag (--key)."""

    kind: str  # "flag", "environment", "file" or "default"
    name: str
    path: Path | None = None
    line: int = 0

    def __str__(self) -> str:
        """'--key', 'IMMICH_API_KEY in /home/me/.env, line 2', 'IMMICH_API_KEY in the environment'."""
        if self.kind in ("flag", "default"):
            return self.name
        return f"{self.name} in {self.where}"

    @property
    def where(self) -> str:
        if self.kind == "file":
            return f"{self.path}, line {self.line}" if self.line else str(self.path)
        return "the environment" if self.kind == "environment" else self.name

    def after(self, setting: str) -> str:
        """What a message about `setting` adds to say where its value came from: ' (from …)'."""
        if self.kind == "default":
            return ""
        return f" (from {self.where if self.name == setting else self})"

    def locate(self, message: str, setting: str) -> str:
        """`message` about `setting`, saying where the value came from right after the setting's name:
        'UPLOAD_CONCURRENCY (from /home/me/.env, line 3): 0 is out of range (1..64)'."""
        if message.startswith(f"{setting}:"):
            return f"{setting}{self.after(setting)}{message[len(setting) :]}"
        return message + self.after(setting)


def choose_env_file(explicit: str | None) -> EnvFileChoice:
    """`--env-file` if given; else `.env` in the current folder when it names this tool's server; else
    `.env` beside the scripts. A `.env` passed over is named, with why, for -v and --show-config."""
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise ConfigError(f"--env-file: {path} is a folder, not a settings file")
        if not path.exists():
            raise ConfigError(f"--env-file: {path} does not exist")
        return EnvFileChoice(path)  # a file, or /dev/null for "no settings file at all"
    beside = PROJECT_DIR / ".env"
    fallback = beside if beside.is_file() else None
    try:
        here = Path.cwd() / ".env"
    except OSError:  # the current folder was deleted: there is no .env in it
        return EnvFileChoice(fallback)
    if not here.is_file() or _same_file(here, beside):
        return EnvFileChoice(fallback)
    try:
        ours = (
            re.search(_NAMES_SERVER, here.read_text(encoding="utf-8", errors="replace").lstrip(BOM))
            is not None
        )
    except OSError as exc:
        return EnvFileChoice(fallback, here, f"it cannot be read ({exc.strerror})")
    if ours:
        return EnvFileChoice(here)
    return EnvFileChoice(
        fallback,
        here,
        "it sets none of IMMICH_URL, IMMICH_API_KEY, IMMICH_INSTANCE_URL, so it is another program's "
        "(Immich's own .env?)",
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@dataclass(frozen=True)
class EnvFileValues:
    """A settings file's values, and the line each was set on."""

    values: dict[str, str]
    lines: dict[str, int]


def read_env_file(path: Path, warn: Callable[[str], None] | None = None) -> EnvFileValues:
    """Every NAME=value of a settings file. A line that is not NAME=value (a missing '=', a quote left
    open) is a ConfigError naming the file and the line, never skipped: the setting it meant would
    silently take its default. Names that are no setting are warned about and ignored."""
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8").lstrip(BOM)  # as Notepad writes it; no setting
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    lines: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # The parser counts a binding from the blank lines before it.
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count("\n")
        if binding.error:
            raise ConfigError(_bad_line(path, line, original.strip()))
        if binding.key is None:
            continue
        if binding.value is None and (binding.key in SETTING_NAMES or binding.key in ALIASES):
            raise ConfigError(
                f"{path}, line {line}: {binding.key} has no '=': write {binding.key}=value "
                f"(or {binding.key}= for its default)"
            )
        lines[binding.key] = line
        if binding.key not in SETTING_NAMES and binding.key not in ALIASES and warn is not None:
            import difflib  # here: only a typo pays for it

            close = difflib.get_close_matches(binding.key, SETTING_NAMES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            warn(f"{path}, line {line}: unknown setting {binding.key}{hint}; it is ignored")
    values = {k: v or "" for k, v in dotenv_values(stream=io.StringIO(text)).items()}
    return EnvFileValues(values, lines)


def _bad_line(path: Path, line: int, text: str) -> str:
    """Why a line is not NAME=value, without repeating its value (it may be the API key)."""
    where = f"{path}, line {line}"
    word = re.match(_FIRST_WORD, text)
    if word and word[2]:
        value = text[word.end() :].lstrip()
        if value[:1] in ("'", '"') and value.find(value[0], 1) > 0:
            return f"{where}: the value of {word[1]} goes on after its closing quote; quote all of it"
        if value[:1] in ("'", '"'):
            return f"{where}: the value of {word[1]} opens a quote it does not close; close it or remove it"
        return f"{where}: the value of {word[1]} cannot be read; write it as {word[1]}=value"
    if word and (word[1] in SETTING_NAMES or word[1] in ALIASES):
        return f"{where}: {word[1]} is not followed by '=': write {word[1]}=value"
    return f"{where} is not a setting: write each as NAME=value, e.g. IMMICH_URL=http://nas:2283"


# Flags whose name is not the setting's in lower case with dashes (--source-dir is SOURCE_DIR's).
FLAG_OF = {
    "IMMICH_URL": "--url",
    "IMMICH_API_KEY": "--key",
    "IGNORE_PATTERNS": "--ignore",
    "MACHINE_NAME": "--machine",
    "UPLOAD_CONCURRENCY": "--concurrency",
    "ALBUM_FROM": "--album-from-folder or --album-from-path",
    "ONLY": "--only-images or --only-videos",
}


def flag_of(name: str) -> str:
    return FLAG_OF.get(name, "--" + name.lower().replace("_", "-"))


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Resolve every setting; `flags` maps setting names to command-line values (None = not given), and
    TAKEOUT to the --takeout paths."""
    environ = os.environ if environ is None else environ
    choice = choose_env_file(env_file)
    if choice.passed_over is not None:
        log.info("settings: passed over %s: %s", choice.passed_over, choice.why)
    path = choice.path
    file = EnvFileValues({}, {}) if path is None else read_env_file(path, warn)
    if path is not None:
        log.info("settings: read from %s", path)

    raw: dict[str, str] = {}
    sources: dict[str, str] = {}
    origins: dict[str, Origin] = {}
    from_flag: set[str] = set()
    for s in SETTINGS:
        value, source, origin = s.default, "default", Origin("default", s.name)
        # An empty value means the default (a copied .env.example stays valid when a line is blanked).
        if file.values.get(s.name, "").strip():
            value, source = file.values[s.name], str(path)
            origin = Origin("file", s.name, path, file.lines.get(s.name, 0))
        if environ.get(s.name, "").strip():
            value, source, origin = environ[s.name], "environment", Origin("environment", s.name)
        if flags and flags.get(s.name) is not None:
            value, source = str(flags[s.name]), "command line"
            origin = Origin("flag", (flags.get("FLAG_NAMES") or {}).get(s.name) or flag_of(s.name))
            from_flag.add(s.name)
        if source == "default":
            for alias in (a for a, name in ALIASES.items() if name == s.name):
                for where, values in ((path, file.values), (None, environ)):
                    if values.get(alias, "").strip():
                        value = values[alias]
                        source = f"{where or 'environment'} ({alias})"
                        origin = (
                            Origin("file", alias, where, file.lines.get(alias, 0))
                            if where is not None
                            else Origin("environment", alias)
                        )
        raw[s.name] = value.strip()
        sources[s.name] = source
        origins[s.name] = origin
    try:
        return _settings(raw, sources, origins, from_flag, choice, flags or {})
    except ConfigError as exc:
        if exc.setting is None or exc.setting not in origins:
            raise
        raise ConfigError(origins[exc.setting].locate(str(exc), exc.setting), exc.setting) from None


def _settings(
    raw: dict[str, str],
    sources: dict[str, str],
    origins: dict[str, Origin],
    from_flag: set[str],
    choice: EnvFileChoice,
    flags: Mapping[str, Any],
) -> Settings:
    def path_of(name: str) -> Path:
        return _resolve_path(raw[name], relative_to_cwd=name in from_flag)

    def split(name: str) -> list[str]:
        return [part.strip() for part in raw[name].split(",") if part.strip()]

    # Server settings are checked when a script needs the server (require_server), so scanning is never
    # blocked by a URL typo or a key pasted with a stray character.
    server_problem = None
    try:
        url = normalize_url(raw["IMMICH_URL"])
    except ConfigError as exc:
        url, server_problem = "", origins["IMMICH_URL"].locate(str(exc), "IMMICH_URL")
    key_problem = api_key_problem(raw["IMMICH_API_KEY"])
    if key_problem and server_problem is None:
        server_problem = f"IMMICH_API_KEY{origins['IMMICH_API_KEY'].after('IMMICH_API_KEY')} {key_problem}"
    ca_bundle = str(path_of("IMMICH_CA_BUNDLE")) if raw["IMMICH_CA_BUNDLE"] else ""
    if ca_bundle and not Path(ca_bundle).is_file() and server_problem is None:
        server_problem = (
            f"IMMICH_CA_BUNDLE{origins['IMMICH_CA_BUNDLE'].after('IMMICH_CA_BUNDLE')}: file {ca_bundle} "
            "does not exist"
        )
    settings = Settings(
        immich_url=url,
        immich_api_key=raw["IMMICH_API_KEY"],
        source_dirs=tuple(_resolve_path(p, "SOURCE_DIR" in from_flag) for p in split("SOURCE_DIR")),
        db_host=raw["DB_HOST"],
        # DB_PORT matters only with DB_HOST: a stray value must not stop a run on SQLite.
        db_port=_int(raw, "DB_PORT", 1, 65535) if raw["DB_HOST"] else 3306,
        db_user=raw["DB_USER"],
        db_password=raw["DB_PASSWORD"],
        db_name=_db_name(raw["DB_NAME"]),
        db_path=path_of("DB_PATH"),
        machine_name=_name(raw, "MACHINE_NAME") or (socket.gethostname() if raw["DB_HOST"] else "local"),
        shared_library=_name(raw, "SHARED_LIBRARY"),
        claim_lease_s=_float(raw, "CLAIM_LEASE", 5.0, 7 * 86400.0),
        image_extensions=_extensions(split("IMAGE_EXTENSIONS")),
        video_extensions=_extensions(split("VIDEO_EXTENSIONS")),
        include_hidden=_bool(raw, "INCLUDE_HIDDEN"),
        ignore_patterns=tuple(split("IGNORE_PATTERNS")),
        hash_chunk_size=_int(raw, "HASH_CHUNK_SIZE", 4096, 64 << 20),
        hash_workers=_int(raw, "HASH_WORKERS", 0, 64) or (os.cpu_count() or 2),
        upload_concurrency=_int(raw, "UPLOAD_CONCURRENCY", 1, 64),
        upload_delay_s=_float(raw, "UPLOAD_DELAY", 0.0, 3600.0),
        max_consecutive_errors=_int(raw, "MAX_CONSECUTIVE_ERRORS", 1, 1_000_000),
        max_retries=_int(raw, "MAX_RETRIES", 0, 100),
        retry_backoff_s=_float(raw, "RETRY_BACKOFF", 0.0, 600.0),
        server_wait_s=_float(raw, "SERVER_WAIT", 0.0, 7 * 86400.0),
        connect_timeout_s=_float(raw, "CONNECT_TIMEOUT", 0.1, 3600.0),
        read_timeout_s=_float(raw, "READ_TIMEOUT", 0.1, 86400.0),
        ca_bundle=ca_bundle,
        verify_tls=_bool(raw, "IMMICH_VERIFY_TLS"),
        log_level=_choice(raw, "LOG_LEVEL", LOG_LEVELS).upper(),
        log_file=path_of("LOG_FILE"),
        time_zone=_time_zone(raw["TIME_ZONE"]),
        album=raw["ALBUM"],
        album_from=_choice(raw, "ALBUM_FROM", ("folder", "path")),
        stack_raw_jpeg=_bool(raw, "STACK_RAW_JPEG"),
        stack_bursts=_bool(raw, "STACK_BURSTS"),
        tags=_tags(split("TAGS")),
        tags_from_folder=_bool(raw, "TAGS_FROM_FOLDER"),
        visibility=_visibility(raw["VISIBILITY"]),
        replace_edited=_bool(raw, "REPLACE_EDITED"),
        delete_uploaded=_bool(raw, "DELETE_UPLOADED"),
        delete_duplicates=_bool(raw, "DELETE_DUPLICATES"),
        pause_server_jobs=_bool(raw, "PAUSE_SERVER_JOBS"),
        since=_date(raw, "SINCE"),
        until=_date(raw, "UNTIL"),
        include=tuple(split("INCLUDE")),
        exclude=tuple(split("EXCLUDE")),
        only=_choice(raw, "ONLY", ("images", "videos")),
        watch_settle_s=_float(raw, "WATCH_SETTLE", 0.0, 86400.0),
        sources=sources,
        origins=origins,
        raw=raw,
        env_file=choice.path,
        env_file_passed_over=choice.passed_over,
        env_file_passed_over_why=choice.why,
        server_problem=server_problem,
        takeout_paths=tuple(
            _resolve_path(p, relative_to_cwd=True) for p in flags.get("TAKEOUT", None) or () if p
        ),
        takeout_trashed=bool(flags.get("TAKEOUT_TRASHED")),
    )
    if settings.shared_library and len(settings.source_dirs) > 1:
        raise ConfigError(
            f"SHARED_LIBRARY: a shared library is one folder (its mount point here), but SOURCE_DIR names "
            f"{len(settings.source_dirs)}{origins['SOURCE_DIR'].after('SOURCE_DIR')}: sync each folder in "
            "a run of its own",
            "SHARED_LIBRARY",
        )
    if settings.since and settings.until and settings.since > settings.until:
        given = [f"{n} from {origins[n].where}" for n in ("SINCE", "UNTIL") if origins[n].kind != "default"]
        raise ConfigError(
            f"SINCE ({settings.since}) is after UNTIL ({settings.until}): no file could match; swap them"
            + (f" ({', '.join(given)})" if given else "")
        )
    return settings


def api_key_problem(key: str) -> str | None:
    """What makes a key unusable in an HTTP header (a zero-width space or a line break pasted with it,
    an inner space), without repeating the key; None when it is fine. Leading and trailing whitespace is
    stripped before this."""
    if key.isascii() and key.isprintable() and " " not in key:
        return None
    for position, char in enumerate(key, 1):
        if "!" <= char <= "~":
            continue
        import unicodedata  # here: only a broken key pays for it

        code = f"U+{ord(char):04X}"
        if char == " ":
            what = "a space"
        elif char in "\r\n":
            what = f"a line break ({code})"
        elif char == "\t":
            what = f"a tab ({code})"
        elif not char.isprintable() or unicodedata.category(char) in ("Zs", "Mn", "Me"):
            what = f"an invisible character, {code},"
        else:
            what = f"a character an HTTP header cannot carry, {code} ({unicodedata.name(char, '?')}),"
        return f"holds {what} at position {position}: copy the key again"
    return None


def _resolve_path(text: str, relative_to_cwd: bool) -> Path:
    """Absolute and without `..` or `.`, so one folder is always written one way (its rows' paths)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() if relative_to_cwd else PROJECT_DIR) / path
    return Path(os.path.normpath(path))


# Pages of Immich's web app: an address copied from the browser names one of them after the server's.
WEB_APP_PAGES = frozenset(
    (
        *("photos", "albums", "explore", "sharing", "search", "people", "places", "favorites", "archive"),
        *("trash", "user-settings", "admin", "auth", "map", "memory", "utilities", "partners", "locked"),
        *("folders", "tags", "shared-links", "share", "link", "buy", "duplicates", "library"),
    )
)
# A scheme typed or pasted wrong (http//, http:/, htp://, https//, http;//, http:\\) before the host.
_SCHEME_SLIP = r"(?s)(?P<word>[A-Za-z]{2,6})(?P<sep>[:;.]?[/\\]+|:)(?P<rest>.*)"


def normalize_url(url: str) -> str:
    """Base URL without a trailing '/' or '/api': users paste both forms. A malformed address is refused
    here, before any scan starts, naming what is wrong with it and, for the usual slips, the address
    meant."""
    url = url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    if not url:
        return ""
    example = "(e.g. http://nas:2283)"
    shown = mask_url_password(url, whole_value=True)  # these errors are printed and logged
    if any(c.isspace() for c in url):
        raise ConfigError(f"IMMICH_URL: {shown!r} contains a space {example}")
    if not url.isprintable():
        raise ConfigError(f"IMMICH_URL: {shown!r} holds an invisible character: type the address again")
    parts = urlsplit(url)
    # http://http://nas parses as the host "http:"; a plain right address is not looked at further.
    if (
        parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.netloc.lower() in ("http:", "https:")
    ):
        meant = mask_url_password(_meant_url(url), whole_value=True)
        hint = f": did you mean {meant}?" if meant != shown and _looks_like_address(meant) else ""
        raise ConfigError(f"IMMICH_URL: {shown!r} is not an http:// or https:// address {example}{hint}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(f"IMMICH_URL: {shown!r} has no valid port number {example}") from None
    if not parts.hostname:
        raise ConfigError(f"IMMICH_URL: {shown!r} names no host {example}")
    base = mask_url_password(f"{parts.scheme}://{parts.netloc}")
    first = parts.path.strip("/").split("/")[0].lower()
    if first == "api":
        raise ConfigError(
            f"IMMICH_URL: {shown!r} names a request of Immich's API, not the server: did you mean {base}?"
        )
    if first in WEB_APP_PAGES:
        raise ConfigError(
            f"IMMICH_URL: {shown!r} is a page of Immich's web app, not the server's address: did you "
            f"mean {base}?"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"IMMICH_URL: {shown!r} should be the server's address only, without ?… or #… {example}: did "
            f"you mean {base}?"
        )
    return url


def _meant_url(url: str) -> str:
    """The address a slip of the scheme stands for: http//nas -> http://nas, htps://nas -> https://nas,
    http://http://nas -> http://nas; nas:2283 -> http://nas:2283. Unchanged when nothing can be said."""
    rest, secure, slipped = url, False, False
    while True:
        match = re.fullmatch(_SCHEME_SLIP, rest)
        word = match["word"].lower() if match else ""
        # Made of h, t, p, s with both t and p: a mistyped http or https, never a host name such as nas.
        if not match or set(word) - set("htps") or not {"t", "p"} <= set(word):
            break
        if match["sep"] == ":" and (match["rest"][:1].isdigit() or not match["rest"]):
            break  # "tp:2283": a host called tp and its port
        secure = "s" in word
        slipped = slipped or word not in ("http", "https") or match["sep"] != "://" or rest != url
        rest = match["rest"]
    if rest == url:
        if "://" in url:
            return "http://" + url.split("://", 1)[1]  # another scheme: ftp://nas
        return "http://" + url if ("." in url or ":" in url) else url
    return f"{'https' if secure else 'http'}://{rest}" if slipped else url


def _looks_like_address(url: str) -> bool:
    parts = urlsplit(url)
    try:
        return parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 1) > 0
    except ValueError:
        return False


def _int(raw: Mapping[str, str], name: str, low: int, high: int) -> int:
    try:
        value = int(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a whole number", name) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range ({low}..{high})", name)
    return value


def _float(raw: Mapping[str, str], name: str, low: float, high: float) -> float:
    try:
        value = float(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a number", name) from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range ({low}..{high})", name)
    return value


def _bool(raw: Mapping[str, str], name: str) -> bool:
    value = raw[name].lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {raw[name]!r} is not true or false", name)


def _choice(raw: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (written as the docs write them), whatever the case typed; empty is allowed and
    means "not set"."""
    value = raw[name]
    if not value:
        return ""
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}", name)


def _visibility(value: str) -> str:
    """archive or timeline. Locked and hidden are refused with why: a locked asset cannot be read back with an
    API key (Immich wants a session unlocked by its PIN), so nothing could confirm, verify, delete or replace
    what was sent; hidden is what Immich makes of a live photo's clip."""
    lowered = value.strip().lower()
    if lowered in ("", "archive", "timeline"):
        return lowered
    if lowered == "locked":
        raise ConfigError(
            "VISIBILITY: locked is not offered: Immich lets an API key neither read nor change a locked asset "
            "(that needs the PIN-unlocked session of its app), so the tool could not confirm, verify, delete "
            "after upload or replace an edited version of what it sent; move photos to the locked folder "
            "in Immich instead"
        )
    if lowered == "hidden":
        raise ConfigError(
            "VISIBILITY: hidden is what Immich makes of a live photo's motion clip, not a place for photos; "
            "use archive or timeline"
        )
    raise ConfigError(f"VISIBILITY: {value!r} is not one of archive, timeline")


def _tags(names: list[str]) -> tuple[str, ...]:
    """Tag values as Immich stores them: '/' separates the levels of a hierarchy, empty levels dropped."""
    tags = []
    for name in names:
        value = "/".join(part.strip() for part in name.split("/") if part.strip())
        if not value:
            raise ConfigError(f"TAGS: {name!r} names no tag")
        tags.append(value)
    return tuple(dict.fromkeys(tags))


def _time_zone(name: str) -> tzinfo | None:
    if not name:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError  # here: 2 ms of every run's start otherwise

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"TIME_ZONE: {name!r} is not a time zone name (e.g. Europe/Berlin, America/New_York, UTC)",
            "TIME_ZONE",
        ) from None


def _date(raw: Mapping[str, str], name: str) -> date | None:
    if not raw[name]:
        return None
    try:
        return date.fromisoformat(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a date (YYYY-MM-DD)", name) from None


def _extensions(items: list[str]) -> frozenset[str]:
    return frozenset(item.lower().lstrip(".") for item in items)


def _name(raw: Mapping[str, str], name: str) -> str:
    """A machine or library name: printable, no separators that could clash in the database's keys."""
    value = raw[name]
    if len(value) > 64 or any(not c.isprintable() or c in ":/\\" for c in value):
        raise ConfigError(
            f"{name}: {value!r} must be at most 64 printable characters without : / or \\", name
        )
    return value


def _db_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_$" for c in name):
        raise ConfigError(f"DB_NAME: {name!r} may hold only letters, digits, _ and $", "DB_NAME")
    return name


def settings_flags(args: Any) -> dict[str, Any]:
    """Map the command-line flags (see cli.base_parser and the scripts) onto setting names."""

    def flag(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is None or value is False:
            return None
        return "true" if value is True else str(value)

    # Folders add up, from --source-dir (repeatable, each may list several, comma-separated) and
    # arguments alike.
    given_dirs = list(getattr(args, "source_dir", None) or [])
    paths = list(getattr(args, "paths", None) or [])
    ignore = getattr(args, "ignore", None)
    flags: dict[str, Any] = {
        "SOURCE_DIR": ",".join(given_dirs + paths) or None,
        "IMMICH_URL": flag("url"),
        "IMMICH_API_KEY": flag("key"),
        "IGNORE_PATTERNS": ",".join(ignore) if ignore else None,
        "INCLUDE_HIDDEN": flag("include_hidden"),
        "DB_PATH": flag("db_path"),
        "MACHINE_NAME": flag("machine"),
        "SHARED_LIBRARY": flag("shared_library"),
        "LOG_LEVEL": flag("log_level"),
        "UPLOAD_CONCURRENCY": flag("concurrency"),
        "ALBUM": flag("album"),
        "STACK_RAW_JPEG": flag("stack_raw_jpeg"),
        "STACK_BURSTS": flag("stack_bursts"),
        "TAGS": ",".join(args.tag) if getattr(args, "tag", None) else None,
        "TAGS_FROM_FOLDER": flag("tags_from_folder"),
        "VISIBILITY": flag("visibility"),
        "DELETE_UPLOADED": flag("delete_uploaded"),
        "DELETE_DUPLICATES": flag("delete_duplicates"),
        "PAUSE_SERVER_JOBS": flag("pause_server_jobs"),
        "SINCE": flag("since"),
        "UNTIL": flag("until"),
        "INCLUDE": flag("include"),
        "EXCLUDE": flag("exclude"),
        "TIME_ZONE": flag("time_zone"),
    }
    takeout = getattr(args, "takeout", None)
    if takeout:
        flags["TAKEOUT"] = takeout  # the paths, not one value
        flags["TAKEOUT_TRASHED"] = flag("takeout_trashed")
    given_as = (("--source-dir", given_dirs), ("the folders given", paths))
    names = {"SOURCE_DIR": " and ".join(name for name, given in given_as if given)}
    for value, setting, name in (
        ("folder", "ALBUM_FROM", "--album-from-folder"),
        ("path", "ALBUM_FROM", "--album-from-path"),
        ("images", "ONLY", "--only-images"),
        ("videos", "ONLY", "--only-videos"),
    ):
        if getattr(args, name[2:].replace("-", "_"), False):
            flags[setting], names[setting] = value, name
    flags["FLAG_NAMES"] = names  # how each was given, for messages (Origin)
    return flags
