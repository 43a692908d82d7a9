from __future__ import annotations

from pathlib import Path

import pytest

import config
import scan_files
from config import PROJECT_DIR, ConfigError, load_settings, normalize_url
from tests.conftest import run_inprocess, run_process


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
    with pytest.raises(ConfigError, match=named):
        load_settings(env_file=str(write_env(tmp_path, line + "\n")), environ={})


def test_bad_setting_gives_one_line_and_exit_2_without_traceback(tmp_path: Path) -> None:
    env = write_env(
        tmp_path, f"SOURCE_DIR={tmp_path}\nMAX_CONSECUTIVE_ERRORS=five\nDB_PATH={tmp_path}/s.db\n"
    )
    result = run_process("scan_files.py", "--env-file", str(env))
    assert result.status == 2
    assert result.lines == ["immich-uploader: error: MAX_CONSECUTIVE_ERRORS: 'five' is not a whole number"]


def test_missing_source_folder_is_one_line_exit_2(tmp_path: Path) -> None:
    env = write_env(tmp_path, f"SOURCE_DIR={tmp_path}/nope\nDB_PATH={tmp_path}/s.db\n")
    result = run_inprocess(scan_files.main, "--env-file", str(env))
    assert result.status == 2
    assert f"SOURCE_DIR: folder {tmp_path}/nope does not exist" in result.stderr
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
    assert "IMMICH_URL: 'nas:2283' is not an http:// or https:// address" in result.stderr


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
    assert str(caught.value).startswith(message)


def test_choices_are_taken_in_any_case(tmp_path: Path) -> None:
    s = load_settings(env_file=str(write_env(tmp_path, "ONLY=Videos\nLOG_LEVEL=debug\n")), environ={})
    assert s.only == "videos" and s.log_level == "DEBUG"


def test_env_file_dev_null_means_no_settings_file_and_a_folder_is_named_as_such(tmp_path: Path) -> None:
    assert load_settings(env_file="/dev/null", environ={}).immich_url == ""
    with pytest.raises(ConfigError, match="is a folder, not a settings file"):
        load_settings(env_file=str(tmp_path), environ={})


def test_a_source_dir_that_is_a_file_gets_the_right_words(tmp_path: Path) -> None:
    photo = tmp_path / "IMG_1.jpg"
    photo.write_bytes(b"x")
    env = write_env(tmp_path, f"SOURCE_DIR={photo}\nDB_PATH={tmp_path}/s.db\n")
    result = run_inprocess(scan_files.main, "--env-file", str(env))
    assert result.status == 2 and result.lines == [
        f"immich-uploader: error: SOURCE_DIR: {photo} is a file, not a folder"
    ]
