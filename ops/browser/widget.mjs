// Drives the chat widget <chatq-chat> in headless Chromium for ops/system-tests/tests/it/widget.rs and prints
// what a visitor saw as one JSON object on stdout; the Rust test compares it with the API.
// Every wait is for a condition on the page, with a deadline. The page is read the way a person
// reads it: roles, labels and visible text (plus the widget's public `part` names).
//
// Usage: node ops/browser/widget.mjs <scenario> <page-url> [out-dir]
//   scenarios: answer, resume, stop, citation, errors, withdraw, keyboard
import { readFile, mkdir } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";

const [scenario, url, outDir = "."] = process.argv.slice(2);
const require = createRequire(import.meta.url);
const DEADLINE = { timeout: 30_000 };

const browser = await chromium.launch({
  executablePath: process.env.CHATQ_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
/** Uncaught errors and Trusted Types / CSP violations on the page fail the scenario. */
const pageErrors = [];

/** @param {import("playwright-core").BrowserContext} context */
async function open(context, target = url) {
  const page = await context.newPage();
  page.on("console", (m) => {
    console.error(`[page] ${m.text()}`);
    if (m.type() === "error" && /Trusted Type|Content Security Policy/i.test(m.text())) pageErrors.push(m.text());
  });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.goto(target);
  await page.locator("chatq-chat").waitFor({ state: "attached" });
  return page;
}

/** The widget's parts on a page. */
function widget(page) {
  const log = page.getByRole("log", { name: "Conversation" });
  return {
    log,
    input: page.getByRole("textbox", { name: "Message" }),
    send: page.getByRole("button", { name: "Send" }),
    stop: page.getByRole("button", { name: "Stop" }),
    status: page.locator("chatq-chat").getByRole("status"),
    alert: page.locator("chatq-chat").getByRole("alert"),
    /** Finished answers (a streaming answer is hidden from assistive technology). */
    answers: log.getByRole("article", { name: /^(?!You$)/ }),
    questions: log.getByRole("article", { name: "You" }),
    /** The answer being streamed, as a sighted visitor sees it. */
    streaming: page.locator('chatq-chat [part~="assistant"][aria-hidden="true"] [part~="body"]'),
  };
}

/** Words shown in the answer being streamed. */
async function streamedWords(page) {
  const t = await widget(page).streaming.last().textContent().catch(() => "");
  return (t ?? "").split(/\s+/).filter(Boolean).length;
}

/** Waits until the streaming answer shows at least `n` words. */
async function waitWords(page, n) {
  await page.waitForFunction(
    (n) => {
      const host = document.querySelector("chatq-chat");
      const bodies = host?.shadowRoot?.querySelectorAll('[part~="assistant"][aria-hidden="true"] [part~="body"]') ?? [];
      const last = bodies[bodies.length - 1];
      return !!last && (last.textContent ?? "").split(/\s+/).filter(Boolean).length >= n;
    },
    n,
    DEADLINE,
  );
}

/** Waits until `count` answers are finished and the log is no longer busy. */
async function waitAnswers(page, count) {
  const w = widget(page);
  await w.answers.nth(count - 1).waitFor(DEADLINE);
  await page.waitForFunction(() => {
    const log = document.querySelector("chatq-chat")?.shadowRoot?.querySelector('[role="log"]');
    return log?.getAttribute("aria-busy") === "false";
  }, null, DEADLINE);
}

async function answerTexts(page) {
  return widget(page).answers.locator('[part~="body"]').allTextContents();
}

/** The visitor's stored thread (and followed run) of the widget on this page. */
async function stored(page) {
  return page.evaluate(() => {
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i);
      if (k?.startsWith("chatq:")) return JSON.parse(localStorage.getItem(k) ?? "{}");
    }
    return {};
  });
}

/** @param {import("playwright-core").Page} page @param {string} text */
async function ask(page, text) {
  const w = widget(page);
  await w.input.fill(text);
  await w.input.press("Enter");
}

/** A user token from the host page's token endpoint, as the widget gets it. */
async function hostToken(page) {
  return page.evaluate(async () => {
    const url = document.querySelector("chatq-chat")?.getAttribute("token-url") ?? "/token";
    return (await (await fetch(url, { method: "POST" })).json()).token;
  });
}

