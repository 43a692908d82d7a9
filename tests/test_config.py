from __future__ import annotations

import re
from pathlib import Path

import pytest

import config
import scan_files
from config import PROJECT_DIR, ConfigError, load_settings, mask_url_password, normalize_url
from tests.conftest import project_copy, run_inprocess, run_process


def write_env(tmp_path: Path, text: str) -> Path:
    """A settings file for one test; its log goes under tmp_path unless the text names another."""
    path = tmp_path / "settings.env"
    path.write_text(text if "LOG_FILE=" in text else f"{text}LOG_FILE={tmp_path}/log.txt\n")
    return path


def test_defaults_match_the_client_spec_except_the_fixed_upload_delay(tmp_path: Path) -> None:
    s = load_settings(env_file="/dev/null", environ={})
    assert s.max_consecutive_errors == 5
    # Issue 16: no fixed rest between uploads by default; the server's own answers pause the workers.
    assert s.upload_delay_s == 0.0
    assert s.server_wait_s == 300.0
    assert s.log_level == "INFO"
    assert s.log_file == config.PROJECT_DIR / "logs" / "immich_uploader.log"
    assert s.backend == "sqlite"
    assert s.upload_concurrency == 8
    assert {"jpg", "heic", "cr2", "nef", "dng", "arw"} <= s.image_extensions
    assert {"mp4", "mov", "3gp", "mts", "m2ts"} <= s.video_extensions


def test_sources_strongest_first_flag_environment_file_default(tmp_path: Path) -> None:
    env = write_env(tmp_path, "UPLOAD_DELAY=0.5\nMAX_CONSECUTIVE_ERRORS=7\nLOG_LEVEL=DEBUG\n")
    s = load_settings(
        flags={"LOG_LEVEL": "ERROR"},
        env_file=str(env),
        environ={"MAX_CONSECUTIVE_ERRORS": "9", "LOG_LEVEL": "WARNING"},
    )
    assert s.upload_delay_s == 0.5 and s.sources["UPLOAD_DELAY"] == str(env)
    assert s.max_consecutive_errors == 9 and s.sources["MAX_CONSECUTIVE_ERRORS"] == "environment"
    assert s.log_level == "ERROR" and s.sources["LOG_LEVEL"] == "command line"
    assert s.sources["DB_PORT"] == "default"


def test_relative_paths_in_settings_are_relative_to_the_project(tmp_path: Path) -> None:
    s = load_settings(env_file=str(write_env(tmp_path, "DB_PATH=data/x.db\nSOURCE_DIR=pics\n")), environ={})
    assert s.db_path == config.PROJECT_DIR / "data" / "x.db"
    assert s.source_dirs == (config.PROJECT_DIR / "pics",)


@pytest.mark.parametrize(
    "pasted", ["http://nas:2283", "http://nas:2283/", "http://nas:2283/api", "http://nas:2283/api/"]
)
def test_immich_url_accepted_with_or_without_api_suffix(pasted: str) -> None:
    assert normalize_url(pasted) == "http://nas:2283"


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("MAX_CONSECUTIVE_ERRORS=five", "MAX_CONSECUTIVE_ERRORS: 'five' is not a whole number"),
        ("UPLOAD_DELAY=soon", "UPLOAD_DELAY: 'soon' is not a number"),
        ("LOG_LEVEL=LOUD", "LOG_LEVEL"),
        ("INCLUDE_HIDDEN=maybe", "INCLUDE_HIDDEN"),
        ("UPLOAD_CONCURRENCY=0", "UPLOAD_CONCURRENCY: 0 is out of range"),
    ],
)
def test_bad_setting_names_the_setting(tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=str(write_env(tmp_path, line + "\n")), environ={})
    assert without_origin(str(caught.value)).startswith(named)


def without_origin(message: str) -> str:
    """A settings error without the part that says where the value came from (tested on its own)."""
    return re.sub(r" \(from [^)]*\)", "", message)


