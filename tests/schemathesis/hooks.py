"""Adapts the served document to what this run's server holds and offers, which no document can
know, before anything is generated from it:

- a `model` (and a task's `retryPolicy.escalateModel`) names a model the server offers: here
  the ones `GET /v1/models` lists;
- a webhook's host must resolve to a public address: the run allows private networks and
  sends every webhook to one loopback URL;
- an agent's `reportsTo` and a task's `retryPolicy.fallbackAgent` name another agent that
  exists: they are left out of generated bodies (the links of the document carry real names);
- an `Idempotency-Key` (spec §1.8) ties every request that repeats it to the first one, and
  generated values repeat across unrelated requests: the run does not send it (its rules are
  tested in tests/api/idempotency.rs);
- JSON Schema counts `441.0` as an integer where the spec's integer is a number written without
  a fraction (§0.3): generated bodies write whole numbers without one.

Everything else is generated from the document as served."""

import os

import schemathesis

MODELS = [m for m in os.environ.get("POLPO_FUZZ_MODELS", "").split(",") if m]
WEBHOOK_URL = os.environ.get("POLPO_FUZZ_WEBHOOK_URL", "")


@schemathesis.hook
def before_load_schema(context, raw_schema):
    schemas = raw_schema["components"]["schemas"]
    for name in ("AgentRequest", "AgentPatch"):
        properties = schemas[name]["properties"]
        properties.pop("reportsTo", None)
        if MODELS:
            properties["model"] = {"type": "string", "enum": MODELS}
    policy = schemas["RetryPolicyInput"]["properties"]
    policy.pop("fallbackAgent", None)
    if MODELS:
        policy["escalateModel"] = {"type": ["string", "null"], "enum": [*MODELS, None]}
    if WEBHOOK_URL:
        schemas["WebhookRequest"]["properties"]["url"] = {"type": "string", "enum": [WEBHOOK_URL]}
    for item in raw_schema["paths"].values():
        for operation in item.values():
            if "parameters" in operation:
                operation["parameters"] = [
                    p for p in operation["parameters"] if p.get("name") != "Idempotency-Key"
                ]


def whole_numbers(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


@schemathesis.hook
def map_body(context, body):
    return whole_numbers(body)