/** Calls the chatq API from the page with a user token. */
async function apiCall(page, method, path, body) {
  const token = await hostToken(page);
  return page.evaluate(async ({ method, path, body, token }) => {
    const api = document.querySelector("chatq-chat")?.getAttribute("api") || location.origin;
    const resp = await fetch(api + path, {
      method,
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
    return { status: resp.status, body: await resp.json() };
  }, { method, path, body, token });
}

async function expectUsable(page) {
  const w = widget(page);
  if (!(await w.input.isEditable())) throw new Error("the message box is not editable");
  await page.waitForFunction(() => {
    const root = document.querySelector("chatq-chat")?.shadowRoot;
    const send = root?.querySelector('[part~="send"]');
    return send instanceof HTMLButtonElement && !send.disabled && !send.hidden;
  }, null, DEADLINE);
}

/** The focused element inside the widget, described by role-ish facts. */
async function focused(page) {
  return page.evaluate(() => {
    const host = document.querySelector("chatq-chat");
    const el = document.activeElement === host ? host?.shadowRoot?.activeElement : document.activeElement;
    if (!el) return null;
    return {
      tag: el.tagName.toLowerCase(),
      label: el.getAttribute("aria-label") ?? (el.textContent ?? "").trim(),
      expanded: el.getAttribute("aria-expanded"),
      inWidget: document.activeElement === host,
    };
  });
}

const scenarios = {
  /** One answer, streamed token by token, then the widget's own size. The response to the
   * first send is lost on its way back: the widget sends again, and no second run appears. */
  async answer(context) {
    const page = await open(context);
    const w = widget(page);
    let lostResponses = 0;
    await page.route(/\/v1\/threads\/[^/]+\/runs$/, async (route) => {
      if (route.request().method() !== "POST" || lostResponses > 0) return route.fallback();
      lostResponses += 1;
      await route.fetch();
      await route.abort("connectionreset");
    });
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "Hello there [[fake tokens=40 delay_ms=25]]");
    await waitWords(page, 3);
    const busyWhileStreaming = await w.log.getAttribute("aria-busy");
    const answersWhileStreaming = await w.answers.count();
    const early = await streamedWords(page);
    await waitAnswers(page, 1);
    await mkdir(outDir, { recursive: true });
    await page.setViewportSize({ width: 320, height: 640 });
    await page.screenshot({ path: `${outDir}/widget-launcher-320.png` });
    const overflow320 = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
    const src = await page.evaluate(() => document.querySelector('script[type="module"]')?.getAttribute("src") ?? "");
    const script = Buffer.from(await (await fetch(new URL(src, page.url()))).arrayBuffer());
    return {
      texts: await answerTexts(page),
      questions: await w.questions.locator('[part~="body"]').allTextContents(),
      busyWhileStreaming,
      answersWhileStreaming,
      lostResponses,
      overflow320,
      earlyWords: early,
      stored: await stored(page),
      gzipBytes: gzipSync(script, { level: 9 }).length,
      rawBytes: script.length,
    };
  },

  /** Markdown becomes elements; HTML and script links in model or user text stay text. */
  async markdown(context) {
    const page = await open(context);
    const w = widget(page);
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "**bold** and _soft_ and `x < y` see [docs](https://example.org/docs) or [bad](javascript:alert(1)) <img src=x onerror=alert(1)> snake_case_name [[fake tokens=16]]");
    await waitAnswers(page, 1);
    const answer = w.answers.first().locator('[part~="body"]');
    const result = {
      strong: await answer.locator("strong").allTextContents(),
      em: await answer.locator("em").allTextContents(),
      code: await answer.locator("code").allTextContents(),
      links: await answer.getByRole("link").evaluateAll((as) => as.map((a) => [a.textContent, a.getAttribute("href"), a.getAttribute("rel")])),
      images: await page.locator("chatq-chat img").count(),
      text: await answer.textContent(),
      question: await w.questions.first().locator('[part~="body"]').textContent(),
      threadBefore: (await stored(page)).thread,
    };
    // "New conversation" empties the log and starts a new thread with the next message.
    await page.getByRole("button", { name: "New conversation" }).click();
    await w.log.getByText("Ask a question to start the conversation.").waitFor(DEADLINE);
    const articlesAfterNew = await w.log.getByRole("article").count();
    await ask(page, "Fresh start [[fake tokens=3]]");
    await waitAnswers(page, 1);
    return { ...result, articlesAfterNew, textsAfterNew: await answerTexts(page), stored: await stored(page) };
  },

  /** Reload in the middle of an answer, then lose the network in the middle of another. */
  async resume(context) {
    const page = await open(context);
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "First story [[fake tokens=80 delay_ms=40]]");
    await waitWords(page, 6);
    const wordsBeforeReload = await streamedWords(page);
    const seqBeforeReload = (await stored(page)).run?.seq ?? 0;
    await page.reload();
    await page.getByRole("button", { name: "Chat with us" }).click();
    await waitAnswers(page, 1);

    await ask(page, "Second story [[fake tokens=80 delay_ms=40]]");
    await waitWords(page, 6);
    await context.setOffline(true);
    await widget(page).status.filter({ hasText: /Reconnecting/ }).waitFor(DEADLINE);
    const wordsWhileOffline = await streamedWords(page);
    await context.setOffline(false);
    await waitAnswers(page, 2);
    const log = (await widget(page).log.textContent()) ?? "";
    return {
      texts: await answerTexts(page),
      logText: log,
      wordsBeforeReload,
      seqBeforeReload,
      wordsWhileOffline,
      stored: await stored(page),
    };
  },

  /** Stop in the middle: the run is cancelled within a second, the partial text stays. */
  async stop(context) {
    const page = await open(context);
    const w = widget(page);
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "A long story [[fake tokens=200 delay_ms=50]]");
    await waitWords(page, 5);
    const runId = (await stored(page)).run.id;
    const started = Date.now();
    await w.stop.click();
    let cancelledAfterMs = null;
    while (Date.now() - started < 10_000) {
      const { body } = await apiCall(page, "GET", `/v1/runs/${runId}`);
      if (body.status === "cancelled") {
        cancelledAfterMs = Date.now() - started;
        break;
      }
      if (body.status !== "queued" && body.status !== "in_progress") break;
    }
    await waitAnswers(page, 1);
    await w.answers.first().getByText("Stopped.").waitFor(DEADLINE);
    await expectUsable(page);
    return { runId, cancelledAfterMs, texts: await answerTexts(page), stored: await stored(page) };
  },

  /** A cited answer; the quote shows when the citation is activated; axe; screenshots. */
  async citation(context) {
    const page = await open(context);
    const w = widget(page);
    await ask(page, "What are the upload limits?");
    await waitAnswers(page, 1);
    const cite = w.answers.first().getByRole("button", { name: /^Source 1:/ });
    const citeLabel = await cite.getAttribute("aria-label");
    await cite.click();
    const quote = w.answers.first().locator("blockquote");
    await quote.waitFor({ state: "visible", ...DEADLINE });
    const quoteText = await quote.textContent();
    const sourceLabel = await w.answers.first().getByRole("button", { name: /^\[1\]/ }).textContent();

    await mkdir(outDir, { recursive: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.screenshot({ path: `${outDir}/widget-desktop.png` });
    if (process.env.CHATQ_UPDATE_SCREENSHOT === "1" && process.env.CHATQ_SCREENSHOT_PATH) {
      await page.setViewportSize({ width: 760, height: 620 });
      await page.locator("chatq-chat").screenshot({ path: process.env.CHATQ_SCREENSHOT_PATH });
    }
    await page.emulateMedia({ colorScheme: "dark" });
    await page.screenshot({ path: `${outDir}/widget-desktop-dark.png` });
    await page.emulateMedia({ colorScheme: "light" });
    await page.setViewportSize({ width: 320, height: 640 });
    await page.screenshot({ path: `${outDir}/widget-320.png` });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);

    // axe-core in a context without the page's CSP (axe itself is not Trusted-Types clean),
    // with the same visitor: the conversation comes back from the history.
    const state = await context.storageState();
    const axeContext = await browser.newContext({ bypassCSP: true, storageState: state });
    const axePage = await open(axeContext);
    await waitAnswers(axePage, 1);
    await widget(axePage).answers.first().getByRole("button", { name: /^Source 1:/ }).click();
    await axePage.evaluate(await readFile(require.resolve("axe-core/axe.min.js"), "utf8"));
    const runAxe = () => axePage.evaluate(async () => {
      // @ts-ignore injected above
      const r = await window.axe.run(document, { resultTypes: ["violations"] });
      return r.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.length }));
    });
    const axe = await runAxe();
    await axePage.emulateMedia({ colorScheme: "dark" });
    const axeDark = await runAxe();
    const historyTexts = await answerTexts(axePage);
    await axeContext.close();
    return { texts: await answerTexts(page), historyTexts, citeLabel, quoteText, sourceLabel, overflow320: overflow, axe, axeDark, stored: await stored(page) };
  },

  /** Each failure shows its message and the widget keeps working. */
  async errors(context) {
    const page = await open(context);
    const w = widget(page);
    await page.getByRole("button", { name: "Chat with us" }).click();
    const seen = {};
    for (const [name, text] of [
      ["rate_limited", "Hi [[fake fail=429]]"],
      ["exhausted", "Hi [[fake fail=500]]"],
      ["moderation", "Tell me about forbidden-topic"],
    ]) {
      await ask(page, text);
      await w.alert.filter({ hasText: /\S/ }).waitFor(DEADLINE);
      seen[name] = await w.alert.textContent();
      await page.waitForFunction(() => {
        const log = document.querySelector("chatq-chat")?.shadowRoot?.querySelector('[role="log"]');
        return log?.getAttribute("aria-busy") === "false";
      }, null, DEADLINE);
      await expectUsable(page);
      await ask(page, `Still there after ${name}? [[fake tokens=10]]`);
      await page.waitForFunction((n) => {
        const root = document.querySelector("chatq-chat")?.shadowRoot;
        const done = root?.querySelectorAll('[part~="assistant"]:not([aria-hidden]) [part~="body"]') ?? [];
        return [...done].some((b) => (b.textContent ?? "").includes(`Still there after ${n}?`));
      }, name, DEADLINE);
    }

    // A busy thread: a run started elsewhere (another tab) is followed instead of failing.
    const thread = (await stored(page)).thread;
    const other = await apiCall(page, "POST", `/v1/threads/${thread}/runs`, { input: "From another tab [[fake tokens=40 delay_ms=40]]" });
    await ask(page, "Sent while busy [[fake tokens=4]]");
    await w.alert.filter({ hasText: /still answering/ }).waitFor(DEADLINE);
    seen.busy = await w.alert.textContent();
    const keptInput = await w.input.inputValue();
    await page.waitForFunction((t) => {
      const root = document.querySelector("chatq-chat")?.shadowRoot;
      const done = root?.querySelectorAll('[part~="assistant"]:not([aria-hidden]) [part~="body"]') ?? [];
      return [...done].some((b) => (b.textContent ?? "").includes(t));
    }, "From another tab", DEADLINE);
    await expectUsable(page);
    await w.input.press("Enter");
    await page.waitForFunction(() => {
      const root = document.querySelector("chatq-chat")?.shadowRoot;
      const done = root?.querySelectorAll('[part~="assistant"]:not([aria-hidden]) [part~="body"]') ?? [];
      return [...done].some((b) => (b.textContent ?? "").includes("Sent while busy"));
    }, null, DEADLINE);
    return { seen, keptInput, busyRun: other.body.id ?? null, busyStatus: other.status, texts: await answerTexts(page), stored: await stored(page) };
  },

  /** A retried attempt replaces the text of the failed one (run.reset); a rate limit shows
   * its wait, keeps the message and lets it be sent once the wait is over. */
  async limits(context) {
    const page = await open(context);
    const w = widget(page);
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "Cut short [[fake tokens=20 delay_ms=10 cut_after=5]]");
    await w.alert.filter({ hasText: /\S/ }).waitFor(DEADLINE);
    await waitAnswers(page, 1);
    const failed = { alert: await w.alert.textContent(), texts: await answerTexts(page) };

    // Another thread of the same visitor is being answered: the active-runs limit applies.
    const assistant = await page.locator("chatq-chat").getAttribute("assistant");
    const other = await apiCall(page, "POST", "/v1/threads", { assistant_id: assistant });
    const otherRun = await apiCall(page, "POST", `/v1/threads/${other.body.id}/runs`, { input: "Elsewhere [[fake tokens=60 delay_ms=50]]" });
    await ask(page, "Over the limit [[fake tokens=6]]");
    await w.alert.filter({ hasText: /wait/ }).waitFor(DEADLINE);
    const limited = {
      alert: await w.alert.textContent(),
      kept: await w.input.inputValue(),
      sendDisabled: await w.send.isDisabled(),
    };
    await expectUsable(page);
    // Sent again once the other answer is done.
    const end = Date.now() + 30_000;
    while ((await apiCall(page, "GET", `/v1/runs/${otherRun.body.id}`)).body.status !== "completed") {
      if (Date.now() > end) throw new Error("the other thread's run did not complete");
    }
    await w.input.press("Enter");
    await waitAnswers(page, 2);
    return { failed, limited, texts: await answerTexts(page), stored: await stored(page) };
  },

  /** An answer streams, then output moderation withdraws it: the partial answer is replaced
   * by the refusal, live and after a reload. */
  async withdraw(context) {
    const page = await open(context);
    const w = widget(page);
    await page.getByRole("button", { name: "Chat with us" }).click();
    await ask(page, "Tell me a story [[fake tokens=30 delay_ms=40 trigger_at=25]]");
    await waitWords(page, 5);
    const shownWhileStreaming = await w.streaming.last().textContent();
    await w.alert.filter({ hasText: /\S/ }).waitFor(DEADLINE);
    await waitAnswers(page, 1);
    const live = {
      alert: await w.alert.textContent(),
      texts: await answerTexts(page),
      log: await w.log.textContent(),
    };
    await page.reload();
    await page.getByRole("button", { name: "Chat with us" }).click();
    await waitAnswers(page, 1);
    const reloaded = { texts: await answerTexts(page), log: await w.log.textContent() };
    return { shownWhileStreaming, live, reloaded, stored: await stored(page) };
  },

  /** Open, type, send, stop, open a citation, close: the keyboard only. */
  async keyboard(context) {
    const page = await open(context);
    const w = widget(page);
    const steps = {};
    for (let i = 0; i < 5 && !(await focused(page))?.inWidget; i++) await page.keyboard.press("Tab");
    steps.launcher = await focused(page);
    await page.keyboard.press("Enter");
    steps.afterOpen = await focused(page);
    await page.keyboard.type("What are the upload limits? [[fake delay_ms=200]]");
    await page.keyboard.press("Enter");
    await waitWords(page, 2);
    await page.keyboard.press("Escape");
    await w.answers.first().getByText("Stopped.").waitFor(DEADLINE);
    await expectUsable(page);
    await page.keyboard.type("What are the upload limits?");
    await page.keyboard.press("Enter");
    await waitAnswers(page, 2);
    // Back from the message box to the citation of the last answer.
    for (let i = 0; i < 12; i++) {
      await page.keyboard.press("Shift+Tab");
      const f = await focused(page);
      if (f?.label?.startsWith("Source 1:")) break;
    }
    steps.citation = await focused(page);
    await page.keyboard.press("Enter");
    steps.afterCitation = await focused(page);
    const quoteVisible = await w.answers.last().locator("blockquote").isVisible();
    await page.keyboard.press("Escape");
    steps.afterClose = await focused(page);
    const panelHidden = !(await w.log.isVisible());
    return { steps, quoteVisible, panelHidden, texts: await answerTexts(page), stored: await stored(page) };
  },
};

try {
  const run = scenarios[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const context = await browser.newContext({ viewport: { width: 1024, height: 768 } });
  const result = await run(context);
  console.log(JSON.stringify({ ...result, pageErrors }));
} finally {
  await browser.close();
}
