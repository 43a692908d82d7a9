"""Every setting the uploader knows, where each value came from, and what makes one invalid.

Settings are resolved once per run, strongest source first: a command-line flag, the process environment,
the `.env` file, the built-in default. `--env-file PATH` picks the file; without it `.env` in the current
folder is read, else `.env` beside the scripts. Relative paths written in `.env` or the environment are taken
relative to the project folder (cron starts scripts from `/`); relative paths given as flags are taken
relative to the current folder, as with any command. A bad value raises `ConfigError`, naming the setting.
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

from dotenv import dotenv_values

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
    """A setting is missing or invalid; the message names it and says how to fix it."""


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
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    env_file: Path | None = None
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
            raise ConfigError("SOURCE_DIR is not set: give --source-dir FOLDER or set SOURCE_DIR in .env")
        for folder in self.source_dirs:
            if folder.exists() and not (folder.is_dir() or folder.is_file()):
                raise ConfigError(f"SOURCE_DIR: {folder} is neither a folder nor a file")

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


def settings_file_for(env_file: Path | None) -> Path:
    """The file settings are saved to: the one read, else .env beside the scripts."""
    return env_file if env_file is not None and env_file.is_file() else PROJECT_DIR / ".env"


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


def find_env_file(explicit: str | None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_dir():
            raise ConfigError(f"--env-file: {path} is a folder, not a settings file")
        if not path.exists():
            raise ConfigError(f"--env-file: {path} does not exist")
        return path  # a file, or /dev/null for "no settings file at all"
    for candidate in (Path.cwd() / ".env", PROJECT_DIR / ".env"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    warn: Callable[[str], None] | None = None,
) -> Settings:
    """Resolve every setting; `flags` maps setting names to command-line values (None = not given), and
    TAKEOUT to the --takeout paths."""
    environ = os.environ if environ is None else environ
    path = find_env_file(env_file)
    file_values: dict[str, str] = {}
    if path is not None:
        try:
            file_values = {k: v or "" for k, v in dotenv_values(path).items()}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
        for key in file_values:
            if key not in SETTING_NAMES and key not in ALIASES and warn is not None:
                import difflib  # here: only a typo pays for it

                close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                warn(f"{path}: unknown setting {key}{hint}; it is ignored")

    raw: dict[str, str] = {}
    sources: dict[str, str] = {}
    from_flag: set[str] = set()
    for s in SETTINGS:
        value, source = s.default, "default"
        # An empty value means the default (a copied .env.example stays valid when a line is blanked).
        if file_values.get(s.name, "").strip():
            value, source = file_values[s.name], str(path)
        if environ.get(s.name, "").strip():
            value, source = environ[s.name], "environment"
        if flags and flags.get(s.name) is not None:
            value, source = str(flags[s.name]), "command line"
            from_flag.add(s.name)
        if source == "default":
            for alias in (a for a, name in ALIASES.items() if name == s.name):
                for where, values in ((str(path), file_values), ("environment", environ)):
                    if values.get(alias, "").strip():
                        value, source = values[alias], f"{where} ({alias})"
        raw[s.name] = value.strip()
        sources[s.name] = source

    def path_of(name: str) -> Path:
        return _resolve_path(raw[name], relative_to_cwd=name in from_flag)

    def split(name: str) -> list[str]:
        return [part.strip() for part in raw[name].split(",") if part.strip()]

    # Server settings are checked when a script needs the server (require_server), so scanning is never
    # blocked by a URL typo.
    server_problem = None
    try:
        url = normalize_url(raw["IMMICH_URL"])
    except ConfigError as exc:
        url, server_problem = "", str(exc)
    ca_bundle = str(path_of("IMMICH_CA_BUNDLE")) if raw["IMMICH_CA_BUNDLE"] else ""
    if ca_bundle and not Path(ca_bundle).is_file() and server_problem is None:
        server_problem = f"IMMICH_CA_BUNDLE: file {ca_bundle} does not exist"
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
        raw=raw,
        env_file=path,
        server_problem=server_problem,
        takeout_paths=tuple(
            _resolve_path(p, relative_to_cwd=True) for p in (flags or {}).get("TAKEOUT", None) or () if p
        ),
        takeout_trashed=bool((flags or {}).get("TAKEOUT_TRASHED")),
    )
    if settings.shared_library and len(settings.source_dirs) > 1:
        raise ConfigError(
            f"SHARED_LIBRARY: a shared library is one folder (its mount point here), but SOURCE_DIR names "
            f"{len(settings.source_dirs)}: sync each folder in a run of its own"
        )
    if settings.since and settings.until and settings.since > settings.until:
        raise ConfigError(
            f"SINCE ({settings.since}) is after UNTIL ({settings.until}): no file could match; swap them"
        )
    return settings


def _resolve_path(text: str, relative_to_cwd: bool) -> Path:
    """Absolute and without `..` or `.`, so one folder is always written one way (its rows' paths)."""
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() if relative_to_cwd else PROJECT_DIR) / path
    return Path(os.path.normpath(path))


