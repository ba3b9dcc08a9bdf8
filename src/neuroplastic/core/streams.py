"""Work the forward pass does not wait for, on a CUDA side stream.

The statistics pass reduces each layer's activations inside that layer's hook, and nothing in
the forward depends on the reduction: on a GPU the reduction can run on a second stream while
the next layers compute. :class:`SideStream` does that, and on any other device (or when
disabled) runs the work in place, so the code path is the same everywhere.

Two things keep it correct and bounded:

* every tensor made on the forward's stream and read by side work is marked as used there
  (``record_stream``), so the caching allocator does not hand its memory to the forward before
  the side work has read it;
* at most ``lag`` batches of side work are in flight: the host waits for the batch before
  that, so a host that runs ahead cannot pile up activations kept alive for the side stream.

The arithmetic is the same kernels on the same inputs in the same order within the side
stream, so the results are bit-identical with and without it (a test checks it wherever CUDA
is present; benchmarks/bench.py ``--sections overlap`` measures it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor


class SideStream:
    """Run reductions beside the forward on ``device`` (CUDA only; in place elsewhere)."""

    def __init__(self, device: torch.device, enabled: bool = True, lag: int = 1) -> None:
        self.device = torch.device(device)
        use = enabled and self.device.type == "cuda" and torch.cuda.is_available()
        self.stream = torch.cuda.Stream(self.device) if use else None
        self.lag = lag
        self._batches: deque[torch.cuda.Event] = deque()

    @property
    def active(self) -> bool:
        return self.stream is not None

    def run(self, work: Callable[[], None], reads: tuple[Tensor, ...] = ()) -> None:
        """``work()`` after everything queued so far on the forward's stream; ``reads``: the
        tensors made on the forward's stream that it reads."""
        if self.stream is None:
            work()
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            work()
        for tensor in reads:
            tensor.record_stream(self.stream)

    def end_batch(self) -> None:
        """Mark the end of a batch's side work; wait on the host for the batch ``lag`` before."""
        if self.stream is None:
            return
        done = torch.cuda.Event()
        done.record(self.stream)
        self._batches.append(done)
        while len(self._batches) > self.lag:
            self._batches.popleft().synchronize()

    def join(self) -> None:
        """Make the forward's stream wait for all side work (before its results are read)."""
        if self.stream is None:
            return
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self._batches.clear()
