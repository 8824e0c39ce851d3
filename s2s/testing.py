"""The conformance kit for cell plugins: `check_cell(cls)` checks a cell class against the cell
contract (docs/plugins.md) with tiny float64 inputs. Call it from your plugin's test suite:

    from s2s.testing import check_cell
    from mycells.minimal import ElmanCell

    def test_elman_follows_the_cell_contract():
        check_cell(ElmanCell)
        check_cell(ElmanCell, options={"nonlinearity": "relu"})

Failures raise CellContractError (an AssertionError, so pytest shows a plain test failure)
whose first line names the cell, the device and the property. With tiny float64 inputs, on the
CPU and CUDA if present (or only `device`), it checks in order: the constructor signature and
`options`; `initial_state` gives a tuple of [B, H] tensors of the asked dtype and device; `step`
and `forward` shapes (float64 and float32); `out` is zero at padding and padding content is
ignored; `forward` equals a `step` loop, its final state is the state after each sequence's last
real step and equals the unpadded sequence run alone; gradcheck of `forward` and `step` (inputs,
states, parameters) and a finite gradient for every parameter; `index_select` on the state
commutes with `step` (beam search); a state_dict round trip into a fresh instance.
s2s runs it on every built-in cell; `s2s plugins --check` runs it on every installed one.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from s2s.cells import registry
from s2s.errors import PluginError

__all__ = ["CellContractError", "check_cell"]

State = tuple[Tensor, ...]
LENGTHS = (5, 2, 1, 4)  # unsorted, with a full-length and a length-1 sequence
REORDER = (2, 2, 0, 3)  # as in beam search: repeats one row and drops another
RTOL, ATOL = 1e-7, 1e-9  # float64 agreement between different code paths


class CellContractError(AssertionError):
    """A cell breaks the contract. `cell`, `device` and `prop` say which cell failed which
    property where; `detail` says how."""

    def __init__(self, cell: str, device: str, prop: str, detail: str) -> None:
        super().__init__(f"{cell}{f' on {device}' if device else ''}: {prop}: {detail}")
        self.cell, self.device, self.prop, self.detail = cell, device, prop, detail


def check_cell(cls: type[nn.Module], *, input_size: int = 3, hidden_size: int = 4,
               options: dict[str, Any] | None = None,
               device: str | torch.device | None = None) -> None:
    """Check cell class `cls` (built with `options` as keyword arguments) against the cell
    contract; raises CellContractError naming the first property that fails."""
    label = f"cell {getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"
    options = dict(options or {})
    if device is not None:
        devices = [torch.device(device)]
    else:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available()
                                           else [])
    _run(label, "", "constructor signature", lambda: _check_signature(cls, options))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for tiny tensors torch's thread pool only costs time (a lot)
    try:
        for dev in devices:
            kit = _Kit(cls, input_size, hidden_size, options, dev)
            for prop, check in kit.checks():
                _run(label, str(dev), prop, check)
    finally:
        torch.set_num_threads(threads)


def _run(label: str, device: str, prop: str, check: Callable[[], None]) -> None:
    try:
        check()
    except CellContractError:
        raise
    except AssertionError as exc:
        raise CellContractError(label, device, prop, str(exc)) from exc
    except Exception as exc:  # a crash is a failure of the property being checked
        raise CellContractError(label, device, prop,
                                f"raised {type(exc).__name__}: {exc}") from exc


def _check_signature(cls: type, options: dict[str, Any]) -> None:
    try:
        registry.check_class(cls, "")
    except PluginError as exc:
        raise AssertionError(str(exc).lstrip(": ")) from None
    known = registry.options_of(cls)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise AssertionError(f"options {', '.join(unknown)} are not keyword-only parameters of "
                             f"__init__ (it takes: {', '.join(known) or 'none'})")


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _close(actual: Tensor, expected: Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL,
                               msg=lambda m: f"{what}\n{m}")


def _close_states(actual: State, expected: State, what: str) -> None:
    for i, (a, b) in enumerate(zip(actual, expected)):
        _close(a, b, f"{what} [tensor {i}]")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


class _Kit:
    """One cell instance in float64 on one device, fixed inputs, and the checks in order."""

    def __init__(self, cls: type[nn.Module], input_size: int, hidden_size: int,
                 options: dict[str, Any], device: torch.device) -> None:
        self.cls, self.options, self.device = cls, options, device
        self.I, self.H, self.B, self.T = input_size, hidden_size, len(LENGTHS), max(LENGTHS)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(self.B, self.T, self.I, generator=g, dtype=torch.float64).to(device)
        self.other_x = torch.randn(self.x.shape, generator=g, dtype=torch.float64).to(device)
        self.lengths = torch.tensor(LENGTHS, device=device)
        self.g = g

    def make(self, seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
        with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
            torch.manual_seed(seed)
            return self.cls(self.I, self.H, **self.options).to(self.device, dtype)

    def checks(self) -> list[tuple[str, Callable[[], None]]]:
        return [("construction", self.construct), ("initial_state", self.initial_state),
                ("step shapes", self.step_shapes), ("forward shapes", self.forward_shapes),
                ("zeros at padding", self.padding),
                ("forward == step loop", self.step_loop),
                ("final state at the last real step", self.final_state),
                ("padded batch == each sequence alone", self.alone),
                ("padding content is ignored", self.padding_content),
                ("gradients", self.gradients), ("state reorder by index_select", self.reorder),
                ("state_dict round trip", self.round_trip)]

    def same_device(self, t: Tensor) -> bool:
        return t.device.type == self.device.type and (self.device.index is None
                                                      or t.device.index == self.device.index)

    def construct(self) -> None:
        self.cell = self.make(0)
        sizes = (getattr(self.cell, "input_size", None), getattr(self.cell, "hidden_size", None))
        _expect(sizes == (self.I, self.H), f"attributes (input_size, hidden_size) are {sizes}, "
                                           f"expected {(self.I, self.H)}")

    def check_state(self, state: Any, batch: int, dtype: torch.dtype, what: str) -> None:
        _expect(isinstance(state, tuple) and len(state) > 0,
                f"{what} must be a non-empty tuple of tensors, got {type(state).__name__}")
        for i, s in enumerate(state):
            _expect(isinstance(s, Tensor) and tuple(s.shape) == (batch, self.H),
                    f"{what}[{i}] has shape {_shape(s)}, expected [B, H] = {(batch, self.H)}")
            _expect(s.dtype == dtype and self.same_device(s), f"{what}[{i}] is {s.dtype} on "
                    f"{s.device}, expected {dtype} on {self.device}")

    def initial_state(self) -> None:
        for dtype in (torch.float32, torch.float64):
            state = self.cell.initial_state(3, self.device, dtype)
            self.check_state(state, 3, dtype, f"initial_state(3, {self.device}, {dtype})")
        self.n = len(state)
        self.s0 = tuple(0.5 * torch.randn(self.B, self.H, generator=self.g, dtype=torch.float64
                                          ).to(self.device) for _ in range(self.n))

    def step_shapes(self) -> None:
        h, state = self.cell.step(self.x[:, 0], self.s0)
        _expect(isinstance(h, Tensor) and tuple(h.shape) == (self.B, self.H),
                f"h has shape {_shape(h)}, expected [B, H] = {(self.B, self.H)}")
        self.check_state(state, self.B, torch.float64, "step's state")
        _expect(len(state) == self.n, f"step returned {len(state)} state tensors, "
                                      f"initial_state {self.n}")
        _close(h, state[0], "step's h is not state[0]")

    def forward_shapes(self) -> None:
        self.out, self.final = self.cell(self.x, self.lengths, self.s0)
        _expect(isinstance(self.out, Tensor) and self.out.shape == (self.B, self.T, self.H)
                and self.out.dtype == torch.float64, f"out is {_shape(self.out)} "
                f"{getattr(self.out, 'dtype', '')}, expected [B, T, H] = "
                f"{(self.B, self.T, self.H)} float64")
        self.check_state(self.final, self.B, torch.float64, "forward's final_state")
        out, final = self.make(0, torch.float32)(self.x.float(), self.lengths)
        _expect(out.dtype == torch.float32 and out.shape == self.out.shape,
                f"in float32, out is {_shape(out)} {out.dtype}, expected float32")
        self.check_state(final, self.B, torch.float32, "final_state in float32")
        out, final = self.cell(self.x, self.lengths)
        ref_out, ref_final = self.cell(self.x, self.lengths,
                                       self.cell.initial_state(self.B, self.device, torch.float64))
        _close_states((out, *final), (ref_out, *ref_final),
                      "forward with state=None differs from state=initial_state(...)")

    def padding(self) -> None:
        for b, n in enumerate(LENGTHS):
            pad = self.out[b, n:]
            if pad.any():
                raise AssertionError(f"out[{b}, {n}:] (after length {n}) is not zero: "
                                     f"max |value| {pad.abs().max().item():.3g}")

    def padding_content(self) -> None:
        real = torch.arange(self.T, device=self.device)[None, :, None] < self.lengths[:, None, None]
        out, final = self.cell(torch.where(real, self.x, self.other_x), self.lengths, self.s0)
        _close(out, self.out, "out changes with the content of padded positions")
        _close_states(final, self.final, "final_state changes with the content of padding")

    def stepped(self, b: int) -> tuple[Tensor, State]:
        state = tuple(s[b:b + 1] for s in self.s0)
        hs = []
        for t in range(LENGTHS[b]):
            h, state = self.cell.step(self.x[b:b + 1, t], state)
            hs.append(h)
        return torch.cat(hs), state

    def step_loop(self) -> None:
        for b, n in enumerate(LENGTHS):
            _close(self.out[b, :n], self.stepped(b)[0],
                   f"forward's out[{b}, :{n}] differs from calling step over that sequence")

    def final_state(self) -> None:
        for b, n in enumerate(LENGTHS):
            _close_states(tuple(f[b:b + 1] for f in self.final), self.stepped(b)[1],
                          f"final_state[:][{b}] is not the state after step {n}, the last real "
                          f"step of that sequence (the batch is padded to {self.T})")

    def alone(self) -> None:
        for b, n in enumerate(LENGTHS):
            out, final = self.cell(self.x[b:b + 1, :n], self.lengths[b:b + 1],
                                   tuple(s[b:b + 1] for s in self.s0))
            _close_states((self.out[b:b + 1, :n], *(f[b:b + 1] for f in self.final)),
                          (out, *final), f"out[{b}, :{n}] or final_state[:][{b}] differs from "
                                         f"forward on the unpadded sequence alone")

    def gradients(self) -> None:
        cell, lengths = self.cell, torch.tensor([3, 2], device=self.device)
        named = dict(cell.named_parameters())
        x, *s0 = (t[:2].detach().clone().requires_grad_() for t in (self.x[:, :3], *self.s0))

        def forward(x: Tensor, *state: Tensor, params: dict[str, Tensor] = named) -> tuple:
            out, final = torch.func.functional_call(cell, params, (x, lengths, state))
            return (out, *final)

        def step(x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
            h, new = cell.step(x, state)
            return (h, *new)

        def by_params(*params: Tensor) -> tuple[Tensor, ...]:
            return forward(x.detach(), *(s.detach() for s in s0), params=dict(zip(named, params)))

        leaves = tuple(p.detach().clone().requires_grad_() for p in named.values())
        for what, fn, inputs in [("forward w.r.t. x and state", forward, (x, *s0)),
                                 ("step w.r.t. x and state", step, (x[:, 0].detach()
                                  .clone().requires_grad_(), *s0)),
                                 ("forward w.r.t. the parameters", by_params, leaves)]:
            try:
                if inputs:
                    torch.autograd.gradcheck(fn, inputs)
            except RuntimeError as exc:  # torch's GradcheckError, or a crash in backward
                raise AssertionError(f"gradcheck of {what} failed: {exc}") from exc
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device)
                    .view_as(o)).sum() for o in forward(x, *s0))
        grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True) if named else ()
        for name, grad in zip(named, grads):
            _expect(grad is not None and bool(torch.isfinite(grad).all()),
                    f"parameter {name} gets {'no' if grad is None else 'a non-finite'} gradient "
                    f"from forward")

    def reorder(self) -> None:
        idx = torch.tensor(REORDER, device=self.device)
        h, state = self.cell.step(self.x[:, 1], self.s0)
        h2, state2 = self.cell.step(self.x[:, 1].index_select(0, idx),
                                    tuple(s.index_select(0, idx) for s in self.s0))
        _close_states((h2, *state2), tuple(t.index_select(0, idx) for t in (h, *state)),
                      f"step on a batch and state reordered by index {REORDER} differs from "
                      f"reordering step's results (tensor 0 is h)")

    def round_trip(self) -> None:
        buffer = io.BytesIO()
        torch.save(self.cell.state_dict(), buffer)
        buffer.seek(0)
        fresh = self.make(1)
        fresh.load_state_dict(torch.load(buffer, map_location=self.device, weights_only=True))
        out, final = fresh(self.x, self.lengths, self.s0)
        _close_states((out, *final), (self.out, *self.final), "a fresh instance loaded from "
                      "the saved state_dict() gives a different forward (tensor 0 is out)")
