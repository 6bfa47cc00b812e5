"""The seed flow through a client generated from the gateway's OpenAPI document (`.ci/openapi-client`
generates `aio_gateway_client` with openapi-python-client and runs this with it on PYTHONPATH).

Only the generated client talks to the gateway: create the seed task → poll it until it succeeded →
the billing ledger shows its capture; a request for an unknown model answers 400, parsed into the
generated error model; the result file downloads as bytes. Any mismatch (an answer the generated
client cannot parse, a status it does not expect, a wrong value) exits non-zero.

Environment: AIO_BASE_URL (the gateway), AIO_KEY (an API key of an account with credits).
"""

import os
import sys
import time
from urllib.parse import parse_qs, urlparse

from aio_gateway_client import AuthenticatedClient, Client
from aio_gateway_client.api.catalog import get_file, list_models
from aio_gateway_client.api.tasks import create_task, get_credits, get_task
from aio_gateway_client.models import (
    CreateRequest,
    CreditsState,
    EntryKind,
    ErrorCode,
    ErrorEnvelope,
    TaskStatus,
    TaskView,
)
from aio_gateway_client.types import File

SEED = "A serene mountain lake at sunrise with reflections, photorealistic"


def check(condition, what, quiet=False):
    if not condition:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    if not quiet:
        print(f"ok: {what}")


def main():
    base = os.environ["AIO_BASE_URL"]
    # Every status the document does not declare raises: the document must cover what the server says.
    client = AuthenticatedClient(base_url=base, token=os.environ["AIO_KEY"], raise_on_unexpected_status=True)
    public = Client(base_url=base, raise_on_unexpected_status=True)

    models = list_models.sync(client=public)
    check(models is not None and len(models.data) > 0, "GET /api/v1/models parses into the model list")

    created = create_task.sync_detailed(
        client=client,
        body=CreateRequest(
            model="seedream/4.5-text-to-image", prompt=SEED, aspect_ratio="16:9", quality="high"
        ),
    )
    check(created.status_code == 200, f"create answers 200 (got {created.status_code})")
    task = created.parsed
    check(isinstance(task, TaskView), "the created task parses into TaskView")
    check(task.status in (TaskStatus.PENDING, TaskStatus.RUNNING), f"a new task is unfinished ({task.status})")
    check(task.credits_.state == CreditsState.HELD, "its price is held")
    check(task.input_.prompt == SEED, "the task echoes the prompt")

    give_up = time.monotonic() + 30
    while task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        check(time.monotonic() < give_up, "the task finishes within 30 s", quiet=True)
        time.sleep(0.5)
        task = get_task.sync(client=client, task_id=task.task_id)
        check(isinstance(task, TaskView), "GET /api/v1/tasks/{task_id} parses into TaskView", quiet=True)
    check(task.status == TaskStatus.SUCCEEDED, f"polled until it succeeded ({task.status})")
    check(task.credits_.state == CreditsState.CHARGED and task.credits_.charged == task.credits_.price, "it is charged")
    check(task.completed_at is not None and task.completed_at >= task.created_at, "timestamps parse as date-times")

    credits = get_credits.sync(client=client)
    kinds = [(entry.kind, entry.task_id) for entry in credits.ledger]
    check((EntryKind.CAPTURE, task.task_id) in kinds, "the billing ledger shows the task's capture")
    check((EntryKind.HOLD, task.task_id) in kinds, "and its hold")

    refused = create_task.sync_detailed(client=client, body=CreateRequest(model="no-such/model", prompt=SEED))
    check(refused.status_code == 400, f"an unknown model answers 400 (got {refused.status_code})")
    check(isinstance(refused.parsed, ErrorEnvelope), "the 400 parses into ErrorEnvelope")
    check(refused.parsed.error.code == ErrorCode.INVALID_REQUEST, "its code is invalid_request")

    image = urlparse(task.output.images[0].url)
    name = image.path.rsplit("/", 1)[-1]
    query = {key: values[0] for key, values in parse_qs(image.query).items()}
    link = {"exp": int(query["exp"]), "sig": query["sig"]} if "sig" in query else {}
    downloaded = get_file.sync_detailed(client=public, name=name, **link)
    check(downloaded.status_code == 200, f"the result file answers 200 (got {downloaded.status_code})")
    check(isinstance(downloaded.parsed, File), "it parses into bytes (a File)")
    content = downloaded.parsed.payload.read()
    kind = downloaded.headers.get("content-type", "")
    check(kind in ("image/png", "image/jpeg", "image/webp") and len(content) > 0, f"a {kind} image of {len(content)} bytes")
    print("the generated client ran the seed flow")


if __name__ == "__main__":
    main()
