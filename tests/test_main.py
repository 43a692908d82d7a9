"""The menu in a real pseudo-terminal, the report, and output made for pipes and cron."""

from __future__ import annotations

import csv
import io
import re
import sys
import time
from pathlib import Path

import pexpect

import main
import scan_files
import sync_upload
import upload_files
from config import PROJECT_DIR
from tests.conftest import Env, Library, run_inprocess, run_process, script_environment
from tests.immich_server import ImmichTestServer

ESCAPE = re.compile(r"\x1b\[")


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


def test_retry_errors_puts_failed_uploads_back(
    server_env: Env, library: Library, immich: ImmichTestServer
) -> None:
    library.photos(1)
    immich.faults.add(status=400, path="/api/assets", method="POST")
    run_inprocess(sync_upload.main, "--env-file", str(server_env.path), "--no-progress")
    out = io.StringIO()
    main.main(["--env-file", str(server_env.path)], stdin=io.StringIO("5\n6\nq\n"), stdout=out)
    text = out.getvalue()
    assert "attempts: 1" in text and "1 failed files will be tried again" in text


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