def test_bad_setting_gives_one_line_and_exit_2_without_traceback(tmp_path: Path) -> None:
    env = write_env(
        tmp_path, f"SOURCE_DIR={tmp_path}\nMAX_CONSECUTIVE_ERRORS=five\nDB_PATH={tmp_path}/s.db\n"
    )
    result = run_process("scan_files.py", "--env-file", str(env))
    assert result.status == 2
    assert result.lines == [
        f"immich-uploader: error: MAX_CONSECUTIVE_ERRORS (from {env}, line 2): 'five' is not a whole number"
    ]


def test_missing_source_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    env = write_env(tmp_path, f"SOURCE_DIR={tmp_path}/nope\nDB_PATH={tmp_path}/s.db\n")
    result = run_inprocess(scan_files.main, "--env-file", str(env))
    assert result.status == 2
    assert f"SOURCE_DIR (from {env}, line 1): {tmp_path}/nope does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_scanning_needs_no_server_settings(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    env = write_env(tmp_path, f"SOURCE_DIR={tmp_path}/pics\nDB_PATH={tmp_path}/s.db\n")
    assert run_inprocess(scan_files.main, "--env-file", str(env), "--no-progress").status == 0


def test_typo_in_env_file_is_pointed_out(tmp_path: Path) -> None:
    warnings: list[str] = []
    load_settings(
        env_file=str(write_env(tmp_path, "IMMICH_ULR=http://x\n")), environ={}, warn=warnings.append
    )
    assert len(warnings) == 1 and "IMMICH_ULR" in warnings[0] and "did you mean IMMICH_URL" in warnings[0]


def test_show_config_masks_the_api_key(tmp_path: Path) -> None:
    key = "SECRETKEY-abcdefghijklmnop"
    env = write_env(tmp_path, f"IMMICH_API_KEY={key}\nDB_PATH={tmp_path}/s.db\n")
    result = run_inprocess(scan_files.main, "--env-file", str(env), "--show-config")
    assert result.status == 0
    assert "IMMICH_API_KEY=SE****op" in result.stdout
    assert key not in result.stdout + result.stderr


def test_env_file_flag_pointing_nowhere_is_exit_2(tmp_path: Path) -> None:
    result = run_inprocess(scan_files.main, "--env-file", str(tmp_path / "missing.env"))
    assert result.status == 2 and "does not exist" in result.stderr


def test_env_example_documents_every_setting_with_its_default() -> None:
    from config import SETTINGS

    example = (PROJECT_DIR / ".env.example").read_text()
    for s in SETTINGS:
        assert f"\n{s.name}={s.default}\n" in example, s.name
        assert f"# {s.help}\n{s.name}=" in example, s.name


def test_empty_value_means_the_default(tmp_path: Path) -> None:
    s = load_settings(env_file=str(write_env(tmp_path, "DB_PORT=\nMAX_CONSECUTIVE_ERRORS=\n")), environ={})
    assert s.db_port == 3306 and s.max_consecutive_errors == 5


def test_a_bad_server_setting_blocks_only_what_needs_the_server(tmp_path: Path) -> None:
    import upload_files

    (tmp_path / "pics").mkdir()
    env = write_env(
        tmp_path, f"SOURCE_DIR={tmp_path}/pics\nDB_PATH={tmp_path}/s.db\nIMMICH_URL=nas:2283\nDB_PORT=x\n"
    )
    assert run_inprocess(scan_files.main, "--env-file", str(env), "--no-progress").status == 0
    result = run_inprocess(upload_files.main, "--env-file", str(env), "--no-progress")
    assert result.status == 2
    assert (
        f"IMMICH_URL (from {env}, line 3): 'nas:2283' is not an http:// or https:// address" in result.stderr
    )


def test_settings_repr_hides_the_secrets(tmp_path: Path) -> None:
    s = load_settings(
        env_file=str(write_env(tmp_path, "IMMICH_API_KEY=k-123456789\nDB_PASSWORD=pw-98765\n")), environ={}
    )
    assert "k-123456789" not in repr(s) and "pw-98765" not in repr(s)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ONLY=photos", "ONLY: 'photos' is not one of images, videos"),
        ("ALBUM_FROM=year", "ALBUM_FROM: 'year' is not one of folder, path"),
        ("LOG_LEVEL=loud", "LOG_LEVEL: 'loud' is not one of DEBUG, INFO, WARNING, ERROR"),
        ("SINCE=2024-05-01\nUNTIL=2024-01-01", "SINCE (2024-05-01) is after UNTIL (2024-01-01)"),
    ],
)
def test_setting_errors_use_the_words_of_the_docs(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env_file=str(write_env(tmp_path, line + "\n")), environ={})
    assert without_origin(str(caught.value)).startswith(message)


