// @ts-check
// <chatq-chat>: the embeddable chat. All state lives in this element; the API client, the
// stream follower, the Markdown renderer and the styles are the other modules.
//
//   <script type="module" src="https://chat.example.org/widget/chatq.js"></script>
//   <chatq-chat token-url="/my-backend/chatq-token" assistant="…"></chatq-chat>
import { ApiError, ChatqClient } from "./api.js";
import { renderMarkdown } from "./markdown.js";
import { StreamFollower } from "./stream.js";
import { STYLES } from "./styles.js";

/**
 * @typedef {import("./api.js").Citation} Citation
 * @typedef {import("./api.js").Message} Message
 * @typedef {import("./stream.js").FollowState} FollowState
 * @typedef {{id: string, seq: number, text: string, citations: Citation[]}} StoredRun
 * @typedef {{thread?: string, run?: StoredRun}} Stored
 * @typedef {StoredRun & {follower: StreamFollower | null, article: HTMLElement, phase: "waiting" | "answering", reason: string, stopping: boolean, frame: number, withdrawn: boolean}} ActiveRun
 */

/** What a visitor reads for each error code of the API or of a failed run. */
const ERRORS = /** @type {Record<string, string>} */ ({
  moderation_flagged: "Your message was not answered because it may break the content rules. Please rephrase it.",
  provider_rate_limited: "The assistant is receiving too many requests right now. Please try again in a minute.",
  provider_unavailable: "The assistant is unavailable right now. Please try again later.",
  provider_rejected: "The assistant could not answer this message. Please rephrase it.",
  context_too_long: "This conversation is too long for the assistant. Please start a new conversation.",
  timeout: "The assistant took too long to answer. Please try again.",
  budget_exhausted: "The chat has reached its usage limit. Please try again later.",
  payload_too_large: "Your message is too long. Please shorten it.",
  network: "You seem to be offline. Check your connection and try again.",
  not_found: "This conversation is no longer available. Please start a new conversation.",
  unauthorized: "The chat could not sign you in. Reload the page to try again.",
});
const GENERIC_ERROR = "Something went wrong. Please try again.";
/** What a visitor reads when moderation withdrew the answer being shown. */
const WITHDRAWN = "The answer was withdrawn because it may break the content rules.";
const ACTIVE = new Set(["queued", "in_progress"]);
/** Sends are retried this often on network errors, with the same client_message_id. */
const SEND_ATTEMPTS = 4;

let nextId = 0;
/** @param {string} prefix */
const uid = (prefix) => `chatq-${prefix}-${++nextId}`;

/**
 * An element with attributes and children.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string>} [attrs]
 * @param {(Node | string)[]} [children]
 * @returns {HTMLElementTagNameMap[K]}
 */
function h(tag, attrs = {}, children = []) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The message for an error code (`rate_limited` with its wait).
 * @param {string} code
 * @param {number | null} [wait]
 * @returns {string}
 */
export function errorMessage(code, wait = null) {
  if (code === "rate_limited") {
    const s = Math.max(1, Math.ceil(wait ?? 10));
    return `You are sending messages too quickly. Please wait ${s} second${s === 1 ? "" : "s"} and try again.`;
  }
  return ERRORS[code] ?? GENERIC_ERROR;
}

class ChatqChat extends HTMLElement {
  static get observedAttributes() {
    return ["open", "token"];
  }

