// Drives a live deepshard-coordinator with the official `openai` npm client (used by
// openai_npm_test.cc). Runs completions.create and/or chat.completions.create, each plain and
// streaming, and prints one JSON object with what came back, so the C++ test can compare it with
// the single-process reference.
//
// Usage: node openai_client.mjs CONFIG_JSON
//   CONFIG_JSON: {"prefix": dir holding node_modules/openai, "base_url", "api_key", "model",
//                 "completion": {"prompt": [ids], "max_tokens": n} | null,
//                 "chat": {"messages": [...], "max_tokens": n} | null}
// Every call has a deadline (client timeout) and no client-side retries, so a broken server fails
// the test instead of being papered over.
import { createRequire } from 'node:module';

const config = JSON.parse(process.argv[2]);
// config.prefix is the `npm install --prefix` directory; resolve `openai` from there.
const require = createRequire(config.prefix + '/package.json');
let OpenAI;
let version = null;
try {
    OpenAI = require('openai').OpenAI;
    version = require('openai/version').VERSION;
} catch (e) {
    console.error('cannot load the openai package from ' + config.prefix + ': ' + e);
    process.exit(3);
}

const client = new OpenAI({ baseURL: config.base_url, apiKey: config.api_key, maxRetries: 0, timeout: 120000 });
const out = { client_version: version };

// Extra (vLLM-style) body fields the server understands; the client passes them through.
const extra = { temperature: 0, ignore_eos: true, return_token_ids: true };

async function collect(stream, pick) {
    const r = { chunks: 0, token_ids: [], text: '', finish_reason: null, usage: null, ids: new Set(), objects: new Set() };
    for await (const chunk of stream) {
        r.chunks += 1;
        r.ids.add(chunk.id);
        r.objects.add(chunk.object);
        if (chunk.usage) r.usage = chunk.usage;
        for (const c of chunk.choices ?? []) {
            r.text += pick(c) ?? '';
            for (const t of c.token_ids ?? []) r.token_ids.push(t);
            if (c.finish_reason) r.finish_reason = c.finish_reason;
        }
    }
    r.ids = [...r.ids];
    r.objects = [...r.objects];
    return r;
}

try {
    if (config.completion) {
        const req = { model: config.model, prompt: config.completion.prompt, max_tokens: config.completion.max_tokens,
                      ...extra };
        const plain = await client.completions.create(req);
        out.completion = { object: plain.object, text: plain.choices[0].text, token_ids: plain.choices[0].token_ids,
                           finish_reason: plain.choices[0].finish_reason, usage: plain.usage };
        const stream = await client.completions.create({ ...req, stream: true,
                                                         stream_options: { include_usage: true } });
        out.completion_stream = await collect(stream, (c) => c.text);
    }
    if (config.chat) {
        const req = { model: config.model, messages: config.chat.messages, max_tokens: config.chat.max_tokens,
                      ...extra };
        const plain = await client.chat.completions.create(req);
        const m = plain.choices[0];
        out.chat = { object: plain.object, role: m.message.role, text: m.message.content, token_ids: m.token_ids,
                     finish_reason: m.finish_reason, usage: plain.usage };
        const stream = await client.chat.completions.create({ ...req, stream: true,
                                                              stream_options: { include_usage: true } });
        out.chat_stream = await collect(stream, (c) => c.delta?.content);
    }
    // A wrong key must be refused with the client's typed 401 error.
    const bad = new OpenAI({ baseURL: config.base_url, apiKey: 'wrong-key', maxRetries: 0, timeout: 30000 });
    try {
        await bad.models.list();
        out.bad_key_status = 200;
    } catch (e) {
        out.bad_key_status = e.status ?? null;
        out.bad_key_is_auth_error = e instanceof OpenAI.AuthenticationError;
    }
    const models = await client.models.list();
    out.models = models.data.map((m) => m.id);
} catch (e) {
    out.error = String(e) + (e.status ? ' (HTTP ' + e.status + ')' : '');
}
console.log(JSON.stringify(out));
