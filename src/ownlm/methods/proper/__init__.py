"""PROPER (Zhang et al. 2025) as a method: the group model of stage 2 (`groups`) and the
user level of stage 3 (`users`), as they are stored, loaded, routed and exported.
Training them is `ownlm.train.groups` and `ownlm.train.proper_users`."""

from ownlm.methods.proper.groups import (
    GroupModel,
    group_model,
    groups_fingerprint,
    history_vectors,
    load_groups,
)
from ownlm.methods.proper.users import (
    METHODS,
    ROUTERS,
    export_user,
    load_user_model,
    prepare_user,
)

__all__ = [
    "METHODS",
    "ROUTERS",
    "GroupModel",
    "export_user",
    "group_model",
    "groups_fingerprint",
    "history_vectors",
    "load_groups",
    "load_user_model",
    "prepare_user",
]
