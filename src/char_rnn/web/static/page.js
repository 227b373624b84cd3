// The page: load the model into onnxruntime-web (WebAssembly, files of this folder only),
// read the form, and append each character as the sampler makes it. Text goes in through
// textContent only, never as HTML.
import { generate, parseStops } from "./sampler.js";

const $ = (id) => document.getElementById(id);
const here = (path) => new URL(path, document.baseURI).href;
let model = null;
let stopRequested = false;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function numberOrNull(id, parse) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = parse(raw);
  if (!Number.isFinite(value)) throw new Error(`${id.replace("_", "-")} must be a number, got ${JSON.stringify(raw)}`);
  return value;
}

function options() {
  const toInt = (v) => Number(v) === Math.trunc(Number(v)) ? Number(v) : NaN;
  const chosen = {
    start: $("start").value || "\n",
    length: numberOrNull("length", toInt) ?? 500,
    temperature: numberOrNull("temperature", Number) ?? 1.0,
    topK: numberOrNull("top_k", toInt),
    topP: numberOrNull("top_p", Number),
    seed: numberOrNull("seed", toInt),
    stops: parseStops($("stop_at").value),
  };
  if (chosen.length < 0) throw new Error("length must be a non-negative integer");
  if (chosen.temperature < 0) throw new Error("temperature must be >= 0");
  if (chosen.topK !== null && chosen.topK < 1) throw new Error("top-k must be a positive integer");
  if (chosen.topP !== null && !(chosen.topP > 0 && chosen.topP <= 1)) throw new Error("top-p must be in (0, 1]");
  return chosen;
}

// One step of the exported model: ids (1, T) and the state in, the last logits and the state out.
async function step(ids, state) {
  const { session, config } = model;
  const shape = [config.layers, 1, config.units];
  const feeds = { ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]) };
  config.state.forEach((name, i) => {
    feeds[name] = state ? state[i] : new ort.Tensor("float32", new Float32Array(shape.reduce((a, b) => a * b)), shape);
  });
  const out = await session.run(feeds);
  return { logits: out.logits.data, state: config.state.map((name) => out[`${name}_out`]) };
}

async function run(event) {
  event.preventDefault();
  let chosen;
  try {
    chosen = options();
  } catch (error) {
    setStatus(error.message, true);
    return;
  }
  $("generate").disabled = true;
  $("stop").disabled = false;
  stopRequested = false;
  $("prompt").textContent = chosen.start;
  $("generated").textContent = "";
  setStatus("generating…");
  let count = 0;
  let ending = "done:";
  try {
    for await (const ch of generate(step, model.config.vocab, { ...chosen, shouldStop: () => stopRequested })) {
      $("generated").textContent += ch;
      count++;
      if (count % 20 === 0) setStatus(`generating… ${count} characters`);
    }
    const text = $("generated").textContent;
    if (stopRequested) ending = "stopped after";
    else if (chosen.stops.some((stop) => text.endsWith(stop))) ending = "done (stop string):";
    setStatus(`${ending} ${count} characters`);
  } catch (error) {
    setStatus(error.message, true);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function load() {
  try {
    ort.env.wasm.numThreads = 1; // threads need cross-origin isolation, which a plain static server lacks
    ort.env.wasm.wasmPaths = {
      mjs: here("runtime/ort-wasm-simd-threaded.js"),
      wasm: here("runtime/ort-wasm-simd-threaded.wasm"),
    };
    const response = await fetch(here("model.json"));
    if (!response.ok) throw new Error(`model.json: HTTP ${response.status}`);
    const config = await response.json();
    const session = await ort.InferenceSession.create(here("model.onnx"), { executionProviders: ["wasm"] });
    model = { config, session };
    $("model").textContent = `${config.name}: ${config.cell.toUpperCase()}, ${config.layers} × ${config.units} units, ` +
      `${config.vocab.length} characters (${config.checkpoint} weights), running in this browser`;
    $("generate").disabled = false;
    setStatus("ready");
  } catch (error) {
    $("model").textContent = "the model did not load";
    setStatus(`${error.message || error} (open this page through a web server, e.g. python -m http.server)`, true);
  }
}

$("controls").addEventListener("submit", run);
$("stop").addEventListener("click", () => { stopRequested = true; });
load();
