from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests run offline, with datasets' cache out of the user's home.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    import datasets

    datasets.config.HF_DATASETS_CACHE = cache
    yield


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return synthetic.write_task(tmp_path_factory.mktemp("toy_data"))


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory, toy_data) -> Path:
    """configs/toy.yaml trained once on the synthetic task; reused by several tests."""
    from s2s import config
    from s2s.train import train

    run = tmp_path_factory.mktemp("toy_run")
    cfg = config.load(ROOT / "configs" / "toy.yaml", [f"data.dir={toy_data}"])
    train(cfg, run, console=False)
    return run
