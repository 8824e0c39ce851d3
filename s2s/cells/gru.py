"""Built-in `gru` cell: torch.nn.GRU's math and parameter layout for one layer, one direction."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from s2s.cells.base import State, StepCell, packed_run, zeros_state
from s2s.ops import gemm


class GRUCell(StepCell):
    """GRU layer. Parameters are named and shaped like torch.nn.GRUCell
    (weight_ih [3H, I], weight_hh [3H, H], bias_ih [3H], bias_hh [3H]; gates r, z, n)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        bound = 1.0 / math.sqrt(hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return zeros_state(1, batch_size, self.hidden_size, device, dtype)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if gemm.int8_active():  # int8 inference: the products through s2s.ops.gemm (torch.gru_cell
            return self._linear_step(x, state)  # would compute them in float32)
        h = torch.gru_cell(x, state[0], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return h, (h,)

    def _linear_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """torch.gru_cell's math with its two products through `gemm.linear`."""
        h = state[0]
        r_x, z_x, n_x = gemm.linear(x, self.weight_ih, self.bias_ih).chunk(3, dim=1)  # [B, H]
        r_h, z_h, n_h = gemm.linear(h, self.weight_hh, self.bias_hh).chunk(3, dim=1)
        r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        return h, (h,)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        out, (h,) = packed_run(torch.gru, x, lengths, state, weights)
        return out, (h,)
