#!/usr/bin/env bash
# Reproduces the README's real-data tables: train + eval each config, with wall time and
# peak memory. Run from the repository root after `make setup`; needs ../shared/data.
set -euo pipefail
export HF_HUB_OFFLINE=1
configs=${*:-lamp2-minilm studemo-minilm lamp2-tiny lamp4-tiny studemo-tiny}
for name in $configs; do
  cfg=configs/$name.yaml
  stages=population,users; variants=oppu,peft
  if grep -q "proper-input" "$cfg"; then stages=population,groups,users; variants=oppu,peft,proper-input,proper-user; fi
  echo "== $name: ownlm train -c $cfg --stages $stages --variants $variants && ownlm eval -c $cfg"
  /usr/bin/time -f "$name train: %e s wall, %M KB peak" .venv/bin/ownlm train -c "$cfg" --stages "$stages" --variants "$variants"
  /usr/bin/time -f "$name eval: %e s wall, %M KB peak" .venv/bin/ownlm eval -c "$cfg"
done
