"""Built-in `lstm` cell: torch.nn.LSTM's math and parameter layout for one layer, one direction."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from s2s.cells.base import State, StepCell, packed_run, zeros_state


class LSTMCell(StepCell):
    """LSTM layer. Parameters are named and shaped like torch.nn.LSTMCell
    (weight_ih [4H, I], weight_hh [4H, H], bias_ih [4H], bias_hh [4H]; gates i, f, g, o)."""

    def __init__(self, input_size: int, hidden_size: int, *, forget_bias: float = 0.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.forget_bias = forget_bias
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)
        if self.forget_bias:
            with torch.no_grad():
                self.bias_ih[self.hidden_size:2 * self.hidden_size].fill_(self.forget_bias)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return zeros_state(2, batch_size, self.hidden_size, device, dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = torch.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h, (h, c)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        out, (h, c) = packed_run(torch.lstm, x, lengths, state, weights)
        return out, (h, c)
