"""Per-run working directories under the work root, and the users shell steps run as."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import stat
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from maestro.errors import ConfigurationError


@dataclass(frozen=True)
class StepUser:
    """The uid and gid a shell step's process gets (no supplementary groups)."""

    uid: int
    gid: int


def find_user(user: str) -> StepUser:
    """The uid and primary gid of a user name or uid; never root."""
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        found = StepUser(entry.pw_uid, entry.pw_gid)
    except KeyError:
        if not user.isdigit():
            raise ConfigurationError(f"run_as_user {user!r}: no such user") from None
        found = StepUser(int(user), int(user))  # a bare uid, as containers often have
    if found.uid == 0 or found.gid == 0:
        raise ConfigurationError(f"run_as_user {user!r} is root; name an unprivileged user")
    return found


@dataclass
class _Lease:
    """A run's hold on its step user while its steps run on this worker."""

    user: StepUser
    steps: int = 0
    lock: int | None = None  # the descriptor holding the uid's lock, in uid-range mode
    ready: asyncio.Future[None] | None = None
    closing: asyncio.Future[None] | None = None


class WorkRoot:
    """One directory per run (mode 0700) under `root`. Without a step user, shell steps run
    as the worker and directories stay the worker's. With one, a run's directory is lent to
    the step user while a step of that run runs on this worker, and is the worker's again
    afterwards, so no later step of another run can enter it. With a uid range, each run gets
    a uid of its own for as long as its steps run here (processes of concurrent runs cannot
    see each other), and whatever its steps left running is killed when the last one ends."""

    def __init__(
        self,
        root: Path,
        user: str | None = None,
        uid_range: tuple[int, int] | None = None,
    ) -> None:
        self.root = root
        self._user = find_user(user) if user else None
        if uid_range and self._user is None:
            raise ConfigurationError("run_as_uid_range needs run_as_user (for the group)")
        if uid_range and not 0 < uid_range[0] <= uid_range[1]:
            raise ConfigurationError(f"run_as_uid_range {uid_range} is not [first, last] > 0")
        self._range = uid_range
        self._leases: dict[str, _Lease] = {}

    def prepare(self) -> None:
        """Create the root; refuse one that is a link or that another user could change."""
        if self._user is not None and os.geteuid() != 0:
            raise ConfigurationError("run_as_user needs a worker running as root")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(self.root)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
            raise ConfigurationError(
                f"work root {self.root} must be a directory of this worker's user (uid "
                f"{os.geteuid()}), not a link or another user's directory"
            )
        # Step users may pass through to their own run's directory; nobody may list the root.
        os.chmod(self.root, 0o711 if self._user else 0o700)
        if self._range:
            (self.root / ".uids").mkdir(mode=0o700, exist_ok=True)

    def run_dir(self, run_id: str) -> Path:
        """The directory of one run (made by StepContext when first used)."""
        if not run_id or "/" in run_id or run_id in (".", ".."):
            raise ValueError(f"invalid run id {run_id!r}")
        return self.root / run_id

    @contextlib.asynccontextmanager
    async def lend(self, run_id: str) -> AsyncIterator[StepUser | None]:
        """While a shell step of `run_id` runs: the user it runs as (None: the worker's own),
        with the run's directory made and owned by that user."""
        if self._user is None:
            yield None
            return
        run_dir = self.run_dir(run_id)
        while (lease := self._leases.get(run_id)) is not None and lease.closing is not None:
            await asyncio.shield(lease.closing)
        if lease is None:
            lease = self._leases[run_id] = _Lease(self._user)
            lease.ready = asyncio.ensure_future(self._take(run_id, run_dir, lease))
        assert lease.ready is not None  # set with the lease
        lease.steps += 1
        try:
            await asyncio.shield(lease.ready)
            yield lease.user
        finally:
            lease.steps -= 1
            if lease.steps == 0:
                lease.closing = asyncio.ensure_future(self._release(run_id, run_dir, lease))
                await asyncio.shield(lease.closing)

    async def _take(self, run_id: str, run_dir: Path, lease: _Lease) -> None:
        if self._range:
            lease.user, lease.lock = self._claim_uid(run_id)
            # Left by a worker that died while holding this uid: not this run's to share.
            await asyncio.to_thread(_kill_user_processes, lease.user.uid)
        await asyncio.to_thread(self._hand_to, run_dir, lease.user)

    def _claim_uid(self, run_id: str) -> tuple[StepUser, int]:
        """A uid of the range no other run holds (in this or another worker process on this
        machine): the run's usual one when it is free, so its files rarely change owner."""
        assert self._range and self._user
        first, last = self._range
        size = last - first + 1
        held = {lease.user.uid for lease in self._leases.values()}
        start = zlib.crc32(run_id.encode()) % size
        for offset in range(size):
            uid = first + (start + offset) % size
            if uid in held:
                continue
            fd = os.open(self.root / ".uids" / str(uid), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return StepUser(uid, self._user.gid), fd
        raise RuntimeError(f"every uid of run_as_uid_range {self._range} is in use")

    def _hand_to(self, run_dir: Path, user: StepUser) -> None:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._range:
            # Files an earlier step of this run left under another uid of the range.
            for path in _tree(run_dir):
                owner = os.lstat(path).st_uid
                if owner != user.uid and self._range[0] <= owner <= self._range[1]:
                    os.chown(path, user.uid, user.gid, follow_symlinks=False)
        os.chown(run_dir, user.uid, user.gid, follow_symlinks=False)
        os.chmod(run_dir, 0o700)

    async def _release(self, run_id: str, run_dir: Path, lease: _Lease) -> None:
        """The run's last step here ended: kill what it left running (uid-range mode), take
        the directory back, free the uid."""
        try:
            assert lease.ready is not None
            with contextlib.suppress(Exception):  # a failed hand-off: undo what it did
                await lease.ready
            if lease.lock is not None:
                await asyncio.to_thread(_kill_user_processes, lease.user.uid)
            with contextlib.suppress(FileNotFoundError):
                os.chown(run_dir, os.geteuid(), os.getegid(), follow_symlinks=False)
        finally:
            if lease.lock is not None:
                os.close(lease.lock)
            del self._leases[run_id]


def _tree(root: Path) -> list[Path]:
    """Every entry under `root`, links not followed."""
    found = []
    for top, dirs, files in os.walk(root):
        found += [Path(top) / name for name in (*dirs, *files)]
    return found


def _kill_user_processes(uid: int) -> None:
    """Kill what a run's steps left running: every process of its uid."""
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective):
            with contextlib.suppress(psutil.Error):
                process.kill()
