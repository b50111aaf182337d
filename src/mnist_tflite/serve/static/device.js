// The model on this device: the canvas -> the 28x28 MNIST image, in the page, and the
// compiled model (WebAssembly, from `mnist-tflite compile --target wasm`) run on it.
//
// toMnist follows edge/preprocess.py's to_mnist step by step (with Pillow's resampling
// weights), so the page's 28x28 is Python's to a rounding: the ink map (the paper found by
// the same closing, the same cuts), the digit's span without specks, hairlines thickened,
// the longest side scaled to 20 px (Lanczos), the centre of mass put at (14, 14) of the
// 28x28 field. Photos are not its job (no EXIF, no shrinking of large images): on a canvas
// of at most 320 px it is to_mnist. An ES module: imported by app.js.

const BOX = 20, FIELD = 28, COM_TARGET = 14.0;
const LOW_CUT = 0.3, HIGH_CUT = 0.75, MIN_CONTRAST = 0.1, MIN_INK_PIXELS = 6; // edge/ink.py
const CLOSING = 0.2, COARSE = 8, NOISE_MARGIN = 10.0, CHROMA = 0.6;
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
  const B = 1024, f = B / (hi - lo), counts = new Int32Array(B), bucket = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const b = Math.min(B - 1, Math.floor((a[i] - lo) * f));
    bucket[i] = b;
    counts[b]++;
  }
  let b = 0, below = 0;
  while (below + counts[b] <= rank) below += counts[b++];
  const inside = new Float32Array(counts[b]);
  let same = true;
  for (let i = 0, j = 0; i < n; i++) {
    if (bucket[i] !== b) continue;
    inside[j++] = a[i];
    same = same && a[i] === inside[0];
  }
  return same ? inside[0] : inside.sort()[rank - below]; // a canvas is mostly ties: no sort for them
}

/** Every third value (NumPy's a.ravel()[::3]). */
function everyThird(a) {
  const out = new Float32Array(Math.ceil(a.length / 3));
  for (let i = 0, j = 0; i < a.length; i += 3) out[j++] = a[i];
  return out;
}

/** 3x3 mean, edges repeated (separable: rows of three, then columns of three). */
export function box3(a, w, h) {
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

/** Centred running max or min (op) of width k along rows (along = 1) or columns, edges repeated. */
export function running(a, w, h, k, along, op) {
  const out = new Float32Array(w * h), lo = k >> 1;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      let m = a[y * w + x];
      for (let j = -lo; j <= k - 1 - lo; j++) {
        const xx = along ? Math.min(w - 1, Math.max(0, x + j)) : x;
        const yy = along ? y : Math.min(h - 1, Math.max(0, y + j));
        m = op(m, a[yy * w + xx]);
      }
      out[y * w + x] = m;
    }
  }
  return out;
}

/** The paper without the ink: edge/ink.py's _background (a closing on a coarse grid, light
 * paper; an opening on a dark board), interpolated back with Pillow's bilinear weights. */
