"""The HTTP status of ownlm's errors comes from their type alone."""

from __future__ import annotations

import pytest

from ownlm.errors import ConfigError, DataError, NotFoundError, RequestError, StoreError
from ownlm.serve.cache import AdapterRemoved
from ownlm.serve.errors import api_error, status_of


@pytest.mark.parametrize(
    "error, status",
    [
        (NotFoundError("x"), 404),
        (AdapterRemoved("x"), 404),
        (StoreError("x"), 409),
        (ConfigError("x"), 400),
        (DataError("x"), 400),
        (RequestError("x"), 400),
    ],
)
def test_status_by_type(error, status):
    assert status_of(error) == status


def test_status_ignores_the_message():
    assert status_of(StoreError("no adapter stored for user:1")) == 409
    assert status_of(NotFoundError("corrupt")) == 404


def test_missing_model_carries_openais_code():
    err = api_error(AdapterRemoved("gone; re-add it"), "model")
    assert (err.status, err.type, err.param, err.code) == (
        404,
        "not_found_error",
        "model",
        "model_not_found",
    )
    assert api_error(NotFoundError("none"), "user_id").code is None
    assert api_error(StoreError("corrupt"), "model").type == "invalid_request_error"


def test_an_unexpected_error_is_a_500_in_openais_shape_without_internals():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from ownlm.serve.errors import unexpected_error_handler

    app = FastAPI()
    app.add_exception_handler(Exception, unexpected_error_handler)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret /path/to/run detail")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    err = r.json()["error"]
    assert r.status_code == 500 and err["type"] == "server_error"
    assert "RuntimeError" in err["message"] and "secret" not in err["message"]
