#!/usr/bin/env bash
# Side by side with OpenNMT-py 3.5.1 on this CPU (docs/benchmarks.md), one job at a time:
# the recipe as shipped vs fp32 (40 steps), 400 peer-matched steps of OpenNMT-py, s2s
# fused-lstm at auto and lstm fp32, decoding test_2016_flickr at each precision and shortlist,
# then OpenNMT-py and s2s decoding again and OpenNMT-py training again.
# Usage: B=/tmp/sbs bash tools/side_by_side.sh > sbs.log   (needs ../shared/bench/peers set up)
set -u
cd "$(dirname "$0")/.."
S2S=$PWD; export OMP_NUM_THREADS=2
B=${B:-/tmp/s2s-side-by-side}; DATA=${DATA:-$S2S/../shared/data/multi30k}; PY=${PY:-.venv/bin/python}
PEERS_DIR=$S2S/../shared/bench/peers
mkdir -p "$B"
zcat "$DATA/test_2016_flickr.en.gz" > "$B/test.en"; zcat "$DATA/test_2016_flickr.de.gz" > "$B/test.de"
onmt() { (cd "$PEERS_DIR" && env RUN="$B/$1" STEPS=400 SPM_PY="$S2S/$PY" "${@:2}" bash run_onmt.sh) 2>&1 \
  | grep -E 'train wall|Step +[0-9]+/|beam [15]:|BLEU'; }
echo "== cpu: $($PY -c 'from s2s.ops.runtime import cpu_kind; print(cpu_kind())')"
echo "== recipe as shipped vs fp32, 40 steps"
$PY tools/bench.py configs/multi30k-en-de.yaml --set data.dir="$DATA" --train-steps 40
$PY tools/bench.py configs/multi30k-en-de.yaml --set data.dir="$DATA" --set train.precision=fp32 --train-steps 40
$PY tools/bench.py configs/multi30k-en-de.yaml --set data.dir="$DATA" --train-steps 40
echo "== OpenNMT-py 400 steps"; onmt onmt_run
echo "== s2s fused-lstm auto 400 steps"
rm -rf "$B/s2s_fused"
$PY tools/bench.py configs/peer-matched.yaml --set data.dir="$DATA" --set model.cell=fused-lstm --run-dir "$B/s2s_fused" \
   --train-steps 400 --translate "$B/test.en" --reference "$B/test.de" --beam 5 --beam 1 \
   --translate-precision fp32 --translate-precision auto --translate-precision int8 --translate-shortlist 0 --translate-shortlist 10
echo "== s2s lstm fp32 400 steps"
$PY tools/bench.py configs/peer-matched.yaml --set data.dir="$DATA" --set train.precision=fp32 --train-steps 400
echo "== OpenNMT-py decoding again"; onmt onmt_run SKIP_TRAIN=1
echo "== s2s decoding again"
$PY tools/bench.py configs/peer-matched.yaml --skip-train --run-dir "$B/s2s_fused" --translate "$B/test.en" --reference "$B/test.de" \
   --beam 5 --beam 1 --translate-precision auto --translate-precision int8 --translate-shortlist 0 --translate-shortlist 10
echo "== OpenNMT-py training again"; onmt onmt_run2 SKIP_TRANSLATE=1
echo "== done"
