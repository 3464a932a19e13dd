// oidc-provider (OpenID Certified, pinned in package.json) set up as the authorization server of
// an MCP server, for mcp-auth's interop tests. Loopback only, no human in the loop.
//
//   node as.mjs [CONFIG] [PORT]          (or AS_CONFIG / PORT in the environment; port 0 = any)
//
// Prints `READY <issuer>` on stdout once it listens; everything else goes to stderr.
//
// CONFIG:
//   default                 the provider's default `issueRefreshToken` policy: a refresh token
//                           only when `offline_access` was granted (OpenID Connect Core §11:
//                           `offline_access` is dropped unless the request has prompt=consent)
//   public-refresh          refresh tokens for every client allowed the refresh_token grant,
//                           public ones included, without `offline_access` (which this
//                           configuration does not advertise, so a client cannot ask for it)
//   confidential-oidc-only  only `client_secret_basic` client authentication (a client
//                           registered through DCR is confidential), and metadata only at
//                           /.well-known/openid-configuration: the RFC 8414 path answers 404
//   no-refresh              never a refresh token; access tokens live 30 s
//
// Common to all: open Dynamic Client Registration (RFC 7591), PKCE S256 required, resource
// indicators (RFC 8707) issuing JWT access tokens (RFC 9068) whose `aud` is the `resource`, refresh
// tokens rotated on every use, `iss` in the authorization response (RFC 9207; always on in v9),
// revocation (RFC 7009), scopes `openid offline_access mcp` (`openid mcp` in public-refresh).
// The resource handling keeps the provider's defaults: a token request without `resource` gets
// an opaque token for the userinfo endpoint, so a client must name the MCP server every time.
// DPoP is off (mcp-auth sends bearer tokens).
//
// Interaction: GET /interaction/:uid logs in the fixed account `mcp-test-user` and grants what
// was asked for (OIDC scopes, `mcp` on the requested resource) in one step, then redirects to the
// resume endpoint. The authorization is therefore three plain GET redirects:
//   /auth?... → /interaction/:uid → /auth/:uid → redirect_uri?code=…&state=…&iss=…
//
// Cookies: oidc-provider binds the interaction and the resume step to signed cookies set by the
// first redirect. A browser sends them back; `mcp-auth login --headless` keeps no cookies. So this
// server remembers the cookies it set on the redirect to /interaction/:uid and, for a request to
// /interaction/:uid or /auth/:uid that carries no cookie at all, supplies them itself — the
// provider's own checks then run as they would for a browser. `COOKIE_REPLAY=off` disables it.
//
// Test hooks (not part of any spec): GET /_events answers every provider event and HTTP request
// seen so far as JSON, in order (no token values: ids, kinds, grant types, error messages).

import { randomBytes } from 'node:crypto';
import http from 'node:http';

import { exportJWK, generateKeyPair } from 'jose';
import Provider from 'oidc-provider';

const CONFIGS = ['default', 'public-refresh', 'confidential-oidc-only', 'no-refresh'];
const configName = process.argv[2] ?? process.env.AS_CONFIG ?? 'default';
const requestedPort = Number(process.argv[3] ?? process.env.PORT ?? 0);
const cookieReplay = (process.env.COOKIE_REPLAY ?? 'on') !== 'off';
if (!CONFIGS.includes(configName) || !Number.isInteger(requestedPort)) {
  process.stderr.write(`usage: node as.mjs [${CONFIGS.join('|')}] [PORT]\n`);
  process.exit(2);
}

const ACCOUNT = 'mcp-test-user';
const RESOURCE_SCOPES = ['mcp'];
const SCOPES = configName === 'public-refresh'
  ? ['openid', 'mcp']
  : ['openid', 'offline_access', 'mcp'];
const ACCESS_TOKEN_TTL = configName === 'no-refresh' ? 30 : 3600;

/** Everything observed, in order; served at GET /_events. */
const events = [];
function record(event) {
  const entry = { seq: events.length, at: Date.now(), ...event };
  events.push(entry);
  process.stderr.write(`[as ${configName}] ${JSON.stringify(entry)}\n`);
}

// Listen first: with port 0 the issuer is only known once the socket is bound.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(requestedPort, '127.0.0.1', resolve);
});
const issuer = `http://127.0.0.1:${server.address().port}`;

