// The AI-coach chat of one athlete: history from `coach.history`, live from `coach:<user>`.
//
// The athlete asks (`coach.ask`), sees the answer token by token (`delta`), may cancel it
// while it streams (`coach.cancel`), and gets a retry button when an error is `retryable`.
// A trainer sees the same conversation read-only. Deltas carry an `index`: one already
// applied (a recovered publication after a reconnect) is skipped, so no token shows twice.
// While the hub has no coach (`coach.ask` / `coach.history` answer 104) the panel says so.

import { rpc } from "./connection.js";
import { clear, h } from "./dom.js";

const METHOD_NOT_FOUND = 104;

export class CoachPanel {
  constructor(client, userId, { readOnly = false } = {}) {
    this.client = client;
    this.userId = userId;
    this.readOnly = readOnly;
    this.messages = new Map(); // message_id → {role, text, status, el, nextIndex}
    this.streaming = null; // reply_id of the answer streaming now
    this.list = h("div.messages", { dataset: { testid: "coach-messages" } });
    this.notice = h("p.notice", { dataset: { testid: "coach-notice" }, hidden: true });
    this.input = h("textarea", { rows: 2, placeholder: "Ask your coach…", name: "question" });
    this.askButton = h("button", { type: "submit" }, "Ask");
    this.cancelButton = h("button.secondary", { type: "button", hidden: true,
      onclick: () => this.cancel() }, "Cancel");
    const form = h("form.ask", { onsubmit: (e) => { e.preventDefault(); this.ask(this.input.value); } },
      this.input, this.askButton, this.cancelButton);
    this.el = h("section.coach", { dataset: { testid: "coach" } },
      h("h3", {}, readOnly ? "Coach chat (read only)" : "Coach"), this.notice, this.list,
      readOnly ? null : form);
  }

  async start() {
    this.sub = this.client.newSubscription(`coach:${this.userId}`, { recoverable: true, positioned: true });
    this.sub.on("publication", (ctx) => this.apply(ctx.data));
    this.sub.on("subscribed", (ctx) => {
      if (ctx.wasRecovering && !ctx.recovered) this.loadHistory();
    });
    this.sub.subscribe();
    await this.loadHistory();
    return this;
  }

  stop() {
    if (this.sub) {
      this.sub.unsubscribe();
      this.client.removeSubscription(this.sub);
      this.sub = null;
    }
  }

  async loadHistory() {
    try {
      const data = { limit: 50 };
      if (this.readOnly) data.user_id = this.userId;
      const result = await rpc(this.client, "coach.history", data);
      if (!result.messages?.length && !this.messages.size) {
        this.list.append(h("p.muted.empty", {}, this.readOnly ? "No coach chat yet." : "Ask about your training."));
      }
      for (const item of result.messages ?? []) {
        const m = this._upsert(item.message_id, item.role, item.text, item.status);
        if (item.reply_to) m.question = item.reply_to;
        // A streaming answer's text holds its first `deltas` deltas: continue after them.
        if (item.status === "streaming" && Number.isInteger(item.deltas)) {
          m.nextIndex = Math.max(m.nextIndex, item.deltas);
          this._streaming(item.message_id);
        }
      }
    } catch (error) {
      this._failed(error);
    }
  }

  async ask(text) {
    text = text.trim();
    if (!text || this.streaming) return;
    this.askButton.disabled = true;
    try {
      const result = await rpc(this.client, "coach.ask", { text });
      this.input.value = "";
      this._upsert(result.message_id, "user", text, "done");
      const answer = this._upsert(result.reply_id, "assistant", null, "streaming");
      answer.question = result.message_id;
      this._streaming(result.reply_id);
    } catch (error) {
      this._failed(error);
    } finally {
      this.askButton.disabled = this.input.disabled;
    }
  }

  async cancel() {
    if (!this.streaming) return;
    try {
      await rpc(this.client, "coach.cancel", { reply_id: this.streaming });
    } catch (error) {
      this._failed(error);
    }
  }

  /** One publication of `coach:<user>`. */
  apply(p) {
    if (p.type === "message") {
      this._upsert(p.message_id, "user", p.text ?? "", "done");
      if (p.reply_id) {
        this._upsert(p.reply_id, "assistant", null, "streaming").question = p.message_id;
        this._streaming(p.reply_id);
      }
    } else if (p.type === "delta") {
      const m = this._upsert(p.reply_id, "assistant", null, "streaming");
      if (m.status !== "streaming") return; // finished already (the done came first)
      if (p.index === undefined || p.index >= m.nextIndex) {
        m.text += p.text;
        m.nextIndex = (p.index ?? m.nextIndex) + 1;
        this._render(m);
      }
      this._streaming(p.reply_id);
    } else if (p.type === "done") {
      this._upsert(p.reply_id, "assistant", p.text, "done");
      this._finished(p.reply_id);
    } else if (p.type === "cancelled") {
      this._upsert(p.reply_id, "assistant", p.text ?? null, "cancelled");
      this._finished(p.reply_id);
    } else if (p.type === "error") {
      const m = this._upsert(p.reply_id, "assistant", p.text ?? null, "failed");
      m.error = p.reason ?? p.message ?? "the coach could not answer";
      m.retryable = Boolean(p.retryable);
      this._render(m);
      this._finished(p.reply_id);
    }
  }

  _streaming(replyId) {
    const m = this.messages.get(replyId);
    if (!m || m.status !== "streaming") return;
    this.streaming = replyId;
    this.cancelButton.hidden = this.readOnly;
  }

  _finished(replyId) {
    if (this.streaming === replyId) this.streaming = null;
    this.cancelButton.hidden = true;
  }

  _upsert(id, role, text, status) {
    let m = this.messages.get(id);
    if (!m) {
      this.list.querySelector(".empty")?.remove();
      m = { id, role, text: "", status, nextIndex: 0, el: h("div.message", { dataset: { messageId: id } }) };
      this.messages.set(id, m);
      this.list.append(m.el);
    }
    const finished = ["done", "cancelled", "failed"].includes(m.status);
    // A finished answer stays finished: a late delta or a stale history entry is not news.
    if (finished && status === "streaming") {
      return m;
    }
    if (text !== null && text !== undefined && (status !== "streaming" || text.length >= m.text.length)) {
      m.text = text;
    }
    m.status = status;
    this._render(m);
    return m;
  }

  _render(m) {
    m.el.className = `message ${m.role} ${m.status}`;
    m.el.dataset.status = m.status;
    clear(m.el);
    m.el.append(h("span.body", {}, m.text));
    if (m.status === "cancelled") m.el.append(h("span.tag", {}, " (cancelled)"));
    if (m.status === "failed") {
      m.el.append(h("span.error", {}, ` ${m.error ?? "failed"}`));
      const question = this.messages.get(m.question)?.text;
      if (m.retryable && !this.readOnly && question) {
        m.el.append(h("button.link", { type: "button", dataset: { testid: "retry" },
          onclick: () => this.ask(question) }, "retry"));
      }
    }
    this.list.scrollTop = this.list.scrollHeight;
  }

  _failed(error) {
    const code = error?.code;
    this.notice.hidden = false;
    if (code === METHOD_NOT_FOUND) {
      this.notice.textContent = "The coach is not available on this hub yet.";
      this.notice.dataset.state = "unavailable";
      this.input.disabled = true;
      this.askButton.disabled = true;
    } else {
      this.notice.textContent = error?.message ?? String(error);
      this.notice.dataset.state = "error";
    }
  }
}
