"""A job's side of the run's job server (mapmerge.run.jobserver): ask it to fork the job, or run the job here.

`python -m mapmerge.run.job LOG SPEC` calls `delegate` first; this module imports nothing heavy, so a job that the
server forks costs its process little more than Python's start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Callable

SERVER_ENV = "MAPMERGE_JOB_SERVER"  # the socket's path, in the jobs' environment; OFF there: no server
OFF = "off"
HEADER = 8  # bytes of a request's length, sent with the job's standard streams
STREAMS = (0, 1, 2)
# What Snakemake sets for a local job's threads, and the libraries read once, as they load: the server loads them
# with a 1-thread job's values, and a job whose values differ runs itself (RUN_HERE)
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "GOTO_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
RUN_HERE = b"here"
FORWARDED = {signal.SIGINT: b"I", signal.SIGTERM: b"T"}  # signals a job's process passes on to its forked job
FORKED_NOTE = "(forked by the run's job server)"  # in a forked job's log, after its stage's name

_forked = False  # in a job the server forked (mark_forked)


def forked() -> bool:
    """Whether this process is a job that a job server forked."""
    return _forked


def mark_forked() -> None:
    """Say, in a job the server has just forked, that it was."""
    global _forked
    _forked = True


def delegate(argv: list[str]) -> int | None:
    """In a job: run `argv` (the job's) in a process forked by the run's server and return its exit status; None
    where no server takes it (none in the environment, not listening yet, or the job's threads are not the
    server's): the job then runs itself."""
    path = os.environ.get(SERVER_ENV)
    if not path or path == OFF:
        return None
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(path)
    except OSError:
        client.close()
        return None
    # the signals this process ignores (a shell's background job ignores Ctrl-C), the forked job ignores too
    ignored = [sig for sig in FORWARDED if signal.getsignal(sig) == signal.SIG_IGN]
    request = json.dumps(
        {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "ignored": [int(sig) for sig in ignored]}
    ).encode()
    with client:
        socket.send_fds(client, [len(request).to_bytes(HEADER, "big")], list(STREAMS))
        client.sendall(request)
        # Ctrl-C and SIGTERM go on to the forked job (in a process group of its own); its status comes back
        handlers = {sig: signal.signal(sig, _forward(client, sig)) for sig in FORWARDED if sig not in ignored}
        reply = b""
        try:
            while chunk := client.recv(64):
                reply += chunk
        except OSError:  # the server was killed (a SIGTERM to the whole process group): as one that went away
            reply = b""
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if reply == RUN_HERE:
        return None
    if not reply.isdigit():  # the server went with its driver
        print("mapmerge: the run's job server stopped before this job ended", file=sys.stderr)
        return 1
    return int(reply)


def _forward(client: socket.socket, sig: int) -> Callable[[int, object], None]:
    """A handler passing `sig` on to the forked job once: a terminal's Ctrl-C and the driver's (runlock.
    pass_interrupts_to_jobs) are one interrupt."""
    sent = False

    def handler(signum: int, frame: object) -> None:
        nonlocal sent
        if sent:
            return
        sent = True
        try:
            client.sendall(FORWARDED[sig])
        except OSError:  # the server is gone
            pass

    return handler
