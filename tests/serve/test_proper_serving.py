"""PROPER's user-only users are served from the same batched slots as OPPU users
(issue #22, item 1, for proper-user): `<base>:<user>` picks the variant by the
documented order, `<base>:<user>@<variant>` names one, and the engine's answer for a
proper-user row equals the evaluated PROPER model's (the mixture of group experts with
the user's gates and residual), in a batch mixed with OPPU and base rows."""

from __future__ import annotations

import pytest
import torch

from ownlm.serve.errors import ApiError
from ownlm.store import Principal
from tests.conftest import TINY_OVERRIDES

ADMIN = Principal("t", None, True)
PROPER = [
    "proper.groups=2",
    "proper.r=2",
    "proper.alpha=4",
    "proper.epochs=1",
    "proper.em_rounds=1",
    "proper.batch_size=8",
    "proper.user_r=2",
    "proper.user_epochs=1",
    "user.epochs=1",
]


@pytest.fixture(scope="module")
def proper_run(tmp_path_factory):
    """A demo-tags run with stage 1, stage 2, and its test users' oppu and proper-user
    adapters (tiny sizes)."""
    from ownlm import run as run_module
    from ownlm.config import load_config
    from ownlm.pipeline.stages import train_stages
    from ownlm.run import Run

    root = tmp_path_factory.mktemp("proper-serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_module, "CACHE_DIR", root / "cache")
        keys = [f"output_dir={root / 'runs'}", "name=t", "data=demo-tags", "max_users=8"]
        run = Run(load_config(None, [*keys, "max_queries=2", *TINY_OVERRIDES, *PROPER]))
        train_stages(run, ["population", "groups", "users"], ["oppu", "proper-user"])
    return run


@pytest.fixture(scope="module")
def server(proper_run):
    from ownlm.config import ServeSettings
    from ownlm.serve.server import build_server

    return build_server(proper_run.dir, ServeSettings(cache_size=4, max_batch_size=4))


def _ids(server, n: int = 3) -> torch.Tensor:
    text = "a film about a heist that goes wrong"
    ids = server.backbone.tokenizer(text, return_tensors="pt").input_ids[:, :12]
    return ids.repeat(n, 1)


def _engine_logits(server, ids, slots: list[int]) -> torch.Tensor:
    with torch.inference_mode(), server.engine.lora.use(slots):
        return server.engine.model(input_ids=ids).logits.float()


def test_a_user_is_served_their_proper_user_model_by_default(proper_run, server):
    user = proper_run.split.test[0].user_id
    base = server.base
    assert server.resolve(f"{base}:{user}", ADMIN) == f"{user}/proper-user"
    assert server.resolve(f"{base}:{user}@proper-user", ADMIN) == f"{user}/proper-user"
    assert server.resolve(f"{base}:{user}@oppu", ADMIN) == user
    with pytest.raises(ApiError, match="proper-input models are not served"):
        server.resolve(f"{base}:{user}@proper-input", ADMIN)
    assert f"{base}:{user}" in server.model_ids(ADMIN)


def test_served_proper_user_rows_equal_the_evaluated_mixture_in_a_mixed_batch(proper_run, server):
    from ownlm.proper.users import load_user_model

    user = proper_run.split.test[0]
    with server.cache.lock:
        slots = server.cache.slots_for([f"{user.user_id}/proper-user", user.user_id, None])
    ids = _ids(server)
    mixed = _engine_logits(server, ids, slots)
    backbone = proper_run.base()  # a second copy: the mixture goes on it, not the served one
    want = load_user_model(proper_run, backbone, user, "user")(input_ids=ids[:1]).logits
    assert torch.allclose(mixed[0], want[0].float(), atol=1e-4), (mixed[0] - want[0]).abs().max()
    assert not torch.allclose(mixed[0], mixed[2], atol=1e-4)  # the user's model is not the base
    alone = _engine_logits(server, ids[:1], [slots[1]])
    assert torch.allclose(mixed[1], alone[0], atol=1e-5)  # the OPPU row is not disturbed


def test_forget_drops_every_variant_of_the_user(proper_run, server):
    user = proper_run.split.test[1].user_id
    with server.cache.lock:
        server.cache.slots_for([f"{user}/proper-user", user])
    assert {f"{user}/proper-user", user} <= set(server.cache.loaded())
    server.forget(user)
    assert not {f"{user}/proper-user", user} & set(server.cache.loaded())


def test_in_bfloat16_the_served_proper_user_is_the_evaluated_mixture(proper_run):
    """On a bfloat16 base the slots hold and compute the flattened LoRA in float32, as
    the mixture's experts are kept: the served row equals the evaluated PROPER model on
    the same bfloat16 base within 0.02 of the user's own effect on the logits (mean
    |served - evaluated| / mean |evaluated - base|; measured: 0.000)."""
    from ownlm.backbone.load import load_base
    from ownlm.config import ServeSettings
    from ownlm.proper.users import load_user_model
    from ownlm.serve.server import build_server

    settings = ServeSettings(cache_size=2, max_batch_size=2, dtype="bfloat16")
    served = build_server(proper_run.dir, settings)
    user = proper_run.split.test[0]
    with served.cache.lock:
        slots = served.cache.slots_for([f"{user.user_id}/proper-user", None])
    ids = _ids(served, 2)
    got = _engine_logits(served, ids, slots)
    backbone = load_base(proper_run.base_dir, "cpu", torch.bfloat16)
    with torch.inference_mode():
        bare = backbone.model(input_ids=ids[:1]).logits[0].float()
        want = load_user_model(proper_run, backbone, user, "user")(input_ids=ids[:1]).logits
    want = want[0].float()
    assert not torch.equal(want, bare)  # the user's model is not the base
    gap = float((got[0] - want).abs().mean() / (want - bare).abs().mean())
    assert gap <= 0.02, gap
