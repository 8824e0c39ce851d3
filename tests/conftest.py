from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import pytest

# Tests run offline, with datasets' cache out of the user's home.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
# The oneDNN product path on every machine (MKL's is torch's own, tested through
# gemm.use("torch")); tests/test_precision.py tests the per-machine measurement itself.
os.environ.setdefault("S2S_GEMM", "onednn")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _hf_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf_cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    os.environ["S2S_DATA_CACHE"] = str(tmp_path_factory.mktemp("s2s_data_cache"))
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


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(dist, version, {cell name: (module source, attribute)}) -> fake distribution on
    sys.path; module names are unique per test and dropped from sys.modules afterwards."""
    created: list[str] = []
    counter = iter(range(1000))

    def _install(dist: str, version: str, cells: dict[str, tuple[str, str]]) -> Path:
        root = tmp_path / f"site_{dist}"
        root.mkdir()
        # named as installers name it (PEP 427/491: '-' in the name becomes '_'); importlib reads
        # the name before the first '-', so 's2s-x-1.0.dist-info' would shadow s2s itself
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
        lines = ["[s2s.cells]"]
        for cell_name, (source, attribute) in cells.items():
            module = f"_fake_{dist}_{cell_name}_{next(counter)}_{tmp_path.name}".replace("-", "_")
            (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            lines.append(f"{cell_name} = {module}:{attribute}")
            created.append(module)
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()
        return root

    yield _install
    for module in created:
        sys.modules.pop(module, None)
    importlib.invalidate_caches()
