import { api, el, fmtScore, fmtTime } from "/static/app.js";

const list = document.getElementById("models"), status = document.getElementById("status");

async function act(fn, message) {
  try { await fn(); status.textContent = message; await render(); }
  catch (e) { status.textContent = e.message; }
}

async function render() {
  const models = await api("/api/models");
  const training = (await api("/healthz")).training;  // caption-only servers change nothing
  list.replaceChildren(...models.map(m => {
    const s = m.dev_scores || {};
    const id = encodeURIComponent(m.id);
    const remove = m.deletable && training ? el("button", { type: "button", onclick: () => {
      if (confirm(`Delete model ${m.id}?`)) act(() => api(`/api/models/${id}`, { method: "DELETE" }), `${m.id} deleted`);
    } }, "Delete") : "";
    if (m.broken) {
      return el("li", { class: "card broken" }, el("div", { class: "body" },
        el("h2", { style: "font-size:1.1rem;margin:0" }, m.id, m.default ? " (default)" : "", " — broken"),
        el("p", { class: "error" }, m.error || "this model cannot be loaded"),
        m.default ? el("p", {}, "Captions use the bundled model until this one is repaired or another is made the default.") : "",
        el("div", { class: "row" }, remove)));
    }
    return el("li", { class: "card" }, el("div", { class: "body" },
      el("h2", { style: "font-size:1.1rem;margin:0" }, m.id, m.default ? " (default)" : ""),
      el("table", {}, el("tbody", {},
        el("tr", {}, el("th", {}, "Data"), el("td", {}, `${m.data.dataset_format || "–"} (${m.data.train_split || "–"})`)),
        el("tr", {}, el("th", {}, "Encoder"), el("td", {}, m.encoder)),
        el("tr", {}, el("th", {}, "Decoder"), el("td", {}, `embed ${m.model.embed_size}, LSTM ${m.model.hidden_size}, ${m.model.vocab_size} words`)),
        el("tr", {}, el("th", {}, "Settings"), el("td", {}, `batch ${m.settings.batch_size}, lr ${m.settings.learning_rate}, ${m.settings.epochs} epochs`)),
        el("tr", {}, el("th", {}, "Dev BLEU-4 / CIDEr"), el("td", {}, `${fmtScore(s["BLEU-4"])} / ${fmtScore(s.CIDEr)}`)),
        el("tr", {}, el("th", {}, "Training time"), el("td", {}, fmtTime(m.train_seconds))),
        el("tr", {}, el("th", {}, "Size"), el("td", {}, `${(m.size_bytes / 1e6).toFixed(1)} MB`)))),
      el("div", { class: "row" },
        training ? el("button", { type: "button", disabled: m.default, onclick: () => act(() => api(`/api/models/${id}/default`, { method: "POST" }), `${m.id} is now the default`) }, "Make default") : "",
        el("a", { class: "button", href: `/api/models/${id}/download`, download: "" }, "Download zip"),
        remove)));
  }));
}

render().catch(e => { status.textContent = e.message; });
