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

// The dataset picker: what GET /api/datasets found under the data roots.
const picker = document.getElementById("dataset-picker");
let datasets = [];
function describeDataset(d) {
  const counts = [d.images != null ? `${d.images.toLocaleString()} images` : null,
                  d.captions != null ? `${d.captions.toLocaleString()} captions` : null].filter(Boolean).join(", ");
  return `${d.path} — ${d.format}${counts ? `, ${counts}` : ""}${d.linked ? " (linked)" : ""}`;
}
api("/api/datasets").then(d => {
  datasets = d.datasets || [];
  document.getElementById("roots").replaceChildren(...d.roots.map(r => el("option", { value: r })),
    ...datasets.map(x => el("option", { value: x.dataset_path })));
  picker.replaceChildren(el("option", { value: "" }, datasets.length ? "choose a dataset…" :
    d.roots.length ? `none found in ${d.roots.join(", ")}` : "no data folder (serve --data-root)"),
    ...datasets.map((x, i) => el("option", { value: String(i) }, describeDataset(x))));
  if (d.roots.length && !form.dataset_path?.value) ready.then(() => { form.dataset_path.placeholder = d.roots[0]; });
}).catch(() => { picker.replaceChildren(el("option", { value: "" }, "cannot list datasets")); });
picker.addEventListener("change", async () => {
  await ready;
  const d = datasets[Number(picker.value)];
  if (!picker.value || !d) return;
  setValue(form.elements.dataset_path, d.dataset_path);
  setValue(form.elements.dataset_format, d.format);
  // A dev split the dataset has (Karpathy's is "val"), and the train split if it lacks "train".
  const splits = d.splits || [];
  if (splits.length && !splits.includes(form.elements.dev_split.value)) {
    setValue(form.elements.dev_split, ["dev", "val", "test"].find(s => splits.includes(s)) || splits[0]);
  }
  if (form.elements.images && d.format !== "captions") setValue(form.elements.images, "");
  document.getElementById("dataset-hint").textContent = `${d.root}/${d.path}`;
});

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

// A small SVG line chart with axes, tick values, axis titles (with units) and a legend.
const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}
// Enough decimals to tell the ticks of a span apart (0.004 is not "0.00").
function niceNumber(x, span) {
  const digits = Math.min(6, Math.max(0, Math.ceil(-Math.log10(span || 1)) + 1));
  return x.toFixed(digits);
}
function lineChart(svg, series, { xLabel, yLabel, yMin, empty }) {
  const W = 480, H = 200, L = 60, R = 12, T = 26, B = 38;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const points = series.flatMap(s => s.points);
  if (!points.length) {
    svg.replaceChildren(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, empty));
    return;
  }
  const xs = points.map(p => p[0]), ys = points.map(p => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  let y0 = yMin ?? Math.min(...ys), y1 = Math.max(...ys);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y1 = y0 + (Math.abs(y0) || 1) * 0.1; }
  const X = x => L + ((x - x0) / (x1 - x0)) * (W - L - R), Y = y => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const nodes = [
    svgEl("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    svgEl("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle", class: "axis-title" }, xLabel),
    svgEl("text", { x: 12, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-title",
                    transform: `rotate(-90 12 ${(T + H - B) / 2})` }, yLabel),
  ];
  for (const f of [0, 0.5, 1]) {
    const yv = y0 + f * (y1 - y0), xv = x0 + f * (x1 - x0);
    nodes.push(svgEl("line", { x1: L - 4, y1: Y(yv), x2: W - R, y2: Y(yv), class: f ? "grid" : "axis" }),
               svgEl("text", { x: L - 6, y: Y(yv) + 4, "text-anchor": "end", class: "tick" }, niceNumber(yv, y1 - y0)),
               svgEl("text", { x: X(xv), y: H - B + 15, "text-anchor": "middle", class: "tick" },
                     Number.isInteger(xv) ? xv : Math.round(xv)));
  }
  series.forEach((s, i) => {
    if (s.points.length > 1) {
      nodes.push(svgEl("polyline", { points: s.points.map(p => `${X(p[0])},${Y(p[1])}`).join(" "),
                                     fill: "none", stroke: s.color, "stroke-width": 2 }));
    }
    for (const p of s.points.length <= 40 ? s.points : []) {
      nodes.push(svgEl("circle", { cx: X(p[0]), cy: Y(p[1]), r: 3, fill: s.color }));
    }
    if (series.length > 1 || s.name) {
      nodes.push(svgEl("rect", { x: L + 10 + i * 110, y: 6, width: 10, height: 10, fill: s.color }),
                 svgEl("text", { x: L + 24 + i * 110, y: 15, class: "legend" }, s.name));
    }
  });
  svg.replaceChildren(...nodes);
}