def test_choices_are_taken_in_any_case(tmp_path: Path) -> None:
    s = load_settings(env_file=str(write_env(tmp_path, "ONLY=Videos\nLOG_LEVEL=debug\n")), environ={})
    assert s.only == "videos" and s.log_level == "DEBUG"


def test_env_file_dev_null_means_no_settings_file_and_a_folder_is_named_as_such(tmp_path: Path) -> None:
    assert load_settings(env_file="/dev/null", environ={}).immich_url == ""
    with pytest.raises(ConfigError, match="is a folder, not a settings file"):
        load_settings(env_file=str(tmp_path), environ={})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://alice:pw@nas:2283", "http://alice:****@nas:2283"),
        ("https://alice:p@ss/w0rd@photos.example.org", "https://alice:****@photos.example.org"),
        ("http://alice:p%40ss@nas", "http://alice:****@nas"),
        ("http//alice:pw@nas", "http//alice:****@nas"),  # malformed, quoted back in the settings error
        ("alice:pw@nas:2283", "alice:****@nas:2283"),
        ("http://alice@nas:2283", "http://alice@nas:2283"),  # no password
        ("http://nas:2283/photos", "http://nas:2283/photos"),
    ],
)
def test_a_password_in_an_address_is_shown_as_stars(url: str, shown: str) -> None:
    assert mask_url_password(url) == shown


def test_a_password_in_immich_url_is_a_secret_like_the_key(tmp_path: Path) -> None:
    env = write_env(tmp_path, f"IMMICH_URL=http://alice:p%40ss-w0rd@nas:2283\nDB_PATH={tmp_path}/s.db\n")
    s = load_settings(env_file=str(env), environ={})
    assert s.immich_url == "http://alice:p%40ss-w0rd@nas:2283"  # what is sent (as basic auth)
    assert s.display_url == "http://alice:****@nas:2283"
    assert {"p%40ss-w0rd", "p@ss-w0rd"} <= set(s.secrets)  # the log's filter hides both spellings
    shown = run_inprocess(scan_files.main, "--env-file", str(env), "--show-config")
    assert f"IMMICH_URL=http://alice:****@nas:2283  # {env}" in shown.stdout and "w0rd" not in shown.stdout
    for malformed in ("http://alice:pw-secret@nas:99999", "http://alice:pw secret@nas:2283"):
        with pytest.raises(ConfigError) as caught:
            normalize_url(malformed)
        assert "alice:****@nas" in str(caught.value) and "secret" not in str(caught.value)


def test_visibility_locked_is_refused_saying_why_and_other_values_name_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="an API key neither read nor change a locked asset"):
        load_settings(env_file=str(write_env(tmp_path, "VISIBILITY=locked\n")), environ={})
    with pytest.raises(ConfigError, match="live photo's motion clip"):
        load_settings(env_file=str(write_env(tmp_path, "VISIBILITY=hidden\n")), environ={})
    with pytest.raises(ConfigError, match="'public' is not one of archive, timeline"):
        load_settings(env_file=str(write_env(tmp_path, "VISIBILITY=public\n")), environ={})
    assert (
        load_settings(env_file=str(write_env(tmp_path, "VISIBILITY=Archive\n")), environ={}).visibility
        == "archive"
    )
    assert load_settings(env_file=str(write_env(tmp_path, "")), environ={}).visibility == ""


def test_a_locked_visibility_on_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    import upload_files

    env = write_env(tmp_path, f"DB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log\n")
    result = run_inprocess(
        upload_files.main, "--env-file", str(env), "--visibility", "locked", "--no-progress"
    )
    assert result.status == 2
    assert (
        result.stderr.count("\n") == 1
        and "immich-uploader: error: VISIBILITY: locked is not offered" in result.stderr
    )


