"""s2s/cells/registry.py against FAKE installed distributions: a `*.dist-info` directory with
METADATA and entry_points.txt, plus the modules it points to, put on sys.path (the `install`
fixture in conftest.py)."""
from __future__ import annotations

import importlib

import pytest
import torch

from s2s.cells import registry
from s2s.cells.lstm import LSTMCell
from s2s.errors import PluginError

GOOD_CELL = '''
import torch
from torch import nn
from s2s.cells import StepCell


class TanhCell(StepCell):
    """h' = tanh(W x + U h), optionally scaled."""

    def __init__(self, input_size, hidden_size, *, scale=1.0):
        super().__init__()
        self.input_size, self.hidden_size, self.scale = input_size, hidden_size, scale
        self.w = nn.Linear(input_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def initial_state(self, batch_size, device, dtype):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),)

    def step(self, x, state):
        h = self.scale * torch.tanh(self.w(x) + self.u(state[0]))
        return h, (h,)
'''

BAD_MODULES = {
    "raises": "raise RuntimeError('boom: plugin is broken')\n",
    "exits": "import sys\nsys.exit(3)\n",
    "function": "def TanhCell(input_size, hidden_size):\n    return None\n",
    "kwargs": GOOD_CELL.replace("*, scale=1.0", "**kwargs").replace(
        "self.scale = input_size, hidden_size, scale", "self.scale = input_size, hidden_size, 1.0"),
    "args": GOOD_CELL.replace("*, scale=1.0", "*args, scale=1.0"),
    "positional": GOOD_CELL.replace("*, scale=1.0", "n_layers, *, scale=1.0"),
    "renamed": GOOD_CELL.replace("input_size, hidden_size, *", "in_size, hidden_size, *"),
    "nostep": "from torch import nn\n\n\nclass TanhCell(nn.Module):\n"
              "    def __init__(self, input_size, hidden_size):\n        super().__init__()\n"
              "    def initial_state(self, b, d, t):\n        return ()\n",
    "failing_init": GOOD_CELL.replace("super().__init__()",
                                      "super().__init__()\n        raise ValueError('no')"),
}


def test_builtin_cells_are_discovered():
    cells = registry.discover()
    assert {"lstm", "gru"} <= set(cells)
    assert [e.value for e in cells["lstm"]] == ["s2s.cells.lstm:LSTMCell"]
    assert cells["lstm"][0].dist == "s2s"
    cls, entry = registry.load("lstm")
    assert cls is LSTMCell and entry.name == "lstm"


def test_builtin_build_with_and_without_options():
    cell = registry.build("lstm", 3, 4, {})
    assert isinstance(cell, LSTMCell) and (cell.input_size, cell.hidden_size) == (3, 4)
    cell = registry.build("lstm", 3, 4, {"forget_bias": 1.0})
    assert cell.forget_bias == 1.0
    assert registry.build("gru", 3, 4, {}).hidden_size == 4


def test_third_party_cell_is_discovered_and_built(install):
    install("fakecells", "1.2", {"tanh": (GOOD_CELL, "TanhCell")})
    entries = registry.discover()["tanh"]
    assert len(entries) == 1
    assert (entries[0].dist, entries[0].version) == ("fakecells", "1.2")
    cell = registry.build("tanh", 3, 5, {"scale": 0.5})
    assert type(cell).__name__ == "TanhCell" and cell.scale == 0.5
    out, (h,) = cell(torch.randn(2, 4, 3), torch.tensor([4, 2]))
    assert out.shape == (2, 4, 5) and h.shape == (2, 5)
    assert (out[1, 2:] == 0).all()
    assert "scale" in registry.options_of(type(cell))
    assert dict((e.name, s) for e, s in registry.status())["tanh"] == "ok"


def test_unknown_cell_lists_installed_names(install):
    install("fakecells", "1.2", {"tanh": (GOOD_CELL, "TanhCell")})
    with pytest.raises(PluginError) as info:
        registry.build("lstmm", 3, 4, {})
    text = str(info.value)
    assert "'lstmm'" in text
    for name in ("lstm", "gru", "tanh"):
        assert name in text
    assert "model.cell" in text


def test_module_raising_on_import(install):
    install("fakecells", "1.2", {"broken": (BAD_MODULES["raises"], "TanhCell"),
                                 "tanh": (GOOD_CELL, "TanhCell")})
    with pytest.raises(PluginError) as info:
        registry.load("broken")
    text = str(info.value)
    assert "'broken'" in text and "fakecells" in text and "1.2" in text
    assert "boom: plugin is broken" in text
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(PluginError) as info:  # build goes through the same path
        registry.build("broken", 3, 4, {})
    assert isinstance(info.value.__cause__, RuntimeError)

    rows = {entry.name: state for entry, state in registry.status()}
    assert rows["broken"].startswith("broken: ") and "boom" in rows["broken"]
    assert "RuntimeError" in rows["broken"]
    assert rows["lstm"] == rows["gru"] == rows["tanh"] == "ok"
    # a broken plugin does not break runs using other cells
    assert registry.load("lstm")[0] is LSTMCell
    assert registry.build("tanh", 2, 3, {}).hidden_size == 3


