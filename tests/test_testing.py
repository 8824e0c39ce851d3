"""s2s.testing.check_cell, the conformance kit: every built-in cell passes it, and it catches
cells that break the contract with a message naming the property; `s2s plugins --check`."""
from __future__ import annotations

import pytest
import torch
from broken_cells import (
    FastPathForgetsBias,
    FinalAtPaddedEnd,
    MixesTheBatch,
    NoZeroPadding,
    RandomNonPersistentBuffer,
    StateNotBH,
    StateNotTuple,
    TakesKwargs,
    Tanh,
    UnusedParameter,
)
from click.testing import CliRunner

from s2s.cells import registry
from s2s.cli import main
from s2s.testing import CellContractError, check_cell

# every cell s2s itself declares (lstm, gru and any other built-in), found like a plugin's
BUILTINS = sorted({"lstm", "gru"} | {name for name, entries in registry.discover().items()
                                     if any(e.dist == "s2s" for e in entries)})


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_cells_pass(name):
    cls, _ = registry.load(name)
    check_cell(cls)


def test_options_and_sizes_are_passed_through():
    cls, _ = registry.load("lstm")
    check_cell(cls, input_size=1, hidden_size=2, options={"forget_bias": 1.0}, device="cpu")


def test_callers_random_state_and_threads_are_left_alone():
    torch.manual_seed(123)
    before, threads = torch.get_rng_state(), torch.get_num_threads()
    check_cell(registry.load("gru")[0])
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.get_num_threads() == threads
    with pytest.raises(CellContractError):
        check_cell(NoZeroPadding)
    assert torch.get_num_threads() == threads


# -- cells that break the contract: tests/broken_cells.py -----------------------------------------


def failure(cls: type) -> CellContractError:
    with pytest.raises(AssertionError) as info:
        check_cell(cls)
    assert isinstance(info.value, CellContractError)
    assert cls.__qualname__ in str(info.value)  # names the cell
    return info.value


def test_the_correct_cell_passes():
    check_cell(Tanh)


@pytest.mark.parametrize("cls,prop,needles", [
    (NoZeroPadding, "zeros at padding", ["out[1, 2:]", "not zero"]),
    (FinalAtPaddedEnd, "final state at the last real step", ["final_state", "last real step"]),
    (FastPathForgetsBias, "forward == step loop", ["differs from calling step"]),
    (StateNotBH, "initial_state", ["(3, 1, 4)", "expected [B, H] = (3, 4)"]),
    (StateNotTuple, "initial_state", ["tuple"]),
    (UnusedParameter, "gradients", ["parameter gate gets no gradient"]),
    (RandomNonPersistentBuffer, "state_dict round trip", ["fresh instance"]),
    (MixesTheBatch, "forward == step loop", ["differs from calling step"]),
    (TakesKwargs, "constructor signature", ["no *args/**kwargs"]),
])
def test_broken_cells_fail_with_a_telling_message(cls, prop, needles):
    error = failure(cls)
    assert error.prop == prop, str(error)
    first_line = str(error).splitlines()[0]
    assert f": {prop}: " in first_line
    for needle in needles:
        assert needle in str(error), (needle, str(error))


def test_unknown_options_fail():
    with pytest.raises(CellContractError) as info:
        check_cell(registry.load("lstm")[0], options={"forgt_bias": 1.0})
    error = info.value
    assert error.prop == "constructor signature" and "forgt_bias" in str(error)
    assert "forget_bias" in str(error)


def test_a_crash_is_reported_as_the_failing_property():
    class CrashingStep(Tanh):
        def step(self, x, state):
            raise RuntimeError("kaboom")

    error = failure(CrashingStep)
    assert error.prop == "step shapes" and "raised RuntimeError: kaboom" in str(error)


# -- s2s plugins --check --------------------------------------------------------------------------


def rows_of(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line and line[0] != " "}


def test_plugins_check_builtins():
    result = CliRunner().invoke(main, ["plugins", "--check"])
    rows = rows_of(result.stdout)
    for name in ("lstm", "gru"):
        assert rows[name].rstrip().endswith("  ok"), result.stdout
    assert result.exit_code == (0 if all(r.rstrip().endswith(" ok") for r in rows.values())
                                else 1), result.stdout


def test_plugins_check_reports_a_cell_that_fails(install):
    install("badcells", "0.3", {"nopad": ("from broken_cells import NoZeroPadding\n",
                                          "NoZeroPadding")})
    result = CliRunner().invoke(main, ["plugins"])  # listing alone does not run the kit
    assert result.exit_code == 0 and rows_of(result.stdout)["nopad"].rstrip().endswith(" ok")
    result = CliRunner().invoke(main, ["plugins", "--check"])
    assert result.exit_code == 1, result.stdout
    rows = rows_of(result.stdout)
    assert "badcells" in rows["nopad"] and "0.3" in rows["nopad"]
    assert "fails check: zeros at padding on cpu: out[1, 2:]" in rows["nopad"], result.stdout
    assert rows["lstm"].rstrip().endswith(" ok") and rows["gru"].rstrip().endswith(" ok")
