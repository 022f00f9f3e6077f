// The API page: the OpenAPI document of this server, rendered, with a form to
// try each operation. Plain JavaScript, no CDN; every text goes through
// textContent, so nothing in the document can run as markup.

const ROOT = document.documentElement.dataset.root || "";
const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Inline literals (`code`) of the document's descriptions as <code>.
function rich(text) {
  return String(text || "").split(/(`[^`]+`)/).filter(Boolean).map((part) => (part.startsWith("`") ? el("code", { text: part.slice(1, -1) }) : part));
}

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()] || {};
  return schema || {};
}

function typeOf(doc, schema) {
  const s = resolve(doc, schema);
  if (schema && schema.$ref) return schema.$ref.split("/").pop();
  if (s.enum) return s.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (s.anyOf || s.oneOf) return (s.anyOf || s.oneOf).map((x) => typeOf(doc, x)).join(" or ");
  return [].concat(s.type || "any").join(" or ");
}

// A body to start from: the required fields of the schema, with plain values.
function skeleton(doc, schema, depth = 0) {
  const s = resolve(doc, schema);
  if (depth > 3) return null;
  if (s.example !== undefined) return s.example;
  if (s.type === "object" || s.properties) {
    const out = {};
    for (const name of s.required || []) out[name] = skeleton(doc, (s.properties || {})[name], depth + 1);
    return out;
  }
  if (s.type === "array") return [];
  if (s.enum) return s.enum[0];
  return { string: "", integer: 0, number: 0, boolean: false }[[].concat(s.type)[0]] ?? null;
}

// A JSON text's tokens: strings (whole), brackets and punctuation, and the rest
// (numbers, true, false, null).
const JSON_TOKENS = /"[^"\\]*(?:\\.[^"\\]*)*"|[{}[\],:]|[^\s{}[\],:"]+/g;

// An answer laid out as JSON.stringify(value, null, 2) would, from its text: a
// number keeps every digit it was sent with (job ids run to 2^63-1, beyond
// the integers a JavaScript number holds exactly). Throws when it is not JSON.
function indent(text) {
  JSON.parse(text);
  const tokens = text.match(JSON_TOKENS) || [];
  let depth = 0;
  let out = "";
  const line = () => `\n${"  ".repeat(depth)}`;
  for (let i = 0; i < tokens.length; i += 1) {
    const token = tokens[i];
    if (token === "{" || token === "[") {
      if (tokens[i + 1] === (token === "{" ? "}" : "]")) {
        out += token + tokens[(i += 1)]; // {} and [] stay on one line
        continue;
      }
      depth += 1;
      out += token + line();
    } else if (token === "}" || token === "]") {
      depth -= 1;
      out += line() + token;
    } else if (token === ",") out += `,${line()}`;
    else if (token === ":") out += ": ";
    else out += token;
  }
  return out;
}

function operation(doc, path, method, op) {
  const params = op.parameters || [];
  const body = op.requestBody && op.requestBody.content && op.requestBody.content["application/json"];
  const streams = Object.values(op.responses || {}).some((r) => r.content && r.content["text/event-stream"]);
  const inputs = new Map();
  const table = params.length
    ? el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, el("th", { text: "Parameter" }), el("th", { text: "In" }), el("th", { text: "Type" }), el("th", { text: "Value" }))),
        el("tbody", {}, params.filter((p) => p.in !== "header").map((p) => {
          const input = el("input", { "aria-label": `${p.name} of ${method.toUpperCase()} ${path}`, placeholder: p.required ? "required" : "" });
          inputs.set(p, input);
          return el("tr", {}, el("td", {}, el("code", { text: p.name }), p.description ? el("div", { class: "muted small" }, rich(p.description)) : null), el("td", { text: p.in }), el("td", { class: "muted small", text: typeOf(doc, p.schema) }), el("td", {}, input));
        })))
    : null;
  const bodyInput = body ? el("textarea", { rows: 6, spellcheck: "false", "aria-label": `Body of ${method.toUpperCase()} ${path}` }) : null;
  if (bodyInput) bodyInput.value = JSON.stringify(skeleton(doc, body.schema), null, 2);
  const status = el("div", { class: "muted small", role: "status" });
  const output = el("pre", { class: "code", hidden: true });
  const send = el("button", { type: "button", class: "btn primary", text: streams ? "Open the stream" : "Send" });
  send.addEventListener("click", async () => {
    let url = ROOT + path;
    const query = new URLSearchParams();
    for (const [p, input] of inputs) {
      const value = input.value.trim();
      if (p.in === "path") url = url.replace(`{${p.name}}`, encodeURIComponent(value));
      else if (value !== "") query.set(p.name, value);
    }
    if (String(query)) url += `?${query}`;
    if (streams) {
      window.open(url, "_blank", "noopener");
      return;
    }
    const init = { method: method.toUpperCase(), credentials: "same-origin", headers: { Accept: "application/json" } };
    if (bodyInput) {
      init.headers["Content-Type"] = "application/json";
      init.body = bodyInput.value;
    }
    status.textContent = "…";
    try {
      const response = await fetch(url, init);
      const text = await response.text();
      let shown = text;
      try {
        shown = indent(text);
      } catch {
        // not JSON: shown as it is
      }
      status.textContent = `${response.status} ${response.statusText}`;
      output.textContent = shown;
      output.hidden = !shown;
    } catch (exc) {
      status.textContent = `the server cannot be reached (${exc.message})`;
    }
  });
  const responses = el("ul", { class: "responses" }, Object.entries(op.responses || {}).map(([code, r]) => el("li", {}, el("code", { text: code }), " ", rich(r.description))));
  return el("details", { class: "op panel", id: op.operationId || null },
    el("summary", {}, el("span", { class: `method ${method}`, text: method.toUpperCase() }), " ", el("code", { class: "path", text: path }), " ", el("span", { class: "muted", text: op.summary || "" })),
    op.description ? el("p", { class: "note" }, rich(op.description)) : null,
    table,
    body ? el("div", { class: "note" }, el("div", { class: "muted small", text: `Body: ${typeOf(doc, body.schema)}` }), bodyInput) : null,
    el("div", { class: "note try" }, send, status),
    output,
    el("div", { class: "note" }, el("div", { class: "muted small", text: "Answers" }), responses),
  );
}

async function main() {
  let doc;
  try {
    const response = await fetch(`${ROOT}/openapi.json`, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (response.status === 401) {
      location.assign(`${ROOT}/login`); // the built-in token's sign-in (the dashboard's)
      return;
    }
    doc = await response.json();
  } catch (exc) {
    $("#api-description").textContent = `The API document cannot be read: ${exc.message}`;
    return;
  }
  $("#api-title").textContent = doc.info.title;
  $("#api-version").textContent = `version ${doc.info.version}`;
  $("#api-description").replaceChildren(...rich(doc.info.description));
  const groups = new Map((doc.tags || []).map((t) => [t.name, { tag: t, ops: [] }]));
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags || ["other"])[0];
      if (!groups.has(tag)) groups.set(tag, { tag: { name: tag }, ops: [] });
      groups.get(tag).ops.push(operation(doc, path, method, op));
    }
  }
  $("#api-groups").replaceChildren(...[...groups.values()].filter((g) => g.ops.length).map((g) => el("section", { class: "group" }, el("h2", { text: g.tag.name }), g.tag.description ? el("p", { class: "muted" }, rich(g.tag.description)) : null, g.ops)));
  document.body.dataset.ready = "true";
}

main();