const signing = await generateKeyPair('RS256', { extractable: true });
const jwk = { ...(await exportJWK(signing.privateKey)), kid: 'interop-rs256', alg: 'RS256', use: 'sig' };

const configuration = {
  clients: [],
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: SCOPES,
  claims: { openid: ['sub'] },
  responseTypes: ['code'],
  clientAuthMethods: configName === 'confidential-oidc-only'
    ? ['client_secret_basic']
    : ['none', 'client_secret_basic', 'client_secret_post'],
  pkce: { required: () => true },
  rotateRefreshToken: true,
  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken: 3600,
    Interaction: 600,
    RefreshToken: 24 * 3600,
    Session: 3600,
  },
  findAccount: async (_ctx, sub) => ({
    accountId: sub,
    async claims() { return { sub }; },
  }),
  interactions: {
    url: async (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: true, initialAccessToken: false },
    revocation: { enabled: true },
    // DPoP stays off: mcp-auth sends bearer tokens and the MCP server checks bearer tokens.
    dPoP: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // `defaultResource` and `useGrantedResource` keep the provider's defaults: a token request
      // (code exchange or refresh) without `resource` gets an opaque token for the userinfo
      // endpoint, not a JWT for the MCP server — the client must send `resource` every time
      // (RFC 8707 §2.2).
      getResourceServerInfo: async (_ctx, resourceIndicator) => ({
        scope: RESOURCE_SCOPES.join(' '),
        audience: resourceIndicator,
        accessTokenTTL: ACCESS_TOKEN_TTL,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
};

if (configName === 'public-refresh') {
  // Any client allowed the refresh_token grant gets a refresh token, public clients included,
  // with or without `offline_access`.
  configuration.issueRefreshToken = async (_ctx, client) => client.grantTypeAllowed('refresh_token');
} else if (configName === 'no-refresh') {
  configuration.issueRefreshToken = async () => false;
}
// `default` and `confidential-oidc-only` keep the provider's default `issueRefreshToken`.

const provider = new Provider(issuer, configuration);
// Plain http on loopback: no proxy in front.
provider.proxy = false;

// --- events --------------------------------------------------------------------------------

const grantType = (ctx) => ctx?.oidc?.params?.grant_type;
const clientId = (ctx) => ctx?.oidc?.client?.clientId;
provider.on('grant.success', (ctx) => record({
  type: 'grant.success',
  grant_type: grantType(ctx),
  client_id: clientId(ctx),
  resource: ctx.oidc.params?.resource,
  refresh_token_issued: ctx.body?.refresh_token !== undefined,
  scope: ctx.body?.scope,
  expires_in: ctx.body?.expires_in,
}));
provider.on('grant.error', (ctx, err) => record({
  type: 'grant.error', grant_type: grantType(ctx), client_id: clientId(ctx), error: err.message, description: err.error_description,
}));
provider.on('refresh_token.consumed', (token) => record({ type: 'refresh_token.consumed', grant_id: token.grantId }));
provider.on('refresh_token.saved', (token) => record({ type: 'refresh_token.saved', grant_id: token.grantId }));
provider.on('refresh_token.destroyed', (token) => record({ type: 'refresh_token.destroyed', grant_id: token.grantId }));
provider.on('grant.revoked', (_ctx, grantId) => record({ type: 'grant.revoked', grant_id: grantId }));
provider.on('revocation.error', (ctx, err) => record({
  type: 'revocation.error', client_id: clientId(ctx), error: err.message, description: err.error_description,
}));
provider.on('registration_create.success', (_ctx, client) => record({
  type: 'registration_create.success',
  client_id: client.clientId,
  application_type: client.applicationType,
  token_endpoint_auth_method: client.clientAuthMethod,
  grant_types: client.grantTypes,
  redirect_uris: client.redirectUris,
}));
provider.on('registration_create.error', (_ctx, err) => record({
  type: 'registration_create.error', error: err.message, description: err.error_description,
}));
provider.on('authorization.success', (ctx) => record({ type: 'authorization.success', client_id: clientId(ctx) }));
provider.on('authorization.error', (ctx, err) => record({
  type: 'authorization.error', client_id: clientId(ctx), error: err.message, description: err.error_description,
}));
provider.on('interaction.started', (_ctx, prompt) => record({
  type: 'interaction.started', prompt: prompt.name, reasons: prompt.reasons,
}));
provider.on('server_error', (_ctx, err) => record({ type: 'server_error', error: String(err?.stack ?? err) }));

// --- interaction ---------------------------------------------------------------------------

/** Logs in ACCOUNT and grants everything the request asked for, in one step. */
async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const { params, grantId } = details;
  const requested = String(params.scope ?? '').split(' ').filter(Boolean);
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: ACCOUNT, clientId: params.client_id });
  const oidcScopes = requested.filter((s) => SCOPES.includes(s));
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
  const resourceScopes = requested.filter((s) => RESOURCE_SCOPES.includes(s));
  const resources = [params.resource ?? []].flat();
  for (const resource of resources) {
    if (resourceScopes.length) grant.addResourceScope(resource, resourceScopes.join(' '));
  }
  const saved = await grant.save();
  record({
    type: 'interaction.finished',
    prompt: details.prompt.name,
    reasons: details.prompt.reasons,
    requested_scope: params.scope,
    requested_prompt: params.prompt,
    resource: params.resource,
    granted_oidc_scopes: oidcScopes,
    granted_resource_scopes: resourceScopes,
  });
  await provider.interactionFinished(
    req,
    res,
    { login: { accountId: ACCOUNT }, consent: { grantId: saved } },
    { mergeWithLastSubmission: false },
  );
}

