#!/usr/bin/env bash
# One call on a GPU machine that gets a copy of the working tree with .carry (python tools/prepare_carry.py):
# the GPU-only checks, then training until shortly before the call's time limit, then everything needed to
# ship the weights or to merge the round into the CPU run. See README, "Training on a GPU".
#
#   LIMIT_S=600 bash tools/gpu_round.sh RUN [vaecodec train options of a new run]
#
# 1. Checks (at most CHECK_S seconds, first call of a RUN only): python -m benchmarks.gpu_checks, CUDA encode
#    -> CPU decode, GPU batch throughput, bf16 synthesis accuracy -> $OUT/gpu_checks.json.
# 2. Training: a new RUN starts with the given options (data .carry/train; add --init .carry/init.pt to go on
#    from a carried CPU run); an existing runs/RUN resumes. SIGINT at LIMIT_S - EXPORT_S seconds after the
#    call began; the run checkpoints and stops.
# 3. $OUT gets the weights ($NAME.pt, default mshp-n64, after the training history of the --init weights), the
#    run's config.json and log.jsonl, and checkpoint/part-* (model and optimizer; merge them into the CPU run
#    with tools/merge_gpu_round.py). At most 8 files come back: this writes 7 at most.
# The run folder stays on the machine only while it is warm, so a next call that resumes must follow at once.
set -euo pipefail
started=$SECONDS
run=$1
shift
out=${OUT:-/tmp/gpu-round}
device=${DEVICE:-cuda}
name=${NAME:-mshp-n64}  # weights name written into .vae headers; say the width if a round changes it
limit_s=${LIMIT_S:-600}
check_s=${CHECK_S:-90}
export_s=${EXPORT_S:-75}  # the stop, the checkpoint, the export and its verification
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "import constriction" 2>/dev/null; then  # the device image lacks it and has no internet
    pip install -q --no-index --no-deps --target /tmp/site .carry/whl/constriction-*.whl
fi

if [ -d "runs/$run/checkpoint" ]; then
    options=(--out "runs/$run" --resume "$@")  # e.g. --steps N once the first call has measured steps/s
else
    if [ "$device" = cuda ]; then
        timeout "${check_s}s" "$python" -m benchmarks.gpu_checks --out "$out" || echo "GPU checks: status $?"
    fi
    options=(--data .carry/train --out "runs/$run" --device "$device" "$@")
fi
mkdir -p runs
train_s=$((limit_s - (SECONDS - started) - export_s))
[ "$train_s" -gt 0 ] || { echo "no time left to train (limit ${limit_s}s)"; exit 1; }
status=0
timeout -s INT "${train_s}s" "$python" -m cli.main train "${options[@]}" > "runs/$run.log" 2>&1 || status=$?
tail -n 3 "runs/$run.log"
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || exit "$status"  # 124: stopped by the timeout, checkpointed

"$python" -m cli.main export "runs/$run" -o "$out/$name.pt" --force --verify-images 2 > "runs/$run.export.json"
"$python" - "runs/$run.export.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("exported", report["model_hash"], "max overhead", report["max_overhead"],
      "symbols identical", report["symbols_identical"])
PY
cp "runs/$run/config.json" "$out/"
[ ! -f "runs/$run/log.jsonl" ] || cp "runs/$run/log.jsonl" "$out/"  # none before the first logged step
mkdir -p "$out/checkpoint"
cp "runs/$run/checkpoint/"part-* "$out/checkpoint/"
echo "call took $((SECONDS - started)) s of ${limit_s} s"
