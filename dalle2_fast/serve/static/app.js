// The web page of `dalle2-fast serve`: it speaks the same API as any client
// (POST /v1/images/generations and /v1/images/variations), reads defaults and limits from
// /config, and shows the server's queue while a request runs.
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
  for (const b of document.querySelectorAll("button.vary")) b.disabled = on;
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
    const seed = document.createElement("span");
    seed.className = "muted";
    seed.textContent = `seed ${item.seed}`;
    row.append(seed, link, vary);
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

$("form").addEventListener("submit", generate);
loadConfig().catch((e) => showError("could not read /config: " + e.message));
