#!/usr/bin/env bash
# Train EarthCrafter end to end: the structure VAE, the texture VAE, then the occupancy, structure
# and texture flows on their frozen latents, each bounded by --minutes-per-stage, then assemble the
# pipeline. The pipeline goes to --dest (default OUTPUT_DIR/pipeline); only --update-shipped writes
# into the repo's shipped files (default dest pipelines/earthcrafter/default).
#
#   training/train_earthcrafter_all.sh --preset small --minutes-per-stage 8            # one GPU
#   training/train_earthcrafter_all.sh --preset tiny --cpu --steps 2 --output-dir /tmp/ec
#   training/train_earthcrafter_all.sh --preset small --minutes-per-stage 8 --stages struct_vae   # one stage per call
#   training/train_earthcrafter_all.sh --preset small --continue-from pipelines/earthcrafter/default   # train on
#   (--stages: comma-separated subset of struct_vae,tex_vae,occupancy,struct,tex,assemble, each resuming
#   its checkpoints; also --cache-tiles N for the flows' latent cache, --vgg-weights FILE for the texture VAE;
#   --continue-from PIPELINE warm-starts every stage from that pipeline's weights with the VAE encoders and the
#   condition encoder frozen, so the latent and condition spaces the flows were trained on stay put)
set -euo pipefail

PRESET=small
MINUTES=8
STEPS=1000000
OUT=runs/earthcrafter
DEST=
UPDATE_SHIPPED=()
DTYPE=fp16
CKPT=500
VAL=500
WORKERS=12
CACHE=()
VGG=()
STAGES=struct_vae,tex_vae,occupancy,struct,tex,assemble
CONTINUE=
LAUNCH=(accelerate launch)
EXTRA=(--use_ema --ema_decay 0.999 --allow_tf32 --checkpoints_total_limit 2)

while [[ $# -gt 0 ]]; do
  case "$1" in
    --preset) PRESET="$2"; shift 2 ;;
    --minutes-per-stage) MINUTES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --output-dir) OUT="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --update-shipped) UPDATE_SHIPPED=(--update_shipped); shift ;;
    --dtype) DTYPE="$2"; shift 2 ;;
    --checkpointing-steps) CKPT="$2"; shift 2 ;;
    --validation-steps) VAL="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --cache-tiles) CACHE=(--cache_tiles "$2"); shift 2 ;;
    --vgg-weights) VGG=(--vgg_weights "$2"); shift 2 ;;
    --stages) STAGES="$2"; shift 2 ;;
    --continue-from) CONTINUE="$2"; shift 2 ;;
    --cpu) LAUNCH=(python); EXTRA+=(--cpu); WORKERS=0; DTYPE=fp32; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "train_earthcrafter_all.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

for name in ${STAGES//,/ }; do
  case "$name" in
    struct_vae|tex_vae|occupancy|struct|tex|assemble) ;;
    *) echo "train_earthcrafter_all.sh: unknown stage $name in --stages" >&2; exit 2 ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$DEST" ]]; then
  if [[ ${#UPDATE_SHIPPED[@]} -gt 0 ]]; then DEST="$ROOT/pipelines/earthcrafter/default"; else DEST="$OUT/pipeline"; fi
fi
source "$ROOT/training/shipped_guard.sh"
refuse_shipped train_earthcrafter_all.sh "${UPDATE_SHIPPED[*]}" "$DEST"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
COMMON=(--preset "$PRESET" --max_train_steps "$STEPS" --max_train_minutes "$MINUTES" --checkpointing_steps "$CKPT"
        --validation_steps "$VAL" --dataloader_num_workers "$WORKERS" --resume_from_checkpoint latest "${EXTRA[@]}")

stage() {  # name, script, args...: run when --stages lists it
  local name="$1" start
  [[ ",$STAGES," == *",$name,"* ]] || return 0
  start=$(date +%s)
  shift
  "${LAUNCH[@]}" "$@" "${COMMON[@]}"
  echo "$name stage: $(( $(date +%s) - start )) s"
}
warm() {  # component: WARM=(--init_from CONTINUE/component) under --continue-from
  WARM=()
  [[ -z "$CONTINUE" ]] || WARM=(--init_from "$CONTINUE/$1")
}
FROZEN=()
if [[ -n "$CONTINUE" ]]; then
  [[ -f "$CONTINUE/model_index.json" ]] || { echo "train_earthcrafter_all.sh: --continue-from $CONTINUE is not a pipeline folder" >&2; exit 2; }
  FROZEN=(--freeze_encoder)
fi
warm struct_vae
stage struct_vae "$ROOT/training/train_earthcrafter_vae.py" --model struct --output_dir "$OUT/struct_vae" "${WARM[@]}" "${FROZEN[@]}"
warm tex_vae
stage tex_vae "$ROOT/training/train_earthcrafter_vae.py" --model tex --output_dir "$OUT/tex_vae" "${VGG[@]}" "${WARM[@]}" "${FROZEN[@]}"
OCC_ENCODER=()  # trained jointly with the occupancy flow, or kept from --continue-from
[[ -z "$CONTINUE" ]] || OCC_ENCODER=(--condition_encoder "$CONTINUE/condition_encoder")
warm occupancy_transformer
stage occupancy "$ROOT/training/train_earthcrafter_flow.py" --model occupancy --output_dir "$OUT/occupancy" "${CACHE[@]}" \
  "${OCC_ENCODER[@]}" "${WARM[@]}"
ENCODER=(--condition_encoder "$OUT/occupancy/condition_encoder")  # the pipeline's one condition encoder, frozen
STRUCT_VAE="$OUT/struct_vae/struct_vae" TEX_VAE="$OUT/tex_vae/tex_vae"
if [[ -n "$CONTINUE" ]]; then  # frozen encoders: the same latents and conditions, so the flows need not wait for the VAEs
  ENCODER=(--condition_encoder "$CONTINUE/condition_encoder") STRUCT_VAE="$CONTINUE/struct_vae" TEX_VAE="$CONTINUE/tex_vae"
fi
warm struct_flow
stage struct "$ROOT/training/train_earthcrafter_flow.py" --model struct --struct_vae "$STRUCT_VAE" \
  "${ENCODER[@]}" --output_dir "$OUT/struct" "${CACHE[@]}" "${WARM[@]}"
warm tex_flow
stage tex "$ROOT/training/train_earthcrafter_flow.py" --model tex --tex_vae "$TEX_VAE" \
  "${ENCODER[@]}" --output_dir "$OUT/tex" "${CACHE[@]}" "${WARM[@]}"
[[ ",$STAGES," == *",assemble,"* ]] || exit 0
python "$ROOT/training/assemble_earthcrafter.py" --preset "$PRESET" --struct_vae_dir "$OUT/struct_vae" \
  --tex_vae_dir "$OUT/tex_vae" --occupancy_dir "$OUT/occupancy" --struct_dir "$OUT/struct" --tex_dir "$OUT/tex" \
  --output_dir "$DEST" --dtype "$DTYPE" "${UPDATE_SHIPPED[@]}"
