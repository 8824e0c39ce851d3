"""Plugins are found again in worker processes started with spawn (data-loader workers,
distributed workers): discovery reads installed metadata, so nothing has to be re-registered."""
from __future__ import annotations

import multiprocessing

import pytest
import torch
import workers
from torch.utils.data import DataLoader

pytest.importorskip("s2s_lnlstm", reason="pip install -e plugins/s2s-lnlstm")


def test_dataloader_workers_unpickle_and_run_a_plugin_cell():
    from s2s.cells import registry

    cell = registry.build("lnlstm", 3, 4, {})
    loader = DataLoader(workers.CellSteps(cell), batch_size=None, num_workers=2,
                        multiprocessing_context="spawn")
    in_workers = list(loader)
    here = [workers.CellSteps(cell)[i] for i in range(4)]
    assert len(in_workers) == 4
    for (h, module, found), (h_ref, module_ref, _) in zip(in_workers, here):
        torch.testing.assert_close(h, h_ref)
        assert module == module_ref == "s2s_lnlstm"
        assert found  # the worker's own registry lists the plugin


def test_spawned_workers_discover_and_build_the_same_cells():
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        names = pool.apply(workers.cell_names)
        results = pool.map(workers.build_and_step, ["lnlstm", "fused-lstm"])
    assert names == workers.cell_names()
    assert {"lstm", "gru", "fused-lstm", "lnlstm"} <= set(names)
    expected = [workers.build_and_step("lnlstm"), workers.build_and_step("fused-lstm")]
    torch.testing.assert_close(results, expected)
