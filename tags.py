"""Tags in Immich: TAGS (`--tag NAME`) and TAGS_FROM_FOLDER (the folder path below the source as one hierarchical
tag, `Trips/2019/Paris`), given to each of this run's files' assets and remembered per file, so a rerun makes no
calls for files already tagged; and the tags an edited file's earlier version carried (edits.py).

`PUT /api/tags` makes the tags (a `/` makes a hierarchy; existing ones are reused) and `PUT /api/tags/assets`
tags the assets, one call for the assets that need the same tags. A real Immich v3.1.0 loses tags given to an
asset while it reads that asset's metadata (its metadata extraction replaces the asset's tags with the list it
read a moment before: observed for 12 of 30 freshly uploaded photos tagged by separate calls, 4 of 30 by one).
So the assets uploaded lately are looked for under each tag afterwards (`POST /api/search/metadata`, a page of
1000 at a time), once the extraction had a moment, and tagged again where a tag is missing; a file is recorded
as tagged only when Immich shows it so.
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from config import Settings
from db_manager import DoneFile, RunProblem, Store
from immich_client import ImmichClient
from live_photos import live_clip
from logger import get_logger

log = get_logger("tags")

TAG_SETTLE_S = 2.0  # what Immich's metadata extraction of an asset takes, about, before tags are looked for
TAG_CHECKS = 3  # looks (and tagging again in between) before a tag Immich keeps losing is left for next run
FRESH = timedelta(days=1)  # assets uploaded since are looked for (the server's clock may differ from ours)


@dataclass
class TagSummary:
    tagged: int = 0  # files whose asset got a tag it lacked
    errors: int = 0
    problems: list[RunProblem] = field(default_factory=list)


def tags_for(file: DoneFile, settings: Settings) -> tuple[str, ...]:
    """The tags a file's asset should carry: TAGS, and with TAGS_FROM_FOLDER its folder path below the
    source as one hierarchical tag (`Trips/2019/Paris`; a file right in the source folder gets none)."""
    tags = list(settings.tags)
    if settings.tags_from_folder and not settings.takeout_paths:
        folder = os.path.dirname(file.filepath)
        below = folder if settings.shared_library else None
        for root in settings.source_dirs if below is None else ():
            root_text = str(root).rstrip("/")
            if folder.startswith(root_text + "/"):
                below = folder[len(root_text) + 1 :]
                break
        value = "/".join(part.strip() for part in (below or "").split("/") if part.strip())
        if value:
            tags.append(value)
    return tuple(dict.fromkeys(tags))


def tagged(file: DoneFile, settings: Settings) -> bool:
    """Its asset carries every tag it should (a live photo's clip carries none: its photo does)."""
    if live_clip(file):
        return True
    have = set(json.loads(file.tags_done)) if file.tags_done else set()
    return set(tags_for(file, settings)) <= have


def update_tags(
    client: ImmichClient, store: Store, settings: Settings, files: list[DoneFile], stop: threading.Event
) -> TagSummary:
    """Give each file's asset the tags it lacks (see the module's docstring) and record them."""
    summary = TagSummary()
    have: dict[int, set[str]] = {}
    wanted: dict[int, set[str]] = {}  # row -> tag values to add
    for file in files:
        if live_clip(file):
            continue
        have[file.id] = set(json.loads(file.tags_done)) if file.tags_done else set()
        missing = set(tags_for(file, settings)) - have[file.id]
        if missing:
            wanted[file.id] = missing
    if not wanted:
        return summary
    values = sorted(set().union(*wanted.values()))
    ids = client.upsert_tags(values)
    for value in values:
        if value not in ids:
            summary.errors += 1
            summary.problems.append(
                RunProblem(f"(tag {value!r})", "Immich made no such tag", "tried again next run")
            )
    by_row = {f.id: f for f in files}
    per_asset: dict[str, set[str]] = defaultdict(set)  # asset -> tag ids
    for row_id, values_wanted in wanted.items():
        per_asset[by_row[row_id].asset_id] |= {ids[v] for v in values_wanted if v in ids}
    fresh = {by_row[r].asset_id for r in wanted if recent(by_row[r].upload_date)}
    lost = tag_and_check(client, per_asset, fresh, stop)
    recorded = []
    for row_id, values_wanted in wanted.items():
        asset_id = by_row[row_id].asset_id
        gained = {v for v in values_wanted if v in ids and ids[v] not in lost.get(asset_id, set())}
        if gained:
            have[row_id] |= gained
            recorded.append((row_id, json.dumps(sorted(have[row_id]), ensure_ascii=False)))
    if lost:
        summary.errors += 1
        summary.problems.append(
            RunProblem(
                "(tags)",
                f"Immich dropped the tags of {len(lost)} assets again and again while reading their metadata",
                "they are tagged again on the next run",
            )
        )
    store.record_tags(recorded)
    summary.tagged = len(recorded)
    return summary


def recent(upload_date: str | None) -> bool:
    """Uploaded lately: Immich may still be reading its metadata (and dropping tags given meanwhile)."""
    if not upload_date:
        return False
    try:
        moment = datetime.fromisoformat(str(upload_date)[:19]).replace(tzinfo=timezone.utc)
    except ValueError:
        return False
    return datetime.now(timezone.utc) - moment < FRESH


def tag_and_check(
    client: ImmichClient, wanted: Mapping[str, set[str]], fresh: set[str], stop: threading.Event
) -> dict[str, set[str]]:
    """Give each asset its tag ids (one call per set of tags), then look whether Immich kept them on the
    `fresh` assets (uploaded lately), tagging again what it lost; returns what it still lacks (asset -> tag
    ids) after TAG_CHECKS looks."""
    _tag(client, wanted)
    to_check = {asset: set(tag_ids) for asset, tag_ids in wanted.items() if asset in fresh and tag_ids}
    since = (datetime.now(timezone.utc) - FRESH).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    for look in range(TAG_CHECKS):
        if not to_check or stop.wait(TAG_SETTLE_S):
            break
        shown = {tag_id: client.tagged_assets(tag_id, since) for tag_id in set().union(*to_check.values())}
        to_check = {
            asset: {t for t in tag_ids if asset not in shown[t]} for asset, tag_ids in to_check.items()
        }
        to_check = {asset: tag_ids for asset, tag_ids in to_check.items() if tag_ids}
        if to_check and look + 1 < TAG_CHECKS:
            log.info(
                "Immich dropped tags of %d assets while reading their metadata; tagging them again",
                len(to_check),
            )
            _tag(client, to_check)
    return to_check


def _tag(client: ImmichClient, wanted: Mapping[str, set[str]]) -> None:
    groups: dict[frozenset[str], list[str]] = defaultdict(list)
    for asset, tag_ids in wanted.items():
        if tag_ids:
            groups[frozenset(tag_ids)].append(asset)
    for tag_ids, assets in groups.items():
        client.tag_assets(sorted(tag_ids), assets)
