#!/usr/bin/env bash
# Reproduces the README's real-data tables: train + eval each config, with wall time and
# peak memory. Run from the repository root after `make setup`; needs ../shared/data.
#   bash bench/real_data.sh                                    # OPPU tables
#   bash bench/real_data.sh studemo-minilm-proper lamp2-minilm-proper   # PROPER tables
#   TUNE=0 bash bench/real_data.sh ...   # the configured user budget instead of --tune
# Every stage validates on the dev users (docs/validation.md); with TUNE=1 (the default)
# `ownlm train --tune` first chooses the user stage's lr and epochs on them.
# Configs whose methods include PROPER also train stage 2 and both PROPER user stages,
# and their eval adds the groups view and the active-level study (histories cut to 2, 5, 10).
set -euo pipefail
export HF_HUB_OFFLINE=1
configs=${*:-lamp2-minilm studemo-minilm tweeteval-minilm lamp2-tiny lamp4-tiny studemo-tiny}
tune=(); if [ "${TUNE:-1}" = 1 ]; then tune=(--tune); fi
for name in $configs; do
  cfg=configs/$name.yaml
  stages=population,users; variants=oppu,peft; extra=()
  if grep -q "proper-input" "$cfg"; then
    stages=population,groups,users
    variants=oppu,proper-input,proper-user
    if grep -q "^methods:.*peft" "$cfg"; then variants=oppu,peft,proper-input,proper-user; fi
    if grep -q "^methods:.*oppu-control" "$cfg"; then  # the fair control (docs/proper.md)
      stages=population,groups,control,users; variants=$variants,oppu-control
    fi
    extra=(--groups-view --active-levels 2,5,10)
  fi
  echo "== $name: ownlm train -c $cfg --stages $stages --variants $variants ${tune[*]} && ownlm eval -c $cfg ${extra[*]}"
  /usr/bin/time -f "$name train: %e s wall, %M KB peak" .venv/bin/ownlm train -c "$cfg" --stages "$stages" --variants "$variants" "${tune[@]}"
  /usr/bin/time -f "$name eval: %e s wall, %M KB peak" .venv/bin/ownlm eval -c "$cfg" "${extra[@]}"
done
