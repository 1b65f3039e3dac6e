// nst-jax web page: upload, submit, follow progress (server-sent events), cancel, download, history.
// All user-provided text (file names, error messages) is inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const STORAGE_KEY = "nst-jax-jobs";
const state = {
  config: null, files: { content: null, video: null, style: null, more: [] }, jobId: null, source: null,
  losses: new Map(), historyTimer: null,
};

function storedJobs() {
  try { return JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]").filter((x) => typeof x === "string"); }
  catch (e) { return []; }
}
function rememberJob(id) {
  const ids = [id].concat(storedJobs().filter((x) => x !== id)).slice(0, 50);
  localStorage.setItem(STORAGE_KEY, JSON.stringify(ids));
}
function forgetJob(id) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(storedJobs().filter((x) => x !== id)));
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  if (response.status !== 204) {
    try { body = await response.json(); } catch (e) { body = null; }
  }
  if (!response.ok) {
    const detail = body && body.detail;
    const message = typeof detail === "string" ? detail : (Array.isArray(detail) && detail.length ?
      detail.map((d) => (d.loc ? d.loc.slice(-1)[0] + ": " : "") + d.msg).join("; ") : response.statusText);
    const error = new Error(message || ("HTTP " + response.status));
    error.status = response.status;
    throw error;
  }
  return body;
}

function formatSeconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.round(s);
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  return Math.floor(m / 60) + " h " + (m % 60) + " min";
}

// ---- choosing files ------------------------------------------------------------------------------------------

function isClip(file) {
  return (file.type || "").startsWith("video/");  // A GIF is sent as a picture (its first frame).
}

function setFile(which, file) {
  if (!file) return;
  const clip = which === "content" && isClip(file);
  if (which === "content") {  // The first box takes a photo or a clip: one of the two is sent.
    state.files.content = clip ? null : file;
    state.files.video = clip ? file : null;
    $("clip-options").hidden = !clip;
  } else if (which === "style") {
    state.files.style = file;
  }
  const thumb = $(which + "-thumb");
  if (thumb.dataset.url) URL.revokeObjectURL(thumb.dataset.url);
  thumb.dataset.url = URL.createObjectURL(file);
  const player = which === "content" ? $("content-clip") : null;
  if (player) {
    player.hidden = !clip;
    if (clip) player.src = thumb.dataset.url; else player.removeAttribute("src");
  }
  thumb.hidden = clip;
  if (!clip) thumb.src = thumb.dataset.url;
  $(which + "-name").textContent = file.name;
  $("form-error").textContent = "";
}

function setMorePaintings(files) {
  // The paintings after the first (any number): sent as more `style` fields, in the order chosen.
  const images = files.filter((f) => !isClip(f));
  if (!images.length) return;
  setFile("style2", images[0]);
  state.files.more = images;
  $("style2-name").textContent = images.map((f) => f.name).join(", ");
  showSecondPainting(true);
}

function showSecondPainting(chosen) {
  $("opt-blend").disabled = !chosen;  // The blend share means something only with more paintings.
  $("style2-clear").hidden = !chosen;
}

function clearSecondPainting() {
  state.files.more = [];
  const thumb = $("style2-thumb");
  if (thumb.dataset.url) URL.revokeObjectURL(thumb.dataset.url);
  delete thumb.dataset.url;
  thumb.removeAttribute("src");
  thumb.hidden = true;
  $("style2-name").textContent = "";
  $("style2-input").value = "";
  showSecondPainting(false);
}

function setUpDrop(which) {
  const drop = $(which + "-drop");
  const input = $(which + "-input");
  const choose = (files) => which === "style2" ? setMorePaintings(Array.from(files)) : setFile(which, files[0]);
  input.addEventListener("change", () => choose(input.files));
  ["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => drop.addEventListener(type, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) choose(e.dataTransfer.files);
  });
}

// ---- presets and options -------------------------------------------------------------------------------------

