"""The cell contract (docs/plugins.md has it in full).

A cell is an `nn.Module` that is ONE recurrent layer in ONE direction. The core stacks layers,
adds dropout and builds two cells for a bidirectional layer; it never looks at which cell it holds.

Shapes: B batch, T time, I input size, H hidden size.
- `__init__(input_size, hidden_size, *, <keyword options>)`: no **kwargs.
- `initial_state(batch_size, device, dtype) -> State`: a tuple of [B, H] tensors; state[0] is h.
- `step(x [B, I], state) -> (h [B, H], state)`.
- `forward(x [B, T, I], lengths [B], state=None) -> (out [B, T, H], final_state)`: padded
  positions of `out` are zero; `final_state` is taken at each sequence's last real step.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from s2s.ops import gemm
from s2s.ops.masks import length_mask

State = tuple[Tensor, ...]


@runtime_checkable
class Cell(Protocol):
    input_size: int
    hidden_size: int

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State: ...

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]: ...

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]: ...


class StepCell(nn.Module):
    """Base class for cell authors who only write `initial_state` and `step`:
    `forward` runs `step` over time, freezing each sequence's state after its last real step."""

    input_size: int
    hidden_size: int

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        return run_steps(self, x, lengths, state)


def run_steps(cell, x: Tensor, lengths: Tensor, state: State | None = None, *,
              step=None, h_dropout=None) -> tuple[Tensor, State]:
    """`cell`'s recurrence over x [B, T, *] one time step at a time (`step`: the function to
    call per time step, default cell.step), freezing each sequence's state after its last real
    step; padded outputs are zero. `h_dropout`: applied to h (state[0]) before it is fed back
    (variational recurrent dropout: a locked Dropout, reset here)."""
    batch, time = x.shape[0], x.shape[1]
    step = step or cell.step
    if state is None:
        state = cell.initial_state(batch, x.device, x.dtype)
    if h_dropout is not None:
        h_dropout.reset()
    alive = length_mask(lengths, time, x.device)  # [B, T]
    outputs = []
    for t, x_t in enumerate(x.unbind(1)):  # unbind: one backward node for all steps
        fed = state if h_dropout is None else (h_dropout(state[0]), *state[1:])
        h, new_state = step(x_t, fed)
        keep = alive[:, t].unsqueeze(1)  # [B, 1]
        state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
        outputs.append(h * keep.to(h.dtype))
    return torch.stack(outputs, dim=1), state  # [B, T, H]


def zeros_state(n: int, batch_size: int, hidden_size: int, device: torch.device,
                dtype: torch.dtype) -> State:
    return tuple(torch.zeros(batch_size, hidden_size, device=device, dtype=dtype) for _ in range(n))


def packed_run(fn, x: Tensor, lengths: Tensor, hx, flat_weights: list[Tensor]):
    """Run a torch packed RNN kernel (torch.lstm / torch.gru) over padded `x` [B, T, I].

    Returns (out [B, T, H] zero at padding, final hidden tensors as returned by `fn`, each
    [1, B, H]) in the original batch order."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                               enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(h.index_select(0, order).unsqueeze(0) for h in hx)  # [1, B, H] each, sorted
    # CPU autocast where oneDNN has no bf16 (e.g. AVX2 only): oneDNN's RNN primitive cannot be
    # created there, so torch's own (emulated, slow) kernel runs instead. The switch is
    # process-wide for the call; s2s runs models from one thread at a time.
    no_onednn = x.device.type == "cpu" and torch.is_autocast_enabled("cpu") \
        and torch._C._get_mkldnn_enabled() and not gemm.onednn_bf16()
    if no_onednn:
        torch._C._set_mkldnn_enabled(False)
    try:
        result = fn(packed.data, packed.batch_sizes, hx if len(hx) > 1 else hx[0], flat_weights,
                    True, 1, 0.0, False, False)
    finally:
        if no_onednn:
            torch._C._set_mkldnn_enabled(True)
    out_data, finals = result[0], result[1:]
    out = nn.utils.rnn.PackedSequence(out_data, packed.batch_sizes, order, unorder)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    finals = tuple(h.squeeze(0).index_select(0, unorder) for h in finals)
    return padded, finals
