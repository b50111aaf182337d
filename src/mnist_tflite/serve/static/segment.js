// The digits of a number drawn on the pad, found in the page: edge/segment.py's find_digits
// for what a drawing needs (the picture reduced as preprocess.py's picture() does, the ink
// map, 8-connected components, the pieces of one digit joined, specks dropped, lines, left to
// right, a component wider than a digit cut where the model is surest of the pieces), rule
// for rule, so the boxes are Python's (tests/test_segment_js.py checks them in Node). One
// step stays with Python: taking out ruled lines (a long horizontal opening). A drawing with
// such a line says so (`defer`): serve's page then asks /api/predict?number=1, a static site
// reads it as it is and says why.

import { box3, cutInk, greyInkStrength, inkToMnist, running } from "./device.js";

const WORK_SIZE = 320; // edge/preprocess.py
const INK_LEVEL = 0.12, RULE_LENGTH = 0.75, WHOLE_PICTURE = 0.9; // edge/segment.py, from here on
const JOIN_OVERLAP = 0.5, JOIN_HEIGHT = 1.7, WIDE_JUDGED = 0.8, FRAGMENT = 0.6, FLAT = [0.3, 0.3];
const WIDEST = 1.5, WHOLE_PENALTY = 1.0, PRIOR = 1.0, DIGIT_WIDTH = [0.5, 0.85], PIECE = 0.9;
const CUT_SPACING = 0.1, MAX_CUTS = 32, STROKE_WINDOW = 0.15, FAINTEST = 0.25;
const LOW_CUT = 0.3, HIGH_CUT = 0.75; // edge/ink.py's, which segment.py cuts a digit's strokes with
const SLOPES = [-0.35, -0.2, -0.1, 0.0, 0.1, 0.2, 0.35];
const MAX_DIGITS = 64;

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
        if (tall || width(both) > (stacked ? 1.2 : 0.95) * Math.max(digitHeight, height(both))) return;
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

/** segment.py's _digits_only: specks, dashes and stray strokes dropped; a flat, small digit
 * (a 0 or an 8) kept when it is a digit wide with much of a digit's ink. */
