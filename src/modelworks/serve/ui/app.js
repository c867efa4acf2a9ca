// modelworks web page. Discovers what the server offers from /openapi.json and /v1/models, then
// shows a streaming chat (POST /v1/chat/completions with stream: true, or /v1/completions when the
// server has no chat endpoint) and a panel for the run's task endpoint. Public endpoints only.
"use strict";

const $ = (id) => document.getElementById(id);
const TASK_PATHS = ["/v1/classify", "/v1/recommend", "/v1/explain", "/v1/embeddings"];
const state = { model: null, paths: new Set(), history: [], abort: null };

function headers(json = true) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const key = $("api-key").value.trim();
  if (key) h.authorization = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return (body.error && body.error.message) || JSON.stringify(body);
  } catch (e) {
    return resp.status + " " + resp.statusText;
  }
}

// ---------------------------------------------------------------- discovery and health

async function discover() {
  try {
    const spec = await (await fetch("openapi.json")).json();
    Object.keys(spec.paths || {}).forEach((p) => state.paths.add(p));
    state.spec = spec;
  } catch (e) {
    // no OpenAPI document: assume the OpenAI endpoints and let requests tell us otherwise
    ["/v1/chat/completions", "/v1/completions"].forEach((p) => state.paths.add(p));
  }
  for (let i = 0; ; i++) {
    const ok = await checkHealth();
    if (ok) break;
    await new Promise((r) => setTimeout(r, Math.min(500 * (i + 1), 3000)));
  }
  await loadModels();
  setupPanels();
  setInterval(checkHealth, 10000);
}

async function loadModels() {
  try {
    const resp = await fetch("v1/models", { headers: headers(false) });
    if (resp.ok) {
      const models = (await resp.json()).data || [];
      state.model = models[0] || null;
      const context = state.model && state.model.max_model_len;
      if (context) { // leave room for the prompt in a small model's context
        $("max-tokens").max = context;
        $("max-tokens").value = Math.min(Number($("max-tokens").value), Math.floor(context / 2));
      }
      $("model").textContent = models.map((m) => m.id).join(", ") || "no model";
    } else {
      $("model").textContent = "models: " + (await errorText(resp));
    }
  } catch (e) {
    showError("cannot reach the server: " + e);
  }
}

async function checkHealth() {
  const el = $("health");
  try {
    const resp = await fetch("health");
    if (resp.ok) {
      el.dataset.state = "ok";
      el.textContent = "ready";
      return true;
    }
    el.dataset.state = "loading";
    el.textContent = await errorText(resp);
  } catch (e) {
    el.dataset.state = "down";
    el.textContent = "server unreachable";
  }
  return false;
}

function setupPanels() {
  const hasChat = state.paths.has("/v1/chat/completions");
  const hasCompletions = state.paths.has("/v1/completions");
  if (hasChat || hasCompletions) {
    $("chat-panel").hidden = false;
    state.mode = hasChat ? "chat" : "completion";
    $("chat-mode").textContent = hasChat ? "/v1/chat/completions" : "/v1/completions";
    $("prompt").focus();
  }
  if (state.paths.has("/v1/images/classify")) $("image-panel").hidden = false;
  if (state.paths.has("/v1/images/generations")) setupGallery();
  if (state.paths.has("/v1/images/detect")) $("detect-panel").hidden = false;
  const tasks = TASK_PATHS.filter((p) => state.paths.has(p));
  if (tasks.length) {
    $("task-panel").hidden = false;
    $("task-endpoint").innerHTML = "";
    tasks.forEach((p) => $("task-endpoint").append(new Option(p, p)));
    $("task-body").value = exampleBody(tasks[0]);
  }
}

// A starting JSON body for a task endpoint, from its request schema in the OpenAPI document.
function exampleBody(path) {
  const body = {};
  try {
    const op = state.spec.paths[path].post;
    let schema = op.requestBody.content["application/json"].schema;
    if (schema.$ref) schema = state.spec.components.schemas[schema.$ref.split("/").pop()];
    for (const name of schema.required || Object.keys(schema.properties || {}).slice(0, 2)) {
      const type = (schema.properties[name] || {}).type;
      body[name] = type === "integer" || type === "number" ? 1 : type === "array" ? [] : "";
    }
  } catch (e) {
    body.input = "";
  }
  if (state.model && !("model" in body)) body.model = state.model.id;
  return JSON.stringify(body, null, 2);
}

