"""Live admission and the simulator decide alike: 200 generated requests go through the real admission
service (ORM fleet, residency policies, cached fleet view, host load from the request rows) and through
the simulator's own view of the same fleet (hardware data, no ORM: ``pools.host_state_for``, the
residency rule ``scenario.region_allowance`` and the one-host-per-pool reduction ``representatives``),
and every decision (host, or the refusal's code) is the same.

The cases vary the tenant (country-pinned, zone-wide, pinned to the NPU family, a country with no host,
everywhere), the workload (chat, chat with n=2, embeddings), the prompt and output lengths, the
``X-Region`` header (inside and outside the allowance), which hosts are live, and the load (admitted
requests stay queued; some are moved to running or finished between cases). The quota step, which
comes after placement and is tested elsewhere, is given limits no case reaches.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from billing.services import credit_grant_create
from controlplane.core import hotcache
from controlplane.core.errors import PermissionDenied
from controlplane.core.regions import COUNTRIES, REGION_CODES
from controlplane.core.services import Actor
from controlplane.fleet import selectors as fleet_selectors
from controlplane.fleet import services as fleet_services
from controlplane.inference import admission, quota
from controlplane.inference.admission import ModelNotFound, RegionUnavailable, request_admit
from controlplane.inference.models import InferenceRequest
from controlplane.inference.openai_schema import parse_embedding, parse_generation
from controlplane.scheduling.costs import cost_table
from controlplane.scheduling.policy import DEFAULT_CONFIG, PlacementRequest, Workload, place
from controlplane.scheduling.pools import catalog_read, hardware_read, host_state_for
from controlplane.scheduling.runner import CATALOG_FILE, HARDWARE_FILE
from controlplane.scheduling.scenario import region_allowance
from controlplane.scheduling.simulator import representatives
from tenants import services as tenant_services
from tenants.models import ApiKey, Organization
from tests.factories import make_customer
from tests.stack import MODEL_NAME, seed_platform

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
ACTOR = Actor.system("tests")
CASES = 200

# (region, accelerator class, devices, batch slots): several classes per region, some identical twins
# (the simulator shows the policy one of each pool), the Hanguang 800 in Hangzhou, nothing in gru.
FLEET = [
    ("dxb", "nvidia-t4", 1, 4), ("dxb", "nvidia-t4", 1, 4), ("dxb", "nvidia-l4", 1, 8), ("dxb", "amd-mi300x", 1, 16),
    ("ruh", "nvidia-t4", 1, 4), ("ruh", "nvidia-h100-sxm", 1, 8),
    ("fra", "nvidia-a10", 1, 8), ("fra", "nvidia-l4", 2, 8), ("fra", "nvidia-h200-sxm", 1, 16),
    ("sin", "nvidia-t4", 1, 8), ("sin", "nvidia-a100-80gb", 1, 8), ("cgk", "nvidia-l4", 1, 4),
    ("hgh", "hanguang-800", 1, 4), ("hgh", "nvidia-a10", 1, 8),
    ("iad", "nvidia-l4", 1, 8), ("iad", "amd-mi300x", 1, 8),
]  # fmt: skip
# (slug, countries, zones, accelerator family pin)
TENANTS = [
    ("eq-ae", ["AE"], [], ""),
    ("eq-gcc", [], ["GCC"], ""),
    ("eq-asean", [], ["ASEAN"], ""),
    ("eq-eu", [], ["EU"], ""),
    ("eq-cn-npu", ["CN"], [], "npu"),
    ("eq-br", ["BR"], [], ""),
    ("eq-open", list(COUNTRIES), [], ""),
]
WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog"),
    *("while", "data", "stays", "in", "its", "region"),
]


@pytest.fixture(autouse=True)
def no_broker_and_no_quota_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "outbox_send", lambda **_: True)
    roomy = quota.QuotaLimits(
        requests_per_minute=10**6, tokens_per_minute=10**9, concurrent_requests=10**6, monthly_tokens=10**12
    )
    monkeypatch.setattr(admission, "quota_limits", lambda organization, region: roomy)


def _live_decision(**kwargs: Any) -> tuple[int | None, str | None]:
    try:
        admitted = request_admit(**kwargs)
    except PermissionDenied as exc:
        return None, exc.code
    except ModelNotFound as exc:
        return None, exc.code
    except RegionUnavailable as exc:
        return None, exc.code
    row = InferenceRequest.objects.unscoped_all_orgs().get(request_id=admitted.request_id)
    return row.host_id, None


def test_two_hundred_generated_requests_get_the_same_decision_live_and_simulated() -> None:
    seed_platform(())
    model = fleet_selectors.catalog_get(name=MODEL_NAME)
    hosts: list[tuple[int, str, str, int, int]] = []
    for number, (region, slug, devices, slots) in enumerate(FLEET):
        host = fleet_services.host_create(
            actor=ACTOR,
            name=f"eq-{region}-{slug}-{number}",
            region=fleet_selectors.region_get(code=region),
            accelerator_class=fleet_selectors.accelerator_class_get(slug=slug),
            accelerator_count=devices,
            max_concurrent_requests=slots,
        )
        fleet_services.deployment_create(actor=ACTOR, model=model, host=host)
        hosts.append((host.pk, host.name, region, devices, slots))
    keys: list[tuple[ApiKey, Organization, list[str], list[str], str]] = []
    for slug, countries, zones, family in TENANTS:
        customer = make_customer(slug=slug)
        tenant_services.residency_policy_update(
            actor=ACTOR, organization=customer.organization, allowed_countries=countries, allowed_zones=zones,
            accelerator_family=family, retention_days=1,
        )  # fmt: skip
        credit_grant_create(
            actor=ACTOR, organization=customer.organization, amount="1000", currency="USD", expires_at=None,
            reason="tests",
        )  # fmt: skip
        key = ApiKey.objects.unscoped_all_orgs().select_related("organization").get(organization=customer.organization)
        keys.append((key, key.organization, countries, zones, family))

    # The simulator's side: its own data files, no ORM.
    hardware = {str(e["id"]): e for e in hardware_read(HARDWARE_FILE)}
    smol = catalog_read(CATALOG_FILE)[MODEL_NAME].spec
    costs = cost_table(list(hardware.values()), unpriced_usd_per_hour=None)
    slug_of = {host_id: FLEET[i][1] for i, (host_id, *_rest) in enumerate(hosts)}

    rng = random.Random(6)
    stale: set[int] = set()
    live_decisions: list[tuple[int | None, str | None]] = []
    simulated: list[tuple[int | None, str | None]] = []
    for case in range(CASES):
        now = timezone.now()
        # Liveness: now and then a host's heartbeat goes stale, or comes back.
        if rng.random() < 0.15:
            host_id = rng.choice(hosts)[0]
            stale ^= {host_id}
        fresh = [h[0] for h in hosts if h[0] not in stale]
        fleet_services.host_heartbeat(host_ids=fresh, at=now)
        fleet_services.host_heartbeat(host_ids=sorted(stale), at=now - timedelta(hours=1))
        # Load: some queued requests start running, some finish.
        waiting = list(
            InferenceRequest.objects.unscoped_all_orgs()
            .filter(status__in=[InferenceRequest.Status.QUEUED, InferenceRequest.Status.RUNNING])
            .values_list("pk", flat=True)
        )
        if waiting and rng.random() < 0.3:
            chosen = rng.sample(waiting, k=max(1, len(waiting) // 4))
            status = rng.choice([InferenceRequest.Status.RUNNING, InferenceRequest.Status.COMPLETED])
            InferenceRequest.objects.unscoped_all_orgs().filter(pk__in=chosen).update(status=status)
        hotcache.bump(org_id=None)

        key, organization, countries, zones, family = rng.choice(keys)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))
        kind = rng.choice(["chat", "chat", "chat_n2", "embedding"])
        header = rng.choice(REGION_CODES) if rng.random() < 0.2 else None
        workload: Workload
        if kind == "embedding":
            body: dict[str, Any] = {"model": MODEL_NAME, "input": words}
            parsed: Any = parse_embedding(body)
            prompt = len(admission.tokenizer_for(model).tokenize(words, add_special=True, parse_special=False))
            output, workload = 0, "embedding"
        else:
            n = 2 if kind == "chat_n2" else 1
            body = {
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": words}],
                "max_tokens": rng.randint(1, 400),
                "n": n,
            }
            parsed = parse_generation(body, "chat")
            prompt = len(admission._generation_prompt(model, parsed))
            output = admission._max_tokens(model, parsed, prompt) * n
            workload = "batch" if n > 1 else "interactive"

        load = admission._host_load()
        states = [
            host_state_for(
                host_id=host_id,
                name=name,
                region=region,
                hardware_entry=hardware[slug_of[host_id]],
                accelerator_count=devices,
                slots=slots,
                model=smol,
                cost=costs.get(slug_of[host_id]),
                live=host_id not in stale,
                running=load.get(host_id, (0, 0))[0],
                queued=load.get(host_id, (0, 0))[1],
            )
            for host_id, name, region, devices, slots in hosts
        ]
        decision = place(
            PlacementRequest(
                model=MODEL_NAME,
                prompt_tokens=prompt,
                max_output_tokens=output,
                workload=workload,
                allowed_regions=region_allowance(countries, zones),
                requested_region=header,
                accelerator_family=family or None,
            ),
            representatives(states),
            config=DEFAULT_CONFIG,
        )
        simulated.append((decision.host_id, decision.refusal))
        live_decisions.append(
            _live_decision(
                api_key=key,
                organization=organization,
                parsed=parsed,
                raw_body=body,
                region_header=header,
                idempotency_key=None,
                now=now,
            )
        )
        assert live_decisions[-1] == simulated[-1], f"case {case}: live {live_decisions[-1]}, simulated {simulated[-1]}"

    assert live_decisions == simulated
    # Non-degenerate: several accelerator classes chosen, and refusals of more than one kind.
    classes = Counter(slug_of[host_id] for host_id, _ in simulated if host_id is not None)
    refusals = Counter(refusal for _, refusal in simulated if refusal is not None)
    assert len(classes) >= 3, classes
    assert "hanguang-800" in classes, classes  # embeddings pinned to the NPU family land on it
    assert sum(refusals.values()) >= 1
    assert {"region_not_allowed", "region_unavailable"} <= set(refusals), refusals
    assert sum(classes.values()) >= CASES // 2, (classes, refusals)
    assert Decimal(len(simulated)) == CASES
