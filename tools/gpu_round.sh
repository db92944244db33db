#!/usr/bin/env bash
# One training call on the lent GPU machine, run there from the repository root with .carry carried
# (build it with `python tools/prepare_carry.py`). See README, "Training on a GPU".
#
#   bash tools/gpu_round.sh RUN MINUTES [vaecodec train options of a new run]
#
# A new RUN starts with the given options (data: .carry/train); an existing runs/RUN resumes (options such as
# --steps then change the run). Training stops after MINUTES with a checkpoint (SIGINT); then the run is
# exported to $OUT/$NAME.pt (default mshp-n64), after the training history of its --init weights, and its
# config and log are copied to $OUT. The run folder stays on the machine for the next call only while it is
# warm (about 30 s), so chain calls at once.
set -euo pipefail
run=$1 minutes=$2
shift 2
out=${OUT:-/tmp/gpu-round}
device=${DEVICE:-cuda}
name=${NAME:-mshp-n64}  # weights name written into .vae headers; say the width if a round changes it
mkdir -p "$out"
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python3 -c "import constriction" 2>/dev/null; then  # the device image lacks it and has no internet
    pip install -q --no-index --no-deps --target /tmp/site .carry/whl/constriction-*.whl
fi

if [ -d "runs/$run/checkpoint" ]; then
    options=(--out "runs/$run" --resume "$@")  # e.g. --steps N once the first call has measured steps/s
else
    options=(--data .carry/train --out "runs/$run" --device "$device" "$@")
fi
mkdir -p runs
status=0
timeout -s INT "${minutes}m" python3 -m cli.main train "${options[@]}" > "runs/$run.log" 2>&1 || status=$?
tail -c 400 "runs/$run.log" | tr '\r' '\n' | tail -n 2
[ "$status" -eq 0 ] || [ "$status" -eq 124 ] || exit "$status"  # 124: stopped by the timeout, checkpointed

python3 -m cli.main export "runs/$run" -o "$out/$name.pt" > "$out/export.json"
cp "runs/$run/config.json" "$out/"
[ ! -f "runs/$run/log.jsonl" ] || cp "runs/$run/log.jsonl" "$out/"  # none before the first logged step
python3 - "$out/export.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("exported", report["model_hash"], "max overhead", report["max_overhead"],
      "symbols identical", report["symbols_identical"])
PY
