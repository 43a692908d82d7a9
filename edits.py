"""Edits follow their asset: a photo edited on disk after its upload (new bytes at the same path) takes its
earlier version's place in Immich instead of appearing beside it.

The scan records the intent in the row the moment it reads the new bytes (db_manager: `replaces`, with the
earlier asset and the date and camera it was taken with, which the rescan overwrites in the row). Once the new
version is in Immich as an upload of this database's, `replace_edited` carries the old asset's albums,
favourite, stack, shared links and sidecar across (`PUT /api/assets/copy`, §7c), then what copy does not carry
(its tags, its archive visibility, its description and rating, its live photo clip, its place as a stack's
cover), then moves the old asset to Immich's trash (`DELETE /api/assets` without force: restorable there for as
long as the server keeps its trash). Each step is recorded before the next, so a run killed in between is
finished by the next one, and no step is done twice where doing it twice would hurt (a real v3.1.0 deletes a
stack when a copy is made again between two assets already in it).

Both versions are kept (the intent is dropped, and why is logged) when the new bytes are not plausibly the same
photo (taken at another moment: a reset phone's new IMG_0001; or, where a version has no capture time, by
another camera or none), when the old asset is not one this database sent or another file still maps to it,
when Immich had the new bytes already, or with REPLACE_EDITED=false. A moved or renamed file is a new path,
never an edit.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config import Settings
from db_manager import ReplaceRow, RunProblem, Store
from filters import RunFiles
from immich_client import ImmichClient, ImmichError, ServerUnreachable, StopRequested, checksum_hex
from logger import FILE_EVENT, get_logger
from tags import tag_and_check

log = get_logger("edits")

OWN_DATES = frozenset({"exif", "video"})  # a capture time the file itself states
SAME_MOMENT_S = 1.0  # an editor may drop the sub-seconds


@dataclass
class ReplaceSummary:
    replaced: int = 0
    kept_both: int = 0
    errors: int = 0
    problems: list[RunProblem] = field(default_factory=list)


def _moment(facts: dict[str, Any]) -> datetime | None:
    if facts.get("date_source") not in OWN_DATES or not isinstance(facts.get("date_used"), str):
        return None
    try:
        return datetime.fromisoformat(facts["date_used"])
    except ValueError:
        return None


def _camera(facts: dict[str, Any]) -> tuple[str, str] | None:
    make, model = facts.get("camera_make"), facts.get("camera_model")
    if not isinstance(make, str) or not isinstance(model, str) or not make.strip() or not model.strip():
        return None
    return make.strip().lower(), model.strip().lower()


def not_the_same_photo(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why the new bytes are not plausibly an edit of the old ones, or None. Both capture times known: they
    must agree (to the second, as instants or as wall clocks, since an editor may drop the offset); a reset
    phone's new IMG_0001 has the old one's camera but another moment. Otherwise the camera must agree."""
    before, after = _moment(old), _moment(new)
    if before is not None and after is not None:
        if abs((before.replace(tzinfo=None) - after.replace(tzinfo=None)).total_seconds()) <= SAME_MOMENT_S:
            return None
        if before.tzinfo and after.tzinfo and abs((before - after).total_seconds()) <= SAME_MOMENT_S:
            return None
        return (
            f"taken at another moment ({before.isoformat()} before, {after.isoformat()} now): another photo"
        )
    camera_before, camera_after = _camera(old), _camera(new)
    if camera_before is not None and camera_before == camera_after:
        return None
    if camera_before is None or camera_after is None:
        return "no capture time and no camera that both versions state"
    return "no capture time in common, and another camera"


def edit_reason(replaces: str, metadata_info: str | None, settings: Settings) -> str | None:
    """Why a file's new bytes will not replace its earlier version (the setting, or not the same photo), or
    None: what a dry run says too."""
    if not settings.replace_edited:
        return "REPLACE_EDITED is false"
    return not_the_same_photo(json.loads(replaces), json.loads(metadata_info or "{}"))


