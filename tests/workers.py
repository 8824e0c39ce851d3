"""Work done in spawned worker processes (tests/test_workers.py): importable by name, as
multiprocessing's spawn start method and DataLoader workers need."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


def cell_names() -> list[str]:
    from s2s.cells import registry

    return sorted(registry.discover())


class CellSteps(Dataset):
    """Item i: one `step` of a model's cell, run in whichever process fetches it."""

    def __init__(self, cell: torch.nn.Module) -> None:
        self.cell = cell  # pickled into every worker: its class must be importable there

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        from s2s.cells import registry

        torch.manual_seed(i)
        x = torch.randn(1, self.cell.input_size)
        state = self.cell.initial_state(1, x.device, x.dtype)
        with torch.no_grad():
            h, _ = self.cell.step(x, state)
        return h[0], type(self.cell).__module__, "lnlstm" in registry.discover()


def build_and_step(name: str) -> list[float]:
    """A distributed-style worker: builds a cell by name (as `s2s train` does) and runs it."""
    from s2s.cells import registry

    torch.manual_seed(0)
    cell = registry.build(name, 3, 4, {})
    out, _ = cell(torch.randn(2, 5, 3), torch.tensor([5, 3]))
    return out.sum(dim=(1, 2)).tolist()