def test_tags_come_from_repeated_flags_and_the_setting_as_immich_values(tmp_path: Path) -> None:
    s = load_settings(env_file=str(write_env(tmp_path, "TAGS= Family , Trips//Paris/ ,Family\n")), environ={})
    assert s.tags == ("Family", "Trips/Paris")
    with pytest.raises(ConfigError, match="names no tag"):
        load_settings(env_file=str(write_env(tmp_path, "TAGS=a,/\n")), environ={})
    import argparse

    from config import settings_flags

    flags = settings_flags(argparse.Namespace(tag=["Kids", "Trips/2019"], tags_from_folder=True))
    assert flags["TAGS"] == "Kids,Trips/2019" and flags["TAGS_FROM_FOLDER"] == "true"
    assert load_settings(flags, env_file=str(write_env(tmp_path, "")), environ={}).tags == (
        "Kids",
        "Trips/2019",
    )


# --- which settings file a run reads (issue 20) ---------------------------------------------------------

IMMICH_COMPOSE_ENV = """\
# Immich's own docker-compose .env, where Immich users keep their scripts
UPLOAD_LOCATION=./library
DB_DATA_LOCATION=./postgres
TZ=Europe/Berlin
IMMICH_VERSION=release
DB_PASSWORD=postgres
DB_USERNAME=postgres
DB_DATABASE_NAME=immich
"""


def test_another_programs_env_in_the_current_folder_changes_no_setting(
    isolated_project: Path, tmp_path: Path
) -> None:
    (Path.cwd() / ".env").write_text(IMMICH_COMPOSE_ENV)
    ours = config.PROJECT_DIR / ".env"
    ours.write_text(f"SOURCE_DIR={tmp_path}\nDB_PATH={tmp_path}/s.db\n")
    warnings: list[str] = []
    s = load_settings(environ={}, warn=warnings.append)
    assert warnings == []
    assert s.env_file == ours and s.source_dirs == (tmp_path,) and s.db_password == ""
    assert s.env_file_passed_over == Path.cwd() / ".env"
    assert "IMMICH_URL" in s.env_file_passed_over_why


def test_another_programs_env_alone_leaves_every_setting_at_its_default(isolated_project: Path) -> None:
    (Path.cwd() / ".env").write_text(IMMICH_COMPOSE_ENV)
    s = load_settings(environ={})
    assert s.env_file is None and s.db_password == "" and set(s.sources.values()) == {"default"}


@pytest.mark.parametrize(
    "line",
    [
        "IMMICH_URL=http://nas:2283",
        "IMMICH_API_KEY=k-0123456789",
        "IMMICH_INSTANCE_URL=http://nas:2283",
        "export IMMICH_URL=",
    ],
)
def test_an_env_in_the_current_folder_that_names_the_server_is_read(
    isolated_project: Path, line: str
) -> None:
    here = Path.cwd() / ".env"
    here.write_text(f"DB_NAME=from_here\n{line}\n")
    (config.PROJECT_DIR / ".env").write_text("DB_NAME=beside_the_scripts\n")
    s = load_settings(environ={})
    assert s.env_file == here and s.db_name == "from_here" and s.env_file_passed_over is None


def test_env_file_flag_wins_over_both_dot_envs(isolated_project: Path, tmp_path: Path) -> None:
    (Path.cwd() / ".env").write_text("IMMICH_URL=http://here:2283\n")
    (config.PROJECT_DIR / ".env").write_text("IMMICH_URL=http://beside:2283\n")
    s = load_settings(env_file=str(write_env(tmp_path, "IMMICH_URL=http://chosen:2283\n")), environ={})
    assert s.immich_url == "http://chosen:2283"


def test_show_config_names_the_file_read_and_the_one_passed_over_and_why(isolated_project: Path) -> None:
    (Path.cwd() / ".env").write_text(IMMICH_COMPOSE_ENV)
    ours = config.PROJECT_DIR / ".env"
    ours.write_text(f"DB_PATH={isolated_project}/s.db\nLOG_FILE={isolated_project}/log.txt\n")
    result = run_inprocess(scan_files.main, "--show-config", "-v")
    assert result.status == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"# settings file: {ours}"
    assert lines[1].startswith(f"# passed over: {Path.cwd() / '.env'}: it sets none of IMMICH_URL")
    assert "DB_PASSWORD=  # default" in lines
    assert f"settings: passed over {Path.cwd() / '.env'}: it sets none" in result.stderr  # -v says so too


