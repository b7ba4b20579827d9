// Shared by the JavaScript MCP clients: command line, the installed SDKs, and the checks
// every client runs against Maestro. Each check prints `ok: …` on stdout; the first
// failure prints `FAIL: …` on stderr and exits 1.
//
// Command line (the Rust integration test `mcp_clients` builds it):
//
//   node <client>.mjs --url URL --token TOKEN            CHECKS   Streamable HTTP
//   node <client>.mjs [--env K=V]... CHECKS -- CMD [ARG]...       stdio: spawns CMD
//
//   CHECKS:
//     --tools a.x,b.y        the exact tool set the caller's policy allows (required)
//     --prompts p.q,…        the exact prompt (persona) set
//     --plugins calc,…       plugins the caller may use (their maestro://plugins/ URIs)
//     --denied-plugin web    an installed plugin the caller may not use
//     --only tools           connect and check the tool list only
//   or AGENT CHECKS (runAgentChecks):
//     --agents PERSONA       start a run of PERSONA with runs.start (progress, answer),
//                            read the document it wrote, and (sessions) subscribe to it
//                            and hear resources/updated after a documents.edit
//     --expect-answer TEXT   the run's final answer
//     --expect-document TEXT the document's content
//
// The SDKs come from the directory the test command installs (scripts/mcp-clients.sh),
// named by MAESTRO_MCP_CLIENTS; they are loaded through `createRequire` because ES
// module resolution never looks outside this file's own directory tree.

import { createRequire } from 'node:module';
import { isDeepStrictEqual } from 'node:util';
import path from 'node:path';

export function installed() {
    const dir = process.env.MAESTRO_MCP_CLIENTS;
    if (!dir) {
        fail('setup', 'MAESTRO_MCP_CLIENTS is not set (the directory scripts/mcp-clients.sh prints)');
    }
    return createRequire(path.join(dir, 'package.json'));
}

export function parseArgs(argv) {
    const options = {
        env: {}, tools: null, prompts: [], plugins: [], deniedPlugin: null, only: null, command: null,
        agents: null, expectAnswer: null, expectDocument: null,
    };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) fail('usage', `${arg} needs a value`);
            return argv[++i];
        };
        const list = () => value().split(',').map((s) => s.trim()).filter(Boolean);
        switch (arg) {
            case '--url': options.url = value(); break;
            case '--token': options.token = value(); break;
            case '--env': {
                const pair = value();
                const eq = pair.indexOf('=');
                if (eq <= 0) fail('usage', `--env expects KEY=VALUE, got ${pair}`);
                options.env[pair.slice(0, eq)] = pair.slice(eq + 1);
                break;
            }
            case '--tools': options.tools = list(); break;
            case '--prompts': options.prompts = list(); break;
            case '--plugins': options.plugins = list(); break;
            case '--denied-plugin': options.deniedPlugin = value(); break;
            case '--only': options.only = value(); break;
            case '--agents': options.agents = value(); break;
            case '--expect-answer': options.expectAnswer = value(); break;
            case '--expect-document': options.expectDocument = value(); break;
            case '--':
                options.command = argv.slice(i + 1);
                i = argv.length;
                break;
            default: fail('usage', `unknown argument ${arg}`);
        }
    }
    if (options.tools === null && options.agents === null) fail('usage', '--tools (or --agents) is required');
    if (!options.url === !options.command) fail('usage', 'give either --url URL --token TOKEN or -- COMMAND ARGS');
    if (options.url && !options.token) fail('usage', '--url needs --token');
    if (options.command && options.command.length === 0) fail('usage', 'no command after --');
    if (options.only !== null && options.only !== 'tools') fail('usage', `--only ${options.only}: only "tools" is known`);
    return options;
}

/**
 * Works around typescript-sdk issue #2580 (open in 1.32.2 and 2.4.0): the SDK handles a
 * response synchronously but a notification one microtask later, so when a progress
 * notification and the response arrive in one read (stdio, a fast tool) the response
 * retires the progress handler first and the notification is dropped as "unknown
 * token". Maestro writes them in the right order; this hands the SDK one message per
 * macrotask, as separate reads would. Call after `connect` (which sets `onmessage`).
 */
export function deliverOneMessageAtATime(transport) {
    const deliver = transport.onmessage;
    let queue = Promise.resolve();
    transport.onmessage = (message, extra) => {
        queue = queue.then(() => new Promise((resolve) => setImmediate(() => {
            try {
                deliver(message, extra);
            } finally {
                resolve();
            }
        })));
    };
}

