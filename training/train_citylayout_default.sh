#!/usr/bin/env bash
# Train the shipped CityLayout default (`small` preset) on one H200, each stage bounded by
# --minutes-per-stage (default 7: ~8 min a stage with the city generation and the token cache),
# and ship it: the tokenizer first (OUTPUT_DIR/vq), then the transformer on its frozen tokens
# (OUTPUT_DIR/tokens), whose pipeline replaces --dest (default pipelines/citylayout/default) as a
# whole once it is complete (--update_shipped: the shipped files change only through this script).
#
#   training/train_citylayout_default.sh                                       # both stages, ships
#   training/train_citylayout_default.sh --stages tokens                       # one stage per call
#   training/train_citylayout_default.sh --continue-from pipelines/citylayout/default --output-dir runs/layout2
#   training/train_citylayout_default.sh --preset tiny --cpu --steps 2 --output-dir /tmp/cl --dest /tmp/cl/pipe
#   (each stage resumes its own checkpoints in OUTPUT_DIR; --continue-from PIPELINE warm-starts the tokenizer
#   and the transformer from that pipeline's weights, in a fresh OUTPUT_DIR)
set -euo pipefail

PRESET=small
MINUTES=7
VQ_STEPS=8000
TOKEN_STEPS=12000
OUT=runs/citylayout
DEST=
STAGES=vq,tokens
CONTINUE=
WORKERS=12
CITIES=48
LAUNCH=(accelerate launch)
EXTRA=(--use_ema --ema_decay 0.999 --allow_tf32 --mixed_precision bf16 --checkpoints_total_limit 1)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --minutes-per-stage) MINUTES="$2"; shift 2 ;;
    --steps) VQ_STEPS="$2"; TOKEN_STEPS="$2"; shift 2 ;;
    --output-dir) OUT="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --continue-from) CONTINUE="$2"; shift 2 ;;
    --cpu) LAUNCH=(python); EXTRA=(--cpu --use_ema --ema_decay 0.999); WORKERS=0; CITIES=4; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "train_citylayout_default.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for name in ${STAGES//,/ }; do
  [[ "$name" == vq || "$name" == tokens ]] || { echo "train_citylayout_default.sh: unknown stage $name in --stages" >&2; exit 2; }
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${DEST:-$ROOT/pipelines/citylayout/default}"
if [[ -n "$CONTINUE" && ! -f "$CONTINUE/model_index.json" ]]; then
  echo "train_citylayout_default.sh: --continue-from $CONTINUE is not a pipeline folder" >&2
  exit 2
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
# 48 cities of 1024 m for small (4 crops a side; 4 with --cpu), generated once into OUTPUT_DIR/cities
COMMON=(--preset "$PRESET" --num_cities "$CITIES" --cache_dir "$OUT/cities" --dataloader_num_workers "$WORKERS"
        --max_train_minutes "$MINUTES" --checkpointing_steps 1000 --validation_steps 1000 --logging_steps 50
        --report_to none --resume_from_checkpoint latest "${EXTRA[@]}")

stage() {  # name, args...: run when --stages lists it
  local name="$1" start
  [[ ",$STAGES," == *",$name,"* ]] || return 0
  start=$(date +%s)
  shift
  "${LAUNCH[@]}" "$ROOT/training/train_citylayout.py" --stage "$name" "$@" "${COMMON[@]}"
  echo "$name stage: $(( $(date +%s) - start )) s"
}
WARM=()
[[ -z "$CONTINUE" ]] || WARM=(--init_from "$CONTINUE/vqvae")
stage vq --output_dir "$OUT/vq" --max_train_steps "$VQ_STEPS" --train_batch_size 16 --learning_rate 2e-4 \
  --codebook_restart_every 200 "${WARM[@]}"
[[ -z "$CONTINUE" ]] || WARM=(--init_from "$CONTINUE/transformer")
stage tokens --output_dir "$OUT/tokens" --vqvae "$OUT/vq/vqvae" --max_train_steps "$TOKEN_STEPS" --train_batch_size 64 \
  --learning_rate 3e-4 --lr_scheduler constant_with_warmup --lr_warmup_steps 200 --label_smoothing 0.1 --outpaint_prob 0.25 \
  --pipeline_out "$DEST" --update_shipped "${WARM[@]}"
