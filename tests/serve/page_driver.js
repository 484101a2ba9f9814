// Runs the page's app.js against a tiny stub DOM (no browser; tests/serve/test_page.py): loads a
// W x H image into the edit form, submits with nothing marked, drags a box, submits the edit, then
// uploads a mask and clears it; prints what it saw as JSON.
const vm = require("vm");
const fs = require("fs");
const [appPath, W, H] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])];
class ImageData {
  constructor(a, b, c) {
    if (typeof a === "number") { this.width = a; this.height = b; this.data = new Uint8ClampedArray(a * b * 4); }
    else { this.data = a; this.width = b; this.height = c; }
  }
}
const listeners = {};
const elements = {};
function ctx2d(canvas) {
  return {
    drawImage(bmp, sx, sy, sw, sh, dx, dy, dw, dh) { canvas.drawn = { sx, sy, sw, sh, dw, dh }; },
    getImageData(x, y, w, h) { // a gradient that depends on the crop, so it is visible
      const d = new ImageData(w, h);
      if (sandbox.maskPattern) { // transparent, white, grey 100, repeating: fill, fill, keep
        for (let i = 0; i < w * h; i++) {
          const k = i % 3, v = k === 2 ? 100 : 255;
          d.data.set([v, v, v, k === 0 ? 0 : 255], 4 * i);
        }
        return d;
      }
      for (let i = 0; i < w * h; i++) { d.data[4 * i] = i % 256; d.data[4 * i + 1] = 7; d.data[4 * i + 2] = 9; d.data[4 * i + 3] = 255; }
      return d;
    },
    putImageData(d) { canvas.pixels = d; },
  };
}
function el(id) {
  if (!elements[id]) {
    const e = { id, hidden: false, disabled: false, textContent: "", style: {}, children: [], width: 1, height: 1,
      addEventListener(t, f) { (listeners[id + ":" + t] = listeners[id + ":" + t] || []).push(f); },
      getContext() { return ctx2d(e); }, scrollIntoView() {}, append(...c) { e.children.push(...c); }, prepend(c) { e.children.unshift(c); },
      getBoundingClientRect() { return { left: 100, top: 50, width: 256, height: 256 }; },
      toBlob(cb) { cb({ png: e.pixels }); }, querySelectorAll() { return []; } };
    let v = "";
    Object.defineProperty(e, "value", { get: () => v, set: (x) => { v = String(x); } });
    elements[id] = e;
  }
  return elements[id];
}
let n = 0;
const posts = [];
class FormData { constructor() { this.items = []; } append(k, v) { this.items.push([k, v]); } }
const sandbox = {
  ImageData, FormData, console, Uint8Array, Uint8ClampedArray, Promise, Math, Number, String, Object, Error, JSON,
  performance: { now: () => 0 }, setTimeout: () => 0, atob: (s) => Buffer.from(s, "base64").toString("binary"),
  Blob: class { constructor(p) { this.parts = p; } }, URL: { createObjectURL: () => "blob:x" },
  createImageBitmap: async () => ({ width: W, height: H }),
  window: { addEventListener(t, f) { (listeners["window:" + t] = listeners["window:" + t] || []).push(f); } },
  document: { getElementById: el, createElement: (t) => el("new" + n++), querySelectorAll: () => [] },
  fetch: async (url, init) => {
    if (url === "/config") return { json: async () => ({ defaults: { prior_steps: 2, decoder_steps: 3, prior_guidance: 1, decoder_guidance: 1 }, limits: { max_n: 4, max_batch: 4 }, size: "32x32" }) };
    if (url === "/health") return { json: async () => ({ queue_depth: 0, running_batch: 0 }) };
    posts.push({ url, form: init.body.items });
    return { ok: true, json: async () => ({ data: [{ seed: 1, b64_json: "AA==" }] }) };
  },
};
vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(appPath, "utf8"), sandbox);
const fire = (key, ev) => Promise.all((listeners[key] || []).map((f) => f(ev)));
(async () => {
  await fire("edit-image:change", { target: { files: [{ name: "x.png" }] } });
  await new Promise((r) => setImmediate(r));
  el("edit-prompt").value = "a blue star";
  await fire("edit-form:submit", { preventDefault() {} }); // nothing marked yet: refused on the page
  const noHole = { posts: posts.length, error: el("error").textContent };
  // drag from view pixel (64, 32) to (128, 96) of a 256 px wide view: image pixels scaled by side / 256
  await fire("edit-view:mousedown", { clientX: 100 + 64, clientY: 50 + 32 });
  await fire("window:mousemove", { clientX: 100 + 128, clientY: 50 + 96 });
  await fire("window:mouseup", { clientX: 100 + 128, clientY: 50 + 96 });
  el("edit-prompt").value = "a blue star";
  el("n").value = "2";
  await fire("edit-form:submit", { preventDefault() {} });
  if (!posts.length) { console.log("no post; error:", el("error").textContent); process.exit(2); }
  const post = posts[0];
  const mask = post.form.find(([k]) => k === "mask")[1].png;
  const image = post.form.find(([k]) => k === "image")[1].png;
  const levels = new Set(), alpha = new Set();
  let filled = 0;
  for (let i = 0; i < mask.width * mask.height; i++) { levels.add(mask.data[4 * i]); alpha.add(mask.data[4 * i + 3]); filled += mask.data[4 * i] === 255; }
  const firstFilled = [...Array(mask.width * mask.height).keys()].find((i) => mask.data[4 * i] === 255);
  sandbox.maskPattern = true;
  await fire("edit-mask:change", { target: { files: [{ name: "m.png" }] } });
  const hole = Array.from(vm.runInContext("edit.hole", sandbox));
  const maskRule = hole.every((v, i) => v === (i % 3 === 2 ? 0 : 1));
  await fire("edit-clear:click", {});
  const cleared = vm.runInContext("edit.hole.every((v) => v === 0)", sandbox);
  console.log(JSON.stringify({ noHole, maskRule, cleared, url: post.url, keys: post.form.map(([k]) => k), fields: Object.fromEntries(post.form.filter(([k]) => !["image", "mask"].includes(k))),
    side: mask.width, imageSide: image.width, levels: [...levels].sort((a, b) => a - b), alpha: [...alpha], filled,
    first: [firstFilled % mask.width, Math.floor(firstFilled / mask.width)],
    error: el("error").textContent, titles: el("results").children.length }));
})().catch((e) => { console.error(e); process.exit(1); });