function buildPresets(config) {
  const box = $("presets");
  Object.keys(config.presets).forEach((name) => {
    const label = document.createElement("label");
    label.className = "preset";
    const input = document.createElement("input");
    input.type = "radio"; input.name = "preset"; input.value = name;
    input.checked = name === config.default_preset;
    input.addEventListener("change", () => showPresetValues(name));
    const title = document.createElement("strong");
    title.textContent = " " + name;
    const text = document.createElement("span");
    text.textContent = config.presets[name].description;
    label.append(input, title, text);
    box.appendChild(label);
  });
  const select = $("opt-optimizer");
  config.optimizers.forEach((name) => {
    const option = document.createElement("option");
    option.value = name; option.textContent = name;
    select.appendChild(option);
  });
  select.value = "adam";
  const colors = $("opt-preserve-colors");
  config.preserve_colors.forEach((name) => {
    const option = document.createElement("option");
    option.value = name; option.textContent = name;
    colors.appendChild(option);
  });
  $("opt-size").max = config.max_size;
  $("opt-size").placeholder = config.default_size;
  $("opt-steps").max = config.max_steps;
  $("opt-steps").placeholder = config.default_steps;
  const modes = $("opt-video-mode");
  config.video_modes.forEach((name) => {
    const option = document.createElement("option");
    option.value = name; option.textContent = name;
    modes.appendChild(option);
  });
  $("clip-limits").textContent = "Clips: up to " + config.max_video_seconds + " s, " + config.max_video_frames +
    " frames, " + config.max_upload_mb + " MB; the result is an MP4 with the clip's sound.";
  showPresetValues(config.default_preset);
}

function showPresetValues(name) {
  const p = state.config.presets[name];
  const base = state.config.presets[state.config.default_preset];
  $("opt-content-weight").placeholder = p.content_weight !== undefined ? p.content_weight : base.content_weight;
  $("opt-style-weight").placeholder = p.style_weight !== undefined ? p.style_weight : base.style_weight;
  $("opt-tv-weight").placeholder = p.tv_weight !== undefined ? p.tv_weight : base.tv_weight;
  $("opt-steps").placeholder = p.steps !== undefined ? p.steps : state.config.default_steps;
  $("opt-optimizer").value = p.optimizer || "adam";
}

async function formData() {
  // The form as multipart data; throws when a region cannot be drawn.
  const data = new FormData();
  if (state.files.video) {
    data.append("video", state.files.video, state.files.video.name);
    data.append("video_mode", $("opt-video-mode").value);
    const weight = $("opt-temporal-weight").value.trim();
    if (weight !== "") data.append("temporal_weight", weight);
  } else {
    data.append("content", state.files.content, state.files.content.name);
  }
  data.append("style", state.files.style, state.files.style.name);
  const more = state.files.more;
  more.forEach((file) => data.append("style", file, file.name));  // Repeated, in order (as --style).
  if (more.length) {
    const share = Math.min(100, Math.max(0, Number($("opt-blend").value) || 0));
    const each = Math.round(share / more.length * 1000) / 1000;
    data.append("style_blend_weights", [100 - share].concat(more.map(() => each)).join(","));
  }
  data.append("preserve_colors", $("opt-preserve-colors").value);
  if ($("opt-region").value) {
    try {
      await appendRegions(data);
    } catch (e) {
      throw new Error("Could not draw the region: " + e.message);
    }
  }
  const preset = document.querySelector("input[name=preset]:checked");
  data.append("preset", preset ? preset.value : state.config.default_preset);
  [["opt-size", "max_size"], ["opt-steps", "steps"], ["opt-content-weight", "content_weight"],
   ["opt-style-weight", "style_weight"], ["opt-tv-weight", "tv_weight"]].forEach(([id, key]) => {
    const value = $(id).value.trim();
    if (value !== "") data.append(key, value);
  });
  if ($("advanced").open) data.append("optimizer", $("opt-optimizer").value);
  if ($("opt-tile").checked) data.append("tile", "true");
  return data;
}

async function estimateJob() {
  $("form-error").textContent = "";
  if (!state.files.content || !state.files.style) {
    $("form-error").textContent = "Choose a photo and a painting first.";
    return;
  }
  $("estimate").disabled = true;
  $("estimate-text").textContent = "Estimating...";
  try {
    const cost = await api("/api/estimate", { method: "POST", body: await formData() });
    $("estimate-text").textContent = cost.lines.join("\n") +
      (cost.fits ? "" : "\nDoes not fit the free memory" + (cost.max_size ? ": try size " + cost.max_size : ""));
  } catch (e) {
    $("estimate-text").textContent = "";
    $("form-error").textContent = e.message;
  } finally {
    $("estimate").disabled = false;
  }
}

async function submitJob(event) {
  event.preventDefault();
  $("form-error").textContent = "";
  if ((!state.files.content && !state.files.video) || !state.files.style) {
    $("form-error").textContent = "Choose a photo (or a clip) and a painting first.";
    return;
  }
  $("submit").disabled = true;
  try {
    const data = await formData();
    const job = await api("/api/jobs", { method: "POST", body: data });
    rememberJob(job.id);
    showJob(job.id);
    refreshHistory();
  } catch (e) {
    $("form-error").textContent = e.message;
  } finally {
    $("submit").disabled = false;
  }
}

// ---- spatial control: the region as a mask (docs/spatial-control.md) ----------------------------------------

