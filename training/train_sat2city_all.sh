#!/usr/bin/env bash
# Train Sat2City end to end: both VAEs, then the dense, sparse and appearance diffusion stages,
# each bounded by --minutes-per-stage, then assemble the pipeline (fp16 safetensors by default)
# and an example height map for the demo. The pipeline goes to --dest (default OUTPUT_DIR/pipeline),
# the example to --examples-dir (default: an examples/ folder beside --dest). Only --update-shipped
# writes into the repo's shipped files: it makes the defaults pipelines/sat2city/default and
# pipelines/sat2city/examples (the demo's), and without it a --dest or --examples-dir there is refused.
#
#   training/train_sat2city_all.sh --preset small --minutes-per-stage 8 --update-shipped   # one GPU
#   (also --data-echo K and --latent-target sample|mean for the diffusion stages; default: the preset's)
#   training/train_sat2city_all.sh --preset tiny --cpu --steps 2 --output-dir /tmp/s2c --dest /tmp/s2c/pipe
set -euo pipefail

PRESET=small
MINUTES=8
STEPS=1000000
OUT=runs/sat2city
DEST=
EXAMPLES=
UPDATE_SHIPPED=()
DTYPE=fp16
CKPT=500
VAL=500
WORKERS=12
ECHO=1
LATENT=()
LAUNCH=(accelerate launch)
EXTRA=(--use_ema --ema_decay 0.999 --allow_tf32 --checkpoints_total_limit 2)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --minutes-per-stage) MINUTES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --output-dir) OUT="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --examples-dir) EXAMPLES="$2"; shift 2 ;;
    --update-shipped) UPDATE_SHIPPED=(--update_shipped); shift ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --checkpointing-steps) CKPT="$2"; shift 2 ;;
    --validation-steps) VAL="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --data-echo) ECHO="$2"; shift 2 ;;
    --latent-target) LATENT=(--latent_target "$2"); shift 2 ;;
    --cpu) LAUNCH=(python); EXTRA+=(--cpu); WORKERS=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "train_sat2city_all.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$DEST" ]]; then
  if [[ ${#UPDATE_SHIPPED[@]} -gt 0 ]]; then DEST="$ROOT/pipelines/sat2city/default"; else DEST="$OUT/pipeline"; fi
fi
EXAMPLES="${EXAMPLES:-$(dirname "$DEST")/examples}"
source "$ROOT/training/shipped_guard.sh"
refuse_shipped train_sat2city_all.sh "${UPDATE_SHIPPED[*]}" "$DEST" "$EXAMPLES"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
COMMON=(--preset "$PRESET" --max_train_steps "$STEPS" --max_train_minutes "$MINUTES" --checkpointing_steps "$CKPT"
        --validation_steps "$VAL" --dataloader_num_workers "$WORKERS" --resume_from_checkpoint latest "${EXTRA[@]}")

stage_start=$(date +%s)
"${LAUNCH[@]}" "$ROOT/training/train_sat2city_vae.py" --output_dir "$OUT/vae" "${COMMON[@]}"
echo "VAE stage: $(( $(date +%s) - stage_start )) s"
for stage in dense sparse appearance; do
  stage_start=$(date +%s)
  "${LAUNCH[@]}" "$ROOT/training/train_sat2city_diffusion.py" --stage "$stage" --vae_dir "$OUT/vae" \
    --output_dir "$OUT/$stage" --data_echo "$ECHO" "${LATENT[@]}" "${COMMON[@]}"
  echo "$stage stage: $(( $(date +%s) - stage_start )) s"
done
python "$ROOT/training/assemble_sat2city.py" --preset "$PRESET" --vae_dir "$OUT/vae" --dense_dir "$OUT/dense" \
  --sparse_dir "$OUT/sparse" --appearance_dir "$OUT/appearance" --output_dir "$DEST" --dtype "$DTYPE" \
  --examples_dir "$EXAMPLES" "${UPDATE_SHIPPED[@]}"
