// The digits of a number drawn on the pad, found in the page: edge/segment.py's find_digits
// for what a drawing needs (the picture reduced as preprocess.py's picture() does, the ink
// map, 8-connected components, the pieces of one digit joined, specks dropped, lines, left to
// right), rule for rule, so the boxes are Python's (tests/test_browser_number.py checks them).
// Two steps stay with Python: cutting touching digits apart (the model judges the cut) and
// taking out ruled lines. A drawing that needs either says so (`defer`); serve's page then
// asks /api/predict?number=1, a static site reads it as it is and says why.

import { greyInkMap } from "./device.js";

const WORK_SIZE = 320; // edge/preprocess.py
const INK_LEVEL = 0.4, RULE_LENGTH = 0.75, WHOLE_PICTURE = 0.9; // edge/segment.py, from here on
const JOIN_OVERLAP = 0.5, JOIN_HEIGHT = 1.7, WIDE_JUDGED = 0.8, FRAGMENT = 0.6;
export const MAX_DIGITS = 64;

function median(values) {
  const s = Float64Array.from(values).sort(), m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** The grey pad (RGBA) -> values in [0, 1], block-averaged so the longest side is at most
 * WORK_SIZE (edges repeated to whole blocks), as preprocess.py's picture() does. */
export function padPicture(rgba, w, h) {
  const a = new Float32Array(w * h);
  for (let i = 0; i < w * h; i++) a[i] = rgba[4 * i] / 255;
  const f = Math.ceil(Math.max(w, h) / WORK_SIZE);
  if (f <= 1) return { a, w, h };
  const fh = Math.min(f, h), fw = Math.min(f, w), H = Math.ceil(h / fh), W = Math.ceil(w / fw);
  const out = new Float32Array(W * H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      let s = 0;
      for (let dy = 0; dy < fh; dy++) {
        const row = Math.min(h - 1, y * fh + dy) * w;
        for (let dx = 0; dx < fw; dx++) s += a[row + Math.min(w - 1, x * fw + dx)];
      }
      out[y * W + x] = s / (fh * fw);
    }
  }
  return { a: out, w: W, h: H };
}

/** 8-connected components of ink > INK_LEVEL, numbered in row-major order of their first
 * pixel (as segment.py's run-by-run labelling numbers them): labels and each one's part. */
function components(ink, w, h) {
  const labels = new Int32Array(w * h), stack = new Int32Array(w * h), parts = [];
  for (let s = 0; s < w * h; s++) {
    if (labels[s] || !(ink[s] > INK_LEVEL)) continue;
    const id = parts.length + 1;
    let top = 0, y0 = h, y1 = 0, x0 = w, x1 = 0, area = 0;
    stack[top++] = s;
    labels[s] = id;
    while (top) {
      const i = stack[--top], y = Math.floor(i / w), x = i - y * w;
      area += ink[i];
      y0 = Math.min(y0, y), y1 = Math.max(y1, y + 1), x0 = Math.min(x0, x), x1 = Math.max(x1, x + 1);
      for (let yy = Math.max(0, y - 1); yy <= Math.min(h - 1, y + 1); yy++) {
        for (let xx = Math.max(0, x - 1); xx <= Math.min(w - 1, x + 1); xx++) {
          const j = yy * w + xx;
          if (!labels[j] && ink[j] > INK_LEVEL) {
            labels[j] = id;
            stack[top++] = j;
          }
        }
      }
    }
    parts.push({ ids: [id], y0, y1, x0, x1, area });
  }
  return { labels, parts };
}

function joined(p, q) {
  return { ids: [...p.ids, ...q.ids], y0: Math.min(p.y0, q.y0), y1: Math.max(p.y1, q.y1),
    x0: Math.min(p.x0, q.x0), x1: Math.max(p.x1, q.x1), area: p.area + q.area };
}

const height = (p) => p.y1 - p.y0;
const width = (p) => p.x1 - p.x0;

/** True when segment.py's _without_rules would take something out: a row holds a run of ink
 * as long as its horizontal opening (or, at the picture's edge, the part of it inside). */
function hasRule(ink, w, h) {
  const k = Math.floor(w * RULE_LENGTH) | 1, lo = k >> 1;
  if (k < 9) return false;
  for (let y = 0; y < h; y++) {
    let start = 0;
    for (let x = 0; x <= w; x++) {
      if (x < w && ink[y * w + x] > 0) continue;
      const len = x - start, edge = start === 0 || x === w;
      if (len >= k || (edge && len >= lo + 1)) return true;
      start = x + 1;
    }
  }
  return false;
}

/** segment.py's _typical_height: the median height of the tall, inky components. */
function typicalHeight(parts) {
  const top = Math.max(...parts.map((p) => p.area));
  const heights = parts.filter((p) => p.area >= 0.3 * top).map(height);
  const tall = Math.max(...heights);
  return median(heights.filter((v) => v >= 0.75 * tall));
}