  constructor() {
    super();
    this.root = this.attachShadow({ mode: "open" });
    /** @type {ActiveRun | null} */
    this.active = null;
    /** @type {string | null} */
    this.threadId = null;
    this.sending = false;
    this.started = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.waitTimer = undefined;
    // The markup, with its roles, labels and live regions.
    const titleId = uid("title");
    const inputId = uid("input");
    const style = h("style");
    style.textContent = STYLES;
    this.launcher = h("button", { type: "button", class: "launcher", part: "launcher", "aria-expanded": "false" });
    this.heading = h("h2", { id: titleId });
    this.newButton = h("button", { type: "button", class: "ghost", part: "button" }, ["New conversation"]);
    this.closeButton = h("button", { type: "button", class: "ghost", part: "button", "aria-label": "Close chat" }, ["✕"]);
    this.log = h("div", {
      class: "log",
      part: "log",
      role: "log",
      "aria-live": "polite",
      "aria-relevant": "additions",
      "aria-label": "Conversation",
      "aria-busy": "false",
      tabindex: "0",
    });
    this.empty = h("p", { class: "empty" }, ["Ask a question to start the conversation."]);
    this.log.append(this.empty);
    this.status = h("p", { class: "status", part: "status", role: "status" });
    this.error = h("div", { class: "error", part: "error", role: "alert", hidden: "" });
    this.input = h("textarea", { id: inputId, rows: "2", part: "input", autocomplete: "off" });
    this.sendButton = h("button", { type: "submit", class: "primary", part: "send" }, ["Send"]);
    this.stopButton = h("button", { type: "button", class: "primary", part: "stop", hidden: "" }, ["Stop"]);
    this.form = h("form", { class: "composer", part: "composer" }, [
      h("label", { for: inputId }, ["Message"]),
      this.input,
      this.sendButton,
      this.stopButton,
    ]);
    this.panel = h("section", { class: "panel", part: "panel", "aria-labelledby": titleId, id: uid("panel") }, [
      h("div", { class: "header", part: "header" }, [this.heading, this.newButton, this.closeButton]),
      this.log,
      this.status,
      this.error,
      this.form,
    ]);
    this.launcher.setAttribute("aria-controls", this.panel.id);
    this.root.append(style, this.launcher, this.panel);
    this.wire();
  }

  get inline() {
    return this.getAttribute("mode") === "inline";
  }

  get assistantName() {
    return this.getAttribute("assistant-name") || "Assistant";
  }

