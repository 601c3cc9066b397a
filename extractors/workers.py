"""Who does which part of an extraction: one process, one of N independent jobs, or a torch.distributed rank.

Under ``torchrun`` (WORLD_SIZE > 1 in the environment) the process group is started here (gloo on CPU, nccl on
GPU) and only used for barriers: the data never travels between ranks, each rank writes its own shards.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

# Ranks wait for the slowest one before the merge; the default 30 min collective timeout is too short for that.
BARRIER_TIMEOUT = datetime.timedelta(seconds=float(os.environ.get("PROBEKIT_BARRIER_TIMEOUT_S", 7 * 24 * 3600)))


@dataclass
class Workers:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # True when a torch.distributed group is live (torchrun)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def parse_part(text: str | None) -> tuple[int, int]:
    """"I/N" -> (I, N), 0-based I; None -> (0, 1)."""
    if not text:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--part {text}: need 0 <= I < N")
    return i, n


def from_environment(device: str = "auto", part: str | None = None) -> Workers:
    """Workers of this process: torchrun's rank when launched by torchrun, else ``--part I/N`` (or 0/1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if part:
            raise ValueError("--part is for independent jobs; under torchrun the ranks split the work themselves")
        import torch
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if gpu else "gloo", timeout=BARRIER_TIMEOUT)
        if gpu:
            torch.cuda.set_device(local)
        return Workers(rank=rank, world_size=world, local_rank=local, distributed=True)
    rank, world = parse_part(part)
    return Workers(rank=rank, world_size=world)


def device_for(workers: Workers, device: str) -> str:
    """Under torchrun each rank takes its own GPU (LOCAL_RANK) unless a device index was given."""
    if workers.distributed and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{workers.local_rank}"
    return device