def test_a_script_run_from_immichs_folder_reads_the_env_beside_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.conftest import script_environment

    scripts = project_copy(tmp_path)
    pics = tmp_path / "pics"
    pics.mkdir()
    (scripts / ".env").write_text(
        f"SOURCE_DIR={pics}\nDB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log.txt\n"
    )
    immich = tmp_path / "immich-app"
    immich.mkdir()
    (immich / ".env").write_text(IMMICH_COMPOSE_ENV)
    proc = subprocess.run(
        [sys.executable, str(scripts / "scan_files.py"), "--no-progress"],
        cwd=immich, capture_output=True, text=True, timeout=120, env=script_environment(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "unknown setting" not in proc.stderr and "SOURCE_DIR is not set" not in proc.stderr
    assert (tmp_path / "s.db").exists()


@pytest.mark.parametrize(
    ("how", "where"),
    [
        ("file", "(from {env}, line 1)"),
        ("environment", "(from the environment)"),
        ("flag", "(from --concurrency)"),
    ],
)
def test_a_settings_error_names_where_the_value_came_from(tmp_path: Path, how: str, where: str) -> None:
    import upload_files

    env = write_env(tmp_path, "UPLOAD_CONCURRENCY=0\n" if how == "file" else "")
    argv = ["--env-file", str(env), "--db-path", str(tmp_path / "s.db")]
    if how == "flag":
        argv += ["--concurrency", "0"]
    if how == "environment":
        import os

        os.environ["UPLOAD_CONCURRENCY"] = "0"  # the clean_environment fixture removes it afterwards
    result = run_inprocess(upload_files.main, *argv)
    assert result.status == 2
    assert result.lines == [
        f"immich-uploader: error: UPLOAD_CONCURRENCY {where.format(env=env)}: 0 is out of range (1..64)"
    ]


def test_a_bad_server_address_in_a_file_names_the_file_and_line(tmp_path: Path) -> None:
    env = write_env(tmp_path, "DB_NAME=x\nIMMICH_URL=nas:2283\n")
    with pytest.raises(ConfigError, match=rf"^IMMICH_URL \(from {env}, line 2\): 'nas:2283' is not"):
        load_settings(env_file=str(env), environ={}).require_server()


# --- lines that are not NAME=value -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("IMMICH_URL http://nas:2283", "line 2: IMMICH_URL is not followed by '=': write IMMICH_URL=value"),
        ("IMMICH_URL", "line 2: IMMICH_URL has no '=': write IMMICH_URL=value (or IMMICH_URL= for its default)"),
        ("IMMICH_API_KEY secret-0123456789", "line 2: IMMICH_API_KEY is not followed by '=': write IMMICH_API_KEY=value"),
        ("just some words", "line 2 is not a setting: write each as NAME=value, e.g. IMMICH_URL=http://nas:2283"),
        ("ALBUM='Holiday", "line 2: the value of ALBUM opens a quote it does not close; close it or remove it"),
        ('ALBUM="Holiday" 2024', "line 2: the value of ALBUM goes on after its closing quote; quote all of it"),
    ],
)  # fmt: skip
def test_a_line_without_equals_is_an_error_naming_file_and_line_and_exit_2(
    tmp_path: Path, line: str, message: str
) -> None:
    env = write_env(tmp_path, f"DB_PATH={tmp_path}/s.db\n{line}\nSOURCE_DIR={tmp_path}\n")
    result = run_process("scan_files.py", "--env-file", str(env))
    assert result.status == 2
    assert result.lines == [f"immich-uploader: error: {env}, {message}"]
    assert "secret-0123456789" not in result.stderr and "python-dotenv" not in result.stderr


def test_line_numbers_count_blank_lines_and_comments(tmp_path: Path) -> None:
    env = write_env(tmp_path, "# settings\n\nDB_NAME=x\n\n\nLOG_LEVEL=LOUD\n")
    with pytest.raises(ConfigError, match=rf"^LOG_LEVEL \(from {env}, line 6\): "):
        load_settings(env_file=str(env), environ={})


