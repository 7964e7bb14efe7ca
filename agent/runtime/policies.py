"""Network policy on this host: the stored policies and the neighbor table, kept in nftables.

Owns: `PolicyEnforcer`, the thin shell around `underlay.policy_table`: it follows the policies
through the store's etcd watch (`Store.run_policy_watch`: a change anywhere is enforced as soon
as etcd streams it, and an idle agent makes no etcd round trip for policies), reads the table's
endpoints and their labels whenever the table changes (`table_changed`, never blocks), computes
the plan and applies the one transaction from the kernel's last plan to it
(`underlay.nft.apply_script`). The per-policy drop counters are read after every apply and,
while our table is loaded, every `COUNTER_INTERVAL` (`statistics().drops`, a metric); with no
table loaded nothing wakes for them.

Rules:
- No policy, no table: a host without policies has nothing of ours in nftables. The first
  policy turns bridge netfilter on (`underlay.nft.call_on_bridges`).
- `[dataplane] bridge_netfilter = "policy"`: once the first listing shows this host enforces no
  policy, bridge netfilter goes off (`underlay.nft.skip_bridges`: bridged frames skip the
  ip/ip6tables hooks) and a marker file in the state directory says the agent did it; the
  first policy turns it on before its table is applied, the last one's removal off again.
  With "keep" a marker left by such a run turns it on at start (and goes). A restart changes
  nothing before the first listing: traffic never runs unfiltered past a policy.
- etcd away: the last listed policies stay enforced (nothing is flushed); at start nothing
  touches the kernel before the watch's first list succeeds, and start-up never waits for etcd.
- A failed transaction changes nothing in the kernel (nft is all or nothing); it is logged and
  counted, and the next pass replaces the whole table.

May import: agent.store, overlay, underlay, trio, the standard library.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from agent.state_files import StateWriteError, write_atomically
from agent.store.schema import Policy
from agent.store.service import Store
from overlay.table import Entry
from underlay.errors import KernelError
from underlay.nft import apply_script, call_on_bridges, list_counters, skip_bridges
from underlay.policy_table import (
    FAMILY,
    TABLE,
    PolicyEndpoint,
    PolicyPlan,
    PolicyRule,
    plan_policy,
    policy_transaction,
    removal_transaction,
)

log = logging.getLogger("vxmesh.policy")

COUNTER_INTERVAL = 1.0
RETRY_INTERVAL = 1.0
BRIDGES_SKIPPED = "bridge-netfilter-off"
"""The marker file (in the state directory) of bridge netfilter turned off by the agent."""


@dataclass(frozen=True)
class PolicyStatistics:
    """What enforcement did: passes applied, failures, policies in force, drops by policy."""

    applied: int = 0
    failed: int = 0
    policies: int = 0
    drops: dict[str, int] = field(default_factory=dict)


def policy_rule(policy: Policy) -> PolicyRule:
    """A stored policy as the pure core's rule."""
    labels = tuple(p for p in policy.allow if isinstance(p, tuple))
    cidrs = tuple(str(p) for p in policy.allow if isinstance(p, ipaddress.IPv4Network
                                                            | ipaddress.IPv6Network))
    return PolicyRule(policy.name, policy.network, policy.direction == "egress", policy.select,
                      labels, cidrs, policy.ports, policy.log)


def policy_endpoints(entries: list[Entry], node: str) -> list[PolicyEndpoint]:
    """The table's live, labelled endpoints."""
    return [PolicyEndpoint(e.network, e.ip, e.attributes.labels, e.owner == node)
            for e in entries if not e.deleted and e.attributes.labels]


