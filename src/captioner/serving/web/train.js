import { api, el, fmtScore, fmtTime } from "/static/app.js";

const form = document.getElementById("form"), formError = document.getElementById("form-error");
const section = document.getElementById("job");
let source = null, current = null, losses = [];

api("/api/datasets").then(d => {
  document.getElementById("roots").replaceChildren(...d.roots.map(r => el("option", { value: r })));
  if (d.roots.length && !form.dataset_path.value) form.dataset_path.placeholder = d.roots[0];
}).catch(() => {});

form.addEventListener("submit", async e => {
  e.preventDefault();
  formError.textContent = "";
  const body = {};
  for (const [k, v] of new FormData(form)) {
    if (v === "") continue;
    const input = form.elements[k];
    body[k] = input.type === "number" ? Number(v) : v;
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
