// The official TypeScript SDK, v1 line (@modelcontextprotocol/sdk 1.32.2): the 2025-11-25
// revision (initialize handshake, Mcp-Session-Id over HTTP). See common.mjs for the
// command line and the checks.

import { deliverOneMessageAtATime, fail, installed, ok, parseArgs, runAgentChecks, runChecks } from './common.mjs';

const options = parseArgs(process.argv.slice(2));
const require = installed();
const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');
const { StdioClientTransport, getDefaultEnvironment } = require('@modelcontextprotocol/sdk/client/stdio.js');
const { McpError, ResourceUpdatedNotificationSchema } = require('@modelcontextprotocol/sdk/types.js');

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
// The client reports the negotiated revision to the transport (HTTP sends it as
// MCP-Protocol-Version); record it, for stdio too.
let negotiated;
const setProtocolVersion = transport.setProtocolVersion?.bind(transport);
transport.setProtocolVersion = (version) => {
    negotiated = version;
    setProtocolVersion?.(version);
};

const client = new Client({ name: 'maestro-test-typescript-sdk', version: '1.0.0' });
try {
    await client.connect(transport);
} catch (error) {
    fail('connect', `${error?.name}: ${error?.message}`);
}
process.stdout.write(`protocol-version: ${negotiated}\n`);
if (options.url && !transport.sessionId) fail('connect', 'no Mcp-Session-Id from the server');
ok('connect', `server ${client.getServerVersion()?.name} ${client.getServerVersion()?.version}`);

if (options.command) deliverOneMessageAtATime(transport);

const api = {
    listTools: async () => (await client.listTools()).tools,
    listPrompts: async () => (await client.listPrompts()).prompts,
    getPrompt: (name, args) => client.getPrompt({ name, arguments: args }),
    listResources: async () => (await client.listResources()).resources,
    listResourceTemplates: async () => (await client.listResourceTemplates()).resourceTemplates,
    readResource: (uri) => client.readResource({ uri }),
    callTool: (name, args, opts = {}) => client.callTool({ name, arguments: args }, undefined, opts),
    isProtocolError: (error) => (error instanceof McpError ? error.code : undefined),
    subscribe: (uri) => client.subscribeResource({ uri }),
    onResourceUpdated: (callback) =>
        client.setNotificationHandler(ResourceUpdatedNotificationSchema, (n) => callback(n.params)),
};
await (options.agents ? runAgentChecks(api, options) : runChecks(api, options));
await client.close();
ok('close');
