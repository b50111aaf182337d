// mnist-tflite: draw a digit; the model answers on this device (WebAssembly) when it can, else
// the server (/api/predict). The same page is served by `serve` and written by `export-web`
// (a static site: <body data-site="static">, no server, a service worker for offline use).
// Plain JS modules, no build step, no network access beyond where the page came from.
import { inkToMnist, loadModel, probabilities, quantize, toMnist } from "./device.js";
import { findDigits, padPicture } from "./segment.js";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");
const STROKE = 18; // px on the 280 px pad: about MNIST's stroke once scaled to 20 px
const SEND = 0.5; // of the pad's size: the drawing as uploaded
const PAD = { single: 280, number: 840 }; // the pad's width; its height stays 280
const MIN_CONFIDENCE = 0.6; // edge/predict.py's: a digit below it is "?", with its two best guesses
const WHOLE = { x: 0, y: 0, w: 1, h: 1 }; // where a picture lies on the pad (a drawing: all of it)

const STATIC_SITE = document.body.dataset.site === "static";
const MODULE_URL = new URL("wasm/mnist_model.mjs", document.baseURI).href;

const state = { input: null, inputName: "drawing.png", hasInk: false, seq: 0, models: null, drawing: false,
  device: null, deviceVariant: null, deviceNote: "",
  numberMode: false, askNumber: false, frame: WHOLE, digits: null, serverWhy: "" }; // the number (issue 22)

// ---- drawing (pointer events cover mouse, touch and pen) -------------------------------

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.hasInk = false;
}

function padPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [((ev.clientX - r.left) * pad.width) / r.width, ((ev.clientY - r.top) * pad.height) / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  ev.preventDefault();
  if (ev.isTrusted) pad.setPointerCapture(ev.pointerId); // (replayed strokes in tests are not)
  state.drawing = true;
  const [x, y] = padPoint(ev);
  ctx.strokeStyle = ctx.fillStyle = "#000";
  ctx.lineWidth = STROKE;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.arc(x, y, STROKE / 2, 0, 2 * Math.PI);
  ctx.fill();
  ctx.beginPath();
  ctx.moveTo(x, y);
  state.hasInk = true;
});

pad.addEventListener("pointermove", (ev) => {
  if (!state.drawing) return;
  ev.preventDefault();
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of events.length ? events : [ev]) {
    const [x, y] = padPoint(e);
    ctx.lineTo(x, y);
  }
  ctx.stroke();
  const [x, y] = padPoint(ev);
  ctx.beginPath();
  ctx.moveTo(x, y);
});

function endStroke(ev) {
  if (!state.drawing) return;
  const t0 = performance.now();
  state.drawing = false;
  if (pad.hasPointerCapture(ev.pointerId)) pad.releasePointerCapture(ev.pointerId);
  state.frame = WHOLE;
  state.serverWhy = "";
  if (onDevice()) {
    const answer = state.numberMode ? readNumberOnDevice(t0) : classifyOnDevice(t0);
    if (answer && !STATIC_SITE) padPng((blob) => crossCheck(blob, answer));
    return;
  }
  if (STATIC_SITE) {
    showError({ detail: state.deviceNote || "the model is still loading" });
    return;
  }
  askServer();
}

/** The drawing to /api/predict (the digits of a number in number mode). */
function askServer() {
  padPng((blob) => {
    state.input = blob;
    state.inputName = "drawing.png";
    state.askNumber = state.numberMode;
    predict();
  });
}

/** The pad as a PNG, at half size, for the server. */
function padPng(then) {
  // sent at half size: to_mnist scales it to 20 px anyway, and 4x fewer pixels is ~4x faster
  const small = document.createElement("canvas");
  small.width = pad.width * SEND;
  small.height = pad.height * SEND;
  const g = small.getContext("2d");
  g.imageSmoothingQuality = "high";
  g.drawImage(pad, 0, 0, small.width, small.height);
  small.toBlob(then, "image/png");
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

$("clear").addEventListener("click", () => {
  clearPad();
  state.input = null;
  state.seq++; // drop answers still in flight
  showIdle();
});

/** One digit on a square pad, or a number (digits side by side) on a wide one. */
function setNumberMode(on) {
  state.numberMode = on;
  pad.width = on ? PAD.number : PAD.single;
  document.body.classList.toggle("number-mode", on);
  pad.setAttribute("aria-label", on ? "drawing pad: write a number, digits side by side"
    : "drawing pad: draw one digit");
  $("clear").click();
}
$("number-mode").addEventListener("change", (ev) => setNumberMode(ev.target.checked));

// ---- photo upload ----------------------------------------------------------------------

$("upload").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  ev.target.value = "";
  if (!file) return;
  state.input = file;
  state.inputName = file.name;
  state.askNumber = true; // a photo may hold a number: its digits, with their boxes
  state.serverWhy = "";
  state.frame = null; // known once the picture is drawn
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    clearPad();
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
    state.frame = { x: (pad.width - w) / 2 / pad.width, y: (pad.height - h) / 2 / pad.height,
      w: w / pad.width, h: h / pad.height };
    showBoxes(); // the answer may have come first
  };
  img.onerror = () => URL.revokeObjectURL(url); // the server will say what is wrong with it
  img.src = url;
  predict();
});

