#!/usr/bin/env python3
"""scan_files.py: find, fingerprint and describe every photo and video under the source folders (no upload).

The work is `scanner.Scanner`'s; this script reads the flags, runs one scan and prints its summary.
"""

from __future__ import annotations

from typing import TextIO

import bytecode_cache  # noqa: F401 - first: lets Python cache the tool's modules (see there)
from cli import Context, ExitStatus, base_parser, exit_process, run_script
from db_manager import utc_now
from scanner import add_scan_arguments, scan_status, scanner_for, summary_rows


def run_scan(ctx: Context) -> ExitStatus:
    ctx.settings.require_sources()
    started = utc_now()
    summary = scanner_for(ctx).scan()
    status = scan_status(ctx.stop, summary)
    ctx.store.record_run("scan", started, int(status), summary.as_json())
    if ctx.args.json:
        ctx.emit_json(summary.as_json())
    ctx.progress.summary(
        "Scan finished" if status != ExitStatus.INTERRUPTED else "Scan interrupted",
        summary_rows(summary, ctx.settings.log_file),
    )
    return status


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = base_parser(
        "scan_files.py",
        "Find, fingerprint and describe every photo and video (no upload).",
        paths_help="folders to scan instead of SOURCE_DIR",
    )
    add_scan_arguments(parser)
    return run_script(parser, run_scan, argv, stdout, stderr)


if __name__ == "__main__":
    exit_process(main())
