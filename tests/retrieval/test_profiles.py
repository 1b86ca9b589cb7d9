import pytest

from ownlm.errors import ConfigError
from ownlm.retrieval.profiles import PROFILE_INSTRUCTIONS, build_profile, profile_prompt


def test_classification_profile_is_the_label_distribution():
    outs = ["comedy", "action", "comedy", "drama", "action", "comedy", "sci-fi"]
    got = build_profile("classification", outs, labels=["action", "comedy", "drama", "sci-fi"])
    # 3/7 = 43%, 2/7 = 29%, 1/7 = 14% (drama before sci-fi: label order breaks the tie)
    assert got == "This user's most used labels: comedy (43%), action (29%), drama (14%)."


def test_rating_profile():
    got = build_profile("rating", ["4", "5", "4", "3", "2"])
    # mean = 18/5 = 3.6; 4 occurs twice
    assert got == "This user's scores: mean 3.6, most common 4 (over 5 ratings)."


def test_generation_profile_habits():
    outs = [
        "BREAKING: Stocks fall again?",
        "BREAKING: Markets rally hard?",
        "Why stocks matter?",
        "Stocks and bonds",
    ]
    got = build_profile("generation", outs)
    assert "about 4 words" in got
    assert "stocks" in got and "breaking" in got
    assert "often starts with 'BREAKING:'" in got
    assert "often ends with '?'" in got
    assert got == build_profile("generation", outs)  # deterministic


def test_profiles_are_short_and_empty_history_is_empty():
    long_labels = [f"a very long label name number {i} " * 3 for i in range(5)]
    assert len(build_profile("classification", long_labels)) < 200
    long_texts = [" ".join(f"word{j}x" for j in range(60))] * 3
    assert len(build_profile("generation", long_texts)) < 200
    assert build_profile("generation", []) == ""
    assert build_profile("rating", ["n/a"]) == ""
    with pytest.raises(ConfigError):
        build_profile("regression", ["1"])


def test_llm_generator_hook_gets_the_oppu_prompt():
    seen = []

    def generator(prompt: str) -> str:
        seen.append(prompt)
        return "  Most popular tag: comedy  "

    got = build_profile(
        "classification",
        ["comedy"] * 12,
        inputs=[f"movie {i}" for i in range(12)],
        generator=generator,
    )
    assert got == "Most popular tag: comedy"
    assert seen[0].startswith(PROFILE_INSTRUCTIONS["classification"])
    assert seen[0].count("- input:") == 10  # OPPU samples 10 history items
    assert profile_prompt("rating", ["4"], ["good film"]) == profile_prompt(
        "rating", ["4"], ["good film"]
    )
