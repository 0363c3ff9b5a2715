// The official OpenAI Node SDK against polpo-api (spec §3.1, §3.14): plain, streamed and tool-calling
// requests, its helpers (stream(), runTools(), parse(), withResponse()), sessions, aborts, models and
// the errors users see. Run by the Rust test `sdk::the_official_openai_node_sdk_works`, which starts
// the server and fake providers, creates the agents named below and passes the server's coordinates in
// POLPO_BASE_URL and POLPO_KEY.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import OpenAI from 'openai';

const BASE = process.env.POLPO_BASE_URL;
const KEY = process.env.POLPO_KEY;
assert.ok(BASE && KEY, 'POLPO_BASE_URL and POLPO_KEY must be set (see tests/api/sdk.rs)');

// The fake providers' answer for the `ok` model (tests/api/fakes/mod.rs).
const OK_TEXT = 'Hello from the fake provider.';
const HELLO = [{ role: 'user', content: 'Say hello' }];

// No retries unless a test says otherwise: a retried request would hide what the first answer was.
function client(options = {}) {
  return new OpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY, maxRetries: 0, timeout: 20_000, ...options });
}

async function getJson(path) {
  const response = await fetch(`${BASE}${path}`, { headers: { authorization: `Bearer ${KEY}` } });
  assert.equal(response.status, 200, `GET ${path}: ${await response.clone().text()}`);
  return response.json();
}

/** Resolves with the rejection of `promise`, checking it is an instance of `type`. */
async function rejection(promise, type) {
  let error;
  await assert.rejects(promise, (e) => {
    error = e;
    return true;
  });
  assert.ok(error instanceof type, `expected ${type.name}, got ${error?.constructor?.name}: ${error?.message}`);
  return error;
}

test('plain completion', async () => {
  for (const agent of ['gpt-agent', 'claude-agent']) {
    const completion = await client().chat.completions.create({ model: agent, messages: HELLO });
    assert.equal(completion.object, 'chat.completion');
    assert.match(completion.id, /^chatcmpl-/);
    assert.equal(completion.choices.length, 1);
    const [choice] = completion.choices;
    assert.equal(choice.message.role, 'assistant');
    assert.equal(choice.message.content, OK_TEXT);
    assert.equal(choice.finish_reason, 'stop');
    const { prompt_tokens, completion_tokens, total_tokens } = completion.usage;
    assert.ok(prompt_tokens > 0 && completion_tokens > 0, JSON.stringify(completion.usage));
    assert.equal(total_tokens, prompt_tokens + completion_tokens);
  }
});

test('streamed with include_usage', async () => {
  const stream = await client().chat.completions.create({
    model: 'gpt-agent',
    messages: HELLO,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length > 2);
  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
  const choices = chunks.flatMap((c) => c.choices);
  assert.equal(choices.map((c) => c.delta.content ?? '').join(''), OK_TEXT);
  assert.deepEqual(choices.map((c) => c.finish_reason).filter(Boolean), ['stop']);
  const withUsage = chunks.filter((c) => c.usage);
  assert.equal(withUsage.length, 1);
  assert.equal(withUsage[0], chunks.at(-1), 'the usage chunk comes last');
  assert.deepEqual(withUsage[0].choices, []);
  assert.ok(withUsage[0].usage.prompt_tokens > 0);
});

test('the stream() helper and finalChatCompletion()', async () => {
  const stream = client().chat.completions.stream({
    model: 'claude-agent',
    messages: HELLO,
    stream_options: { include_usage: true },
  });
  const deltas = [];
  stream.on('content', (delta) => deltas.push(delta));
  let usage = null;
  stream.on('chunk', (chunk) => {
    if (chunk.usage) usage = chunk.usage;
  });
  const final = await stream.finalChatCompletion();
  assert.equal(deltas.join(''), OK_TEXT);
  assert.equal(final.choices[0].message.content, OK_TEXT);
  assert.equal(final.choices[0].finish_reason, 'stop');
  assert.equal(await stream.finalContent(), OK_TEXT);
  assert.ok(usage?.total_tokens > 0, 'the usage chunk reached the helper');
});

test('runTools() calls the function and sends its result back', async () => {
  for (const stream of [false, true]) {
    const calls = [];
    const runner = client().chat.completions.runTools({
      model: 'gpt-tools',
      messages: [{ role: 'user', content: 'What is the weather in Rome?' }],
      stream,
      tools: [
        {
          type: 'function',
          function: {
            name: 'get_weather',
            description: 'Weather for a city',
            parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
            parse: JSON.parse,
            function: async ({ city }) => {
              calls.push(city);
              return 'sunny';
            },
          },
        },
      ],
    });
    const content = await runner.finalContent();
    assert.deepEqual(calls, ['Rome'], `stream: ${stream}`);
    assert.equal(content, 'Tool said: sunny');
    assert.deepEqual(
      runner.messages.map((m) => m.role),
      ['user', 'assistant', 'tool', 'assistant'],
    );
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].finish_reason, 'stop');
  }
});

