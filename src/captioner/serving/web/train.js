import { api, el, fmtScore, fmtTime } from "/static/app.js";

const form = document.getElementById("form"), formError = document.getElementById("form-error");
const section = document.getElementById("job");
let source = null, current = null, losses = [];

// The settings most runs change; every other TrainConfig field sits under "More settings".
const MAIN = ["dataset_format", "dataset_path", "images", "dev_split", "encoder", "batch_size",
  "vocab_threshold", "embed_size", "hidden_size", "learning_rate", "epochs"];
let schema = null, presets = {};

function fieldType(prop) {
  const types = prop.anyOf ? prop.anyOf.map(t => t.type) : [prop.type];
  return { type: types.find(t => t !== "null"), nullable: types.includes("null") };
}

function makeField(name, prop, required) {
  const { type, nullable } = fieldType(prop);
  const label = prop.title || name;
  const hint = el("span", { class: "hint" }, prop.description || "");
  let input;
  if (type === "boolean") {
    input = el("input", { type: "checkbox", name, checked: prop.default === true });
    return el("label", { class: "check", title: prop.description || "" }, input, label);
  }
  if (prop.enum) {
    input = el("select", { name }, ...prop.enum.map(v => el("option", { value: v, selected: v === prop.default }, v)));
  } else if (type === "integer" || type === "number") {
    input = el("input", {
      name, type: "number", step: type === "integer" ? "1" : "any",
      min: prop.minimum ?? prop.exclusiveMinimum, max: prop.maximum ?? prop.exclusiveMaximum,
      value: prop.default ?? "",
    });
  } else {
    input = el("input", { name, value: prop.default ?? "", required: required || undefined,
      placeholder: nullable ? "optional" : "", list: name === "dataset_path" ? "roots" : undefined });
  }
  input.dataset.kind = type;
  return el("label", {}, label, input, hint);
}

function setValue(input, value) {
  if (input.type === "checkbox") input.checked = !!value;
  else input.value = value ?? "";
}

async function buildForm() {
  const cfg = await api("/api/config/schema");
  schema = cfg.schema; presets = cfg.presets;
  const required = new Set(schema.required || []);
  const main = document.getElementById("main-fields"), more = document.getElementById("more-fields");
  for (const [name, prop] of Object.entries(schema.properties)) {
    (MAIN.includes(name) ? main : more).append(makeField(name, prop, required.has(name)));
  }
  // Keep the main fields in MAIN's order.
  main.replaceChildren(...MAIN.filter(n => schema.properties[n]).map(n => form.elements[n].closest("label")));
  const preset = document.getElementById("preset");
  preset.append(...Object.keys(presets).map(p => el("option", { value: p }, p)));
  preset.addEventListener("change", () => {
    const values = { ...Object.fromEntries(Object.entries(schema.properties).map(([k, p]) => [k, p.default])),
                     ...(presets[preset.value] || {}) };
    for (const [k, v] of Object.entries(values)) {
      if (form.elements[k] && k !== "dataset_path") setValue(form.elements[k], v);
    }
  });
  form.removeAttribute("aria-busy");
}

const ready = buildForm().catch(err => { formError.textContent = `cannot load the settings: ${err.message}`; });

api("/api/datasets").then(d => {
  document.getElementById("roots").replaceChildren(...d.roots.map(r => el("option", { value: r })));
  if (d.roots.length && !form.dataset_path?.value) ready.then(() => { form.dataset_path.placeholder = d.roots[0]; });
}).catch(() => {});

