// The page's only script: read the form, POST it to /api/stream, append the text as it
// arrives. Text goes in through textContent only, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let running = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function numberOrNull(id, parse) {
  const raw = $(id).value.trim();
  return raw === "" ? null : parse(raw);
}

function request() {
  const body = {
    start: $("start").value,
    length: numberOrNull("length", (v) => parseInt(v, 10)) ?? 500,
    temperature: numberOrNull("temperature", parseFloat) ?? 1.0,
  };
  for (const [key, parse] of [["top_k", (v) => parseInt(v, 10)], ["top_p", parseFloat], ["seed", (v) => parseInt(v, 10)]]) {
    const value = numberOrNull(key, parse);
    if (value !== null) body[key] = value;
  }
  // The text ends just before this string; "\n" typed in the box means a newline.
  const stop = $("stop_at").value.replace(/\\n/g, "\n");
  if (stop !== "") body.stop = stop;
  return body;
}

function handleEvent(block, state) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) event = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
  }
  if (data.length === 0) return;
  const payload = JSON.parse(data.join("\n"));
  if (event === "message") {
    $("generated").textContent += payload.text;
    state.chars += payload.text.length;
    setStatus(`generating… ${state.chars} characters`);
  } else if (event === "done") {
    state.finished = true;
    const stopped = payload.stop ? ` (stopped at ${JSON.stringify(payload.stop)})` : "";
    setStatus(`done: ${payload.chars} characters${stopped}`);
  } else if (event === "error") {
    state.finished = true;
    setStatus(payload.detail, true);
  }
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  const body = request();
  $("prompt").textContent = body.start;
  $("generated").textContent = "";
  setStatus("generating…");
  running = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  const state = { chars: 0, finished: false };
  try {
    const response = await fetch("/api/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: running.signal,
    });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({ detail: response.statusText }));
      setStatus(`${response.status}: ${problem.detail}`, true);
      return;
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        handleEvent(buffer.slice(0, end), state);
        buffer = buffer.slice(end + 2);
      }
    }
    if (!state.finished) setStatus("the connection closed before the text was finished", true);
  } catch (error) {
    if (error.name === "AbortError") setStatus(`stopped after ${state.chars} characters`);
    else setStatus(`request failed: ${error.message}`, true);
  } finally {
    running = null;
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function showModel() {
  try {
    const info = await (await fetch("/api/info")).json();
    $("model").textContent =
      `${info.model} · ${info.cell.toUpperCase()} ${info.layers}×${info.units} · ` +
      `${info.vocab_size} characters · up to ${info.limits.max_length} characters a request`;
    $("length").max = info.limits.max_length;
  } catch (error) {
    $("model").textContent = "model information unavailable";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("controls").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => running && running.abort());
  showModel();
});
