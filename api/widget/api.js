// @ts-check
// The chatq API client of the widget: end-user tokens (given, or fetched from the host page's
// token URL and refreshed before they expire), JSON calls with `Authorization: Bearer`, and the
// event stream URL, the one place a token travels in a URL (`access_token`, as EventSource
// cannot send headers).

/**
 * @typedef {{index: number, document_id?: string, chunk_id?: string, filename: string, location?: string | null, quote?: string}} Citation
 * @typedef {{id: string, role: string, content: string, run_id: string | null, citations: Citation[], created_at: string}} Message
 * @typedef {{id: string, status: string, output_text: string, last_seq: number, waiting_reason: string | null, error: {code: string, message: string} | null, citations: Citation[], created_at: string}} Run
 * @typedef {{id: string, assistant_id: string | null}} Thread
 */

/** A failed call: HTTP status (0 for a network failure), the API's error code and message. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} code
   * @param {string} message
   * @param {any} [details]
   * @param {number | null} [retryAfter] seconds, from `Retry-After`
   */
  constructor(status, code, message, details = null, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
    this.retryAfter = retryAfter;
  }
}

/** Seconds before expiry at which a fetched token is replaced. */
const REFRESH_MARGIN_S = 60;

export class ChatqClient {
  /**
   * @param {{api: string, token?: string | null, tokenUrl?: string | null}} options
   */
  constructor({ api, token = null, tokenUrl = null }) {
    this.api = api.replace(/\/+$/, "");
    this.fixedToken = token;
    this.tokenUrl = tokenUrl;
    /** @type {{token: string, expiresAt: number} | null} */
    this.cached = null;
    /** @type {Promise<string> | null} */
    this.pending = null;
  }

  /**
   * A valid user token: the `token` attribute, or one from the token URL, fetched again
   * shortly before it expires (or at once with `fresh`).
   * @param {boolean} [fresh]
   * @returns {Promise<string>}
   */
  async token(fresh = false) {
    if (this.fixedToken) return this.fixedToken;
    if (!this.tokenUrl) throw new ApiError(0, "no_token", "The chat is not configured: it needs a token or a token-url.");
    const now = Date.now() / 1000;
    if (!fresh && this.cached && this.cached.expiresAt - REFRESH_MARGIN_S > now) return this.cached.token;
    this.pending ??= this.fetchToken().finally(() => {
      this.pending = null;
    });
    return this.pending;
  }

  /** @returns {Promise<string>} */
  async fetchToken() {
    let resp;
    try {
      resp = await fetch(/** @type {string} */ (this.tokenUrl), {
        method: "POST",
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
    } catch {
      throw new ApiError(0, "network", "The chat cannot reach the site. Check your connection.");
    }
    if (!resp.ok) throw new ApiError(resp.status, "token_failed", "The chat could not sign you in. Reload the page to try again.");
    /** @type {{token?: string, expires_at?: string}} */
    const body = await resp.json();
    if (!body.token) throw new ApiError(resp.status, "token_failed", "The chat could not sign you in.");
    const expiresAt = body.expires_at ? Date.parse(body.expires_at) / 1000 : Date.now() / 1000 + 300;
    this.cached = { token: body.token, expiresAt };
    return body.token;
  }

  /**
   * Calls the API; resolves with the JSON body, rejects with an {@link ApiError}. A 401 with a
   * token URL fetches a new token and tries once more.
   * @param {string} method
   * @param {string} path
   * @param {any} [body]
   * @param {boolean} [retried]
   * @returns {Promise<any>}
   */
  async call(method, path, body, retried = false) {
    const token = await this.token(retried);
    /** @type {Record<string, string>} */
    const headers = { Authorization: `Bearer ${token}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(this.api + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: "omit",
      });
    } catch {
      throw new ApiError(0, "network", "You seem to be offline. Check your connection.");
    }
    if (resp.status === 401 && this.tokenUrl && !retried) return this.call(method, path, body, true);
    const text = await resp.text();
    /** @type {any} */
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!resp.ok) {
      const err = json?.error ?? {};
      // Retry-After is not readable across origins unless exposed by CORS; the body has it too.
      const retry = Number(resp.headers.get("Retry-After") ?? err.details?.retry_after_seconds);
      throw new ApiError(
        resp.status,
        err.code ?? `http_${resp.status}`,
        err.message ?? resp.statusText,
        err.details ?? null,
        Number.isFinite(retry) && retry > 0 ? retry : null,
      );
    }
    return json;
  }

  /** @param {string} id @returns {Promise<Thread>} */
  getThread(id) {
    return this.call("GET", `/v1/threads/${encodeURIComponent(id)}`);
  }

  /** @param {string} assistantId @returns {Promise<Thread>} */
  createThread(assistantId) {
    return this.call("POST", "/v1/threads", { assistant_id: assistantId });
  }

  /**
   * Every message of a thread, oldest first, one page after another.
   * @param {string} threadId
   * @returns {Promise<Message[]>}
   */
  async messages(threadId) {
    /** @type {Message[]} */
    const all = [];
    /** @type {string | null} */
    let after = null;
    do {
      const query = after ? `?limit=100&after=${encodeURIComponent(after)}` : "?limit=100";
      /** @type {{data: Message[], next_after: string | null}} */
      const page = await this.call("GET", `/v1/threads/${encodeURIComponent(threadId)}/messages${query}`);
      all.push(...page.data);
      after = page.next_after;
    } while (after);
    return all;
  }

  /**
   * Sends a message. The same `clientMessageId` never creates a second run.
   * @param {string} threadId
   * @param {string} input
   * @param {string} clientMessageId
   * @returns {Promise<Run>}
   */
  send(threadId, input, clientMessageId) {
    return this.call("POST", `/v1/threads/${encodeURIComponent(threadId)}/runs`, {
      input,
      client_message_id: clientMessageId,
    });
  }

  /** @param {string} runId @returns {Promise<Run>} */
  getRun(runId) {
    return this.call("GET", `/v1/runs/${encodeURIComponent(runId)}`);
  }

  /** @param {string} runId @returns {Promise<Run>} */
  cancel(runId) {
    return this.call("POST", `/v1/runs/${encodeURIComponent(runId)}/cancel`);
  }

  /**
   * The run's event stream URL, resuming after `seq`.
   * @param {string} runId
   * @param {number} after
   * @returns {Promise<string>}
   */
  async eventsUrl(runId, after) {
    const token = await this.token();
    return `${this.api}/v1/runs/${encodeURIComponent(runId)}/events?after=${after}&access_token=${encodeURIComponent(token)}`;
  }
}
