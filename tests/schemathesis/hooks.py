"""Adapts the served document to what this run's server holds and offers, which no document can
know. A `model` names a provider the server offers (here the models `GET /v1/models` lists); a
webhook's host must resolve to a public address (here the run allows private networks and sends
every webhook to one loopback URL); an agent's `reportsTo` names another agent that exists, so it
and its `identity.timezone` an IANA zone the document does not list, so both are left out of
generated agents. Until the server checks `Idempotency-Key` (spec §1.8) it ignores the header,
so the run does not send it. Everything else is generated from the
document as served."""

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
    schemas["Identity"]["properties"].pop("timezone", None)
    if WEBHOOK_URL:
        schemas["WebhookRequest"]["properties"]["url"] = {"type": "string", "enum": [WEBHOOK_URL]}
    for item in raw_schema["paths"].values():
        for operation in item.values():
            if "parameters" in operation:
                operation["parameters"] = [
                    p for p in operation["parameters"] if p.get("name") != "Idempotency-Key"
                ]
