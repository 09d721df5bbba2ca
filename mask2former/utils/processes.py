"""How a tool's processes stop: children that never outlive their parent, and SIGTERM raised like Ctrl-C.

`start_child` starts `target(*args)` in a process of a multiprocessing context (predict.py's workers, the ranks
train_net.py starts) that

- dies with its parent, however the parent ends (kill -9 included): on Linux the kernel sends it SIGKILL when the
  parent ends (prctl PR_SET_PDEATHSIG), and a child whose parent ended before that was set up stops at once;
  elsewhere a watchdog thread checks every second;
- holds the output-folder locks its parent holds (`mask2former.utils.run_lock`): the child shares the open lock
  file, hence its flock, so the kernel frees the folder only when the parent and every child are gone, and a second
  run cannot start on the folder while a child of the first can still write there.

The kernel ties PR_SET_PDEATHSIG to the thread that started the child: start children from a thread that lives as
long as they do (the tools start them from the main thread).

`sigterm_raises` makes SIGTERM (a scheduler cancelling the job, `kill`) raise `Terminated` in the main thread, as
Ctrl-C raises KeyboardInterrupt, so that a tool stops through its `finally` blocks and says how to continue
(`stop_cause` names the stop).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import reduction
from typing import Any

from .run_lock import held_lock_fds

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_inherited_fds: list[int] = []  # the parent's lock files, open in this child for its whole life


def start_child(context: Any, target: Callable[..., Any], args: tuple, name: str) -> Any:
    """A started `context.Process` running `target(*args)`: it dies with this process and holds this process's
    output-folder locks (see the module docstring)."""
    locks = [_SharedFd(fd) for fd in held_lock_fds()]
    process = context.Process(target=_child_main, args=(os.getpid(), locks, target, args), name=name)
    process.start()
    return process


def _child_main(parent: int, locks: list[int], target: Callable[..., Any], args: tuple) -> None:
    die_with_parent(parent)
    target(*args)


def die_with_parent(parent: int) -> None:
    """This process ends (SIGKILL) when process `parent`, the one that started it, ends; at once if it has ended."""
    if not _kill_when_parent_ends():
        threading.Thread(target=_watch_parent, args=(parent,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent:  # the parent ended before the kernel was told
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_when_parent_ends() -> bool:
    """Ask the kernel for SIGKILL when the parent ends (Linux); False where that cannot be had."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


class _SharedFd:
    """A file descriptor of the parent that is open in the child too (the same open file, so the same flock)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        # pickled while the child is being started: DupFd passes the descriptor to it
        return (_keep_inherited, (reduction.DupFd(self.fd),))


def _keep_inherited(duplicate: Any) -> int:
    fd = duplicate.detach()
    _inherited_fds.append(fd)
    return fd


class Terminated(BaseException):
    """SIGTERM arrived; raised where the main thread was, as Ctrl-C raises KeyboardInterrupt (a BaseException, so
    that `except Exception` does not swallow it)."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (once: a second SIGTERM while stopping is
    ignored); the previous handler is back afterwards. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def stop_cause(error: BaseException) -> str | None:
    """'interrupted (Ctrl-C)' or 'stopped by SIGTERM' when `error` is how a stop request ended the work
    (KeyboardInterrupt, Terminated, or an error raised while handling one: Lightning turns Ctrl-C into
    sys.exit(1), and a stop inside torch.save makes its zip writer fail on the way out); None otherwise."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return "interrupted (Ctrl-C)"
        if isinstance(seen, Terminated):
            return "stopped by SIGTERM"
        seen = seen.__cause__ if seen.__cause__ is not None or seen.__suppress_context__ else seen.__context__
    return None


def stopped_message(error: BaseException) -> str | None:
    """The line a tool stopped by Ctrl-C or SIGTERM ends with; None when `error` is no stop."""
    cause = stop_cause(error)
    return None if cause is None else f"{cause}: the run was stopped; run the same command again to finish it"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_per_process(processes: int) -> int:
    """torch threads for each of `processes` processes on this machine: the usable cores shared out (at least 1),
    so that they do not oversubscribe the cores."""
    return max(1, usable_cpus() // max(1, processes))