/** segment.py's _join_pieces, step for step (the same order, the same tests). */
function joinPieces(parts, digitHeight) {
  parts = [...parts].sort((a, b) => b.area - a.area);
  for (let changed = true; changed; ) {
    changed = false;
    const bySize = parts.map((p, i) => [i, p]).sort((a, b) => height(a[1]) - height(b[1]));
    for (const [i, small] of bySize) {
      let best = null, bestGap = 0.3 * digitHeight;
      parts.forEach((other, j) => {
        if (j === i) return;
        const both = joined(small, other);
        const overlap = Math.min(small.x1, other.x1) - Math.max(small.x0, other.x0);
        const stacked = overlap >= JOIN_OVERLAP * Math.min(width(small), width(other));
        const entwined = stacked && Math.min(small.y1, other.y1) > Math.max(small.y0, other.y0);
        const tall = height(both) > JOIN_HEIGHT * digitHeight && !entwined;
        if (tall || width(both) > (entwined ? 1.2 : 0.95) * Math.max(digitHeight, height(both))) return;
        if (height(small) >= 0.6 * digitHeight && height(other) >= 0.6 * digitHeight && !stacked) return;
        const gap = Math.max(other.x0 - small.x1, small.x0 - other.x1, other.y0 - small.y1, small.y0 - other.y1);
        if (gap <= bestGap) [best, bestGap] = [j, gap];
      });
      if (best !== null) {
        parts[Math.min(i, best)] = joined(small, parts[best]);
        parts.splice(Math.max(i, best), 1);
        changed = true;
        break;
      }
    }
  }
  return parts;
}

/** segment.py's _lines: lines of writing, top down, each left to right. */
function lines(parts) {
  const found = [];
  for (const p of [...parts].sort((a, b) => height(b) - height(a))) {
    const mid = (p.y0 + p.y1) / 2;
    const home = found.find((line) => median(line.map((q) => q.y0)) <= mid && mid <= median(line.map((q) => q.y1)));
    if (home) home.push(p);
    else found.push([p]);
  }
  const middle = (line) => median(line.map((q) => (q.y0 + q.y1) / 2));
  found.sort((a, b) => middle(a) - middle(b));
  return found.map((line) => line.sort((a, b) => a.x0 + a.x1 - (b.x0 + b.x1)));
}

/** segment.py's _ink_of: the part's own ink in its box (grown a pixel), no neighbour's. */
function inkOf(part, ink, labels, w) {
  const pw = width(part), ph = height(part), own = new Uint8Array(pw * ph), out = new Float32Array(pw * ph);
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) own[y * pw + x] = part.ids.includes(labels[(part.y0 + y) * w + part.x0 + x]);
  }
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      const lab = labels[(part.y0 + y) * w + part.x0 + x];
      if (lab !== 0 && !own[y * pw + x]) continue;
      let near = false;
      for (let yy = Math.max(0, y - 1); yy <= Math.min(ph - 1, y + 1) && !near; yy++) {
        for (let xx = Math.max(0, x - 1); xx <= Math.min(pw - 1, x + 1); xx++) near ||= own[yy * pw + xx] === 1;
      }
      if (near) out[y * pw + x] = ink[(part.y0 + y) * w + part.x0 + x];
    }
  }
  return { a: out, w: pw, h: ph };
}

const round4 = (v) => Math.round(v * 1e4) / 1e4;

/** A grey picture {a, w, h} of a drawn number -> its digits, as segment.py's find_digits.
 *
 * Returns null for a blank picture, {error} for one that is not digits, else {digits, defer}:
 * each digit {box: [left, top, right, bottom] as fractions of the picture, line, ink: {a, w, h}};
 * defer names what only the server does (touching digits to cut, a ruled line), or "". */
export function findDigits(pic) {
  const { w, h } = pic;
  const full = greyInkMap(pic.a, w, h);
  if (!full) return null;
  const { labels, parts: marks } = components(full, w, h);
  for (const p of marks) {
    if (width(p) >= WHOLE_PICTURE * w && height(p) >= WHOLE_PICTURE * h) {
      const share = Math.round((100 * width(p)) / w) + "% of its width, " + Math.round((100 * height(p)) / h) + "% of its height";
      return { error: "one mark spans the whole picture (" + share + "): a table, a grid or a frame, not digits" };
    }
  }
  let defer = hasRule(full, w, h) ? "a long line (ruled paper?) to take out" : "";
  const whole = { a: full, w, h };
  if (!marks.length) return { digits: [{ box: [0, 0, 1, 1], line: 0, ink: whole }], defer };
  const digitHeight = typicalHeight(marks);
  const parts = joinPieces(marks, digitHeight).filter((p) => height(p) >= FRAGMENT * digitHeight);
  if (parts.length > MAX_DIGITS) return { error: "found " + parts.length + " separate marks; at most " + MAX_DIGITS + " digits are read from one picture" };
  const digits = [];
  lines(parts).forEach((line, number) => {
    const lineHeight = median(line.map(height));
    for (const p of line) {
      if (width(p) > WIDE_JUDGED * Math.max(lineHeight, height(p))) defer ||= "digits that touch, to cut apart";
      const box = [round4(p.x0 / w), round4(p.y0 / h), round4(p.x1 / w), round4(p.y1 / h)];
      digits.push({ box, line: number, ink: inkOf(p, full, labels, w) });
    }
  });
  if (digits.length === 1) digits[0].ink = whole; // one digit: exactly the single-digit path
  return { digits, defer };
}
