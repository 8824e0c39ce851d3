"""Built-in layer-normalised cells, `ln-lstm` and `ln-gru` (Ba, Kiros and Hinton 2016, "Layer
Normalization", section 3.1 and appendix), registered through `s2s.cells` like the others.

    ln-lstm: gates = LN(W_ih x; g_ih) + LN(W_hh h; g_hh) + b          # [B, 4H]: i, f, g, o
             c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(LN(c'; g_c, b_c))
    ln-gru:  x_r, x_z, x_n = LN(W_ih x; g_ih) + b_ih;  h_r, h_z, h_n = LN(W_hh h; g_hh) + b_hh
             r = sigmoid(x_r + h_r);  z = sigmoid(x_z + h_z);  n = tanh(x_n + r * h_n)
             h' = (1 - z) * n + z * h                                   # torch.nn.GRU's math

Each LN normalises one whole projection (4H or 3H features; H for the LSTM's cell state). The
input-side work (projection and its LN) for a whole sequence is one batched call; the recurrence
then runs one time step at a time (s2s.cells.base.run_steps).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.cells.base import State, StepCell, run_steps, zeros_state


class _LayerNormCell(StepCell):
    """Shared parts: W_ih, W_hh and the two gain-only layer norms over `gates` x H features."""

    gates = 0
    n_state = 0

    def __init__(self, input_size: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.input_size, self.hidden_size, self.eps = input_size, hidden_size, eps
        width = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(width, input_size))
        self.weight_hh = nn.Parameter(torch.empty(width, hidden_size))
        self.ln_ih = nn.LayerNorm(width, eps=eps, bias=False)
        self.ln_hh = nn.LayerNorm(width, eps=eps, bias=False)

    def _uniform(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        for norm in self.modules():
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return zeros_state(self.n_state, batch_size, self.hidden_size, device, dtype)

    def _input_part(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _recur(self, xg: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._recur(self._input_part(x), state)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        return run_steps(self, self._input_part(x), lengths, state, step=self._recur)


class LayerNormLSTMCell(_LayerNormCell):
    """Layer-normalised LSTM, one layer, one direction; state (h, c).

    Options (`model.cell_options`): `eps` (added to every variance), `forget_bias` (the forget
    gate's initial bias; 1.0 is the usual choice)."""

    gates, n_state = 4, 2

    def __init__(self, input_size: int, hidden_size: int, *, eps: float = 1e-5,
                 forget_bias: float = 1.0) -> None:
        super().__init__(input_size, hidden_size, eps)
        self.forget_bias = forget_bias
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.ln_cell = nn.LayerNorm(hidden_size, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._uniform()
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size].fill_(self.forget_bias)

    def _input_part(self, x: Tensor) -> Tensor:
        return self.ln_ih(F.linear(x, self.weight_ih)) + self.bias  # [..., 4H]

    def _recur(self, xg: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        i, f, g, o = (xg + self.ln_hh(F.linear(h, self.weight_hh))).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.ln_cell(c))
        return h, (h, c)


class LayerNormGRUCell(_LayerNormCell):
    """Layer-normalised GRU, one layer, one direction; state (h,).

    Options (`model.cell_options`): `eps` (added to every variance)."""

    gates, n_state = 3, 1

    def __init__(self, input_size: int, hidden_size: int, *, eps: float = 1e-5) -> None:
        super().__init__(input_size, hidden_size, eps)
        self.bias_ih = nn.Parameter(torch.zeros(3 * hidden_size))
        self.bias_hh = nn.Parameter(torch.zeros(3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self._uniform()
        with torch.no_grad():
            self.bias_ih.zero_()
            self.bias_hh.zero_()

    def _input_part(self, x: Tensor) -> Tensor:
        return self.ln_ih(F.linear(x, self.weight_ih)) + self.bias_ih  # [..., 3H]

    def _recur(self, xg: Tensor, state: State) -> tuple[Tensor, State]:
        h = state[0]
        x_r, x_z, x_n = xg.chunk(3, dim=-1)
        h_r, h_z, h_n = (self.ln_hh(F.linear(h, self.weight_hh)) + self.bias_hh).chunk(3, dim=-1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = torch.lerp(n, h, z)  # (1 - z) * n + z * h
        return h, (h,)
