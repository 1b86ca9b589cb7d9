"""OPPU's user stage (stage 3): what `ownlm train --stages users` runs for the oppu,
peft and oppu-control variants, and what each Ray actor runs on its users. It trains
`user.users_per_batch` users at a time in one batch (`oppu.batched`, causal backbones)
or one user after another (`oppu.sequential`); both give each user the adapter they
would get alone."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ownlm.log import get_logger
from ownlm.oppu.sequential import train_users

if TYPE_CHECKING:
    from ownlm.run import Run

log = get_logger(__name__)


def train_oppu_users(run: Run, variant: str, users=None, backbone=None) -> dict:
    """OPPU's user stage in this process (what `ownlm train` runs for the oppu, peft and
    oppu-control variants, and what each Ray actor runs on its users):
    `user.users_per_batch` users at a time in one batch (causal backbones), or one user
    after another."""
    if run.cfg.user.users_per_batch > 1:
        from ownlm.oppu.batched import train_users_batched, why_one_at_a_time

        backbone = backbone or run.base()
        reason = why_one_at_a_time(run, backbone)
        if reason is None:
            return train_users_batched(run, variant, users, backbone)
        log.info(reason)
    return train_users(run, variant, users, backbone)