def test_an_unknown_bare_name_is_warned_about_with_its_line(tmp_path: Path) -> None:
    warnings: list[str] = []
    load_settings(env_file=str(write_env(tmp_path, "DB_NAME=x\nFOO\n")), environ={}, warn=warnings.append)
    assert warnings == [f"{tmp_path / 'settings.env'}, line 2: unknown setting FOO; it is ignored"]


# --- server address slips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("http//nas:2283", "http://nas:2283"),
        ("http:/nas:2283", "http://nas:2283"),
        ("http:nas:2283", "http://nas:2283"),
        ("http;//nas:2283", "http://nas:2283"),
        ("http:\\\\nas:2283", "http://nas:2283"),
        ("htp://nas:2283", "http://nas:2283"),
        ("htps://nas", "https://nas"),
        ("https//nas", "https://nas"),
        ("http://http://nas:2283", "http://nas:2283"),
        ("nas:2283", "http://nas:2283"),
        ("192.168.1.5:2283", "http://192.168.1.5:2283"),
        ("http://nas:2283/photos", "http://nas:2283"),
        ("http://nas:2283/albums/0b4c1f5e-8a2a-4f62-9b0e-2d5f0a1b3c4d", "http://nas:2283"),
        ("https://photos.example.org/api/server/ping", "https://photos.example.org"),
        ("http://nas:2283/#/photos", "http://nas:2283"),
    ],
)
def test_a_mistyped_server_address_gets_the_address_meant(typed: str, meant: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_url(typed)
    assert str(caught.value).endswith(f"did you mean {meant}?")


def test_an_address_behind_a_proxy_path_is_kept() -> None:
    assert normalize_url("https://home.example.org/immich/") == "https://home.example.org/immich"


# --- API keys HTTP cannot carry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("abcdefghij0123456789abcdefghij\u200bXYZ", "holds an invisible character, U+200B, at position 31"),
        ("abcdef ghij0123456789", "holds a space at position 7"),
        ("abcdef\nghij0123456789", "holds a line break (U+000A) at position 7"),
        (
            "abcdéfghij0123456789",
            "holds a character an HTTP header cannot carry, U+00E9 (LATIN SMALL LETTER E WITH ACUTE), at position 5",
        ),
    ],
)
def test_an_api_key_http_cannot_carry_is_one_settings_line_that_never_shows_it(
    tmp_path: Path, key: str, problem: str
) -> None:
    import os

    import upload_files

    os.environ["IMMICH_API_KEY"] = key  # a newline cannot be written in .env unquoted; the environment can
    env = write_env(tmp_path, f"IMMICH_URL=http://127.0.0.1:9\nDB_PATH={tmp_path}/s.db\n")
    result = run_inprocess(upload_files.main, "--env-file", str(env))
    assert result.status == 2
    assert result.lines == [
        f"immich-uploader: error: IMMICH_API_KEY (from the environment) {problem}: copy the key again"
    ]
    for part in key.split():
        assert part not in result.stderr


def test_an_api_key_with_a_zero_width_space_in_the_env_file_names_its_line(tmp_path: Path) -> None:
    env = write_env(tmp_path, "IMMICH_URL=http://nas:2283\nIMMICH_API_KEY=abc\u200bdefghijklmnop\n")
    settings = load_settings(env_file=str(env), environ={})
    with pytest.raises(ConfigError) as caught:
        settings.require_server()
    assert str(caught.value) == (
        f"IMMICH_API_KEY (from {env}, line 2) holds an invisible character, U+200B, at position 4: copy the "
        "key again"
    )


def test_an_env_saved_with_a_byte_order_mark_is_read_and_recognised(isolated_project: Path) -> None:
    here = Path.cwd() / ".env"
    here.write_bytes(b"\xef\xbb\xbfIMMICH_URL=http://nas:2283\r\nDB_NAME=from_notepad\r\n")
    warnings: list[str] = []
    s = load_settings(environ={}, warn=warnings.append)
    assert s.env_file == here and s.immich_url == "http://nas:2283" and s.db_name == "from_notepad"
    assert warnings == []