def planned(
    store: Store, row_id: int, replaces: str, metadata_info: str | None, settings: Settings
) -> str | None:
    """What a dry run says of a file still to upload with an earlier version to replace: None when its upload
    would replace it, else why both would stay (as far as the database can tell without uploading)."""
    reason = edit_reason(replaces, metadata_info, settings)
    intent = json.loads(replaces)
    if reason is None and store.asset_mapped_by_others(
        str(intent.get("asset_id")), intent.get("target_id"), row_id
    ):
        reason = "another file still maps to the earlier version's asset"
    return reason


def keep_both_reason(row: ReplaceRow, settings: Settings, target_id: int) -> str | None:
    """Why this row's earlier version stays beside the new one in Immich, from what the database knows (the
    server is asked later), or None when it is to be replaced."""
    intent = json.loads(row.replaces)
    if not settings.replace_edited:
        return "REPLACE_EDITED is false"
    if row.upload_status == "duplicate":
        return "Immich had the new version already (not an upload of this database)"
    if intent.get("target_id") != target_id or row.target_id != target_id:
        return "the earlier version is on another Immich server or user"
    if intent.get("asset_id") == row.asset_id:
        return "the new version is the same asset"
    return edit_reason(row.replaces, row.metadata_info, settings)


def replace_edited(
    client: ImmichClient,
    store: Store,
    settings: Settings,
    target_id: int,
    run_files: RunFiles,
    stop: threading.Event,
) -> ReplaceSummary:
    """Replace, in Immich, the earlier version of each of this run's files whose new bytes it now holds as
    this database's upload (see the module's docstring). Cheap when there is none: one state lookup."""
    summary = ReplaceSummary()
    rows = store.replacements()
    if rows is None:
        return summary
    left = False
    for row in rows:
        if stop.is_set():
            return summary
        if not run_files.includes(row) or row.upload_status not in ("success", "duplicate"):
            left = True  # not this run's, or its new version is not in Immich yet
            continue
        if settings.takeout_paths:
            left = True
            continue
        reason = keep_both_reason(row, settings, target_id)
        intent = json.loads(row.replaces)
        old_id = str(intent.get("asset_id", ""))
        if reason is None and store.asset_mapped_by_others(old_id, target_id, row.id):
            reason = "another file still maps to the earlier version's asset"
        if reason is not None:
            keep_both(store, row, summary, reason)
            continue
        try:
            done = _replace(client, store, row, intent, summary, stop)
        except (ServerUnreachable, StopRequested):
            raise
        except ImmichError as exc:
            summary.errors += 1
            advice = (
                "give the API key asset.copy, asset.update, asset.delete and tag.asset"
                if exc.status == 403
                else ""
            )
            problem = f"its earlier version (asset {old_id}) not replaced yet: {exc}"
            summary.problems.append(
                RunProblem(row.filepath, problem, advice or "tried again on the next run")
            )
            log.warning("%s: %s", row.filepath, problem, extra=FILE_EVENT)
            left = True
            if exc.status == 403:
                return summary  # every other replacement would be refused the same way
            continue
        if done:
            summary.replaced += 1
    if not left:
        store.replacements_looked_at()
    return summary


def keep_both(store: Store, row: ReplaceRow, summary: ReplaceSummary, reason: str) -> None:
    intent = json.loads(row.replaces)
    log.info(
        "%s: kept its earlier version (asset %s) beside the new one: %s",
        row.filepath,
        intent.get("asset_id"),
        reason,
    )
    store.set_replaces(row.id, None)
    summary.kept_both += 1