// ---------------------------------------------------------------- chat with streaming

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

// Reads a text/event-stream body and calls onData(json) for every `data: {...}` event.
async function readSSE(resp, onData) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onData(JSON.parse(data));
    }
  }
}

function sampling() {
  const num = (id, fallback) => {
    const v = parseFloat($(id).value);
    return Number.isFinite(v) ? v : fallback;
  };
  return {
    max_tokens: Math.max(1, Math.round(num("max-tokens", 64))),
    temperature: num("temperature", 0.8),
    top_p: num("top-p", 1),
  };
}

async function send(text) {
  showError("");
  state.history.push({ role: "user", content: text });
  addMessage("user", text);
  const out = addMessage("assistant streaming", "");
  out.dataset.tokens = "0";
  $("send").disabled = true;
  $("stop").disabled = false;
  state.abort = new AbortController();
  const started = performance.now();
  let first = null;
  let reply = "";
  const append = (piece) => {
    if (!piece) return;
    if (first === null) first = performance.now();
    reply += piece;
    out.textContent = reply;
    out.dataset.tokens = String(Number(out.dataset.tokens) + 1);
    $("messages").scrollTop = $("messages").scrollHeight;
  };
  try {
    let resp = await request(state.mode);
    if (resp.status === 404 && state.mode === "chat" && state.paths.has("/v1/completions")) {
      state.mode = "completion"; // the server lost or never had chat: use plain completions
      $("chat-mode").textContent = "/v1/completions";
      resp = await request("completion");
    }
    if (!resp.ok) throw new Error(await errorText(resp));
    await readSSE(resp, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      for (const choice of chunk.choices || []) {
        append(choice.delta ? choice.delta.content : choice.text);
      }
    });
    state.history.push({ role: "assistant", content: reply });
  } catch (e) {
    if (e.name !== "AbortError") {
      out.classList.add("error");
      showError(String(e.message || e));
    }
    if (reply) state.history.push({ role: "assistant", content: reply });
  } finally {
    out.classList.remove("streaming");
    out.dataset.done = "1";
    const n = Number(out.dataset.tokens);
    const ttft = first === null ? "-" : Math.round(first - started) + " ms";
    const secs = (performance.now() - started) / 1000;
    $("chat-stats").textContent = `${n} chunks, first after ${ttft}, ${secs.toFixed(2)} s`;
    $("send").disabled = false;
    $("stop").disabled = true;
    state.abort = null;
  }
}

function request(mode) {
  const body = { stream: true, ...sampling() };
  if (state.model) body.model = state.model.id;
  let path;
  if (mode === "chat") {
    path = "v1/chat/completions";
    body.messages = state.history;
  } else {
    path = "v1/completions";
    // no chat template on this path: the conversation so far as plain text
    body.prompt = state.history.map((m) => m.content).join("\n");
  }
  return fetch(path, {
    method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.abort.signal,
  });
}

$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || $("send").disabled) return;
  $("prompt").value = "";
  send(text);
});
$("prompt").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("chat-form").requestSubmit();
  }
});
$("stop").addEventListener("click", () => state.abort && state.abort.abort());
$("clear").addEventListener("click", () => {
  state.history = [];
  $("messages").innerHTML = "";
  $("chat-stats").textContent = "";
});

// ---------------------------------------------------------------- image classification

// A file as a data: URL (what the image endpoints take as `image`).
function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

async function classifyImage(file) {
  showError("");
  const dataUrl = await readDataUrl(file);
  $("image-preview").src = dataUrl;
  $("image-result").innerHTML = "<li class='muted'>classifying…</li>";
  const body = { image: dataUrl, top_k: 5 };
  if (state.model) body.model = state.model.id;
  const resp = await fetch("v1/images/classify", {
    method: "POST", headers: headers(), body: JSON.stringify(body),
  });
  $("image-result").innerHTML = "";
  if (!resp.ok) {
    showError(await errorText(resp));
    return;
  }
  for (const item of (await resp.json()).data[0].labels) {
    const li = document.createElement("li");
    li.textContent = `${item.label} ${(100 * item.probability).toFixed(1)}%`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(1, Math.round(200 * item.probability)) + "px";
    li.append(bar);
    $("image-result").append(li);
  }
}

