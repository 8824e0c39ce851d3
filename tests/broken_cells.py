"""Step cells that break the StepCell contract, one mistake each, and the correct cell they
are made from: what s2s.testing.check_cell must catch (tests/test_testing.py; also installed as
a fake plugin there, so importable by name)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s.cells import StepCell


class Tanh(StepCell):
    """A correct cell: h' = tanh(W x + U h + b). The broken ones below change one thing."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.w = nn.Linear(input_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),)

    def step(self, x: Tensor, state):
        h = torch.tanh(self.w(x) + self.u(state[0]))
        return h, (h,)

    def loop(self, x: Tensor, lengths: Tensor, state, *, freeze: bool, mask: bool, step=None):
        """forward written by hand, with switches for the classic mistakes."""
        state = state or self.initial_state(x.shape[0], x.device, x.dtype)
        alive = torch.arange(x.shape[1]) < lengths.unsqueeze(1)
        outputs = []
        for t in range(x.shape[1]):
            h, new = (step or self.step)(x[:, t], state)
            keep = alive[:, t].unsqueeze(1)
            state = tuple(torch.where(keep, n, o) for n, o in zip(new, state)) if freeze else new
            outputs.append(h * keep if mask else h)
        return torch.stack(outputs, 1), state


class NoZeroPadding(Tanh):
    def forward(self, x, lengths, state=None):
        return self.loop(x, lengths, state, freeze=True, mask=False)


class FinalAtPaddedEnd(Tanh):
    def forward(self, x, lengths, state=None):
        return self.loop(x, lengths, state, freeze=False, mask=True)


class FastPathForgetsBias(Tanh):
    """A 'fast' forward whose math differs from step: it leaves out W's bias."""

    def forward(self, x, lengths, state=None):
        def step(x, state):
            h = torch.tanh(nn.functional.linear(x, self.w.weight) + self.u(state[0]))
            return h, (h,)
        return self.loop(x, lengths, state, freeze=True, mask=True, step=step)


class StateNotBH(Tanh):
    def initial_state(self, batch_size, device, dtype):  # [B, 1, H] instead of [B, H]
        return (torch.zeros(batch_size, 1, self.hidden_size, device=device, dtype=dtype),)


class StateNotTuple(Tanh):
    def initial_state(self, batch_size, device, dtype):
        return torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)


class UnusedParameter(Tanh):
    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.gate = nn.Parameter(torch.ones(hidden_size))  # forgotten in step


class RandomNonPersistentBuffer(Tanh):
    """Random numbers drawn at construction that state_dict() does not save."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.register_buffer("noise", torch.randn(hidden_size), persistent=False)

    def step(self, x, state):
        h = torch.tanh(self.w(x) + self.u(state[0]) + self.noise)
        return h, (h,)


class MixesTheBatch(Tanh):
    """Normalises h over the batch: results depend on the other sequences."""

    def step(self, x, state):
        h, _ = super().step(x, state)
        h = h - h.mean(0, keepdim=True)
        return h, (h,)


class TakesKwargs(Tanh):
    def __init__(self, input_size: int, hidden_size: int, **options) -> None:
        super().__init__(input_size, hidden_size)
