"""Tokens are stored hashed, reach their own user only; personal prompts as in evaluation."""

from __future__ import annotations

import json

from ownlm.backbone.base import ANSWER_SEP
from ownlm.data.demo import make_demo_tags
from ownlm.data.tasks import get_task
from ownlm.serve.auth import TokenStore
from ownlm.serve.cli import create_token
from ownlm.serve.personalize import Personalizer
from ownlm.serve.protocol import CompletionBody


def test_tokens_are_hashed_and_scoped(tmp_path, capsys):
    token = create_token(tmp_path, "42", admin=False)
    assert token in capsys.readouterr().out  # printed once
    raw = (tmp_path / "tokens.json").read_text()
    assert token.split("-", 2)[2] not in raw  # only the scrypt hash is kept
    store = TokenStore(tmp_path)
    who = store.check(token)
    assert who.user == "42" and not who.admin
    assert who.may_use("42") and who.may_use(None) and not who.may_use("43")
    assert store.check(token[:-1] + ("x" if token[-1] != "x" else "y")) is None
    assert store.check("Bearer nonsense") is None
    admin = store.create(admin=True)
    assert TokenStore(tmp_path).check(admin).admin and store.has_admin()
    assert store.revoke_user("42") == 1 and store.check(token) is None
    assert all("scrypt" in e for e in json.loads((tmp_path / "tokens.json").read_text()).values())


def test_personalized_prompt_adds_profile_and_retrieval(live):
    ds = make_demo_tags(seed=0)
    user = ds.users[0]
    pers = Personalizer(get_task(ds.task), {"alice": user}, k=1, use_profile=True)
    text = user.queries[0].input
    prompt = pers.prompt("alice", text)
    assert prompt.startswith("User profile:") and prompt.endswith(text + ANSWER_SEP)


class _Stub:
    """A personalizer with a short profile: the toy tokenizer makes demo prompts too long."""

    def has(self, user):
        return user == "alice"

    def prompt(self, user, text):
        return "User profile: likes news\n" + text + ANSWER_SEP


def test_server_applies_personalization_switchably(live):
    text = "the user likes"
    server = live.server
    old, server.personalizer = server.personalizer, _Stub()
    try:
        body = CompletionBody(model="toy:alice", prompt=text, max_tokens=4)
        personal = server.build(body, "alice", text, chat=False)
        body.ownlm_personalize = False
        bare = server.build(body, "alice", text, chat=False)
    finally:
        server.personalizer = old
    assert len(personal.ids) > len(bare.ids)
    assert server.backbone.tokenizer.decode(bare.ids) == text


def test_personalizer_reads_the_runs_users(tmp_path):
    from ownlm.config import ExperimentConfig, save_config

    assert Personalizer.from_run(tmp_path) is None  # no config: served without user data
    save_config(
        ExperimentConfig(name="r", data="demo-tags", output_dir="elsewhere"),
        tmp_path / "config.yaml",
    )
    before = (tmp_path / "config.yaml").read_text()
    pers = Personalizer.from_run(tmp_path)
    assert pers is not None and pers.has("t000") and not pers.has("nobody") and not pers.has(None)
    assert (tmp_path / "config.yaml").read_text() == before  # serving never rewrites the run
