import { api, el, fillModels, safeCell } from "/static/app.js";

const drop = document.getElementById("drop"), input = document.getElementById("files");
const results = document.getElementById("results"), status = document.getElementById("status");
const csvButton = document.getElementById("csv"), clearButton = document.getElementById("clear");
const modelSelect = document.getElementById("model"), beam = document.getElementById("beam");
const done = [];  // {image, caption} in the order files were added
let pending = 0;

fillModels(modelSelect).catch(e => { status.textContent = `Could not list models: ${e.message}`; });

function update() {
  csvButton.disabled = done.every(r => !r.caption);
  clearButton.disabled = done.length === 0;
  status.textContent = pending ? `Captioning… ${pending} left` :
    done.length ? `${done.filter(r => r.caption).length} of ${done.length} captioned` : "";
}

async function captionOne(file, entry, card) {
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("model", modelSelect.value);
  form.append("beam_size", beam.value || "3");
  const text = card.querySelector(".caption"), img = card.querySelector("img");
  try {
    const [r] = await api("/api/captions", { method: "POST", body: form });
    if (r.error) throw new Error(r.error);
    entry.caption = r.caption;
    text.textContent = r.caption;
    text.className = "caption";
    img.alt = r.caption;
    card.querySelector("button").hidden = false;
  } catch (e) {
    text.textContent = e.message;
    text.className = "caption error";
    img.alt = `${file.name} (not captioned)`;
  } finally {
    pending -= 1;
    update();
  }
}

async function addFiles(files) {
  const queue = [];
  for (const file of files) {
    const entry = { image: file.name, caption: null };
    done.push(entry);
    const copy = el("button", { type: "button", hidden: true, onclick: async () => {
      await navigator.clipboard.writeText(entry.caption);
      copy.textContent = "Copied"; setTimeout(() => (copy.textContent = "Copy caption"), 1500);
    } }, "Copy caption");
    const card = el("li", { class: "card" },
      el("img", { src: URL.createObjectURL(file), alt: `${file.name} (captioning)` }),
      el("div", { class: "body" }, el("span", { class: "name" }, file.name),
        el("span", { class: "caption pending" }, "captioning…"), el("div", { class: "row" }, copy)));
    results.append(card);
    pending += 1;
    queue.push(() => captionOne(file, entry, card));
  }
  update();
  // Two requests in flight: captions appear one by one without flooding a small server.
  const workers = [0, 1].map(async () => { while (queue.length) await queue.shift()(); });
  await Promise.all(workers);
}

drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); addFiles([...e.dataTransfer.files]); });
input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });

csvButton.addEventListener("click", () => {
  const quote = s => `"${safeCell(s).replaceAll('"', '""')}"`;
  const rows = [["image", "caption"], ...done.filter(r => r.caption).map(r => [r.image, r.caption])];
  const blob = new Blob([rows.map(r => r.map(quote).join(",")).join("\r\n") + "\r\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "captions.csv" });
  document.body.append(a); a.click(); a.remove();
});
clearButton.addEventListener("click", () => { done.length = 0; results.replaceChildren(); update(); });
