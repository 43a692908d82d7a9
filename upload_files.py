#!/usr/bin/env python3
"""upload_files.py: send pending and failed files to Immich (run scan_files.py first).

The work is `uploader.Uploader`'s; this script connects, checks the server is the one the rows belong to,
feeds the backlog to the workers, then does albums, stacks and deletion, and prints the summary.
"""

from __future__ import annotations

from typing import TextIO

import bytecode_cache  # noqa: F401 - first: lets Python cache the tool's modules (see there)
from cli import Context, ExitStatus, add_upload_arguments, base_parser, exit_process, run_script
from db_manager import utc_now
from filters import RunFiles
from immich_client import ImmichClient
from organize import finish_interrupted_deletions, server_jobs_paused
from uploader import (
    Uploader,
    adopt_target,
    chosen_rows,
    connect,
    dry_run,
    exit_status,
    finish_in_immich,
    report_verify,
    select,
    summary_rows,
    verify_uploads,
)


def run_upload(ctx: Context) -> ExitStatus:
    ctx.args.verify = ctx.args.verify or ctx.args.reupload
    run_files = RunFiles(ctx.settings)
    if ctx.args.dry_run and ctx.args.verify:
        return verify_dry_run(ctx)
    if ctx.args.dry_run:
        return dry_run(ctx, select(ctx.store.pending_uploads(), run_files, ctx.args.limit), run_files)
    ctx.settings.require_server()
    started = utc_now()
    finish_interrupted_deletions(ctx.store, run_files.scope)
    client = ImmichClient(ctx.settings, ctx.stop)
    verify_status = ExitStatus.OK
    uploader: Uploader | None = None
    try:
        target_id = adopt_target(client, ctx.store, connect(client))
        if ctx.args.verify:
            report = verify_uploads(client, ctx.store, target_id, ctx.args.reupload)
            report_verify(ctx, report)
            if not ctx.args.reupload:
                return ExitStatus.OK if report.clean else ExitStatus.FILES_FAILED
            if report.trashed or report.lost:
                verify_status = ExitStatus.FILES_FAILED
        ids, total_bytes = chosen_rows(ctx.store, run_files, ctx.args.limit, ctx.args.retry_errors)
        uploader = Uploader(
            ctx.settings, ctx.store, client, ctx.progress, ctx.stop, target_id, run_files.scope
        )
        with server_jobs_paused(client, ctx.store, ctx.settings):
            ctx.progress.start("upload", len(ids), total_bytes, unit="bytes")
            uploader.start()
            # In slices, so uploads begin while the rest is still being checked with the server.
            uploader.feed_backlog(ids, failed_only=ctx.args.retry_errors)
            summary = uploader.finish()
            ctx.progress.finish()
            summary.stopped_after_errors = uploader.aborted.is_set()
            finish_in_immich(ctx, client, summary, target_id, run_files)
    finally:
        if uploader is not None:
            uploader.shutdown()  # before anything its workers use is closed
        client.close()
    status = exit_status(ctx.stop, uploader, summary.errors)
    if status == ExitStatus.OK:
        status = verify_status
    ctx.store.record_run("upload", started, int(status), summary.as_json())
    if ctx.args.json:
        ctx.emit_json(summary.as_json())
    ctx.progress.summary("Upload finished", summary_rows(summary, ctx.settings.log_file))
    return status


def verify_dry_run(ctx: Context) -> ExitStatus:
    """--verify --dry-run: the check, read-only (no target recorded, no row changed)."""
    ctx.settings.require_server()
    client = ImmichClient(ctx.settings, ctx.stop)
    try:
        user = connect(client)
        target_id = ctx.store.find_target(user.identity)
        if target_id is None:
            ctx.progress.message(
                f"this database has uploaded nothing to {ctx.settings.display_url} yet: nothing to verify"
            )
            return ExitStatus.OK
        report = verify_uploads(client, ctx.store, target_id, ctx.args.reupload, dry_run=True)
    finally:
        client.close()
    report_verify(ctx, report, dry_run=True)
    return ExitStatus.OK if report.clean else ExitStatus.FILES_FAILED


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    parser = base_parser(
        "upload_files.py",
        "Upload pending and failed files to Immich (run scan_files.py first).",
        paths_help="only upload files under these folders (as --source-dir does here)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be uploaded; send nothing")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="upload at most N files")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="check that files marked uploaded are still in Immich; report those deleted or in the trash there",
    )
    parser.add_argument(
        "--reupload", action="store_true", help="with --verify: send again the files Immich no longer has"
    )
    parser.add_argument(
        "--retry-errors",
        action="store_true",
        help="try every failed file now (and nothing else), waits ignored",
    )
    add_upload_arguments(parser)
    return run_script(parser, run_upload, argv, stdout, stderr)


if __name__ == "__main__":
    exit_process(main())
