// Who is signed in, and where fresh tokens come from.
//
// A dev sign-in (the demo buttons) keeps no token at all: the SDK's `getToken` asks the
// dev-only endpoint for a new one whenever the hub says the current one expires. A pasted
// token is used as it is; when it expires the SDK reports it and the page asks for a new one.

import { metrics } from "./metrics.js";

const KEY = "fitsync.signin";

export class TokenExpiredError extends Error {}

/** The current sign-in: {kind: "dev", user, role} or {kind: "token", token, user, role}. */
export function currentSignIn() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) ?? "null");
  } catch {
    return null;
  }
}

export function saveSignIn(signIn) {
  sessionStorage.setItem(KEY, JSON.stringify(signIn));
}

export function signOut() {
  sessionStorage.removeItem(KEY);
}

/** The claims of a JWT, read without checking it (the hub checks it). */
export function claimsOf(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("not a JWT: expected three dot-separated parts");
  const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(json);
}

/** The demo identities, or null when the hub has no dev login (production mode). */
export async function devLogin() {
  const response = await fetch("/dev/login");
  if (!response.ok) return null;
  return response.json();
}

/** Token lifetime asked of the dev endpoint: `?token_ttl=` in the page's URL, else its default. */
function requestedTtl() {
  const ttl = Number(new URLSearchParams(location.search).get("token_ttl"));
  return Number.isInteger(ttl) && ttl > 0 ? ttl : undefined;
}

export async function devToken(user, role) {
  const response = await fetch("/dev/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user, role, ttl: requestedTtl() }),
  });
  if (!response.ok) throw new Error(`dev token: HTTP ${response.status}`);
  const body = await response.json();
  metrics.tokensFetched += 1;
  return body.token;
}

/** Source of tokens for one sign-in: the SDK's `getToken` and the snapshot requests use it. */
export class Tokens {
  constructor(signIn) {
    this.signIn = signIn;
    this.token = signIn.kind === "token" ? signIn.token : null;
  }

  /** For the SDK: a new token each time (it calls this when the current one expires). */
  async fresh() {
    if (this.signIn.kind === "dev") {
      this.token = await devToken(this.signIn.user, this.signIn.role);
      return this.token;
    }
    throw new TokenExpiredError("the token expired: sign in with a new one");
  }

  async current() {
    return this.token ?? this.fresh();
  }
}
