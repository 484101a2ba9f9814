// The web page of `dalle2-fast serve`: it speaks the same API as any client
// (POST /v1/images/generations, /v1/images/variations and /v1/images/edits), reads defaults and
// limits from /config, and shows the server's queue while a request runs. The edit form crops an
// image (uploaded, or a result's "Edit" button) to a square, takes the hole as boxes dragged on it
// and/or an uploaded mask (white or transparent = fill, thresholded at 128, cropped alike), and
// sends both as PNGs (the mask black = keep, white = fill, binary as the server requires).
"use strict";

const $ = (id) => document.getElementById(id);
const FIELDS = ["prior_steps", "decoder_steps", "prior_guidance", "decoder_guidance"];
let busy = false;

async function loadConfig() {
  const cfg = await (await fetch("/config")).json();
  for (const k of FIELDS) $(k).value = cfg.defaults[k];
  $("n").max = cfg.limits.max_n;
  $("model-info").textContent = `${cfg.size} images, batches of ${cfg.limits.max_batch}, up to ${cfg.limits.max_n} a request`;
}

function settings() {
  const out = {};
  for (const k of FIELDS) {
    const v = $(k).value.trim();
    if (v !== "") out[k] = Number(v);
  }
  const seed = $("seed").value.trim();
  if (seed !== "") out.seed = Number(seed);
  out.n = Number($("n").value || 1);
  return out;
}

function setBusy(on, label) {
  busy = on;
  $("generate").disabled = on;
  $("edit").disabled = on || !edit;
  for (const b of document.querySelectorAll("button.vary, button.edit")) b.disabled = on;
  $("progress").hidden = !on;
  if (!on) return;
  const t0 = performance.now();
  const tick = async () => {
    if (!busy) return;
    let queue = "";
    try {
      const h = await (await fetch("/health")).json();
      queue = `, ${h.queue_depth} images queued, ${h.running_batch} drawing`;
    } catch (e) { /* the page keeps waiting for the answer */ }
    $("status").textContent = `${label}: ${((performance.now() - t0) / 1000).toFixed(1)} s${queue}`;
    if (busy) setTimeout(tick, 400);
  };
  tick();
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function call(url, init) {
  const r = await fetch(url, init);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((body.error && body.error.message) || `HTTP ${r.status}`);
  return body;
}

function b64ToBlob(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: "image/png" });
}

function addRun(title, data) {
  const run = document.createElement("div");
  run.className = "run";
  const h = document.createElement("h2");
  h.textContent = title;
  const grid = document.createElement("div");
  grid.className = "grid";
  for (const item of data) {
    const card = document.createElement("div");
    card.className = "card";
    const img = document.createElement("img");
    img.src = "data:image/png;base64," + item.b64_json;
    img.alt = `seed ${item.seed}`;
    const row = document.createElement("div");
    row.className = "row";
    const link = document.createElement("a");
    link.href = URL.createObjectURL(b64ToBlob(item.b64_json));
    link.download = `dalle2-fast-seed-${item.seed}.png`;
    link.textContent = "Download";
    const vary = document.createElement("button");
    vary.className = "small vary";
    vary.textContent = "Variations";
    vary.addEventListener("click", () => variations(item));
    const editBtn = document.createElement("button");
    editBtn.className = "small edit";
    editBtn.type = "button";
    editBtn.textContent = "Edit";
    editBtn.addEventListener("click", () => loadEditImage(b64ToBlob(item.b64_json), `seed ${item.seed}`));
    const seed = document.createElement("span");
    seed.className = "muted";
    seed.textContent = `seed ${item.seed}`;
    row.append(seed, link, vary, editBtn);
    card.append(img, row);
    grid.append(card);
  }
  run.append(h, grid);
  $("results").prepend(run);
}

