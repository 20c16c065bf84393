#!/usr/bin/env bash
# Train the `small` GaussianCity preset on one H100 (~8-10 min including data and gsplat's
# first-use compile) and ship it: the pipeline goes to pipelines/gaussiancity/default/
# (~10 MB of safetensors) and the held-out procedural layout to
# pipelines/gaussiancity/example_layout/ (the demo's layout), each replaced as a whole once
# training has finished (--update_shipped: the shipped files change only through this script).
# OUTPUT_DIR must not hold an earlier run (train_gaussiancity.py refuses one it would overwrite).
#   usage: bash training/train_gaussiancity_default.sh [OUTPUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gaussiancity_small}"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD/src"
python training/train_gaussiancity.py \
  --preset small --data procedural --num_cities 12 --city_size_m 192 --views_per_city 24 \
  --resolution 256x192 --train_batch_size 2 --max_train_steps 20000 --max_train_minutes 7 \
  --learning_rate 1e-4 --discriminator_lr 1e-5 --discriminator_warmup_steps 500 \
  --use_ema --ema_decay 0.999 --checkpointing_steps 1000 --checkpoints_total_limit 1 \
  --validation_steps 250 --logging_steps 50 --report_to none --allow_tf32 \
  --output_dir "$OUT" --pipeline_out pipelines/gaussiancity/default \
  --example_layout_out pipelines/gaussiancity/example_layout --update_shipped
du -sh pipelines/gaussiancity/default pipelines/gaussiancity/example_layout
python benchmarks/gaussiancity_quality.py --pipeline pipelines/gaussiancity/default --out "$OUT/quality"
