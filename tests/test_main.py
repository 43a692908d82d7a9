"""The menu in a real pseudo-terminal, the report, and output made for pipes and cron."""

from __future__ import annotations

import csv
import io
import os
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


def test_ctrl_c_at_the_prompt_leaves_with_130_and_q_with_0(env: Env) -> None:
    child = spawn_menu(env)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    child = spawn_menu(env)
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_at_an_entrys_question_goes_back_to_the_menu(env: Env) -> None:
    child = spawn_menu(env)
    child.sendline("10")
    child.expect(r"Write the report to \[")
    child.sendintr()
    child.expect("Cancelled.")
    child.expect("Choose: ")
    child.sendeof()  # Ctrl+D
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


def test_every_error_a_summary_counts_is_listed_under_recent_errors_with_what_to_do(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    os.symlink(library.root / "unmounted-disk", library.root / "usb")  # a dangling folder link: no row
    result = run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    assert result.status == 1 and "errors      1, listed in" in "\n".join(result.lines)
    assert statuses(server_env) == ["success"]  # no failed row: the error is the run's
    out = io.StringIO()
    main.main(["--env-file", str(server_env.path)], stdin=io.StringIO("5\nq\n"), stdout=out)
    text = out.getvalue()
    assert "No failed files." in text and "Other errors of the last run" in text
    assert f"{library.root}/usb" in text and "its target is gone" in text
    assert "what to do: mount the disk, or remove the link" in text


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


# --- the report never replaces what is not a report (issue 22) -------------------------------------------


def report_process(env: Env, target: Path) -> tuple[int, str]:
    result = run_process("main.py", "--env-file", str(env.path), "--report", str(target))
    return result.status, result.stdout + result.stderr


def test_report_refuses_to_overwrite_the_database_the_log_or_any_other_file(
    env: Env, library: Library, tmp_path: Path
) -> None:
    library.photos(1)
    run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress")
    settings = env.settings()
    photo = library.root / "photos" / "IMG_0000.jpg"
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # reading it to check would block for ever
    status, output = report_process(env, fifo)
    assert (status, output) == (
        2,
        f"immich-uploader: error: {fifo} is not a regular file: give another file name\n",
    )
    for target in (settings.db_path, settings.log_file, photo, env.path):
        if not target.exists():
            continue  # the database of the MySQL run lives on the server
        before = target.read_bytes()
        status, output = report_process(env, target)
        assert status == 2, target
        assert output == (
            f"immich-uploader: error: {target} is not a report this tool wrote (its first line is not the "
            "report's header): give another file name\n"
        )
        assert target.read_bytes() == before
    assert statuses(env) == ["pending"]  # the database still works


def test_report_replaces_an_earlier_report_and_writes_a_folders_default_name(
    env: Env, library: Library, tmp_path: Path
) -> None:
    library.photos(2)
    run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress")
    report = tmp_path / "out" / "report.csv"
    assert report_process(env, report) == (0, f"Wrote 2 rows to {report}\n")  # the folder is made
    library.photos(1, start=5)
    run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress")
    assert report_process(env, report) == (0, f"Wrote 3 rows to {report}\n")
    assert len(list(csv.DictReader(report.open()))) == 3
    status, output = report_process(env, tmp_path / "out")
    assert status == 0
    written = Path(output.split(" to ", 1)[1].strip())
    assert written.parent == tmp_path / "out" and written.name.startswith("immich-report-")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(["report.csv", written.name])


def test_a_report_that_fails_half_way_leaves_the_earlier_one_whole(
    env: Env, library: Library, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    library.photos(3)
    run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress")
    report = tmp_path / "report.csv"
    assert main.main(["--env-file", str(env.path), "--report", str(report)], stdout=io.StringIO()) == 0
    before = report.read_bytes()

    def rows_then_a_full_disk(self):  # type: ignore[no-untyped-def]
        yield ("m:local", "/a.jpg", "pending", "", *[""] * (len(main.REPORT_HEADER) - 4))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(type(open_store(env.settings())), "report_rows", rows_then_a_full_disk)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert main.main(["--env-file", str(env.path), "--report", str(report)], stdout=io.StringIO()) == 2
    assert err.getvalue() == f"immich-uploader: error: cannot write {report}: No space left on device\n"
    assert report.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []


def test_export_report_in_the_menu_takes_a_folder_makes_a_missing_one_and_refuses_in_one_line(
    env: Env, library: Library, tmp_path: Path
) -> None:
    library.photos(1)
    run_inprocess(scan_files.main, "--env-file", str(env.path), "--no-progress")
    folder, deep = tmp_path / "exports", tmp_path / "new" / "deeper" / "r.csv"
    folder.mkdir()
    # sysfs takes no new file, not even from root
    answers = [str(folder), str(deep), str(env.path), "/sys/r.csv", f"{env.path}/r.csv"]
    out = io.StringIO()
    stdin = io.StringIO("".join(f"10\n{answer}\n" for answer in answers) + "q\n")
    assert main.main(["--env-file", str(env.path)], stdin=stdin, stdout=out) == 0
    text = out.getvalue()
    (written,) = folder.iterdir()
    assert f"Wrote 1 row to {written}" in text and written.name.startswith("immich-report-")
    assert f"Wrote 1 row to {deep}" in text and deep.exists()
    assert f"Not written: {env.path} is not a report this tool wrote" in text
    assert "Not written: cannot write in /sys: " in text
    assert f"Not written: {env.path} is a file, not a folder." in text
    assert "Traceback" not in text and text.count("Choose: ") == len(answers) + 1


# --- the Settings screen saves where the run reads -------------------------------------------------------


def test_settings_screen_saves_to_the_env_file_given_even_when_a_setting_in_it_is_wrong(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text(f"DB_PATH={tmp_path}/s.db\nLOG_FILE={tmp_path}/log.txt\nUPLOAD_CONCURRENCY=0\n")
    out = io.StringIO()
    main.main(["--env-file", str(env_file)], stdin=io.StringIO("9\nu\nhttp://nas:2283\nq\n"), stdout=out)
    assert f"Saved server address in {env_file}." in out.getvalue()
    assert "UPLOAD_CONCURRENCY=0\nIMMICH_URL='http://nas:2283'\n" in env_file.read_text()
    assert not (config.PROJECT_DIR / ".env").exists()


def test_settings_screen_never_writes_into_another_programs_env(isolated_project: Path) -> None:
    from tests.test_config import IMMICH_COMPOSE_ENV

    theirs = Path.cwd() / ".env"
    theirs.write_text(IMMICH_COMPOSE_ENV)
    out = io.StringIO()
    main.main([], stdin=io.StringIO("9\nu\nhttp://nas:2283\nq\n"), stdout=out)
    ours = config.PROJECT_DIR / ".env"
    assert f"Saved server address in {ours}." in out.getvalue()
    assert theirs.read_text() == IMMICH_COMPOSE_ENV
    assert load_settings(environ={}).immich_url == "http://nas:2283"  # the next run reads it


def test_settings_screen_saves_into_the_env_a_run_from_this_folder_reads(isolated_project: Path) -> None:
    here = Path.cwd() / ".env"
    here.write_text("IMMICH_API_KEY=k-0123456789\n")
    main.main([], stdin=io.StringIO("9\nu\nhttp://nas:2283\nq\n"), stdout=io.StringIO())
    assert load_settings(env_file=str(here), environ={}).immich_url == "http://nas:2283"
    assert not (config.PROJECT_DIR / ".env").exists()


def test_settings_screen_with_dev_null_saves_nothing_and_says_so(isolated_project: Path) -> None:
    out = io.StringIO()
    main.main(["--env-file", "/dev/null"], stdin=io.StringIO("9\nq\n"), stdout=out)
    assert (
        "Settings are read from /dev/null, the file this menu was started with: nothing can be saved there."
    ) in out.getvalue()
    assert not (config.PROJECT_DIR / ".env").exists()


def test_settings_screen_refuses_an_api_key_http_cannot_carry(tmp_path: Path) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text(f"DB_PATH={tmp_path}/s.db\n")
    out = io.StringIO()
    main.main(["--env-file", str(env_file)], stdin=io.StringIO("9\nk\nabc\u200bdef0123\nq\n"), stdout=out)
    assert (
        "Not saved: the API key holds an invisible character, U+200B, at position 4: copy the key again."
        in (out.getvalue())
    )
    assert "IMMICH_API_KEY" not in env_file.read_text()


def test_the_menu_names_a_key_http_cannot_carry_before_testing_the_connection(tmp_path: Path) -> None:
    env_file = tmp_path / "my.env"
    env_file.write_text(f"DB_PATH={tmp_path}/s.db\nIMMICH_URL=http://nas:2283\nIMMICH_API_KEY=a b\n")
    out = io.StringIO()
    main.main(["--env-file", str(env_file)], stdin=io.StringIO("8\nq\n"), stdout=out)
    assert (
        f"A setting is not right: IMMICH_API_KEY (from {env_file}, line 3) holds a space at position 2: copy "
        "the key again. Choose 9 > Settings to change it."
    ) in out.getvalue()
