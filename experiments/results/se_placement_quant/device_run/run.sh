#!/bin/bash
# One device call: pre-flight, then Experiment F's remaining nets side by side, then pack (as run on 2026-11-30).
# It reads an ignored, carried .dev/: site/ (mnist1d and mlxtend copied from the venv; the GPU image lacks them),
# check.py and pack.py (beside this file), check_run/ (one CPU-trained L = 4 net: last/ + metrics.jsonl),
# expected.json (this machine's data hashes and quick evaluation of that net) and l4cache/ (the L = 4 eval JSONs).
T0=$(date +%s)
export PYTHONPATH=$PWD/src:$PWD/.dev/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
C=$OUT/check.txt
{ date; nproc --all; free -g | head -2; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; lscpu | grep "Model name"; } > $C 2>&1
if command -v nvidia-cuda-mps-control >/dev/null; then
  nvidia-cuda-mps-control -d >> $C 2>&1 && echo "MPS daemon started" >> $C
  if ! timeout 40 python3 -c "import torch; x=torch.ones(8, device='cuda'); print('mps client ok', float((2*x).sum()))" >> $C 2>&1; then
    echo "MPS client failed: stopping MPS" >> $C; echo quit | nvidia-cuda-mps-control >> $C 2>&1; sleep 2
  fi
else echo "no MPS control binary" >> $C; fi
mkdir -p results/se_placement_quant_runs && cp -r .dev/l4cache/mnist1d results/se_placement_quant_runs/
timeout 90 python3 .dev/check.py >> $C 2>&1
read TD ED < .dev/devices || { TD=cpu; ED=cpu; }
echo "pre-flight done at $(( $(date +%s) - T0 )) s: train $TD eval $ED" >> $C
W=${W:-15}
DEPTHS=4,8,16,32; SETS=mnist1d,mnist5k
[ "$TD" = cpu ] && { DEPTHS=4,8; SETS=mnist1d; }  # no GPU: only the shallow nets fit the time
( while sleep 40; do python3 .dev/pack.py $OUT >/dev/null 2>&1; done ) &
PK=$!
LEFT=$(( ${BUDGET:-530} - ($(date +%s) - T0) ))
timeout $LEFT python3 experiments/se_placement_quant.py --depths $DEPTHS --seeds 0-4 --datasets $SETS \
  --workers $W --device $TD --eval-device $ED --deadline-s $(( LEFT * 6 / 10 )) --no-summary \
  --out results/fchunk > $OUT/log.txt 2>&1
echo "F exit $? at $(( $(date +%s) - T0 )) s" >> $C
kill $PK; pkill -f se_placement_quant; nvidia-smi >> $C 2>&1
python3 .dev/pack.py $OUT --weights >> $C 2>&1
echo "packed at $(( $(date +%s) - T0 )) s" >> $C