function regionRect() {
  const pct = (id) => Math.min(100, Math.max(0, Number($(id).value) || 0)) / 100;
  const halves = { left: [0, 0, 0.5, 1], right: [0.5, 0, 0.5, 1], top: [0, 0, 1, 0.5], bottom: [0, 0.5, 1, 0.5] };
  return halves[$("opt-region").value] || [pct("rect-x"), pct("rect-y"), pct("rect-w"), pct("rect-h")];
}

function maskBlob(width, height, rect, inside) {
  // A greyscale PNG of the photo's aspect ratio: `inside` colour in the rectangle, the other colour around it.
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = inside ? "#000" : "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.fillStyle = inside ? "#fff" : "#000";
  ctx.fillRect(Math.round(rect[0] * width), Math.round(rect[1] * height), Math.round(rect[2] * width),
               Math.round(rect[3] * height));
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function appendRegions(data) {
  // The first painting's region (and the rest for each other painting), drawn at the photo's aspect ratio.
  const bitmap = await createImageBitmap(state.files.content);
  const scale = Math.min(1, 512 / Math.max(bitmap.width, bitmap.height));
  const width = Math.max(1, Math.round(bitmap.width * scale)), height = Math.max(1, Math.round(bitmap.height * scale));
  const rect = regionRect();
  data.append("style_region", await maskBlob(width, height, rect, true), "region.png");
  for (let i = 0; i < state.files.more.length; i++) {  // One style_region per painting, in the same order.
    data.append("style_region", await maskBlob(width, height, rect, false), "region" + (i + 2) + ".png");
  }
}

function showRegionOptions() {
  $("region-rect").hidden = $("opt-region").value !== "rect";
  $("region-note").hidden = !$("opt-region").value;
}

// ---- following one job ---------------------------------------------------------------------------------------

function showJob(id) {
  if (state.source) state.source.close();
  state.jobId = id;
  state.losses = new Map();  // step -> total loss (a reconnecting stream sends points again)
  $("current").hidden = false;
  $("result").hidden = true;
  $("preview").hidden = false;
  $("download-link").hidden = true;
  $("job-error").textContent = "";
  $("preview-img").removeAttribute("src");
  drawLosses();
  const source = new EventSource("/api/jobs/" + encodeURIComponent(id) + "/events");
  state.source = source;
  source.addEventListener("progress", (e) => {
    const job = JSON.parse(e.data);
    if (job.id !== state.jobId) return;
    job.losses.forEach((p) => state.losses.set(p.step, p.total));
    updateJob(job);
    drawLosses();
  });
  source.addEventListener("end", (e) => {
    source.close();
    const job = JSON.parse(e.data);
    if (job.id === state.jobId) updateJob(job);
    refreshHistory();
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) $("job-error").textContent = "Lost the connection to the server.";
  };
  $("current").scrollIntoView({ behavior: "smooth", block: "start" });
}

function updateJob(job) {
  $("job-label").textContent = job.label;
  $("job-status").textContent = job.status;
  const card = document.querySelector("#jobs li[data-job-id='" + CSS.escape(job.id) + "'] .job-status");
  if (card) card.textContent = cardStatus(job);  // The history follows the job it shows, not only its end.
  const clip = job.kind === "video";
  $("loss-canvas").parentElement.hidden = clip;  // A clip's losses restart with every frame: not drawn.
  $("job-step").textContent = (clip ? "frames " + job.frame + " / " + job.frames + " \u00b7 this frame: " : "") +
    "step " + job.step + " / " + job.steps;
  $("job-eta").textContent = job.eta_seconds !== null ? "about " + formatSeconds(job.eta_seconds) + " left" :
    (job.status === "running" ? "measuring the speed..." : "");
  $("job-queue").textContent = job.queue_position ? "position in queue: " + job.queue_position : "";
  // The server's share of the whole job (a clip: its finished frames plus the running frames' steps).
  $("job-progress").value = job.progress;
  const preview = $("preview-img");
  if (job.preview_url && preview.dataset.src !== job.preview_url) {
    preview.dataset.src = job.preview_url;
    preview.src = job.preview_url;
  } else if (!job.preview_url && preview.dataset.src !== job.content_url) {
    preview.dataset.src = job.content_url;
    preview.src = job.content_url;
  }
  $("cancel-button").hidden = !(job.status === "queued" || job.status === "running");
  $("job-error").textContent = job.error || (job.status === "cancelled" ? "Cancelled." : "");
  if (job.status === "done") {
    const img = $("result-img"), player = $("result-video");
    const shown = clip ? player : img;
    if (shown.dataset.src !== job.result_url) { shown.dataset.src = job.result_url; shown.src = job.result_url; }
    img.hidden = clip;
    player.hidden = !clip;
    $("result-caption").textContent = clip ? "Finished video" + (job.temporal_error !== null ?
      " \u00b7 flicker (temporal error) " + job.temporal_error.toPrecision(3) : "") : "Finished picture";
    $("result").hidden = false;
    $("preview").hidden = true;
    const link = $("download-link");
    link.href = job.download_url;
    link.hidden = false;
  }
}

function drawLosses() {
  const canvas = $("loss-canvas");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
  const points = Array.from(state.losses.entries()).filter((p) => p[1] > 0 && isFinite(p[1]))
    .sort((a, b) => a[0] - b[0]);
  ctx.fillStyle = "#666"; ctx.font = "12px sans-serif";
  if (points.length < 1) { ctx.fillText("waiting for the first losses...", pad, h / 2); return; }
  const maxStep = Math.max(...points.map((p) => p[0]), 1);
  const logs = points.map((p) => Math.log10(p[1]));
  let lo = Math.min(...logs), hi = Math.max(...logs);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const x = (s) => pad + (w - pad - 10) * s / maxStep;
  const y = (v) => h - pad + (pad + 10 - h) * (v - lo) / (hi - lo);
  ctx.strokeStyle = "#ccc"; ctx.beginPath();
  ctx.moveTo(pad, 10); ctx.lineTo(pad, h - pad); ctx.lineTo(w - 10, h - pad); ctx.stroke();
  ctx.fillText("1e" + hi.toFixed(1), 2, 16);
  ctx.fillText("1e" + lo.toFixed(1), 2, h - pad);
  ctx.fillText("step " + maxStep, w - 70, h - 12);
  ctx.strokeStyle = "#7a3e9d"; ctx.lineWidth = 2; ctx.beginPath();
  points.forEach((p, i) => { const px = x(p[0]), py = y(logs[i]); i ? ctx.lineTo(px, py) : ctx.moveTo(px, py); });
  ctx.stroke();
}

async function cancelJob() {
  if (!state.jobId) return;
  try { updateJob(await api("/api/jobs/" + encodeURIComponent(state.jobId) + "/cancel", { method: "POST" })); }
  catch (e) { $("job-error").textContent = e.message; }
}

// ---- this browser's jobs -------------------------------------------------------------------------------------

function cardStatus(job) {
  const work = job.kind === "video" ? "clip, " + job.frames + " frames" : job.steps + " steps";
  return job.status + " \u00b7 " + new Date(job.created * 1000).toLocaleString() +
    " \u00b7 " + job.width + "\u00d7" + job.height + " \u00b7 " + work;
}

async function refreshHistory() {
  let jobs = [];
  try { jobs = await api("/api/jobs"); } catch (e) { return; }
  const known = new Set(jobs.map((j) => j.id));
  storedJobs().forEach((id) => { if (!known.has(id)) forgetJob(id); });  // Deleted on the server.
  jobs.slice().reverse().forEach((j) => rememberJob(j.id));  // The server lists newest first; keep that order.
  const list = $("jobs");
  list.replaceChildren();
  $("jobs-empty").hidden = jobs.length > 0;
  jobs.forEach((job) => {
    const item = document.createElement("li");
    item.dataset.jobId = job.id;
    const img = document.createElement("img");
    img.alt = "";
    img.src = (job.kind === "video" ? null : job.result_url) || job.preview_url || job.content_url;
    const name = document.createElement("div");
    name.className = "job-name";
    name.textContent = job.label;
    const status = document.createElement("div");
    status.className = "job-status";
    status.textContent = cardStatus(job);
    item.append(img, name, status);
    item.addEventListener("click", () => showJob(job.id));
    list.appendChild(item);
  });
  // The followed job's card changes with its events (updateJob); other active jobs' cards are polled.
  clearTimeout(state.historyTimer);
  if (jobs.some((j) => j.id !== state.jobId && (j.status === "queued" || j.status === "running"))) {
    state.historyTimer = setTimeout(refreshHistory, 3000);
  }
}

async function init() {
  state.config = await api("/api/config");
  buildPresets(state.config);
  setUpDrop("content");
  setUpDrop("style");
  setUpDrop("style2");
  $("style2-clear").addEventListener("click", clearSecondPainting);
  $("opt-region").addEventListener("change", showRegionOptions);
  $("job-form").addEventListener("submit", submitJob);
  $("estimate").addEventListener("click", estimateJob);
  $("cancel-button").addEventListener("click", cancelJob);
  await refreshHistory();
  const active = document.querySelector("#jobs li");
  if (active && !state.jobId) {
    const jobs = await api("/api/jobs");
    const running = jobs.find((j) => j.status === "running" || j.status === "queued");
    if (running) showJob(running.id);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  init().catch((e) => { $("form-error").textContent = "Could not reach the server: " + e.message; });
});
