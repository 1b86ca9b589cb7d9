"""Non-parametric personal knowledge: retrieval over a user's history and profiles.

The dense index (sentence-transformers) is imported lazily from `ownlm.retrieval.dense`.
"""

from ownlm.retrieval.bm25 import UserIndex, rank_candidates, retrieve_for
from ownlm.retrieval.profiles import (
    PROFILE_INSTRUCTIONS,
    ProfileGenerator,
    build_profile,
    profile_prompt,
)

__all__ = [
    "PROFILE_INSTRUCTIONS",
    "ProfileGenerator",
    "UserIndex",
    "build_profile",
    "profile_prompt",
    "rank_candidates",
    "retrieve_for",
]
