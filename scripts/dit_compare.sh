#!/usr/bin/env bash
# DIT against InstructSAM at one budget on the synthetic data (docs/dit.md). Every run starts from the shipped
# tiny model (docs/dit.md's figures: from instructsam-tiny 0.5): its SAM3 detector was trained inside InstructSAM;
# SAM3's text encoder, which the DIT rows prompt with, was never trained there. Each run then gets STEPS
# optimizer steps of the same recipe (the shipped stage 2's losses, warmup 50, cosine decay, the same data order):
#   sam3_text       SAM3's default text prompting (no insertion)      e_dit / l_dit      E-DIT / L-DIT
#   *_frozen        the same with SAM3's ViT frozen (DIT's * rows)      instructsam        the one-pass model
# Each is evaluated on synthetic:test:800 at one score threshold: the single-target samples with DIT's metrics,
# the others (no target or several) with the set metrics. Writes runs/dit/<run>/{init,train,single,multi} and
# docs/dit.md (table) + docs/dit.png.
#   bash scripts/dit_compare.sh [STEPS (default 800)] [SCORE_THRESHOLD (default 0.15)]
# RUNS="l_dit e_dit" trains only those; THREADS=N sets torch's CPU threads (default 2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." && source scripts/env.sh
steps="${1:-800}"
threshold="${2:-0.15}"
threads="${THREADS:-2}"
common=("train.max_steps=$steps" optim.warmup_steps=50 train.eval_every=0 data.val=null loss.detect_all=true
        loss.denoise=0.4 "train.num_threads=$threads")
for run in ${RUNS:-sam3_text e_dit l_dit sam3_text_frozen e_dit_frozen l_dit_frozen instructsam}; do
  out="runs/dit/$run"
  if [ "$run" = instructsam ]; then
    python -m instructsam_tools.training.train --config config/train_tiny.yaml "output_dir=$out/train" \
      model.checkpoint=checkpoints/instructsam-tiny "${common[@]}"
  else
    variant="${run%_frozen}"
    variant="${variant/sam3_text/none}"; variant="${variant/e_dit/end_to_end}"; variant="${variant/l_dit/layer_wise}"
    frozen=(); [ "$run" != "${run%_frozen}" ] && frozen=(--frozen-encoder)
    rm -rf "$out/init"
    python -m instructsam_tools.to_dit checkpoints/instructsam-tiny "$out/init" --variant "$variant" "${frozen[@]}"
    python -m instructsam_tools.training.train --config config/train_dit_tiny.yaml "output_dir=$out/train" \
      "model.checkpoint=$out/init" "${common[@]}"
  fi
  for targets in single multi; do
    python -m instructsam_tools.evaluation.evaluate --checkpoint "$out/train/final" --data synthetic:test:800 \
      --targets "$targets" --out "$out/$targets" --score-threshold "$threshold" --num-overlays 0 \
      --title "$run ($targets-target samples)" --threads "$threads"
  done
done
python -m instructsam_tools.dit_report runs/dit docs/dit.md --steps "$steps" --threshold "$threshold"
