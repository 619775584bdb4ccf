// Opens the chat page served by api/tests/it/browser.rs in headless Chromium, reloads it in the
// middle of the answer and prints {text, afterReload, wordsBeforeReload, runId} as JSON.
// Usage: node ops/browser/reload.mjs <page-url>
import { chromium } from "playwright-core";

const url = process.argv[2];
const browser = await chromium.launch({
  executablePath: process.env.CHATQ_CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const page = await browser.newPage();
  page.on("console", (m) => console.error(`[page] ${m.text()}`));
  await page.goto(url);
  // Mid-answer: some words shown, the run not finished.
  await page.waitForFunction(() => document.querySelector("#out").textContent.split(/\s+/).length >= 6
    && !document.body.dataset.done, null, { timeout: 20000 });
  const wordsBeforeReload = (await page.textContent("#out")).split(/\s+/).length;
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.done === "1", null, { timeout: 30000 });
  const result = await page.evaluate(() => ({
    text: document.querySelector("#out").textContent,
    afterReload: Number(document.body.dataset.after),
    runId: localStorage.getItem("run"),
    status: document.body.dataset.status,
  }));
  console.log(JSON.stringify({ ...result, wordsBeforeReload }));
} finally {
  await browser.close();
}
