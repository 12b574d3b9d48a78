// One Centrifuge client per signed-in page, and the connection state always shown in the bar.
//
// States: connecting (first connect), live, reconnecting (the connection dropped and the SDK
// retries), recovered (back, and every missed event came from channel history), reloaded
// (back, some events could not be recovered, so the session was reloaded from the hub),
// disconnected (for good: signed out, or the token was refused).

import { Centrifuge, UnauthorizedError } from "centrifuge";
import { TokenExpiredError } from "./auth.js";

const LABELS = {
  "signed-out": "signed out",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  recovered: "live · recovered missed events",
  reloaded: "live · some events could not be recovered, reloaded",
  disconnected: "disconnected",
};

export class ConnectionState {
  constructor(el) {
    this.el = el;
    this.history = [];
  }

  set(state, detail = "") {
    this.state = state;
    this.history.push(state);
    this.el.dataset.state = state;
    this.el.textContent = detail ? `${LABELS[state]}: ${detail}` : LABELS[state];
  }

  /** A subscription came back after a reconnect; `reloaded` wins over `recovered`. */
  resubscribed(recovered) {
    if (!recovered) this.set("reloaded");
    else if (this.state !== "reloaded") this.set("recovered");
  }
}

export function websocketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/connection/websocket`;
}

/** A client that takes its tokens from `tokens` and reports its state to `state`. */
export function connect(tokens, state) {
  const options = {
    getToken: async () => {
      try {
        return await tokens.fresh();
      } catch (error) {
        if (error instanceof TokenExpiredError) throw new UnauthorizedError(error.message);
        throw error;
      }
    },
  };
  // A dev sign-in has no token yet: the SDK then asks `getToken` before connecting.
  if (tokens.token) options.token = tokens.token;
  const client = new Centrifuge(websocketUrl(), options);
  let wasConnected = false;
  client.on("connecting", () => state.set(wasConnected ? "reconnecting" : "connecting"));
  client.on("connected", () => {
    wasConnected = true;
    state.set("live");
  });
  client.on("disconnected", (ctx) => state.set("disconnected", ctx.reason));
  window.fitsyncClient = client;
  client.connect();
  return client;
}

/** `client.rpc` returning the result's data; errors keep the hub's {code, message}. */
export async function rpc(client, method, data = {}) {
  const result = await client.rpc(method, data);
  return result.data;
}