export function fail(check, message) {
    process.stderr.write(`FAIL: ${check}: ${message}\n`);
    process.exit(1);
}

export function ok(check, detail = '') {
    process.stdout.write(`ok: ${check}${detail ? ` (${detail})` : ''}\n`);
}

function show(value) {
    return JSON.stringify(value);
}

function sorted(names) {
    return [...names].sort();
}

/** Runs `body`; a thrown error fails `check` with the error's message. */
async function step(check, body) {
    try {
        return await body();
    } catch (error) {
        fail(check, `${error?.name ?? 'Error'}${error?.code !== undefined ? ` (code ${error.code})` : ''}: ${error?.message ?? error}`);
    }
}

/** Awaits `promise` and returns its rejection; fails `check` if it resolves. */
async function rejection(check, promise) {
    try {
        const value = await promise;
        fail(check, `expected an error, got ${show(value)}`);
    } catch (error) {
        return error;
    }
}

function text(result) {
    return (result.content ?? []).filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

/**
 * The checks. `api` adapts one SDK:
 *   listTools(), listPrompts(), getPrompt(name, args), listResources(),
 *   listResourceTemplates(), readResource(uri),
 *   callTool(name, args, { onprogress, signal }) -> CallToolResult,
 *   isProtocolError(error) -> the JSON-RPC error's numeric code, or undefined.
 */
export async function runChecks(api, options) {
    const tools = await step('tools/list', () => api.listTools());
    const names = tools.map((t) => t.name);
    if (!isDeepStrictEqual(sorted(names), sorted(options.tools))) {
        fail('tools/list', `expected exactly ${show(sorted(options.tools))}, got ${show(sorted(names))}`);
    }
    for (const tool of tools) {
        if (!/^[a-z0-9_-]+\.[a-z0-9_-]+$/.test(tool.name)) fail('tools/list', `tool name ${tool.name} is not plugin.tool`);
        if (tool.inputSchema?.type !== 'object') {
            fail('tools/list', `${tool.name}: inputSchema is not an object schema: ${show(tool.inputSchema)}`);
        }
    }
    const calc = tools.find((t) => t.name === 'calc.evaluate');
    if (calc) {
        if (calc.outputSchema?.type !== 'object') fail('tools/list', `calc.evaluate has no outputSchema: ${show(calc)}`);
        if (calc.annotations?.readOnlyHint !== true) fail('tools/list', `calc.evaluate is not annotated read-only: ${show(calc)}`);
    }
    ok('tools/list', `${names.length} tools`);
    if (options.only === 'tools') return;

    const evaluated = await step('calc.evaluate', () => api.callTool('calc.evaluate', { expression: '6*7' }));
    if (evaluated.isError) fail('calc.evaluate', `isError result: ${show(evaluated)}`);
    if (!isDeepStrictEqual(evaluated.structuredContent, { value: 42 })) {
        fail('calc.evaluate', `structuredContent is not {"value":42}: ${show(evaluated)}`);
    }
    if (!text(evaluated).includes('42')) fail('calc.evaluate', `no text content with the value: ${show(evaluated.content)}`);
    ok('calc.evaluate', text(evaluated));

    const args = { word: 'héllo', list: [1, 2.5, null], nested: { deep: true } };
    const echoed = await step('hostile.echo', () => api.callTool('hostile.echo', args));
    if (echoed.isError || !isDeepStrictEqual(echoed.structuredContent, args)) {
        fail('hostile.echo', `structuredContent is not the arguments ${show(args)}: ${show(echoed)}`);
    }
    ok('hostile.echo');

    const failed = await step('hostile.fail', () => api.callTool('hostile.fail', {}));
    if (failed.isError !== true) fail('hostile.fail', `expected isError: true, got ${show(failed)}`);
    if (!text(failed).includes('boom')) fail('hostile.fail', `the error result does not name the cause "boom": ${show(failed)}`);
    ok('hostile.fail', text(failed));

    const unknown = await rejection('unknown tool', api.callTool('hostile.no_such_tool', {}));
    const code = api.isProtocolError(unknown);
    if (code === undefined) fail('unknown tool', `expected a JSON-RPC error, got ${unknown?.name}: ${unknown?.message}`);
    if (code !== -32602) fail('unknown tool', `expected JSON-RPC error -32602 (invalid params), got ${code}: ${unknown.message}`);
    ok('unknown tool', `${code}: ${unknown.message}`);

    const prompts = await step('prompts/list', () => api.listPrompts());
    const promptNames = prompts.map((p) => p.name);
    if (!isDeepStrictEqual(sorted(promptNames), sorted(options.prompts))) {
        fail('prompts/list', `expected exactly ${show(sorted(options.prompts))}, got ${show(sorted(promptNames))}`);
    }
    ok('prompts/list', `${promptNames.length} prompts`);
    const critic = prompts.find((p) => p.name === 'personas.critic');
    if (critic) {
        const idea = critic.arguments?.find((a) => a.name === 'idea');
        const focus = critic.arguments?.find((a) => a.name === 'focus');
        if (idea?.required !== true || !focus || focus.required === true) {
            fail('prompts/list', `personas.critic should take a required "idea" and an optional "focus": ${show(critic)}`);
        }
        const idea_text = 'a bicycle-sharing service for the moon';
        const prompt = await step('prompts/get', () => api.getPrompt('personas.critic', { idea: idea_text, focus: 'market' }));
        const rendered = (prompt.messages ?? []).map((m) => m.content?.text ?? '').join('\n');
        if (!rendered.includes(idea_text)) fail('prompts/get', `the rendered prompt does not contain the idea: ${show(prompt)}`);
        ok('prompts/get', `${prompt.messages.length} messages`);
    }

    const templates = await step('resources/templates/list', () => api.listResourceTemplates());
    if (!templates.some((t) => t.uriTemplate === 'maestro://plugins/{name}')) {
        fail('resources/templates/list', `no maestro://plugins/{name} template: ${show(templates)}`);
    }
    ok('resources/templates/list');
    const resources = await step('resources/list', () => api.listResources());
    const uris = resources.map((r) => r.uri);
    if (!uris.includes('maestro://policy/effective')) fail('resources/list', `no maestro://policy/effective: ${show(uris)}`);
    const pluginUris = uris.filter((u) => u.startsWith('maestro://plugins/'));
    const expectedPluginUris = options.plugins.map((p) => `maestro://plugins/${p}`);
    if (pluginUris.length > 0 && !isDeepStrictEqual(sorted(pluginUris), sorted(expectedPluginUris))) {
        fail('resources/list', `plugin resources should be exactly ${show(sorted(expectedPluginUris))}, got ${show(sorted(pluginUris))}`);
    }
    ok('resources/list', show(uris));

    for (const plugin of options.plugins) {
        const uri = `maestro://plugins/${plugin}`;
        const read = await step(`read ${uri}`, () => api.readResource(uri));
        const contents = read.contents?.[0];
        let manifest;
        try {
            manifest = JSON.parse(contents?.text);
        } catch (error) {
            fail(`read ${uri}`, `not JSON text: ${show(read)}`);
        }
        if (manifest?.name !== plugin) fail(`read ${uri}`, `the manifest does not name ${plugin}: ${show(read)}`);
        if (contents.uri !== uri) fail(`read ${uri}`, `contents carry uri ${contents.uri}`);
        if (contents.mimeType !== 'application/json') fail(`read ${uri}`, `mimeType ${contents.mimeType}, expected application/json`);
        ok(`read ${uri}`);
    }
    if (options.deniedPlugin) {
        const uri = `maestro://plugins/${options.deniedPlugin}`;
        const denied = await rejection(`read ${uri}`, api.readResource(uri));
        if (api.isProtocolError(denied) === undefined) fail(`read ${uri}`, `expected a JSON-RPC error, got ${denied?.message}`);
        ok(`read ${uri} is refused`, denied.message);
    }
    const policy = await step('read maestro://policy/effective', () => api.readResource('maestro://policy/effective'));
    let effective;
    try {
        effective = JSON.parse(policy.contents?.[0]?.text);
    } catch (error) {
        fail('read maestro://policy/effective', `not JSON text: ${show(policy)}`);
    }
    if (effective === null || typeof effective !== 'object') fail('read maestro://policy/effective', `not a JSON object: ${show(policy)}`);
    if (!policy.contents[0].text.includes('calc')) fail('read maestro://policy/effective', `does not mention the calc grant: ${policy.contents[0].text}`);
    ok('read maestro://policy/effective');

    const progress = [];
    const progressed = await step('hostile.progress', () =>
        api.callTool('hostile.progress', { n: 3 }, { onprogress: (p) => progress.push(p) }),
    );
    if (progressed.isError) fail('hostile.progress', `isError result: ${show(progressed)}`);
    const steps = progress.map((p) => p.progress);
    if (!isDeepStrictEqual(steps, [1, 2, 3])) {
        fail('hostile.progress', `expected progress 1, 2, 3 before the result, got ${show(progress)}`);
    }
    if (progress.some((p) => p.total !== 3)) fail('hostile.progress', `expected total 3 in every report: ${show(progress)}`);
    ok('hostile.progress', show(progress));

    const controller = new AbortController();
    const started = Date.now();
    let abortedAt;
    const timer = setTimeout(() => {
        abortedAt = Date.now();
        controller.abort(new Error('cancelled by the test client'));
    }, 300);
    const cancelled = await rejection('cancel hostile.spin', api.callTool('hostile.spin', {}, { signal: controller.signal }));
    clearTimeout(timer);
    const finished = Date.now();
    if (abortedAt === undefined) fail('cancel hostile.spin', `rejected before the abort: ${cancelled?.message}`);
    if (finished - abortedAt > 2000) fail('cancel hostile.spin', `rejected ${finished - abortedAt} ms after the abort`);
    ok('cancel hostile.spin', `rejected ${finished - abortedAt} ms after the abort (${finished - started} ms in all): ${cancelled?.message}`);

    const after = await step('hostile.noop after cancel', () => api.callTool('hostile.noop', {}));
    if (after.isError || text(after) !== 'ok') fail('hostile.noop after cancel', `expected "ok", got ${show(after)}`);
    ok('hostile.noop after cancel');
}

/**
 * The agent runtime over MCP. `api` as for runChecks, plus, for clients with sessions,
 * subscribe(uri) and onResourceUpdated(callback).
 */
export async function runAgentChecks(api, options) {
    const progress = [];
    const started = await step('runs.start', () =>
        api.callTool(
            'runs.start',
            { personas: [options.agents], strategy: 'sequence', message: 'Write the plan.' },
            { onprogress: (p) => progress.push(p) },
        ),
    );
    if (started.isError) fail('runs.start', `isError result: ${show(started)}`);
    if (text(started) !== options.expectAnswer) fail('runs.start', `expected the answer ${show(options.expectAnswer)}: ${show(started)}`);
    const steps = progress.map((p) => p.progress);
    if (steps.length < 5 || steps.some((v, i) => i > 0 && v <= steps[i - 1])) {
        fail('runs.start', `expected at least 5 increasing progress reports: ${show(progress)}`);
    }
    if (!progress.some((p) => (p.message ?? '').startsWith('document '))) {
        fail('runs.start', `no progress report of the document written: ${show(progress)}`);
    }
    ok('runs.start', `${progress.length} progress reports; run ${started.structuredContent?.run}`);

    const resources = await step('resources/list', () => api.listResources());
    const uri = resources.map((r) => r.uri).find((u) => u.startsWith('maestro://documents/'));
    if (!uri) fail('resources/list', `no maestro://documents/ resource: ${show(resources)}`);
    const read = await step(`read ${uri}`, () => api.readResource(uri));
    const contents = read.contents?.[0];
    if (contents?.text !== options.expectDocument) fail(`read ${uri}`, `expected ${show(options.expectDocument)}: ${show(read)}`);
    if (contents.mimeType !== 'text/markdown') fail(`read ${uri}`, `mimeType ${contents.mimeType}, expected text/markdown`);
    ok(`read ${uri}`);

    if (!api.subscribe) return;
    const updated = new Promise((resolve) => api.onResourceUpdated(resolve));
    await step('resources/subscribe', () => api.subscribe(uri));
    const id = uri.slice('maestro://documents/'.length);
    const edited = await step('documents.edit', () =>
        api.callTool('documents.edit', { id, base_version: 1, content: '# Edited over MCP\n' }),
    );
    if (edited.isError) fail('documents.edit', `isError result: ${show(edited)}`);
    const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 10000));
    const notified = await Promise.race([updated, timeout]);
    if (notified?.uri !== uri) fail('resources/updated', `expected an update of ${uri} within 10 s, got ${show(notified)}`);
    ok('resources/updated', uri);
}
