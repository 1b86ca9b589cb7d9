"""The stage plan is checked before any work."""

import pytest

from ownlm.errors import ConfigError
from ownlm.train.stages import check_plan


def test_unknown_stages_and_variants_are_refused():
    check_plan(["population", "groups", "users"], ["oppu", "peft", "proper-input", "proper-user"])
    with pytest.raises(ConfigError, match="unknown stage"):
        check_plan(["everything"], [])
    with pytest.raises(ConfigError, match="unknown variant 'proper-x'"):
        check_plan(["users"], ["proper-x"])