function drawCurve(job) {
  // Live step losses while watching; otherwise (or as well) the loss of each finished epoch.
  const steps = job.progress?.steps || 0;
  const perEpoch = job.history.filter(h => h.phase !== "scst").map(h => [h.epoch * steps, h.loss]);
  lineChart(document.getElementById("curve"), [
    { name: "training loss", color: "#2452c9", points: losses.length > 1 ? losses : perEpoch },
  ], { xLabel: "training step (batches)", yLabel: "loss (nats/word)", empty: "the loss appears with the first training steps" });
  lineChart(document.getElementById("scores"), [
    { name: "dev BLEU-4", color: "#1e7a3c", points: job.history.map(h => [h.epoch, h["dev_BLEU-4"]]) },
    { name: "dev CIDEr", color: "#b3521e", points: job.history.map(h => [h.epoch, h.dev_CIDEr]) },
  ], { xLabel: "epoch", yLabel: "score", yMin: 0, empty: "dev scores appear after the first epoch" });
}

const PHASES = { queued: "Queued", starting: "Starting", data: "Reading the dataset", vocab: "Vocabulary",
  features: "Image features", train: "Training", dev: "Dev scoring", epoch: "Epoch finished", save: "Saving", done: "Done" };

// One line saying what the job is doing now, and the fraction done (0-1) for the bar.
function describe(job) {
  const p = job.progress || {};
  if (job.state === "done") return { text: "finished", frac: 1 };
  if (!["running", "queued"].includes(job.state)) {
    return { text: p.epoch ? `epoch ${p.epoch}/${p.epochs}` : (PHASES[p.phase] || "–"), frac: trainFrac(p) };
  }
  const f = p.features || {};
  switch (p.phase) {
    case "features": {
      const count = `${(f.done ?? 0).toLocaleString()} / ${(f.total ?? 0).toLocaleString()} images`;
      const speed = f.images_per_s ? `, ${f.images_per_s.toFixed(1)} images/s` : "";
      const stage = f.stage && f.stage !== "encoding images" ? ` (${f.stage})` : "";
      return { text: `${p.message || "image features"}: ${count}${speed}${stage}`, frac: f.total ? f.done / f.total : 0, eta: f.eta_s };
    }
    case "train":
      return { text: `epoch ${p.epoch}/${p.epochs}, step ${p.step}/${p.steps}, loss ${p.loss.toFixed(3)}` +
               (p.train_phase === "scst" ? " (self-critical)" : ""), frac: trainFrac(p), eta: p.eta_s };
    case "dev": return { text: `${p.message || "scoring the dev split"} (${(p.total || 0).toLocaleString()} images)`, frac: trainFrac(p) };
    default: return { text: p.message || PHASES[p.phase] || "starting…", frac: trainFrac(p) };
  }
}
function trainFrac(p) {
  return p.epochs && p.steps ? (((p.epoch || 1) - 1) * p.steps + (p.step || 0)) / (p.epochs * p.steps) : 0;
}