def _replace(
    client: ImmichClient,
    store: Store,
    row: ReplaceRow,
    intent: dict[str, Any],
    summary: ReplaceSummary,
    stop: threading.Event,
) -> bool:
    """The steps for one file; True when its earlier version went to Immich's trash now. A step is recorded
    before the next, so a kill between them repeats no step that must not be repeated."""
    old_id, new_id = str(intent["asset_id"]), str(row.asset_id)
    user = client.user
    if intent.get("step") != "carried":
        try:
            old = client.asset_details(old_id)
        except ImmichError as exc:
            if exc.status == 400:  # gone from Immich: nothing to carry over or to trash
                keep_both(store, row, summary, "the earlier version is no longer in Immich")
                return False
            raise
        if checksum_hex(old.get("checksum")) != intent.get("sha1") or (
            user is not None and not user.identity.startswith("key:") and old.get("ownerId") != user.identity
        ):
            keep_both(store, row, summary, "Immich's asset is not the earlier version this database sent")
            return False
        if old.get("isTrashed"):
            keep_both(
                store, row, summary, "the earlier version is in Immich's trash already (someone put it there)"
            )
            return False
        new = client.asset_details(new_id)
        old_stack, new_stack = old.get("stack") or {}, new.get("stack") or {}
        same_stack = bool(old_stack) and old_stack.get("id") == new_stack.get("id")
        # The new version's own sidecar (sent from disk) is fresher than the old one's.
        client.copy_asset(old_id, new_id, sidecar=row.sidecar_path is None, stack=not same_stack)
        _carry_the_rest(client, old, new, new_id, stop)
        if old_stack.get("primaryAssetId") == old_id and (not new_stack or same_stack):
            client.update_stack(str(old_stack["id"]), new_id)  # a trashed cover would hide the whole stack
        store.set_replaces(row.id, json.dumps({**intent, "step": "carried", "new_asset_id": new_id}))
    try:
        client.trash_assets([old_id])
    except ImmichError as exc:
        if exc.status != 400 or not _gone(client, old_id):
            raise
        log.info("%s: its earlier version (asset %s) is no longer in Immich at all", row.filepath, old_id)
    store.set_replaces(row.id, None)
    log.info(
        "%s: its new version (asset %s) replaced the earlier one (asset %s, now in Immich's trash)",
        row.filepath,
        new_id,
        old_id,
    )
    return True


def _gone(client: ImmichClient, asset_id: str) -> bool:
    """The asset is no longer in Immich (its trash emptied meanwhile): nothing is left to move there."""
    try:
        client.asset_details(asset_id)
    except ImmichError as exc:
        return exc.status == 400
    return False


def _carry_the_rest(
    client: ImmichClient, old: dict[str, Any], new: dict[str, Any], new_id: str, stop: threading.Event
) -> None:
    """What PUT /api/assets/copy does not carry: tags, the archive, the description and rating typed in
    Immich, the live photo clip. Values the new version has of its own are kept."""
    tag_ids = {str(tag["id"]) for tag in old.get("tags") or [] if isinstance(tag, dict) and tag.get("id")}
    if tag_ids and tag_and_check(client, {new_id: tag_ids}, {new_id}, stop):
        raise ImmichError(
            "Immich dropped the tags given to the new version again and again while reading its metadata",
            None, "PUT", "/tags/assets", kind="rejected",
        )  # fmt: skip
    fields: dict[str, Any] = {}
    if old.get("visibility") == "archive" and new.get("visibility") == "timeline":
        fields["visibility"] = "archive"
    old_exif, new_exif = old.get("exifInfo") or {}, new.get("exifInfo") or {}
    if old_exif.get("description") and not new_exif.get("description"):
        fields["description"] = old_exif["description"]
    if old_exif.get("rating") not in (None, 0) and new_exif.get("rating") is None:
        fields["rating"] = old_exif["rating"]
    clip = old.get("livePhotoVideoId")
    if clip and not new.get("livePhotoVideoId"):
        fields["livePhotoVideoId"] = clip
    if not fields:
        return
    try:
        client.update_asset(new_id, fields)
    except ImmichError as exc:
        if (
            "livePhotoVideoId" not in fields
            or exc.status != 400
            or "live photo video" not in str(exc).lower()
        ):
            raise
        fields.pop("livePhotoVideoId")  # its clip is gone from Immich: the rest still goes
        if fields:
            client.update_asset(new_id, fields)
