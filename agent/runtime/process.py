"""The agent process: start-up in phases, signals, and how the process ends.

Owns: `run_agent_process` (`vxmesh agent`: logging, the fault handler, trio, the exit code),
`run_agent` (build the components, start each phase in dependency order, readiness, signals:
SIGTERM/SIGINT = stop and exit 0, leaving the cluster first only with `node.leave_on_stop`;
SIGHUP = re-read keys and log level; `vxmesh leave` = leave, then exit 0), and
`startup_failure`, which turns what an operator can cause into one line and an exit code.

Rules:
- Start-up failures an operator causes print ONE line naming the key or resource and the
  value, and exit 2 (usage: a bad config value, a malformed etcd URL, an unreadable keyring, a
  bad state directory) or 1 (environment: a missing interface, a port in use, etcd unreachable
  on a first start, a missing kernel feature). trio's ExceptionGroup is unwrapped here; an
  error nothing classifies keeps its traceback.
- READY=1 only after the first full kernel sync; shutdown work (leave) runs shielded and
  time-boxed.
- A stop is not a leave (serf's leave_on_terminate = false): peers see us fail, find our host
  still forwarding and keep our entries (agent.runtime.gossip_link), so a restart or upgrade
  cuts no traffic. `vxmesh leave` (POST /v1/leave) leaves, then ends the process with exit 0;
  so does SIGTERM with `node.leave_on_stop = true`. Peers then withdraw our entries at once.

May import: agent.*, trio, the standard library.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from agent.config import AgentConfig, AgentConfigError, load_config
from agent.errors import GossipKeyError
from agent.runtime.compose import Components, build_components
from agent.runtime.control import SHUTDOWN_TIMEOUT, Control, StopRequest
from agent.runtime.errors import StartupError
from agent.runtime.phases import (
    run_api,
    run_dataplane,
    run_gossip,
    run_metrics,
    run_names,
    run_pipeline,
    run_policies,
    run_pools,
    run_store,
    run_watchdog,
    run_wireguard,
)
from agent.runtime.systemd import SystemdNotifier
from agent.state_files import StateReadError, StateWriteError
from underlay.errors import UnderlayError

log = logging.getLogger("vxmesh.agent")

EXIT_ENVIRONMENT = 1
EXIT_USAGE = 2


@dataclass(frozen=True)
class AgentExit:
    """How the process ends: exit code and why."""

    code: int
    reason: str


def configure_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_agent_process(config: AgentConfig, *, config_path: Path | None = None,
                      assignments: Sequence[str] = ()) -> int:
    """`vxmesh agent`: run until SIGTERM/SIGINT; 0 after a graceful stop, else an error code."""
    configure_logging(config.node.log_level)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: stacks to the log
    os.register_at_fork(after_in_child=_default_signals_in_child)
    try:
        result: AgentExit = trio.run(run_agent, config, config_path, tuple(assignments))
    except BaseException as exc:
        failure = startup_failure(exc)
        if failure is None:
            raise
        print(f"vxmesh agent: cannot start: {failure.reason}", file=sys.stderr, flush=True)
        return failure.code
    log.info("agent stopped: %s", result.reason)
    return result.code


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def startup_failure(exc: BaseException) -> AgentExit | None:
    """The exit an operator-caused failure deserves (one line), or None: keep the traceback.

    A group is classified when every error in it is (the first one is reported).
    """
    exits = [_classify(leaf) for leaf in _leaves(exc)]
    if not exits or any(e is None for e in exits):
        return None
    return next(e for e in exits if e is not None)


def _classify(exc: BaseException) -> AgentExit | None:
    if isinstance(exc, AgentConfigError | StateReadError | StateWriteError | GossipKeyError):
        return AgentExit(EXIT_USAGE, str(exc))
    if isinstance(exc, StartupError | UnderlayError):
        return AgentExit(EXIT_ENVIRONMENT, str(exc))
    return None


def _default_signals_in_child() -> None:
    """Children forked by libraries (pyroute2's namespace helpers) must die on SIGTERM.

    They inherit trio's Python-level handlers, which only record a signal; a helper stuck
    after the fork would then ignore the SIGTERM its parent sends and hang the parent's wait.
    """
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


async def run_agent(config: AgentConfig, config_path: Path | None = None,
                    assignments: tuple[str, ...] = ()) -> AgentExit:
    """The agent's whole life in one nursery; returns how it ended."""
    notifier = SystemdNotifier()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        components = await build_components(config, notifier=notifier)
        control = Control(components)
        async with trio.open_nursery() as nursery:
            await start_phases(nursery, components, control)
            nursery.start_soon(partial(follow_signals, signals, components, control,
                                       config_path, assignments))
            stop = await control.wait_stop_requested()
            await trio.sleep(stop.delay)
            log.info("%s: %s", stop.reason, "left the cluster, stopping" if stop.left else
                     "leaving the cluster" if stop.leave else
                     "stopping without leaving (peers keep our entries while this host "
                     "forwards; `vxmesh leave` withdraws them)")
            notifier.stopping()
            await shutdown(components, leave=stop.leave)
            nursery.cancel_scope.cancel()
            return AgentExit(0, f"{stop.reason}: "
                                f"{'left' if stop.leave or stop.left else 'stopped'}")
    return AgentExit(1, "the agent's tasks ended by themselves")


async def follow_signals(signals: AsyncIterator[int], c: Components, control: Control,
                         config_path: Path | None, assignments: tuple[str, ...]) -> None:
    """SIGHUP reloads; SIGTERM and SIGINT ask the process to stop."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            reload(c, config_path, assignments)
        else:
            control.request_stop(StopRequest(f"received {signal.Signals(signum).name}",
                                             leave=c.config.node.leave_on_stop))


async def start_phases(nursery: trio.Nursery, c: Components, control: Control) -> None:
    """Every phase in dependency order; READY=1 once the first kernel sync is done."""
    await nursery.start(run_metrics, c)
    await nursery.start(run_store, c)
    await nursery.start(run_gossip, c)
    await nursery.start(run_pipeline, c)
    await nursery.start(run_dataplane, c)
    await nursery.start(run_wireguard, c)
    await nursery.start(run_pools, c)
    await nursery.start(run_names, c)
    await nursery.start(run_policies, c)
    await nursery.start(run_api, c, control)
    await nursery.start(run_docker, c, control)
    await nursery.start(run_watchdog, c, control)
    control.mark_ready()
    return_free_heap()
    c.notifier.ready(f"{len(c.gossip.members())} members, "
                     f"{len(c.endpoints.records())} local endpoints")
    log.info("agent %s ready (VTEP %s, gossip port %d)", c.node, c.facts.address,
             c.config.gossip.port)


async def run_docker(c: Components, control: Control, *,
                     task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
    """The Docker phase (agent.runtime.docker_plugin); its modules (the plugin, the driver,
    the engine client, the mirror: about 0.7 MiB resident) are imported only with `[docker]
    enabled`, so an agent without Docker never loads them."""
    if not c.config.docker.enabled:
        task_status.started(None)
        return
    from agent.runtime.docker_plugin import run_docker as run_docker_plugin

    await run_docker_plugin(c, control, task_status=task_status)


def return_free_heap() -> None:
    """Give the C heap's free pages back to the kernel (glibc's malloc_trim), once start-up
    is done: what start-up allocated and freed (the config, the first listings and kernel
    sync) otherwise stays resident, about 2 MB of an idle agent's RSS. No-op without glibc."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


async def shutdown(c: Components, *, leave: bool) -> None:
    """Stop; with `leave`, a graceful leave first (peers drop our entries at once), shielded
    and time-boxed."""
    with trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
        scope.shield = True
        if leave:
            await c.gossip.leave()
    c.config.api.socket.unlink(missing_ok=True)


def reload(c: Components, config_path: Path | None, assignments: tuple[str, ...]) -> None:
    """SIGHUP: re-read the log level from the config and the keyring from its file."""
    try:
        fresh = load_config(config_path, assignments=assignments)
    except AgentConfigError as exc:
        log.error("SIGHUP: config not reloaded: %s", exc)
        return
    logging.getLogger().setLevel(fresh.node.log_level.upper())
    try:
        c.gossip.reload_keyring()
    except (GossipKeyError, StateReadError) as exc:  # missing or damaged: the old keys stay
        log.error("SIGHUP: keyring not reloaded: %s", exc)
    log.info("SIGHUP: log level %s, keyring re-read", fresh.node.log_level)
