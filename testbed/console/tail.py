"""Read a growing JSON-lines file by offset: complete lines only, never the whole file again.

The writer appends one line at a time; a reader that catches it mid-line sees a last line with
no newline. That line is "not yet": ``JsonlTail`` keeps its offset before it and reads it again
once the newline has arrived (TensorBoard's event-file loader treats a short record the same
way). A complete line that is not JSON is skipped with a warning, as ``read_events`` would
refuse it only where it is not the last.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class JsonlTail:
    """``read()`` returns the documents appended since the last call (all of them, the first time).

    ``max_bytes`` bounds one read, so a reader that opens a 100 MB file catches up in chunks;
    a file that shrank (rewritten) is read again from its start.
    """

    def __init__(self, path: str | Path, offset: int = 0, max_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.offset = offset
        self.max_bytes = max_bytes

    def read(self) -> list[dict[str, Any]]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            self.offset = 0
        if size == self.offset:
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read(self.max_bytes if self.max_bytes is not None else size - self.offset)
            end = chunk.rfind(b"\n") + 1
            if end == 0 and self.max_bytes is not None and len(chunk) >= self.max_bytes:
                # One line longer than a chunk: read on to its end, or the reader would stall here.
                chunk += f.readline()
                end = chunk.rfind(b"\n") + 1
        if end == 0:
            return []
        docs: list[dict[str, Any]] = []
        # Decoded once for the chunk (json.loads on bytes sniffs each line's encoding again).
        for line in chunk[:end].decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping a line that is not JSON near byte %d", self.path, self.offset)
                continue
            if isinstance(doc, dict):
                docs.append(doc)
        self.offset += end
        return docs