$("image-file").addEventListener("change", (ev) => {
  if (ev.target.files[0]) classifyImage(ev.target.files[0]).catch((e) => showError(String(e)));
});
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  const file = ev.dataTransfer.files[0];
  if (file) classifyImage(file).catch((e) => showError(String(e)));
});

// ---------------------------------------------------------------- object detection

// Sends the image to /v1/images/detect and draws the boxes it returns over it on a canvas
// (scaled up so that small images stay readable).
async function detectImage(file) {
  showError("");
  const dataUrl = await readDataUrl(file);
  const img = new Image();
  await new Promise((resolve, reject) => { img.onload = resolve; img.onerror = reject; img.src = dataUrl; });
  const body = { image: dataUrl, score_threshold: Number($("detect-threshold").value) };
  if (state.model) body.model = state.model.id;
  $("detect-stats").textContent = "detecting…";
  const resp = await fetch("v1/images/detect", {
    method: "POST", headers: headers(), body: JSON.stringify(body),
  });
  if (!resp.ok) {
    $("detect-stats").textContent = "";
    showError(await errorText(resp));
    return;
  }
  const found = (await resp.json()).data[0].detections;
  const scale = Math.max(1, Math.floor(384 / Math.max(img.width, img.height)));
  const canvas = $("detect-canvas");
  canvas.width = img.width * scale;
  canvas.height = img.height * scale;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  ctx.lineWidth = 2;
  ctx.font = "14px sans-serif";
  for (const d of found) {
    const [x1, y1, x2, y2] = d.box.map((v) => v * scale);
    ctx.strokeStyle = ctx.fillStyle = "#e4572e";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillText(`${d.label} ${d.score.toFixed(2)}`, x1 + 2, Math.max(12, y1 - 3));
  }
  $("detect-stats").textContent = `${found.length} box(es)`;
}

$("detect-file").addEventListener("change", (ev) => {
  if (ev.target.files[0]) detectImage(ev.target.files[0]).catch((e) => showError(String(e)));
});

// ---------------------------------------------------------------- image generation gallery

function setupGallery() {
  $("gallery-panel").hidden = false;
  $("gen-class").innerHTML = "";
  ((state.model && state.model.classes) || []).forEach((c) => $("gen-class").append(new Option(c, c)));
}

$("gen-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError("");
  const body = { prompt: $("gen-class").value, n: Number($("gen-n").value),
                 size: "64x64", response_format: "b64_json" };
  if ($("gen-seed").value !== "") body.seed = Number($("gen-seed").value);
  if (state.model) body.model = state.model.id;
  $("gen-send").disabled = true;
  try {
    const resp = await fetch("v1/images/generations", {
      method: "POST", headers: headers(), body: JSON.stringify(body),
    });
    if (!resp.ok) {
      showError(await errorText(resp));
      return;
    }
    $("gallery").innerHTML = "";
    for (const item of (await resp.json()).data) {
      const img = document.createElement("img");
      img.src = "data:image/png;base64," + item.b64_json;
      img.alt = item.revised_prompt;
      img.title = item.revised_prompt;
      $("gallery").append(img);
    }
  } catch (e) {
    showError(String(e));
  } finally {
    $("gen-send").disabled = false;
  }
});

// ---------------------------------------------------------------- other task endpoints

$("task-endpoint").addEventListener("change", () => {
  $("task-body").value = exampleBody($("task-endpoint").value);
});
$("task-send").addEventListener("click", async () => {
  showError("");
  let body;
  try {
    body = JSON.parse($("task-body").value);
  } catch (e) {
    showError("the request body is not valid JSON: " + e.message);
    return;
  }
  const path = $("task-endpoint").value.replace(/^\//, "");
  const resp = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  $("task-result").textContent = resp.ok
    ? JSON.stringify(await resp.json(), null, 2)
    : resp.status + ": " + (await errorText(resp));
});

$("api-key").value = localStorage.getItem("modelworks-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("modelworks-api-key", $("api-key").value.trim());
  loadModels(); // /v1/models needs the key when the server has any
});
discover();
