#!/usr/bin/env bash
# One prepared command for a GPU machine: what the project cannot measure on a CPU, in at most 10 minutes.
# STAGES (default "sweep") picks among, run in this order:
#   throughput: benchmarks/throughput.py on the GPU (ours vs the vit-pytorch anchor, bf16 and fp32);
#   compile:    train.py's steps/s eager against --torch_compile --torch_compile_mode reduce-overhead (COMPILE_MODE),
#               BloodMNIST vit and vit_lsa (COMPILE_MODELS), COMPILE_STEPS updates (300) with --dataloader_drop_last
#               (one batch shape), each model alone and COMPILE_JOBS (3) runs at once; each run's steps/s after its
#               first logging window (all_results.json `training_speed`; the first window holds the compilation) and
#               its process time -> $WORK/compile_steps.json and compile_steps.txt (experiments/compile_steps.py).
#               Within COMPILE_S (200 s): runs that do not fit are skipped or cut, and the table says so.
#               STAGES="compile sweep" is the order when one GPU call must answer both (SWEEP_S then defaults to
#               480 - COMPILE_S; a faster sweep may then take TRAIN_ARGS="--torch_compile ..." if compiling paid).
#   seed:       the seed's BloodMNIST ViT + SPT + LSA recipe (50 epochs), timed end to end;
#   sweep:      BloodMNIST rows (default recipe: vit, vit_conv_lsa × seeds 0 1 2) through
#               experiments/run_results.py, all runs at once on the one GPU (SWEEP_MODELS to choose others: e.g.
#               SWEEP_MODELS="cnn vit_conv_lsa+distilled" trains the CNN teachers, then the students distilled from
#               them with DISTILLATION_ARGS, default soft T 2 as on BreastMNIST; TRAIN_ARGS for e.g.
#               --num_train_epochs 50).
# Measured on one H200 (2026-12-04, BloodMNIST vit, default geometry, batch 128): the step is bound by kernel launches,
# not by the GPU: 52 steps/s alone in fp32, 40 in bf16 autocast (its casts are more launches), so PRECISION
# defaults to fp32 ("no"); 6 runs at once 19-21 steps/s each, 27-32 under MPS (started here when present); 9 at once
# under MPS about 20 each. A 100-epoch BloodMNIST ViT run is 9,400 steps: six at once (~30 steps/s each) take about
# 5-6 minutes, nine (~20 each, fewer for the 8-block vit_lsa) more than the sweep's 480 s, and a killed sweep keeps
# nothing: two models per call.
# Everything comes back as one archive, $OUT/device_results.tar.gz (one file to copy back from the GPU machine).
#
# Before, on the development machine, from the repository root (once):
#   bash experiments/device_session.sh --prepare      # wheels the GPU image lacks -> .whl/, the npz files -> .devdata/
# On the GPU machine, in a copy of the repository with .whl/ and .devdata/ (at most 600 s; OUT names the folder that
# is copied back):  bash experiments/device_session.sh
# Afterwards, on the development machine:  tar xzf <copied back>/device_results.tar.gz -C runs/   then
#   python experiments/run_results.py --collect_only --runs_dir runs/device/runs ...
# Budgets (seconds) are environment variables: THROUGHPUT_S, SEED_RECIPE_S, SWEEP_S (480: leave the call's start,
# the install and the archive time inside the 10 minutes), COMPILE_S. The image's own torch (2.11 on 2026-12-04) is
# used. A dry run on a CPU, with .devdata a folder (or a link to one) holding bloodmnist.npz:
#   DEVICE=cpu SKIP_INSTALL=1 PYTHON=.venv/bin/python STAGES=compile COMPILE_STEPS=12 COMPILE_JOBS=2 COMPILE_S=900 \
#       COMPILE_MODE=default bash experiments/device_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p .whl .devdata .git/info
    grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
    grep -qx "/.devdata/" .git/info/exclude || echo "/.devdata/" >> .git/info/exclude
    # The GPU image (Python 3.12) has torch, accelerate, transformers 5.17, huggingface_hub 1.33, pyarrow, pandas,
    # scikit-learn, matplotlib, tensorboard; it lacks these (transformers: the version this project is tested with).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        datasets==5.2.0 evaluate==0.4.6 medmnist==3.0.2 fire==0.7.1 termcolor==3.3.0 dill==0.4.1 \
        multiprocess==0.70.19 transformers==5.24.0 vit-pytorch==1.26.14 einops==0.8.2 || exit 1
    cp "${MEDMNIST_DATA_DIR:-../shared/data/medmnist}"/{bloodmnist,breastmnist}.npz .devdata/ || exit 1
    du -sh .whl .devdata
    exit 0
fi

OUT=${OUT:-/tmp/device-out}
WORK=${WORK:-/tmp/device-work}
mkdir -p "$OUT" "$WORK"
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_DATASETS_CACHE="$WORK/hf-cache"
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-no}
STAGES=${STAGES:-sweep}
LAUNCH="$PYTHON -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision $PRECISION --dynamo_backend no"
EXTRA=${EXTRA_TRAIN_ARGS:-}   # e.g. "--max_train_steps 2" for a dry run of this script on a CPU
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null; $PYTHON -c "import torch, transformers, datasets; print(torch.__version__, transformers.__version__, datasets.__version__)"; } \
    2>&1 | tee "$WORK/environment.txt"

if [[ " $STAGES " == *" throughput "* ]]; then
echo "== throughput benchmark"
timeout "${THROUGHPUT_S:-150}" $PYTHON benchmarks/throughput.py --device "$DEVICE" --steps 20 --repeats 2 --data_dir .devdata \
    --json "$WORK/throughput.json" ${THROUGHPUT_ARGS:-} 2>&1 | tee "$WORK/throughput.log"
