"""The PEFT-methods study on a 1-layer Llama: one OPPU row per method, trained in
memory (the run's stores untouched), with PEFT's parameter counts, the saved bytes,
train seconds, intervals, paired differences to LoRA, the JSON and the chart."""

import json

from ownlm.run import Run
from ownlm.studies.peft_methods import peft_methods_study
from ownlm.train.population import train_population

HIDDEN, FFN, LAYERS, R, VIRTUAL = 32, 64, 1, 8, 8  # tests/conftest.py's tiny Llama


def test_study_compares_lora_ia3_and_prompt_tuning(tiny_cfg, tmp_path):
    run = Run(tiny_cfg)
    train_population(run)
    payload = peft_methods_study(run, max_users=2, out_dir=tmp_path / "eval")

    rows = {row["method"]: row for row in payload["table"].values() if row["method"]}
    assert list(rows) == ["lora", "ia3", "prompt"]
    assert payload["users"] == 2 and not run.store().names("user")  # nothing stored
    expected = {  # what PEFT trains, counted by hand
        "lora": LAYERS * 2 * R * (HIDDEN + HIDDEN),  # q_proj, v_proj: r * (in + out)
        "ia3": LAYERS * (HIDDEN + HIDDEN + FFN),  # k_proj, v_proj outputs; down_proj input
        "prompt": VIRTUAL * HIDDEN,
    }
    for method, row in rows.items():
        assert row["trainable_params"] == expected[method]
        assert row["users_trained"] == 2 and row["bytes_per_user"] > 4 * expected[method]
        assert row["train_s_per_user"] > 0 and 0 <= row["metrics"]["accuracy"] <= 1
        low, high = row["interval"]
        assert low <= row["metrics"]["accuracy"] <= high
    assert rows["lora"]["vs_lora"] is None
    assert [c["baseline"] for c in payload["comparisons"]] == ["oppu-lora", "oppu-lora"]
    diff = rows["ia3"]["metrics"]["accuracy"] - rows["lora"]["metrics"]["accuracy"]
    assert abs(rows["ia3"]["vs_lora"]["diff"] - diff) < 1e-9
    refs = [name for name, row in payload["table"].items() if row["reference"]]
    assert {"population-majority", "user-majority"} <= set(refs)

    written = json.loads((tmp_path / "eval" / "peft_methods.json").read_text())
    assert written["table"]["oppu-ia3"]["trainable_params"] == expected["ia3"]
    assert (tmp_path / "eval" / "peft_methods.png").stat().st_size > 0
