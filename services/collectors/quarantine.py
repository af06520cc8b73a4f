"""The quarantine: where files for static analysis are kept, never executable, named by SHA-256.

A file is written once, atomically (a temporary file in the same folder, renamed into place), with
mode 0400: readable by the service's own user only, executable by no one. The folder is 0700.
Storing the same content again finds it already there and writes nothing.

The original file name is not kept here: one content may arrive under many names (an upload, a
download URL's last segment), and a name is a claim about the file, not part of it, so it belongs
with each observation (the file entity's `name` property), not next to the bytes. It is never used
as a path either: the only path is the SHA-256, which `read` and `path` check is 64 hex digits.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.collectors.errors import InvalidTarget, TargetRefused

_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileTooLarge(TargetRefused):
    """A file over the quarantine's size limit: refused by policy (a TargetRefused, as the fetcher's
    size limit is), not stored and not analysed."""


class NotInQuarantine(InvalidTarget):
    """A SHA-256 the quarantine does not hold, or a value that is not a SHA-256 at all."""


@dataclass(frozen=True)
class Quarantined:
    sha256: str
    size: int
    path: Path
    filename: str  # as given to `store`; not kept on disk (see the module doc)


class Quarantine:
    """Files by SHA-256 in `directory` (created 0700 on the first store), at most `max_bytes` each."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes

    def store(self, content: bytes, filename: str = "") -> Quarantined:
        """Keep `content` (FileTooLarge over the limit); the same content twice is one file."""
        if len(content) > self.max_bytes:
            raise FileTooLarge(f"the file is {len(content)} bytes; the quarantine keeps files of at most "
                               f"{self.max_bytes} bytes")
        sha256 = hashlib.sha256(content).hexdigest()
        final = self.directory / sha256
        self._ensure_directory()
        if not final.exists():
            descriptor, temporary = tempfile.mkstemp(prefix=".incoming-", dir=self.directory)  # mode 0600
            try:
                with os.fdopen(descriptor, "wb") as out:
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(temporary, 0o400)
                os.replace(temporary, final)  # a concurrent store of the same content wrote the same bytes
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        return Quarantined(sha256, len(content), final, filename)

    def path(self, sha256: str) -> Path:
        """Where the file with this SHA-256 is kept; NotInQuarantine when it is not there."""
        value = sha256.strip().lower()
        if not _SHA256.fullmatch(value):
            raise NotInQuarantine(f"{sha256[:80]!r} is not a SHA-256 (64 hex digits)")
        found = self.directory / value
        if not found.is_file():
            raise NotInQuarantine(f"file {value} is not in quarantine")
        return found

    def read(self, sha256: str) -> bytes:
        path = self.path(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:  # removed since `path` looked
            raise NotInQuarantine(f"file {path.name} is not in quarantine") from None

    def _ensure_directory(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # mkdir's mode is masked by the umask, and an existing folder keeps its own
