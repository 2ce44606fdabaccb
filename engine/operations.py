"""What operators see and switch: aggregate numbers, pause/resume, and the log of their own actions.

Operators see numbers, never people: nothing here returns an image, a name, a caption, a platform id or a
pseudonym (operators in the log appear by their support reference).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.db import Tables
from engine.vault import Vault

PAUSED = "paused"
JOB_KINDS = ("train", "generate")


@dataclass(frozen=True)
class Overview:
    consented_users: int
    models: int
    queued: dict[str, int]
    running: dict[str, int]
    failed_24h: int
    median_seconds: dict[str, float | None]
    deliveries_pending: int
    deadlines_overdue: int
    blob_bytes: int | None  # None: not measured (object storage)
    gpu_bytes: int | None  # None: no GPU in use in this process
    paused: bool


@dataclass(frozen=True)
class LogEntry:
    at: float
    action: str
    operator: str  # the operator's support reference
    detail: dict[str, Any] = field(default_factory=dict)


def gpu_memory_in_use() -> int | None:
    """Bytes of GPU memory this process holds, if it has loaded torch with CUDA (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(sum(torch.cuda.memory_reserved(i) for i in range(torch.cuda.device_count())))


class Operations:
    def __init__(self, tables: Tables, vault: Vault, support_ref: Callable[[str], str]):
        self.tables = tables
        self.vault = vault
        self.support_ref = support_ref

    async def paused(self) -> bool:
        return await self.tables.flags.get(PAUSED) == "1"

    async def set_paused(self, operator: str, paused: bool) -> None:
        await self.tables.flags.set(PAUSED, "1" if paused else "0")
        await self.record(operator, "ops_pause" if paused else "ops_resume")

    async def record(self, operator: str, action: str, **detail: Any) -> None:
        """An audit row for an operator action: who (pseudonym), what, when."""
        await self.tables.audit.add(action, actor=operator, **detail)

    async def log(self, limit: int = 20) -> list[LogEntry]:
        return [
            LogEntry(row["at"], row["action"], self.support_ref(row["actor"]), json.loads(row["detail"]))
            for row in await self.tables.audit.operator_actions(limit)
        ]

    async def overview(self) -> Overview:
        stats, now = self.tables.stats, self.tables.db.clock.now()
        jobs = await stats.jobs_by_state()
        medians = {}
        for kind in JOB_KINDS:
            durations = await stats.durations(kind)
            medians[kind] = statistics.median(durations) if durations else None
        return Overview(
            consented_users=await stats.consented_users(),
            models=await stats.models(),
            queued={kind: jobs.get((kind, "queued"), 0) for kind in JOB_KINDS},
            running={kind: jobs.get((kind, "running"), 0) for kind in JOB_KINDS},
            failed_24h=await stats.failed_since(now - 86400),
            median_seconds=medians,
            deliveries_pending=await stats.deliveries_pending(),
            deadlines_overdue=await stats.deadlines_overdue(now),
            blob_bytes=await asyncio.to_thread(self.vault.space_used),
            gpu_bytes=gpu_memory_in_use(),
            paused=await self.paused(),
        )
