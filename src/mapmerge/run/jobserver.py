"""A local run's job server: one process that imports each stage's modules once and forks a job per request.

A job's start-up is its imports (torch alone about 2 s of CPU), and a run starts tens of jobs that import the same
modules. The driver's onstart starts the server (`start`) for a local run with at least MIN_JOBS jobs to run; every
job, `python -m mapmerge.run.job LOG SPEC`, then asks it (mapmerge.run.jobclient.delegate) to fork a process that
runs the job as that command would: the job's argv, working folder, environment and standard streams (passed over
the socket), its exit status returned. Before it forks the first job of a stage, the server imports that stage's
module (and the job machinery's), so the job and every later one of its stage start with them imported; a module
no planned job needs is never imported. A job that finds no server listening runs itself, as without one.

The forked job descends from the driver through the server, so it stops with a killed driver as a job started by the
driver does (mapmerge.run.runlock.stop_with_driver); the server exits once the driver is gone, and ignores Ctrl-C
(the jobs' processes pass it on). The server is single-threaded: it forks no process holding another thread's lock.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

from mapmerge.run import job, jobclient
from mapmerge.run.jobclient import FORWARDED, HEADER, OFF, RUN_HERE, SERVER_ENV, STREAMS, THREAD_VARS

MIN_JOBS = 2  # one job to run imports its own modules
# what every job imports besides its stage's module (mapmerge.run.job defers them)
JOB_MODULES = ("mapmerge.run.evaluation_cache", "mapmerge.run.runlock")
POLL = 0.05  # seconds between looks at finished jobs and the driver
FORWARDED_BY_CODE = {code[0]: sig for sig, code in FORWARDED.items()}  # a forwarded signal's byte -> the signal
FOLDER_PREFIX = "mapmerge-jobs-"  # the socket's folder in the temporary folder: mapmerge-jobs-<driver pid>-<random>


def enabled() -> bool:
    """Whether this process may start a job server (MAPMERGE_JOB_SERVER=off in its environment says no)."""
    return os.environ.get(SERVER_ENV) != OFF


def start() -> subprocess.Popen:
    """Start the server (a child of this process, the driver), and set its socket's path in this process's
    environment, which the jobs inherit. The socket's folder (only its owner may enter it) names the driver's pid;
    the folders of drivers that are gone, whose servers were killed before they could remove them, go first."""
    _remove_stale_folders()
    path = Path(tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")) / "socket"
    quiet = subprocess.DEVNULL  # a job's output goes to its own streams; the server holds none of the driver's
    server = subprocess.Popen(
        [sys.executable, "-m", __name__, str(path)],
        stdin=quiet,
        stdout=quiet,
        stderr=quiet,
        env={**os.environ, **dict.fromkeys(THREAD_VARS, "1")},
    )
    os.environ[SERVER_ENV] = str(path)
    return server


def _remove_stale_folders() -> None:
    from mapmerge.run import runlock  # deferred: pyarrow (mapmerge.io), which the server loads after it listens

    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).partition("-")[0]
        if pid.isdigit() and folder.stat().st_uid == os.getuid() and not runlock.alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)  # its driver is gone, and with it the server


def stop(server: subprocess.Popen) -> None:
    """Stop a server that `start` started (the jobs it forked go on) and take its socket out of the environment."""
    server.terminate()
    server.wait()
    os.environ.pop(SERVER_ENV, None)


def serve(path: str) -> None:
    """The server's loop: listen on `path`, fork a job per request (its stage's modules imported first) and send its
    exit status back, until the driver (this process's parent) is gone or stops it (SIGTERM); then remove the
    socket's folder."""
    driver = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    running: dict[int, socket.socket] = {}
    orphaned: set[int] = set()  # running jobs whose job's process is gone: killed, not yet reaped
    try:
        listener.bind(path)  # fails for a path past the system's limit (108 bytes): the jobs run themselves
        listener.listen(64)
        while os.getppid() == driver:
            heard = [conn for pid, conn in running.items() if pid not in orphaned]
            for ready in select.select([listener, *heard], [], [], POLL)[0]:
                if ready is listener:
                    conn = listener.accept()[0]
                    pid = _fork_job(conn, listener, running)
                    if pid is None:
                        conn.close()
                    else:
                        running[pid] = conn
                elif (pid := _pass_on(ready, running)) is not None:
                    orphaned.add(pid)
            _reply_finished(running)
            orphaned &= running.keys()
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
        try:
            Path(path).parent.rmdir()
        except OSError:  # not empty: not only the socket's
            pass


def _pass_on(conn: socket.socket, running: dict[int, socket.socket]) -> int | None:
    """A signal a job's process forwarded (FORWARDED), to its forked job; where that process is gone (its connection
    closed: killed, as Snakemake kills a job), the forked job is killed too, and its pid returned (its connection,
    closed, is not listened to again)."""
    pid = next(p for p, c in running.items() if c is conn)
    try:
        data = conn.recv(16)
    except OSError:
        data = b""
    for sig in [FORWARDED_BY_CODE[code] for code in data if code in FORWARDED_BY_CODE] if data else [signal.SIGKILL]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:  # finished; _reply_finished reaps it
            pass
    return None if data else pid


def _exit_on_term(signum: int, frame: object) -> None:
    raise SystemExit(0)  # the server's finally removes its socket


def _fork_job(conn: socket.socket, listener: socket.socket, running: dict[int, socket.socket]) -> int | None:
    """Read one request and fork its job; the job's pid, or None for a request that did not arrive whole."""
    conn.settimeout(10.0)
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, HEADER, len(STREAMS))
        size = int.from_bytes(head, "big")
        data = b""
        while len(data) < size and (chunk := conn.recv(size - len(data))):
            data += chunk
        request = json.loads(data)
        if len(fds) != len(STREAMS) or _other_threads(request["env"]):
            conn.sendall(RUN_HERE)
            raise ValueError("not a job for this server")
    except (OSError, ValueError):
        for fd in fds:
            os.close(fd)
        return None
    _import_for(request["argv"])
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setpgid(0, 0)  # a terminal's Ctrl-C reaches it through its job's process only (FORWARDED), once
            listener.close()
            conn.close()
            for other in running.values():
                other.close()
            _become_job(request, fds)
            status = job.main(request["argv"])
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    for fd in fds:
        os.close(fd)
    return pid