// ---- talking to the server -------------------------------------------------------------

function currentVariant() {
  return state.models && state.models.variants.length > 1 ? $("variant").value : null;
}

async function ask(variant, number = false) {
  const form = new FormData();
  form.append("image", state.input, state.inputName);
  const query = new URLSearchParams();
  if (variant) query.set("model", variant);
  if (number) query.set("number", "1");
  const url = "/api/predict" + (query.toString() ? "?" + query : "");
  const t0 = performance.now();
  const resp = await fetch(url, { method: "POST", body: form });
  const body = await resp.json().catch(() => ({ detail: "the server sent no JSON (HTTP " + resp.status + ")" }));
  return { ok: resp.ok, body, roundTrip: performance.now() - t0 };
}

async function predict() {
  if (!state.input) return;
  const seq = ++state.seq;
  document.body.dataset.state = "busy";
  try {
    const { ok, body, roundTrip } = await ask(currentVariant(), state.askNumber);
    if (seq !== state.seq) return; // a newer drawing or a clear superseded this answer
    if (ok) showResult(body, roundTrip);
    else showError(body);
  } catch (err) {
    if (seq === state.seq) showError({ detail: "cannot reach the server (" + err.message + ")" });
  }
}

// ---- showing results -------------------------------------------------------------------

function buildBars(names) {
  const ol = $("bars");
  ol.replaceChildren();
  for (const name of names) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    li.append(label, track, pct);
    ol.append(li);
  }
}

function showIdle() {
  showDigits(null);
  $("label").textContent = "–";
  $("confidence").textContent = state.numberMode ? "write a number" : "draw a digit";
  $("latency").textContent = "";
  $("agree").textContent = "";
  $("error").hidden = true;
  $("compare-table").hidden = true;
  for (const li of $("bars").children) {
    li.className = "";
    li.querySelector(".fill").style.width = "0";
    li.querySelector(".pct").textContent = "";
  }
  const seen = $("seen").getContext("2d");
  seen.fillStyle = "#000";
  seen.fillRect(0, 0, 28, 28);
  document.body.dataset.state = "idle";
}

function drawSeen(input, canvas = $("seen")) {
  const seen = canvas.getContext("2d");
  const img = seen.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = input[y][x]; // 0..255, white digit on black
      const i = 4 * (y * 28 + x);
      img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
      img.data[i + 3] = 255;
    }
  }
  seen.putImageData(img, 0, 0);
}

/** The answer, the bars and the 28x28 image, from the device or the server. */
function showAnswer(r) {
  showDigits(r.digits && r.digits.length === 1 ? r.digits : null); // a photo of one digit: its box
  $("error").hidden = true;
  $("agree").textContent = "";
  $("label").textContent = r.class_name;
  $("confidence").textContent = (100 * r.probabilities[r.label]).toFixed(1) + " % sure";
  if ($("bars").children.length !== r.probabilities.length) buildBars(r.probabilities.map((_, i) => String(i)));
  [...$("bars").children].forEach((li, i) => {
    const p = r.probabilities[i];
    li.className = i === r.label ? "top" : "";
    li.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    li.querySelector(".pct").textContent = (100 * p).toFixed(1) + "%";
  });
  drawSeen(r.input);
  $("model-name").textContent = "model " + r.model + " ·";
  markReportRow(r.model);
}

