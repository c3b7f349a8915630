// The chat page: plain JavaScript, no build step, nothing loaded from elsewhere.
// One conversation at a time; its image or video rides in the first user message (as
// `llava-mini-jax chat` does); answers stream from POST /v1/chat/completions as server-sent events.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, messages: [], media: null, controller: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

function addMessage(role, text, media) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (media) {
    const el = document.createElement(media.kind === "video" ? "video" : "img");
    el.src = media.url;
    if (media.kind === "video") { el.controls = true; el.muted = true; }
    div.appendChild(el);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.appendChild(span);
  $("messages").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function errorText(resp) {
  try { return (await resp.json()).error.message; } catch (e) { return resp.status + " " + resp.statusText; }
}

async function loadModel() {
  try {
    const resp = await fetch("/v1/models", { headers: headers() });
    if (!resp.ok) { $("model").textContent = "(" + (await errorText(resp)) + ")"; return; }
    state.model = (await resp.json()).data[0].id;
    $("model").textContent = state.model;
  } catch (e) { $("model").textContent = "(server unreachable)"; }
}

function setMedia(file) {
  if (!file) return;
  const kind = file.type.startsWith("video/") ? "video" : file.type.startsWith("image/") ? "image" : null;
  if (!kind) { setStatus("not an image or a video: " + file.name); return; }
  const reader = new FileReader();
  reader.onload = () => {
    if (state.messages.length) newChat();  // new media, new conversation
    state.media = { kind, url: reader.result, name: file.name };
    const preview = $("preview");
    preview.replaceChildren();
    const el = document.createElement(kind === "video" ? "video" : "img");
    el.src = reader.result;
    if (kind === "video") { el.controls = true; el.muted = true; }
    preview.appendChild(el);
    setStatus(kind + ": " + file.name);
  };
  reader.readAsDataURL(file);
}

function newChat() {
  if (state.controller) state.controller.abort();
  state.messages = [];
  state.media = null;
  $("messages").replaceChildren();
  $("preview").replaceChildren();
  setStatus("");
}

function userMessage(text) {
  const first = state.messages.length === 0;
  if (!first || !state.media) return { role: "user", content: text };
  const part = state.media.kind === "video"
    ? { type: "video_url", video_url: { url: state.media.url } }
    : { type: "image_url", image_url: { url: state.media.url } };
  return { role: "user", content: [{ type: "text", text }, part] };
}

async function send(event) {
  if (event) event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || state.controller) return;
  if (!state.model) await loadModel();
  const first = state.messages.length === 0;
  const message = userMessage(text);
  addMessage("user", text, first ? state.media : null);
  $("prompt").value = "";
  const bubble = addMessage("assistant", "");
  const out = bubble.querySelector(".text");
  const controller = new AbortController();
  state.controller = controller;
  $("send").disabled = true;
  $("stop").disabled = false;
  const started = performance.now();
  let firstToken = null, answer = "", usage = null, finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({ model: state.model, messages: state.messages.concat([message]), stream: true,
                             stream_options: { include_usage: true } }),
    });
    if (!resp.ok) throw new Error(await errorText(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 2);
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) {
            if (firstToken === null) firstToken = performance.now() - started;
            answer += choice.delta.content;
            out.textContent = answer;
            bubble.scrollIntoView({ block: "end" });
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    state.messages.push(message, { role: "assistant", content: answer });
    const parts = [];
    if (firstToken !== null) parts.push("first token " + Math.round(firstToken) + " ms");
    if (usage) parts.push(usage.prompt_tokens + " prompt + " + usage.completion_tokens + " answer tokens");
    if (finish) parts.push("finish: " + finish);
    setStatus(parts.join(" · "));
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
      state.messages.push(message, { role: "assistant", content: answer });
    } else {
      addMessage("error", String(e.message || e));
      setStatus("error");
    }
  } finally {
    bubble.dataset.done = "true";
    state.controller = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) send(e);
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("new-chat").addEventListener("click", newChat);
$("file").addEventListener("change", (e) => setMedia(e.target.files[0]));
$("api-key").addEventListener("change", loadModel);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  setMedia(e.dataTransfer.files[0]);
});
loadModel();
