"""The official `openai` Python package against a running gateway (started by .ci/openai).

Environment: AIO_BASE_URL (the gateway), AIO_KEY (an account with credits), AIO_BROKE_KEY (an account
without). The gateway's simulated provider makes the images; its `openai.sync_timeout_secs` is 10.
Every check raises on failure; the exit status is non-zero if any did.
"""

import base64
import os
import sys
import traceback

import openai
from openai import OpenAI

BASE = os.environ["AIO_BASE_URL"]
client = OpenAI(base_url=f"{BASE}/v1", api_key=os.environ["AIO_KEY"], max_retries=0)
broke = OpenAI(base_url=f"{BASE}/v1", api_key=os.environ["AIO_BROKE_KEY"], max_retries=0)
MODEL = "seedream-4-5"
PNG = b"\x89PNG\r\n\x1a\n"


def expect(error_type, status, call):
    """`call` raises the SDK's own `error_type` with `status`; returns the error."""
    try:
        call()
    except error_type as error:
        assert error.status_code == status, (error_type.__name__, error.status_code, error)
        return error
    raise AssertionError(f"expected {error_type.__name__}")


def test_generate_url():
    result = client.images.generate(model=MODEL, prompt="A lake at dawn", size="1536x1024", quality="high")
    assert len(result.data) == 1, result
    assert result.data[0].url.startswith(f"{BASE}/files/"), result.data[0].url
    assert result.created > 0


def test_generate_b64_json_two_images():
    result = client.images.generate(model=MODEL, prompt="Two foxes", n=2, response_format="b64_json")
    assert len(result.data) == 2, result
    for image in result.data:
        assert base64.b64decode(image.b64_json).startswith(PNG)


def test_edit_with_a_file():
    source = client.images.generate(model=MODEL, prompt="A red chair", response_format="b64_json")
    png = base64.b64decode(source.data[0].b64_json)
    result = client.images.edit(model=MODEL, image=("chair.png", png, "image/png"), prompt="Make it blue")
    assert len(result.data) == 1 and result.data[0].url.startswith(f"{BASE}/files/"), result


def test_models_list_and_retrieve():
    ids = [model.id for model in client.models.list()]
    assert MODEL in ids and "seedream/4.5-edit" in ids, ids
    assert client.models.retrieve(MODEL).owned_by == "ByteDance"


def test_errors_are_the_sdks_own_exceptions():
    stranger = OpenAI(base_url=f"{BASE}/v1", api_key="aio_" + "0" * 40, max_retries=0)
    expect(openai.AuthenticationError, 401, lambda: stranger.images.generate(model=MODEL, prompt="x"))
    error = expect(openai.BadRequestError, 400, lambda: client.images.generate(model=MODEL, prompt="x", size="7x7"))
    assert error.param == "size" and "1024x1024" in error.message, error.body
    expect(openai.BadRequestError, 400, lambda: client.images.generate(model="no-such-model", prompt="x"))
    expect(openai.BadRequestError, 400, lambda: client.images.generate(model=MODEL, prompt="x", n=11))
    expect(openai.NotFoundError, 404, lambda: client.models.retrieve("no-such-model"))
    error = expect(openai.RateLimitError, 429, lambda: broke.images.generate(model=MODEL, prompt="x"))
    assert error.code == "insufficient_quota", error.body
    # The wait runs out: the error names the task, which goes on.
    error = expect(
        openai.InternalServerError, 504,
        lambda: client.images.generate(model=MODEL, prompt="Slow [simulate:delay=60000]"),
    )
    assert error.code == "task_pending" and "task_" in error.message, error.body


def main():
    tests = [value for name, value in sorted(globals().items()) if name.startswith("test_")]
    failed = 0
    for test in tests:
        try:
            test()
            print(f"ok   {test.__name__}")
        except Exception:  # noqa: BLE001 - every failure is reported, then the exit status says so
            failed += 1
            print(f"FAIL {test.__name__}")
            traceback.print_exc()
    print(f"python SDK: {len(tests) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