test('withResponse() gives x-session-id, which continues the session', async () => {
  const first = await client()
    .chat.completions.create({ model: 'echo-agent', messages: [{ role: 'user', content: 'first turn' }] })
    .withResponse();
  const id = first.response.headers.get('x-session-id');
  assert.match(id ?? '', /^sess_/);
  assert.equal(first.data.choices[0].message.content, 'first turn');

  const second = await client()
    .chat.completions.create(
      { model: 'echo-agent', messages: [{ role: 'user', content: 'second turn' }] },
      { headers: { 'x-session-id': id } },
    )
    .withResponse();
  assert.equal(second.response.headers.get('x-session-id'), id);
  assert.equal(second.data.choices[0].message.content, 'second turn');

  const messages = await getJson(`/v1/chat/sessions/${id}/messages`);
  assert.deepEqual(
    messages.map((m) => [m.role, m.content]),
    [
      ['user', 'first turn'],
      ['assistant', 'first turn'],
      ['user', 'second turn'],
      ['assistant', 'second turn'],
    ],
  );
  assert.deepEqual(
    messages.filter((m) => m.role === 'assistant').map((m) => m.finishReason),
    ['stop', 'stop'],
  );
});

test('the same Idempotency-Key twice at once: the SDK retries the 409 and both calls get one answer', async () => {
  // About a second of reply: whichever call comes second finds the key in flight, is told to
  // retry (x-should-retry: true, Retry-After: 1) and the SDK's retry gets the stored answer.
  const sdk = client({ maxRetries: 3 });
  const words = Array.from({ length: 20 }, (_, i) => `word${i}`).join(' ');
  const body = { model: 'mock/slow-echo', messages: [{ role: 'user', content: words }] };
  const options = { headers: { 'Idempotency-Key': `node-${Date.now()}` } };
  const [a, b] = await Promise.all([
    sdk.chat.completions.create(body, options).withResponse(),
    sdk.chat.completions.create(body, options).withResponse(),
  ]);
  assert.deepEqual(a.data, b.data);
  assert.equal(a.data.choices[0].message.content, words);
  const replayed = [a, b].map((r) => r.response.headers.get('idempotent-replayed'));
  assert.deepEqual(replayed.sort(), ['true', null].sort());
  const session = a.response.headers.get('x-session-id');
  assert.equal(b.response.headers.get('x-session-id'), session);
  const messages = await getJson(`/v1/chat/sessions/${session}/messages`);
  assert.deepEqual(messages.map((m) => m.role), ['user', 'assistant'], 'the turn ran once');
});

test('a bad key is an AuthenticationError with code invalid_api_key', async () => {
  const key = KEY.slice(0, -1) + (KEY.at(-1) === 'a' ? 'b' : 'a');
  const error = await rejection(
    client({ apiKey: key }).chat.completions.create({ model: 'gpt-agent', messages: HELLO }),
    OpenAI.AuthenticationError,
  );
  assert.equal(error.status, 401);
  assert.equal(error.code, 'invalid_api_key');
  assert.equal(error.type, 'authentication_error');
});

test('an unknown agent is a NotFoundError with code not_found', async () => {
  const byModel = await rejection(
    client().chat.completions.create({ model: 'nobody', messages: HELLO }),
    OpenAI.NotFoundError,
  );
  assert.equal(byModel.code, 'not_found');
  assert.equal(byModel.param, 'model');
  const byAgent = await rejection(
    client().chat.completions.create({ model: 'x', agent: 'nobody', messages: HELLO }),
    OpenAI.NotFoundError,
  );
  assert.equal(byAgent.code, 'not_found');
  assert.equal(byAgent.param, 'agent');
});

test('a provider 429 is a RateLimitError with code rate_limited', async () => {
  for (const model of ['mock/error-429', 'gpt-429']) {
    for (const stream of [false, true]) {
      const error = await rejection(
        client().chat.completions.create({ model, messages: HELLO, stream }),
        OpenAI.RateLimitError,
      );
      assert.equal(error.status, 429, model);
      assert.equal(error.code, 'rate_limited', model);
      assert.ok(Number(error.headers.get('retry-after')) >= 1, model);
    }
  }
});

