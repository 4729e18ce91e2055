import { api, el, fillModels, safeCell } from "/static/app.js";

const drop = document.getElementById("drop"), input = document.getElementById("files");
const results = document.getElementById("results"), status = document.getElementById("status");
const csvButton = document.getElementById("csv"), clearButton = document.getElementById("clear");
const modelSelect = document.getElementById("model"), beam = document.getElementById("beam");
const folderInput = document.getElementById("folder"), folderButton = document.getElementById("pick-folder");
const done = [];  // {image, caption, confidence, tags} in the order files were added
let pending = 0, notImages = 0;  // notImages: files in a dropped or picked folder left out

// Captions below this confidence are marked "low confidence". Confidence is the geometric mean
// of the decoder's word probabilities (see Captioner.describe). On 200 Flickr8k dev photos the
// bundled model's confidences at beam 3 ran 0.21-0.64 (quartiles 0.34 / 0.39 / 0.44), and the lowest
// quarter held most of the plainly wrong captions ("a young boy is eating a bathtub"); COCO
// photos of things Flickr8k never shows (zebras, pizza, buses) mostly land below it too.
// So 0.34, the lowest quartile's edge at beam 3, flags about one caption in five at beam 5
// (the bundled model's own; quartiles 0.355 / 0.394 / 0.448) and more on unfamiliar photos.
const LOW_CONFIDENCE = 0.34;
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?)$/i;
const isImage = f => (f.type ? f.type.startsWith("image/") : IMAGE_NAME.test(f.name));
const tagsText = tags => tags.map(t => `${t.label}:${t.probability.toFixed(2)}`).join("; ");

fillModels(modelSelect).catch(e => { status.textContent = `Could not list models: ${e.message}`; });

function update() {
  csvButton.disabled = done.every(r => !r.caption);
  clearButton.disabled = done.length === 0 && !results.children.length;
  status.textContent = (pending ? `Captioning… ${pending} left` :
    done.length ? `${done.filter(r => r.caption).length} of ${done.length} captioned` : "") +
    (notImages ? ` (${notImages} file${notImages > 1 ? "s" : ""} skipped: not images)` : "");
}

async function captionOne(file, entry, card) {
  const form = new FormData();
  form.append("files", file, file.name);
  form.append("model", modelSelect.value);
  if (beam.value) form.append("beam_size", beam.value);  // else the model's own
  const text = card.querySelector(".caption"), img = card.querySelector("img");
  try {
    const [r] = await api("/api/captions", { method: "POST", body: form });
    if (r.error) throw new Error(r.error);
    Object.assign(entry, { caption: r.caption, confidence: r.confidence, tags: r.tags || [] });
    text.textContent = r.caption;
    text.className = "caption";
    img.alt = r.caption;
    card.querySelector("button.copy").hidden = false;
    const low = r.confidence < LOW_CONFIDENCE;
    card.classList.toggle("low", low);
    const score = card.querySelector(".confidence");
    score.hidden = false;
    score.textContent = low ? `Low confidence (${r.confidence.toFixed(2)}): check this caption`
                            : `Confidence ${r.confidence.toFixed(2)}`;
    score.title = "How sure the model was of its words (geometric mean of their probabilities)";
    card.querySelector(".tags").replaceChildren(...entry.tags.map(t =>
      el("li", { class: "tag", title: `ImageNet class, probability ${t.probability.toFixed(2)}` },
        `${t.label} ${Math.round(t.probability * 100)}%`)));
  } catch (e) {
    text.textContent = e.message;
    text.className = "caption error";
    img.alt = `${file.name} (not captioned)`;
  } finally {
    pending -= 1;
    update();
  }
}