fi

if [[ " $STAGES " == *" compile "* ]]; then
COMPILE_MODELS="${COMPILE_MODELS:-vit vit_lsa}"
COMPILE_JOBS=${COMPILE_JOBS:-3}
echo "== torch.compile (${COMPILE_MODE:-reduce-overhead}): BloodMNIST $COMPILE_MODELS, ${COMPILE_STEPS:-300} updates, eager" \
    "against compiled, alone and $COMPILE_JOBS at once, within ${COMPILE_S:-200} s"
compile_deadline=$(( $(date +%s) + ${COMPILE_S:-200} ))
rm -rf "$WORK/compile" && mkdir -p "$WORK/compile"
MPS_CONTROL=$(command -v nvidia-cuda-mps-control)
[ -n "$MPS_CONTROL" ] && "$MPS_CONTROL" -d && echo "MPS on"
compile_run() {  # name model eager|compiled: one train.py run into $WORK/compile/<name>, within what COMPILE_S leaves
    local name=$1 model=$2 flags="" left=$(( compile_deadline - $(date +%s) )) start=$(date +%s) status
    [ "$3" = compiled ] && flags="--torch_compile --torch_compile_mode ${COMPILE_MODE:-reduce-overhead}"
    if [ "$left" -lt 15 ]; then printf '%s\tskipped\t0\n' "$name" >> "$WORK/compile/runs.tsv"; return; fi
    # --dataloader_drop_last: one batch shape, so no second compilation inside the measured windows.
    timeout "$left" $LAUNCH train.py --model "$model" --dataset bloodmnist --data_dir .devdata --skip_test \
        --report_to none --output_dir "$WORK/compile/$name" --checkpoints_total_limit 1 --dataloader_drop_last \
        --max_train_steps "${COMPILE_STEPS:-300}" $flags $EXTRA > "$WORK/compile/$name.log" 2>&1
    status=$?
    printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - start ))" >> "$WORK/compile/runs.tsv"
}
# Alone first (the first compiled run also fills inductor's cache, which the runs at once then read), one model after
# the other, so that a run out of budget cuts the last comparison, not all of them.
for model in $COMPILE_MODELS; do
    for variant in eager compiled; do compile_run "$model-$variant-alone" "$model" "$variant"; done
    for variant in compiled eager; do
        for i in $(seq 1 "$COMPILE_JOBS"); do compile_run "$model-$variant-at-once-$i" "$model" "$variant" & done
        wait
    done
done
[ -n "$MPS_CONTROL" ] && echo quit | "$MPS_CONTROL"
$PYTHON experiments/compile_steps.py "$WORK/compile" "$WORK/compile_steps.json" 2>&1 | tee "$WORK/compile_steps.txt"
fi

if [[ " $STAGES " == *" seed "* ]]; then
echo "== the seed's BloodMNIST ViT + SPT + LSA recipe, 50 epochs"
start=$(date +%s)
timeout "${SEED_RECIPE_S:-150}" $LAUNCH train.py --model vit_lsa --dataset bloodmnist --recipe seed \
    --data_dir .devdata --output_dir "$WORK/seed-recipe" --report_to none --checkpoints_total_limit 1 $EXTRA \
    > "$WORK/seed-recipe.log" 2>&1
status=$?
tail -n 25 "$WORK/seed-recipe.log"
echo "exit $status after $(( $(date +%s) - start )) s" | tee -a "$WORK/seed-recipe.log"
fi

if [[ " $STAGES " == *" sweep "* ]]; then
SWEEP_MODELS="${SWEEP_MODELS:-vit vit_conv_lsa}"
echo "== BloodMNIST rows (default recipe ${TRAIN_ARGS:-}): $SWEEP_MODELS, three seeds each, all at once"
# Concurrent runs share the GPU far better under MPS; one short run first fills the datasets cache they all read.
MPS_CONTROL=$(command -v nvidia-cuda-mps-control)
[ -n "$MPS_CONTROL" ] && "$MPS_CONTROL" -d && echo "MPS on"
$LAUNCH train.py --model vit --dataset bloodmnist --data_dir .devdata --output_dir "$WORK/cache-warm-up" --report_to none \
    --max_train_steps 1 --skip_test > "$WORK/cache-warm-up.log" 2>&1
[[ " $STAGES " == *" compile "* ]] && SWEEP_S=${SWEEP_S:-$(( 480 - ${COMPILE_S:-200} ))}
timeout "${SWEEP_S:-480}" $PYTHON experiments/run_results.py --datasets bloodmnist --models $SWEEP_MODELS \
    --seeds 0 1 2 --jobs $(( 3 * $(wc -w <<< "$SWEEP_MODELS") )) --data_dir .devdata --runs_dir "$WORK/runs" --results_dir "$WORK/results" \
    --launch "$LAUNCH" --train_args "--report_to none --checkpoints_total_limit 1 ${TRAIN_ARGS:-} $EXTRA" \
    --distillation_args "${DISTILLATION_ARGS:---distillation_type soft --distillation_temperature 2}" 2>&1 | tail -n 40
[ -n "$MPS_CONTROL" ] && echo quit | "$MPS_CONTROL"
fi

# Bring back the records, not the weights.
tar czf "$OUT/device_results.tar.gz" -C "$WORK" --exclude='*.safetensors' --exclude='checkpoints' --exclude='hf-cache' \
    --exclude='*.bin' --exclude='*.pt' --exclude='*.pkl' .
ls -la "$OUT"