class PolicyEnforcer:
    """Keeps `inet vxmesh_policy` equal to the policies and the table's endpoints."""

    def __init__(self, store: Store, node: str, entries: Callable[[], list[Entry]], *,
                 state_dir: Path, skip_bridges_without_policy: bool = False) -> None:
        self._store = store
        self._node = node
        self._entries = entries
        self._skipped_marker = state_dir / BRIDGES_SKIPPED
        self._skip_without_policy = skip_bridges_without_policy
        self._dirty = trio.Event()
        self._policies: list[Policy] = []
        self._plan: PolicyPlan | None = None
        self._planned = trio.Event()  # set while `_plan` is not None
        self._installed = False  # our table is in the kernel (or may be: unknown plan)
        self._bridges_on = False
        self._bridges_skipped = False  # turned off by this run (bridge_netfilter = "policy")
        self._applied = 0
        self._failed = 0
        self._drops: dict[str, int] = {}

    def table_changed(self) -> None:
        """The neighbor table changed: only the endpoints need re-reading."""
        self._dirty.set()

    def statistics(self) -> PolicyStatistics:
        return PolicyStatistics(self._applied, self._failed, len(self._policies),
                                dict(self._drops))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Enforce on every change once the policies are listed; started at once (etcd away
        at start: the table a previous run left stays as it is until the first list)."""
        self._installed = True  # a previous run may have left the table: replace or remove it
        if not self._skip_without_policy and self._skipped_marker.exists():
            try:  # "keep" again: on, as it was before a "policy" run turned it off
                await self._call_on_bridges()
            except (KernelError, OSError) as exc:
                log.error("bridge netfilter not turned back on: %s", exc)
        async with trio.open_nursery() as nursery:
            view = await nursery.start(self._store.run_policy_watch)
            nursery.start_soon(self._follow_policies)
            nursery.start_soon(self._follow_counters)
            task_status.started()
            while True:
                await self._dirty.wait()
                self._dirty = trio.Event()
                if view.listed:
                    await self._enforce()

    async def _follow_policies(self) -> None:
        """Each version of the watched policies (the first listing too) is enforced."""
        seen = 0
        while True:
            seen = await self._store.wait_policies_changed(seen)
            self._policies = sorted(self._store.policy_view.snapshot().values(),
                                    key=lambda p: p.name)
            self._dirty.set()

    async def _follow_counters(self) -> None:
        while True:
            await self._planned.wait()  # no table of ours: no counters to read
            await trio.sleep(COUNTER_INTERVAL)
            await self._read_counters()

    def _set_plan(self, plan: PolicyPlan | None) -> None:
        """The plan the kernel holds (None: no table, or its state unknown)."""
        self._plan = plan
        if plan is None:
            if self._planned.is_set():
                self._planned = trio.Event()
        else:
            self._planned.set()

    async def _enforce(self) -> None:
        try:
            if not self._policies:
                if self._installed:
                    await trio.to_thread.run_sync(apply_script, None, removal_transaction())
                    self._installed = False
                    self._set_plan(None)
                    self._applied += 1
                if self._skip_without_policy and not self._bridges_skipped:
                    await trio.to_thread.run_sync(self._skip_bridges)
                    self._bridges_on = False
                    self._bridges_skipped = True
                return
            plan = plan_policy([policy_rule(p) for p in self._policies],
                               policy_endpoints(self._entries(), self._node))
            script = policy_transaction(self._plan, plan)
            if script is None:
                return
            if not self._bridges_on:
                await self._call_on_bridges()
            await trio.to_thread.run_sync(apply_script, None, script)
            self._set_plan(plan)
            self._installed = True
            self._applied += 1
        except (KernelError, StateWriteError, OSError,
                subprocess.SubprocessError) as exc:  # nft away or stuck, state dir full
            self._failed += 1
            self._set_plan(None)  # the kernel's state is unknown: the next pass replaces it whole
            log.error("network policy not applied: %s", exc)
            await trio.sleep(RETRY_INTERVAL)
            self._dirty.set()
            return
        await self._read_counters()

    def _skip_bridges(self) -> None:
        """The marker first (a crash in between leaves it with bridge netfilter still on,
        which "keep" turns on: harmless), then bridge netfilter off. Runs on a thread."""
        write_atomically(self._skipped_marker, "bridge netfilter off: no policy\n")
        skip_bridges()

    async def _call_on_bridges(self) -> None:
        """Bridge netfilter on, then the marker of its having been turned off gone."""
        await trio.to_thread.run_sync(call_on_bridges)
        self._skipped_marker.unlink(missing_ok=True)
        self._bridges_on = True
        self._bridges_skipped = False

    async def _read_counters(self) -> None:
        plan = self._plan  # the enforcing task may replace it while nft runs
        if plan is None:
            self._drops = {}
            return
        try:
            packets = await trio.to_thread.run_sync(list_counters, None, FAMILY, TABLE)
        except (KernelError, OSError, subprocess.SubprocessError) as exc:
            log.warning("policy counters not read: %s", exc)
            return
        self._drops = {name: packets.get(counter, 0) for name, counter in plan.counters.items()}
