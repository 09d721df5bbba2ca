"""The processes of one run: where each sits (its rank), how they are started and joined, and what they agree on.

Three ways to start them, one process group (gloo on the CPU, NCCL on GPUs) set up here before Lightning uses it:

- `train_net.py --num-gpus N [--num-machines M --machine-rank m --dist-url tcp://HOST:PORT]`: this module starts the
  N processes of this machine (spawned, as detectron2's launcher does) and watches them: the first that fails stops
  the others within seconds, and the launcher reports which rank failed and how.
- torchrun (`TORCHELASTIC_RUN_ID`, `RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`) and SLURM's srun
  (`SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_NTASKS`, ...): every process is already there; Lightning's cluster
  environments read where it sits.

A process waits at most `--dist-timeout` seconds for the others (at start-up and in every collective), so a rank
that dies, or a machine that never comes, ends the run with an error instead of a 30-minute hang.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..errors import UserError
from ..utils.processes import Terminated, cores_per_process, sigterm_raises, start_child, stop_cause

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600


class DistributedError(UserError):
    """A process of the run failed or could not reach the others; the message names the rank and what to do."""


@dataclass(frozen=True)
class Place:
    """Where one process sits in the run."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    main_address: str
    main_port: int
    launcher: str  # "train_net" (started here), "torchrun" or "slurm"

    @property
    def url(self) -> str:
        return f"tcp://{self.main_address}:{self.main_port}"

    def environment(self) -> dict[str, str]:
        """The variables Lightning (and torch.distributed's env:// rendezvous) read for this process."""
        return {
            "RANK": str(self.rank),
            "LOCAL_RANK": str(self.local_rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "NODE_RANK": str(self.node_rank),
            "MASTER_ADDR": self.main_address,
            "MASTER_PORT": str(self.main_port),
        }


def log_file_name(rank: int) -> str:
    """Rank 0 logs to OUTPUT_DIR/log.txt, rank r to OUTPUT_DIR/log.txt.rank{r}."""
    return "log.txt" if rank == 0 else f"log.txt.rank{rank}"


# ---- processes started by torchrun or srun -----------------------------------------------------------------------
def external_place(num_per_machine: int, num_machines: int) -> Place | None:
    """This process's place when torchrun or srun started it (None otherwise); an error when their process count is
    not the command's --num-gpus x --num-machines."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        environment, launcher, how = TorchElasticEnvironment(), "torchrun", "torchrun --nproc-per-node x --nnodes"
    elif SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        environment, launcher, how = SLURMEnvironment(), "slurm", "srun's tasks (SLURM_NTASKS)"
    else:
        return None
    world = environment.world_size()
    if world != num_per_machine * num_machines:
        raise ConfigError(
            f"{launcher} started {world} processes ({how}) but the command asks for --num-gpus {num_per_machine} x "
            f"--num-machines {num_machines} = {num_per_machine * num_machines}: give the same counts to both"
        )
    return Place(
        rank=environment.global_rank(),
        local_rank=environment.local_rank(),
        world_size=world,
        local_world_size=num_per_machine,
        node_rank=environment.node_rank(),
        main_address=environment.main_address,
        main_port=environment.main_port,
        launcher=launcher,
    )


def cluster_environment(place: Place | None):
    """The Lightning cluster environment that describes `place` (so Lightning launches nothing itself)."""
    from lightning.fabric.plugins.environments import (
        LightningEnvironment,
        SLURMEnvironment,
        TorchElasticEnvironment,
    )

    if place is not None and place.launcher == "torchrun":
        return TorchElasticEnvironment()
    if place is not None and place.launcher == "slurm":
        return SLURMEnvironment()
    return LightningEnvironment()  # reads the variables `Place.environment` set


# ---- processes started here ---------------------------------------------------------------------------------------
def check_dist_url(dist_url: str, num_machines: int) -> None:
    """--dist-url's form: 'auto' on one machine, else tcp://HOST:PORT with a host that resolves."""
    if dist_url == "auto":
        if num_machines > 1:
            raise ConfigError(
                f"--num-machines {num_machines} needs --dist-url tcp://<machine 0's address>:<free port>, the same on "
                "every machine"
            )
        return
    host, port = _parse_url(dist_url)
    try:
        socket.getaddrinfo(host, port)
    except socket.gaierror:
        raise ConfigError(f"--dist-url {dist_url}: no machine is called {host!r}; give machine 0's address") from None


def main_address(dist_url: str, num_machines: int, machine_rank: int, timeout_s: float) -> tuple[str, int]:
    """(host, port) of rank 0's rendezvous. 'auto' (one machine): a free port on 127.0.0.1. Machine 0 checks that
    its port is free; the other machines wait until machine 0 answers there (at most `timeout_s`)."""
    check_dist_url(dist_url, num_machines)
    if dist_url == "auto":
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            return "127.0.0.1", probe.getsockname()[1]
    host, port = _parse_url(dist_url)
    if machine_rank == 0:
        check_port_free(host, port, dist_url)
    else:
        wait_for_main(host, port, dist_url, timeout_s)
    return host, port


def _parse_url(dist_url: str) -> tuple[str, int]:
    from urllib.parse import urlparse

    url = urlparse(dist_url)
    try:
        port = url.port
    except ValueError:
        raise ConfigError(f"--dist-url {dist_url}: the port must be a number from 1 to 65535") from None
    if url.scheme != "tcp" or not url.hostname or not port:
        raise ConfigError(f"--dist-url {dist_url}: give tcp://HOST:PORT (machine 0's address and a free port)")
    return url.hostname, port


def check_port_free(host: str, port: int, dist_url: str) -> None:
    """Machine 0 is about to listen on `port` of `host`: refused at once when `host` is not this machine or something
    else already listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            raise ConfigError(
                f"--dist-url {dist_url}: {host} is not an address of this machine, but --machine-rank 0 runs where "
                "--dist-url points: give this machine's address (the same on every machine), or run rank 0 there"
            ) from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the rendezvous server does
        try:
            probe.bind(("", port))
        except OSError as error:
            raise ConfigError(
                f"--dist-url {dist_url}: port {port} is in use on this machine ({error.strerror}; another run?): give "
                "another port, the same on every machine"
            ) from None


def wait_for_main(host: str, port: int, dist_url: str, timeout_s: float) -> None:
    """A machine other than 0 waits until machine 0's rendezvous answers: first until anything listens there (plain
    connects, which print nothing while machine 0 is not up yet), then for the rendezvous store's handshake."""
    logger.info("waiting for machine 0 at %s (at most %g s, --dist-timeout)", dist_url, timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
                break
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"--dist-url {dist_url}: machine 0 did not answer within {timeout_s:g} s (--dist-timeout; "
                    f"{error.strerror or error}): start machine 0's command first (the same --dist-url), check its "
                    "address, the port and the firewall"
                ) from None
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    left = max(1.0, deadline - time.monotonic())
    problem = _store_handshake(host, port, left)
    if problem:
        raise DistributedError(
            f"--dist-url {dist_url}: something answers there, but not a train_net.py run's rendezvous ({problem}): "
            "check the address and port (another program listens there?)"
        )


