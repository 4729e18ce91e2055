// Shared helpers for the captioner pages (no framework, no CDN).
export async function api(path, options = {}) {
  // Same-origin fetches carry the login cookie; a 401 means this server wants its token.
  const res = await fetch(path, { credentials: "same-origin", ...options });
  if (res.status === 401) {
    location.href = `/login?next=${encodeURIComponent(location.pathname)}`;
    throw new Error("this server needs its access token: log in first");
  }
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) {
    const detail = body && body.detail;
    const msg = Array.isArray(detail) ? detail.map(d => `${d.loc.join(".")}: ${d.msg}`).join("; ")
                                      : (detail || res.statusText);
    throw new Error(msg);
  }
  return body;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// A CSV cell a spreadsheet will not run as a formula (same rule as captioner.core.csvsafe):
// text starting with =, +, -, @, tab or CR gets a leading apostrophe.
export function safeCell(value) {
  const text = value == null ? "" : String(value);
  return /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
}

export function fmtScore(x) { return typeof x === "number" ? x.toFixed(3) : "–"; }
export function fmtTime(s) {
  if (s == null) return "–";
  s = Math.round(s);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`
       : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

export async function fillModels(select) {
  const models = await api("/api/models");
  select.replaceChildren(...models.map(m => el("option", { value: m.id, selected: m.default && !m.broken,
    disabled: m.broken }, `${m.id}${m.default ? " (default)" : ""}${m.broken ? " (broken)" : ""}`)));
  return models;
}

// Hide the Train link on caption-only servers.
api("/healthz").then(h => {
  if (!h.training) document.querySelectorAll("[data-training]").forEach(n => n.remove());
}).catch(() => {});
