// The athlete's view: start and end a session, log a set by hand (the hub's validation error
// shown next to the field it names), the own session's live sets and heart rate, the coach.

import { CoachPanel } from "./coach_panel.js";
import { rpc } from "./connection.js";
import { h, newEventId } from "./dom.js";
import { LiveSession } from "./live_session.js";
import { SessionView } from "./session_view.js";

const SET_FIELDS = [
  ["exercise", "Exercise", "text", "squat"],
  ["reps", "Reps", "number", "8"],
  ["weight_kg", "Weight (kg)", "number", "60"],
  ["rpe", "RPE (optional)", "number", ""],
];

export class AthleteApp {
  constructor(client, me, { tokens, state }) {
    this.client = client;
    this.me = me;
    this.tokens = tokens;
    this.state = state;
    this.live = null;
    this.view = null;
    this.sessionSlot = h("div");
    this.startButton = h("button", { type: "button", onclick: () => this.startSession() }, "Start session");
    this.endButton = h("button.secondary", { type: "button", hidden: true, onclick: () => this.endSession() }, "End session");
    this.message = h("p.notice", { hidden: true, dataset: { testid: "athlete-notice" } });
    this.form = this._setForm();
    this.coach = new CoachPanel(client, me);
    this.el = h("div.athlete",
      h("div.columns",
        h("div.main",
          h("section.controls", {}, h("h2", {}, "Your workout"), this.startButton, this.endButton, this.message),
          this.form, this.sessionSlot),
        h("div.side", this.coach.el)));
  }

  async start(root) {
    root.append(this.el);
    this.coach.start();
    try {
      const { sessions } = await rpc(this.client, "sessions.recent", { limit: 1 });
      if (sessions[0]?.status === "active") this._open(sessions[0].session_id);
      else this._idle();
    } catch (error) {
      this._notice(error.message ?? String(error));
    }
  }

  route() {}

  async startSession() {
    try {
      const { session_id } = await rpc(this.client, "session.start", { title: "workout from the web app" });
      this._open(session_id);
    } catch (error) {
      this._notice(error.message ?? String(error));
    }
  }

  async endSession() {
    if (!this.live) return;
    try {
      await rpc(this.client, "session.end", { session_id: this.live.sessionId });
      this._ended();
    } catch (error) {
      this._notice(error.message ?? String(error));
    }
  }

  _ended() {
    this.startButton.hidden = false;
    this.endButton.hidden = true;
    this.form.hidden = true;
  }

  _idle() {
    this.form.hidden = true;
    this.sessionSlot.replaceChildren(h("p.muted", {}, "No session running. Start one to log sets."));
  }

  _open(sessionId) {
    this.live?.stop();
    this.view?.destroy();
    this.live = new LiveSession(this.client, sessionId, { tokens: this.tokens, state: this.state }).start();
    this.view = new SessionView(this.live.store, { title: "Your session", me: this.me });
    this.sessionSlot.replaceChildren(this.view.el);
    this.view.mounted();
    this.live.listen(() => {
      this.view.render(this.live.watcherUsers());
      if (this.live.store.status === "ended") this._ended(); // perhaps by the athlete's watch
    });
    this.startButton.hidden = true;
    this.endButton.hidden = false;
    this.form.hidden = false;
  }

  _setForm() {
    this.inputs = {};
    this.errors = {};
    const rows = SET_FIELDS.map(([name, label, type, value]) => {
      const input = h("input", { name, type, value, step: type === "number" ? "any" : undefined });
      const error = h("span.field-error", { dataset: { errorFor: name } });
      this.inputs[name] = input;
      this.errors[name] = error;
      return h("label", {}, h("span", {}, label), input, error);
    });
    this.formError = h("p.field-error", { dataset: { errorFor: "form" } });
    return h("form.log-set", { dataset: { testid: "log-set" }, onsubmit: (e) => { e.preventDefault(); this.logSet(); } },
      h("h3", {}, "Log a set"), ...rows, h("button", { type: "submit" }, "Log set"), this.formError);
  }

  /** Publish the set; the publish reply is the hub's acknowledgement that it is stored. */
  async logSet(eventId = newEventId()) {
    for (const el of [...Object.values(this.errors), this.formError]) el.textContent = "";
    const event = { type: "set", event_id: eventId, exercise: this.inputs.exercise.value,
      reps: numberOrText(this.inputs.reps.value), weight_kg: numberOrText(this.inputs.weight_kg.value) };
    if (this.inputs.rpe.value !== "") event.rpe = numberOrText(this.inputs.rpe.value);
    try {
      await this.client.publish(this.live.channel, event);
      this.formError.textContent = "";
    } catch (error) {
      const [field, ...rest] = String(error.message ?? "").split(":");
      if (this.errors[field] && rest.length) this.errors[field].textContent = rest.join(":").trim();
      else this.formError.textContent = error.message ?? String(error);
      if (error.temporary) {
        // The same event id again: the hub stores a retried set once.
        this.formError.append(h("button.link", { type: "button", onclick: () => this.logSet(eventId) }, "retry"));
      }
    }
  }

  _notice(text) {
    this.message.hidden = false;
    this.message.textContent = text;
  }

  destroy() {
    this.live?.stop();
    this.view?.destroy();
    this.coach.stop();
  }
}

/** Numbers as numbers; anything else is sent as typed, for the hub to refuse by name. */
function numberOrText(value) {
  const n = Number(value);
  return value.trim() !== "" && Number.isFinite(n) ? n : value;
}
