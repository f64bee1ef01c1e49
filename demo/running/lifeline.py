"""A worker process's ties to the process that started it: it dies with its parent, and it keeps none of the
parent's listening sockets (a worker that inherited the server's socket and outlived it would hold the port, and
clients connecting to it would wait in its backlog forever)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import stat
import threading

log = logging.getLogger(__name__)
WATCH_S = 0.5  # how often a worker checks that its parent is still there
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int, *, kernel_signal: bool) -> None:
    """End this process when `parent_pid` ends: a thread that checks every WATCH_S whether the parent is still
    this process's parent and, with `kernel_signal`, the kernel's SIGKILL on the parent's death as well (which
    also reaches a worker stuck in native code). The kernel's signal fires when the *thread* that started this
    process ends, so only a process started from a thread that lives as long as its process may ask for it."""
    if kernel_signal:
        failed = kernel_kill_with_parent()
        if failed:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", failed)
    if os.getppid() != parent_pid:  # the parent ended before the signal was asked for
        os._exit(0)
    threading.Thread(target=_watch, args=(parent_pid,), daemon=True, name="lifeline").start()


def kernel_kill_with_parent() -> int:
    """Ask the kernel for SIGKILL on this process when the thread that started it ends; 0, or the errno of a failed
    prctl. Safe between fork and exec (it only calls prctl), so a native engine's Popen may run it as preexec_fn.
    Not Linux: 0, and nothing is asked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return 0 if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 else ctypes.get_errno()
    except (OSError, AttributeError):
        return 0


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        threading.Event().wait(WATCH_S)
    os._exit(0)


def close_listening_sockets() -> int:
    """Drop every listening socket this process inherited; returns how many. Each descriptor is replaced by a
    fresh unbound socket (never closed outright, nor shut down, which would stop the parent's socket too), so an
    inherited Python object that still names the number closes a harmless socket when it is collected."""
    dropped = 0
    for name in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            probe = socket.socket(fileno=os.dup(fd))
            try:
                listening = probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            finally:
                probe.close()
        except OSError:  # the listing's own descriptor, already gone, or not a socket we may ask
            continue
        if listening:
            spare = socket.socket()
            os.dup2(spare.fileno(), fd)
            spare.close()
            dropped += 1
    return dropped
