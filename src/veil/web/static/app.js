/* veil web page: upload, anonymize, compare, correct, download.
 *
 * Plain JavaScript, no build step, no third-party code. Each photo is sent as its own
 * job, so one bad file never takes the others down. Originals stay in the browser (the
 * "before" view and manual corrections re-use the local File); results are kept as Blobs
 * and vanish when their job expires on the server.
 *
 * Videos go the same way, one job each, but their results stay on the server (they can
 * be gigabytes): they play from the server's Range-capable download through a
 * short-lived link (POST .../link), because a <video src> or a plain download link
 * cannot send the API key header, and a link that works for one result for an hour at
 * most leaks far less than a key would. The "before" side plays the local file.
 */
(() => {
  "use strict";

  const API = "/api/v1";
  const SETTINGS_KEY = "veil.settings.v1";
  const API_KEY = "veil.apiKey";
  /* What the server accepts and which options it takes come from the API (GET /formats,
   * GET /options: the server's one description of each), never restated here. */
  const ACCEPT_EXT = [];
  const ACCEPT_MIME = [];
  const VIDEO_EXT = [];
  const VIDEO_MIME = [];
  const EXT_OF_TYPE = {};
  const LABELS = { image: [], video: [] };
  /** Image formats browsers cannot show: they come back as JPEG so the page can preview them. */
  const NEEDS_JPEG = ["heif", "tiff"];
  const JPEG_EXT = [];
  const JPEG_MIME = [];
  const LINK_MARGIN_MS = 5 * 60 * 1000; // ask for a fresh download link this long before one expires
  /** The page's settings at their defaults: from GET /options (else the form as written). */
  const DEFAULTS = {};
  const TARGETS = [];
  const NOUNS = { face: ["face", "faces"], person: ["body", "bodies"], plate: ["plate", "plates"], head: ["head", "heads"] };
  const REGION_NAMES = { face: "Face", person: "Body", plate: "Plate", head: "Head" };
  const PARALLEL = 2; // photos in flight at once
  const POLL_MS = 700;

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) if (c !== null && c !== undefined) n.append(c);
    return n;
  };

  /* ------------------------------------------------------------------ state -- */
  const server = { auth: "open", maxFileBytes: 100 * 1024 * 1024, maxVideoBytes: 2048 * 1024 * 1024, ttl: null,
    ready: true, reachable: null };
  const items = []; // every photo the page knows about, in the order added
  let nextId = 1;
  let running = 0;

  /* -------------------------------------------------------------- utilities -- */
  function formatBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
    if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(n < 10 * 1024 * 1024 ? 1 : 0)} MB`;
    return `${(n / 1024 / 1024 / 1024).toFixed(1)} GB`;
  }
  const pad2 = (n) => String(n).padStart(2, "0");
  function formatTime(d) {
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    const now = new Date();
    if (d.toDateString() === now.toDateString()) return hm;
    return `${d.toLocaleDateString(undefined, { day: "numeric", month: "short" })} ${hm}`;
  }
  function plural(n, target) {
    const [one, many] = NOUNS[target] || [target, `${target}s`];
    return `${n} ${n === 1 ? one : many}`;
  }
  function extOf(name) {
    const m = /\.([^.]+)$/.exec(name || "");
    return m ? m[1].toLowerCase() : "";
  }
  function stemOf(name) {
    return (name || "photo").replace(/\.[^.]+$/, "") || "photo";
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  function announce(text, urgent = false) {
    const node = $(urgent ? "announce-alert" : "announce-polite");
    node.textContent = "";
    // a fresh text node so screen readers speak repeated messages too
    setTimeout(() => { node.textContent = text; }, 30);
  }

  class ApiError extends Error {
    constructor(message, status = 0, retryable = false, retryAfter = null) {
      super(message);
      this.status = status;
      this.retryable = retryable;
      this.retryAfter = retryAfter;
    }
  }

  function problemMessage(status, text, contentType) {
    let detail = "";
    if (text && /json/.test(contentType || "")) {
      try {
        const body = JSON.parse(text);
        detail = body.detail || body.title || "";
        if (Array.isArray(body.errors) && body.errors.length && !detail) detail = body.errors[0].message;
      } catch (_) { /* not JSON after all */ }
    }
    if (!detail) {
      detail = {
        401: "An API key is required.", 404: "Not found on the server (it may have expired).",
        413: "The file is too large for this server.", 415: "This file is not a supported image.",
        429: "Too many requests; try again shortly.", 503: "The server is busy; try again shortly.",
      }[status] || `The server answered ${status}.`;
    }
    // "files[0] is not a supported image…" reads better as "This file is not…"
    detail = detail.replace(/^files?(\[\d+\])?:?\s+(?=is\b|has\b|exceeds\b)/i, "This file ");
    return detail.charAt(0).toUpperCase() + detail.slice(1);
  }

  function errorFromResponse(status, text, contentType, retryAfter) {
    const retryable = status === 429 || status === 503 || status >= 500;
    const ra = retryAfter ? Math.min(60, Math.max(1, parseInt(retryAfter, 10) || 3)) : null;
    return new ApiError(problemMessage(status, text, contentType), status, retryable, ra);
  }

  /* ------------------------------------------------------------ server clock -- */
  // Expiry times come from the server's clock; a browser whose clock is off by more than
  // half a minute would otherwise show (and act on) the wrong time.
  let clockSkewMs = 0;
  function noteServerClock(dateHeader) {
    const server = Date.parse(dateHeader || "");
    if (!Number.isFinite(server)) return;
    const skew = server - Date.now();
    clockSkewMs = Math.abs(skew) > 30_000 ? skew : 0;
  }
  function serverTime(iso) {
    const t = Date.parse(iso || "");
    return Number.isFinite(t) ? new Date(t - clockSkewMs) : null;
  }

  /* ---------------------------------------------------------------- API key -- */
  function getKey() {
    try { return sessionStorage.getItem(API_KEY) || ""; } catch (_) { return ""; }
  }
  function setKey(k) {
    try {
      if (k) sessionStorage.setItem(API_KEY, k); else sessionStorage.removeItem(API_KEY);
    } catch (_) { /* storage blocked: the key lives only as long as this call */ }
    updateServerState();
  }
  function authHeaders() {
    const k = getKey();
    return k ? { Authorization: `Bearer ${k}` } : {};
  }

  let keyPrompt = null;
  let keyDeclinedAt = 0;
  /** Ask for a key once, however many requests are waiting for it. Resolves true if one was given. */
  function askForKey(message) {
    if (keyPrompt) return keyPrompt;
    const dlg = $("key-dialog");
    $("key-message").textContent = message;
    $("key-input").value = "";
    keyPrompt = new Promise((resolve) => {
      const done = (ok) => {
        dlg.removeEventListener("close", onClose);
        keyPrompt = null;
        resolve(ok);
      };
      const onClose = () => {
        const ok = dlg.returnValue === "ok" && !!getKey();
        if (!ok) keyDeclinedAt = Date.now();
        done(ok);
      };
      dlg.addEventListener("close", onClose);
      dlg.returnValue = "";
      if (!dlg.open) dlg.showModal();
      $("key-input").focus();
    });
    return keyPrompt;
  }

  async function handle401(hadKey) {
    // one "Cancel" answers for every request that was waiting, not one prompt each
    if (!keyPrompt && Date.now() - keyDeclinedAt < 5000) throw new ApiError("An API key is needed to use this server.", 401, false);
    const ok = await askForKey(hadKey
      ? "That API key was not accepted. Check it and try again."
      : "This veil server only accepts requests with an API key.");
    if (!ok) throw new ApiError("An API key is needed to use this server.", 401, false);
  }

  /** fetch() with the key, problem+json errors, and a key prompt on 401. */
  async function api(path, init = {}) {
    for (let attempt = 0; attempt < 6; attempt++) {
      const hadKey = !!getKey();
      let res;
      try {
        res = await fetch(path, { ...init, headers: { ...(init.headers || {}), ...authHeaders() }, cache: "no-store" });
      } catch (_) {
        throw new ApiError("The veil server can't be reached. Is it still running?", 0, true);
      }
      if (res.status === 401) {
        await handle401(hadKey);
        continue;
      }
      noteServerClock(res.headers.get("date"));
      if (!res.ok) {
        const text = await res.text().catch(() => "");
        throw errorFromResponse(res.status, text, res.headers.get("content-type"), res.headers.get("retry-after"));
      }
      return res;
    }
    throw new ApiError("An API key is needed to use this server.", 401, false);
  }

  /** POST a form with upload progress (fetch has none). Resolves to {status, json}. */
  function xhrPost(path, form, onProgress, item) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      item.xhr = xhr;
      xhr.open("POST", path);
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => {
        item.xhr = null;
        resolve({ status: xhr.status, text: xhr.responseText, contentType: xhr.getResponseHeader("content-type"),
          retryAfter: xhr.getResponseHeader("retry-after") });
      });
      xhr.addEventListener("error", () => {
        item.xhr = null;
        reject(new ApiError("The upload failed: the veil server can't be reached.", 0, true));
      });
      xhr.addEventListener("abort", () => {
        item.xhr = null;
        reject(new ApiError("Cancelled.", -1, false));
      });
      xhr.send(form);
    });
  }

  /* --------------------------------------------------------------- settings -- */
  function loadSettings() {
    let s = {};
    try { s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {}; } catch (_) { s = {}; }
    const out = { ...DEFAULTS, ...s };
    if (!Array.isArray(out.targets)) out.targets = DEFAULTS.targets.slice();
    out.targets = out.targets.filter((t) => TARGETS.includes(t));
    return out;
  }
  function saveSettings(s) {
    try { localStorage.setItem(SETTINGS_KEY, JSON.stringify(s)); } catch (_) { /* private mode */ }
  }
  function readForm() {
    const form = $("options-form");
    return {
      targets: [...form.querySelectorAll('input[name="targets"]:checked')].map((i) => i.value),
      preset: $("opt-preset").value,
      style: $("opt-style").value,
      shape: $("opt-shape").value,
      color: $("opt-color").value,
      strength: Number($("opt-strength").value),
      feather: Number($("opt-feather").value) / 100,
    };
  }
  function writeForm(s) {
    for (const box of document.querySelectorAll('input[name="targets"]')) box.checked = s.targets.includes(box.value);
    $("opt-preset").value = s.preset;
    $("opt-style").value = s.style;
    $("opt-shape").value = s.shape || "";
    $("opt-color").value = /^#[0-9a-f]{6}$/i.test(s.color) ? s.color : DEFAULTS.color;
    $("opt-strength").value = s.strength;
    $("opt-feather").value = Math.round(s.feather * 100);
    syncFormLabels();
  }
  function syncFormLabels() {
    $("out-strength").textContent = $("opt-strength").value;
    $("out-feather").textContent = `${$("opt-feather").value}%`;
    const fill = $("opt-style").value === "fill";
    $("color-field").hidden = !fill;
    $("targets-error").hidden = readForm().targets.length > 0;
    updateRunButton();
  }
  /** The options object sent to the API. */
  function apiOptions(s) {
    const o = { targets: s.targets, preset: s.preset, style: s.style, strength: s.strength, feather: s.feather };
    if (s.shape) o.shape = s.shape;
    if (s.style === "fill") o.color = s.color;
    return o;
  }

  /* ------------------------------------------------------------ add photos -- */
  function needsJpeg(file) {
    return JPEG_EXT.includes(extOf(file.name)) || JPEG_MIME.includes((file.type || "").toLowerCase());
  }

  function isVideo(file) {
    const ext = extOf(file.name);
    if (VIDEO_EXT.includes(ext)) return true;
    return !ACCEPT_EXT.includes(ext) && VIDEO_MIME.includes((file.type || "").toLowerCase());
  }

  function accepts(file) {
    const ext = extOf(file.name);
    if (ACCEPT_EXT.includes(ext) || VIDEO_EXT.includes(ext)) return true;
    const type = (file.type || "").toLowerCase();
    return !ext && (ACCEPT_MIME.includes(type) || VIDEO_MIME.includes(type));
  }

  /** "photo(s)", "video(s)" or "file(s)" for a list of items (or files). */
  function nounFor(list) {
    const videos = list.filter((i) => (i.kind ? i.kind === "video" : isVideo(i))).length;
    const word = videos === 0 ? "photo" : videos === list.length ? "video" : "file";
    return list.length === 1 ? word : `${word}s`;
  }

  function addFiles(fileList) {
    const rejected = [];
    let added = 0;
    for (const file of fileList) {
      const limit = isVideo(file) ? server.maxVideoBytes : server.maxFileBytes;
      if (!accepts(file)) {
        rejected.push(`${file.name}: not a ${orList(LABELS.image)} photo, nor ${anOrA(orList(LABELS.video))} video.`);
      } else if (file.size === 0) {
        rejected.push(`${file.name}: the file is empty.`);
      } else if (file.size > limit) {
        rejected.push(`${file.name}: ${formatBytes(file.size)} is over the ${formatBytes(limit)} limit.`);
      } else {
        items.push(newItem(file));
        added++;
      }
    }
    showRejected(rejected);
    if (added) {
      announce(`${added} ${nounFor(items.slice(-added))} added.`);
      renderQueue();
    }
    updateRunButton();
  }

  function showRejected(lines) {
    const box = $("reject-box");
    if (!lines.length) { box.hidden = true; return; }
    const text = $("reject-text");
    text.replaceChildren(
      el("p", { class: "notice-title", text: lines.length === 1 ? "This file was not added:" : `${lines.length} files were not added:` }),
      el("ul", {}, ...lines.map((l) => el("li", { text: l }))),
    );
    box.hidden = false;
  }

  function newItem(file) {
    return {
      id: nextId++, file, name: file.name || "photo", size: file.size, state: "ready", progress: 0,
      kind: isVideo(file) ? "video" : "image", frames: null, resultUrl: null, link: null, video: null,
      error: null, retryable: false, jobId: null, expiresAt: null, options: null,
      blob: null, url: null, beforeUrl: null, counts: null, regions: null, regionsSource: null,
      corrected: false, xhr: null, row: null, card: null, cancelled: false,
    };
  }

  /* ---------------------------------------------------------------- queue UI -- */
  const STATE_TEXT = {
    ready: "Ready", uploading: "Uploading", queued: "Waiting for the server", processing: "Anonymizing",
    fetching: "Downloading result", waiting: "Waiting",
  };

  function renderQueue() {
    const list = $("queue");
    const pending = items.filter((i) => i.state !== "done");
    $("queue-wrap").hidden = pending.length === 0;
    for (const it of pending) {
      if (!it.row) it.row = buildRow(it);
      updateRow(it);
    }
    // keep DOM order = item order, without re-creating rows (focus stays put)
    pending.forEach((it, idx) => {
      if (list.children[idx] !== it.row) list.insertBefore(it.row, list.children[idx] || null);
    });
    for (const child of [...list.children]) {
      if (!pending.some((it) => it.row === child)) child.remove();
    }
    $("queue-clear").hidden = !pending.some((i) => i.state === "ready" || i.state === "failed");
    updateEmpty();
  }

  function buildRow(it) {
    const row = el("li", { class: "qrow", "data-id": it.id });
    if (!it.beforeUrl) it.beforeUrl = URL.createObjectURL(it.file); // local preview only
    const thumb = el("span", { class: "qthumb", "aria-hidden": "true" });
    const timg = it.kind === "video"
      ? el("video", { src: it.beforeUrl, muted: true, preload: "metadata", tabindex: "-1" })
      : el("img", { alt: "", src: it.beforeUrl, decoding: "async" });
    timg.addEventListener("error", () => timg.remove());
    thumb.append(timg);
    const name = el("span", { class: "qname", title: it.name, text: it.name });
    const size = el("span", { class: "qsize", text: formatBytes(it.size) });
    const status = el("span", { class: "qstatus" });
    const bar = el("div", { class: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-label": `${it.name} progress` }, el("span"));
    const retry = el("button", { type: "button", class: "link-btn qretry", text: "Retry", hidden: true,
      onclick: () => retryItem(it) });
    const remove = el("button", { type: "button", class: "icon-btn qremove", "aria-label": `Remove ${it.name}`,
      title: "Remove", onclick: () => removeItem(it) });
    remove.innerHTML = '<svg viewBox="0 0 20 20" aria-hidden="true" focusable="false"><path d="M5 5l10 10M15 5L5 15" stroke="currentColor" stroke-width="2" stroke-linecap="round"/></svg>';
    row.append(thumb, el("div", { class: "qmain" }, el("div", { class: "qline" }, name, size), status, bar),
      el("div", { class: "qactions" }, retry, remove));
    row._parts = { status, bar, retry, remove };
    return row;
  }

  function itemPercent(it) {
    switch (it.state) {
      case "uploading": return Math.round(it.progress * 50);
      case "queued": return 55;
      case "processing": return it.frames && it.frames.frames_total
        ? 55 + Math.round(37 * frameFraction(it.frames)) : 70;
      case "fetching": return 92;
      case "done": case "failed": return 100;
      default: return 0;
    }
  }

  /** Share of a video's work done: detection is the first half, masking and encoding the second. */
  function frameFraction(p) {
    const f = Math.min(1, (p.frames_done || 0) / (p.frames_total || 1));
    return p.stage === "detect" ? f / 2 : p.stage === "encode" ? 0.5 + f / 2 : 1;
  }

  function framesText(p) {
    const what = p.stage === "detect" ? "Finding what to hide" : "Hiding and encoding";
    return `${what}: frame ${p.frames_done} of ${p.frames_total}`;
  }

  function updateRow(it) {
    if (!it.row) return;
    const { status, bar, retry } = it.row._parts;
    it.row.dataset.state = it.state;
    let text = STATE_TEXT[it.state] || "";
    if (it.state === "processing" && it.frames && it.frames.frames_total) text = framesText(it.frames);
    if (it.state === "uploading") text = `Uploading ${Math.round(it.progress * 100)}%`;
    if (it.state === "waiting" && it.error) text = it.error;
    if (it.state === "failed") text = it.error || "Failed";
    status.textContent = text;
    const pct = itemPercent(it);
    bar.firstChild.style.width = `${pct}%`;
    bar.setAttribute("aria-valuenow", String(pct));
    bar.hidden = it.state === "ready" || it.state === "failed";
    retry.hidden = !(it.state === "failed" && it.retryable);
  }

  function setState(it, state, extra = {}) {
    Object.assign(it, { state }, extra);
    updateRow(it);
    updateOverall();
  }

  function updateOverall() {
    const batch = items.filter((i) => i.batch && i.batch === currentBatch);
    const box = $("overall");
    if (!batch.length) { box.hidden = true; return; }
    box.hidden = false;
    const pct = Math.round(batch.reduce((s, i) => s + itemPercent(i), 0) / batch.length);
    $("overall-bar").style.width = `${pct}%`;
    const done = batch.filter((i) => i.state === "done").length;
    const failed = batch.filter((i) => i.state === "failed").length;
    const active = batch.length - done - failed;
    let text;
    if (active) {
      text = `Anonymizing ${batch.length} ${nounFor(batch)}… ${pct}%`;
      if (done || failed) text += ` · ${done} done${failed ? `, ${failed} failed` : ""}`;
    } else {
      text = `Finished: ${done} anonymized${failed ? `, ${failed} failed` : ""}.`;
    }
    const node = $("overall-text");
    if (node.textContent !== text) node.textContent = text;
    box.dataset.state = active ? "active" : (failed ? "partial" : "done");
  }

  function updateRunButton() {
    const btn = $("run");
    const ready = items.filter((i) => i.state === "ready").length;
    const targets = readForm().targets.length;
    btn.disabled = !ready || !targets || !server.ready;
    btn.textContent = ready ? `Anonymize ${ready} ${nounFor(items.filter((i) => i.state === "ready"))}` : "Anonymize";
  }

  function updateEmpty() {
    $("empty").hidden = items.length > 0;
    document.body.classList.toggle("has-items", items.length > 0);
  }

  /* ------------------------------------------------------------- processing -- */
  let currentBatch = 0;

  function startRun(e, only = null) {
    if (e) e.preventDefault();
    const settings = readForm();
    if (!settings.targets.length) { $("targets-error").hidden = false; return; }
    saveSettings(settings);
    const ready = only || items.filter((i) => i.state === "ready");
    if (!ready.length) return;
    // a new batch for the overall bar unless the previous one is still going
    const stillRunning = items.some((i) => i.batch === currentBatch && !["done", "failed"].includes(i.state));
    if (!stillRunning) currentBatch++;
    const options = apiOptions(settings);
    for (const it of ready) {
      // browsers can't show HEIC: ask for a JPEG back so it can be previewed and shared
      const opts = it.kind === "image" && needsJpeg(it.file) ? { ...options, format: "jpeg" } : options;
      Object.assign(it, { options: opts, batch: currentBatch, error: null });
      setState(it, "waiting");
    }
    announce(`Anonymizing ${ready.length} ${nounFor(ready)}.`);
    updateRunButton();
    pump();
  }

  function pump() {
    while (running < PARALLEL) {
      const next = items.find((i) => i.state === "waiting" && !i.pumped);
      if (!next) break;
      next.pumped = true;
      running++;
      processItem(next).finally(() => {
        next.pumped = false;
        running--;
        pump();
      });
    }
  }

  async function processItem(it) {
    try {
      const job = await submitJob(it);
      if (it.cancelled) return;
      it.jobId = job.id;
      it.expiresAt = serverTime(job.expires_at);
      setState(it, job.status === "processing" ? "processing" : "queued");
      const done = await pollJob(it);
      if (it.cancelled) return;
      const img = (done.images || [])[0] || {};
      setState(it, "fetching");
      if (it.kind === "video") {
        // the result stays on the server: it plays and downloads from a short-lived link
        it.resultUrl = img.url || `${API}/jobs/${it.jobId}/images/0`;
        it.video = img.video || null;
        it.resultType = img.content_type || "video/mp4";
        it.url = await videoLink(it);
        if (it.cancelled) return;
      } else {
        const res = await api(img.url || `${API}/jobs/${it.jobId}/images/0`);
        const blob = await res.blob();
        if (it.cancelled) return;
        it.blob = blob;
        it.url = URL.createObjectURL(blob);
      }
      // a video counts who was hidden (tracks), not how many frames each was found in
      const tracks = it.kind === "video" && it.video && it.video.tracks;
      it.counts = normaliseCounts(tracks || img.detections || done.detections || {});
      if (Array.isArray(img.regions)) { it.regions = img.regions.map(cleanRegion).filter(Boolean); it.regionsSource = "job"; }
      it.expiresAt = serverTime(done.expires_at) || it.expiresAt;
      setState(it, "done");
      announce(`${it.name} anonymized: ${countsSentence(it.counts)}.`);
      renderQueue();
      renderResults();
    } catch (err) {
      if (it.cancelled) return;
      const retryable = err instanceof ApiError ? err.retryable : true;
      setState(it, "failed", { error: err.message || String(err), retryable });
      announce(`${it.name} failed: ${it.error}`, true);
      if (it.jobId) { deleteJob(it.jobId); it.jobId = null; }
      renderQueue();
    } finally {
      updateRunButton();
    }
  }

  async function submitJob(it) {
    for (let attempt = 0; ; attempt++) {
      const form = new FormData();
      form.append("files", it.file, it.name);
      form.append("options", JSON.stringify(it.options));
      setState(it, "uploading", { progress: 0 });
      const hadKey = !!getKey();
      const res = await xhrPost(`${API}/jobs`, form, (p) => {
        it.progress = p;
        updateRow(it);
        updateOverall();
      }, it);
      if (res.status === 202 || res.status === 200) return JSON.parse(res.text);
      if (res.status === 401) {
        await handle401(hadKey);
        continue;
      }
      const err = errorFromResponse(res.status, res.text, res.contentType, res.retryAfter);
      if (err.retryable && err.status !== 500 && attempt < 8) {
        const wait = err.retryAfter || 3;
        setState(it, "waiting", { error: `Server busy, trying again in ${wait} s` });
        await sleep(wait * 1000);
        if (it.cancelled) throw new ApiError("Cancelled.", -1);
        continue;
      }
      throw err;
    }
  }

  async function pollJob(it) {
    let delay = POLL_MS;
    for (;;) {
      await sleep(delay);
      if (it.cancelled) throw new ApiError("Cancelled.", -1);
      let job;
      try {
        job = await (await api(`${API}/jobs/${it.jobId}`)).json();
      } catch (err) {
        if (err.retryable && err.status === 0) { delay = Math.min(5000, delay * 2); continue; }
        throw err;
      }
      const img = (job.images || [])[0];
      if (img && img.status === "failed") throw new ApiError(img.error || job.error || `The ${it.kind === "video" ? "video" : "photo"} could not be anonymized.`, 422);
      if (job.status === "failed") throw new ApiError(job.error || "The photo could not be anonymized.", 422);
      if (job.status === "done" && img && img.status === "done") return job;
      if (job.status === "done") throw new ApiError("The server returned no result for this photo.", 500);
      if (job.status === "processing" && it.state !== "processing") setState(it, "processing");
      if (img && img.progress && img.status === "processing") {
        it.frames = img.progress;
        updateRow(it);
        updateOverall();
      }
      delay = Math.min(it.kind === "video" ? 1000 : 2000, delay + 150);
    }
  }

  function normaliseCounts(det) {
    const c = { face: 0, person: 0, plate: 0, head: 0 };
    if (Array.isArray(det)) { for (const d of det) if (d && d.target in c) c[d.target]++; return c; }
    for (const k of Object.keys(c)) c[k] = Number(det[k] || 0);
    return c;
  }
  function countsFromRegions(regions) {
    const c = { face: 0, person: 0, plate: 0, head: 0 };
    for (const r of regions) if (r.target in c) c[r.target]++;
    return c;
  }
  function countsSentence(c) {
    const parts = [plural(c.face, "face"), plural(c.person, "person"), plural(c.plate, "plate")];
    if (c.head) parts.push(plural(c.head, "head"));
    return `${parts.join(", ")} hidden`;
  }
  function cleanRegion(r) {
    if (!r || !Array.isArray(r.box) || r.box.length !== 4) return null;
    const box = r.box.map(Number);
    if (!box.every(Number.isFinite) || box[2] <= box[0] || box[3] <= box[1]) return null;
    return { target: r.target in NOUNS ? r.target : "face", box };
  }

  function retryItem(it) {
    if (it.state !== "failed") return;
    Object.assign(it, { state: "ready", error: null, progress: 0 });
    updateRow(it);
    startRun(null, [it]);
  }

  async function removeItem(it) {
    it.cancelled = true;
    if (it.xhr) it.xhr.abort();
    const idx = items.indexOf(it);
    if (idx >= 0) items.splice(idx, 1);
    if (it.jobId) deleteJob(it.jobId);
    releaseItem(it);
    renderQueue();
    renderResults();
    updateRunButton();
    updateOverall();
  }

  function releaseItem(it) {
    if (it.url && it.kind !== "video") URL.revokeObjectURL(it.url);
    for (const v of document.querySelectorAll("video")) {
      if (v.getAttribute("src") === it.url || v.getAttribute("src") === it.beforeUrl) { v.pause(); v.removeAttribute("src"); v.load(); }
    }
    if (it.beforeUrl) URL.revokeObjectURL(it.beforeUrl);
    it.url = it.beforeUrl = null;
    it.blob = null;
    if (it.card) it.card.remove();
    if (it.row) it.row.remove();
    it.card = it.row = null;
  }

  /** A URL that plays or downloads a video's result without the key header (refreshed before it expires). */
  async function videoLink(it) {
    const fresh = it.link && it.link.expires - Date.now() > LINK_MARGIN_MS;
    if (!fresh) {
      const res = await api(`${it.resultUrl}/link`, { method: "POST" });
      const body = await res.json();
      const expires = serverTime(body.expires_at);
      it.link = { url: body.url, expires: expires ? expires.getTime() : Date.now() + 10 * 60 * 1000 };
    }
    return it.link.url;
  }

  function deleteJob(jobId) {
    return api(`${API}/jobs/${jobId}`, { method: "DELETE" }).catch((err) => {
      if (err.status !== 404) throw err;
    });
  }

  /* ---------------------------------------------------------------- results -- */
  function doneItems() { return items.filter((i) => i.state === "done"); }

  function renderResults() {
    const done = doneItems();
    $("results").hidden = done.length === 0;
    $("results-count").textContent = done.length ? `(${done.length})` : "";
    const grid = $("grid");
    done.forEach((it, idx) => {
      if (!it.card) it.card = buildCard(it);
      updateCard(it);
      if (grid.children[idx] !== it.card) grid.insertBefore(it.card, grid.children[idx] || null);
    });
    for (const child of [...grid.children]) if (!done.some((it) => it.card === child)) child.remove();
    updateExpiry();
    updateEmpty();
  }

  function buildCard(it) {
    const img = it.kind === "video"
      ? el("video", { muted: true, preload: "metadata", "aria-label": `${it.name}, anonymized`, tabindex: "-1" })
      : el("img", { alt: `${it.name}, anonymized`, loading: "lazy", decoding: "async" });
    const badge = el("span", { class: "badge", text: "Corrected", hidden: true });
    const kind = it.kind === "video" ? el("span", { class: "badge badge-video", text: "Video", "aria-hidden": "true" }) : null;
    const thumb = el("button", { type: "button", class: "thumb", "aria-label": `Open ${it.name}`,
      onclick: () => openViewer(it) }, img, badge, kind);
    const title = el("h3", { class: "card-title", title: it.name, text: it.name });
    const counts = el("ul", { class: "counts", "aria-label": "Hidden" });
    const actions = el("div", { class: "card-actions" },
      el("button", { type: "button", class: "btn btn-small btn-secondary", text: "View",
        "aria-label": `View ${it.name}`, onclick: () => openViewer(it) }),
      el("button", { type: "button", class: "btn btn-small btn-secondary", text: "Download",
        "aria-label": `Download ${it.name}`, onclick: () => downloadItem(it) }),
      trashButton(`Delete ${it.name}`, () => deleteItem(it)));
    const card = el("li", { class: "card", "data-id": it.id }, thumb,
      el("div", { class: "card-body" }, title, counts, actions));
    card._parts = { img, badge, counts };
    return card;
  }

  function trashButton(label, onclick) {
    const b = el("button", { type: "button", class: "icon-btn icon-danger", "aria-label": label, title: "Delete from the server", onclick });
    b.innerHTML = '<svg viewBox="0 0 20 20" aria-hidden="true" focusable="false"><path d="M4 6h12M8 6V4.5h4V6M6 6l.7 10h6.6L14 6" fill="none" stroke="currentColor" stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round"/></svg>';
    return b;
  }

  function countChips(c, targets) {
    const chips = [];
    for (const t of TARGETS) {
      const on = !targets || targets.includes(t);
      const n = c[t] || 0;
      chips.push(el("li", { class: `chip${on ? "" : " chip-off"}${n ? " chip-hit" : ""}`, "data-target": t,
        "data-count": String(n), title: on ? "" : "Not searched for" },
      el("strong", { text: on ? String(n) : "–" }), ` ${(NOUNS[t][n === 1 ? 0 : 1])}`));
    }
    if (c.head) {
      chips.push(el("li", { class: "chip chip-hit", "data-target": "head", "data-count": String(c.head),
        title: "Heads of people whose face could not be seen" }, el("strong", { text: String(c.head) }),
      ` ${NOUNS.head[c.head === 1 ? 0 : 1]}`));
    }
    return chips;
  }

  function updateCard(it) {
    const { img, badge, counts } = it.card._parts;
    if (img.getAttribute("src") !== it.url) img.src = it.url;
    badge.hidden = !it.corrected;
    counts.replaceChildren(...countChips(it.counts, it.options && it.options.targets));
    counts.setAttribute("aria-label", countsSentence(it.counts));
  }

  function updateExpiry() {
    const done = doneItems().filter((i) => i.expiresAt);
    const node = $("expiry");
    if (!done.length) { node.textContent = ""; return; }
    const first = new Date(Math.min(...done.map((i) => i.expiresAt.getTime())));
    const last = new Date(Math.max(...done.map((i) => i.expiresAt.getTime())));
    const when = formatTime(first) === formatTime(last) ? formatTime(first) : `${formatTime(first)}–${formatTime(last)}`;
    node.textContent = `Results are deleted from the server at ${when}.`;
    node.title = "Download what you need before then.";
    node.dataset.expires = first.toISOString();
  }

  function expireSweep() {
    const now = Date.now();
    const gone = doneItems().filter((i) => i.expiresAt && i.expiresAt.getTime() <= now);
    if (!gone.length) return;
    for (const it of gone) {
      if (viewerItem === it) closeViewer();
      items.splice(items.indexOf(it), 1);
      releaseItem(it);
    }
    renderResults();
    announce(`${gone.length} ${gone.length === 1 ? "result has" : "results have"} expired and ${gone.length === 1 ? "was" : "were"} removed.`);
  }

  function downloadName(it) {
    const type = it.blob ? it.blob.type : it.resultType || "";
    const ext = EXT_OF_TYPE[type] || extOf(it.name) || (it.kind === "video" ? "mp4" : "jpg");
    return `${stemOf(it.name)}.anonymized.${ext}`;
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  }

  async function downloadItem(it) {
    if (it.kind === "video") {
      // straight from the server to disk: a video never has to fit in this tab's memory
      try {
        const a = el("a", { href: await videoLink(it), download: downloadName(it), hidden: true });
        document.body.append(a);
        a.click();
        a.remove();
      } catch (err) {
        announce(`Could not download ${it.name}: ${err.message}`, true);
      }
      return;
    }
    if (!it.blob) return;
    saveBlob(it.blob, downloadName(it));
  }

  async function deleteItem(it, quiet = false) {
    it.cancelled = true;
    const jobId = it.jobId;
    items.splice(items.indexOf(it), 1);
    if (viewerItem === it) closeViewer();
    const focusNext = it.card && (it.card.nextElementSibling || it.card.previousElementSibling);
    releaseItem(it);
    renderResults();
    renderQueue();
    if (!quiet) {
      announce(`${it.name} deleted.`);
      const target = focusNext && focusNext.querySelector(".thumb");
      (target || $("pick-files")).focus();
    }
    if (jobId) {
      try { await deleteJob(jobId); } catch (err) { announce(`Could not delete ${it.name} on the server: ${err.message}`, true); }
    }
  }

  async function deleteAll() {
    const done = doneItems();
    if (!done.length) return;
    await Promise.all(done.map((it) => deleteItem(it, true)));
    announce(`All ${done.length} results deleted from the server.`);
    $("pick-files").focus();
  }

  async function downloadAll() {
    const done = doneItems();
    if (!done.length) return;
    const btn = $("download-all");
    btn.disabled = true;
    try {
      // videos download one by one, straight to disk; the photos go in one ZIP
      for (const it of done.filter((i) => i.kind === "video")) await downloadItem(it);
      const photos = done.filter((i) => i.kind !== "video");
      if (!photos.length) return;
      const used = new Set();
      const entries = photos.map((it) => {
        let name = downloadName(it);
        for (let n = 2; used.has(name.toLowerCase()); n++) name = `${stemOf(it.name)}-${n}.anonymized.${extOf(downloadName(it))}`;
        used.add(name.toLowerCase());
        return { name, blob: it.blob };
      });
      const zip = await makeZip(entries);
      const stamp = new Date();
      saveBlob(zip, `veil-${stamp.getFullYear()}${pad2(stamp.getMonth() + 1)}${pad2(stamp.getDate())}-${pad2(stamp.getHours())}${pad2(stamp.getMinutes())}.zip`);
    } finally {
      btn.disabled = false;
    }
  }

  /* -------------------------------------------------- ZIP (stored, no deps) -- */
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();
  function crc32(u8) {
    let c = 0xffffffff;
    for (let i = 0; i < u8.length; i++) c = CRC_TABLE[(c ^ u8[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  async function makeZip(entries) {
    const enc = new TextEncoder();
    const now = new Date();
    const time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
    const date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
    const parts = [];
    const central = [];
    let offset = 0;
    for (const e of entries) {
      const data = new Uint8Array(await e.blob.arrayBuffer());
      const name = enc.encode(e.name);
      const crc = crc32(data);
      const lh = new DataView(new ArrayBuffer(30));
      lh.setUint32(0, 0x04034b50, true); lh.setUint16(4, 20, true); lh.setUint16(6, 0x0800, true);
      lh.setUint16(8, 0, true); lh.setUint16(10, time, true); lh.setUint16(12, date, true);
      lh.setUint32(14, crc, true); lh.setUint32(18, data.length, true); lh.setUint32(22, data.length, true);
      lh.setUint16(26, name.length, true); lh.setUint16(28, 0, true);
      parts.push(lh, name, data);
      const ch = new DataView(new ArrayBuffer(46));
      ch.setUint32(0, 0x02014b50, true); ch.setUint16(4, 20, true); ch.setUint16(6, 20, true);
      ch.setUint16(8, 0x0800, true); ch.setUint16(10, 0, true); ch.setUint16(12, time, true);
      ch.setUint16(14, date, true); ch.setUint32(16, crc, true); ch.setUint32(20, data.length, true);
      ch.setUint32(24, data.length, true); ch.setUint16(28, name.length, true);
      ch.setUint32(38, 0o100644 << 16 >>> 0, true); ch.setUint32(42, offset, true);
      central.push(ch, name);
      offset += 30 + name.length + data.length;
    }
    const size = central.reduce((s, p) => s + p.byteLength, 0);
    const end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true); end.setUint16(8, entries.length, true);
    end.setUint16(10, entries.length, true); end.setUint32(12, size, true); end.setUint32(16, offset, true);
    return new Blob([...parts, ...central, end], { type: "application/zip" });
  }

  /* ----------------------------------------------------------------- viewer -- */
  let viewerItem = null;
  let mode = "compare";
  let edit = null; // {regions: [{target, box, hidden, added}], history: [...]}
  let lastFocus = null;

  function openViewer(it) {
    viewerItem = it;
    lastFocus = document.activeElement;
    const dlg = $("viewer");
    $("viewer-title").textContent = it.name;
    if (!it.beforeUrl) it.beforeUrl = URL.createObjectURL(it.file); // the local original, never fetched
    const isVid = it.kind === "video";
    $("stage").hidden = isVid;
    $("vstage").hidden = !isVid;
    $("video-note").hidden = !isVid;
    $("mode-edit").disabled = isVid;
    $("mode-edit").title = isVid ? "Corrections are for photos only" : "";
    $("viewer-status").textContent = "";
    if (isVid) {
      $("vid-before").closest("figure").hidden = false;
      $("video-note").textContent = "Corrections are for photos only for now: a video can be compared, downloaded and deleted here.";
      $("vid-before").src = it.beforeUrl;
      $("vid-after").src = it.url;
      setMode("compare");
      $("foot-compare").hidden = true;
      videoLink(it).then((url) => { // a fresh link if the one in use is about to expire
        if (viewerItem === it && url !== it.url) { it.url = url; $("vid-after").src = url; }
      }).catch((err) => { $("viewer-status").textContent = err.message; });
    } else {
      const before = $("img-before");
      const after = $("img-after");
      before.alt = `${it.name}, original`;
      after.alt = `${it.name}, anonymized`;
      before.dataset.failed = "";
      before.src = it.beforeUrl;
      after.src = it.url;
      setCompare(50);
      setMode("compare");
    }
    updateViewerInfo();
    if (!dlg.open) dlg.showModal();
    (isVid ? $("vid-after") : $("compare")).focus();
  }

  /** The original (muted) follows the anonymized video: play, pause and position. */
  function syncBefore(e) {
    const before = $("vid-before");
    const after = e.target;
    if (!before.getAttribute("src")) return;
    if (Math.abs(before.currentTime - after.currentTime) > 0.25 || e.type === "seeked") before.currentTime = after.currentTime;
    if (e.type === "play") before.play().catch(() => {});
    if (e.type === "pause" || e.type === "ended") before.pause();
  }

  function updateViewerInfo() {
    const it = viewerItem;
    if (!it) return;
    $("viewer-counts").textContent = `${countsSentence(it.counts)}${it.corrected ? " · corrected by hand" : ""}`;
  }

  function closeViewer() {
    const dlg = $("viewer");
    if (dlg.open) dlg.close();
  }

  function onViewerClosed() {
    viewerItem = null;
    edit = null;
    $("regions").replaceChildren();
    $("img-before").removeAttribute("src");
    $("img-after").removeAttribute("src");
    for (const id of ["vid-before", "vid-after"]) {
      const v = $(id);
      v.pause();
      v.removeAttribute("src");
      v.load();
    }
    if (lastFocus && document.contains(lastFocus)) lastFocus.focus();
  }

  function setCompare(v) {
    const stage = $("stage");
    v = Math.max(0, Math.min(100, Number(v)));
    stage.style.setProperty("--pos", `${v}%`);
    const range = $("compare");
    if (Number(range.value) !== v) range.value = String(v);
    range.setAttribute("aria-valuetext", `${Math.round(v)}% original, ${Math.round(100 - v)}% anonymized`);
  }

  function beforeAvailable() {
    const img = $("img-before");
    return img.dataset.failed !== "1";
  }

  async function setMode(m) {
    mode = m;
    const stage = $("stage");
    stage.dataset.mode = m;
    $("mode-compare").setAttribute("aria-pressed", String(m === "compare"));
    $("mode-edit").setAttribute("aria-pressed", String(m === "edit"));
    $("foot-compare").hidden = m !== "compare";
    $("foot-edit").hidden = m !== "edit";
    updateStageNote();
    if (m === "edit") {
      const ok = await ensureRegions(viewerItem);
      if (mode !== "edit" || !viewerItem) return;
      if (!ok) { setMode("compare"); return; }
      startEdit();
    } else {
      edit = null;
      $("regions").replaceChildren();
      $("draft").hidden = true;
    }
  }

  function updateStageNote() {
    const note = $("stage-note");
    const stage = $("stage");
    const noBefore = !beforeAvailable();
    stage.classList.toggle("no-before", noBefore);
    $("foot-compare").classList.toggle("is-disabled", noBefore);
    $("compare").disabled = noBefore;
    if (noBefore) {
      note.hidden = false;
      note.textContent = mode === "compare"
        ? "This browser can't display the original of this file type, so only the anonymized photo is shown."
        : "This browser can't display the original of this file type; areas are drawn on the anonymized photo.";
    } else {
      note.hidden = true;
    }
  }

  /** The hidden regions of an item: from the job status, or (older servers) by asking /anonymize for its report. */
  async function ensureRegions(it) {
    if (!it) return false;
    if (Array.isArray(it.regions)) return true;
    const status = $("viewer-status");
    status.textContent = "Loading the hidden areas…";
    $("mode-edit").disabled = true;
    try {
      const form = new FormData();
      form.append("file", it.file, it.name);
      form.append("options", JSON.stringify(it.options));
      const res = await api(`${API}/anonymize`, { method: "POST", body: form });
      const report = JSON.parse(res.headers.get("x-veil-report") || "{}");
      const list = Array.isArray(report.regions) ? report.regions
        : Array.isArray(report.detections) ? report.detections : null;
      if (!list && report.truncated) throw new ApiError("This photo has too many hidden areas to correct them here.");
      if (!list) throw new ApiError("This server does not report the hidden areas, so they can't be corrected here.");
      it.regions = list.map(cleanRegion).filter(Boolean);
      it.regionsSource = "report";
      status.textContent = "";
      return true;
    } catch (err) {
      status.textContent = err.message;
      return false;
    } finally {
      $("mode-edit").disabled = false;
    }
  }

  function startEdit() {
    edit = {
      regions: viewerItem.regions.map((r) => ({ target: r.target, box: r.box.slice(), hidden: true, added: false })),
      history: [],
    };
    drawRegions();
    $("viewer-status").textContent = edit.regions.length
      ? `${edit.regions.length} hidden ${edit.regions.length === 1 ? "area" : "areas"} marked.`
      : "No areas were hidden. Drag across the photo to hide one.";
  }

  function imageSize() {
    const img = beforeAvailable() ? $("img-before") : $("img-after");
    return { w: img.naturalWidth || 1, h: img.naturalHeight || 1 };
  }

  function drawRegions() {
    const layer = $("regions");
    if (!edit) { layer.replaceChildren(); return; }
    const { w, h } = imageSize();
    const counters = {};
    const nodes = edit.regions.map((r, idx) => {
      if (!r.added) counters[r.target] = (counters[r.target] || 0) + 1;
      const label = r.added ? `New ${(REGION_NAMES[r.target] || "area").toLowerCase()}`
        : `${REGION_NAMES[r.target] || "Area"} ${counters[r.target]}`;
      const [x1, y1, x2, y2] = r.box;
      const state = r.added ? "added" : (r.hidden ? "hidden" : "shown");
      const verb = r.added ? "added; press to remove it" : (r.hidden ? "hidden; press to show it" : "will be shown; press to hide it again");
      const b = el("button", {
        type: "button", class: `region region-${state}`, "data-index": String(idx), "data-target": r.target,
        "data-state": state, "aria-label": `${label}, ${verb}`, title: `${label}: ${r.added ? "new" : (r.hidden ? "hidden" : "shown")}`,
        "aria-pressed": String(r.added || r.hidden),
      }, el("span", { class: "region-label", "aria-hidden": "true", text: label }));
      b.style.left = `${(x1 / w) * 100}%`;
      b.style.top = `${(y1 / h) * 100}%`;
      b.style.width = `${((x2 - x1) / w) * 100}%`;
      b.style.height = `${((y2 - y1) / h) * 100}%`;
      b.addEventListener("click", (e) => { e.stopPropagation(); toggleRegion(idx); });
      b.addEventListener("pointerdown", (e) => e.stopPropagation());
      return b;
    });
    layer.replaceChildren(...nodes);
    const changed = edit.history.length > 0;
    $("edit-save").disabled = !changed;
    $("edit-undo").disabled = !changed;
  }

  function snapshot() {
    edit.history.push(edit.regions.map((r) => ({ ...r, box: r.box.slice() })));
  }

  function toggleRegion(idx) {
    if (!edit) return;
    snapshot();
    const r = edit.regions[idx];
    const label = `${REGION_NAMES[r.target] || "Area"}`;
    if (r.added) {
      edit.regions.splice(idx, 1);
      announce(`${label} removed.`);
    } else {
      r.hidden = !r.hidden;
      announce(`${label} will be ${r.hidden ? "hidden" : "shown"}.`);
    }
    drawRegions();
    const again = $("regions").querySelector(`[data-index="${Math.min(idx, edit.regions.length - 1)}"]`);
    if (again) again.focus();
  }

  function undoEdit() {
    if (!edit || !edit.history.length) return;
    edit.regions = edit.history.pop();
    drawRegions();
    announce("Undone.");
  }

  // drawing a rectangle
  let drag = null;
  function stagePoint(e) {
    const img = beforeAvailable() ? $("img-before") : $("img-after");
    const rect = img.getBoundingClientRect();
    const { w, h } = imageSize();
    const x = Math.max(0, Math.min(rect.width, e.clientX - rect.left));
    const y = Math.max(0, Math.min(rect.height, e.clientY - rect.top));
    return { x: (x / rect.width) * w, y: (y / rect.height) * h, rect };
  }
  function onStageDown(e) {
    if (e.button !== 0) return;
    if (mode === "compare") {
      comparing = true;
      $("stage").setPointerCapture(e.pointerId);
      onStageMove(e);
      return;
    }
    if (!edit) return;
    e.preventDefault();
    $("stage").setPointerCapture(e.pointerId);
    const p = stagePoint(e);
    drag = { x0: p.x, y0: p.y, x1: p.x, y1: p.y };
    drawDraft();
  }
  let comparing = false;
  function onStageMove(e) {
    if (mode === "compare") {
      if (!comparing) return;
      const rect = $("stage").getBoundingClientRect();
      setCompare(((e.clientX - rect.left) / rect.width) * 100);
      return;
    }
    if (!drag) return;
    const p = stagePoint(e);
    drag.x1 = p.x;
    drag.y1 = p.y;
    drawDraft();
  }
  function onStageUp(e) {
    comparing = false;
    if (!drag || !edit) return;
    const p = stagePoint(e);
    drag.x1 = p.x;
    drag.y1 = p.y;
    const box = [Math.min(drag.x0, drag.x1), Math.min(drag.y0, drag.y1), Math.max(drag.x0, drag.x1), Math.max(drag.y0, drag.y1)];
    drag = null;
    $("draft").hidden = true;
    const { w } = imageSize();
    const minSide = Math.max(4, w / 200);
    if (box[2] - box[0] < minSide || box[3] - box[1] < minSide) return;
    snapshot();
    const target = $("new-target").value;
    edit.regions.push({ target, box: box.map((v) => Math.round(v * 10) / 10), hidden: true, added: true });
    drawRegions();
    announce(`New ${REGION_NAMES[target].toLowerCase()} area added. Save to apply.`);
  }
  function drawDraft() {
    const d = $("draft");
    if (!drag) { d.hidden = true; return; }
    const { w, h } = imageSize();
    const x1 = Math.min(drag.x0, drag.x1), x2 = Math.max(drag.x0, drag.x1);
    const y1 = Math.min(drag.y0, drag.y1), y2 = Math.max(drag.y0, drag.y1);
    Object.assign(d.style, { left: `${(x1 / w) * 100}%`, top: `${(y1 / h) * 100}%`,
      width: `${((x2 - x1) / w) * 100}%`, height: `${((y2 - y1) / h) * 100}%` });
    d.hidden = false;
  }

  async function saveEdit() {
    const it = viewerItem;
    if (!it || !edit) return;
    const keep = edit.regions.filter((r) => r.added || r.hidden).map((r) => ({ target: r.target, box: r.box }));
    const btn = $("edit-save");
    const status = $("viewer-status");
    btn.disabled = true;
    status.textContent = "Saving corrections…";
    try {
      // the original comes from this browser again; an empty list still re-encodes (metadata stripped)
      const form = new FormData();
      form.append("file", it.file, it.name);
      form.append("regions", JSON.stringify(keep));
      form.append("options", JSON.stringify(it.options));
      const res = await api(`${API}/render`, { method: "POST", body: form });
      const blob = await res.blob();
      if (viewerItem !== it) return;
      if (it.url) URL.revokeObjectURL(it.url);
      it.blob = blob;
      it.url = URL.createObjectURL(blob);
      it.regions = keep.map((r) => ({ target: r.target, box: r.box.slice() }));
      it.counts = countsFromRegions(it.regions);
      it.corrected = true;
      $("img-after").src = it.url;
      updateCard(it);
      updateViewerInfo();
      status.textContent = "Corrections saved. Download now gives the corrected photo.";
      announce("Corrections saved.");
      await setMode("compare");
      $("mode-compare").focus();
    } catch (err) {
      status.textContent = `Could not save: ${err.message}`;
      announce(`Could not save the corrections: ${err.message}`, true);
      btn.disabled = false;
    }
  }

  /* ------------------------------------------------------------ server info -- */
  function orList(words) {
    return words.length < 2 ? words.join("") : `${words.slice(0, -1).join(", ")} or ${words[words.length - 1]}`;
  }
  function anOrA(phrase) {
    return /^[AEFHILMNORSX]/.test(phrase) ? `an ${phrase}` : `a ${phrase}`;
  }

  /** Accepted types from the server's format records (GET /formats). */
  function useFormats(list) {
    for (const f of list) {
      const video = f.kind === "video";
      (video ? VIDEO_EXT : ACCEPT_EXT).push(...f.extensions);
      (video ? VIDEO_MIME : ACCEPT_MIME).push(...f.mime_types);
      LABELS[video ? "video" : "image"].push(f.label);
      for (const t of f.mime_types) EXT_OF_TYPE[t] = f.extensions[0];
      if (NEEDS_JPEG.includes(f.name)) { JPEG_EXT.push(...f.extensions); JPEG_MIME.push(...f.mime_types); }
    }
    $("file-input").setAttribute("accept", [...ACCEPT_EXT, ...VIDEO_EXT].map((e) => `.${e}`)
      .concat(ACCEPT_MIME, VIDEO_MIME).join(","));
  }

  /** Defaults, choices, ranges and help of the controls from the Options fields (GET /options). */
  function useOptions(list) {
    const byName = Object.fromEntries(list.map((o) => [o.name, o]));
    const form = $("options-form");
    for (const o of list) {
      const boxes = [...form.querySelectorAll(`input[name="${o.name}"][type="checkbox"]`)];
      const control = form.querySelector(`[name="${o.name}"]:not([type="checkbox"])`);
      if (o.name === "targets") {
        TARGETS.push(...o.choices);
        for (const b of boxes) if (!o.choices.includes(b.value)) b.closest("label").remove();
      }
      for (const node of [control, ...boxes]) if (node && o.help) node.closest(".field, label, fieldset")?.setAttribute("title", o.help);
      if (!control) continue;
      if (control.tagName === "SELECT" && o.choices) {
        for (const opt of [...control.options]) if (opt.value && !o.choices.includes(opt.value)) opt.remove();
        const have = [...control.options].map((opt) => opt.value);
        for (const c of o.choices) if (!have.includes(c)) control.append(el("option", { value: c, text: c }));
      }
      if (control.type === "range" && o.min !== undefined) {
        const scale = Number(control.max) === 100 && o.max === 1 ? 100 : 1; // feather: shown as 0-100 %
        control.min = String(o.min * scale);
        control.max = String(o.max * scale);
      }
    }
    for (const name of ["targets", "preset", "style", "shape", "color", "strength", "feather"]) {
      const o = byName[name];
      if (o) DEFAULTS[name] = o.default === null ? "" : o.default;
    }
  }

  /** Both descriptions, before the form is filled; an unreachable server leaves the form as written. */
  async function loadDescriptions() {
    try {
      const [f, o] = await Promise.all([`${API}/formats`, `${API}/options`].map(async (url) => {
        const res = await fetch(url, { cache: "no-store" });
        if (!res.ok) throw new Error(String(res.status));
        return res.json();
      }));
      useFormats(f.formats);
      useOptions(o.options);
    } catch (_) { /* loadHealth says the server is down */ }
    const written = readForm();
    for (const [k, v] of Object.entries(written)) if (!(k in DEFAULTS)) DEFAULTS[k] = v;
    if (!TARGETS.length) TARGETS.push(...[...document.querySelectorAll('input[name="targets"]')].map((i) => i.value));
    Object.freeze(DEFAULTS);
  }

  async function loadHealth() {
    try {
      const res = await fetch(`${API}/health`, { cache: "no-store" });
      if (!res.ok) throw new Error(String(res.status));
      const h = await res.json();
      server.reachable = true;
      server.auth = h.auth || "open";
      server.ready = h.pipeline !== "unavailable";
      if (h.limits && h.limits.max_file_bytes) server.maxFileBytes = h.limits.max_file_bytes;
      if (h.limits && h.limits.max_video_bytes) server.maxVideoBytes = h.limits.max_video_bytes;
      if (h.ttl_seconds) server.ttl = h.ttl_seconds;
    } catch (_) {
      server.reachable = false;
    }
    updateServerState();
    updateRunButton();
    const banner = $("banner");
    if (server.reachable === false) {
      banner.textContent = "The veil server can't be reached. Start it with “veil serve” and reload this page.";
      banner.hidden = false;
    } else if (!server.ready) {
      banner.textContent = "This server can't anonymize photos right now: its anonymization pipeline is not installed.";
      banner.hidden = false;
    } else {
      banner.hidden = true;
    }
    $("dropzone-hint").textContent = `Photos: ${orList(LABELS.image)}, up to ${formatBytes(server.maxFileBytes)} each. `
      + `Videos: ${orList(LABELS.video)}, up to ${formatBytes(server.maxVideoBytes)}. Several at once.`;
    if (server.ttl) {
      const mins = Math.round(server.ttl / 60);
      const span = mins >= 120 && mins % 60 === 0 ? `${mins / 60} hours` : mins >= 1 ? `${mins} minute${mins === 1 ? "" : "s"}` : `${Math.round(server.ttl)} seconds`;
      $("footer-text").textContent = `veil removes location and camera metadata and never stores your originals. Results are deleted from the server ${span} after they are ready.`;
    }
  }

  function updateServerState() {
    const box = $("server-state");
    const text = $("server-state-text");
    const keyBtn = $("key-change");
    if (server.reachable === false) {
      box.dataset.state = "down";
      text.textContent = "Server offline";
    } else if (server.reachable === null) {
      box.dataset.state = "";
      text.textContent = "Connecting…";
    } else if (server.auth === "keys") {
      box.dataset.state = getKey() ? "ok" : "warn";
      text.textContent = getKey() ? "Connected · key set" : "API key required";
    } else {
      box.dataset.state = "ok";
      text.textContent = "Connected";
    }
    keyBtn.hidden = !(server.auth === "keys" || getKey());
    keyBtn.textContent = getKey() ? "Change key" : "Enter key";
  }

  /* ------------------------------------------------------------------ wiring -- */
  function wire() {
    writeForm(loadSettings());
    const form = $("options-form");
    form.addEventListener("input", () => { syncFormLabels(); saveSettings(readForm()); });
    form.addEventListener("change", () => { syncFormLabels(); saveSettings(readForm()); });
    form.addEventListener("submit", startRun);
    $("opt-reset").addEventListener("click", () => {
      writeForm({ ...DEFAULTS, targets: DEFAULTS.targets.slice() });
      saveSettings(readForm());
      announce("Default settings restored.");
    });

    const input = $("file-input");
    $("pick-files").addEventListener("click", (e) => { e.stopPropagation(); input.click(); });
    input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });

    const zone = $("dropzone");
    let depth = 0;
    zone.addEventListener("click", (e) => { if (e.target === zone || e.target.closest(".dropzone-icon, .dropzone-title")) input.click(); });
    zone.addEventListener("dragenter", (e) => { e.preventDefault(); depth++; zone.classList.add("is-over"); });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); if (e.dataTransfer) e.dataTransfer.dropEffect = "copy"; });
    zone.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) zone.classList.remove("is-over"); });
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      depth = 0;
      zone.classList.remove("is-over");
      const files = e.dataTransfer ? [...e.dataTransfer.files] : [];
      if (files.length) addFiles(files);
    });
    // a photo dropped next to the zone must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length && !zone.contains(e.target)) addFiles([...e.dataTransfer.files]);
    });

    $("reject-close").addEventListener("click", () => { $("reject-box").hidden = true; });
    $("queue-clear").addEventListener("click", () => {
      for (const it of items.filter((i) => i.state === "ready" || i.state === "failed")) removeItem(it);
      $("pick-files").focus();
    });
    $("download-all").addEventListener("click", downloadAll);
    $("delete-all").addEventListener("click", deleteAll);

    // viewer
    const dlg = $("viewer");
    dlg.addEventListener("close", onViewerClosed);
    dlg.addEventListener("cancel", (e) => {
      // Escape: leave a half-drawn rectangle first, else close
      if (drag) { e.preventDefault(); drag = null; $("draft").hidden = true; }
    });
    dlg.addEventListener("click", (e) => { if (e.target === dlg) closeViewer(); });
    $("viewer-close").addEventListener("click", closeViewer);
    $("mode-compare").addEventListener("click", () => setMode("compare"));
    $("mode-edit").addEventListener("click", () => setMode("edit"));
    $("compare").addEventListener("input", (e) => setCompare(e.target.value));
    $("edit-save").addEventListener("click", saveEdit);
    $("edit-undo").addEventListener("click", undoEdit);
    $("viewer-download").addEventListener("click", () => viewerItem && downloadItem(viewerItem));
    $("viewer-delete").addEventListener("click", () => viewerItem && deleteItem(viewerItem));
    const stage = $("stage");
    stage.addEventListener("pointerdown", onStageDown);
    stage.addEventListener("pointermove", onStageMove);
    stage.addEventListener("pointerup", onStageUp);
    stage.addEventListener("pointercancel", () => { drag = null; comparing = false; $("draft").hidden = true; });
    $("img-before").addEventListener("error", () => {
      if (!$("img-before").getAttribute("src")) return;
      $("img-before").dataset.failed = "1";
      updateStageNote();
      if (edit) drawRegions();
    });
    $("img-before").addEventListener("load", () => { if (edit) drawRegions(); });
    $("img-after").addEventListener("load", () => { if (edit) drawRegions(); });
    for (const type of ["play", "pause", "ended", "seeked", "timeupdate"]) $("vid-after").addEventListener(type, syncBefore);
    // a container or codec this browser does not play (AVI, some MKV): say so, keep the rest working
    $("vid-before").addEventListener("error", () => {
      if (!$("vid-before").getAttribute("src")) return;
      $("vid-before").closest("figure").hidden = true;
      $("video-note").textContent = "This browser can't play the original of this file type, so only the anonymized "
        + "video is shown. Corrections are for photos only for now.";
    });
    $("vid-after").addEventListener("error", () => {
      if (!$("vid-after").getAttribute("src")) return;
      $("viewer-status").textContent = "This browser can't play this video; download it to watch it in a video player.";
    });

    // API key dialog
    const keyDlg = $("key-dialog");
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("key-input").value.trim();
      if (!value) { $("key-input").focus(); return; }
      setKey(value);
      $("key-input").value = "";
      keyDlg.close("ok");
    });
    $("key-cancel").addEventListener("click", () => keyDlg.close("cancel"));
    $("key-change").addEventListener("click", async () => {
      const ok = await askForKey("Enter the API key for this veil server.");
      if (ok) announce("API key saved for this tab.");
    });

    setInterval(expireSweep, 5000);
    window.addEventListener("beforeunload", (e) => {
      if (items.some((i) => ["uploading", "queued", "processing", "fetching", "waiting"].includes(i.state))) {
        e.preventDefault();
        e.returnValue = "";
      }
    });
  }

  loadDescriptions().then(() => {
    wire();
    updateEmpty();
    return loadHealth();
  }).then(() => {
    if (server.auth === "keys" && !getKey()) askForKey("This veil server only accepts requests with an API key.");
  });

  // a small hook for the end-to-end tests and for debugging from the console
  window.veil = Object.freeze({ items, makeZip, version: 1 });
})();
