// The official TypeScript SDK, v2 line (@modelcontextprotocol/client 2.4.0), pinned to the
// 2026-07-28 revision: `server/discover` instead of initialize, no session, every request
// self-describing. See common.mjs for the command line and the checks.

import { deliverOneMessageAtATime, fail, installed, ok, parseArgs, runAgentChecks, runChecks } from './common.mjs';

const REVISION = '2026-07-28';
const options = parseArgs(process.argv.slice(2));
const require = installed();
const { Client, ProtocolError, StreamableHTTPClientTransport } = require('@modelcontextprotocol/client');
const { StdioClientTransport, getDefaultEnvironment } = require('@modelcontextprotocol/client/stdio');

const transport = options.url
    ? new StreamableHTTPClientTransport(new URL(options.url), {
          requestInit: { headers: { Authorization: `Bearer ${options.token}` } },
      })
    : new StdioClientTransport({
          command: options.command[0],
          args: options.command.slice(1),
          env: { ...getDefaultEnvironment(), ...options.env },
          stderr: 'inherit',
      });

const client = new Client(
    { name: 'maestro-test-typescript-client-v2', version: '1.0.0' },
    { versionNegotiation: { mode: { pin: REVISION } } },
);
try {
    await client.connect(transport);
} catch (error) {
    fail('connect', `${error?.name}${error?.code !== undefined ? ` (code ${error.code})` : ''}: ${error?.message}`);
}
const negotiated = client.getNegotiatedProtocolVersion();
process.stdout.write(`protocol-version: ${negotiated}\n`);
if (negotiated !== REVISION || client.getProtocolEra() !== 'modern') {
    fail('connect', `expected the modern era at ${REVISION}, got ${negotiated} (${client.getProtocolEra()})`);
}
ok('connect', `server ${client.getServerVersion()?.name ?? '(anonymous)'}`);

if (options.command) deliverOneMessageAtATime(transport);

// `bypass`: always ask the server (the checks compare listings across calls).
const fresh = { cacheMode: 'bypass' };
const api = {
    listTools: async () => (await client.listTools(undefined, { cacheMode: 'refresh' })).tools,
    listPrompts: async () => (await client.listPrompts(undefined, fresh)).prompts,
    getPrompt: (name, args) => client.getPrompt({ name, arguments: args }),
    listResources: async () => (await client.listResources(undefined, fresh)).resources,
    listResourceTemplates: async () => (await client.listResourceTemplates(undefined, fresh)).resourceTemplates,
    readResource: (uri) => client.readResource({ uri }, fresh),
    callTool: (name, args, opts = {}) => client.callTool({ name, arguments: args }, opts),
    isProtocolError: (error) => (error instanceof ProtocolError ? error.code : undefined),
};
await (options.agents ? runAgentChecks(api, options) : runChecks(api, options));
await client.close();
ok('close');