  /** Keyboard and pointer handling. */
  wire() {
    this.launcher.addEventListener("click", () => this.toggle(true));
    this.closeButton.addEventListener("click", () => this.toggle(false));
    this.newButton.addEventListener("click", () => this.newConversation());
    this.stopButton.addEventListener("click", () => this.stopRun());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.submit();
      }
    });
    this.panel.addEventListener("keydown", (e) => {
      if (e.key !== "Escape") return;
      if (this.active) {
        e.preventDefault();
        this.stopRun();
      } else if (!this.inline) {
        e.preventDefault();
        this.toggle(false);
      }
    });
  }

  connectedCallback() {
    // Attributes are read here: a constructor may run before they are set.
    this.heading.textContent = this.getAttribute("heading") || "Chat";
    this.input.placeholder = this.getAttribute("placeholder") || "Type your message";
    const inline = this.inline;
    this.launcher.hidden = inline;
    this.closeButton.hidden = inline;
    this.toggle(inline || this.hasAttribute("open"), false);
    if (this.started) {
      // Moved in the document: pick the answer up again where it was.
      const a = this.active;
      if (a) {
        a.article.remove();
        this.follow(a);
      }
      return;
    }
    this.started = true;
    const api = this.getAttribute("api") || new URL(import.meta.url).origin;
    this.client = new ChatqClient({ api, token: this.getAttribute("token"), tokenUrl: this.getAttribute("token-url") });
    this.storeKey = `chatq:${this.client.api}:${this.getAttribute("assistant") ?? ""}`;
    this.start().catch((e) => this.showError(e));
  }

  disconnectedCallback() {
    this.active?.follower?.stop();
  }

  /**
   * @param {string} name
   * @param {string | null} _old
   * @param {string | null} value
   */
  attributeChangedCallback(name, _old, value) {
    if (name === "token" && this.client) this.client.fixedToken = value;
    if (name === "open" && this.started && !this.inline) this.toggle(value !== null, false);
  }

  /**
   * Opens or closes the panel (launcher mode); focus goes to the input, or back to the launcher.
   * @param {boolean} open
   * @param {boolean} [moveFocus]
   */
  toggle(open, moveFocus = true) {
    const shown = this.inline || open;
    this.panel.hidden = !shown;
    this.launcher.setAttribute("aria-expanded", String(shown));
    this.launcher.textContent = shown ? "Hide chat" : this.getAttribute("launcher-label") || "Chat with us";
    if (!moveFocus) return;
    if (shown) {
      this.input.focus();
      this.scrollToEnd();
    } else {
      this.launcher.focus();
    }
  }

  // --- storage: the visitor's thread and the run being followed, per API and assistant -------

  /** @returns {Stored} */
  load() {
    try {
      return JSON.parse(localStorage.getItem(/** @type {string} */ (this.storeKey)) ?? "{}") ?? {};
    } catch {
      return {};
    }
  }

  /** @param {Stored} value */
  store(value) {
    try {
      localStorage.setItem(/** @type {string} */ (this.storeKey), JSON.stringify(value));
    } catch {
      // Storage can be full or disabled; the chat still works, it just does not survive a reload.
    }
  }

  /** @returns {ChatqClient} */
  get api() {
    return /** @type {ChatqClient} */ (this.client);
  }

  // --- start: history, then the run that was being answered --------------------------------

  async start() {
    const stored = this.load();
    /** @type {Message[]} */
    let messages = [];
    if (stored.thread) {
      try {
        messages = await this.api.messages(stored.thread);
        this.threadId = stored.thread;
      } catch (e) {
        if (!(e instanceof ApiError) || (e.status !== 404 && e.status !== 403)) throw e;
        this.store({});
        return;
      }
    }
    this.renderHistory(messages);
    if (!this.threadId) return;
    const run = stored.run;
    if (run) {
      const answered = messages.some((m) => m.role === "assistant" && m.run_id === run.id);
      if (answered) this.store({ thread: this.threadId });
      else this.follow(run);
      return;
    }
    const last = messages[messages.length - 1];
    if (last?.role === "user" && last.run_id) {
      const r = await this.api.getRun(last.run_id);
      if (ACTIVE.has(r.status)) this.follow({ id: r.id, seq: 0, text: "", citations: [] });
    }
  }

  /** @param {Message[]} messages */
  renderHistory(messages) {
    this.log.replaceChildren();
    for (const m of messages) {
      if (m.role === "user") this.log.append(this.userArticle(m.content, m.created_at));
      else if (m.role === "assistant") this.log.append(this.answerArticle(m.content, m.citations ?? [], m.created_at, true));
    }
    if (!this.log.childElementCount) this.log.append(this.empty);
    this.scrollToEnd(true);
  }

  // --- messages -------------------------------------------------------------------------------

  /**
   * @param {string} who
   * @param {string} [at] ISO timestamp
   */
  meta(who, at) {
    const when = at ? new Date(at) : new Date();
    const time = h("time", { datetime: when.toISOString() }, [
      when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
    ]);
    return h("p", { class: "meta" }, [h("span", { class: "who", id: uid("who") }, [who]), time]);
  }

  /**
   * A message: its sender label names it.
   * @param {"user" | "assistant"} role
   * @param {string} who
   * @param {string} [at]
   */
  article(role, who, at) {
    const meta = this.meta(who, at);
    const label = /** @type {HTMLElement} */ (meta.firstChild);
    return h("article", { class: `msg ${role}`, part: `message ${role}`, "aria-labelledby": label.id }, [meta]);
  }

  /**
   * @param {string} text
   * @param {string} [at]
   */
  userArticle(text, at) {
    const article = this.article("user", "You", at);
    article.append(h("div", { class: "body", part: "body" }, [text]));
    return article;
  }

  /**
   * An answer. While it streams it is hidden from assistive technology and shows citation
   * markers as text; the finished answer replaces it, so a screen reader announces it once.
   * @param {string} text
   * @param {Citation[]} citations
   * @param {string} [at]
   * @param {boolean} [final]
   * @param {string} [note]
   */
  answerArticle(text, citations, at, final = false, note = "") {
    const article = this.article("assistant", this.assistantName, at);
    const body = h("div", { class: "body", part: "body" });
    article.append(body);
    if (!final) {
      article.setAttribute("aria-hidden", "true");
      body.append(renderMarkdown(text));
      return article;
    }
    const byIndex = new Map(citations.map((c) => [c.index, c]));
    /** @type {Map<number, {toggle: HTMLButtonElement, quote: HTMLElement}>} */
    const sources = new Map();
    const list = h("ol");
    for (const c of [...byIndex.values()].sort((a, b) => a.index - b.index)) {
      const quoteId = uid("quote");
      const place = [c.filename, c.location].filter(Boolean).join(" · ");
      const toggle = h("button", { type: "button", class: "source-toggle", part: "source", "aria-expanded": "false", "aria-controls": quoteId }, [
        `[${c.index}] ${place}`,
      ]);
      const quote = h("div", { class: "quote", part: "quote", id: quoteId, hidden: "" }, [
        h("p", {}, [place]),
        h("blockquote", {}, [c.quote ?? ""]),
      ]);
      toggle.addEventListener("click", () => this.showSource(toggle, quote, toggle.getAttribute("aria-expanded") !== "true"));
      sources.set(c.index, { toggle, quote });
      list.append(h("li", {}, [toggle, quote]));
    }
    body.append(
      renderMarkdown(text, (index) => {
        const source = sources.get(index);
        const c = byIndex.get(index);
        if (!source || !c) return null;
        const button = h("button", { type: "button", class: "cite", part: "citation", "aria-label": `Source ${index}: ${c.filename}`, "aria-controls": source.quote.id }, [
          `[${index}]`,
        ]);
        button.addEventListener("click", () => {
          this.showSource(source.toggle, source.quote, true);
          source.toggle.focus();
        });
        return button;
      }),
    );
    if (note) article.append(h("p", { class: "note" }, [note]));
    if (sources.size) {
      const headingId = uid("sources");
      article.append(h("div", { class: "sources", part: "sources" }, [h("h3", { id: headingId }, ["Sources"]), list]));
      list.setAttribute("aria-labelledby", headingId);
    }
    return article;
  }

  /**
   * @param {HTMLElement} toggle
   * @param {HTMLElement} quote
   * @param {boolean} open
   */
  showSource(toggle, quote, open) {
    quote.hidden = !open;
    toggle.setAttribute("aria-expanded", String(open));
    if (open) quote.scrollIntoView({ block: "nearest" });
  }

  /** @param {boolean} [force] */
  scrollToEnd(force = false) {
    const log = this.log;
    if (force || log.scrollHeight - log.scrollTop - log.clientHeight < 120) log.scrollTop = log.scrollHeight;
  }

  /** @param {HTMLElement} article */
  appendMessage(article) {
    this.empty.remove();
    this.log.append(article);
    this.scrollToEnd(true);
  }

  // --- errors and status ----------------------------------------------------------------------

  /** @param {unknown} e */
  showError(e) {
    if (e instanceof ApiError) this.setError(e.code === "network" || e.code === "token_failed" || e.code === "no_token" ? e.message : errorMessage(e.code, e.retryAfter));
    else this.setError(GENERIC_ERROR);
  }

  /** @param {string} message */
  setError(message) {
    this.error.textContent = message;
    this.error.hidden = !message;
  }

  /** @param {string} text */
  setStatus(text) {
    if (this.status.textContent === text) return; // unchanged text is not announced again
    this.status.textContent = text;
    this.status.classList.toggle("dots", /…$/.test(text));
  }

  /** @param {boolean} busy */
  setBusy(busy) {
    this.log.setAttribute("aria-busy", String(busy));
    const stopHadFocus = this.root.activeElement === this.stopButton;
    this.stopButton.hidden = !busy;
    this.stopButton.disabled = false;
    this.sendButton.hidden = busy;
    if (stopHadFocus && !busy) this.input.focus();
  }

  // --- sending --------------------------------------------------------------------------------

  async submit() {
    const text = this.input.value.trim();
    if (!text || this.sending) return;
    if (this.active) {
      this.setError("The assistant is still answering. Wait for the answer or press Stop.");
      return;
    }
    const assistant = this.getAttribute("assistant");
    if (!assistant) {
      this.setError("The chat is not configured: it needs an assistant.");
      return;
    }
    this.sending = true;
    this.sendButton.disabled = true;
    this.setError("");
    this.setStatus("Sending…");
    const clientMessageId = crypto.randomUUID();
    try {
      if (!this.threadId) {
        const thread = await this.api.createThread(assistant);
        this.threadId = thread.id;
        this.store({ thread: thread.id });
      }
      const threadId = this.threadId;
      let run;
      for (let attempt = 1; ; attempt++) {
        try {
          run = await this.api.send(threadId, text, clientMessageId);
          break;
        } catch (e) {
          if (!(e instanceof ApiError) || e.status !== 0 || attempt >= SEND_ATTEMPTS) throw e;
          this.setStatus("Connection problem, retrying…");
          await sleep(500 * 2 ** (attempt - 1));
        }
      }
      this.input.value = "";
      this.appendMessage(this.userArticle(text, run.created_at));
      this.follow({ id: run.id, seq: 0, text: "", citations: [] });
    } catch (e) {
      this.setStatus("");
      if (e instanceof ApiError && e.code === "thread_busy" && e.details?.active_run_id) {
        // Another tab or device is being answered in this thread: show that answer instead.
        this.setError("The assistant is still answering your previous message. Your message is kept: send it when the answer is done.");
        await this.followElsewhere(e.details.active_run_id);
      } else if (e instanceof ApiError && e.status === 429) {
        this.showError(e);
        this.holdSend(e.retryAfter ?? 10);
      } else if (e instanceof ApiError && e.status === 404) {
        this.threadId = null;
        this.store({});
        this.showError(e);
      } else {
        this.showError(e);
      }
    } finally {
      this.sending = false;
      if (!this.waitTimer) this.sendButton.disabled = false;
    }
  }

  /**
   * Keeps Send disabled for `seconds` (a rate limit's wait).
   * @param {number} seconds
   */
  holdSend(seconds) {
    clearTimeout(this.waitTimer);
    this.sendButton.disabled = true;
    this.waitTimer = setTimeout(() => {
      this.waitTimer = undefined;
      this.sendButton.disabled = false;
      this.setError("");
    }, seconds * 1000);
  }

  /**
   * Follows a run started elsewhere: reloads the history (its question) first.
   * @param {string} runId
   */
  async followElsewhere(runId) {
    if (this.active?.id === runId || !this.threadId) return;
    this.renderHistory(await this.api.messages(this.threadId));
    this.follow({ id: runId, seq: 0, text: "", citations: [] });
  }

  // --- following a run ------------------------------------------------------------------------

  /** @param {StoredRun} run */
  follow(run) {
    this.active?.follower?.stop();
    const article = this.answerArticle(run.text, run.citations, undefined, false);
    /** @type {ActiveRun} */
    const a = { ...run, citations: [...run.citations], follower: null, article, phase: run.text ? "answering" : "waiting", reason: "", stopping: false, frame: 0, withdrawn: false };
    this.active = a;
    this.appendMessage(article);
    this.setBusy(true);
    this.persist(a);
    this.updateStatus(a, "connecting");
    a.follower = new StreamFollower({
      url: (after) => this.api.eventsUrl(a.id, after),
      after: a.seq,
      onEvent: (type, data, seq) => this.onEvent(a, type, data, seq),
      onState: (state) => this.updateStatus(a, state),
    });
    a.follower.connect();
    this.pollWaiting(a);
  }

  /** @param {ActiveRun} a */
  persist(a) {
    if (this.threadId) this.store({ thread: this.threadId, run: { id: a.id, seq: a.seq, text: a.text, citations: a.citations } });
  }

  /**
   * @param {ActiveRun} a
   * @param {string} type
   * @param {any} data
   * @param {number} seq
   */
  onEvent(a, type, data, seq) {
    if (this.active !== a) return;
    a.seq = seq;
    switch (type) {
      case "message.delta":
        a.text += String(data.text ?? "");
        a.phase = "answering";
        break;
      case "run.reset":
        // The text shown so far is void: a retry starts over, and moderation withdrew an
        // answer (the refusal that replaces it follows as a delta).
        a.text = "";
        a.citations = [];
        a.phase = "waiting";
        a.withdrawn = data?.reason === "moderation";
        break;
      case "run.snapshot":
        a.text = String(data.text ?? "");
        a.phase = "answering";
        break;
      case "citation":
        if (!a.citations.some((c) => c.index === data.index)) a.citations.push(data);
        break;
      case "run.completed":
      case "run.cancelled":
      case "run.failed":
        this.finish(a, type, data);
        return;
      default:
        break;
    }
    this.persist(a);
    this.updateStatus(a, a.follower?.state ?? "streaming");
    if (!a.frame) {
      a.frame = requestAnimationFrame(() => {
        a.frame = 0;
        if (this.active !== a) return;
        const next = this.answerArticle(a.text, a.citations, undefined, false);
        a.article.replaceWith(next);
        a.article = next;
        this.scrollToEnd();
      });
    }
  }

  /**
   * @param {ActiveRun} a
   * @param {FollowState} state
   */
  updateStatus(a, state) {
    if (this.active !== a) return;
    if (state === "failed") {
      this.finish(a, "lost", {});
      return;
    }
    if (state === "reconnecting") this.setStatus("Connection lost. Reconnecting…");
    else if (state === "connecting") this.setStatus("Connecting…");
    else if (a.stopping) this.setStatus("Stopping…");
    else if (a.phase === "answering") this.setStatus(`${this.assistantName} is answering…`);
    else this.setStatus(a.reason ? `Waiting for the assistant… (${a.reason})` : "Waiting for the assistant…");
  }

  /**
   * While no text arrives, asks for the run's `waiting_reason` now and then.
   * @param {ActiveRun} a
   */
  async pollWaiting(a) {
    while (this.active === a) {
      await sleep(2000);
      if (this.active !== a || a.phase !== "waiting") continue;
      try {
        const run = await this.api.getRun(a.id);
        if (this.active !== a) return;
        a.reason = run.waiting_reason ?? "";
        this.updateStatus(a, a.follower?.state ?? "streaming");
      } catch {
        // The stream reports connection problems; this is only a hint.
      }
    }
  }

  /**
   * The run ended: the final answer replaces the streaming one (announced once).
   * @param {ActiveRun} a
   * @param {string} type
   * @param {any} data
   */
  finish(a, type, data) {
    a.follower?.stop();
    cancelAnimationFrame(a.frame);
    this.active = null;
    this.store({ thread: /** @type {string} */ (this.threadId) });
    this.setStatus("");
    let note = "";
    if (type === "run.cancelled") note = a.text ? "Stopped." : "Stopped before answering.";
    if (type === "run.failed" && a.text) note = a.withdrawn ? "Withdrawn by content moderation." : "The answer was interrupted.";
    if (type === "run.completed" && !a.text) note = "The assistant gave no answer.";
    if (type === "run.failed") this.setError(a.withdrawn ? WITHDRAWN : errorMessage(data?.error?.code ?? ""));
    if (type === "lost") this.setError("The connection to the chat was lost. Reload the page to see the answer.");
    if (a.text || note) {
      const final = this.answerArticle(a.text, a.citations, undefined, true, note);
      a.article.replaceWith(final);
    } else {
      a.article.remove();
    }
    this.setBusy(false);
  }

  async stopRun() {
    const a = this.active;
    if (!a || a.stopping) return;
    a.stopping = true;
    // A disabled button loses focus to the page: keep it in the message box.
    if (this.root.activeElement === this.stopButton) this.input.focus();
    this.stopButton.disabled = true;
    this.updateStatus(a, a.follower?.state ?? "streaming");
    try {
      await this.api.cancel(a.id);
    } catch (e) {
      a.stopping = false;
      this.stopButton.disabled = false;
      this.showError(e);
    }
  }

  newConversation() {
    if (this.active) {
      this.active.follower?.stop();
      this.active = null;
      this.setBusy(false);
    }
    this.threadId = null;
    this.store({});
    this.setError("");
    this.setStatus("");
    this.renderHistory([]);
    this.input.focus();
  }
}

if (!customElements.get("chatq-chat")) customElements.define("chatq-chat", ChatqChat);
