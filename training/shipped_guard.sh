# Sourced by the train_*_all.sh drivers (ROOT set to the repo): refuse_shipped SCRIPT UPDATE PATH...
# exits 2 when a PATH lies inside the repo's shipped pipelines/ folder and UPDATE is empty (no
# --update-shipped). Checked before the training; the assemble scripts check again.
refuse_shipped() {
  local script="$1" update="$2" shipped path
  shift 2
  [[ -z "$update" ]] || return 0
  shipped="$(cd "$ROOT/pipelines" && pwd -P)"
  for path in "$@"; do
    case "$(realpath -m "$path")/" in
      "$shipped"/*)
        echo "$script: $path is inside the shipped files ($shipped); pass --update-shipped to replace it" >&2
        exit 2 ;;
    esac
  done
}