function background(ch, w, h, light) {
  const k = Math.max(3, Math.floor(Math.max(w, h) * CLOSING) | 1);
  const [first, second] = light ? [Math.max, Math.min] : [Math.min, Math.max];
  const f = Math.max(1, Math.floor(k / COARSE));
  const sw = Math.ceil(w / f), sh = Math.ceil(h / f);
  // block extremes (edges repeated to whole blocks: repeated pixels change no extreme)
  let small = new Float32Array(sw * sh).fill(light ? -Infinity : Infinity);
  for (let y = 0; y < h; y++) {
    const row = Math.floor(y / f) * sw;
    for (let x = 0; x < w; x++) {
      const i = row + Math.floor(x / f), v = ch[y * w + x];
      if (light ? v > small[i] : v < small[i]) small[i] = v;
    }
  }
  const kc = Math.max(3, Math.floor(k / f) | 1), pw = sw + 2 * kc, ph = sh + 2 * kc;
  let bg = new Float32Array(pw * ph); // edges repeated: the picture goes on beyond its frame
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      bg[y * pw + x] = small[Math.min(sh - 1, Math.max(0, y - kc)) * sw + Math.min(sw - 1, Math.max(0, x - kc))];
    }
  }
  for (const op of [first, second]) bg = running(running(bg, pw, ph, kc, 0, op), pw, ph, kc, 1, op);
  small = new Float32Array(sw * sh);
  for (let y = 0; y < sh; y++) small.set(bg.subarray((y + kc) * pw + kc, (y + kc) * pw + kc + sw), y * sw);
  if (f === 1) return small;
  small = running(running(small, sw, sh, 3, 0, second), sw, sh, 3, 1, second);
  const up = resize({ a: small, w: sw, h: sh }, sw * f, sh * f, bilinear, 1, false);
  const out = new Float32Array(w * h);
  for (let y = 0; y < h; y++) out.set(up.a.subarray(y * sw * f, y * sw * f + w), y * w);
  return out;
}

/** RGBA pixels -> ink strength in [0, 1] (edge/ink.py's ink_map), or null when there is no digit. */
function inkMap(rgba, w, h) {
  const n = w * h, r = new Float32Array(n);
  let grey = true;
  for (let j = 0; j < 4 * n && grey; j += 4) grey = rgba[j] === rgba[j + 1] && rgba[j] === rgba[j + 2];
  const g = grey ? r : new Float32Array(n), b = grey ? r : new Float32Array(n);
  const lum = grey ? r : new Float32Array(n); // (a grey pixel's luminance is its value)
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    r[i] = rgba[j] / 255;
    if (grey) continue;
    g[i] = rgba[j + 1] / 255;
    b[i] = rgba[j + 2] / 255;
    lum[i] = r[i] * 0.299 + g[i] * 0.587 + b[i] * 0.114;
  }
  return inkOf(grey ? [r] : [r, g, b], lum, w, h);
}

/** A grey picture (values in [0, 1]) -> its ink map, or null when there is no digit. */
export function greyInkMap(a, w, h) {
  return inkOf([a], a, w, h);
}

/** A grey picture -> {strength, peak} (edge/ink.py's ink_strength), or null when blank. */
export function greyInkStrength(a, w, h) {
  return strengthOf([a], a, w, h);
}

/** edge/ink.py's polarity of a mid-grey picture: the dark tail reaches further from the local
 * level (block means, interpolated back) than the light one, so a shadow's edge is neither. */
function darkTail(lum, w, h) {
  const f = Math.max(1, Math.floor(Math.max(w, h) * CLOSING)), n = w * h, detail = new Float32Array(n);
  if (f > 1) {
    const sw = Math.ceil(w / f), sh = Math.ceil(h / f), sums = new Float32Array(sw * sh);
    for (let y = 0; y < sh * f; y++) {
      const row = Math.min(h - 1, y) * w, out = Math.floor(y / f) * sw;
      for (let x = 0; x < sw * f; x++) sums[out + Math.floor(x / f)] += lum[row + Math.min(w - 1, x)];
    }
    for (let i = 0; i < sums.length; i++) sums[i] /= f * f;
    const local = resize({ a: sums, w: sw, h: sh }, sw * f, sh * f, bilinear, 1, false);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) detail[y * w + x] = lum[y * w + x] - local.a[y * sw * f + x];
  }
  return -quantile(detail, 0.005) >= quantile(detail, 0.995);
}

/** Channels (one grey, or r, g, b) and their luminance -> the ink map, or null. */
function inkOf(channels, lum, w, h) {
  const s = strengthOf(channels, lum, w, h);
  return s && cutInk(s.strength, s.peak);
}

/** edge/ink.py's ink_strength: how far each pixel is from the paper, and the strongest
 * mark's level (the ink before cutInk), or null when nothing stands out. */
