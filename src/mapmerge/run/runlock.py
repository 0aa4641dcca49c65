"""One snakemake driver per results folder, and local jobs that stop when their driver is killed or interrupted.

The driver holds an exclusive flock on RESULTS/.mapmerge.lock while it runs jobs. The kernel drops
the lock when the driver exits or is killed, so, unlike snakemake's own lock (per working
directory, left behind by a kill), it never goes stale, and it also stops a second driver started
from another working directory on the same results folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from mapmerge.io import TEMP_SUFFIX, undo_writes
from mapmerge.layout import Layout

DRIVER_ENV = "MAPMERGE_DRIVER"  # pid@host of the driver, inherited by the jobs it starts
ORPHAN_EXIT = 75  # exit status of a job that stopped because its driver is gone
JOB_MODULE = b"mapmerge.run.job"  # in a job's command line (python -m mapmerge.run.job LOG SPEC)
logger = logging.getLogger("mapmerge")
_held: dict[Path, IO[str]] = {}  # open lock files of this process: closing one releases its lock
# what io.atomic_path (and the evaluation cache) write beside a file before renaming it onto it: .<name>.<8 hex>.tmp
TEMPORARY = re.compile(rf"\.(.+)\.[0-9a-f]{{8}}{re.escape(TEMP_SUFFIX)}")  # group 1: the file's own name


class RunLockError(RuntimeError):
    """Another driver is running on the results folder; the message names it."""


def lock_path(results: str | os.PathLike) -> Path:
    return Layout(results).lock


def temporary_files(folder: Path) -> list[Path]:
    """The temporary files under `folder` of writes not renamed into place (TEMPORARY): a stopped job's, where no
    driver runs on the folder (else they may be outputs being written)."""
    return sorted(p for p in folder.rglob(f".*{TEMP_SUFFIX}") if TEMPORARY.fullmatch(p.name) and p.is_file())


def describe(info: dict[str, Any]) -> str:
    """'pid 123 on host, since ..., in /work/dir' for a lock holder."""
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}, in {info.get('cwd')}"


def busy(results: str | os.PathLike, info: dict[str, Any]) -> str:
    """What to say of a results folder the driver `info` (holder's) runs on."""
    return f"{results}: another snakemake driver ({describe(info)}) is running on this results folder"


def _flock(fh: IO[str], flags: int, attempts: int) -> bool:
    """Try a non-blocking flock a few times (a holder() probe may hold a shared lock for an instant)."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fh, flags | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < attempts:
                time.sleep(0.05)
    return False


def hold(results: str | os.PathLike) -> None:
    """Lock the results folder for this process until it exits; RunLockError names the driver holding it."""
    path = lock_path(results)
    if path in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        locked = _flock(fh, fcntl.LOCK_EX, attempts=20)
    except OSError as exc:  # a file system without locks: run unprotected rather than not at all
        fh.close()
        logger.warning("%s: cannot lock (%s); make sure no other driver runs on this folder", path, exc)
        return
    if not locked:
        fh.close()
        raise RunLockError(
            f"{busy(results, holder(results) or {})}; wait for it to finish or stop it, then run snakemake again"
        )
    fh.seek(0)
    fh.truncate()
    since = datetime.now().astimezone().isoformat(timespec="seconds")
    fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "cwd": os.getcwd()}))
    fh.flush()
    _held[path] = fh


@contextmanager
def holding(results: str | os.PathLike) -> Iterator[None]:
    """Hold the results folder's lock (hold) for the block only; RunLockError names the driver holding it."""
    path = lock_path(results)
    held = path in _held
    hold(results)
    try:
        yield
    finally:
        if not held and (fh := _held.pop(path, None)):
            fh.close()


def holder(results: str | os.PathLike) -> dict[str, Any] | None:
    """The driver holding the results folder's lock ({pid, host, since, cwd}), or None when none runs."""
    try:
        with open(lock_path(results)) as fh:
            if _flock(fh, fcntl.LOCK_SH, attempts=1):
                return None
            text = fh.read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {}


def mark_driver() -> None:
    """In the driver: tell the jobs it starts (through their environment) which process drives them."""
    os.environ[DRIVER_ENV] = f"{os.getpid()}@{socket.gethostname()}"


def pass_interrupts_to_jobs() -> None:
    """In a driver of local jobs: pass a SIGINT that reaches the driver alone (`kill -INT`, `timeout -s INT`, a
    scheduler's) on to its jobs, as a terminal's Ctrl-C reaches them all. Snakemake waits for its running jobs on
    SIGINT, and a job that finished meanwhile left its file marked incomplete: the same command then stopped with
    IncompleteFilesException. A job that gets the terminal's Ctrl-C and this one takes them as one
    (jobclient forwards each signal once)."""
    interrupt = signal.getsignal(signal.SIGINT)
    if not callable(interrupt):  # ignored (a driver in a shell's background) or the default: nothing to pass on
        return

    def handler(signum: int, frame: Any) -> None:
        for pid in job_processes(os.getpid()):
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:  # ended meanwhile
                pass
        interrupt(signum, frame)

    signal.signal(signal.SIGINT, handler)


def job_processes(root: int) -> list[int]:
    """The processes below process `root` that run a job (JOB_MODULE), from /proc."""
    children: dict[int, list[int]] = {}
    jobs = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):  # ended meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry.name))
        if JOB_MODULE in argv:
            jobs.add(int(entry.name))
    found, below = [], [root]
    while below:
        for child in children.get(below.pop(), []):
            below.append(child)
            if child in jobs:
                found.append(child)
    return found


