#!/usr/bin/env bash
# The GPU check (issue 13): one call on a machine with a CUDA GPU, well under 8 minutes.
#   1. the CUDA tests (tests/test_devices.py, check_cell on CUDA for every built-in cell);
#   2. STEPS (300) steps of configs/peer-matched.yaml on the GPU in fp32 and in bf16: losses
#      side by side, target tokens/s;
#   3. translation of the test set on the GPU against the CPU (same model, fp32): the share of
#      identical lines (must be >= 99%) and the seconds of each.
# Usage: DATA=path/to/multi30k OUT=dir bash tools/gpu_check.sh
#   DATA: a folder with train/val/test_2016_flickr .en/.de (.gz is fine); OUT: where the runs,
#   the log and gpu_check.json go. DEVICE=cpu STEPS=20 runs the same script on a CPU (a dry run
#   of the script itself). Needs s2s installed with its dependencies (README.md's set-up; on a
#   machine without network, `pip install --no-deps -e .` plus wheels of what is missing).
# On this workplace's GPU machine (torch, sentencepiece, sacrebleu, tensorboard, click, pyarrow
# are there; datasets, dill and multiprocess are not), prepare here, in the repo root:
#   echo /.whl/ >> .git/info/exclude; mkdir -p .gpu && echo /.gpu/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
#   cp ../shared/data/multi30k/{train,val,test_2016_flickr}.{en,de}.gz .gpu/
# and run there (carry .whl and .gpu):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-index --no-deps \
#   --no-build-isolation -e . && DATA=.gpu OUT=$OUT bash tools/gpu_check.sh
#   (the editable install registers the built-in cells' entry points)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:?set DATA to the Multi30k folder}
OUT=${OUT:-/tmp/s2s-gpu-check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-300}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export HF_DATASETS_CACHE="$OUT/hf_cache" S2S_DATA_CACHE="$OUT/s2s_cache"
$PY - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

echo "== 1. CUDA tests"
$PY -m pytest -q -rs tests/test_devices.py tests/test_testing.py tests/test_cells.py 2>&1 | tail -n 15

echo "== 2. $STEPS steps of configs/peer-matched.yaml on $DEVICE, fp32 and bf16"
for p in fp32 bf16; do
  rm -rf "$OUT/run_$p"
  $PY -m s2s train configs/peer-matched.yaml --run-dir "$OUT/run_$p" --quiet \
      --set data.dir="$DATA" --set train.device="$DEVICE" --set train.precision=$p \
      --set train.max_steps="$STEPS" --set train.log_every=50 \
      --set train.validate_every="$STEPS" --set train.checkpoint_every="$STEPS"
done

echo "== 3. translation on $DEVICE against the CPU"
src="$OUT/test.en"
if [ -f "$DATA/test_2016_flickr.en.gz" ]; then zcat "$DATA/test_2016_flickr.en.gz" > "$src"
else cp "$DATA/test_2016_flickr.en" "$src"; fi
for d in "$DEVICE" cpu; do
  start=$(date +%s.%N)
  $PY -m s2s translate "$OUT/run_fp32" -i "$src" -o "$OUT/hyp.$d" --beam 5 --precision fp32 \
      --device "$d"
  echo "$d $(echo "$(date +%s.%N) - $start" | bc)" >> "$OUT/translate_seconds"
done

$PY - "$OUT" "$DEVICE" <<'EOF'
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
def log(p):
    rows = [json.loads(l) for l in (out / f"run_{p}" / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "train/loss" in r}
fp32, bf16 = log("fp32"), log("bf16")
steps = sorted(fp32)
gpu = (out / f"hyp.{device}").read_text().splitlines()
cpu = (out / "hyp.cpu").read_text().splitlines()
same = sum(a == b for a, b in zip(gpu, cpu)) / max(1, len(cpu))
seconds = dict(line.split() for line in (out / "translate_seconds").read_text().splitlines())
result = {
    "device": device,
    "loss_fp32": {s: round(fp32[s]["train/loss"], 4) for s in steps},
    "loss_bf16": {s: round(bf16[s]["train/loss"], 4) for s in steps if s in bf16},
    "tgt_tok_s_fp32": round(sum(fp32[s]["train/tgt_tokens_per_s"] for s in steps) / len(steps)),
    "tgt_tok_s_bf16": round(sum(bf16[s]["train/tgt_tokens_per_s"] for s in steps) / len(steps)),
    "translate_identical_lines": round(same, 4), "lines": len(cpu),
    "translate_seconds": seconds,
}
(out / "gpu_check.json").write_text(json.dumps(result, indent=1))
print(json.dumps(result, indent=1))
last = steps[-1]
assert abs(bf16[last]["train/loss"] - fp32[last]["train/loss"]) < 0.05 * fp32[last]["train/loss"], \
    "bf16 and fp32 losses differ by more than 5%"
assert same >= 0.99, f"only {same:.1%} of the lines are identical on {device} and the CPU"
print("gpu check: OK")
EOF
