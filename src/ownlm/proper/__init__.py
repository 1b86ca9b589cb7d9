"""PROPER (Zhang et al. 2025) as a method: the group model of stage 2 (`experts`) and the
user level of stage 3 (`users`), as they are stored, loaded, routed and exported.
Training them is `ownlm.proper.group_stage` and `ownlm.proper.user_stage`."""

from ownlm.proper.experts import GroupModel, group_model, groups_fingerprint, load_groups
from ownlm.proper.routing import history_vectors
from ownlm.proper.users import (
    ROUTERS,
    export_adapter,
    load_user_model,
    prepare_user,
)

__all__ = [
    "ROUTERS",
    "GroupModel",
    "export_adapter",
    "group_model",
    "groups_fingerprint",
    "history_vectors",
    "load_groups",
    "load_user_model",
    "prepare_user",
]