def _store_handshake(host: str, port: int, timeout_s: float) -> str | None:
    """None when a rendezvous store answers at host:port as a client expects, else what went wrong. The client runs
    in a thread: a server that accepts and never replies would hold it past its own timeout."""
    outcome: dict[str, str | None] = {}

    def connect() -> None:
        try:
            dist.TCPStore(host, port, is_master=False, timeout=timedelta(seconds=timeout_s))
            outcome["problem"] = None
        except (RuntimeError, TimeoutError) as error:  # DistStoreError / DistNetworkError derive from RuntimeError
            outcome["problem"] = first_words(error)

    client = threading.Thread(target=connect, name="rendezvous-probe", daemon=True)
    client.start()
    client.join(timeout_s + 1.0)
    return outcome.get("problem", f"no answer to its handshake within {timeout_s:g} s")


def first_words(error: BaseException, limit: int = 160) -> str:
    """The first sentence of an error's text (torch's and gloo's run on for lines), at most `limit` characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def local_places(host: str, port: int, num_per_machine: int, num_machines: int, machine_rank: int) -> list[Place]:
    return [
        Place(
            rank=machine_rank * num_per_machine + local,
            local_rank=local,
            world_size=num_per_machine * num_machines,
            local_world_size=num_per_machine,
            node_rank=machine_rank,
            main_address=host,
            main_port=port,
            launcher="train_net",
        )
        for local in range(num_per_machine)
    ]


def run_processes(
    target: Callable[[Place, Any], dict],
    payload: Any,
    places: list[Place],
    describe_failure: Callable[[], str] = lambda: "",
    log_dir: Path | None = None,
) -> dict:
    """`target(place, payload)` in one spawned process per place; returns what local rank 0 returned. The first
    process to fail (an error, a signal, kill -9) stops the others at once (SIGKILL) and is raised as a
    DistributedError naming its rank; `describe_failure()` adds what to do next (how to resume). Ctrl-C and SIGTERM
    stop them all the same way."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    processes = []
    with _quiet_cpp_warnings():
        for place in places:
            # each dies with the launcher (kill -9 included) and shares its lock on OUTPUT_DIR
            processes.append(
                start_child(context, _process_main, (target, payload, place, results), f"rank{place.rank}")
            )
    logger.info(
        "started %d processes on this machine (ranks %s of %d, pids %s)",
        len(processes),
        ", ".join(str(place.rank) for place in places),
        places[0].world_size,
        ", ".join(str(process.pid) for process in processes),
    )
    running = {process.sentinel: (process, place) for process, place in zip(processes, places, strict=True)}
    failed: tuple[mp.Process, Place] | None = None
    try:
        with sigterm_raises():
            while running and failed is None:
                for sentinel in multiprocessing.connection.wait(list(running)):
                    process, place = running.pop(sentinel)
                    process.join()
                    if process.exitcode != 0 and failed is None:
                        failed = (process, place)
    except (KeyboardInterrupt, Terminated) as stop:  # whatever the processes were doing, they stop here
        _stop([process for process, _ in running.values()])
        raise DistributedError(
            f"{stop_cause(stop)}: the {len(processes)} processes on this machine were stopped. {describe_failure()}"
        ) from None
    finally:
        started = time.monotonic()
        _stop([process for process, _ in running.values()])
        if failed is not None or running:
            logger.info("stopped the other processes in %.1f s", time.monotonic() - started)
    if failed is not None:
        process, place = failed
        log = (log_dir or Path()) / log_file_name(place.rank)
        raise DistributedError(
            f"rank {place.rank} of {place.world_size} (pid {process.pid}) {_how_it_ended(process.exitcode)}; the "
            f"other processes on this machine were stopped (its log: {log}). {describe_failure()}"
        )
    return results.get() if not results.empty() else {}


