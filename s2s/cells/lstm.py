"""Built-in `lstm` cell: torch.nn.LSTM's math and parameter layout for one layer, one direction."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from s2s.cells.base import State, StepCell, packed_run, zeros_state
from s2s.ops import deferred, gemm


def gates_forward(gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pre-activations [B, 4H] and c_prev [B, H] -> (activations [B, 4H] (sigmoid i, f, o;
    tanh g), c, tanh(c), h), each a new tensor."""
    hidden = gates.shape[1] // 4
    act = torch.sigmoid(gates)
    act[:, 2 * hidden:3 * hidden] = torch.tanh(gates[:, 2 * hidden:3 * hidden])
    i, f, g, o = act.chunk(4, dim=1)
    c = torch.addcmul(f * c_prev, i, g)
    tanh_c = torch.tanh(c)
    return act, c, tanh_c, o * tanh_c


def gates_backward(act: Tensor, c_prev: Tensor, tanh_c: Tensor, dh: Tensor, dc: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Backward of c = f*c_prev + i*g, h = o*tanh(c) through the activations.
    Returns (d pre-activations [B, 4H], d c_prev [B, H])."""
    i, f, g, o = act.chunk(4, dim=1)
    dc = dc + dh * o * (1 - tanh_c * tanh_c)
    d_gates = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                         dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], dim=1)
    return d_gates, dc * f


class LSTMPointwise(torch.autograd.Function):
    """(pre-activations [B, 4H], c_prev [B, H]) -> (h, c)."""

    @staticmethod
    def forward(ctx, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        act, c, tanh_c, h = gates_forward(gates, c_prev)
        ctx.save_for_backward(act, c_prev, tanh_c)
        return h, c

    @staticmethod
    def backward(ctx, dh: Tensor, dc: Tensor) -> tuple[Tensor, Tensor]:
        act, c_prev, tanh_c = ctx.saved_tensors
        return gates_backward(act, c_prev, tanh_c, dh, dc)


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
        if not (deferred.active() or torch.is_autocast_enabled(x.device.type)
                or gemm.int8_active()):
            h, c = torch.lstm_cell(x, state, self.weight_ih, self.weight_hh, self.bias_ih,
                                   self.bias_hh)
            return h, (h, c)
        # training the decoder: weight gradients deferred to one GEMM over all steps; under
        # autocast: low-precision GEMMs (torch.lstm_cell is not on autocast's list); int8
        # inference: int8 products (s2s.ops.quantized)
        return self._gates_step(x, state)

    def _gates_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """One GEMM for both gate projections (deferred weight gradients in training; under
        autocast the parameters' casts are cached, not redone at every step), then the gate
        pointwise work as one autograd node with a hand-written backward."""
        h, c = state
        gates = deferred.linear_cat([x, h], [self.weight_ih, self.weight_hh],
                                    [self.bias_ih, self.bias_hh])  # [B, 4H]
        h, c = self._pointwise(gates, c.to(gates.dtype))
        return h, (h, c)

    def _pointwise(self, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        """(pre-activations [B, 4H], c_prev [B, H]) -> (h, c), one autograd node."""
        return LSTMPointwise.apply(gates, c_prev)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        out, (h, c) = packed_run(torch.lstm, x, lengths, state, weights)
        return out, (h, c)