def _ancestors() -> Iterator[int]:
    """This process's parent, grandparent, ... (read from /proc; only the parent where there is none)."""
    pid = os.getppid()
    while pid > 1:
        yield pid
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, owned by someone else
        return True
    return True


_watched: list[int] = []  # the driver this job process watches (stop_with_driver), if any


def stop_with_driver(interval: float = 1.0) -> threading.Thread | None:
    """In a job process: exit, deleting the outputs it wrote, once the driver that started it is gone.

    A job that outlives a killed driver would write an output that snakemake keeps no record of
    (its params and code could then never trigger a rerun), and would race the restarted driver.
    Only a job that descends from its driver is watched (local execution on Linux, not cluster jobs).
    A job on the driver's host whose driver is already gone when it starts (killed as it launched the
    job) exits at once. The watch looks every `interval` s; a job ends with stop_if_driver_gone.
    """
    pid, _, host = os.environ.get(DRIVER_ENV, "").partition("@")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if int(pid) not in _ancestors():
        if not alive(int(pid)):
            logger.error("driver pid %s is gone; this job does not start, the next snakemake run redoes it", pid)
            os._exit(ORPHAN_EXIT)
        return None
    _watched.append(int(pid))

    def watch() -> None:
        while int(pid) in _ancestors():  # a dead driver's children are handed to another process at once
            time.sleep(interval)
        stop_if_driver_gone()

    thread = threading.Thread(target=watch, name="mapmerge-driver-watch", daemon=True)
    thread.start()
    return thread


def stop_if_driver_gone() -> None:
    """In a job that watches its driver: exit, deleting what it wrote, if the driver is gone.

    A job calls it once its stage is done, before it exits: Snakemake records a job only when its
    process ends, so outputs finished after the driver died (within the watch's interval) are undone.
    """
    if _watched and _watched[0] not in _ancestors():
        gone = (
            "is gone" if not alive(_watched[0]) else "no longer runs this job (the job server that forked it stopped)"
        )
        logger.error("driver pid %s %s; stopping this job, the next snakemake run redoes it", _watched[0], gone)
        undo_writes()
        os._exit(ORPHAN_EXIT)
