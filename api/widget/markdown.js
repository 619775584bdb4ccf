// @ts-check
// Markdown for answers, built as DOM nodes: paragraphs, headings, lists, code, emphasis, http(s)
// links and citation markers `[n]`. Text only ever reaches the page through `textContent` and
// text nodes; no string is ever parsed as HTML.

/**
 * How a citation marker `[n]` is drawn: return a node (a button), or `null` to keep the text.
 * @typedef {(index: number) => Node | null} CitationRenderer
 */

const INLINE =
  /(`[^`\n]+`)|(\*\*[^*\n]+\*\*|__[^_\n]+__)|(\*[^*\s][^*\n]*\*|(?<!\w)_[^_\s][^_\n]*_(?!\w))|(\[([^\]\n]+)\]\(([^)\s]+)\))|(\[(\d{1,3})\])/g;

/**
 * The URL if it is an absolute http(s) URL, otherwise `null`.
 * @param {string} raw
 * @returns {string | null}
 */
export function safeHref(raw) {
  try {
    const url = new URL(raw);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * Appends the inline Markdown of `text` to `parent`.
 * @param {Node} parent
 * @param {string} text
 * @param {CitationRenderer} cite
 */
function inline(parent, text, cite) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    const at = m.index ?? 0;
    if (at > last) parent.appendChild(document.createTextNode(text.slice(last, at)));
    last = at + m[0].length;
    if (m[1]) {
      const code = document.createElement("code");
      code.textContent = m[1].slice(1, -1);
      parent.appendChild(code);
    } else if (m[2]) {
      const strong = document.createElement("strong");
      inline(strong, m[2].slice(2, -2), cite);
      parent.appendChild(strong);
    } else if (m[3]) {
      const em = document.createElement("em");
      inline(em, m[3].slice(1, -1), cite);
      parent.appendChild(em);
    } else if (m[4]) {
      const href = safeHref(m[6]);
      if (href) {
        const a = document.createElement("a");
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        inline(a, m[5], cite);
        parent.appendChild(a);
      } else {
        parent.appendChild(document.createTextNode(m[0]));
      }
    } else {
      parent.appendChild(cite(Number(m[8])) ?? document.createTextNode(m[0]));
    }
  }
  if (last < text.length) parent.appendChild(document.createTextNode(text.slice(last)));
}

/**
 * Renders Markdown `source` as a fragment of block elements.
 * @param {string} source
 * @param {CitationRenderer} [cite]
 * @returns {DocumentFragment}
 */
export function renderMarkdown(source, cite = () => null) {
  const out = document.createDocumentFragment();
  const lines = source.replace(/\r\n?/g, "\n").split("\n");
  /** @type {string[]} */
  let para = [];
  /** @type {HTMLElement | null} */
  let list = null;
  const flush = () => {
    if (para.length) {
      const p = document.createElement("p");
      inline(p, para.join("\n"), cite);
      out.appendChild(p);
      para = [];
    }
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = /^\s*```/.test(line);
    if (fence) {
      flush();
      const body = [];
      while (++i < lines.length && !/^\s*```/.test(lines[i])) body.push(lines[i]);
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      code.textContent = body.join("\n");
      pre.appendChild(code);
      out.appendChild(pre);
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    const item = /^\s*(?:([-*+])|(\d{1,9})[.)])\s+(.*)$/.exec(line);
    if (!line.trim()) {
      flush();
    } else if (heading) {
      flush();
      const h = document.createElement("p");
      h.setAttribute("part", "heading");
      const strong = document.createElement("strong");
      inline(strong, heading[2], cite);
      h.appendChild(strong);
      out.appendChild(h);
    } else if (item) {
      if (para.length) flush();
      const tag = item[1] ? "UL" : "OL";
      if (!list || list.tagName !== tag) {
        list = document.createElement(tag);
        if (item[2] && item[2] !== "1") list.setAttribute("start", item[2]);
        out.appendChild(list);
      }
      const li = document.createElement("li");
      inline(li, item[3], cite);
      list.appendChild(li);
    } else if (list && /^\s+\S/.test(line) && list.lastChild) {
      list.lastChild.appendChild(document.createTextNode(" "));
      inline(list.lastChild, line.trim(), cite);
    } else {
      list = null;
      para.push(line);
    }
  }
  flush();
  return out;
}
