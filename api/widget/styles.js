// @ts-check
// The widget's stylesheet, inside its shadow root. Theme it from the host page with the
// `--chatq-*` custom properties on `chatq-chat` and with `::part(...)`. Colours meet WCAG AA
// in both schemes.

export const STYLES = `
:host {
  --chatq-font: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  --chatq-bg: #ffffff;
  --chatq-fg: #1f2937;
  --chatq-muted: #4b5563;
  --chatq-border: #d1d5db;
  --chatq-accent: #1d4ed8;
  --chatq-accent-fg: #ffffff;
  --chatq-user-bg: #e8eefc;
  --chatq-assistant-bg: #f3f4f6;
  --chatq-error-bg: #fef2f2;
  --chatq-error-fg: #991b1b;
  --chatq-focus: #b45309;
  --chatq-radius: 12px;
  --chatq-width: 380px;
  --chatq-height: 560px;
  font-family: var(--chatq-font);
  font-size: 15px;
  line-height: 1.45;
  color: var(--chatq-fg);
}
@media (prefers-color-scheme: dark) {
  :host {
    --chatq-bg: #111827;
    --chatq-fg: #f3f4f6;
    --chatq-muted: #b6bcc6;
    --chatq-border: #4b5563;
    --chatq-accent: #93c5fd;
    --chatq-accent-fg: #0b1220;
    --chatq-user-bg: #1e3a8a;
    --chatq-assistant-bg: #1f2937;
    --chatq-error-bg: #450a0a;
    --chatq-error-fg: #fecaca;
    --chatq-focus: #fbbf24;
  }
}
* { box-sizing: border-box; }
[hidden] { display: none !important; }
button, textarea { font: inherit; color: inherit; }
:focus-visible { outline: 3px solid var(--chatq-focus); outline-offset: 2px; }
.launcher {
  position: fixed; right: 16px; bottom: 16px; z-index: 2147483000;
  border: 0; border-radius: 999px; padding: 12px 18px;
  background: var(--chatq-accent); color: var(--chatq-accent-fg);
  font-weight: 600; cursor: pointer; box-shadow: 0 4px 14px rgb(0 0 0 / 25%);
}
.panel {
  display: flex; flex-direction: column;
  background: var(--chatq-bg); color: var(--chatq-fg);
  border: 1px solid var(--chatq-border); border-radius: var(--chatq-radius);
  overflow: hidden;
}
:host(:not([mode="inline"])) .panel {
  position: fixed; right: 16px; bottom: 76px; z-index: 2147483000;
  width: min(var(--chatq-width), calc(100vw - 16px));
  height: min(var(--chatq-height), calc(100vh - 92px));
  box-shadow: 0 10px 30px rgb(0 0 0 / 25%);
}
:host([mode="inline"]) .panel { width: 100%; height: var(--chatq-height); }
@media (max-width: 480px) {
  :host(:not([mode="inline"])) .panel { right: 8px; left: 8px; width: auto; bottom: 72px; }
  :host(:not([mode="inline"])) .launcher { right: 8px; bottom: 8px; }
}
.header {
  display: flex; align-items: center; gap: 8px; padding: 10px 12px;
  border-bottom: 1px solid var(--chatq-border);
}
.header h2 { flex: 1; margin: 0; font-size: 1rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.ghost {
  border: 1px solid var(--chatq-border); background: transparent; border-radius: 8px;
  padding: 4px 10px; cursor: pointer; min-height: 32px;
}
.log { flex: 1; overflow-y: auto; padding: 12px; display: flex; flex-direction: column; gap: 10px; }
.empty { color: var(--chatq-muted); margin: auto; text-align: center; }
.msg { max-width: 92%; border-radius: var(--chatq-radius); padding: 8px 12px; overflow-wrap: anywhere; }
.msg.user { align-self: flex-end; background: var(--chatq-user-bg); }
.msg.assistant { align-self: flex-start; background: var(--chatq-assistant-bg); }
.meta { margin: 0 0 2px; font-size: 0.8rem; color: var(--chatq-muted); display: flex; gap: 8px; }
.who { font-weight: 600; }
.body p { margin: 0 0 0.5em; }
.body p:last-child { margin-bottom: 0; }
.body ul, .body ol { margin: 0 0 0.5em; padding-left: 1.4em; }
.body pre { overflow-x: auto; padding: 8px; border-radius: 6px; background: var(--chatq-bg); border: 1px solid var(--chatq-border); }
.body code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.9em; }
.body a { color: inherit; text-decoration: underline; }
.user .body { white-space: pre-wrap; }
.cite {
  border: 1px solid var(--chatq-border); background: var(--chatq-bg); color: var(--chatq-fg);
  border-radius: 6px; padding: 0 4px; font-size: 0.8em; cursor: pointer; vertical-align: baseline;
}
.note { margin: 4px 0 0; font-size: 0.8rem; color: var(--chatq-muted); font-style: italic; }
.sources { margin: 8px 0 0; padding: 6px 0 0; border-top: 1px solid var(--chatq-border); list-style: none; font-size: 0.85rem; }
.sources h3 { margin: 0 0 4px; font-size: 0.8rem; color: var(--chatq-muted); }
.sources ol { margin: 0; padding: 0; list-style: none; }
.source-toggle {
  display: block; width: 100%; text-align: left; border: 0; background: transparent;
  padding: 2px 0; cursor: pointer; text-decoration: underline;
}
.quote { margin: 4px 0 8px; padding: 6px 8px; border-left: 3px solid var(--chatq-accent); background: var(--chatq-bg); }
.quote p { margin: 0 0 4px; color: var(--chatq-muted); font-size: 0.8rem; }
.quote blockquote { margin: 0; }
.status { margin: 0; padding: 0 12px; min-height: 1.4em; font-size: 0.8rem; color: var(--chatq-muted); }
.dots::after { content: " …"; animation: chatq-pulse 1.2s ease-in-out infinite; }
@keyframes chatq-pulse { 50% { opacity: 0.3; } }
@media (prefers-reduced-motion: reduce) {
  .dots::after { animation: none; }
  .log { scroll-behavior: auto; }
}
.error {
  margin: 0 12px 8px; padding: 8px 10px; border-radius: 8px;
  background: var(--chatq-error-bg); color: var(--chatq-error-fg); font-size: 0.9rem;
}
.composer { display: flex; gap: 8px; padding: 10px 12px; border-top: 1px solid var(--chatq-border); align-items: flex-end; }
.composer label { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
.composer textarea {
  flex: 1; min-width: 0; resize: none; min-height: 40px; max-height: 140px; padding: 8px 10px;
  border: 1px solid var(--chatq-muted); border-radius: 8px; background: var(--chatq-bg);
}
.primary {
  border: 0; border-radius: 8px; padding: 0 14px; min-height: 40px; font-weight: 600; cursor: pointer;
  background: var(--chatq-accent); color: var(--chatq-accent-fg);
}
.primary:disabled { opacity: 0.6; cursor: not-allowed; }
`;
