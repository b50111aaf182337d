// The model on this device: the canvas -> the 28x28 MNIST image, in the page, and the
// compiled model (WebAssembly, from `mnist-tflite compile --target wasm`) run on it.
//
// toMnist follows edge/preprocess.py's to_mnist for a drawing (dark ink on a light pad):
// ink map with the same cuts, the digit's span without specks, hairlines thickened, the
// longest side scaled to 20 px with Pillow's Lanczos filter, the centre of mass put at
// (14, 14) of the 28x28 field. An ES module: imported by app.js.

const BOX = 20, FIELD = 28, COM_TARGET = 14.0;
const LOW_CUT = 0.3, HIGH_CUT = 0.75, MIN_CONTRAST = 0.1, MIN_INK_PIXELS = 6;
const TARGET_STROKE = 1.8, MIN_STROKE = 1.2;

/** Python's round(): halves to even. */
function roundEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Nearest-rank quantile (as edge/ink.py's quantile), exact: a histogram finds the bucket
 * that holds the rank, and only that bucket is sorted. */
function quantile(a, q) {
  const n = a.length, rank = Math.min(n - 1, Math.max(0, roundEven(q * (n - 1))));
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = a[i];
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  if (!(hi > lo)) return lo;
  const B = 1024, f = B / (hi - lo), counts = new Int32Array(B);
  const bucket = (v) => Math.min(B - 1, Math.floor((v - lo) * f));
  for (let i = 0; i < n; i++) counts[bucket(a[i])]++;
  let b = 0, below = 0;
  while (below + counts[b] <= rank) below += counts[b++];
  const inside = [];
  for (let i = 0; i < n; i++) if (bucket(a[i]) === b) inside.push(a[i]);
  return Float32Array.from(inside).sort()[rank - below];
}

/** 3x3 mean, edges repeated (separable: rows of three, then columns of three). */
function box3(a, w, h) {
  const rows = new Float32Array(w * h), out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    const o = y * w;
    for (let x = 0; x < w; x++) rows[o + x] = a[o + (x > 0 ? x - 1 : 0)] + a[o + x] + a[o + (x < w - 1 ? x + 1 : x)];
  }
  for (let y = 0; y < h; y++) {
    const up = (y > 0 ? y - 1 : 0) * w, mid = y * w, down = (y < h - 1 ? y + 1 : y) * w;
    for (let x = 0; x < w; x++) out[mid + x] = (rows[up + x] + rows[mid + x] + rows[down + x]) / 9;
  }
  return out;
}

/** RGBA pixels of a light pad -> ink strength in [0, 1], or null when there is no digit. */
function inkMap(rgba, w, h) {
  const ink = new Float32Array(w * h);
  for (let i = 0, j = 0; i < w * h; i++, j += 4) {
    const r = rgba[j], g = rgba[j + 1], b = rgba[j + 2];
    const lum = (0.299 * r + 0.587 * g + 0.114 * b) / 255, least = (r < g ? (r < b ? r : b) : g < b ? g : b) / 255;
    const d = 1 - lum, c = 0.6 * (1 - least); // a change of brightness, or of one colour (weaker)
    ink[i] = d > c ? d : c;
  }
  const smooth = box3(ink, w, h);
  let top = 0;
  for (let i = 0; i < smooth.length; i++) top = smooth[i] > top ? smooth[i] : top;
  if (top < MIN_CONTRAST) return null; // nothing drawn
  const peak = Math.max(smooth.length > 1000 ? quantile(smooth, 0.999) : top, 0.8 * top);
  const low = LOW_CUT * peak, high = HIGH_CUT * peak;
  let solid = 0;
  for (let i = 0; i < ink.length; i++) {
    const v = (ink[i] - low) / (high - low);
    ink[i] = v < 0 ? 0 : v > 1 ? 1 : v;
    solid += ink[i] > 0.5;
  }
  return solid < MIN_INK_PIXELS ? null : ink;
}

/** The run of a projection profile that holds the digit, without detached specks. */
function span(profile) {
  let max = 0;
  for (const v of profile) max = v > max ? v : max;
  const gap = Math.max(2, Math.floor(profile.length / 20));
  const runs = [];
  for (let i = 0; i < profile.length; i++) {
    if (!(profile[i] > max * 0.02)) continue;
    if (runs.length && i - runs[runs.length - 1][1] <= gap) runs[runs.length - 1][1] = i;
    else runs.push([i, i]);
  }
  const mass = runs.map(([a, b]) => profile.slice(a, b + 1).reduce((s, v) => s + v, 0));
  const biggest = Math.max(...mass);
  const keep = runs.filter((_, i) => mass[i] >= 0.2 * biggest);
  return [keep[0][0], keep[keep.length - 1][1] + 1];
}

function crop(img) {
  const { a, w, h } = img;
  const rows = new Float64Array(h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) rows[y] += a[y * w + x];
  const [r0, r1] = span(rows);
  const cols = new Float64Array(w);
  for (let y = r0; y < r1; y++) for (let x = 0; x < w; x++) cols[x] += a[y * w + x];
  const [c0, c1] = span(cols);
  const out = new Float32Array((r1 - r0) * (c1 - c0));
  for (let y = r0; y < r1; y++) out.set(a.subarray(y * w + c0, y * w + c1), (y - r0) * (c1 - c0));
  return { a: out, w: c1 - c0, h: r1 - r0 };
}