def normalize_url(url: str) -> str:
    """Base URL without a trailing '/' or '/api': users paste both forms. A malformed address is refused
    here, before any scan starts, naming what is wrong with it."""
    url = url.strip().rstrip("/")
    if url.endswith("/api"):
        url = url[: -len("/api")]
    if not url:
        return ""
    example = "(e.g. http://nas:2283)"
    shown = mask_url_password(url, whole_value=True)  # these errors are printed and logged
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        hint = f": did you mean http://{shown.split('://')[-1]}?" if "." in url or ":" in url else ""
        raise ConfigError(f"IMMICH_URL: {shown!r} is not an http:// or https:// address {example}{hint}")
    if any(c.isspace() for c in url):
        raise ConfigError(f"IMMICH_URL: {shown!r} contains a space {example}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ConfigError(f"IMMICH_URL: {shown!r} has no valid port number {example}") from None
    if not parts.hostname:
        raise ConfigError(f"IMMICH_URL: {shown!r} names no host {example}")
    if parts.query or parts.fragment:
        raise ConfigError(
            f"IMMICH_URL: {shown!r} should be the server's address only, without ?… or #… {example}"
        )
    return url


def _int(raw: Mapping[str, str], name: str, low: int, high: int) -> int:
    try:
        value = int(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range ({low}..{high})")
    return value


def _float(raw: Mapping[str, str], name: str, low: float, high: float) -> float:
    try:
        value = float(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}: {value} is out of range ({low}..{high})")
    return value


def _bool(raw: Mapping[str, str], name: str) -> bool:
    value = raw[name].lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}: {raw[name]!r} is not true or false")


def _choice(raw: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (written as the docs write them), whatever the case typed; empty is allowed and
    means "not set"."""
    value = raw[name]
    if not value:
        return ""
    for choice in choices:
        if value.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}: {value!r} is not one of {', '.join(choices)}")


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
            f"TIME_ZONE: {name!r} is not a time zone name (e.g. Europe/Berlin, America/New_York, UTC)"
        ) from None


def _date(raw: Mapping[str, str], name: str) -> date | None:
    if not raw[name]:
        return None
    try:
        return date.fromisoformat(raw[name])
    except ValueError:
        raise ConfigError(f"{name}: {raw[name]!r} is not a date (YYYY-MM-DD)") from None


def _extensions(items: list[str]) -> frozenset[str]:
    return frozenset(item.lower().lstrip(".") for item in items)


def _name(raw: Mapping[str, str], name: str) -> str:
    """A machine or library name: printable, no separators that could clash in the database's keys."""
    value = raw[name]
    if len(value) > 64 or any(not c.isprintable() or c in ":/\\" for c in value):
        raise ConfigError(f"{name}: {value!r} must be at most 64 printable characters without : / or \\")
    return value


def _db_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "_$" for c in name):
        raise ConfigError(f"DB_NAME: {name!r} may hold only letters, digits, _ and $")
    return name


def settings_flags(args: Any) -> dict[str, Any]:
    """Map the command-line flags (see cli.base_parser and the scripts) onto setting names."""

    def flag(name: str) -> str | None:
        value = getattr(args, name, None)
        if value is None or value is False:
            return None
        return "true" if value is True else str(value)

    paths = getattr(args, "paths", None)
    ignore = getattr(args, "ignore", None)
    flags = {
        "SOURCE_DIR": ",".join(paths) if paths else flag("source_dir"),
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
    if getattr(args, "album_from_folder", False):
        flags["ALBUM_FROM"] = "folder"
    if getattr(args, "album_from_path", False):
        flags["ALBUM_FROM"] = "path"
    if getattr(args, "only_images", False):
        flags["ONLY"] = "images"
    if getattr(args, "only_videos", False):
        flags["ONLY"] = "videos"
    return flags