form.addEventListener("submit", async e => {
  e.preventDefault();
  formError.textContent = "";
  const body = {};
  for (const input of form.elements) {
    if (!input.name) continue;
    if (input.type === "checkbox") { body[input.name] = input.checked; continue; }
    const v = input.value.trim();
    if (v === "") continue;
    body[input.name] = input.dataset.kind === "integer" || input.dataset.kind === "number" ? Number(v) : v;
  }
  try {
    const job = await api("/api/jobs", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    follow(job.id);
    refreshJobs();
  } catch (err) { formError.textContent = err.message; }
});

function drawCurve() {
  const svg = document.getElementById("curve");
  if (losses.length < 2) { svg.replaceChildren(); return; }
  const max = Math.max(...losses), min = Math.min(...losses), span = max - min || 1;
  const pts = losses.map((l, i) => `${(i / (losses.length - 1)) * 400},${150 - ((l - min) / span) * 140}`);
  svg.replaceChildren(document.createElementNS("http://www.w3.org/2000/svg", "polyline"));
  const line = svg.firstChild;
  line.setAttribute("points", pts.join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#2452c9"); line.setAttribute("stroke-width", "2");
}

function show(job) {
  current = job;
  section.hidden = false;
  document.getElementById("job-title").textContent = `Job ${job.id}`;
  const p = job.progress || {};
  const state = document.getElementById("job-state");
  state.textContent = job.state + (job.error ? `: ${job.error}` : "");
  state.className = job.state === "failed" ? "error" : job.state === "done" ? "ok" : "";
  const total = (p.epochs || 1) * (p.steps || 1), doneSteps = ((p.epoch || 1) - 1) * (p.steps || 0) + (p.step || 0);
  const pct = job.state === "done" ? 100 : Math.round((100 * doneSteps) / total) || 0;
  document.getElementById("bar").style.width = `${pct}%`;
  document.querySelector(".progress").setAttribute("aria-valuenow", pct);
  document.getElementById("job-step").textContent = p.epoch ?
    `epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.steps}, loss ${p.loss.toFixed(3)}` : "preparing data and features…";
  document.getElementById("job-eta").textContent = job.state === "running" && p.eta_s != null ? `about ${fmtTime(p.eta_s)} left` : "";
  if (p.loss != null && job.state === "running") { losses.push(p.loss); if (losses.length > 400) losses.shift(); drawCurve(); }
  document.getElementById("epochs").replaceChildren(...job.history.map(h => el("tr", {},
    el("td", {}, h.epoch), el("td", {}, h.loss.toFixed(3)), el("td", {}, fmtScore(h["dev_BLEU-4"])),
    el("td", {}, fmtScore(h.dev_CIDEr)), el("td", {}, Math.round(h.seconds)))));
  const log = document.getElementById("log");
  log.textContent = job.log || "";
  log.scrollTop = log.scrollHeight;
  document.getElementById("stop").disabled = !["running", "queued"].includes(job.state);
  document.getElementById("resume").disabled = !["stopped", "interrupted", "failed"].includes(job.state);
}

function follow(id) {
  if (source) source.close();
  losses = [];
  history.replaceState(null, "", `/train?job=${encodeURIComponent(id)}`);
  source = new EventSource(`/api/jobs/${encodeURIComponent(id)}/events`);
  source.onmessage = e => {
    const job = JSON.parse(e.data);
    show(job);
    if (!["running", "queued"].includes(job.state)) { source.close(); refreshJobs(); }
  };
}

document.getElementById("stop").addEventListener("click", async () => {
  try { show(await api(`/api/jobs/${current.id}/stop`, { method: "POST" })); refreshJobs(); }
  catch (e) { formError.textContent = e.message; }
});
document.getElementById("resume").addEventListener("click", async () => {
  try { await api(`/api/jobs/${current.id}/resume`, { method: "POST" }); follow(current.id); refreshJobs(); }
  catch (e) { formError.textContent = e.message; }
});

async function refreshJobs() {
  const jobs = await api("/api/jobs");
  if (!jobs.length) {
    document.getElementById("jobs").replaceChildren(el("tr", {}, el("td", { colspan: 5 }, "No training jobs yet.")));
    return;
  }
  document.getElementById("jobs").replaceChildren(...jobs.map(j => el("tr", {},
    el("td", {}, el("a", { href: `/train?job=${encodeURIComponent(j.id)}`, onclick: ev => { ev.preventDefault(); follow(j.id); } }, j.id)),
    el("td", {}, j.state), el("td", {}, `${j.config.dataset_format}: ${j.config.dataset_path}`),
    el("td", {}, j.progress.epoch ? `epoch ${j.progress.epoch}/${j.progress.epochs}` : "–"),
    el("td", {}, j.model_id ? el("a", { href: "/models" }, j.model_id) : "–"))));
}

refreshJobs();
const fromUrl = new URLSearchParams(location.search).get("job");
if (fromUrl) follow(fromUrl);  // survives a page reload