// --- HTTP front ----------------------------------------------------------------------------

const providerCallback = provider.callback();
/** Cookies set on the redirect to /interaction/:uid, by uid (see the header comment). */
const cookieJar = new Map();
const UID = /^\/(?:interaction|auth)\/([A-Za-z0-9_-]+)$/;

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  const query = Object.fromEntries(url.searchParams);
  const entry = { type: 'request', method: req.method, path: url.pathname };
  if (url.pathname === '/auth') {
    // What the client asked for (no secrets in an authorization request: PKCE sends only the
    // challenge).
    entry.scope = query.scope;
    entry.prompt = query.prompt;
    entry.resource = query.resource;
    entry.code_challenge_method = query.code_challenge_method;
  }
  if (req.method === 'POST' && url.pathname === '/token') {
    entry.basic_auth = (req.headers.authorization ?? '').startsWith('Basic ');
  }

  const uid = url.pathname.match(UID)?.[1];
  if (uid && cookieReplay && !req.headers.cookie && cookieJar.has(uid)) {
    req.headers.cookie = cookieJar.get(uid);
    entry.cookies_replayed = true;
  }
  // Remember the cookies of a redirect to an interaction (headers are final in writeHead).
  const writeHead = res.writeHead;
  res.writeHead = function patchedWriteHead(...args) {
    const location = res.getHeader('location');
    const setCookie = res.getHeader('set-cookie');
    const target = location && String(location).match(/\/interaction\/([A-Za-z0-9_-]+)/)?.[1];
    if (target && setCookie) {
      cookieJar.set(target, [setCookie].flat().map((c) => String(c).split(';')[0]).join('; '));
    }
    return writeHead.apply(this, args);
  };
  res.on('finish', () => {
    if (url.pathname === '/_events') return;
    entry.status = res.statusCode;
    // Where it redirected (the path only: the redirect URI's query carries the code).
    const location = res.getHeader('location');
    if (location) entry.redirects_to = new URL(String(location), issuer).pathname;
    record(entry);
    if (uid && url.pathname.startsWith('/auth/')) cookieJar.delete(uid);
  });

  try {
    if (req.method === 'GET' && url.pathname === '/_events') {
      json(res, 200, events);
      return;
    }
    if (configName === 'confidential-oidc-only'
      && url.pathname.startsWith('/.well-known/oauth-authorization-server')) {
      json(res, 404, { error: 'not_found' });
      return;
    }
    if (req.method === 'GET' && url.pathname.startsWith('/interaction/')) {
      await interaction(req, res);
      return;
    }
    providerCallback(req, res);
  } catch (err) {
    record({ type: 'front.error', path: url.pathname, error: String(err?.message ?? err) });
    if (!res.headersSent) json(res, 400, { error: 'interaction_failed', error_description: String(err?.message ?? err) });
  }
});

process.stdout.write(`READY ${issuer}\n`);

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
