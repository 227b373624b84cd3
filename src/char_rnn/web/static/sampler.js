// Sampling in the browser, with the meaning char-rnn gives each option in Python
// (src/char_rnn/generate/sampling.py): logits are divided by the temperature, top-k keeps
// the k likeliest (ties with the k-th kept), top-p keeps the smallest set of the likeliest
// holding p of the probability, and temperature 0 is argmax (the first of equal maxima).
// The random draws come from a seeded generator of this page's own, so a seed gives the
// same text on every visit, but not the text Python draws with that seed.

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) {
    if (logits[i] > logits[best]) best = i;
  }
  return best;
}

// The logits scaled by the temperature, with what top-k and top-p exclude set to -Infinity.
export function filterLogits(logits, { temperature, topK = null, topP = null }) {
  const scaled = Float64Array.from(logits, (x) => Math.fround(x / temperature));
  if (topK !== null && topK < scaled.length) {
    const kthBest = Array.from(scaled).sort((a, b) => b - a)[topK - 1];
    for (let i = 0; i < scaled.length; i++) {
      if (scaled[i] < kthBest) scaled[i] = -Infinity;
    }
  }
  if (topP !== null && topP < 1) {
    const order = Array.from(scaled.keys()).sort((a, b) => scaled[b] - scaled[a] || a - b);
    const probs = softmax(order.map((i) => scaled[i]));
    // A candidate is dropped when the ones ranked above it already hold top_p of the mass,
    // so the likeliest one is always kept.
    let above = 0;
    const drop = [];
    order.forEach((i, rank) => {
      if (above >= topP) drop.push(i);
      above += probs[rank];
    });
    for (const i of drop) scaled[i] = -Infinity;
  }
  return scaled;
}

export function softmax(values) {
  const top = Math.max(...values);
  const exps = Array.from(values, (x) => (x === -Infinity ? 0 : Math.exp(x - top)));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / total);
}

// One id drawn from the filtered distribution, given a uniform number in [0, 1).
export function drawByInverseCdf(filtered, uniform) {
  const probs = softmax(filtered);
  let cumulative = 0;
  let last = 0;
  for (let i = 0; i < probs.length; i++) {
    if (probs[i] === 0) continue;
    cumulative += probs[i];
    last = i;
    if (uniform < cumulative) return i;
  }
  return last; // rounding left the total a hair below 1
}

export function sampleNext(logits, options, random) {
  if (options.temperature === 0) return argmax(logits);
  return drawByInverseCdf(filterLogits(logits, options), random());
}

// mulberry32: a small, fast generator of 32-bit state; uniform numbers in [0, 1).
export function makeRandom(seed) {
  let state = (seed ?? crypto.getRandomValues(new Uint32Array(1))[0]) >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The stop strings typed into one field: separated by |, with \n, \t and \| for a newline,
// a tab and a bar; empty parts are dropped.
export function parseStops(field) {
  const parts = [];
  let current = "";
  for (let i = 0; i < field.length; i++) {
    const ch = field[i];
    if (ch === "\\" && i + 1 < field.length) {
      const next = field[++i];
      current += next === "n" ? "\n" : next === "t" ? "\t" : next;
    } else if (ch === "|") {
      parts.push(current);
      current = "";
    } else {
      current += ch;
    }
  }
  parts.push(current);
  return parts.filter((part) => part !== "");
}

// The characters generated after `start`, one at a time, as the model makes them.
// `step(ids, state)` runs the model: ids of the characters just fed, the state it returned
// last (null at first) -> { logits, state }. The start string is fed whole, once, as the
// Python engines feed it; generation ends after `length` characters, or after the first
// stop string (kept in the text), or when `shouldStop()` says so.
export async function* generate(step, vocab, { start, length, stops = [], shouldStop = () => false, ...options }) {
  const index = new Map(vocab.map((ch, i) => [ch, i]));
  const unknown = [...new Set(start)].filter((ch) => !index.has(ch));
  if (unknown.length) {
    throw new Error(`the start text has characters this model does not know: ${JSON.stringify(unknown.join(""))}`);
  }
  if (length === 0) return;
  const random = makeRandom(options.seed);
  let { logits, state } = await step(Array.from(start, (ch) => index.get(ch)), null);
  let text = "";
  for (let produced = 0; produced < length; produced++) {
    const id = sampleNext(logits, options, random);
    const ch = vocab[id];
    text += ch;
    yield ch;
    if (stops.some((stop) => text.endsWith(stop)) || shouldStop()) return;
    ({ logits, state } = await step([id], state));
  }
}
