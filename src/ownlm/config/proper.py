"""PROPER's settings: the group experts of stage 2 and the user routers of stage 3."""

from __future__ import annotations

from dataclasses import dataclass

from ownlm.config.fields import setting
from ownlm.errors import ConfigError, shown


@dataclass
class ProperSettings:
    """PROPER's group and user stages (Zhang et al. 2025). Defaults sized for the demo."""

    groups: int = setting(4, "number of group LoRA experts G", ge=1)
    groups_choices: list[int] | None = setting(
        None,
        "assignment 'user': candidate G, e.g. [2, 4, 6]: stage 2 is trained for each and the "
        "one with the best dev-user validation is kept (needs dev users); empty = use `groups`",
    )
    assignment: str = setting(
        "user",
        "how stage 2 routes: 'user' (each train user is in one group, found by likelihood EM "
        "from a k-means start; one gate vector per user for every layer) or 'token' "
        "(per-layer, per-token routers on the token and a user embedding)",
        choices=("user", "token"),
    )
    em_rounds: int = setting(
        4,
        "assignment 'user': rounds of (train each expert on its members for "
        "epochs/em_rounds, reassign every train user to the expert that best explains their "
        "history)",
        ge=1,
    )
    features: str = setting(
        "outputs",
        "assignment 'user': what k-means starts the groups from: 'outputs' (a user's label "
        "histogram, or mean MiniLM embedding of their answers) or 'outputs+inputs' (with "
        "their history embedding concatenated)",
        choices=("outputs", "outputs+inputs"),
    )
    r: int = setting(8, "rank of each group expert", ge=1)
    alpha: float = setting(8.0, "group experts' LoRA alpha", gt=0)
    targets: list[str] | None = setting(
        None,
        "modules carrying the experts; empty = the FFN's layers (gate/up/down_proj for Llama, "
        "c_fc,mlp.c_proj for GPT-2, intermediate/output dense for MiniLM)",
    )
    user_dim: int = setting(16, "size of the learned user embedding", ge=1)
    top_k: int = setting(0, "experts per token (0 = dense gating)", ge=0)
    balance: float = setting(0.1, "weight of the switch load-balancing term (stage 2)", ge=0)
    diversity: float = setting(
        0.5,
        "weight of the user-group term (stage 2): minus the user/expert mutual information, "
        "so each user picks a group and the groups stay diverse",
        ge=0,
    )
    lr: float = setting(5e-4, "stage-2 learning rate (AdamW)", gt=0)
    epochs: float = setting(2.0, "stage-2 passes over all train pairs", gt=0)
    batch_size: int = setting(16, "pairs per optimiser step", ge=1)
    user_r: int = setting(8, "rank r_u of each user's residual LoRA", ge=1)
    user_alpha: float = setting(8.0, "alpha of the user LoRA", gt=0)
    user_lr: float = setting(1e-4, "stage-3 learning rate (AdamW)", gt=0)
    user_epochs: float = setting(2.0, "stage-3 passes per user", gt=0)
    new_user: str = setting(
        "projection",
        "how a user without a stage-2 row gets their embedding: 'projection' (PCA of their "
        "history embedding, as the table was initialised) or 'neighbours' (mean learned "
        "embedding of the train users with the most similar histories)",
        choices=("projection", "neighbours"),
    )
    neighbours: int = setting(3, "train users averaged by 'neighbours'", ge=1)
    monitor: str = setting(
        "auto",
        "'user' assignment: what stage 2's early stopping watches on the dev users: 'loss', "
        "'metric', or 'auto' (the metric for label tasks, else validation.monitor); confident "
        "experts can raise the dev loss while they answer better",
        choices=("auto", "loss", "metric"),
    )
    route_new: str = setting(
        "auto",
        "'user' assignment: how a user stage 2 did not train on joins a group with no "
        "training (and where stage 3 starts): 'likelihood' (their history items' likelihood "
        "under each expert), 'answers' (how often each group's members gave their labels to "
        "such inputs: a TF-IDF logistic regression per group; label tasks), 'auto' (answers "
        "for label tasks, likelihood otherwise)",
        choices=("auto", "likelihood", "answers"),
    )
    router_lr: float = setting(
        5e-2,
        "learning rate of the routing parameters: routers and user embeddings (stage 2), the "
        "user's embedding or gate logits (stage 3; a sparse user takes few steps, which must "
        "be enough to move them to another group)",
        gt=0,
    )

    def check(self, prefix: str = "proper.") -> None:
        """Settings valid only together: the candidate G and the routing's top-k."""
        if self.groups_choices:
            self._check_groups_choices(prefix)
        if self.top_k > self.groups:
            raise ConfigError(
                f"config key {prefix}top_k={self.top_k} exceeds {prefix}groups={self.groups}; "
                f"route to at most every expert (0 = dense gating), e.g. --set {prefix}top_k=0"
            )

    def _check_groups_choices(self, prefix: str) -> None:
        """`groups_choices`: integers >= 1, and only with the 'user' assignment (the
        token routers have no per-user validation to choose G by)."""
        bad = [g for g in self.groups_choices if not isinstance(g, int) or g < 1]
        if bad:
            raise ConfigError(
                f"config key {prefix}groups_choices={self.groups_choices} holds {bad}; each "
                f"candidate G must be an integer >= 1, e.g. --set {prefix}groups_choices=[2,4,6]"
            )
        if self.assignment != "user":
            raise ConfigError(
                f"config key {prefix}groups_choices is only for {prefix}assignment=user (got "
                f"{shown(self.assignment)}); use --set {prefix}assignment=user or "
                f"--set {prefix}groups_choices=[]"
            )
