// A small protected MCP server for mcp-auth's interop tests: streamable-HTTP-ish JSON-RPC at
// /mcp, guarded by JWT access tokens (RFC 9068) of the authorization server given as argument.
//
//   node mcp.mjs ISSUER [PORT]           (or ISSUER / PORT in the environment; port 0 = any)
//
// Prints `READY <url of /mcp>` on stdout once it listens; a line per request goes to stderr.
//
// - GET /.well-known/oauth-protected-resource/mcp: RFC 9728 metadata, `resource` = the /mcp URL,
//   `authorization_servers` = [ISSUER], `scopes_supported` = ["mcp"].
// - POST /mcp without a valid token: 401 with
//   `WWW-Authenticate: Bearer resource_metadata="…"` (plus error="invalid_token" when a token was
//   sent); a valid token without the `mcp` scope: 403 insufficient_scope.
// - A token is valid when it verifies against the issuer's JWKS with `iss` = ISSUER, `aud` = the
//   /mcp URL and `typ` = at+jwt, and has not expired (no clock tolerance).
// - JSON-RPC: initialize, notifications/* (202), ping, tools/list, tools/call `whoami`.
// - GET /_log (test hook): every request so far as JSON — method, path, JSON-RPC method, whether
//   the token verified, and its jti, aud, sub, scope, client_id, iat, exp (never the token).

import http from 'node:http';

import { createRemoteJWKSet, jwtVerify } from 'jose';

const issuer = process.argv[2] ?? process.env.ISSUER;
const requestedPort = Number(process.argv[3] ?? process.env.PORT ?? 0);
if (!issuer || !Number.isInteger(requestedPort)) {
  process.stderr.write('usage: node mcp.mjs ISSUER [PORT]\n');
  process.exit(2);
}

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const origin = `http://127.0.0.1:${server.address().port}`;
const resource = `${origin}/mcp`;
const metadataUrl = `${origin}/.well-known/oauth-protected-resource/mcp`;
// Discovery of the JWKS through the AS metadata would add nothing here: the URL is the
// provider's fixed route. Keys are fetched on first use and when an unknown `kid` appears.
const jwks = createRemoteJWKSet(new URL(`${issuer}/jwks`));

const log = [];

function send(res, status, body, headers = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Verifies the bearer token; answers { ok, claims } or { ok: false, error, reason }. */
async function authenticate(req) {
  const header = req.headers.authorization ?? '';
  const match = header.match(/^Bearer ([A-Za-z0-9\-._~+/]+=*)$/);
  if (!match) return { ok: false, error: undefined, reason: header ? 'malformed Authorization header' : 'no token' };
  try {
    const { payload } = await jwtVerify(match[1], jwks, {
      issuer,
      audience: resource,
      typ: 'at+jwt',
      clockTolerance: 0,
    });
    return { ok: true, claims: payload };
  } catch (err) {
    return { ok: false, error: 'invalid_token', reason: `${err.code ?? 'error'}: ${err.message}` };
  }
}

function challenge(error, description) {
  let value = `Bearer resource_metadata="${metadataUrl}"`;
  if (error) value += `, error="${error}", error_description="${description.replace(/["\\]/g, '')}"`;
  return { 'www-authenticate': value };
}

function rpc(message, claims) {
  const result = (value) => ({ jsonrpc: '2.0', id: message.id, result: value });
  switch (message.method) {
    case 'initialize':
      return result({
        protocolVersion: message.params?.protocolVersion ?? '2025-11-25',
        capabilities: { tools: {} },
        serverInfo: { name: 'mcp-auth-interop-mcp', version: '0.0.0' },
      });
    case 'ping':
      return result({});
    case 'tools/list':
      return result({
        tools: [{
          name: 'whoami',
          description: 'The subject, client and scope of the access token used.',
          inputSchema: { type: 'object', properties: {} },
        }],
      });
    case 'tools/call':
      if (message.params?.name === 'whoami') {
        const text = JSON.stringify({ sub: claims.sub, client_id: claims.client_id, scope: claims.scope });
        return result({ content: [{ type: 'text', text }] });
      }
      return { jsonrpc: '2.0', id: message.id, error: { code: -32602, message: 'unknown tool' } };
    default:
      return { jsonrpc: '2.0', id: message.id, error: { code: -32601, message: 'method not found' } };
  }
}

server.on('request', async (req, res) => {
  const url = new URL(req.url, origin);
  const entry = { seq: log.length, at: Date.now(), method: req.method, path: url.pathname };
  res.on('finish', () => {
    entry.status = res.statusCode;
    log.push(entry);
    process.stderr.write(`[mcp] ${JSON.stringify(entry)}\n`);
  });
  try {
    if (req.method === 'GET' && url.pathname === '/_log') {
      send(res, 200, log);
      return;
    }
    if (req.method === 'GET' && url.pathname === '/.well-known/oauth-protected-resource/mcp') {
      send(res, 200, {
        resource,
        authorization_servers: [issuer],
        scopes_supported: ['mcp'],
        bearer_methods_supported: ['header'],
      });
      return;
    }
    if (url.pathname !== '/mcp') {
      send(res, 404, { error: 'not_found' });
      return;
    }
    if (req.method !== 'POST') {
      send(res, 405, { error: 'method_not_allowed' }, { allow: 'POST' });
      return;
    }
    const auth = await authenticate(req);
    entry.verified = auth.ok;
    if (!auth.ok) {
      entry.reason = auth.reason;
      send(res, 401, { error: auth.error ?? 'unauthorized' }, challenge(auth.error, auth.reason));
      return;
    }
    const { claims } = auth;
    Object.assign(entry, {
      jti: claims.jti,
      aud: claims.aud,
      sub: claims.sub,
      scope: claims.scope,
      client_id: claims.client_id,
      iat: claims.iat,
      exp: claims.exp,
    });
    if (!String(claims.scope ?? '').split(' ').includes('mcp')) {
      send(res, 403, { error: 'insufficient_scope' }, {
        'www-authenticate': `Bearer resource_metadata="${metadataUrl}", error="insufficient_scope", scope="mcp"`,
      });
      return;
    }
    let message;
    try {
      message = JSON.parse(await readBody(req));
    } catch {
      send(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } });
      return;
    }
    entry.rpc = message?.method;
    if (typeof message?.method === 'string' && message.id === undefined) {
      send(res, 202); // a notification
      return;
    }
    send(res, 200, rpc(message, claims));
  } catch (err) {
    entry.error = String(err?.message ?? err);
    if (!res.headersSent) send(res, 500, { error: 'server_error' });
  }
});

process.stdout.write(`READY ${resource}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