function showPhases(job) {
  const seen = Object.values(job.progress?.phases || {});
  const list = document.getElementById("phases");
  list.replaceChildren(...seen.filter(e => e.phase !== "epoch").map((e, i, all) => {
    const current = i === all.length - 1 && ["running", "queued"].includes(job.state);
    const secs = Math.max(0, (e.updated || e.started) - e.started);
    let what = e.message || PHASES[e.phase] || e.phase;
    if (e.phase === "train") what = "Training";
    if (e.phase === "dev") what = `Dev scoring (${(e.total || 0).toLocaleString()} images)`;
    const counted = { features: "images", train: "steps" }[e.phase];  // the others say it in words
    const counts = counted && e.total ? ` — ${e.done.toLocaleString()} / ${e.total.toLocaleString()} ${counted}` : "";
    const speed = e.images_per_s ? `, ${e.images_per_s.toFixed(1)} images/s` : "";
    return el("li", { class: current ? "current" : "finished", "data-phase": e.phase },
      what, counts, speed, secs >= 1 ? ` (${fmtTime(secs)})` : "");
  }));
}

function show(job) {
  current = job;
  section.hidden = false;
  document.getElementById("job-title").textContent = job.name ? `Job ${job.id} — ${job.name}` : `Job ${job.id}`;
  const p = job.progress || {};
  const state = document.getElementById("job-state");
  state.textContent = job.state + (job.error ? `: ${job.error}` : "");
  state.className = job.state === "failed" ? "error" : job.state === "done" ? "ok" : "";
  const now = describe(job);
  const pct = Math.round(100 * Math.min(1, now.frac || 0));
  document.getElementById("bar").style.width = `${pct}%`;
  const bar = document.querySelector(".progress");
  bar.setAttribute("aria-valuenow", pct);
  bar.setAttribute("aria-valuetext", `${pct}%: ${now.text}`);
  document.getElementById("job-step").textContent = now.text;
  document.getElementById("job-eta").textContent = job.state === "running" && now.eta != null ? `about ${fmtTime(now.eta)} left` : "";
  if (p.phase === "train" && p.loss != null && job.state === "running") {
    if (!losses.length || losses[losses.length - 1][0] !== p.done) losses.push([p.done, p.loss]);
    if (losses.length > 400) losses.shift();
  }
  showPhases(job);
  drawCurve(job);
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

// Past jobs: refreshed every 2 s while a job is queued or running, so Progress is live.
let jobsTimer = null;
async function refreshJobs() {
  clearTimeout(jobsTimer);
  let jobs;
  try { jobs = await api("/api/jobs"); } catch { jobsTimer = setTimeout(refreshJobs, 5000); return []; }
  if (!jobs.length) {
    document.getElementById("jobs").replaceChildren(el("tr", {}, el("td", { colspan: 5 }, "No training jobs yet.")));
    return jobs;
  }
  document.getElementById("jobs").replaceChildren(...jobs.map(j => {
    const now = describe(j), pct = Math.round(100 * Math.min(1, now.frac || 0));
    const progress = j.state === "done" ? "100%" : ["running", "queued"].includes(j.state) ? `${pct}% · ${now.text}` : now.text;
    return el("tr", { "data-job": j.id },
      el("td", {}, el("a", { href: `/train?job=${encodeURIComponent(j.id)}`, onclick: ev => { ev.preventDefault(); follow(j.id); } }, j.id),
        j.name ? el("div", { class: "hint" }, j.name) : ""),
      el("td", {}, j.state), el("td", {}, `${j.config.dataset_format}: ${j.config.dataset_path}`),
      el("td", { class: "job-progress" }, progress),
      el("td", {}, j.model_id ? el("a", { href: "/models" }, j.model_id) : "–"));
  }));
  if (jobs.some(j => ["running", "queued"].includes(j.state))) jobsTimer = setTimeout(refreshJobs, 2000);
  return jobs;
}

const fromUrl = new URLSearchParams(location.search).get("job");
refreshJobs().then(jobs => {
  if (fromUrl) return;
  // No ?job=: show the job that is training now (or the oldest waiting one).
  const active = jobs.find(j => j.state === "running") || [...jobs].reverse().find(j => j.state === "queued");
  if (active) follow(active.id);
});
if (fromUrl) follow(fromUrl);  // survives a page reload
