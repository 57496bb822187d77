// v2w-play page logic (plain JS, no build step). The server (v2w_core/play/app.py) holds the world: this
// page only turns held keys / buttons into the model's action, asks for the next frame, and draws it.
// Live mode asks for the next frame as soon as the previous one arrived; step mode asks once per key press.
// `window.v2w` exposes the page's state for the browser test (tests/play/test_browser.py).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  info: null, session: null, controls: [], held: [], busy: false, playing: true, stepMode: false,
  framesReceived: 0, lastFrame: null, lastError: null, latencies: [], arrivals: [],
};
window.v2w = state;

const KEY_NAMES = { " ": "Space", ArrowLeft: "←", ArrowRight: "→", ArrowUp: "↑", ArrowDown: "↓" };
const canvas = $("screen");
const ctx2d = canvas.getContext("2d");
ctx2d.imageSmoothingEnabled = false;

function status(text) { $("status").textContent = text || ""; if (text) state.lastError = text; }

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const resp = await fetch(path, opts);
  const data = await resp.json().catch(() => ({ error: `HTTP ${resp.status}` }));
  if (!resp.ok) { const err = new Error(data.error || `HTTP ${resp.status}`); err.status = resp.status; throw err; }
  return data;
}

function draw(reply) {
  const img = new Image();
  img.onload = () => {
    ctx2d.imageSmoothingEnabled = false;
    ctx2d.drawImage(img, 0, 0, canvas.width, canvas.height);
  };
  img.src = reply.frame;
  state.lastFrame = reply.frame;
  state.framesReceived += 1;
  $("frame-index").textContent = reply.index;
  if (reply.compute_ms !== undefined) $("compute").textContent = reply.compute_ms.toFixed(0);
}

// ------------------------------------------------------------------------------------------- actions
function currentAction(extra) {
  const a = state.info.actions;
  const held = extra ? [...state.held.filter((c) => c !== extra), extra] : state.held;
  if (a.type === "discrete") return held.length ? held[held.length - 1].dim : a.neutral;
  const v = a.neutral.slice();
  for (const c of held) v[c.dim] = c.value;  // later presses win (both − and + held: the last one)
  return v;
}

function press(control) {
  if (state.held.includes(control)) return;
  state.held.push(control);
  control.button.classList.add("held");
  if (state.stepMode) step(currentAction());
  else kick();
}

function release(control) {
  state.held = state.held.filter((c) => c !== control);
  control.button.classList.remove("held");
}

function buildControls(actions) {
  const box = $("buttons");
  box.innerHTML = "";
  state.controls = actions.controls.map((c) => {
    const control = { ...c };
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.key = c.key;
    b.innerHTML = `${c.label} <kbd>${KEY_NAMES[c.key] || c.key}</kbd>`;
    b.addEventListener("pointerdown", (e) => { e.preventDefault(); press(control); });
    for (const ev of ["pointerup", "pointerleave", "pointercancel"]) b.addEventListener(ev, () => release(control));
    control.button = b;
    box.appendChild(b);
    return control;
  });
  const none = actions.type === "discrete" ? `nothing pressed = ${actions.names[0]}` : "nothing pressed = neutral";
  $("keys-help").textContent = `${actions.type} actions (${actions.dim}); ${none}.`;
}

document.addEventListener("keydown", (e) => {
  if (!state.info || e.target.tagName === "SELECT") return;
  const control = state.controls.find((c) => c.key === e.key);
  if (!control) return;
  e.preventDefault();
  if (!e.repeat) press(control);
});
document.addEventListener("keyup", (e) => {
  const control = state.controls.find((c) => c.key === e.key);
  if (control) { e.preventDefault(); release(control); }
});
window.addEventListener("blur", () => state.controls.forEach(release));

// ------------------------------------------------------------------------------------------- frames
function recordTiming(ms) {
  const now = performance.now();
  state.latencies.push(ms); if (state.latencies.length > 30) state.latencies.shift();
  state.arrivals.push(now); while (state.arrivals.length && now - state.arrivals[0] > 3000) state.arrivals.shift();
  const sorted = state.latencies.slice().sort((x, y) => x - y);
  $("latency").textContent = sorted[Math.floor(sorted.length / 2)].toFixed(0);
  const span = (state.arrivals[state.arrivals.length - 1] - state.arrivals[0]) / 1000;
  $("fps").textContent = state.arrivals.length > 1 && span > 0 ? ((state.arrivals.length - 1) / span).toFixed(1) : "–";
}

async function step(action) {
  if (!state.session) return;
  if (state.busy) { state.pending = action; return; }  // step mode: the newest press runs after this one
  state.busy = true;
  const t0 = performance.now();
  try {
    const reply = await api("POST", `/api/session/${state.session}/step`, { action, steps: Number($("steps").value) });
    recordTiming(performance.now() - t0);
    draw(reply);
    status("");
  } catch (err) {
    status(err.message);
    if (err.status === 404) await newSession();  // expired: start over rather than stall
  } finally {
    state.busy = false;
  }
  if (state.pending !== undefined) { const a = state.pending; state.pending = undefined; return step(a); }
  kick();
}

function kick() {  // live mode: keep one request in flight while playing
  if (!state.stepMode && state.playing && !state.busy && state.session) step(currentAction());
}

async function newSession() {
  state.busy = true;
  try {
    const reply = await api("POST", "/api/session", { context: $("context").value || null });
    state.session = reply.session;
    $("download").href = `/api/session/${reply.session}/video.mp4`;
    draw(reply);
    status("");
  } catch (err) {
    status(err.message);
  } finally {
    state.busy = false;
  }
  kick();
}

async function reset() {
  if (!state.session) return newSession();
  state.busy = true;
  try {
    draw(await api("POST", `/api/session/${state.session}/reset`, { context: $("context").value || null }));
    state.latencies = []; state.arrivals = [];
    status("");
  } catch (err) {
    status(err.message);
    if (err.status === 404) { state.busy = false; return newSession(); }
  } finally {
    state.busy = false;
  }
  kick();
}

function setPlaying(on) {
  state.playing = on;
  $("play").textContent = on ? "pause" : "play";
  kick();
}

async function main() {
  const params = new URLSearchParams(location.search);
  state.stepMode = params.get("mode") === "step";
  $("step-mode").checked = state.stepMode;
  try {
    state.info = await api("GET", "/api/info");
  } catch (err) { status(`cannot reach the play server: ${err.message}`); return; }
  const info = state.info;
  $("model").textContent = `${info.model} · ${info.device} · ${info.frame.width}×${info.frame.height}`;
  buildControls(info.actions);
  for (const name of info.contexts) {
    const opt = document.createElement("option"); opt.value = name; opt.textContent = name; $("context").appendChild(opt);
  }
  const slider = $("steps");
  slider.min = info.steps.min; slider.max = info.steps.max;
  slider.value = params.get("steps") || info.steps.default;
  $("steps-value").textContent = slider.value;
  slider.addEventListener("input", () => { $("steps-value").textContent = slider.value; });
  $("step-mode").addEventListener("change", (e) => { state.stepMode = e.target.checked; kick(); });
  $("play").addEventListener("click", () => setPlaying(!state.playing));
  $("reset").addEventListener("click", reset);
  $("context").addEventListener("change", reset);
  await newSession();
}

main();