function strengthOf(channels, lum, w, h) {
  const n = w * h;
  const level = quantile(everyThird(lum), 0.5);
  const light = level >= 0.65 ? true : level <= 0.35 ? false : darkTail(lum, w, h);
  const diffs = channels.map((ch) => {
    const bg = background(ch, w, h, light), d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = light ? (bg[i] - ch[i]) / Math.max(bg[i], 0.2) : ch[i] - bg[i];
    return d;
  });
  let ink = diffs[0]; // one channel of a grey picture is all three
  if (diffs.length === 3) {
    const [dr, dg, db] = diffs; // a change of brightness, or (weaker) of one colour
    ink = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const most = Math.max(dr[i], dg[i], db[i]);
      ink[i] = Math.max(dr[i] * 0.299 + dg[i] * 0.587 + db[i] * 0.114, CHROMA * most);
    }
  }
  const sample = everyThird(ink);
  const base = quantile(sample, 0.5);
  for (let i = 0; i < sample.length; i++) sample[i] = Math.abs(sample[i] - base);
  const noise = quantile(sample, 0.5);
  for (let i = 0; i < n; i++) ink[i] = Math.min(1, Math.max(0, ink[i] - base));
  const smooth = box3(ink, w, h);
  let top = 0;
  for (let i = 0; i < smooth.length; i++) top = smooth[i] > top ? smooth[i] : top;
  const peak = Math.max(smooth.length > 1000 ? quantile(smooth, 0.999) : top, 0.8 * top);
  if (peak < Math.max(MIN_CONTRAST, NOISE_MARGIN * noise)) return null; // nothing drawn
  return { strength: ink, peak };
}

/** edge/ink.py's cut_ink: strength -> the ink map in [0, 1] (a new array), or null when only
 * a few pixels are solid ink. */
export function cutInk(strength, peak) {
  const low = LOW_CUT * peak, high = HIGH_CUT * peak, ink = new Float32Array(strength.length);
  let solid = 0;
  for (let i = 0; i < ink.length; i++) {
    const v = (strength[i] - low) / (high - low);
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

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

/** Pillow's resampling weights (precompute_coeffs) for inSize -> outSize. */
function coefficients(inSize, outSize, filter, support) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), reach = support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - reach + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + reach + 0.5), inSize);
    const k = [];
    let ww = 0;
    for (let x = xmin; x < xmax; x++) {
      const v = filter((x - center + 0.5) / filterscale);
      k.push(v);
      ww += v;
    }
    out.push({ xmin, k: ww !== 0 ? k.map((v) => v / ww) : k });
  }
  return out;
}

/** Resize a float image as Pillow does (horizontal pass, then vertical), clipped to [0, 1] or not. */
function resize(img, outW, outH, filter = lanczos, support = 3, clip = true) {
  const { a, w, h } = img;
  const tmp = new Float32Array(outW * h);
  const cx = coefficients(w, outW, filter, support), cy = coefficients(h, outH, filter, support);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < outW; x++) {
      const { xmin, k } = cx[x];
      let s = 0;
      for (let i = 0; i < k.length; i++) s += a[y * w + xmin + i] * k[i];
      tmp[y * outW + x] = s;
    }
  }
  const out = new Float32Array(outW * outH);
  for (let y = 0; y < outH; y++) {
    for (let x = 0; x < outW; x++) {
      const { xmin, k } = cy[y];
      let s = 0;
      for (let i = 0; i < k.length; i++) s += tmp[(xmin + i) * outW + x] * k[i];
      out[y * outW + x] = clip ? Math.min(1, Math.max(0, s)) : s;
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
  return ink && inkToMnist({ a: ink, w, h });
}

/** An ink map {a, w, h} of one digit -> Float32Array(784) (edge/preprocess.py's ink_to_mnist), or null. */
export function inkToMnist(ink) {
  let img = crop(ink);
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
  for (let i = 0; i < 20; i++) model.classify(quantize(toMnist(rgba, w, w), model.input));
  return { model, simd: m.hasSimd(), module: m };
}