@contextmanager
def _quiet_cpp_warnings() -> Iterator[None]:
    """The spawned processes start with torch's C++ log at ERROR (unless the user set TORCH_CPP_LOG_LEVEL): c10d's
    connection warnings come with pages of stack frames, and the errors they end in are reported in one line."""
    given = "TORCH_CPP_LOG_LEVEL" in os.environ
    if not given:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    try:
        yield
    finally:
        if not given:
            del os.environ["TORCH_CPP_LOG_LEVEL"]


def _how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    if exitcode == 2:
        return "stopped on the error above"
    return f"failed with exit status {exitcode} (its traceback is above)"


def _stop(processes: list) -> None:
    # SIGKILL, not SIGTERM: a rank's peers are gone, so a graceful stop would only fail in its next collective
    # (Lightning's SIGTERM handler broadcasts); every file a run writes is written atomically, and the next start
    # removes a half-written one
    for process in processes:
        if process.is_alive():
            process.kill()
    for process in processes:
        process.join()


def _process_main(target: Callable[[Place, Any], dict], payload: Any, place: Place, results) -> None:
    os.environ.update(place.environment())
    result = target(place, payload)
    if place.local_rank == 0:
        results.put(result)


# ---- inside every process of a multi-process run ------------------------------------------------------------------
def set_threads(local_world_size: int) -> int:
    """torch's CPU threads for one of `local_world_size` processes on this machine: OMP_NUM_THREADS when the user
    (or torchrun) set it, else the usable cores shared out, so the processes do not oversubscribe the cores."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(given) if given.isdigit() and int(given) > 0 else cores_per_process(local_world_size)
    torch.set_num_threads(threads)
    return threads


def init_process_group(place: Place, backend: str, timeout_s: float) -> None:
    """Join the run's process group (rank 0 listens at the rendezvous, the others connect), with clear errors."""
    if dist.is_initialized():
        return
    if place.rank == 0 and place.world_size > place.local_world_size:
        logger.info(
            "waiting at %s for the other machines' %d processes (at most %g s, --dist-timeout)",
            place.url,
            place.world_size - place.local_world_size,
            timeout_s,
        )
    try:
        dist.init_process_group(
            backend,
            init_method=place.url,
            rank=place.rank,
            world_size=place.world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    except RuntimeError as error:  # DistNetworkError, DistStoreError
        text = str(error)
        if "EADDRINUSE" in text or "address already in use" in text.lower():
            raise ConfigError(
                f"rendezvous {place.url}: port {place.main_port} is in use on this machine (another run?): give "
                "another --dist-url port"
            ) from None
        waited_for = "the other processes" if place.rank == 0 else "rank 0"
        raise DistributedError(
            f"rank {place.rank}: {waited_for} did not join the run at {place.url} within {timeout_s:g} s "
            f"(--dist-timeout; {first_words(error)}): start every machine's command with the same "
            "--dist-url and --num-machines, each with its own --machine-rank"
        ) from None


# What gloo and NCCL say when a peer process or its machine is gone.
_LOST_PEER = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout")


def lost_peer(error: BaseException) -> bool:
    """Whether a collective failed because another process of the run stopped answering."""
    return isinstance(error, RuntimeError) and any(text in str(error).lower() for text in _LOST_PEER)


def gather(value: Any) -> list[Any]:
    """`value` of every rank, in rank order (one process: [value])."""
    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
