#!/usr/bin/env bash
# Stage 1's geometry pilot (docs/pretraining.md): the tiny SAM3 trained on concept phrases (config/train_pcs_tiny.yaml,
# after its 300-step first phase on 64 images)
# at 112 px (an 8x8 token grid, config/model_tiny_112.yaml, phrase images at 128 px) and at 224 px (16x16 tokens,
# config/model_tiny_224.yaml, phrase images at 224 px), side by side for the same wall-clock time, one CPU thread
# each; then each evaluated on concept phrases (synthetic_phrases:test:800) and on the instruction test split.
#   bash scripts/pcs_pilot.sh [STEPS_112 (default 2400)] [STEPS_224 (default 650)]   (second phase; ~45 min)
# Writes runs/pcs_pilot/<geometry>/{base,init,memorise,train,phrases,instructions}; metrics.jsonl in each train/ has the
# learning curve against elapsed seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." && source scripts/env.sh
declare -A steps=([112]="${1:-2400}" [224]="${2:-650}") data_size=([112]=128 [224]=224)
train() {
  local g="$1" out="runs/pcs_pilot/$1"
  rm -rf "$out/base" "$out/init"
  python -m instructsam_tools.tiny "$out/base" --config "config/model_tiny_$g.yaml"
  python -m instructsam_tools.to_dit "$out/base" "$out/init" --variant none
  local common=("data.image_size=${data_size[$g]}" train.num_threads=1 "matcher.mask_cost_size=$((g / 112 * 32))")
  python -m instructsam_tools.training.train --config config/train_pcs_tiny_memorise.yaml \
    "output_dir=$out/memorise" "model.checkpoint=$out/init" "${common[@]}"
  python -m instructsam_tools.training.train --config config/train_pcs_tiny.yaml "output_dir=$out/train" \
    "model.checkpoint=$out/memorise/final" "train.max_steps=${steps[$g]}" optim.warmup_steps=100 \
    train.eval_every=250 "${common[@]}"
}
evaluate() {
  local g="$1" out="runs/pcs_pilot/$1"
  python -m instructsam_tools.evaluation.evaluate --checkpoint "$out/train/final" --data synthetic_phrases:test:800 \
    --image-size "${data_size[$g]}" --out "$out/phrases" --num-overlays 8 --threads 1 --title "stage 1, $g px: phrases"
  python -m instructsam_tools.evaluation.evaluate --checkpoint "$out/train/final" --data synthetic:test:800 \
    --image-size "${data_size[$g]}" --out "$out/instructions" --num-overlays 0 --threads 1 \
    --title "stage 1, $g px: instructions"
}
mkdir -p runs/pcs_pilot
for g in ${GEOMETRIES:-112 224}; do (train "$g" > "runs/pcs_pilot/$g.log" 2>&1; evaluate "$g" >> "runs/pcs_pilot/$g.log" 2>&1) &
done
wait
tail -n 1 runs/pcs_pilot/*.log
