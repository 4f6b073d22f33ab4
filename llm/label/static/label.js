// The ranking page: one prompt and its answers; keyboard or mouse; every judgement is saved
// by the server before the page moves on. Model text is only ever set as textContent.
"use strict";

const state = { name: "", prompt: null, picks: [], busy: false };
const $ = (id) => document.getElementById(id);

async function call(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ labeller: state.name, ...body }) };
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.error || response.statusText);
  return reply;
}

function show(reply) {
  state.prompt = reply.prompt;
  state.picks = [];
  const p = reply.progress;
  $("progress").max = Math.max(1, p.total);
  $("progress").value = p.judged;
  $("progress-text").textContent = `${p.judged} / ${p.total} judged (${p.mine} by you)`;
  $("task").hidden = reply.prompt === null;
  $("done").hidden = reply.prompt !== null;
  if (reply.prompt === null) return;
  $("task").dataset.id = reply.prompt.id;
  $("prompt").textContent = reply.prompt.prompt;
  const answers = $("answers");
  answers.replaceChildren();
  reply.prompt.responses.forEach((text, i) => {
    const card = document.createElement("div");
    card.className = "answer";
    card.dataset.index = String(i);
    const key = document.createElement("div");
    key.className = "key";
    key.textContent = `Answer ${i + 1}`;
    const rank = document.createElement("span");
    rank.className = "rank";
    const body = document.createElement("pre");
    body.className = "text";
    body.textContent = text;
    card.append(key, rank, body);
    card.addEventListener("click", () => pick(i));
    answers.append(card);
  });
  drawPicks();
}

function drawPicks() {
  document.querySelectorAll(".answer").forEach((card) => {
    const at = state.picks.indexOf(Number(card.dataset.index));
    card.classList.toggle("picked", at >= 0);
    card.querySelector(".rank").textContent = at >= 0 ? `#${at + 1}` : "";
  });
}

async function act(path, body) {
  if (state.busy) return;
  state.busy = true;
  $("status").textContent = "";
  try {
    show(await call(path, body));
  } catch (error) {
    $("status").textContent = `Not saved: ${error.message}`;
  } finally {
    state.busy = false;
  }
}

function submit() {
  if (!state.prompt || state.picks.length === 0) return;
  act("/api/judge", { id: state.prompt.id, kind: "rank", ranking: state.picks });
}

function pick(i) {
  if (!state.prompt || state.busy || state.picks.includes(i)) return;
  state.picks.push(i);
  const k = state.prompt.responses.length;
  if (state.picks.length >= k - 1) {  // the last one's place is implied
    for (let j = 0; j < k; j++) if (!state.picks.includes(j)) state.picks.push(j);
    drawPicks();
    return submit();
  }
  drawPicks();
}

function judge(kind) {
  if (state.prompt) act("/api/judge", { id: state.prompt.id, kind });
}

function onKey(event) {
  if (!state.name || event.target.tagName === "INPUT" || event.ctrlKey || event.metaKey) return;
  const k = state.prompt ? state.prompt.responses.length : 0;
  const n = Number(event.key);
  if (Number.isInteger(n) && n >= 1 && n <= k) pick(n - 1);
  else if (event.key === "Enter") submit();
  else if (event.key === "t") judge("tie");
  else if (event.key === "s") judge("skip");
  else if (event.key === "u") act("/api/undo", {});
  else if (event.key === "Backspace") { state.picks.pop(); drawPicks(); }
  else if (event.key === "Escape") { state.picks = []; drawPicks(); }
  else return;
  event.preventDefault();
}

async function start(name) {
  state.name = name;
  localStorage.setItem("labeller", name);
  $("name-form").hidden = true;
  $("who").textContent = `labelling as ${name}`;
  state.busy = true;
  try {
    show(await call(`/api/next?labeller=${encodeURIComponent(name)}`));
  } catch (error) {
    $("status").textContent = error.message;
  } finally {
    state.busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.addEventListener("keydown", onKey);
  $("submit").addEventListener("click", submit);
  $("tie").addEventListener("click", () => judge("tie"));
  $("skip").addEventListener("click", () => judge("skip"));
  $("undo").addEventListener("click", () => act("/api/undo", {}));
  $("clear").addEventListener("click", () => { state.picks = []; drawPicks(); });
  $("name-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    if (name) start(name);
  });
  const saved = localStorage.getItem("labeller");
  if (saved) start(saved); else { $("name-form").hidden = false; $("name").focus(); }
});