def _import_for(argv: list[str]) -> None:
    """Import what the job of `argv` (LOG SPEC) imports: the job machinery's modules and its stage's."""
    try:
        modules = [*JOB_MODULES, job.stage_module(job.decode(argv[1]))]
    except Exception:  # not a job's argv: the forked job says what is wrong
        modules = list(JOB_MODULES)
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # the forked job imports it again and reports the error
            pass


def _other_threads(env: dict[str, str]) -> bool:
    """Whether a job's environment asks for other thread counts than the server's libraries were loaded with."""
    return any(env.get(name) != os.environ.get(name) for name in THREAD_VARS)


def _become_job(request: dict, fds: list[int]) -> None:
    """In the forked process: the job's standard streams, working folder, environment and argv, and its process's
    handling of Ctrl-C and SIGTERM (the default, or ignored as that process ignores them)."""
    for target, fd in zip(STREAMS, fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # the job's TMPDIR, should the server have asked for its own
    sys.argv = [sys.argv[0], *request["argv"]]
    ignored = set(request.get("ignored", []))
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        signal.signal(sig, signal.SIG_IGN if sig in ignored else handler)
    jobclient.mark_forked()


def _reply_finished(running: dict[int, socket.socket]) -> None:
    """Send each finished job's exit status to the job that asked for it."""
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            conn.sendall(str(code if code >= 0 else 128 - code).encode())  # killed by signal N: 128 + N, as a shell
        except OSError:  # the job that asked is gone
            pass
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
