"""`fused-lstm`: torch.nn.LSTM's math and parameter layout, with hand-written backward passes
and compiled CPU kernels (lstm_kernels.cpp via kernels.py; docs/benchmarks.md says where it
stands).

- `step`: always `lstm`'s gate path (`LSTMCell._gates_step`): the gate projections through
  `deferred.linear_cat` (one GEMM with deferred weight gradients in training; autocast-cached
  weight casts), then one autograd node for all the gate pointwise work (sigmoid/tanh, cell and
  hidden update): one compiled pass each way (float32 and bfloat16), or `lstm`'s PyTorch version.
- `forward` (a whole sequence): one autograd Function. In float32 (`_CompiledSequence`) the
  loops run in C++ on a team of threads that split the hidden units: each step is one product
  over [x_t, h_{t-1}] per thread with the pointwise work as its epilogue, then one barrier; in
  backward each step is one product (d h_prev) with the previous step's pointwise backward as
  its epilogue, and d_x and both weight gradients are three large products at the end.
  Otherwise (e.g. bf16 autocast) the same recurrence runs as a Python loop (`_Sequence`): one
  GEMM for all input projections, one GEMM and one pointwise node per step.

Without the compiled kernels (no compiler; `S2S_FUSED_KERNELS=0`) the same math runs in PyTorch.
On a GPU, `forward` is `lstm`'s (torch.lstm over the packed batch: cuDNN's fused kernels) and
`step` the same gate path in PyTorch ops.
Gates are ordered i, f, g, o as in torch.nn.LSTM. Legend: B batch, T time, I input, H hidden.
"""
from __future__ import annotations

import torch
from torch import Tensor

from s2s.cells.base import State
from s2s.cells.fused import kernels
from s2s.cells.lstm import LSTMCell, gates_backward, gates_forward
from s2s.ops import gemm
from s2s.ops.masks import length_mask