test('calls that fail and are retried by the SDK leave no session behind in the list', async () => {
  // Default retries: each attempt is a new call that fails before the provider answers, and
  // each leaves an empty session, kept for retries but never listed (spec §3.6).
  const sdk = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: KEY, timeout: 20_000 });
  const error = await rejection(
    sdk.chat.completions.create({ model: 'mock/error-429', messages: HELLO }),
    OpenAI.RateLimitError,
  );
  const empty = await getJson(`/v1/chat/sessions/${error.headers.get('x-session-id')}`);
  assert.equal(empty.messageCount, 0);
  const listed = await getJson('/v1/chat/sessions?limit=1000');
  assert.ok(!listed.some((s) => s.id === empty.id), 'the empty session is listed');
  assert.ok(listed.every((s) => s.messageCount > 0), JSON.stringify(listed));
});

test('aborting mid-stream stores the reply as interrupted', async () => {
  const words = Array.from({ length: 400 }, (_, i) => `word${i}`).join(' ');
  const { data: stream, response } = await client()
    .chat.completions.create({ model: 'mock/slow-echo', messages: [{ role: 'user', content: words }], stream: true })
    .withResponse();
  const id = response.headers.get('x-session-id');
  assert.match(id ?? '', /^sess_/);
  let received = '';
  for await (const chunk of stream) {
    received += chunk.choices[0]?.delta?.content ?? '';
    if (received) break;
  }
  stream.controller.abort();
  assert.ok(received.length > 0 && received.length < words.length);

  const deadline = Date.now() + 10_000;
  let assistant;
  for (;;) {
    const messages = await getJson(`/v1/chat/sessions/${id}/messages`);
    assistant = messages.find((m) => m.role === 'assistant');
    if (assistant?.finishReason || Date.now() > deadline) break;
    await sleep(50);
  }
  assert.ok(assistant?.finishReason, 'no finished assistant message within 10 s of the abort');
  assert.equal(assistant.finishReason, 'interrupted');
  assert.ok(assistant.content.startsWith(received), JSON.stringify(assistant.content));
  assert.ok(assistant.content.length < words.length, 'the reply was cut');
  assert.ok(assistant.usage?.totalTokens > 0, JSON.stringify(assistant.usage));
});

test('models.list() names the agents and the mock models', async () => {
  const page = await client().models.list();
  const byId = new Map(page.data.map((m) => [m.id, m]));
  const agent = byId.get('gpt-agent');
  assert.ok(agent, `no gpt-agent in ${[...byId.keys()]}`);
  assert.equal(agent.object, 'model');
  assert.equal(agent.owned_by, 'agent');
  assert.equal(agent.polpo?.model, 'openai:ok');
  const echo = byId.get('mock/echo');
  assert.ok(echo, `no mock/echo in ${[...byId.keys()]}`);
  assert.equal(echo.owned_by, 'mock');
});

test('models.retrieve() finds an agent and a mock model, and rejects an unknown id', async () => {
  const agent = await client().models.retrieve('gpt-agent');
  assert.equal(agent.id, 'gpt-agent');
  assert.equal(agent.object, 'model');
  assert.equal(agent.owned_by, 'agent');
  assert.equal(typeof agent.created, 'number');
  assert.match(agent.polpo?.agentId ?? '', /^agt_/);
  const echo = await client().models.retrieve('mock/echo');
  assert.deepEqual([echo.id, echo.object, echo.owned_by], ['mock/echo', 'model', 'mock']);
  const error = await rejection(client().models.retrieve('nope'), OpenAI.NotFoundError);
  assert.equal(error.code, 'not_found');
});

test('parse() with a json_schema response_format', async () => {
  const point = { x: 3, y: -4, label: 'corner' };
  const completion = await client().chat.completions.parse({
    model: 'mock/echo',
    messages: [{ role: 'user', content: JSON.stringify(point) }],
    response_format: {
      type: 'json_schema',
      json_schema: {
        name: 'point',
        strict: true,
        schema: {
          type: 'object',
          properties: { x: { type: 'number' }, y: { type: 'number' }, label: { type: 'string' } },
          required: ['x', 'y', 'label'],
          additionalProperties: false,
        },
      },
    },
  });
  assert.equal(completion.choices[0].finish_reason, 'stop');
  assert.deepEqual(completion.choices[0].message.parsed, point);
});

test("frameworks' default parameters are accepted", async () => {
  for (const model of ['mock/echo', 'echo-agent']) {
    const completion = await client().chat.completions.create({
      model,
      messages: [{ role: 'user', content: 'defaults' }],
      store: false,
      logprobs: false,
      top_logprobs: 0,
      reasoning_effort: 'low',
      service_tier: 'auto',
      prompt_cache_key: 'k',
      safety_identifier: 'u1',
      verbosity: 'low',
      modalities: ['text'],
    });
    assert.equal(completion.choices[0].message.content, 'defaults', model);
  }
});