/** Thicken hairline strokes so that, at 20 px, they are about as wide as MNIST's. */
function normalizeStrokes(img) {
  const { a, w, h } = img;
  let area = 0, perimeter = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = a[y * w + x] > 0.5;
      area += v;
      if (y + 1 < h) perimeter += v !== a[(y + 1) * w + x] > 0.5;
      if (x + 1 < w) perimeter += v !== a[y * w + x + 1] > 0.5;
    }
  }
  const scale = BOX / Math.max(w, h);
  const width = ((2 * area) / Math.max(perimeter, 1)) * scale;
  if (width >= MIN_STROKE) return img;
  const k = Math.max(1, roundEven((TARGET_STROKE - width) / scale) + 1), lo = Math.floor(k / 2);
  const W = w + 2 * k, H = h + 2 * k;
  const grown = new Float32Array(W * H);
  for (let y = 0; y < h; y++) grown.set(a.subarray(y * w, (y + 1) * w), (y + k) * W + k);
  const pass = (src, along) => { // centred running max of width k, edges repeated
    const out = new Float32Array(W * H);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let m = 0;
        for (let j = 0; j < k; j++) {
          const xx = along ? Math.min(W - 1, Math.max(0, x - lo + j)) : x;
          const yy = along ? y : Math.min(H - 1, Math.max(0, y - lo + j));
          m = Math.max(m, src[yy * W + xx]);
        }
        out[y * W + x] = m;
      }
    }
    return out;
  };
  return { a: pass(pass(grown, false), true), w: W, h: H };
}

function lanczos(x) {
  const sinc = (t) => (t === 0 ? 1 : Math.sin(Math.PI * t) / (Math.PI * t));
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

/** Pillow's resampling weights (precompute_coeffs) for inSize -> outSize. */
function coefficients(inSize, outSize) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = 3 * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize);
    const k = [];
    let ww = 0;
    for (let x = xmin; x < xmax; x++) {
      const v = lanczos((x - center + 0.5) / filterscale);
      k.push(v);
      ww += v;
    }
    out.push({ xmin, k: ww !== 0 ? k.map((v) => v / ww) : k });
  }
  return out;
}

/** Resize a float image with Pillow's LANCZOS (horizontal pass, then vertical). */
function resize(img, outW, outH) {
  const { a, w, h } = img;
  const tmp = new Float32Array(outW * h);
  const cx = coefficients(w, outW), cy = coefficients(h, outH);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < outW; x++) {
      let s = 0;
      cx[x].k.forEach((k, i) => (s += a[y * w + cx[x].xmin + i] * k));
      tmp[y * outW + x] = s;
    }
  }
  const out = new Float32Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      let s = 0;
      cy[y].k.forEach((k, i) => (s += tmp[(cy[y].xmin + i) * outW + x] * k));
      out[y * outW + x] = Math.min(1, Math.max(0, s));
    }
  }
  return { a: out, w: outW, h: outH };
}

/** A <= 20x20 patch in the 28x28 field, its centre of mass at the centre. */
function place(img) {
  const { a, w, h } = img;
  let mass = 0, my = 0, mx = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = a[y * w + x];
      mass += v;
      my += v * y;
      mx += v * x;
    }
  }
  const top = roundEven(COM_TARGET - my / mass), left = roundEven(COM_TARGET - mx / mass);
  const field = new Float32Array(FIELD * FIELD);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const fy = y + top, fx = x + left;
      if (fy >= 0 && fy < FIELD && fx >= 0 && fx < FIELD) field[fy * FIELD + fx] = a[y * w + x];
    }
  }
  return field;
}

/** RGBA pixels of the pad (w x h) -> Float32Array(784) in [0, 1], white on black; null if blank. */
export function toMnist(rgba, w, h) {
  const ink = inkMap(rgba, w, h);
  if (!ink) return null;
  let img = crop({ a: ink, w, h });
  img = crop(normalizeStrokes(img));
  const scale = BOX / Math.max(img.w, img.h);
  const patch = resize(img, Math.max(1, roundEven(img.w * scale)), Math.max(1, roundEven(img.h * scale)));
  if (!(patch.a.reduce((s, v) => s + v, 0) > 0)) return null;
  return place(patch);
}

/** [0, 1] pixels -> the model's int8 input (rounded half to even, as NumPy's rint). */
export function quantize(x, input) {
  const q = new Int8Array(x.length);
  const scale = Math.fround(input.scale);
  for (let i = 0; i < x.length; i++) {
    q[i] = Math.min(127, Math.max(-128, roundEven(Math.fround(x[i] / scale)) + input.zeroPoint));
  }
  return q;
}

/** int8 output -> probabilities: softmax of the dequantized logits, or the dequantized softmax. */
export function probabilities(q, output) {
  const v = Array.from(q, (x) => (x - output.zeroPoint) * output.scale);
  if (output.kind === "softmax") {
    const sum = v.reduce((s, p) => s + p, 0) || 1;
    return v.map((p) => p / sum);
  }
  const max = Math.max(...v);
  const e = v.map((x) => Math.exp(x - max));
  const sum = e.reduce((s, p) => s + p, 0);
  return e.map((p) => p / sum);
}

/** Load the compiled model beside the page (SIMD build when this browser has SIMD128), and run
 * the preprocessing and the model a few times on a made-up stroke: the engine compiles hot
 * code in tiers, and the visitor's first drawing should not wait for that. */
export async function loadModel(moduleUrl) {
  const m = await import(moduleUrl);
  const model = await m.load();
  const w = 280, rgba = new Uint8ClampedArray(w * w * 4).fill(255);
  for (let y = 60; y < 220; y++) rgba.fill(0, 4 * (y * w + 120 + (y >> 3)), 4 * (y * w + 138 + (y >> 3)));
  for (let i = 0; i < 8; i++) model.classify(quantize(toMnist(rgba, w, w), model.input));
  return { model, simd: m.hasSimd(), module: m };
}
