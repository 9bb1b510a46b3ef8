#!/usr/bin/env bash
# The two ablations the design rests on, at one training budget: hybrid vs causal query attention (K = 16) and
# K = 4 / 16 / 64 queries (hybrid). Each run trains a fresh tiny model from the same seed with the shipped two-stage
# recipe: stage 1 (config/train_tiny_stage1.yaml, or the variant's config/train_tiny_<variant>.yaml, which is stage 1
# with one change; 300 steps on 64 images) and stage 2 (config/train_tiny_stage2.yaml, full data) cut to STEPS
# optimizer steps; then it is evaluated on synthetic:test:800 at one score threshold for all.
# Writes runs/ablations/<run>/{stage1,stage2,eval} and the table docs/ablations.md.
#   bash scripts/ablations.sh [STAGE2_STEPS (default 500)] [SCORE_THRESHOLD (default 0.02)]
# THREADS=1 in the environment sets torch's CPU threads per run (default 2). RUNS="tiny_k4 tiny_k64" trains only
# those runs, so two shells can share the work (THREADS=1 each); the table lists every run evaluated so far.
# SEED=1 trains with that seed (model initialisation and data order) into runs/ablations_seed1, with its table in
# runs/ablations_seed1/ablations.md, to see how much of a difference between runs is the seed's.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/env.sh"
cd "$REPO"
steps="${1:-500}"
threshold="${2:-0.02}"
out=runs/ablations doc=docs/ablations.md seed=()
if [ -n "${SEED:-}" ]; then out="runs/ablations_seed$SEED" doc="$out/ablations.md" seed=("seed=$SEED"); fi
threads="train.num_threads=${THREADS:-2}"
for run in ${RUNS:-tiny tiny_causal tiny_k4 tiny_k64}; do
  stage1="config/train_$run.yaml"
  [ "$run" = tiny ] && stage1=config/train_tiny_stage1.yaml
  python -m instructsam_tools.training.train --config "$stage1" "output_dir=$out/$run/stage1" "$threads" "${seed[@]}"
  # stage 2's schedule is cut to STEPS (warmup and cosine decay included), so each run ends at its minimum LR
  python -m instructsam_tools.training.train --config config/train_tiny_stage2.yaml "output_dir=$out/$run/stage2" \
    "model.checkpoint=$out/$run/stage1/final" "train.max_steps=$steps" optim.warmup_steps=50 train.eval_every=0 \
    data.val=null "$threads" "${seed[@]}"
  python -m instructsam_tools.evaluation.evaluate --checkpoint "$out/$run/stage2/final" --data synthetic:test:800 \
    --out "$out/$run/eval" --score-threshold "$threshold" --num-overlays 0 --title "ablation $run" \
    --threads "${THREADS:-2}"
done
# the table is regenerated; the hand-written notes after the marker line in docs/ablations.md are kept
python - "$out" "$steps" "$threshold" "$doc" <<'PY'
import json, sys
from pathlib import Path
out, steps, threshold, doc = sys.argv[1:]
MARKER = "<!-- notes below are kept when scripts/ablations.sh regenerates the table above -->"
old = Path(doc).read_text() if Path(doc).is_file() else ""
notes = old[old.index(MARKER):] if MARKER in old else MARKER + "\n"
lines = []
print = lambda *a: lines.append(" ".join(str(x) for x in a))
runs = [("tiny", "hybrid", 16), ("tiny_causal", "causal", 16), ("tiny_k4", "hybrid", 4), ("tiny_k64", "hybrid", 64)]
done = {run: json.load(open(f)) for run, _, _ in runs if (f := Path(f"{out}/{run}/eval/metrics.json")).is_file()}
print(f"# Ablations at one budget: the two-stage recipe (300 + {steps} steps) from the same fresh tiny model\n")
print(f"Command: `bash scripts/ablations.sh {steps} {threshold}` (test split, synthetic:test:800, "
      f"score threshold {threshold} for every run).\n")
print("| run | query attention | K | mAP | AP50 | gIoU | N-acc | T-acc | duplicate rate | pred_overlap |")
print("|---|---|---|---|---|---|---|---|---|---|")
fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"
for run, mode, k in runs:
    if run not in done:
        print(f"| {run} | {mode} | {k} | not run yet | | | | | | |")
        continue
    m = done[run]
    print(f"| {run} | {mode} | {k} | {fmt(m['mAP'], 4)} | {fmt(m['AP50'], 4)} | {fmt(m['gIoU'], 3)} | "
          f"{fmt(m['N-acc'], 3)} | {fmt(m['T-acc'], 3)} | {fmt(m['duplicate_rate'], 3)} | "
          f"{fmt(m['pred_overlap'], 3)} |")
if done:  # one group of bars per run
    from instructsam_tools.evaluation.report import plot_family_bars
    plot_family_bars({"per_family": done}, Path(doc).with_suffix(".png"),
                     metrics=("mAP", "AP50", "gIoU", "N-acc", "duplicate_rate", "pred_overlap"),
                     title=f"Ablations: two-stage recipe, 300 + {steps} steps")
    print(f"\n![ablation metrics per run]({Path(doc).with_suffix('.png').name})\n")
Path(doc).write_text("\n".join(lines) + "\n\n" + notes)
PY
cat "$doc"
