import { api, el, fmtScore, fmtTime } from "/static/app.js";

const list = document.getElementById("models"), status = document.getElementById("status");

async function act(fn, message) {
  try { await fn(); status.textContent = message; await render(); }
  catch (e) { status.textContent = e.message; }
}

const METRICS = ["BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"];
const title = m => m.name || m.id;

function compare(models) {
  const ok = models.filter(m => !m.broken && m.dev_scores && Object.keys(m.dev_scores).length);
  const table = document.getElementById("compare");
  const cols = METRICS.filter(k => ok.some(m => typeof m.dev_scores[k] === "number"));
  table.tHead.replaceChildren(el("tr", {}, el("th", { scope: "col" }, "Model"), el("th", { scope: "col" }, "Dev split"),
    ...cols.map(k => el("th", { scope: "col" }, k)), el("th", { scope: "col" }, "Best epoch"), el("th", { scope: "col" }, "Training time")));
  const best = Object.fromEntries(cols.map(k => [k, Math.max(...ok.map(m => m.dev_scores[k] ?? -Infinity))]));
  table.tBodies[0].replaceChildren(...(ok.length ? ok.map(m => el("tr", { "data-model": m.id },
    el("th", { scope: "row" }, title(m), m.name ? el("div", { class: "model-id" }, m.id) : ""),
    el("td", {}, m.dev_split || "–"),
    ...cols.map(k => el("td", { class: m.dev_scores[k] === best[k] && ok.length > 1 ? "best" : "" }, fmtScore(m.dev_scores[k]))),
    el("td", {}, bestEpoch(m)), el("td", {}, fmtTime(m.train_seconds))))
    : [el("tr", {}, el("td", { colspan: cols.length + 4 }, "No model has dev scores yet."))]));
}

// An averaged model's weights are the mean of its last epochs (training's average_epochs).
function bestEpoch(m) {
  if (m.best_epoch == null) return "–";
  return m.averaged_epochs > 1 ? `mean of ${m.best_epoch - m.averaged_epochs + 1}–${m.best_epoch}` : String(m.best_epoch);
}

function renameForm(m) {
  const input = el("input", { name: "name", value: m.name || "", maxlength: 64, "aria-label": `New name for ${m.id}`,
                              placeholder: "a name for this model" });
  return el("form", { class: "rename", onsubmit: ev => {
    ev.preventDefault();
    act(() => api(`/api/models/${encodeURIComponent(m.id)}`, { method: "PATCH", headers: { "content-type": "application/json" },
                                                              body: JSON.stringify({ name: input.value }) }),
        input.value.trim() ? `${m.id} is now called “${input.value.trim()}”` : `${m.id} has no name now`);
  } }, input, el("button", { type: "submit" }, "Rename"));
}

async function render() {
  const models = await api("/api/models");
  const training = (await api("/healthz")).training;  // caption-only servers change nothing
  compare(models);
  list.replaceChildren(...models.map(m => {
    const s = m.dev_scores || {};
    const id = encodeURIComponent(m.id);
    const remove = m.deletable && training ? el("button", { type: "button", onclick: () => {
      if (confirm(`Delete model ${title(m)}?`)) act(() => api(`/api/models/${id}`, { method: "DELETE" }), `${title(m)} deleted`);
    } }, "Delete") : "";
    if (m.broken) {
      return el("li", { class: "card broken", "data-model": m.id }, el("div", { class: "body" },
        el("h2", { class: "model-name" }, m.id, m.default ? " (default)" : "", " — broken"),
        el("p", { class: "error" }, m.error || "this model cannot be loaded"),
        m.default ? el("p", {}, "Captions use the bundled model until this one is repaired or another is made the default.") : "",
        el("div", { class: "row" }, remove)));
    }
    const st = m.settings || {}, scores = METRICS.filter(k => typeof s[k] === "number");
    const decoder = `${st.decoder || m.model.kind || "show_and_tell"}: embed ${m.model.embed_size}, LSTM ${m.model.hidden_size}, ${m.model.vocab_size} words`;
    return el("li", { class: "card", "data-model": m.id }, el("div", { class: "body" },
      el("h2", { class: "model-name" }, title(m), m.default ? " (default)" : ""),
      m.name ? el("div", { class: "model-id" }, `id ${m.id}`) : "",
      el("table", {}, el("tbody", {},
        el("tr", {}, el("th", {}, "Data"), el("td", {}, `${m.data.dataset_format || "–"} (${m.data.train_split || "–"})`,
          m.data.dataset_path ? el("div", { class: "model-id" }, m.data.dataset_path) : "")),
        el("tr", {}, el("th", {}, "Encoder"), el("td", {}, m.encoder + (st.finetune_encoder ? " (fine-tuned)" : ""))),
        el("tr", {}, el("th", {}, "Decoder"), el("td", {}, decoder)),
        el("tr", {}, el("th", {}, "Settings"), el("td", {}, `batch ${st.batch_size}, lr ${st.learning_rate}, ${st.epochs} epochs` +
          (st.scst_epochs ? ` + ${st.scst_epochs} self-critical` : "") + (m.beam_size ? `, beam ${m.beam_size}` : ""))),
        el("tr", {}, el("th", {}, `Dev scores${m.dev_split ? ` (${m.dev_split})` : ""}`),
          el("td", {}, scores.length ? scores.map(k => `${k} ${fmtScore(s[k])}`).join(", ") : "–")),
        el("tr", {}, el("th", {}, "Best epoch"), el("td", {}, bestEpoch(m))),
        el("tr", {}, el("th", {}, "Training time"), el("td", {}, fmtTime(m.train_seconds))),
        el("tr", {}, el("th", {}, "Size"), el("td", {}, `${(m.size_bytes / 1e6).toFixed(1)} MB`)))),
      m.card ? el("details", { class: "card-text" }, el("summary", {}, "Model card"), el("pre", {}, m.card)) : "",
      training && m.renamable ? renameForm(m) : "",
      el("div", { class: "row" },
        training ? el("button", { type: "button", disabled: m.default, onclick: () => act(() => api(`/api/models/${id}/default`, { method: "POST" }), `${title(m)} is now the default`) }, "Make default") : "",
        el("a", { class: "button", href: `/api/models/${id}/download`, download: "" }, "Download zip"),
        remove)));
  }));
}

render().catch(e => { status.textContent = e.message; });