async function generate(ev) {
  ev.preventDefault();
  if (busy) return;
  const prompt = $("prompt").value;
  showError("");
  setBusy(true, "Generating");
  try {
    const body = { prompt, response_format: "b64_json", ...settings() };
    const res = await call("/v1/images/generations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    addRun(prompt, res.data);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

async function variations(item) {
  if (busy) return;
  showError("");
  setBusy(true, "Variations");
  try {
    const form = new FormData();
    form.append("image", b64ToBlob(item.b64_json), "image.png");
    const s = settings();
    form.append("n", String(s.n));
    form.append("response_format", "b64_json");
    for (const k of ["decoder_steps", "decoder_guidance", "seed"]) if (k in s) form.append(k, String(s[k]));
    const res = await call("/v1/images/variations", { method: "POST", body: form });
    addRun(`Variations of seed ${item.seed}`, res.data);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

// ---- edits: the image (a square ImageData), the hole (1 = fill) and the box being dragged --------
const MAX_EDIT_SIDE = 512;
let edit = null; // {side, image: ImageData, hole: Uint8Array, name}
let drag = null; // {x0, y0, x1, y1} in image pixels

async function squarePixels(blob, side) {
  // the centre square of an image file, drawn at side x side (side: the square's own, capped)
  const bmp = await createImageBitmap(blob);
  const s0 = Math.min(bmp.width, bmp.height);
  const s = side || Math.min(s0, MAX_EDIT_SIDE);
  const c = document.createElement("canvas");
  c.width = c.height = s;
  const ctx = c.getContext("2d");
  ctx.drawImage(bmp, (bmp.width - s0) / 2, (bmp.height - s0) / 2, s0, s0, 0, 0, s, s);
  return ctx.getImageData(0, 0, s, s);
}

async function loadEditImage(blob, name) {
  try {
    const image = await squarePixels(blob);
    edit = { side: image.width, image, hole: new Uint8Array(image.width * image.width), name };
    const view = $("edit-view");
    view.width = view.height = edit.side;
    $("edit").disabled = busy;
    showError("");
    renderEdit();
    $("edit-form").scrollIntoView({ block: "nearest" });
  } catch (e) {
    showError("could not read that image: " + e.message);
  }
}

async function loadEditMask(blob) {
  if (!edit) return showError("choose the image to edit first, then its mask");
  try {
    const m = (await squarePixels(blob, edit.side)).data;
    for (let i = 0; i < edit.hole.length; i++) {
      const a = m[4 * i + 3], grey = (m[4 * i] + m[4 * i + 1] + m[4 * i + 2]) / 3;
      edit.hole[i] = a < 128 || grey >= 128 ? 1 : 0;
    }
    renderEdit();
  } catch (e) {
    showError("could not read that mask: " + e.message);
  }
}

function box(d) {
  return [Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.max(d.x0, d.x1), Math.max(d.y0, d.y1)];
}

function renderEdit() {
  if (!edit) return;
  const out = new ImageData(new Uint8ClampedArray(edit.image.data), edit.side, edit.side);
  const b = drag ? box(drag) : null;
  for (let y = 0; y < edit.side; y++) {
    for (let x = 0; x < edit.side; x++) {
      const i = y * edit.side + x;
      const inDrag = b && x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3];
      if (edit.hole[i] || inDrag) { // the hole shown reddened
        out.data[4 * i] = (out.data[4 * i] + 255) >> 1;
        out.data[4 * i + 1] >>= 1;
        out.data[4 * i + 2] >>= 1;
      }
    }
  }
  $("edit-view").getContext("2d").putImageData(out, 0, 0);
}

function pixelAt(ev) {
  const r = $("edit-view").getBoundingClientRect();
  const clamp = (v) => Math.max(0, Math.min(edit.side - 1, Math.floor(v)));
  return [clamp(((ev.clientX - r.left) / r.width) * edit.side), clamp(((ev.clientY - r.top) / r.height) * edit.side)];
}

function startDrag(ev) {
  if (!edit) return;
  const [x, y] = pixelAt(ev);
  drag = { x0: x, y0: y, x1: x, y1: y };
  renderEdit();
}

function moveDrag(ev) {
  if (!drag) return;
  [drag.x1, drag.y1] = pixelAt(ev);
  renderEdit();
}

function endDrag(ev) {
  if (!drag) return;
  moveDrag(ev);
  const [x0, y0, x1, y1] = box(drag);
  for (let y = y0; y <= y1; y++) edit.hole.fill(1, y * edit.side + x0, y * edit.side + x1 + 1);
  drag = null;
  renderEdit();
}

function pngBlob(imageData) {
  const c = document.createElement("canvas");
  c.width = imageData.width;
  c.height = imageData.height;
  c.getContext("2d").putImageData(imageData, 0, 0);
  return new Promise((resolve, reject) => c.toBlob((b) => (b ? resolve(b) : reject(new Error("PNG encoding failed"))), "image/png"));
}

function maskData() {
  // black = keep, white = fill, opaque: exactly 0 or 255 (the server refuses anything else)
  const m = new ImageData(edit.side, edit.side);
  for (let i = 0; i < edit.hole.length; i++) {
    const v = edit.hole[i] ? 255 : 0;
    m.data[4 * i] = m.data[4 * i + 1] = m.data[4 * i + 2] = v;
    m.data[4 * i + 3] = 255;
  }
  return m;
}

async function submitEdit(ev) {
  ev.preventDefault();
  if (busy) return;
  if (!edit) return showError("choose an image to edit (upload one, or press Edit under a result)");
  if (!edit.hole.some((v) => v)) return showError("mark the area to redraw: drag a box on the image or upload a mask");
  const prompt = $("edit-prompt").value;
  if (!prompt.trim()) return showError("describe what to draw in the marked area");
  showError("");
  setBusy(true, "Editing");
  try {
    const form = new FormData();
    form.append("image", await pngBlob(edit.image), "image.png");
    form.append("mask", await pngBlob(maskData()), "mask.png");
    form.append("prompt", prompt);
    form.append("response_format", "b64_json");
    for (const [k, v] of Object.entries(settings())) form.append(k, String(v));
    const res = await call("/v1/images/edits", { method: "POST", body: form });
    addRun(`Edit: ${prompt}`, res.data);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

$("edit-image").addEventListener("change", (ev) => ev.target.files[0] && loadEditImage(ev.target.files[0], ev.target.files[0].name));
$("edit-mask").addEventListener("change", (ev) => ev.target.files[0] && loadEditMask(ev.target.files[0]));
$("edit-clear").addEventListener("click", () => { if (edit) { edit.hole.fill(0); renderEdit(); } });
$("edit-view").addEventListener("mousedown", startDrag);
window.addEventListener("mousemove", moveDrag);
window.addEventListener("mouseup", endDrag);
$("edit-form").addEventListener("submit", submitEdit);
$("form").addEventListener("submit", generate);
loadConfig().catch((e) => showError("could not read /config: " + e.message));
