"""Users of other PEFT methods than LoRA (IA3, prompt tuning) in a served run: the
server starts and serves its LoRA users, and a request for one of the others is refused
(409) with what serves that method, never failing the batch it came in."""

from __future__ import annotations

import openai
import pytest

from ownlm.adapters.lora import detach
from ownlm.adapters.methods import inject_method
from ownlm.backbone.load import load_base
from ownlm.config import ServeSettings, UserSettings
from ownlm.errors import StoreError
from ownlm.serve.errors import status_of
from ownlm.serve.launch import serve_in_thread
from ownlm.serve.server import build_server
from ownlm.store import AdapterStore, Manifest, TokenStore
from ownlm.testing import toy_run

SIZE = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64}


def add_method_adapter(run_dir, user: str, method: str) -> None:
    """A fresh `method` adapter for `user`, stored as the user stage stores one."""
    backbone = load_base(run_dir / "base")
    model = inject_method(backbone, UserSettings(method=method), seed=1)
    try:
        manifest = Manifest("", "user/oppu", "toy", backbone.fingerprint(), {"method": method})
        AdapterStore(run_dir / "adapters").save(f"user:{user}", model.save_pretrained, manifest)
    finally:
        detach(backbone, model)


def test_ia3_and_prompt_users_are_refused_with_what_serves_them(tmp_path):
    toy_run(tmp_path, ["hal"], **SIZE)
    add_method_adapter(tmp_path, "ivy", "ia3")
    add_method_adapter(tmp_path, "pat", "prompt")
    server = build_server(tmp_path, ServeSettings(cache_size=2, max_batch_size=2))
    for user, name in (("ivy", "IA3"), ("pat", "prompt tuning")):
        with pytest.raises(StoreError, match=f"{name} adapter.*vanilla PEFT") as e:
            server.cache.reload(user)
        assert status_of(e.value) == 409 and user not in server.cache.loaded()

    admin = TokenStore(tmp_path).create(admin=True)
    uv, thread, port = serve_in_thread(server)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=admin)
        with pytest.raises(openai.APIStatusError, match="LoRA only") as refused:
            client.completions.create(model=f"{server.base}:ivy", prompt="the", max_tokens=2)
        assert refused.value.status_code == 409
        served = client.completions.create(model=f"{server.base}:hal", prompt="the", max_tokens=2)
        assert served.choices[0].finish_reason in ("stop", "length")
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
