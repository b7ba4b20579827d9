// Test-only reverse proxy in front of `maestro serve` for the MCP conformance suite,
// whose client sends no credentials: every request is forwarded with
// `Authorization: Bearer $MAESTRO_MCP_BEARER` added (replacing any it carried).
//
//   node proxy.mjs LISTEN_PORT UPSTREAM_ORIGIN
//
// LISTEN_PORT 0 picks a free port; the port is printed as the first line on stdout once
// listening on 127.0.0.1. UPSTREAM_ORIGIN is `http://127.0.0.1:PORT`; paths and queries
// are kept. The Host and Origin headers go upstream exactly as received (the DNS
// rebinding scenario depends on the server seeing them), bodies stream both ways without
// buffering (SSE events reach the client as the server writes them), and when either
// side hangs up the other connection is closed too.

import http from "node:http";

const [listenArg, upstreamArg] = process.argv.slice(2);
const token = process.env.MAESTRO_MCP_BEARER;
if (listenArg === undefined || upstreamArg === undefined || !token) {
  console.error("usage: MAESTRO_MCP_BEARER=mk_... node proxy.mjs LISTEN_PORT UPSTREAM_ORIGIN");
  process.exit(2);
}
const upstream = new URL(upstreamArg);

// Hop-by-hop headers (RFC 9110 §7.6.1) are this connection's business, not the next one's.
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
]);

/** Raw header pairs without hop-by-hop ones (and `skip`), duplicates and case kept. */
function forwardable(rawHeaders, skip) {
  const out = [];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i].toLowerCase();
    if (!HOP_BY_HOP.has(name) && !skip.has(name)) out.push(rawHeaders[i], rawHeaders[i + 1]);
  }
  return out;
}

const agent = new http.Agent({ keepAlive: true });

const server = http.createServer((req, res) => {
  const headers = forwardable(req.rawHeaders, new Set(["authorization"]));
  headers.push("Authorization", `Bearer ${token}`);
  const outgoing = http.request({
    agent,
    host: upstream.hostname,
    port: upstream.port,
    method: req.method,
    path: req.url,
    headers, // an array keeps the client's Host header as the one sent upstream
  });
  outgoing.on("response", (answer) => {
    res.writeHead(answer.statusCode, answer.statusMessage, forwardable(answer.rawHeaders, new Set()));
    res.flushHeaders();
    answer.on("data", (chunk) => res.write(chunk));
    answer.on("end", () => res.end());
    answer.on("error", () => res.destroy());
  });
  outgoing.on("error", (error) => {
    if (res.headersSent) {
      res.destroy();
    } else {
      res.writeHead(502, { "content-type": "text/plain" });
      res.end(`proxy: upstream request failed: ${error.message}\n`);
    }
  });
  // The client went away (e.g. it closed an SSE stream): close the upstream side too.
  res.on("close", () => {
    if (!res.writableFinished) outgoing.destroy();
  });
  req.pipe(outgoing);
});

server.on("clientError", (_error, socket) => socket.destroy());
server.listen(Number(listenArg), "127.0.0.1", () => {
  console.log(String(server.address().port));
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
