"""Built-in cells (s2s/cells/lstm.py, gru.py) against the cell contract in s2s/cells/base.py:
the fast packed forward equals the step loop, padding is inert, weights are torch's layout.
Also s2s.model.encoder.reverse_padded."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from s2s.cells import Cell, StepCell
from s2s.cells.gru import GRUCell
from s2s.cells.lstm import LSTMCell
from s2s.model.encoder import reverse_padded

I, H = 5, 7
LENGTHS = [6, 3, 1, 4]  # unsorted, with a full-length and a length-1 sequence
# name -> (class, equivalent torch module, number of state tensors)
CELLS = {"lstm": (LSTMCell, nn.LSTM, 2), "gru": (GRUCell, nn.GRU, 1)}


@pytest.fixture(params=sorted(CELLS))
def kind(request) -> str:
    return request.param


def make(kind: str, seed: int = 0) -> StepCell:
    torch.manual_seed(seed)
    return CELLS[kind][0](I, H).double()


def inputs(seed: int = 1, lengths: list[int] = LENGTHS) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), I, generator=g, dtype=torch.float64)
    return x, torch.tensor(lengths)


def random_state(kind: str, batch: int, seed: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, H, generator=g, dtype=torch.float64)
                 for _ in range(CELLS[kind][2]))


def test_cells_satisfy_the_protocol(kind):
    cell = make(kind)
    assert isinstance(cell, Cell)
    assert (cell.input_size, cell.hidden_size) == (I, H)
    state = cell.initial_state(3, torch.device("cpu"), torch.float64)
    assert len(state) == CELLS[kind][2]
    assert all(s.shape == (3, H) and s.dtype == torch.float64 and not s.any() for s in state)


@pytest.mark.parametrize("with_state", [False, True])
def test_forward_equals_step_loop(kind, with_state):
    cell = make(kind)
    x, lengths = inputs()
    state = random_state(kind, len(LENGTHS)) if with_state else None
    out, final = cell(x, lengths, state)
    ref_out, ref_final = StepCell.forward(cell, x, lengths, state)
    assert out.shape == (len(LENGTHS), max(LENGTHS), H)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    assert len(final) == len(ref_final) == CELLS[kind][2]
    for a, b in zip(final, ref_final):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_step_output_is_first_state_tensor(kind):
    cell = make(kind)
    x, _ = inputs()
    h, state = cell.step(x[:, 0], cell.initial_state(x.shape[0], x.device, x.dtype))
    assert h.shape == (x.shape[0], H)
    assert torch.equal(h, state[0])


def test_padded_positions_are_exactly_zero(kind):
    cell = make(kind)
    x, lengths = inputs()
    out, _ = cell(x, lengths)
    ref_out, _ = StepCell.forward(cell, x, lengths)
    for row, n in enumerate(LENGTHS):
        assert (out[row, n:] == 0).all() and (ref_out[row, n:] == 0).all()
        assert (out[row, :n] != 0).any(dim=-1).all()


def test_padding_content_does_not_matter(kind):
    cell = make(kind)
    x, lengths = inputs()
    noisy = x.clone()
    for row, n in enumerate(LENGTHS):
        noisy[row, n:] = 1e3
    out, final = cell(x, lengths)
    out2, final2 = cell(noisy, lengths)
    assert torch.equal(out, out2)
    for a, b in zip(final, final2):
        assert torch.equal(a, b)


def test_final_state_equals_unpadded_run(kind):
    cell = make(kind)
    x, lengths = inputs()
    state = random_state(kind, len(LENGTHS))
    out, final = cell(x, lengths, state)
    for row, n in enumerate(LENGTHS):
        alone_x = x[row:row + 1, :n]
        alone_state = tuple(s[row:row + 1] for s in state)
        alone_out, alone_final = cell(alone_x, torch.tensor([n]), alone_state)
        torch.testing.assert_close(out[row:row + 1, :n], alone_out, atol=1e-10, rtol=0)
        for a, b in zip(final, alone_final):
            torch.testing.assert_close(a[row:row + 1], b, atol=1e-10, rtol=0)
        # and the final h is the output at the last real step
        torch.testing.assert_close(final[0][row], out[row, n - 1], atol=1e-10, rtol=0)


def test_matches_torch_module_with_copied_weights(kind):
    cls, torch_cls, n_state = CELLS[kind]
    torch.manual_seed(3)
    reference = torch_cls(I, H, num_layers=1, batch_first=True).double()
    cell = cls(I, H).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(reference, f"{name}_l0"))
    x, _ = inputs(lengths=[5, 5, 5])
    state = random_state(kind, 3)
    hx = tuple(s.unsqueeze(0) for s in state)
    ref_out, ref_final = reference(x, hx if n_state > 1 else hx[0])
    ref_final = ref_final if isinstance(ref_final, tuple) else (ref_final,)
    out, final = cell(x, torch.tensor([5, 5, 5]), state)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=0)
    for a, b in zip(final, ref_final):
        torch.testing.assert_close(a, b.squeeze(0), atol=1e-10, rtol=0)
    # variable lengths: each row equals the torch module run on that row alone
    x, lengths = inputs()
    out, _ = cell(x, lengths)
    for row, n in enumerate(LENGTHS):
        alone, _ = reference(x[row:row + 1, :n])
        torch.testing.assert_close(out[row:row + 1, :n], alone, atol=1e-10, rtol=0)


def test_parameter_names_and_shapes_follow_torch(kind):
    cls, _, _ = CELLS[kind]
    gates = 4 if kind == "lstm" else 3
    shapes = {name: tuple(p.shape) for name, p in cls(I, H).named_parameters()}
    assert shapes == {"weight_ih": (gates * H, I), "weight_hh": (gates * H, H),
                      "bias_ih": (gates * H,), "bias_hh": (gates * H,)}


@pytest.mark.parametrize("path", ["forward", "step_loop"])
def test_gradients_reach_every_parameter(kind, path):
    cell = make(kind)
    x, lengths = inputs()
    x.requires_grad_(True)
    state = tuple(s.requires_grad_(True) for s in random_state(kind, len(LENGTHS)))
    run = cell if path == "forward" else (lambda *a: StepCell.forward(cell, *a))
    out, final = run(x, lengths, state)
    (out.sum() + sum(s.sum() for s in final)).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(s.grad is not None for s in state)
    # no gradient flows into padded input positions
    for row, n in enumerate(LENGTHS):
        assert (x.grad[row, n:] == 0).all()


def test_gradients_equal_step_loop_gradients(kind):
    cell = make(kind)
    x, lengths = inputs()
    grads = []
    for run in (cell, lambda *a: StepCell.forward(cell, *a)):
        cell.zero_grad()
        out, final = run(x, lengths)
        (out.pow(2).sum() + final[-1].sum()).backward()
        grads.append([p.grad.clone() for p in cell.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_state_reorder_by_index_select(kind):
    """What beam search does: reorder each state tensor; stepping then matches reordered rows."""
    cell = make(kind)
    x, lengths = inputs()
    _, state = cell(x, lengths)
    order = torch.tensor([2, 0, 0, 3])
    reordered = tuple(s.index_select(0, order) for s in state)
    step_x = torch.randn(len(LENGTHS), I, dtype=torch.float64)
    h, new = cell.step(step_x, state)
    h_r, new_r = cell.step(step_x.index_select(0, order), reordered)
    torch.testing.assert_close(h_r, h.index_select(0, order), atol=1e-12, rtol=0)
    for a, b in zip(new_r, new):
        torch.testing.assert_close(a, b.index_select(0, order), atol=1e-12, rtol=0)
    # and a reordered state is a valid initial state for forward
    out, _ = cell(x.index_select(0, order), lengths.index_select(0, order), reordered)
    ref, _ = StepCell.forward(cell, x.index_select(0, order), lengths.index_select(0, order),
                              reordered)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


def test_float32_forward_close_to_step_loop(kind):
    torch.manual_seed(0)
    cell = CELLS[kind][0](I, H)
    x, lengths = inputs()
    out, _ = cell(x.float(), lengths)
    ref, _ = StepCell.forward(cell, x.float(), lengths)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_lstm_forget_bias_option():
    cell = LSTMCell(I, H, forget_bias=1.0)
    assert (cell.bias_ih[H:2 * H] == 1.0).all()
    assert not (cell.bias_ih[:H] == 1.0).all()


# --- reverse_padded --------------------------------------------------------------------------


def test_reverse_padded_reverses_within_length():
    x = torch.arange(1, 13, dtype=torch.float64).view(3, 4)  # [B, S]
    lengths = torch.tensor([4, 2, 1])
    for row, n in enumerate(lengths.tolist()):
        x[row, n:] = 0
    out = reverse_padded(x.unsqueeze(-1), lengths).squeeze(-1)
    assert out.tolist() == [[4, 3, 2, 1], [6, 5, 0, 0], [9, 0, 0, 0]]


def test_reverse_padded_is_an_involution_and_keeps_padding():
    x, lengths = inputs()
    once = reverse_padded(x, lengths)
    assert once.shape == x.shape
    assert torch.equal(reverse_padded(once, lengths), x)
    for row, n in enumerate(LENGTHS):
        assert torch.equal(once[row, :n], x[row, :n].flip(0))
        assert torch.equal(once[row, n:], x[row, n:])


def test_reverse_padded_full_length_is_flip():
    x, _ = inputs(lengths=[4, 4])
    assert torch.equal(reverse_padded(x, torch.tensor([4, 4])), x.flip(1))
