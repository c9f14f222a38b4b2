// A development and test OpenID Connect provider for sip-suite (npm `oidc-provider`): two issuers in one
// process, each on its own path of one port —
//   <base>/staff  an organisation's identity provider (staff sign in; tokens carry `hsa_id`)
//   <base>/eid    a citizen e-ID provider (people sign in; tokens carry `personal_identity_number`)
// Each has one confidential client (the web service; authorization code + PKCE S256) and issues JWT
// access tokens (RS256) whose `aud` is the suite's audience, so the suite's APIs accept them through
// SIP_JWT_ISSUERS_FILE (`discovery_url: <issuer>/`). The signing keys are generated at each start; nothing
// secret is committed. Test accounts come from a JSON file (OIDC_ACCOUNTS_FILE, default accounts.json):
// a test user types a username and password on a plain HTML form (no JavaScript) and approves.
// DEVELOPMENT AND TESTS ONLY: accounts with known passwords, in-memory state, http on the loopback.
//
// Environment:
//   OIDC_PORT (9090), OIDC_HOST (127.0.0.1), OIDC_PUBLIC_URL (http://127.0.0.1:<port>: the issuers' base)
//   OIDC_CLIENT_ID (sip-web), OIDC_CLIENT_SECRET (sip-web-dev-secret)
//   OIDC_REDIRECT_URIS (comma-separated; http://localhost:8083/callback)
//   OIDC_POST_LOGOUT_REDIRECT_URIS (comma-separated; http://localhost:8083/)
//   OIDC_AUDIENCE (sip-suite: the `aud` of the access tokens; SIP_JWT_AUDIENCE of the services)
//   OIDC_ACCOUNTS_FILE (accounts.json beside this file)
//   OIDC_TOKEN_TTL_SECONDS (3600)

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Provider from 'oidc-provider';

const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const port = Number(env.OIDC_PORT || 9090);
const host = env.OIDC_HOST || '127.0.0.1';
const base = (env.OIDC_PUBLIC_URL || `http://${host}:${port}`).replace(/\/$/, '');
const list = (value, fallback) => (value || fallback).split(',').map((s) => s.trim()).filter(Boolean);
const clientId = env.OIDC_CLIENT_ID || 'sip-web';
const clientSecret = env.OIDC_CLIENT_SECRET || 'sip-web-dev-secret';
const redirectUris = list(env.OIDC_REDIRECT_URIS, 'http://localhost:8083/callback');
const postLogoutRedirectUris = list(env.OIDC_POST_LOGOUT_REDIRECT_URIS, 'http://localhost:8083/');
const audience = env.OIDC_AUDIENCE || 'sip-suite';
const tokenTtl = Number(env.OIDC_TOKEN_TTL_SECONDS || 3600);
const accounts = JSON.parse(readFileSync(env.OIDC_ACCOUNTS_FILE || path.join(here, 'accounts.json'), 'utf8'));
// the resource indicator of the suite's APIs (an absolute URI, as RFC 8707 asks); its tokens' aud is `audience`
const RESOURCE = 'urn:sip-suite:api';

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body, status = 200) {
  return {
    status,
    html: `<!DOCTYPE html>
<html lang="sv"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(title)}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b;background:#fff}
label{display:block;margin-top:1rem;font-weight:600}input{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;border:1px solid #555}
button{margin-top:1.25rem;font-size:1rem;padding:.6rem 1.2rem;background:#0b4f8a;color:#fff;border:0}
button.secondary{background:#fff;color:#0b4f8a;border:1px solid #0b4f8a}
:focus{outline:3px solid #c25e00;outline-offset:2px}.error{color:#a4000f;font-weight:600}</style>
</head><body><main><h1>${esc(title)}</h1>${body}</main></body></html>`,
  };
}