function digitsOnly(parts, digitHeight) {
  const tall = parts.filter((p) => height(p) >= FRAGMENT * digitHeight);
  const area = tall.length ? median(tall.map((p) => p.area)) : 0;
  const flat = (p) =>
    height(p) >= FLAT[0] * digitHeight && width(p) >= FRAGMENT * digitHeight && p.area >= FLAT[1] * area;
  return parts.filter((p) => height(p) >= FRAGMENT * digitHeight || flat(p));
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

/** Python's round(): halves to even. */
function roundEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** segment.py's _cut_costs: per column, the least ink a cut line through it crosses, bent at
 * the middle row (its slope above, its slope below: each half's cheapest). */
function cutCosts(patch) {
  const { a, w, h } = patch, cost = new Float64Array(w), slope = Array.from({ length: w }, () => [0, 0]);
  for (const [half, y0, y1] of [[0, 0, Math.ceil((h - 1) / 2)], [1, Math.ceil((h - 1) / 2), h]]) {
    const least = new Float64Array(w).fill(Infinity);
    for (const s of SLOPES) {
      const c = new Float64Array(w);
      for (let y = y0; y < y1; y++) {
        const dy = y - (h - 1) / 2;
        for (let x = 0; x < w; x++) {
          const col = roundEven(x - s * dy);
          if (col >= 0 && col < w) c[col] += a[y * w + x];
        }
      }
      for (let x = 0; x < w; x++) if (c[x] < least[x]) [least[x], slope[x][half]] = [c[x], s];
    }
    for (let x = 0; x < w; x++) cost[x] += least[x];
  }
  return { cost, slope };
}

/** segment.py's _between: the ink between two cut lines, each [x at the middle row, slope
 * above it, slope below]. */
function between(patch, left, right) {
  const { a, w, h } = patch, out = new Float32Array(w * h);
  let sum = 0;
  for (let y = 0; y < h; y++) {
    const dy = y - (h - 1) / 2, [l, r] = dy < 0 ? [left[1], right[1]] : [left[2], right[2]];
    for (let x = 0; x < w; x++) {
      if (x - l * dy >= left[0] && x - r * dy < right[0]) sum += out[y * w + x] = a[y * w + x];
    }
  }
  return { a: out, w, h, sum };
}

/** segment.py's _candidates and _split: touching digits cut where bent lines cross the least
 * ink, the chain of pieces chosen by width and by how sure the model (judge) is of each piece. */
function split(patch, lineHeight, digitWidth, judge) {
  const { cost, slope } = cutCosts(patch), w = patch.w;
  const order = Array.from({ length: Math.max(0, w - 2) }, (_, i) => i + 1).sort((p, q) => cost[p] - cost[q] || p - q);
  const spaced = [];
  for (const x of order) {
    if (cost[x] > cost[x - 1] || cost[x] > cost[x + 1]) continue;
    if (spaced.every((y) => Math.abs(x - y) >= CUT_SPACING * lineHeight) && spaced.length < MAX_CUTS) spaced.push(x);
  }
  spaced.sort((p, q) => p - q);
  const edges = [0, ...spaced, w], last = edges.length - 1;
  const bounds = [[-Infinity, 0, 0], ...spaced.map((x) => [x, ...slope[x]]), [Infinity, 0, 0]];
  const spans = [];
  for (let i = 0; i < edges.length; i++) {
    for (let j = i + 1; j < edges.length; j++) {
      const width = edges[j] - edges[i];
      if ((0.15 * lineHeight <= width && width <= PIECE * lineHeight) || (i === 0 && j === last)) {
        const ink = between(patch, bounds[i], bounds[j]);
        if (ink.sum > 0.5) spans.push({ i, j, width, ink });
      }
    }
  }
  if (!spans.length) return [patch];
  for (const s of spans) {
    s.score = -Math.abs(s.width - digitWidth) / digitWidth;
    if (s.i === 0 && s.j === last && s.width <= WIDEST * lineHeight) {
      s.score = -WHOLE_PENALTY * Math.max(0, s.width / lineHeight - 1); // a wide digit, uncut
    }
    const x = inkToMnist(s.ink);
    s.score = s.score * PRIOR + Math.log(Math.max(x ? judge(x) : 0, 1e-6));
  }
  const crossing = [0, ...spaced.map((x) => cost[x] / lineHeight), 0];
  const best = new Float64Array(edges.length).fill(-Infinity), back = new Int32Array(edges.length).fill(-1);
  best[0] = 0;
  for (const { i, j, score } of spans) {
    const value = best[i] + score - crossing[j];
    if (value > best[j]) [best[j], back[j]] = [value, i];
  }
  if (!Number.isFinite(best[last])) return [patch];
  const chosen = [];
  for (let j = last; j > 0; j = back[j]) chosen.unshift(between(patch, bounds[back[j]], bounds[j]));
  return chosen;
}

/** segment.py's _line_width: one digit's width in this line. */
function lineWidth(line, lineHeight) {
  const single = line.map(width).filter((v) => DIGIT_WIDTH[0] * lineHeight <= v && v <= WIDE_JUDGED * lineHeight);
  const guess = single.length ? median(single) : 0.55 * lineHeight;
  return Math.min(DIGIT_WIDTH[1] * lineHeight, Math.max(DIGIT_WIDTH[0] * lineHeight, guess));
}

/** segment.py's _own_strokes: a digit's ink again, each stroke cut against the strongest ink
 * near it (or FAINTEST of the picture's peak), not the picture's: a small digit's thin strokes. */
function ownStrokes(part, piece, strength, peak, labels, w) {
  const pw = piece.w, ph = piece.h, n = pw * ph, inked = new Float32Array(n), s = new Float32Array(n);
  for (let i = 0; i < n; i++) inked[i] = piece.a[i] > 0 ? 1 : 0;
  const near = running(running(inked, pw, ph, 5, 0, Math.max), pw, ph, 5, 1, Math.max);
  for (let y = 0; y < ph; y++) {
    for (let x = 0; x < pw; x++) {
      const at = (part.y0 + y) * w + part.x0 + x, lab = labels[at];
      if (near[y * pw + x] > 0 && (lab === 0 || part.ids.includes(lab))) s[y * pw + x] = strength[at];
    }
  }
  const k = Math.max(3, Math.floor(STROKE_WINDOW * ph) | 1), out = new Float32Array(n);
  const local = running(running(box3(s, pw, ph), pw, ph, k, 0, Math.max), pw, ph, k, 1, Math.max);
  for (let i = 0; i < n; i++) {
    const v = (s[i] / Math.max(local[i], FAINTEST * peak) - LOW_CUT) / (HIGH_CUT - LOW_CUT);
    out[i] = v < 0 ? 0 : v > 1 ? 1 : v;
  }
  return { a: out, w: pw, h: ph };
}

/** segment.py's _box: a piece's box as fractions of the picture (its ink within its part). */
function boxOf(part, piece, w, h) {
  let y0 = Infinity, y1 = -1, x0 = Infinity, x1 = -1;
  for (let y = 0; y < piece.h; y++) {
    for (let x = 0; x < piece.w; x++) {
      if (piece.a[y * piece.w + x] === 0) continue;
      y0 = Math.min(y0, y), y1 = Math.max(y1, y), x0 = Math.min(x0, x), x1 = Math.max(x1, x);
    }
  }
  const [left, top, right, bottom] = [part.x0 + x0, part.y0 + y0, part.x0 + x1 + 1, part.y0 + y1 + 1];
  return [round4(left / w), round4(top / h), round4(right / w), round4(bottom / h)];
}

const round4 = (v) => Math.round(v * 1e4) / 1e4;
const tooMany = (count, what) =>
  "found " + count + " " + what + "; at most " + MAX_DIGITS + " digits are read from one picture (a page of text?)";

/** A grey picture {a, w, h} of a drawn number -> its digits, as segment.py's find_digits.
 *
 * judge: a Float32Array(784) candidate digit -> the model's confidence in it (to choose
 * where touching digits are cut). Returns null for a blank picture, {error} for one that is
 * not digits, else {digits, defer}: each digit {box: [left, top, right, bottom] as fractions
 * of the picture, line, ink: {a, w, h}}; defer names what only the server does, or "". */
export function findDigits(pic, judge) {
  const { w, h } = pic;
  const ink = greyInkStrength(pic.a, w, h), full = ink && cutInk(ink.strength, ink.peak);
  if (!full) return null;
  const { labels, parts: marks } = components(full, w, h);
  for (const p of marks) {
    if (width(p) >= WHOLE_PICTURE * w && height(p) >= WHOLE_PICTURE * h) {
      const share = Math.round((100 * width(p)) / w) + "% of its width, " +
        Math.round((100 * height(p)) / h) + "% of its height";
      return { error: "one mark spans the whole picture (" + share + "): a table, a grid or a frame, not digits" };
    }
  }
  let defer = hasRule(full, w, h) ? "a long line (ruled paper?) to take out" : "";
  const whole = { a: full, w, h };
  if (!marks.length) return { digits: [{ box: [0, 0, 1, 1], line: 0, ink: whole }], defer };
  const digitHeight = typicalHeight(marks);
  const parts = digitsOnly(joinPieces(marks, digitHeight), digitHeight);
  if (parts.length > MAX_DIGITS) return { error: tooMany(parts.length, "separate marks") };
  const digits = [];
  lines(parts).forEach((line, number) => {
    const lineHeight = median(line.map(height)), digitWidth = lineWidth(line, lineHeight);
    for (const p of line) {
      const patch = inkOf(p, full, labels, w);
      const wide = width(p) > WIDE_JUDGED * Math.max(lineHeight, height(p));
      const pieces = wide ? split(patch, lineHeight, digitWidth, judge) : [patch];
      for (const piece of pieces) {
        digits.push({ box: boxOf(p, piece, w, h), line: number, ink: piece, part: pieces.length > 1 ? null : p });
      }
    }
  });
  if (digits.length > MAX_DIGITS) return { error: tooMany(digits.length, "digits") };
  if (digits.length === 1) digits[0].ink = whole; // one digit: exactly the single-digit path
  else { // a piece cut from touching digits stays as the model judged it (grown, it would cross the cut)
    for (const d of digits) if (d.part) d.ink = ownStrokes(d.part, d.ink, ink.strength, ink.peak, labels, w);
  }
  for (const d of digits) delete d.part;
  return { digits, defer };
}
