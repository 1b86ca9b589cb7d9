"""OPPU's user stage in this process, batched or not: what `ownlm train` runs for the
oppu and peft variants, and what each Ray actor runs on its users."""

from __future__ import annotations


def train_user_stage(run, variant: str, users=None, backbone=None) -> dict:
    """OPPU's user stage in this process: `user.users_per_batch` users at a time in one
    batch (causal backbones), or one user after another."""
    from ownlm.train.users import train_users

    if run.cfg.user.users_per_batch > 1:
        from ownlm.train.batched_users import train_users_batched

        return train_users_batched(run, variant, users, backbone)
    return train_users(run, variant, users, backbone)
