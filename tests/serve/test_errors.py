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
