"""`lnlstm`: a layer-normalised LSTM cell for s2s (Ba, Kiros and Hinton 2016, "Layer
Normalization", section 3.1 / appendix), installed as a third-party plugin through the
`s2s.cells` entry-point group.

    gates = LN(W_ih x; g_ih) + LN(W_hh h; g_hh) + b        # [B, 4H], gates i, f, g, o
    c'    = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h'    = sigmoid(o) * tanh(LN(c'; g_c, b_c))

Each LN normalises over the whole feature vector (4H for the gate pre-activations, H for the
cell state). The input and recurrent normalisations have a gain but no bias of their own: the
single bias b plays that part. State: (h, c), like the built-in `lstm`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.cells import State, StepCell

__all__ = ["LayerNormLSTMCell"]
__version__ = "0.1.0"


class LayerNormLSTMCell(StepCell):
    """One layer-normalised LSTM layer, one direction.

    Options (`model.cell_options`): `eps`, added to the variance in every layer norm;
    `forget_bias`, the initial bias of the forget gate (1.0 is the usual choice for LSTMs).
    """

    def __init__(self, input_size: int, hidden_size: int, *, eps: float = 1e-5,
                 forget_bias: float = 1.0) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.input_size, self.hidden_size = input_size, hidden_size
        self.eps, self.forget_bias = eps, forget_bias
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.bias = nn.Parameter(torch.empty(4 * hidden_size))
        self.ln_ih = nn.LayerNorm(4 * hidden_size, eps=eps, bias=False)
        self.ln_hh = nn.LayerNorm(4 * hidden_size, eps=eps, bias=False)
        self.ln_cell = nn.LayerNorm(hidden_size, eps=eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        nn.init.uniform_(self.weight_ih, -bound, bound)
        nn.init.uniform_(self.weight_hh, -bound, bound)
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size:2 * self.hidden_size].fill_(self.forget_bias)
        for norm in (self.ln_ih, self.ln_hh, self.ln_cell):
            norm.reset_parameters()

    def initial_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return tuple(torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
                     for _ in range(2))

    def _input_part(self, x: Tensor) -> Tensor:
        """LN(W_ih x) + b for x [..., I] -> [..., 4H]; no dependence on the state."""
        return self.ln_ih(F.linear(x, self.weight_ih)) + self.bias

    def _recur(self, xg: Tensor, state: State) -> tuple[Tensor, State]:
        h, c = state
        gates = xg + self.ln_hh(F.linear(h, self.weight_hh))
        i, f, g, o = gates.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(self.ln_cell(c))
        return h, (h, c)

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        return self._recur(self._input_part(x), state)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        """All input projections and their layer norm in one batched call, then the recurrence;
        each sequence's state is frozen after its last real step and padded outputs are zero."""
        batch, time = x.shape[0], x.shape[1]
        if state is None:
            state = self.initial_state(batch, x.device, x.dtype)
        xg = self._input_part(x)  # [B, T, 4H]
        alive = torch.arange(time, device=x.device) < lengths.to(x.device).unsqueeze(1)  # [B, T]
        outputs = []
        for t in range(time):
            h, new_state = self._recur(xg[:, t], state)
            keep = alive[:, t].unsqueeze(1)
            state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
            outputs.append(h * keep.to(h.dtype))
        return torch.stack(outputs, dim=1), state
