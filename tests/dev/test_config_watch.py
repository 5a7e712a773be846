"""``relay dev`` reloads when the config file changes: its watcher sees a change of the file's bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from relay.dev.stack import watch_file

POLL_S = 0.05


async def test_a_change_of_the_file_is_seen_once_and_an_unchanged_file_never(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("sources: {}\n", encoding="utf-8")
    changes: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_change() -> None:
        changes.put_nowait(path.read_bytes())

    watcher = asyncio.ensure_future(watch_file(path, on_change, interval_s=POLL_S))
    await asyncio.sleep(0)  # the watcher's first step reads the file as it is before the edit
    try:
        path.write_text("sources: {a: {}}\n", encoding="utf-8")
        assert await asyncio.wait_for(changes.get(), timeout=5) == b"sources: {a: {}}\n"
        path.unlink()  # an editor's save that removes the file for a moment is no change
        path.write_text("sources: {a: {}}\n", encoding="utf-8")
        path.write_text("sources: {b: {}}\n", encoding="utf-8")
        # The rewrite with the same bytes was not reported: the next change is the next one seen.
        assert await asyncio.wait_for(changes.get(), timeout=5) == b"sources: {b: {}}\n"
    finally:
        watcher.cancel()
