"""Devices: train.device / --device settings, clear errors where a device is missing, and
checkpoints that load onto any device. CUDA tests skip without a GPU (CI has none)."""
from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from s2s import checkpoint, config, devices
from s2s.cli import main
from s2s.errors import ConfigError
from s2s.translate import Translator

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_device_settings_accepted(spec):
    assert devices.problem(spec) == ""
    assert config.from_dict({"train": {"device": spec}}).train.device == spec


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_bad_device_setting_names_the_key(spec):
    with pytest.raises(ConfigError, match=r"'train.device'.*not a device: use auto"):
        config.from_dict({"train": {"device": spec}})


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve("cpu", "train.device") == torch.device("cpu")


def test_cuda_without_cuda_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"train.device {spec}: no CUDA device on this "
                                              r"machine .*use train.device cpu or auto"):
            devices.resolve(spec, "train.device")


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"--device cuda:2: this machine has 2 CUDA device"):
        devices.resolve("cuda:2")


@no_cuda
def test_train_on_cuda_without_one_fails_before_any_work(toy_data, tmp_path):
    run = tmp_path / "run"
    result = cli("train", "configs/toy.yaml", "--run-dir", run, "--set", f"data.dir={toy_data}",
                 "--set", "train.device=cuda")
    assert result.exit_code == 1
    assert "error: train.device cuda: no CUDA device on this machine" in result.output
    assert "Traceback" not in result.output
    assert not (run / "checkpoints").exists()  # nothing trained, nothing written


@no_cuda
@pytest.mark.parametrize("command", ["translate", "score"])
def test_translate_and_score_on_cuda_without_one(toy_run, tmp_path, command):
    source = tmp_path / "src.txt"
    source.write_text("a b c\n")
    extra = ["-r", source] if command == "score" else []
    result = cli(command, toy_run, "-i", source, *extra, "--device", "cuda")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1].startswith(
        "error: --device cuda: no CUDA device on this machine")


def test_bad_device_option_is_a_usage_error(toy_run):
    result = cli("translate", toy_run, "--device", "gpu")
    assert result.exit_code == 2
    assert "'gpu' is not a device" in result.output


def test_auto_trained_on_the_cpu_here(toy_run):
    payload = checkpoint.load(checkpoint.resolve(toy_run))
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert payload["device"] == expected
    assert all(t.device.type == "cpu" for t in payload["model"].values())  # loaded to the CPU


@cuda
def test_a_cpu_run_translates_the_same_on_the_gpu(toy_run):
    lines = ["a b c", "d e f g", ""]
    on_cpu = Translator.from_run(toy_run, device="cpu")
    on_gpu = Translator.from_run(toy_run, device="cuda")
    assert on_gpu.device.type == "cuda"
    assert on_gpu.translate(lines, precision="fp32") == on_cpu.translate(lines, precision="fp32")


@cuda
def test_gpu_training_resumes_on_the_cpu(toy_data, tmp_path):
    from s2s.training import resume, train

    run = tmp_path / "gpu_run"
    cfg = config.load("configs/toy.yaml", [f"data.dir={toy_data}", "train.max_steps=20",
                                           "train.device=cuda", "train.validate_every=20"])
    train(cfg, run, console=False)
    assert checkpoint.load(checkpoint.resolve(run))["device"].startswith("cuda")
    result = resume(run, ["train.max_steps=30", "train.device=cpu"], console=False)
    assert result["step"] == 30
