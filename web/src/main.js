// Entry point: sign-in, then the trainer's or the athlete's view for the token's role.

import { AthleteApp } from "./athlete.js";
import { claimsOf, currentSignIn, devLogin, saveSignIn, signOut, Tokens } from "./auth.js";
import { ConnectionState, connect } from "./connection.js";
import { h } from "./dom.js";
import "./metrics.js";

const root = document.getElementById("app");
const state = new ConnectionState(document.getElementById("conn"));
window.fitsyncState = state;

async function main() {
  const signIn = currentSignIn();
  if (!signIn) return showSignIn();
  const tokens = new Tokens(signIn);
  document.getElementById("who").textContent = `${signIn.user} · ${signIn.role}`;
  const out = document.getElementById("sign-out");
  out.hidden = false;
  out.onclick = () => {
    signOut();
    location.hash = "";
    location.reload();
  };
  const client = connect(tokens, state);
  const App = signIn.role === "trainer" ? (await import("./trainer.js")).TrainerApp : AthleteApp;
  const app = new App(client, signIn.user, { tokens, state });
  root.replaceChildren();
  window.fitsyncApp = app;
  window.addEventListener("hashchange", () => app.route());
  await app.start(root);
}

async function showSignIn() {
  state.set("signed-out");
  const error = h("p.field-error", { dataset: { errorFor: "token" } });
  const field = h("textarea", { name: "token", rows: 3, placeholder: "eyJhbGciOi…" });
  const form = h("form.sign-in", {
    onsubmit: (e) => {
      e.preventDefault();
      try {
        const token = field.value.trim();
        const claims = claimsOf(token);
        saveSignIn({ kind: "token", token, user: claims.sub, role: claims.role ?? "athlete" });
        location.reload();
      } catch (err) {
        error.textContent = `Not a token: ${err.message}`;
      }
    },
  }, h("label", {}, h("span", {}, "Connection token (JWT)"), field), h("button", { type: "submit" }, "Sign in"), error);
  const panel = h("section.sign-in-panel", {}, h("h2", {}, "Sign in"), form);
  root.replaceChildren(panel);
  const demo = await devLogin().catch(() => null);
  if (!demo) return;
  const button = (who) => h("button", {
    type: "button",
    dataset: { testid: `demo-${who.role}` },
    onclick: async () => {
      await fetch("/dev/demo", { method: "POST" }); // the demo trainer and athlete, linked
      saveSignIn({ kind: "dev", user: who.user, role: who.role });
      location.reload();
    },
  }, `demo ${who.role}`);
  panel.append(h("div.dev", {}, h("h3", {}, "Development"),
    h("p.muted", {}, "This hub runs in development mode: sign in as a demo user."),
    button(demo.athlete), " ", button(demo.trainer),
    h("p.muted", {}, `${demo.trainer.name} watches ${demo.athlete.name} and the clients of `,
      h("code", {}, "fitsync-hub simulate --demo"), ".")));
}

main().catch((error) => {
  console.error(error);
  root.replaceChildren(h("p.error", {}, `Something went wrong: ${error.message ?? error}`));
});
