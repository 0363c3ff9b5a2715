"""The official OpenAI Python SDK against polpo-api (spec §3.1, §3.2, §3.14): plain, streamed and
tool-calling requests, the parameters frameworks send by default, models, and the errors users see. Run by the Rust test `sdk::the_official_openai_python_sdk_works`,
which starts the server and fake providers and passes their coordinates in the environment."""

import json
import os
import unittest

import openai
from openai import OpenAI

BASE_URL = os.environ["POLPO_BASE_URL"] + "/v1"
KEY = os.environ["POLPO_KEY"]
OK_TEXT = "Hello from the fake provider."
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def client(**kwargs):
    # No retries: a retried request would hide what the first answer was.
    return OpenAI(base_url=BASE_URL, api_key=kwargs.pop("api_key", KEY), max_retries=0, timeout=20, **kwargs)


class PlainAndStreamed(unittest.TestCase):
    def check_plain(self, agent):
        completion = client().chat.completions.create(
            model=agent, messages=[{"role": "user", "content": "Say hello"}])
        self.assertEqual(completion.object, "chat.completion")
        self.assertEqual(completion.choices[0].message.content, OK_TEXT)
        self.assertEqual(completion.choices[0].finish_reason, "stop")
        self.assertGreater(completion.usage.total_tokens, 0)

    def check_stream(self, agent, include_usage):
        kwargs = {"stream_options": {"include_usage": True}} if include_usage else {}
        chunks = list(client().chat.completions.create(
            model=agent, messages=[{"role": "user", "content": "Say hello"}], stream=True, **kwargs))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, OK_TEXT)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        self.assertEqual(finishes, ["stop"])
        usage = [c.usage for c in chunks if c.usage]
        if include_usage:
            self.assertEqual(len(usage), 1)
            self.assertEqual(chunks[-1].choices, [])
            self.assertGreater(usage[0].prompt_tokens, 0)
        else:
            self.assertEqual(usage, [])

    def test_openai_agent(self):
        self.check_plain("gpt-agent")
        self.check_stream("gpt-agent", include_usage=False)
        self.check_stream("gpt-agent", include_usage=True)

    def test_anthropic_agent(self):
        self.check_plain("claude-agent")
        self.check_stream("claude-agent", include_usage=False)
        self.check_stream("claude-agent", include_usage=True)

    def test_agent_in_extra_body(self):
        completion = client().chat.completions.create(
            model="ignored-when-agent-is-set", extra_body={"agent": "echo-agent"},
            messages=[{"role": "user", "content": "echo me"}])
        self.assertEqual(completion.choices[0].message.content, "echo me")
        self.assertEqual(completion.model, "openai:echo")

    def test_raw_response_carries_the_session(self):
        raw = client().chat.completions.with_raw_response.create(
            model="gpt-agent", messages=[{"role": "user", "content": "hi"}])
        self.assertTrue(raw.headers["x-session-id"].startswith("sess_"))
        self.assertEqual(raw.parse().choices[0].message.content, OK_TEXT)


class ToolCalls(unittest.TestCase):
    def round_trip(self, agent, stream):
        messages = [{"role": "user", "content": "What is the weather in Rome?"}]
        if stream:
            calls = {}
            finish = None
            for chunk in client().chat.completions.create(model=agent, messages=messages, tools=TOOLS, stream=True):
                if not chunk.choices:
                    continue
                for call in chunk.choices[0].delta.tool_calls or []:
                    slot = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                    if call.id:
                        slot["id"] = call.id
                    if call.function and call.function.name:
                        slot["name"] = call.function.name
                    if call.function and call.function.arguments:
                        slot["arguments"] += call.function.arguments
                finish = chunk.choices[0].finish_reason or finish
            self.assertEqual(finish, "tool_calls")
            call = calls[0]
        else:
            completion = client().chat.completions.create(model=agent, messages=messages, tools=TOOLS)
            self.assertEqual(completion.choices[0].finish_reason, "tool_calls")
            tc = completion.choices[0].message.tool_calls[0]
            call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
        self.assertEqual(call["name"], "get_weather")
        self.assertEqual(json.loads(call["arguments"]), {"city": "Rome"})
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "sunny"})
        answer = client().chat.completions.create(model=agent, messages=messages, tools=TOOLS)
        self.assertEqual(answer.choices[0].message.content, "Tool said: sunny")

    def test_openai_tools(self):
        self.round_trip("gpt-tools", stream=False)
        self.round_trip("gpt-tools", stream=True)

    def test_anthropic_tools(self):
        self.round_trip("claude-tools", stream=False)
        self.round_trip("claude-tools", stream=True)


