// @ts-check
// The stream follower: one run's events through EventSource, as a small state machine
//   connecting → streaming → reconnecting → … → done | failed
// It resumes after the last `seq` it delivered (a fresh URL with `after=seq` and a fresh token
// on every reconnect), drops any event at or below that `seq`, so no text is lost or repeated,
// and, when the browser goes offline, waits for it to come back online and reconnects at once.

/** Event names of the API's run stream. */
export const RUN_EVENTS = [
  "run.queued",
  "run.started",
  "message.delta",
  "run.reset",
  "run.snapshot",
  "citation",
  "run.completed",
  "run.failed",
  "run.cancelled",
];
const TERMINAL = new Set(["run.completed", "run.failed", "run.cancelled"]);
/** Consecutive failed connections after which the follower gives up. */
const MAX_FAILURES = 30;

/**
 * @typedef {"connecting" | "streaming" | "reconnecting" | "done" | "failed"} FollowState
 * @typedef {{
 *   url: (after: number) => Promise<string>,
 *   after: number,
 *   onEvent: (type: string, data: any, seq: number) => void,
 *   onState: (state: FollowState) => void,
 * }} FollowOptions
 */

export class StreamFollower {
  /** @param {FollowOptions} options */
  constructor(options) {
    this.options = options;
    this.seq = options.after;
    /** @type {FollowState} */
    this.state = "connecting";
    /** @type {EventSource | null} */
    this.source = null;
    this.failures = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.timer = undefined;
    this.stopped = false;
    this.onOnline = () => {
      if (this.state === "reconnecting") this.connect();
    };
    // Offline, an open stream may stay silent for long before it errors: give it up at once.
    this.onOffline = () => {
      if (!this.source) return;
      this.source.close();
      this.source = null;
      this.retry();
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
  }

  /** @param {FollowState} state */
  set(state) {
    if (this.state === state) return;
    this.state = state;
    this.options.onState(state);
  }

  /** Opens the stream after the last delivered `seq`. */
  async connect() {
    clearTimeout(this.timer);
    this.source?.close();
    this.source = null;
    if (this.stopped) return;
    let url;
    try {
      url = await this.options.url(this.seq);
    } catch {
      this.retry();
      return;
    }
    if (this.stopped) return;
    const source = new EventSource(url);
    this.source = source;
    source.onopen = () => {
      this.failures = 0;
      this.set("streaming");
    };
    source.onerror = () => {
      if (this.source !== source) return;
      source.close();
      this.source = null;
      this.retry();
    };
    for (const type of RUN_EVENTS) {
      source.addEventListener(type, (e) => this.deliver(type, /** @type {MessageEvent} */ (e)));
    }
  }

  /**
   * @param {string} type
   * @param {MessageEvent} e
   */
  deliver(type, e) {
    const seq = Number(e.lastEventId);
    if (!Number.isFinite(seq) || seq <= this.seq) return;
    this.seq = seq;
    this.failures = 0;
    let data = {};
    try {
      data = e.data ? JSON.parse(e.data) : {};
    } catch {
      data = {};
    }
    this.options.onEvent(type, data, seq);
    if (TERMINAL.has(type)) this.finish("done");
  }

  retry() {
    if (this.stopped) return;
    this.failures += 1;
    if (this.failures > MAX_FAILURES) {
      this.finish("failed");
      return;
    }
    this.set("reconnecting");
    if (!navigator.onLine) return; // the `online` event reconnects
    const delay = Math.min(250 * 2 ** Math.min(this.failures - 1, 5), 5000);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** @param {"done" | "failed"} state */
  finish(state) {
    this.stop();
    this.set(state);
  }

  /** Closes the stream for good (the run goes on on the server). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    this.source?.close();
    this.source = null;
  }
}