// files: [{file, path}] (path: where it sits in a dropped or picked folder, else its name).
async function addFiles(files) {
  const queue = [];
  const skipped = files.filter(f => !isImage(f.file)).length;
  for (const { file, path } of files.filter(f => isImage(f.file))) {
    const entry = { image: path, caption: null, confidence: null, tags: [] };
    done.push(entry);
    const copy = el("button", { type: "button", class: "copy", hidden: true, onclick: async () => {
      await navigator.clipboard.writeText(entry.caption);
      copy.textContent = "Copied"; setTimeout(() => (copy.textContent = "Copy caption"), 1500);
    } }, "Copy caption");
    const url = URL.createObjectURL(file);
    const remove = el("button", { type: "button", class: "remove", "aria-label": `Remove ${path}`,
      onclick: () => {
        entry.removed = true;  // a caption still on its way is dropped when it comes
        done.splice(done.indexOf(entry), 1);
        card.remove(); URL.revokeObjectURL(url); update();
      } }, "Remove");
    const card = el("li", { class: "card" },
      el("img", { src: url, alt: `${path} (captioning)` }),
      el("div", { class: "body" }, el("span", { class: "name" }, path),
        el("span", { class: "caption pending" }, "captioning…"),
        el("span", { class: "confidence", hidden: true }),
        el("ul", { class: "tags", "aria-label": "Tags" }),
        el("div", { class: "row" }, copy, remove)));
    results.append(card);
    pending += 1;
    queue.push(() => (entry.removed ? (pending -= 1, update()) : captionOne(file, entry, card)));
  }
  notImages += skipped;
  update();
  // Two requests in flight: captions appear one by one without flooding a small server.
  const workers = [0, 1].map(async () => { while (queue.length) await queue.shift()(); });
  await Promise.all(workers);
}

drop.addEventListener("click", () => input.click());
drop.addEventListener("keydown", e => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
// A dropped folder arrives as a directory entry: walk it (readEntries gives at most 100 per
// call, so read until it returns none) and caption the images in it, in natural name order.
async function filesIn(entry) {
  if (entry.isFile) {
    const file = await new Promise((ok, fail) => entry.file(ok, fail));
    return [{ file, path: entry.fullPath.replace(/^\//, "") }];
  }
  const reader = entry.createReader(), found = [];
  for (;;) {
    const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
    if (!batch.length) break;
    for (const child of batch) found.push(...await filesIn(child));
  }
  return found;
}
const byPath = (a, b) => a.path.localeCompare(b.path, undefined, { numeric: true });
const picked = list => [...list].map(file => ({ file, path: file.webkitRelativePath || file.name }));

drop.addEventListener("drop", async e => {
  e.preventDefault(); drop.classList.remove("over");
  const entries = [...e.dataTransfer.items].map(i => i.webkitGetAsEntry && i.webkitGetAsEntry());
  if (!entries.some(x => x && x.isDirectory)) { addFiles(picked(e.dataTransfer.files)); return; }
  const found = [];
  for (const entry of entries.filter(Boolean)) found.push(...await filesIn(entry));
  addFiles(found.sort(byPath));
});
input.addEventListener("change", () => { addFiles(picked(input.files)); input.value = ""; });
folderButton.addEventListener("click", () => folderInput.click());
folderInput.addEventListener("change", () => { addFiles(picked(folderInput.files).sort(byPath)); folderInput.value = ""; });

csvButton.addEventListener("click", () => {
  const quote = s => `"${safeCell(s).replaceAll('"', '""')}"`;
  const rows = [["image", "caption", "confidence", "tags"], ...done.filter(r => r.caption)
    .map(r => [r.image, r.caption, r.confidence.toFixed(3), tagsText(r.tags)])];
  const blob = new Blob([rows.map(r => r.map(quote).join(",")).join("\r\n") + "\r\n"], { type: "text/csv" });
  const a = el("a", { href: URL.createObjectURL(blob), download: "captions.csv" });
  document.body.append(a); a.click(); a.remove();
});
clearButton.addEventListener("click", () => {
  done.forEach(r => { r.removed = true; }); done.length = 0; notImages = 0;
  results.replaceChildren(); update();
});