class Errors(unittest.TestCase):
    def test_unknown_agent(self):
        with self.assertRaises(openai.NotFoundError) as caught:
            client().chat.completions.create(extra_body={"agent": "nobody"}, model="x",
                                             messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(caught.exception.code, "not_found")
        self.assertEqual(caught.exception.param, "agent")

    def test_bad_key(self):
        key = KEY[:-1] + ("a" if KEY[-1] != "a" else "b")
        with self.assertRaises(openai.AuthenticationError) as caught:
            client(api_key=key).chat.completions.create(model="gpt-agent", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(caught.exception.code, "invalid_api_key")

    def test_validation_errors_name_the_param(self):
        with self.assertRaises(openai.BadRequestError) as caught:
            client().chat.completions.create(model="gpt-agent", messages=[{"role": "user", "content": "hi"}], n=2)
        self.assertEqual(caught.exception.param, "n")

    def test_provider_failures_before_the_stream(self):
        for agent, error in [("gpt-500", openai.InternalServerError), ("gpt-hang", openai.InternalServerError),
                             ("gpt-429", openai.RateLimitError)]:
            for stream in (False, True):
                with self.subTest(agent=agent, stream=stream), self.assertRaises(error) as caught:
                    result = client().chat.completions.create(
                        model=agent, messages=[{"role": "user", "content": "hi"}], stream=stream)
                    if stream:
                        list(result)
                self.assertIsInstance(caught.exception, openai.APIError)

    def test_provider_failures_mid_stream(self):
        for agent in ["gpt-cut", "gpt-nonjson", "claude-error"]:
            with self.subTest(agent=agent):
                received = []
                with self.assertRaises(openai.APIError) as caught:
                    for chunk in client().chat.completions.create(
                            model=agent, messages=[{"role": "user", "content": "hi"}], stream=True):
                        received.append(chunk)
                self.assertNotIsInstance(caught.exception, json.JSONDecodeError)
                self.assertIn("model provider", str(caught.exception))
                self.assertGreater(len(received), 0, "chunks before the failure were delivered")

    def test_provider_failure_not_streamed(self):
        with self.assertRaises(openai.APIStatusError) as caught:
            client().chat.completions.create(model="gpt-cut", messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(caught.exception.status_code, 502)
        self.assertEqual(caught.exception.code, "upstream_error")


class FrameworkDefaults(unittest.TestCase):
    # Parameters OpenAI defines that clients and frameworks send by default (spec §3.2): accepted
    # in gateway mode and forwarded to an OpenAI-kind provider in agent mode.
    DEFAULTS = {"store": False, "logprobs": False, "top_logprobs": 0, "reasoning_effort": "low",
                "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "u1",
                "verbosity": "low", "modalities": ["text"]}

    def test_frameworks_defaults_are_accepted(self):
        for model in ["mock/echo", "echo-agent"]:
            for stream in (False, True):
                with self.subTest(model=model, stream=stream):
                    result = client().chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "defaults"}], stream=stream,
                        **self.DEFAULTS)
                    if stream:
                        text = "".join(c.choices[0].delta.content or "" for c in result if c.choices)
                    else:
                        text = result.choices[0].message.content
                    self.assertEqual(text, "defaults")


class Models(unittest.TestCase):
    def test_list_names_the_agents_and_the_mock_models(self):
        models = {m.id: m for m in client().models.list().data}
        self.assertIn("gpt-agent", models)
        self.assertEqual(models["gpt-agent"].object, "model")
        self.assertEqual(models["gpt-agent"].owned_by, "agent")
        self.assertEqual(models["gpt-agent"].model_extra["polpo"]["model"], "openai:ok")
        self.assertIn("mock/echo", models)
        self.assertEqual(models["mock/echo"].owned_by, "mock")

    def test_retrieve(self):
        agent = client().models.retrieve("gpt-agent")
        self.assertEqual((agent.id, agent.object, agent.owned_by), ("gpt-agent", "model", "agent"))
        self.assertIsInstance(agent.created, int)
        self.assertTrue(agent.model_extra["polpo"]["agentId"].startswith("agt_"))
        echo = client().models.retrieve("mock/echo")
        self.assertEqual((echo.id, echo.object, echo.owned_by), ("mock/echo", "model", "mock"))
        with self.assertRaises(openai.NotFoundError) as caught:
            client().models.retrieve("nope")
        self.assertEqual(caught.exception.code, "not_found")


if __name__ == "__main__":
    unittest.main(verbosity=2)
