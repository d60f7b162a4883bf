"""Cast a full-batch input to the autocast dtype once, not at every step.

Under ``bf16-mixed`` autocast casts the float32 input of a network's first ``nn.Linear`` to
bfloat16 at every call. With full-batch training the input is the same tensor at every
step (25,000 × 1,960 floats per env for 10-class Colored MNIST), and casting it again is a
measurable share of the step (without it a bf16 ERM step at k = 10 took 19% less time on
this project's CPU). :class:`AutocastInputCache` keeps the cast copy
while the input is unchanged. The copy is what autocast would make (``Tensor.to``, round
to nearest even), so training is bit-identical with and without the cache
(``tests/models/test_input_cast.py``); ``bench/bench_input_cast.py`` measures the gain.
The price is memory: one bf16 copy per recurring input, half its float32 size (98 MB per
env for 10-class Colored MNIST). Minibatches, new tensors at every step, are cast anew.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

# A key identifies the input's memory and contents: storage address, offset, shape, strides,
# dtype and the version counter that every in-place write bumps; the cast dtype closes it.
_Key = tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, int, torch.dtype]


class AutocastInputCache:
    """Returns a network input cast to the active autocast dtype, reusing earlier casts.

    Use it only where the input's first consumer is an op autocast runs in that dtype
    (``nn.Linear``): then the result is unchanged. Inputs are returned as they are when
    autocast is off, when they need gradients, or when they are not floating point.

    Args:
        max_entries: how many distinct inputs to keep (one per training env is enough);
            the least recently used copy is dropped beyond that.
    """

    def __init__(self, max_entries: int = 8) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries}: use at least 1.")
        self.max_entries = max_entries
        # key -> (source, cast copy). Holding the source keeps its storage alive, so its
        # address cannot be reused by another tensor while the entry exists.
        self._entries: OrderedDict[_Key, tuple[Tensor, Tensor]] = OrderedDict()
        self.hits = 0  # calls answered with an earlier cast
        self.misses = 0  # calls that cast

    def __len__(self) -> int:
        return len(self._entries)

    def __call__(self, x: Tensor) -> Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type) or x.requires_grad or not x.is_floating_point():
            return x
        dtype = torch.get_autocast_dtype(device_type)
        if x.dtype == dtype or x.dtype == torch.float64:
            return x  # nothing to cast, or autocast leaves float64 alone
        key = (
            x.untyped_storage().data_ptr(),
            x.storage_offset(),
            tuple(x.shape),
            x.stride(),
            x.dtype,
            x._version,
            dtype,
        )
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]
        self.misses += 1
        cast = x.to(dtype)
        self._entries[key] = (x, cast)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return cast
