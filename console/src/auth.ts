/**
 * Sign-in: OAuth 2.0 authorization code with PKCE (S256) against Auth0, or
 * the development issuer in the demo, which speaks the same protocol.
 *
 * The access token lives in this module's memory only: never localStorage or
 * sessionStorage, never a cookie; a reload signs in again (Auth0's own
 * session makes that one redirect). Only the one-time PKCE verifier and
 * state cross the redirect, in sessionStorage, and are removed on return.
 */

export interface AuthConfig {
  authorize_url: string;
  token_url: string;
  client_id: string;
  audience: string | null;
  scope: string;
}

export interface Session {
  token: string;
  sub: string;
  scopes: Set<string>;
  expiresAt: number;
}

const PENDING_KEY = "analytics-console:pkce";
let session: Session | null = null;

export function currentSession(): Session | null {
  if (session !== null && Date.now() >= session.expiresAt) session = null;
  return session;
}

export function signOut(): void {
  session = null;
}

function base64url(bytes: Uint8Array): string {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(bytes = 32): string {
  return base64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function challengeOf(verifier: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

function redirectUri(): string {
  return `${location.origin}${location.pathname}`;
}

/** Leaves for the authorization server's sign-in page. */
export async function beginSignIn(config: AuthConfig): Promise<void> {
  const verifier = randomString();
  const state = randomString(16);
  sessionStorage.setItem(PENDING_KEY, JSON.stringify({ verifier, state }));
  const params = new URLSearchParams({
    response_type: "code",
    client_id: config.client_id,
    redirect_uri: redirectUri(),
    scope: config.scope,
    state,
    code_challenge: await challengeOf(verifier),
    code_challenge_method: "S256",
  });
  if (config.audience) params.set("audience", config.audience);
  location.assign(`${config.authorize_url}?${params}`);
}

/**
 * On return from the sign-in page (`?code=&state=`): trades the code for a
 * token and cleans the address bar. Null when this page load is not a return.
 */
export async function completeSignIn(config: AuthConfig): Promise<Session | null> {
  const query = new URLSearchParams(location.search);
  const code = query.get("code");
  const error = query.get("error");
  if (code === null && error === null) return null;
  const pending = sessionStorage.getItem(PENDING_KEY);
  sessionStorage.removeItem(PENDING_KEY);
  history.replaceState(null, "", redirectUri() + (location.hash || "#overview"));
  if (error !== null) throw new Error(`sign-in refused: ${query.get("error_description") ?? error}`);
  const { verifier, state } = JSON.parse(pending ?? "{}") as { verifier?: string; state?: string };
  if (!verifier || state !== query.get("state")) {
    throw new Error("sign-in answer does not match a sign-in started here; sign in again");
  }
  const answer = await fetch(config.token_url, {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      client_id: config.client_id,
      code: code ?? "",
      code_verifier: verifier,
      redirect_uri: redirectUri(),
    }),
  });
  const body = (await answer.json()) as Record<string, unknown>;
  if (!answer.ok || typeof body.access_token !== "string") {
    throw new Error(`sign-in failed: ${String(body.error_description ?? body.error ?? answer.status)}`);
  }
  return useToken(body.access_token);
}

/** Claims of a JWT, read for display only (the API checks the signature). */
function claimsOf(token: string): Record<string, unknown> {
  const part = token.split(".")[1];
  if (part === undefined) throw new Error("that is not a JWT access token");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(json) as Record<string, unknown>;
}

/** A session from a token in hand (the sign-in answer, or one pasted in). */
export function useToken(token: string): Session {
  const claims = claimsOf(token.trim());
  const scopes = new Set(String(claims.scope ?? "").split(" ").filter(Boolean));
  if (Array.isArray(claims.permissions)) for (const p of claims.permissions) scopes.add(String(p));
  const exp = typeof claims.exp === "number" ? claims.exp * 1000 : Date.now() + 3600_000;
  session = { token: token.trim(), sub: String(claims.sub ?? "unknown"), scopes, expiresAt: exp };
  return session;
}
