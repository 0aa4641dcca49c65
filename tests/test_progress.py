"""Progress bars: shown on a terminal, absent from pipes and log files."""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios

SCRIPT = (
    "from mapmerge.progress import progress\nprint(sum(progress(range(4), desc='evaluate all/b0000', unit='sample')))\n"
)


def test_progress_silent_off_a_terminal() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "6" and done.stderr == ""


def test_progress_bar_on_a_terminal() -> None:
    main, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    try:
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT], stderr=replica, stdout=subprocess.PIPE, text=True, check=True
        )
        os.set_blocking(main, False)
        shown = b""
        while True:  # the replica end stays open, so what the child wrote waits in the terminal's buffer
            try:
                shown += os.read(main, 4096)
            except BlockingIOError:
                break
    finally:
        os.close(main)
        os.close(replica)
    assert done.stdout.strip() == "6"
    assert b"evaluate all/b0000:   0%" in shown and b"0/4" in shown  # the bar, with its total
    assert shown.endswith(b"\r")  # and cleared when done (leave=False): logs and the terminal stay tidy