def test_module_calling_sys_exit_on_import_is_a_plugin_error(install):
    """sys.exit() in a plugin's import is a broken plugin, not a silent exit of s2s."""
    install("fakecells", "1.2", {"quits": (BAD_MODULES["exits"], "TanhCell")})
    with pytest.raises(PluginError, match=r"'quits'.*failed to load: SystemExit: 3"):
        registry.load("quits")
    rows = {entry.name: state for entry, state in registry.status()}
    assert rows["quits"] == "broken: SystemExit: 3" and rows["lstm"] == "ok"


def test_entry_point_naming_a_missing_attribute(install):
    install("fakecells", "1.2", {"typo": (GOOD_CELL, "TanhCel")})
    with pytest.raises(PluginError) as info:
        registry.load("typo")
    assert "fakecells" in str(info.value) and info.value.__cause__ is not None


@pytest.mark.parametrize("module,needle", [
    ("function", "nn.Module subclass"),
    ("kwargs", "no *args/**kwargs"),
    ("args", "no *args/**kwargs"),
    ("positional", "(input_size, hidden_size"),
    ("renamed", "(input_size, hidden_size"),
    ("nostep", "step"),
])
def test_contract_violations(install, module, needle):
    install("fakecells", "1.2", {"bad": (BAD_MODULES[module], "TanhCell")})
    with pytest.raises(PluginError) as info:
        registry.build("bad", 3, 4, {})
    text = str(info.value)
    assert needle in text
    assert "'bad'" in text and "fakecells 1.2" in text
    assert dict((e.name, s) for e, s in registry.status())["bad"].startswith("broken: ")


def test_unknown_cell_options_list_accepted_ones(install):
    with pytest.raises(PluginError) as info:
        registry.build("lstm", 3, 4, {"forgt_bias": 1.0})
    text = str(info.value)
    assert "forgt_bias" in text and "forget_bias" in text and "model.cell_options" in text

    install("fakecells", "1.2", {"tanh": (GOOD_CELL, "TanhCell")})
    with pytest.raises(PluginError) as info:
        registry.build("tanh", 3, 4, {"scale": 2.0, "depth": 3, "alpha": 1})
    text = str(info.value)
    assert "alpha, depth" in text and "its options: scale" in text and "fakecells" in text


def test_cell_without_options_says_none():
    with pytest.raises(PluginError, match="its options: none"):
        registry.build("gru", 3, 4, {"forget_bias": 1.0})


def test_failing_construction_is_plugin_error(install):
    install("fakecells", "1.2", {"tanh": (BAD_MODULES["failing_init"], "TanhCell")})
    with pytest.raises(PluginError) as info:
        registry.build("tanh", 3, 4, {"scale": 2.0})
    assert "construction" in str(info.value) and "fakecells" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)


def test_same_name_from_two_distributions(install):
    install("fakecells", "1.2", {"tanh": (GOOD_CELL, "TanhCell")})
    install("othercells", "0.1", {"tanh": (GOOD_CELL, "TanhCell")})
    assert len(registry.discover()["tanh"]) == 2
    with pytest.raises(PluginError) as info:
        registry.build("tanh", 3, 4, {})
    text = str(info.value)
    assert "'tanh'" in text and "more than one distribution" in text
    assert "fakecells 1.2" in text and "othercells 0.1" in text
    rows = [(entry.dist, state) for entry, state in registry.status() if entry.name == "tanh"]
    assert sorted(d for d, _ in rows) == ["fakecells", "othercells"]
    assert all(state.startswith("broken: ") for _, state in rows)


def test_shadowing_a_builtin_name_is_a_conflict(install):
    install("fakecells", "1.2", {"lstm": (GOOD_CELL, "TanhCell")})
    with pytest.raises(PluginError, match="more than one distribution") as info:
        registry.load("lstm")
    assert "s2s" in str(info.value) and "fakecells" in str(info.value)


def test_same_distribution_twice_on_path_is_not_a_conflict(install, monkeypatch):
    root = install("fakecells", "1.2", {"tanh": (GOOD_CELL, "TanhCell")})
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    assert len(registry.discover()["tanh"]) == 1
    assert registry.build("tanh", 2, 2, {}).hidden_size == 2