// An issuer: the accounts it signs in, the claim its tokens carry, and its provider.
function makeIssuer(name, title, claim) {
  const issuer = `${base}/${name}`;
  const byUsername = new Map();
  const byId = new Map();
  for (const a of accounts[name] || []) {
    // a person's account id is opaque (no personnummer in `sub`); a staff account's is its username
    const id = claim === 'hsa_id' ? `staff-${a.username}`
      : `person-${createHash('sha256').update(a.username).digest('hex').slice(0, 16)}`;
    const value = claim === 'hsa_id' ? a.hsa_id : a.username;
    const account = { ...a, id, value };
    byUsername.set(a.username, account);
    byId.set(id, account);
  }
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid: `${name}-${randomBytes(6).toString('hex')}`, use: 'sig', alg: 'RS256' };

  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      client_name: 'sip-suite',
      redirect_uris: redirectUris,
      post_logout_redirect_uris: postLogoutRedirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    }],
    jwks: { keys: [jwk] },
    cookies: {
      keys: [randomBytes(32).toString('hex')],
      names: { session: `_${name}_session`, interaction: `_${name}_interaction`, resume: `_${name}_resume` },
    },
    pkce: { required: () => true },
    claims: { openid: ['sub', 'name', claim] },
    conformIdTokenClaims: false, // the ID token carries the claims (code flow; no userinfo call needed)
    async findAccount(_ctx, id) {
      const account = byId.get(id);
      if (!account) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, name: account.name, [claim]: account.value }) };
    },
    async extraTokenClaims(_ctx, token) {
      const account = byId.get(token.accountId);
      return account && token.kind === 'AccessToken' ? { [claim]: account.value } : undefined;
    },
    features: {
      devInteractions: { enabled: false },
      rpInitiatedLogout: {
        enabled: true,
        async logoutSource(ctx, form) {
          const { html } = page('Logga ut / Sign out', `${form}
<p>Vill du logga ut från ${esc(title)}? / Sign out of ${esc(title)}?</p>
<button id="logout" type="submit" form="op.logoutForm" value="yes" name="logout">Logga ut / Sign out</button>
<button class="secondary" type="submit" form="op.logoutForm">Nej / No</button>`);
          ctx.type = 'html';
          ctx.body = html;
        },
        async postLogoutSuccessSource(ctx) {
          ctx.type = 'html';
          ctx.body = page('Utloggad / Signed out', '<p>Du är utloggad. / You are signed out.</p>').html;
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        useGrantedResource: async () => true,
        async getResourceServerInfo(_ctx, indicator) {
          if (indicator !== RESOURCE) throw new Provider.errors.InvalidTarget();
          return {
            scope: 'sip', audience, accessTokenTTL: tokenTtl, accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    interactions: { url: (_ctx, interaction) => `/${name}/interaction/${interaction.uid}` },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Fel / Error', `<p class="error">${esc(out.error)}: ${esc(out.error_description)}</p>`).html;
    },
    ttl: { AccessToken: tokenTtl, IdToken: tokenTtl, Session: 8 * 3600, Interaction: 3600, Grant: 8 * 3600 },
  });
  provider.on('server_error', (_ctx, err) => console.error(`[${name}] server_error`, err));
  return { name, title, claim, issuer, provider, byUsername, callback: provider.callback() };
}

const issuers = [
  makeIssuer('staff', 'Organisationens inloggning (personal)', 'hsa_id'),
  makeIssuer('eid', 'E-legitimation (privatperson)', 'personal_identity_number'),
];

function loginForm(iss, uid, error) {
  const hint = iss.claim === 'hsa_id' ? 'Användarnamn / Username' : 'Personnummer (12 siffror) / Personal identity number';
  return page(iss.title, `${error ? `<p class="error" role="alert">${esc(error)}</p>` : ''}
<form method="post" action="/${iss.name}/interaction/${esc(uid)}/login" autocomplete="off">
<label for="username">${hint}</label><input id="username" name="username" required autofocus>
<label for="password">Lösenord / Password</label><input id="password" name="password" type="password" required>
<button id="signin" type="submit">Logga in / Sign in</button></form>`);
}

function consentForm(iss, uid, details) {
  const scopes = [...(details.missingOIDCScope || []), ...Object.values(details.missingResourceScopes || {}).flat()];
  return page(iss.title, `<p>sip-suite vill veta vem du är och läsa samordnade individuella planer för din räkning.
/ sip-suite asks who you are and to read coordinated individual plans on your behalf.</p>
<p>Behörighet / Scopes: ${esc(scopes.join(' ') || 'openid')}</p>
<form method="post" action="/${iss.name}/interaction/${esc(uid)}/confirm">
<button id="approve" type="submit">Godkänn / Approve</button></form>
<form method="post" action="/${iss.name}/interaction/${esc(uid)}/abort">
<button id="deny" class="secondary" type="submit">Avbryt / Cancel</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function send(res, { status, html }) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// The login and consent pages: /<issuer>/interaction/<uid>[/login|/confirm|/abort]
async function interaction(iss, req, res, uid, action) {
  const { provider } = iss;
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, page('Fel / Error', '<p>Fel inloggning. / Wrong sign-in.</p>', 400));
  const { prompt } = details;
  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') return send(res, loginForm(iss, uid));
    return send(res, consentForm(iss, uid, prompt.details));
  }
  if (req.method !== 'POST') return send(res, page('Fel / Error', '<p>Method not allowed</p>', 405));
  if (action === 'login') {
    const form = await readForm(req);
    const account = iss.byUsername.get((form.get('username') || '').trim());
    if (!account || account.password !== form.get('password')) {
      return send(res, loginForm(iss, uid, 'Fel användarnamn eller lösenord. / Wrong username or password.'));
    }
    return provider.interactionFinished(req, res, { login: { accountId: account.id } }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm') {
    await readForm(req);
    const { accountId } = details.session;
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: details.params.client_id });
    const d = prompt.details;
    if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
    if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(d.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } }, { mergeWithLastSubmission: true });
  }
  if (action === 'abort') {
    await readForm(req);
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the user cancelled' }, { mergeWithLastSubmission: false });
  }
  return send(res, page('Fel / Error', '<p>Not found</p>', 404));
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, base);
    for (const iss of issuers) {
      const prefix = `/${iss.name}`;
      if (url.pathname !== prefix && !url.pathname.startsWith(`${prefix}/`)) continue;
      const m = url.pathname.match(/^\/[a-z]+\/interaction\/([A-Za-z0-9_-]+)(?:\/(login|confirm|abort))?$/);
      if (m) return await interaction(iss, req, res, m[1], m[2]);
      // mounted like connect's app.use(prefix, …): the provider sees its own paths, originalUrl the whole
      req.originalUrl = req.url;
      req.url = req.url.slice(prefix.length) || '/';
      return iss.callback(req, res);
    }
    if (url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ status: 'ok', issuers: issuers.map((i) => i.issuer) }));
    }
    return send(res, page('Not found', '<p>Not found</p>', 404));
  } catch (err) {
    const known = err?.name === 'SessionNotFound';
    if (!known) console.error('interaction error', err);
    if (!res.headersSent) {
      send(res, page('Fel / Error', `<p class="error">${known ? 'Inloggningen har gått ut. Börja om. / The sign-in expired; start again.' : 'Internal error'}</p>`, known ? 400 : 500));
    }
  }
});

server.listen(port, host, () => {
  console.log(JSON.stringify({ msg: 'oidc-provider listening', issuers: issuers.map((i) => i.issuer), redirectUris }));
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
