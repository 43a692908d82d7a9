"""What every script shares at its edge: one line for a bug, exit statuses."""

from __future__ import annotations

import scan_files
from tests.conftest import Env, Library, run_inprocess


def test_a_bug_is_one_line_exit_70_with_the_traceback_in_the_log(
    env: Env, library: Library, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    library.photos(1)

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("a bug in the scanner")

    monkeypatch.setattr(scan_files.Scanner, "scan", broken)
    result = run_inprocess(scan_files.main, "--env-file", str(env.path))
    assert result.status == 70
    assert result.stderr.strip().startswith(
        "immich-uploader: error: internal error RuntimeError('a bug in the scanner')"
    )
    assert "Traceback" not in result.stderr
    assert "Traceback" in (env.settings().log_file).read_text()
