"""Small device tensors read on the host without stalling the device: the decode loop's finished-rows mask.

On CUDA a read is a non-blocking copy into pinned host memory followed by an event; the host keeps launching
frames and looks at the values once `event.query()` says the copy has landed (or waits for it when it is too far
ahead). Uploads (row indices after the batch shrinks) go the other way through pinned memory, also without a
sync. On a CPU there is nothing to overlap: a read is a copy, ready at once; tests swap in a reader whose reads
land only after a few polls, so the lagging path runs on CPU too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class HostRead:
    """One read in flight: `values` (host) hold the device tensor's contents once `ready()`."""

    values: torch.Tensor
    event: Any = None  # a CUDA event recorded after the copy; None: the copy is done

    def ready(self) -> bool:
        return self.event is None or bool(self.event.query())

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class HostReader:
    """Reads device tensors to the host and uploads small index lists, never synchronising on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def read(self, tensor: torch.Tensor) -> HostRead:
        if not self.cuda:
            return HostRead(tensor.cpu())
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return HostRead(host, event)

    def upload(self, values: Sequence[int]) -> torch.Tensor:
        """`values` as an int64 tensor on the device."""
        host = torch.tensor(list(values), dtype=torch.long)
        if not self.cuda:
            return host.to(self.device)
        # A pageable copy would synchronise the stream; a pinned one is queued like a kernel.
        return host.pin_memory().to(self.device, non_blocking=True)