function showResult(r, roundTrip) {
  if (r.digits && r.digits.length > 1) showNumber(r);
  else showAnswer(r);
  if (r.number_error) $("agree").textContent = "no number read: " + r.number_error;
  $("latency").textContent =
    (state.serverWhy || (state.device ? "" : state.deviceNote ? state.deviceNote + ": " : "")) +
    "server " + r.latency_ms.toFixed(1) + " ms (inference " + r.inference_ms.toFixed(2) + " ms) · round trip " +
    roundTrip.toFixed(0) + " ms";
  document.body.dataset.state = "done";
}

// ---- on this device ----------------------------------------------------------------------

function onDevice() {
  const v = currentVariant();
  return state.device !== null && (v === null || v === state.deviceVariant);
}

/** Classify the pad here; the answer (or null for a blank pad). t0: pointer-up. */
function classifyOnDevice(t0) {
  state.seq++; // an answer from the server still in flight is superseded
  const { model, simd } = state.device;
  const t1 = performance.now();
  const x = toMnist(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
  if (!x) {
    showIdle();
    $("label").textContent = "?";
    document.body.dataset.state = "blank";
    return null;
  }
  const q = quantize(x, model.input);
  const t2 = performance.now();
  const out = model.classify(q);
  const t3 = performance.now();
  const p = probabilities(out, model.output);
  const label = best(p);
  const answer = { label, class_name: String(label), probabilities: p, input: rows(x), model: state.deviceVariant };
  showAnswer(answer);
  $("latency").textContent =
    "ran on this device (WebAssembly" + (simd ? " SIMD" : "") + "): inference " + (t3 - t2).toFixed(2) +
    " ms, preprocessing " + (t2 - t1).toFixed(1) + " ms";
  const body = document.body.dataset;
  body.answerMs = (performance.now() - t0).toFixed(2); // pointer-up to the answer on screen
  body.inferenceMs = (t3 - t2).toFixed(3);
  body.state = "done";
  return answer;
}

function best(p) {
  let label = 0;
  for (let i = 1; i < p.length; i++) if (p[i] > p[label]) label = i;
  return label;
}

/** A Float32Array(784) in [0, 1] -> 28 rows of 0..255, as the API's "input". */
function rows(x) {
  const out = [];
  for (let y = 0; y < 28; y++) out.push(Array.from(x.subarray(28 * y, 28 * y + 28), (v) => Math.round(255 * v)));
  return out;
}

/** One digit of a number as the API gives it (edge/predict.py's Reading.to_dict). */
function digitOf(box, line, p, x) {
  const order = p.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const confidence = order[0][0];
  return { box, line, label: confidence >= MIN_CONFIDENCE ? String(order[0][1]) : "?", confidence,
    top: order.slice(0, 2).map(([v, i]) => ({ label: String(i), probability: v })), probabilities: p, image: rows(x) };
}

/** The number of digits: "?" for an uncertain one, lines separated by a space. */
function numberOf(digits) {
  return digits.map((d, i) => (i && d.line !== digits[i - 1].line ? " " : "") + d.label).join("");
}

/** Number mode on this device: find the digits (segment.js) and classify each; the answer,
 * or null (a blank pad, no digits, or a drawing left to the server). t0: pointer-up. */
function readNumberOnDevice(t0) {
  state.seq++; // an answer from the server still in flight is superseded
  const { model, simd } = state.device;
  const t1 = performance.now();
  const sure = (x) => Math.max(...probabilities(model.classify(quantize(x, model.input)), model.output));
  const picture = padPicture(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
  const found = findDigits(picture, sure);
  if (!found) {
    showIdle();
    $("label").textContent = "?";
    document.body.dataset.state = "blank";
    return null;
  }
  if (found.error) {
    showError({ detail: "drawing: " + found.error });
    return null;
  }
  if (found.defer && !STATIC_SITE) {
    state.serverWhy = "the server reads this drawing (it has " + found.defer + "): ";
    askServer();
    return null;
  }
  const digits = [];
  for (const d of found.digits) {
    const x = inkToMnist(d.ink);
    if (!x) continue; // (no ink left at 20 px)
    const p = probabilities(model.classify(quantize(x, model.input)), model.output);
    digits.push(digitOf(d.box, d.line, p, x));
  }
  const t2 = performance.now();
  if (!digits.length) {
    showError({ error: "blank", detail: "drawing: no ink left once scaled to 20 px" });
    return null;
  }
  const answer = { number: numberOf(digits), uncertain: digits.some((d) => d.label === "?"), digits,
    model: state.deviceVariant };
  if (digits.length === 1) { // one digit: answered as the single-digit pad answers, with its box
    const { probabilities: p, image } = digits[0], label = best(p);
    showAnswer({ ...answer, label, class_name: String(label), probabilities: p, input: image });
  } else showNumber(answer);
  $("latency").textContent =
    "read on this device (WebAssembly" + (simd ? " SIMD" : "") + "): " + digits.length + " digit" +
    (digits.length === 1 ? "" : "s") + " found and classified in " + (t2 - t1).toFixed(1) + " ms" +
    (found.defer ? "; not done here: " + found.defer : "");
  const body = document.body.dataset;
  body.answerMs = (performance.now() - t0).toFixed(2);
  body.state = "done";
  return answer;
}

/** A number's answer (several digits, from the device or the server): the number as text
 * (a live region: screen readers say it), each digit with its 28x28, the boxes on the picture. */
function showNumber(r) {
  showIdle();
  showDigits(r.digits);
  const unsure = r.digits.filter((d) => d.label === "?").length;
  $("label").textContent = r.number;
  $("confidence").textContent =
    r.digits.length + " digits" + (unsure ? ", " + unsure + " uncertain (?)" : ", all sure");
  $("model-name").textContent = "model " + r.model + " ·";
  markReportRow(r.model);
}

const pct = (v) => (100 * v).toFixed(1) + " %";

/** The digits' list (number mode) and their boxes on the pad; null clears both. */
function showDigits(digits) {
  state.digits = digits;
  const list = $("digits");
  list.replaceChildren();
  const several = digits !== null && digits.length > 1;
  list.hidden = !several;
  $("bars").hidden = $("seen-figure").hidden = several;
  for (const d of several ? digits : []) {
    const li = document.createElement("li");
    const seen = Object.assign(document.createElement("canvas"), { width: 28, height: 28 });
    seen.setAttribute("aria-hidden", "true");
    drawSeen(d.image, seen);
    const [a, b] = d.top;
    const guess = d.label !== "?" ? d.label + " " + pct(d.confidence)
      : "? (" + a.label + " " + pct(a.probability) + " or " + b.label + " " + pct(b.probability) + ")";
    li.append(seen, Object.assign(document.createElement("span"), { textContent: guess }));
    li.className = d.label === "?" ? "unsure" : "";
    list.append(li);
  }
  showBoxes();
}

/** Each digit's box (fractions of the picture) over the pad, where the picture lies on it. */
function showBoxes() {
  const layer = $("boxes"), f = state.frame, per = (v) => (100 * v).toFixed(3) + "%";
  layer.replaceChildren();
  if (!state.digits || !f) return;
  for (const d of state.digits) {
    const [x0, y0, x1, y1] = d.box;
    const div = document.createElement("div");
    div.className = "box" + (d.label === "?" ? " unsure" : "");
    div.dataset.box = d.box.join(",");
    Object.assign(div.style, { left: per(f.x + x0 * f.w), top: per(f.y + y0 * f.h),
      width: per((x1 - x0) * f.w), height: per((y1 - y0) * f.h) });
    div.append(Object.assign(document.createElement("span"), { textContent: d.label }));
    layer.append(div);
  }
}

/** Serve mode: the server classifies the same drawing; say whether it agrees. */
async function crossCheck(blob, answer) {
  const seq = state.seq;
  state.input = blob;
  state.inputName = "drawing.png";
  state.askNumber = state.numberMode;
  try {
    const { ok, body } = await ask(currentVariant(), state.askNumber);
    if (seq !== state.seq) return;
    const [mine, theirs] = state.askNumber ? [answer.number, body.number] : [answer.class_name, body.class_name];
    $("agree").textContent = !ok
      ? "server: " + (body.detail || body.error)
      : mine === theirs
        ? "device and server agree (" + theirs + ")"
        : "device says " + mine + ", server says " + theirs;
  } catch (err) {
    if (seq === state.seq) $("agree").textContent = "server not reachable: answered on this device only";
  }
}

async function startDevice(variant) {
  if (typeof WebAssembly !== "object") {
    state.deviceNote = STATIC_SITE
      ? "this browser has no WebAssembly and this page has no server: it cannot classify here"
      : "no WebAssembly in this browser: the server answers";
    $("where").textContent = state.deviceNote;
    return;
  }
  try {
    const { model, simd } = await loadModel(MODULE_URL);
    state.device = { model, simd };
    state.deviceVariant = variant;
    $("where").textContent =
      "the model runs on this device (WebAssembly " + (simd ? "SIMD128" : "without SIMD") + ")" +
      (STATIC_SITE ? "; nothing you draw leaves the page" : "; the server cross-checks");
  } catch (err) {
    state.deviceNote = "cannot run the model here (" + err.message + ")" + (STATIC_SITE ? "" : ": the server answers");
    $("where").textContent = state.deviceNote;
  }
}

function showError(body) {
  const blank = body.error === "blank";
  $("label").textContent = blank ? "?" : "!";
  $("confidence").textContent = blank ? "no digit found" : "error";
  $("error").textContent = body.detail || JSON.stringify(body);
  $("error").hidden = false;
  document.body.dataset.state = "error";
}

// ---- variants and the report ------------------------------------------------------------

async function compareAll() {
  if (!state.input || !state.models) return;
  const tbody = $("compare-table").querySelector("tbody");
  tbody.replaceChildren();
  $("compare-table").hidden = false;
  for (const v of state.models.variants) {
    const { ok, body } = await ask(v.name);
    const tr = document.createElement("tr");
    const cells = ok
      ? [v.name, body.class_name, (100 * body.probabilities[body.label]).toFixed(1) + " %", body.latency_ms.toFixed(1)]
      : [v.name, body.error || "error", "", ""];
    for (const c of cells) {
      const td = document.createElement("td");
      td.textContent = c;
      tr.append(td);
    }
    tbody.append(tr);
  }
}

function markReportRow(name) {
  for (const tr of $("report").querySelectorAll("tbody tr")) {
    tr.classList.toggle("current", tr.firstChild.textContent === name);
  }
}

function showReport(report) {
  if (!report) return;
  const box = $("report");
  $("report-source").textContent = "(" + report.source + ")";
  if (report.headers) {
    const table = document.createElement("table");
    const head = table.createTHead().insertRow();
    for (const h of report.headers) head.append(Object.assign(document.createElement("th"), { textContent: h }));
    const body = table.createTBody();
    for (const row of report.rows) {
      const tr = body.insertRow();
      for (const cell of row) tr.insertCell().textContent = cell;
    }
    box.replaceChildren(table);
  } else {
    // a markdown report, or why report.json could not be read (the models are served anyway)
    box.replaceChildren(Object.assign(document.createElement("pre"), { textContent: report.markdown || report.error || "" }));
  }
  $("report-panel").hidden = false;
}

async function loadModels() {
  const resp = await fetch("/api/models");
  const models = await resp.json();
  state.models = models;
  buildBars(models.variants[0].class_names);
  const select = $("variant");
  for (const v of models.variants) {
    const label = v.name + (v.accuracy != null ? " (" + (100 * v.accuracy).toFixed(2) + " %)" : "");
    select.append(new Option(label, v.name, v.name === models.default, v.name === models.default));
  }
  const several = models.variants.length > 1;
  $("variant-box").hidden = !several;
  $("compare").hidden = !several;
  $("model-name").textContent = "model " + models.default;
  showReport(models.report);
  if (models.unavailable && models.unavailable.length) {
    // variants skipped at start-up (bad model or sidecar), each with its reason
    const note = document.createElement("p");
    note.className = "skipped";
    note.textContent = "not served: " + models.unavailable.map((u) => u.name + " (" + u.error + ")").join("; ");
    $("report").append(note);
    $("report-source").textContent ||= "(run folder)";
    $("report-panel").hidden = false;
  }
  markReportRow(models.default);
  if (models.device) await startDevice(models.device.variant);
  else {
    state.deviceNote = "the server answers";
    $("where").textContent = "the server answers (" + (models.device_note || "no in-browser build") + ")";
  }
  document.body.dataset.ready = "1";
}

async function startStatic() {
  for (const el of document.querySelectorAll(".server-only")) el.hidden = true;
  buildBars(["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]);
  $("model-name").textContent = "model " + document.body.dataset.model;
  await startDevice(document.body.dataset.model);
  if ("serviceWorker" in navigator) {
    // offline: the worker keeps every file of the site; registered once the page works
    await navigator.serviceWorker.register("sw.js").catch(() => {});
  }
  document.body.dataset.ready = "1";
}

$("variant").addEventListener("change", () => {
  $("compare-table").hidden = true;
  predict();
});
$("compare").addEventListener("click", compareAll);

clearPad();
showIdle();
if (STATIC_SITE) startStatic();
else loadModels().catch((err) => showError({ detail: "cannot load the model list (" + err.message + ")" }));