class _CompiledPointwise(torch.autograd.Function):
    """LSTMPointwise with both directions as one compiled pass (float32 or bfloat16 CPU; the
    math in float32)."""

    @staticmethod
    def forward(ctx, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        act, c, tanh_c, h = kernels.ops().pointwise_forward(gates.contiguous(),
                                                            c_prev.contiguous())
        ctx.save_for_backward(act, c_prev, tanh_c)
        return h, c

    @staticmethod
    def backward(ctx, dh: Tensor, dc: Tensor) -> tuple[Tensor, Tensor]:
        act, c_prev, tanh_c = ctx.saved_tensors
        dh = dh.to(act.dtype).contiguous() if dh is not None else torch.zeros_like(c_prev)
        dc = dc.to(act.dtype).contiguous() if dc is not None else torch.zeros_like(c_prev)
        return kernels.ops().pointwise_backward(act, c_prev.contiguous(), tanh_c, dh, dc)


class _CompiledSequence(torch.autograd.Function):
    """_Sequence with the time loops in compiled code (float32 CPU); same inputs and outputs,
    plus `h0_zero` (h0 and c0 are zeros: the first step's recurrent product is skipped)."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor,
                w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0_zero: bool = False):
        w_ih, w_hh, mask = w_ih.contiguous(), w_hh.contiguous(), mask.contiguous()
        out, h, c, xh, acts, cs, tanh_cs = kernels.ops().sequence_forward(
            x.contiguous(), mask, h0.contiguous(), c0.contiguous(), w_ih, w_hh,
            (b_ih + b_hh).contiguous(), h0_zero, kernels.panels(), gemm.available())
        ctx.save_for_backward(mask, w_ih, w_hh, xh, acts, cs, tanh_cs)
        return out, h, c

    @staticmethod
    @torch.autocast("cpu", enabled=False)  # float32 kernels, also if backward runs in autocast
    def backward(ctx, d_out: Tensor, d_h: Tensor, d_c: Tensor):
        mask, w_ih, w_hh, xh, acts, cs, tanh_cs = ctx.saved_tensors
        time, batch, hidden = tanh_cs.shape
        zeros = acts.new_zeros(batch, hidden)
        d_out = d_out if d_out is not None else acts.new_zeros(1, 1, hidden).expand(
            batch, time, hidden)
        needs = ctx.needs_input_grad
        d_x, d_w_ih, d_w_hh, d_b, d_h0, d_c0 = kernels.ops().sequence_backward(
            d_out, mask, w_ih, w_hh, xh, acts, cs, tanh_cs, zeros if d_h is None else d_h,
            zeros if d_c is None else d_c, needs[0], needs[2] or needs[3], any(needs[4:6]),
            kernels.panels(), gemm.available())
        return (d_x if needs[0] else None, None, d_h0 if needs[2] else None,
                d_c0 if needs[3] else None, d_w_ih if needs[4] else None,
                d_w_hh if needs[5] else None, d_b if needs[6] else None,
                d_b.clone() if needs[7] else None, None)  # two tensors: no aliased gradients


class _Sequence(torch.autograd.Function):
    """The whole masked recurrence: see the module docstring."""

    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor,
                w_hh: Tensor, b_ih: Tensor, b_hh: Tensor):
        batch, time, _ = x.shape
        hidden = w_hh.shape[1]
        xw = torch.addmm(b_ih + b_hh, x.reshape(batch * time, x.shape[2]), w_ih.t())
        xw = xw.view(batch, time, 4 * hidden)  # [B, T, 4H]
        acts = x.new_empty(time, batch, 4 * hidden)
        hs = x.new_empty(time + 1, batch, hidden)  # h before each step (masked carry)
        cs = x.new_empty(time + 1, batch, hidden)
        tanh_cs = x.new_empty(time, batch, hidden)
        out = x.new_empty(batch, time, hidden)
        hs[0], cs[0] = h0, c0
        w_hh_t = w_hh.t()
        for t in range(time):
            h, c = hs[t], cs[t]
            act, c_new, tanh_c, h_new = gates_forward(torch.addmm(xw[:, t], h, w_hh_t), c)
            keep = mask[:, t].unsqueeze(1)  # [B, 1] 1.0 at real steps
            acts[t], tanh_cs[t] = act, tanh_c
            out[:, t] = h_new * keep
            hs[t + 1] = torch.lerp(h, h_new, keep)
            cs[t + 1] = torch.lerp(c, c_new, keep)
        ctx.save_for_backward(x, mask, w_ih, w_hh, acts, hs, cs, tanh_cs)
        return out, hs[time].clone(), cs[time].clone()

    @staticmethod
    def backward(ctx, d_out: Tensor, d_h: Tensor, d_c: Tensor):
        x, mask, w_ih, w_hh, acts, hs, cs, tanh_cs = ctx.saved_tensors
        batch, time, _ = x.shape
        hidden = w_hh.shape[1]
        d_out = d_out if d_out is not None else x.new_zeros(batch, time, hidden)
        d_h = d_h if d_h is not None else x.new_zeros(batch, hidden)
        d_c = d_c if d_c is not None else x.new_zeros(batch, hidden)
        d_gates_all = x.new_empty(batch, time, 4 * hidden)  # [B, T, 4H]
        for t in range(time - 1, -1, -1):
            keep = mask[:, t].unsqueeze(1)
            d_h_new = (d_h + d_out[:, t]) * keep
            d_c_new = d_c * keep
            d_gates, d_c_prev = gates_backward(acts[t], cs[t], tanh_cs[t], d_h_new, d_c_new)
            d_gates_all[:, t] = d_gates
            d_c = d_c_prev + d_c * (1 - keep)
            d_h = torch.addmm(d_h * (1 - keep), d_gates, w_hh)
        # as _CompiledSequence: gradients only for the inputs that need one (frozen weights get
        # none), and each bias its own tensor
        needs = ctx.needs_input_grad
        flat = d_gates_all.view(batch * time, 4 * hidden)  # [B*T, 4H]
        d_x = (flat @ w_ih).view_as(x) if needs[0] else None
        d_w_ih = flat.t() @ x.reshape(batch * time, x.shape[2]) if needs[4] else None  # [4H, I]
        d_w_hh = None
        if needs[5]:
            h_prev = hs[:time].transpose(0, 1).reshape(batch * time, hidden)  # [B*T, H]
            d_w_hh = flat.t() @ h_prev  # [4H, H]
        d_b = flat.sum(dim=0) if needs[6] or needs[7] else None  # [4H]
        return (d_x, None, d_h if needs[2] else None, d_c if needs[3] else None, d_w_ih, d_w_hh,
                d_b if needs[6] else None, d_b.clone() if needs[7] else None)


class FusedLSTMCell(LSTMCell):
    """LSTM layer with the parameters of `lstm` (and so of torch.nn.LSTM: weight_ih [4H, I],
    weight_hh [4H, H], bias_ih [4H], bias_hh [4H]); only `step` and `forward` differ."""

    def _weights(self, dtype: torch.dtype) -> list[Tensor]:
        """Parameters in the compute dtype (bf16 under CPU autocast)."""
        params = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
        return [p.to(dtype) for p in params]

    def step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        if torch.onnx.is_in_onnx_export():  # `s2s export`: lstm's traceable ops, same math
            return LSTMCell.step(self, x, state)
        return self._gates_step(x, state)  # always, also where `lstm` uses torch.lstm_cell

    def _pointwise(self, gates: Tensor, c_prev: Tensor) -> tuple[Tensor, Tensor]:
        if kernels.usable(gates, c_prev, bf16=True):
            return _CompiledPointwise.apply(gates, c_prev)
        return super()._pointwise(gates, c_prev)

    def forward(self, x: Tensor, lengths: Tensor, state: State | None = None
                ) -> tuple[Tensor, State]:
        if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():  # GPUs: `lstm`'s packed
            # torch.lstm, i.e. cuDNN's fused RNN; the ONNX export: ONNX's LSTM op
            return LSTMCell.forward(self, x, lengths, state)
        batch, time = x.shape[0], x.shape[1]
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        # no state given: zeros (unless a subclass changed initial_state), so the compiled
        # kernels may skip step 0's recurrent product
        h0_zero = state is None and type(self).initial_state is LSTMCell.initial_state
        if state is None:
            state = self.initial_state(batch, x.device, dtype)
        mask = length_mask(lengths, time, x.device).to(dtype)  # [B, T]
        x, h0, c0 = x.to(dtype), state[0].to(dtype), state[1].to(dtype)
        with torch.autocast("cpu", enabled=False):
            if kernels.usable(x, h0, c0):
                out, h, c = _CompiledSequence.apply(x, mask, h0, c0, *self._weights(dtype),
                                                    h0_zero)
            else:
                out, h, c = _Sequence.apply(x, mask, h0, c0, *self._weights(dtype))
        return out, (h, c)
