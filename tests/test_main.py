"""The menu in a real pseudo-terminal, the report, and output made for pipes and cron."""

from __future__ import annotations

import csv
import io
import re
import signal
import sys
import time
from pathlib import Path

import pexpect

import config
import main
import scan_files
import sync_upload
import upload_files
from config import PROJECT_DIR, load_settings
from db_manager import open_store
from tests.conftest import Env, Library, run_inprocess, run_process, script_environment
from tests.immich_server import ImmichTestServer

ESCAPE = re.compile(r"\x1b\[")


def terminal_signals() -> None:
    """Ctrl+C as a user's terminal delivers it: a suite started in the background of a script inherits
    SIGINT ignored, and so would the menu."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_menu(env: Env) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        [str(PROJECT_DIR / "main.py"), "--env-file", str(env.path)],
        cwd="/",
        env={**script_environment(), "TERM": "xterm", "COLUMNS": "120"},
        encoding="utf-8",
        # On Ctrl+C the terminal driver discards output not yet read, which can cut a character in two.
        codec_errors="replace",
        timeout=30,
        dimensions=(40, 120),
        preexec_fn=terminal_signals,
    )
    child.expect("Choose: ")
    return child


def test_menu_runs_a_sync_in_a_terminal_and_quits(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(3)
    child = spawn_menu(server_env)
    child.sendline("3")
    child.expect(r"upload|scan")  # the live status line
    child.expect("Sync finished")
    child.expect(r"uploaded\s+3")
    child.expect("Choose: ")
    child.sendline("4")
    child.expect(r"success\s+3 files")
    child.expect("Choose: ")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert immich.upload_count() == 3


def test_bad_choice_reprompts_and_end_of_input_leaves_with_0(env: Env) -> None:
    out = io.StringIO()
    status = main.main(["--env-file", str(env.path)], stdin=io.StringIO("7x\n"), stdout=out)
    assert status == 0
    assert "'7x' is not a choice" in out.getvalue()
    assert out.getvalue().count("Choose: ") == 2


def test_ctrl_c_at_the_prompt_leaves_with_0(env: Env) -> None:
    child = spawn_menu(env)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_help_explains_the_menu_and_the_scripts() -> None:
    result = run_process("main.py", "--help")
    assert result.status == 0
    assert "Retry errors" in result.stdout and "sync_upload.py" in result.stdout


def test_report_lists_every_file_with_status_and_reason(
    server_env: Env, library: Library, immich: ImmichTestServer, tmp_path: Path
) -> None:
    have, _new = library.photos(2)
    library.write("broken/empty.jpg", b"")
    immich.add_existing_asset(have.read_bytes())
    run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    report = tmp_path / "report.csv"
    result = run_process("main.py", "--env-file", str(server_env.path), "--report", str(report))
    assert result.status == 0 and "Wrote 3 rows" in result.stdout
    rows = {Path(r["path"]).name: r for r in csv.DictReader(report.open())}
    assert rows["empty.jpg"]["status"] == "skipped" and "empty" in rows["empty.jpg"]["reason"]
    assert rows[have.name]["status"] == "duplicate" and rows[have.name]["reason"] == "already in Immich"
    assert rows["IMG_0001.jpg"]["status"] == "success"


def statuses(env: Env) -> list[str]:
    store = open_store(env.settings())
    try:
        return [str(r["upload_status"]) for r in store.rows()]
    finally:
        store.close()


def test_recent_errors_say_what_to_do_and_retry_errors_tries_them_now(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    immich.faults.add(status=413, html=True, path="/api/assets", method="POST")
    run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    assert statuses(server_env) == ["error"]
    out = io.StringIO()
    main.main(["--env-file", str(server_env.path)], stdin=io.StringIO("5\n6\nq\n"), stdout=out)
    text = out.getvalue()
    assert "(1 attempt)" in text and "what to do: a proxy in front of Immich refused the size" in text
    assert "Trying 1 failed file again now." in text and "(finished with status 0)" in text
    assert statuses(server_env) == ["success"]  # tried at once, not after its wait


def spawn_small_menu(env: Env, rows: int = 24) -> pexpect.spawn:
    child = pexpect.spawn(
        sys.executable,
        [str(PROJECT_DIR / "main.py"), "--env-file", str(env.path)],
        cwd="/",
        env={**script_environment(), "TERM": "xterm", "COLUMNS": "100", "LINES": str(rows)},
        encoding="utf-8",
        codec_errors="replace",
        timeout=30,
        dimensions=(rows, 100),
        preexec_fn=terminal_signals,
    )
    child.expect("Choose: ")
    return child


def test_statistics_show_a_bar_per_year_and_the_backlog_and_fit_a_24_line_terminal(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photo("a/old.jpg", n=1, taken="2019:03:01 09:00:00")
    library.photo("a/new.jpg", n=2, taken="2023:03:01 09:00:00")
    run_inprocess(
        sync_upload.main, "--env-file", str(server_env.path), "--no-progress", "--until", "2020-01-01"
    )
    for year in range(2000, 2016):  # a long life in photos: the screen no longer fits 24 lines
        library.photo(f"y/{year}.jpg", n=100 + year, taken=f"{year}:01:01 10:00:00")
    run_inprocess(scan_files.main, "--env-file", str(server_env.path), "--no-progress")
    child = spawn_small_menu(server_env)
    child.sendline("4")
    child.expect("By year taken")
    child.expect(r"2019\s+█+\s+1 file .*all in Immich")
    child.expect(r"-- \d+ more lines: Enter shows them, q stops --")
    child.sendline("")
    child.expect(r"2023\s+░+\s+1 file .*1 waiting")
    child.expect(r"Left to upload: 17 files, ")
    child.expect("Press Enter for the menu")
    child.sendline("")
    child.expect("Choose: ")
    child.sendline("")  # Enter alone: the menu again
    child.expect(r"10\) Export report")
    child.expect("Choose: ")
    child.sendline("q")
    child.expect(pexpect.EOF)


def test_an_empty_database_gets_one_friendly_sentence(env: Env) -> None:
    out = io.StringIO()
    main.main(["--env-file", str(env.path)], stdin=io.StringIO("4\nq\n"), stdout=out)
    assert "Nothing recorded yet: choose 1 > Scan or 3 > Sync to look at your folders." in out.getvalue()


def test_the_menu_speaks_of_its_entries_not_of_flags(tmp_path: Path) -> None:
    env = Env(tmp_path / "empty.env", {}).set(DB_PATH=tmp_path / "s.db", LOG_FILE=tmp_path / "log.txt")
    out = io.StringIO()
    main.main(["--env-file", str(env.path)], stdin=io.StringIO("1\n2\nq\n"), stdout=out)
    text = out.getvalue()
    assert "No folder to scan yet: choose 9 > Settings and give the source folders." in text
    assert "No Immich server yet: choose 9 > Settings and give its address and API key." in text
    assert "--" not in text.replace("-- ", "")


def test_settings_screen_saves_the_server_and_folders_in_env_readable_only_by_its_owner(
    tmp_path: Path, immich: ImmichTestServer
) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text(f"DB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log.txt\n")
    out = io.StringIO()
    answers = f"9\nu\n{immich.url}\n9\nk\nsecret-key-0123456789\n9\ns\n{tmp_path}\nq\n"
    main.main(["--env-file", str(env_file)], stdin=io.StringIO(answers), stdout=out)
    settings = load_settings(env_file=str(env_file), environ={})
    assert settings.immich_url == immich.url and settings.immich_api_key == "secret-key-0123456789"
    assert settings.source_dirs == (tmp_path,) and settings.db_path == tmp_path / "s.db"
    assert (env_file.stat().st_mode & 0o777) == 0o600
    assert "secret-key-0123456789" not in out.getvalue()


def test_report_goes_under_reports_by_default_and_the_path_is_printed(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    out = io.StringIO()
    main.main(["--env-file", str(server_env.path)], stdin=io.StringIO("10\n\nq\n"), stdout=out)
    match = re.search(r"Wrote 1 row to (\S+\.csv)", out.getvalue())
    assert match is not None
    report = Path(match[1])
    assert report.parent == config.PROJECT_DIR / "reports" and report.exists()
    assert "reports/" in (PROJECT_DIR / ".gitignore").read_text().splitlines()


def test_scripts_write_no_escape_codes_when_not_on_a_terminal(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(2)
    library.write("bad/empty.jpg", b"")
    for script in ("scan_files.py", "upload_files.py", "sync_upload.py"):
        result = run_process(script, "--env-file", str(server_env.path))
        assert not ESCAPE.search(result.stdout + result.stderr), script
    for script_main in (scan_files.main, upload_files.main, sync_upload.main):
        result = run_inprocess(script_main, "--env-file", str(server_env.path), "--json")
        assert result.stdout.count("\n") == 1 and result.stdout.startswith("{")


def test_ctrl_c_during_a_job_stops_it_cleanly_and_returns_to_the_menu(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(20)
    server_env.set(UPLOAD_CONCURRENCY=1)
    immich.faults.add(delay_s=0.3, count=20, path="/api/assets", method="POST")
    child = spawn_menu(server_env)
    child.sendline("3")
    deadline = time.monotonic() + 20
    while immich.upload_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    child.sendintr()
    child.expect("Stopped. Everything done so far is saved")
    child.expect("Choose: ")
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert 0 < immich.upload_count() < 20
