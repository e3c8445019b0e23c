// automedsam_annotate: draw, move, resize and delete boxes on the samples of the queue, see the frozen model's mask
// of each box, and save them into the raw dataset's boxesTr/. Plain JS and canvas, no dependencies.
"use strict";

const COLOURS = ["#ff5252", "#40c4ff", "#69f0ae", "#ffd740", "#e040fb", "#ff6e40", "#18ffff", "#b2ff59", "#ffab40"];
const HANDLE_PX = 7;       // how near (screen pixels) a corner or edge must be to grab it
const TOUCH_HANDLE_PX = 16;  // the same for a finger, which covers a corner and cannot aim at a pixel
const MIN_BOX_PX = 2;      // a drag shorter than this (image pixels) is a click, not a box
const MIN_DRAG_PX = 4;     // nor is one shorter than this on the screen (a click's jitter on a zoomed-out image)
// The typed array of each X-Dtype an array answer names (server.py's SENT_DTYPES, little-endian, as typed arrays read
// them on every browser's platform): a label map with ids above 255 comes as uint16, read as bytes 300 would be 44.
const ARRAY_TYPES = { uint8: Uint8Array, uint16: Uint16Array, float32: Float32Array };

const $ = (id) => document.getElementById(id);
const canvas = $("view");
const context = canvas.getContext("2d");

const state = {
  overview: null, index: 0, sample: null, pixels: null, plane: null, slice: null,
  requestedSlice: null, boxes: [], masks: [], prediction: null, version: null, dirty: false, selected: -1, label: null,
  window: [0, 1], view: { scale: 1, x: 0, y: 0 }, fitted: true, drag: null, imageCanvas: null, overlayCanvas: null,
  training: null, trainingTickets: { sent: 0, shown: 0 }, trainingProblem: null, loading: null,
  edits: 0, saving: null, saved: new Set(),  // edits made, the save on its way, the boxes as the server last had them
  deciding: false,  // a No structure or Accept on its way: see oneDecisionAtATime
  startingOrStopping: false,  // a Train, Stop, Review or Segment images on its way: see oneRunRequestAtATime
  unqueued: null,  // the sample shown whose save was answered that the server's queue no longer holds it
  overRejection: null,  // the sample shown whose boxes keptUnsaved holds over another tab's No structure
  unanswered: false,  // the last poll got no answer, or the answer of another run: no run is known to go on
  proposal: null,  // the last double-click's proposed boxes, the one shown and its entry in boxes
  ensemble: [],  // in review, the ensemble's proposed boxes as loaded: {entry (in boxes), key (its label and box)}
};

function boxKey(entry) {
  return `${entry.label}:${entry.box.join()}`;
}

// ------------------------------------------------------------------------------------------------ server calls

// Answered 409 by a server that serves another dataset or mode than this page was opened on (server.py,
// _ServedPages): api() tells it from a save's conflict with another tab, which is merged.
const OPENED_ELSEWHERE = -409;

// Answered 403 by a server that has not this page's token (server.py, _TokenGuard): restarted, it has a new one,
// which opening its printed address in another tab gives this page too (the cookie), unsaved boxes and all.
const NOT_AUTHORISED = 403;

// The page's headers: its own (server.py, _require_the_page) and the dataset and mode it was opened on.
function pageHeaders() {
  const headers = { "X-Automedsam-Page": "1" };
  if (state.overview) headers["X-Automedsam-Session"] = state.overview.session_id;
  return headers;
}

async function api(method, path, body) {
  const options = { method, headers: pageHeaders() };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (error) {  // stopped server, lost connection: say so, instead of nothing happening on S
    return { status: 0, payload: { detail: "No answer from automedsam_annotate (is it still running?): nothing was "
      + "saved. Boxes not saved stay on this page; start the server again and save." }, shape: [] };
  }
  const type = response.headers.get("Content-Type") || "";
  const json = type.includes("json");
  const payload = json ? await response.json() : await response.arrayBuffer();
  if (response.status === 409 && json && payload.reload) return { status: OPENED_ELSEWHERE, payload, shape: [] };
  if (!json && !response.ok) {
    return { status: response.status, payload: { detail: `The server failed (HTTP ${response.status}): the terminal `
      + "running automedsam_annotate says why. Nothing was saved." }, shape: [] };
  }
  if (json) return { status: response.status, payload, shape: [] };
  const array = new ARRAY_TYPES[response.headers.get("X-Dtype")](payload);
  return { status: response.status, payload: array, shape: response.headers.get("X-Shape").split(",").map(Number) };
}

function samplePath(sampleId) {
  return `/api/samples/${encodeURIComponent(sampleId)}`;
}

function message(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = kind || "";
}

function errorText(payload) {
  if (payload && payload.reload) return payload.detail + unsavedText();
  if (payload && typeof payload.detail === "string") return payload.detail;
  if (payload && Array.isArray(payload.detail)) return payload.detail.map((d) => d.msg).join("; ");
  return "request failed";
}

// The boxes a reload would lose, listed so that they can be drawn again: they stay on the page meanwhile.
function unsavedText() {
  if (!state.dirty || !state.sample) return "";
  return ` Not saved, on this page until it is reloaded: ${boxesText()} on ${state.sample.sample}.`;
}

function boxesText() {
  const names = Object.fromEntries(Object.entries(state.overview.labels).map(([name, value]) => [value, name]));
  const boxes = state.boxes.map((entry) => `${names[entry.label] || entry.label} [${entry.box.join(", ")}]`);
  return boxes.length ? boxes.join("; ") : "no box (all deleted)";
}

// ------------------------------------------------------------------------------------------------ queue

async function loadOverview() {
  const { status, payload } = await api("GET", "/api/session");
  if (status !== 200) {  // a damaged box file, say: the page says what to fix instead of staying blank
    message(errorText(payload), "error");
    return false;
  }
  state.overview = payload;
  $("dataset").textContent = payload.dataset;
  $("mode").textContent = payload.mode === "review" ? "review: worst first" : "annotate";
  $("help-reject").hidden = payload.mode === "review";
  $("accept").hidden = $("help-accept").hidden = payload.mode !== "review";
  showRejectOrRestore();
  const select = $("label");
  select.innerHTML = "";
  Object.entries(payload.labels).forEach(([name, value], position) => {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = `${position + 1}: ${name}`;
    option.style.color = colour(value);
    select.appendChild(option);
  });
  state.label = Number(select.value);
  renderQueue();
  return true;
}

function renderQueue() {
  const overview = state.overview;
  $("progress").textContent = `${overview.done} of ${overview.total} done`;
  const queue = $("queue");
  queue.innerHTML = "";
  overview.samples.forEach((entry, position) => {
    const button = document.createElement("button");
    // A volume's samples differ by their slice only: say it on a line of its own, where a narrow queue cannot cut it.
    const where = entry.slice === null ? "" : `\nslice ${entry.slice}`;
    const score = entry.disagreement !== undefined ? ` (${entry.disagreement.toFixed(2)})` : "";
    button.textContent = entry.case + where + score;
    button.title = entry.sample;
    button.dataset.status = entry.status;
    button.dataset.sample = entry.sample;
    if (position === state.index) button.className = "current";
    button.addEventListener("click", () => goTo(position));
    queue.appendChild(button);
  });
}

function updateProgress(payload) {
  state.overview.done = payload.done;
  state.overview.total = payload.total;
  state.overview.samples = payload.samples;
  renderQueue();
  if (!runGoingOn()) refreshTraining();  // Train waits for the last box
}

// Whether a run is known to go on: not while the server does not answer (stopped, restarting) or answers for another
// run, which would blame the run for refusing boxes that cannot be saved for another reason.
function runGoingOn() {
  return Boolean(state.training) && state.training.state === "running" && !state.unanswered;
}

async function goTo(position) {
  if (!state.overview.samples.length) {
    message("The queue is empty: no sample to show.");
    return;
  }
  if (state.dirty) leaveOverRejection();
  while (state.dirty) {  // boxes drawn while the save was on its way are saved too before the next sample shows
    if (!(await save()) && !leaveUnqueued()) return;
  }
  const index = Math.max(0, Math.min(position, state.overview.samples.length - 1));
  if (index !== position && state.sample && state.overview.samples[index].sample === state.sample.sample) {
    // N on the last sample (P on the first): say so, rather than reload it and lose the zoom and window set.
    message(`${state.sample.sample} is the ${position > index ? "last" : "first"} sample of the queue.`);
    return;
  }
  const previous = state.index;
  const wanted = state.overview.samples[index].sample;
  state.index = index;
  state.loading = wanted;
  renderQueue();
  const shown = await loadSample(wanted);
  if (state.loading === wanted) state.loading = null;
  if (shown === true) showInAddress(wanted);
  // A sample that failed to load is not on screen: mark again the one that is (unless another load took over).
  if (shown === false && state.index === index) {
    state.index = previous;
    renderQueue();
  }
}

// The sample shown, in the address (#its id): a reload (F5) shows it again, not the first sample of the queue.
function showInAddress(sampleId) {
  const address = new URL(window.location.href);
  address.hash = encodeURIComponent(sampleId);
  history.replaceState(history.state, "", address.pathname + address.search + address.hash);
}

// Where the page opens: the sample the address names (a reload) while the queue holds it, else the first to do.
function openingPosition() {
  const samples = state.overview.samples;
  let named = "";
  try { named = decodeURIComponent(window.location.hash.slice(1)); } catch (error) { named = ""; }
  const addressed = named ? samples.findIndex((entry) => entry.sample === named) : -1;
  if (addressed >= 0) return addressed;
  const firstTodo = samples.findIndex((entry) => entry.status === "todo");
  return firstTodo >= 0 ? firstTodo : 0;
}

// A sample the server's queue no longer holds (a restart after its image was removed, say): its boxes cannot be
// saved, and N, P or the queue would wait for that save for ever. Asked first, the page leaves it without them.
function leaveUnqueued() {
  const sampleId = state.sample && state.sample.sample;
  if (!sampleId || state.unqueued !== sampleId) return false;
  if (!window.confirm(`${sampleId} is no longer in this session's queue: its boxes (${boxesText()}) cannot be `
    + "saved. Leave it and discard them?")) return false;
  state.dirty = false;
  return true;
}

// Boxes kept unsaved over a No structure pressed in another tab (keptUnsaved): only S saves them over it unasked.
// N, P or the queue would save them on the way out, undoing that decision unseen: asked, Cancel leaves without them.
function leaveOverRejection() {
  const sampleId = state.sample && state.sample.sample;
  if (!sampleId || state.overRejection !== sampleId) return;
  state.overRejection = null;
  if (window.confirm(`${sampleId} was marked No structure in another tab or window. Save your boxes (${boxesText()}) `
    + "over it (the sample rejoins the queue)? Cancel leaves it marked, without them.")) return;
  state.dirty = false;
}

// While the next sample loads, the image on screen is the previous one: a box drawn, moved or accepted now would
// belong to neither (and a drag would end in the new image's view). While a run trains, boxes cannot be saved.
function loadingRefuses() {
  if (state.loading) {
    message(`Loading ${state.loading}: draw once it is shown.`, "dirty");
    return true;
  }
  if (runGoingOn()) {  // the run reads the boxes: the server refuses saves
    const run = state.training.run || "training";
    message(`${run[0].toUpperCase()}${run.slice(1)} is running: the boxes can be changed once it ends (or after `
      + `Stop ${run}).`, "dirty");
    return true;
  }
  return false;
}

// ------------------------------------------------------------------------------------------------ one sample

// True when the sample is shown, false when it failed to load, null when another sample was asked for meanwhile.
async function loadSample(sampleId) {
  const { status, payload } = await api("GET", samplePath(sampleId));
  if (status !== 200) { message(errorText(payload), "error"); return false; }
  const prediction = state.overview.mode === "review" ? await api("GET", `${samplePath(sampleId)}/prediction`) : null;
  const plane = await fetchPlane(sampleId, payload.slice);
  if (!plane) return false;
  // N pressed again (or another queue entry clicked) while this sample loaded: show that one, never a mix of both.
  if (state.overview.samples[state.index].sample !== sampleId) return null;
  state.sample = payload;
  state.drag = null;  // a drag begun on the previous image does not carry over
  state.slice = state.requestedSlice = payload.slice;
  state.version = payload.version;
  state.selected = -1;
  state.dirty = false;
  state.unqueued = null;
  state.overRejection = null;
  // The ensemble's proposed boxes are not unsaved changes: passing a review sample by (N, P, the queue) must not
  // add it to the labelled set; Accept, Save or a correction does.
  const proposed = !payload.boxes.length && payload.proposed ? payload.proposed : [];
  const shown = proposed.length ? proposed : payload.boxes;
  state.boxes = shown.map((entry) => ({ label: entry.label, box: entry.box.slice() }));
  state.ensemble = proposed.length ? state.boxes.map((entry) => ({ entry, key: boxKey(entry) })) : [];
  state.saved = new Set(payload.boxes.map(boxKey));
  state.masks = state.boxes.map(() => null);
  state.prediction = prediction && prediction.status === 200 ? prediction.payload : null;
  state.window = payload.window[1] > payload.window[0] ? payload.window.slice() : payload.range.slice();
  if (state.window[1] <= state.window[0]) state.window[1] = state.window[0] + 1;
  syncWindowSliders();
  $("slice-controls").hidden = payload.slice === null;
  showPlane(plane);
  fit();
  state.boxes.forEach((_, index) => requestMask(index));
  showRejectOrRestore();
  if (isRejected()) message(`${payload.sample} is marked No structure: Restore brings it back to annotate.`);
  else if (proposed.length) {
    message("Proposed boxes from the ensemble: Accept (A) adds the sample, or correct them first; N passes it by.",
      "dirty");
  } else message(`${payload.sample}: ${payload.boxes.length} saved box(es)`);
  return true;
}

function isRejected() {
  return Boolean(state.sample) && state.sample.status === "rejected";
}

// No structure on a sample to annotate, Restore on one marked No structure; neither in review.
function showRejectOrRestore() {
  const annotating = Boolean(state.overview) && state.overview.mode !== "review";
  $("reject").hidden = !annotating || isRejected();
  $("restore").hidden = !annotating || !isRejected();
}

async function fetchPlane(sampleId, slice) {
  const query = slice === null ? "" : `?slice=${slice}`;
  const { status, payload, shape } = await api("GET", `${samplePath(sampleId)}/pixels${query}`);
  if (status !== 200) { message(errorText(payload), "error"); return null; }
  return { data: payload, height: shape[0], width: shape[1], channels: shape[2] || 1 };
}

function showPlane(plane) {
  state.plane = plane;
  $("slice").textContent = state.slice === null ? "" :
    `slice ${state.slice}${state.slice === state.sample.slice ? " (sample)" : ` (sample: ${state.sample.slice})`}`;
  renderImage();
}

function onSampleSlice() {
  return state.slice === state.sample.slice;
}

// Shows another slice of the sample's volume. Up pressed again before it arrived counts from the slice asked for,
// and only the last slice asked for is shown: slices answered out of order never replace it.
async function showSlice(slice) {
  if (state.slice === null || slice < 0 || slice >= state.sample.slices) return;
  const sampleId = state.sample.sample;
  state.requestedSlice = slice;
  const plane = await fetchPlane(sampleId, slice);
  if (!plane || state.sample.sample !== sampleId || state.requestedSlice !== slice) return;
  state.slice = slice;
  if (!onSampleSlice()) state.selected = -1;  // boxes are not shown here: Delete must not remove one unseen
  showPlane(plane);
}

// ------------------------------------------------------------------------------------------------ pictures

function renderImage() {
  const plane = state.plane;
  if (!plane) return;
  const image = new ImageData(plane.width, plane.height);
  const [low, high] = state.window;
  const scale = 255 / Math.max(high - low, 1e-12);
  for (let pixel = 0; pixel < plane.width * plane.height; pixel++) {
    for (let channel = 0; channel < 3; channel++) {
      const value = plane.data[pixel * plane.channels + (plane.channels === 3 ? channel : 0)];
      image.data[pixel * 4 + channel] = Math.max(0, Math.min(255, (value - low) * scale));
    }
    image.data[pixel * 4 + 3] = 255;
  }
  state.imageCanvas = toCanvas(image);
  renderOverlay();
}

function renderOverlay() {
  const plane = state.plane;
  if (!plane) return;
  const overlay = new ImageData(plane.width, plane.height);
  let shown = 0;
  const paint = (mask, label, alpha) => {
    const [red, green, blue] = rgb(colour(label));
    for (let pixel = 0; pixel < mask.length; pixel++) {
      if (!mask[pixel]) continue;
      overlay.data[pixel * 4] = red; overlay.data[pixel * 4 + 1] = green; overlay.data[pixel * 4 + 2] = blue;
      overlay.data[pixel * 4 + 3] = alpha;
      shown++;
    }
  };
  if (onSampleSlice()) {
    if (state.prediction) {
      for (const label of new Set(state.prediction)) {
        if (label) paint(state.prediction.map((value) => value === label), label, 70);
      }
    }
    state.masks.forEach((mask, index) => { if (mask) paint(mask, state.boxes[index].label, 110); });
  }
  canvas.dataset.overlayPixels = String(shown);
  state.overlayCanvas = toCanvas(overlay);
  draw();
}

function toCanvas(imageData) {
  const offscreen = document.createElement("canvas");
  offscreen.width = imageData.width;
  offscreen.height = imageData.height;
  offscreen.getContext("2d").putImageData(imageData, 0, 0);
  return offscreen;
}

function draw() {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.fillStyle = "#111";
  context.fillRect(0, 0, width, height);
  if (!state.imageCanvas) return;
  const { scale, x, y } = state.view;
  context.setTransform(ratio * scale, 0, 0, ratio * rowScale(), ratio * x, ratio * y);
  context.imageSmoothingEnabled = false;
  context.drawImage(state.imageCanvas, 0, 0);
  if (state.overlayCanvas) context.drawImage(state.overlayCanvas, 0, 0);
  if (!onSampleSlice()) return;
  // The boxes in screen pixels: their lines, dashes and handles keep one size across and down, whatever the aspect.
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.lineWidth = 2;
  const drawn = state.drag && state.drag.kind === "new" ? [...state.boxes, state.drag.entry] : state.boxes;
  drawn.forEach((entry, index) => {
    const [x0, y0, x1, y1] = entry.box;
    const [left, top] = toScreen(x0, y0), [right, bottom] = toScreen(x1 + 1, y1 + 1);
    context.strokeStyle = colour(entry.label);
    context.setLineDash(index === state.selected ? [] : [6, 3]);
    context.strokeRect(left, top, right - left, bottom - top);
    if (index === state.selected) {
      context.fillStyle = colour(entry.label);
      for (const [hx, hy] of [[left, top], [right, top], [left, bottom], [right, bottom]]) {
        context.fillRect(hx - HANDLE_PX / 2, hy - HANDLE_PX / 2, HANDLE_PX, HANDLE_PX);
      }
    }
  });
  context.setLineDash([]);
}

// Screen pixels per image row: a column's (state.view.scale) times the sample's pixel aspect, its pixels' height over
// their width in the world (session.py, pixel_aspect), so that anisotropic pixels do not stretch the anatomy. Boxes
// stay in image pixels.
function rowScale() {
  return state.view.scale * state.sample.aspect;
}

// Where the corner (x, y) of image pixels (column, row) lies on the canvas, in CSS pixels.
function toScreen(x, y) {
  return [state.view.x + x * state.view.scale, state.view.y + y * rowScale()];
}

function fit() {
  const plane = state.plane;
  if (!plane) return;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  const aspect = state.sample.aspect;
  const scale = Math.min(width / plane.width, height / (plane.height * aspect)) * 0.96;
  state.view = { scale, x: (width - plane.width * scale) / 2, y: (height - plane.height * scale * aspect) / 2 };
  state.fitted = true;
  draw();
}

// By the label's place among the dataset's labels, not by its id: sparse ids (205, 420, 500, 600, ...) would share
// colours.
function colour(label) {
  const position = Object.values(state.overview.labels).indexOf(Number(label));
  return COLOURS[Math.max(position, 0) % COLOURS.length];
}

function rgb(hex) {
  return [1, 3, 5].map((start) => parseInt(hex.slice(start, start + 2), 16));
}

// ------------------------------------------------------------------------------------------------ window / level

function syncWindowSliders() {
  const [low, high] = state.sample.range;
  const span = Math.max(high - low, 1e-12);
  const level = (state.window[0] + state.window[1]) / 2, width = state.window[1] - state.window[0];
  $("level").value = String(Math.round(((level - low) / span) * 1000));
  $("width").value = String(Math.max(1, Math.round((width / span) * 1000)));
}

function windowFromSliders() {
  const [low, high] = state.sample.range;
  const span = Math.max(high - low, 1e-12);
  const level = low + (Number($("level").value) / 1000) * span;
  const width = Math.max((Number($("width").value) / 1000) * span, span / 1000);
  state.window = [level - width / 2, level + width / 2];
  renderImage();
}

// ------------------------------------------------------------------------------------------------ boxes

function toImage(event) {
  const bounds = canvas.getBoundingClientRect();
  return { x: (event.clientX - bounds.left - state.view.x) / state.view.scale,
           y: (event.clientY - bounds.top - state.view.y) / rowScale() };
}

function clampBox(ax, ay, bx, by) {
  const plane = state.plane;
  const clamp = (value, size) => Math.max(0, Math.min(size - 1, Math.floor(value)));
  const x0 = clamp(Math.min(ax, bx), plane.width), x1 = clamp(Math.max(ax, bx), plane.width);
  const y0 = clamp(Math.min(ay, by), plane.height), y1 = clamp(Math.max(ay, by), plane.height);
  return [x0, y0, x1, y1];
}

// Which part of which box lies under the pointer: a corner or edge of the selected box, or the inside of any box.
// Only boxes of the chosen label can be grabbed (an edge or corner resizes, the inside moves): on and inside boxes of
// other labels a drag draws a new box, so nested structures (LV inside MYO, a tumour inside its organ) can be drawn
// however close their edges are. `reach`: how near (screen pixels) a corner or edge grabs it.
function hit(point, reach = HANDLE_PX) {
  const across = reach / state.view.scale, down = reach / rowScale();  // in columns, in rows
  const order = state.selected >= 0 ? [state.selected, ...state.boxes.keys()] : [...state.boxes.keys()];
  for (const index of order) {
    if (state.boxes[index].label !== state.label) continue;
    const [x0, y0, x1, y1] = state.boxes[index].box;
    const left = Math.abs(point.x - x0) < across, right = Math.abs(point.x - (x1 + 1)) < across;
    const top = Math.abs(point.y - y0) < down, bottom = Math.abs(point.y - (y1 + 1)) < down;
    const insideX = point.x > x0 - across && point.x < x1 + 1 + across;
    const insideY = point.y > y0 - down && point.y < y1 + 1 + down;
    if (insideX && insideY && (left || right || top || bottom)) {
      return { index, kind: "resize", edges: { left, right, top, bottom } };
    }
  }
  const index = innermostBoxAt(point);
  return index >= 0 ? { index, kind: "move" } : null;
}

// The smallest box of the chosen label containing the point, -1 if none: the one a press inside nested boxes means.
function innermostBoxAt(point) {
  let best = -1, bestArea = Infinity;
  state.boxes.forEach((entry, index) => {
    const [x0, y0, x1, y1] = entry.box;
    const area = (x1 - x0 + 1) * (y1 - y0 + 1);
    const inside = point.x >= x0 && point.x <= x1 + 1 && point.y >= y0 && point.y <= y1 + 1;
    if (entry.label === state.label && inside && area < bestArea) {
      best = index;
      bestArea = area;
    }
  });
  return best;
}

function onPointerDown(event) {
  if (!state.plane || loadingRefuses()) return;
  canvas.setPointerCapture(event.pointerId);
  const point = toImage(event);
  if (event.button === 1 || (event.button === 0 && event.shiftKey)) {
    state.drag = { kind: "pan", startX: event.clientX, startY: event.clientY, view: { ...state.view } };
    state.fitted = false;
    return;
  }
  if (event.button === 2) {
    state.drag = { kind: "window", startX: event.clientX, startY: event.clientY, window: state.window.slice() };
    return;
  }
  if (event.button === 0 && isRejected()) {  // its boxes were discarded with No structure: Restore first
    message(`${state.sample.sample} is marked No structure: Restore it to draw its boxes.`, "dirty");
    return;
  }
  if (event.button !== 0 || !onSampleSlice()) {
    if (!onSampleSlice()) message(`Boxes go on the sample's slice ${state.sample.slice}: press Home to go back.`);
    return;
  }
  const found = hit(point, event.pointerType === "touch" ? TOUCH_HANDLE_PX : HANDLE_PX);
  if (found) {
    state.selected = found.index;
    state.drag = { ...found, start: point, original: state.boxes[found.index].box.slice(), changed: false };
  } else {
    state.selected = -1;
    const box = clampBox(point.x, point.y, point.x, point.y);
    state.drag = { kind: "new", start: point, entry: { label: state.label, box } };
  }
  draw();
}

function onPointerMove(event) {
  const drag = state.drag;
  if (!drag) {
    if (state.plane && onSampleSlice()) {
      const found = hit(toImage(event));
      canvas.style.cursor = !found ? "crosshair" : found.kind === "move" ? "move" : "nwse-resize";
    }
    return;
  }
  if (drag.kind === "pan") {
    state.view.x = drag.view.x + event.clientX - drag.startX;
    state.view.y = drag.view.y + event.clientY - drag.startY;
    draw();
    return;
  }
  if (drag.kind === "window") {
    const span = state.sample.range[1] - state.sample.range[0] || 1;
    const width = Math.max(drag.window[1] - drag.window[0] + (event.clientX - drag.startX) * span / 500, span / 1000);
    const level = (drag.window[0] + drag.window[1]) / 2 - (event.clientY - drag.startY) * span / 500;
    state.window = [level - width / 2, level + width / 2];
    syncWindowSliders();
    renderImage();
    return;
  }
  const point = toImage(event);
  if (drag.kind === "new") {
    drag.entry.box = clampBox(drag.start.x, drag.start.y, point.x, point.y);
  } else {
    const [x0, y0, x1, y1] = drag.original;
    const dx = Math.round(point.x - drag.start.x), dy = Math.round(point.y - drag.start.y);
    let box;
    if (drag.kind === "move") {
      const plane = state.plane;
      const mx = Math.max(-x0, Math.min(plane.width - 1 - x1, dx));
      const my = Math.max(-y0, Math.min(plane.height - 1 - y1, dy));
      box = [x0 + mx, y0 + my, x1 + mx, y1 + my];
    } else {
      box = resizedBox(drag.original, drag.edges, dx, dy);
    }
    drag.changed = drag.changed || box.some((value, position) => value !== drag.original[position]);
    state.boxes[drag.index].box = box;
  }
  draw();
}

function onPointerUp() {
  const drag = state.drag;
  state.drag = null;
  if (!drag || drag.kind === "pan" || drag.kind === "window") return;
  if (drag.kind === "new") {
    const [x0, y0, x1, y1] = drag.entry.box;
    if (tooSmallForABox(x1 - x0 + 1, y1 - y0 + 1)) { draw(); return; }
    state.boxes.push(drag.entry);
    state.masks.push(null);
    state.selected = state.boxes.length - 1;
    changed(state.selected);
  } else if (drag.changed) {
    changed(drag.index);
  }
  draw();
}

// A pointer the browser took back (a finger's drag it scrolled or zoomed the page with, a touch cancelled): the drag
// ends as if it had not begun, a new box not drawn, a moved or resized box back where it was; otherwise the drag
// would go on with the next hover and the box drawn would be on the screen but not among the boxes saved.
function onPointerCancel() {
  const drag = state.drag;
  state.drag = null;
  if (!drag) return;
  if (drag.kind === "move" || drag.kind === "resize") state.boxes[drag.index].box = drag.original;
  draw();
}

// Double-click: the frozen model outlines what lies under the pointer and the box of the best outline is added as if
// drawn, to keep, adjust or delete (LiteMedSAM outlines nothing from a point itself: box_proposal.py). A double-click
// on that box, untouched since, replaces it with the next outline's box: the best of the first two or three is often
// much better than the first. In review it takes the place of the ensemble's untouched boxes of its label that it
// overlaps (on one of them, it outlines there too): the misplaced box it corrects is not saved beside it.
async function onDoubleClick(event) {
  if (event.button !== 0 || !state.plane || loadingRefuses() || isRejected() || !onSampleSlice()) return;
  const point = toImage(event);
  const found = hit(point);
  const last = state.proposal;
  const onTheProposal = Boolean(found && last) && state.boxes[found.index] === last.entry
    && last.entry.box.join() === last.boxes[last.index].join();  // and not moved or resized since
  if (onTheProposal) {
    last.index = (last.index + 1) % last.boxes.length;
    showProposal(found.index);
    return;
  }
  if (found && !untouchedEnsemble().includes(state.boxes[found.index])) return;  // selects it, as a click does
  const x = Math.floor(point.x), y = Math.floor(point.y);
  if (x < 0 || y < 0 || x >= state.plane.width || y >= state.plane.height) return;
  const sampleId = state.sample.sample, label = state.label;
  message(`Outlining what lies at (${x}, ${y})...`);
  const { status, payload } = await api("POST", `${samplePath(sampleId)}/propose`, { point: [x, y] });
  if (!state.sample || state.sample.sample !== sampleId || !onSampleSlice()) return;  // another sample or slice
  if (status !== 200) { message(errorText(payload), "error"); return; }
  if (loadingRefuses() || isRejected()) return;  // Train started (or X pressed) while the model outlined
  if (!payload.boxes.length) {
    message(`The model outlines nothing at (${x}, ${y}): drag to draw the box.`, "dirty");
    return;
  }
  const entry = { label, box: payload.boxes[0].slice() };
  const replaced = untouchedEnsemble().filter((shown) => shown.label === label && overlap(shown.box, entry.box));
  removeBoxes((shown) => replaced.includes(shown));
  state.boxes.push(entry);
  state.masks.push(null);
  state.proposal = { entry, boxes: payload.boxes, index: 0, replaced: replaced.length };
  showProposal(state.boxes.length - 1);
}

// The ensemble's proposed boxes still on the sample as loaded (neither moved, resized, relabelled nor deleted).
function untouchedEnsemble() {
  return state.ensemble.filter(({ entry, key }) => state.boxes.includes(entry) && boxKey(entry) === key)
    .map(({ entry }) => entry);
}

function overlap(a, b) {
  return a[0] <= b[2] && b[0] <= a[2] && a[1] <= b[3] && b[1] <= a[3];
}

function showProposal(index) {
  const proposal = state.proposal;
  proposal.entry.box = proposal.boxes[proposal.index].slice();
  state.masks[index] = null;
  state.selected = index;
  changed(index);
  const next = proposal.boxes.length > 1 ? "double-click it for the next, " : "";
  message(`Box ${proposal.index + 1} of ${proposal.boxes.length} proposed at the double-click${ensembleText()}: `
    + `${next}adjust it or delete it (Delete); S saves.`, "dirty");
  draw();
}

// In review: which of the ensemble's boxes the proposal replaced, and those still proposed beside it, which A saves.
function ensembleText() {
  const replaced = state.proposal.replaced ? ", in place of the ensemble's box(es) it overlaps" : "";
  const kept = untouchedEnsemble().length;
  return replaced + (kept ? ` (the ensemble's ${kept} other box(es) stay and are saved with it: click one and `
    + "press Delete to remove it)" : "");
}

// A box must span a few pixels both of the image and of the screen: a large image fitted at a third of its size turns
// a click's one-pixel jitter into a 3 x 3 box that would be saved as an annotation.
function tooSmallForABox(width, height) {
  const minimum = minimumBoxSize();
  return width < minimum.columns || height < minimum.rows;
}

// In columns and in rows: a row spans the pixel aspect times a column's size on the screen (rowScale).
function minimumBoxSize() {
  const smallest = (screenScale) => Math.max(MIN_BOX_PX, MIN_DRAG_PX / screenScale);
  return { columns: smallest(state.view.scale), rows: smallest(rowScale()) };
}

// `original` with the grabbed edges moved by (dx, dy), inside the image, and never smaller than a drawn box may be
// (tooSmallForABox): an edge dragged onto the opposite one made a one-pixel box, which was saved. A box already
// smaller (drawn zoomed in further) does not shrink; an edge stops at the opposite one instead of crossing it.
function resizedBox(original, edges, dx, dy) {
  const [x0, y0, x1, y1] = original;
  const minimum = minimumBoxSize();
  const { width: columns, height: rows } = state.plane;
  const [left, right] = movedEdges(x0, x1, { start: edges.left, end: edges.right }, dx, columns,
    Math.ceil(minimum.columns));
  const [top, bottom] = movedEdges(y0, y1, { start: edges.top, end: edges.bottom }, dy, rows, Math.ceil(minimum.rows));
  return [left, top, right, bottom];
}

// One axis of a box under a drag of `delta`: both edges grabbed (a small box pressed in its middle is near all of
// them) move it whole, as a move does; one grabbed edge moves alone, held `minimum` pixels from the other.
function movedEdges(start, end, grabbed, delta, size, minimum) {
  if (grabbed.start && grabbed.end) {
    const shift = Math.max(-start, Math.min(size - 1 - end, delta));
    return [start + shift, end + shift];
  }
  const span = Math.min(minimum, end - start + 1);
  const inside = (value) => Math.max(0, Math.min(size - 1, value));
  return [
    grabbed.start ? Math.min(inside(start + delta), end - span + 1) : start,
    grabbed.end ? Math.max(inside(end + delta), start + span - 1) : end,
  ];
}

function changed(index) {
  state.dirty = true;
  state.edits += 1;
  message("Unsaved changes (S saves)", "dirty");
  if (index !== undefined) requestMask(index);
}

async function requestMask(index) {
  const entry = state.boxes[index];
  const box = entry.box.slice();
  const sampleId = state.sample.sample;
  const { status, payload } = await api("POST", `${samplePath(sampleId)}/segment`, { box });
  const now = state.boxes.indexOf(entry);  // a box deleted meanwhile moves the later ones down
  if (state.sample.sample !== sampleId || now < 0 || entry.box.join() !== box.join()) return;
  if (status !== 200) { message(errorText(payload), "error"); return; }
  state.masks[now] = payload;
  renderOverlay();
}

function deleteSelected() {
  if (state.selected < 0 || loadingRefuses()) return;
  state.boxes.splice(state.selected, 1);
  state.masks.splice(state.selected, 1);
  state.selected = -1;
  changed();
  renderOverlay();
}

// Chooses the label of the boxes to draw and edit. It never changes a box's label: drawing RV, pressing 2 and drawing
// MYO must leave the RV box an RV box; relabelSelected does that on purpose.
function setLabel(value) {
  state.label = Number(value);
  $("label").value = String(value);
  if (state.selected >= 0 && state.boxes[state.selected].label !== state.label) state.selected = -1;
  draw();
}

// Shift + a label's key: the selected box becomes that label's (and that label is chosen, so the box stays editable).
function relabelSelected(value) {
  if (state.selected < 0 || loadingRefuses()) return;
  const selected = state.selected;
  state.boxes[selected].label = Number(value);
  setLabel(value);
  state.selected = selected;
  changed();
  renderOverlay();
}

// ------------------------------------------------------------------------------------------------ saving

// One save at a time: a press made while one is on its way (N right after S) waits for it, then goes on.
function save() {
  if (!state.saving) state.saving = saveNow().finally(() => { state.saving = null; });
  return state.saving;
}

async function saveNow() {
  if (!state.sample) return false;
  if (state.loading) { message(`Loading ${state.loading}: save once it is shown.`, "dirty"); return false; }
  if (isRejected() && !state.boxes.length) {  // its boxes went with the X: nothing to save, said so
    message(markedAlreadyText(state.sample.sample));
    return true;
  }
  if (!state.boxes.length && state.sample.slice === null && !state.saved.size) {
    state.dirty = false;  // drawn and deleted again, or proposals deleted: nothing saved, nothing to save
    return true;
  }
  const sampleId = state.sample.sample;
  const edits = state.edits;  // boxes drawn or moved while the request is on its way stay unsaved
  const path = `${samplePath(sampleId)}/boxes`;
  let sent = state.boxes.map((entry) => ({ label: entry.label, box: entry.box.slice() }));
  let merged = false;
  let { status, payload } = await api("PUT", path, { version: state.version, boxes: sent });
  if (status === 409 && state.sample.sample === sampleId && payload.rejected) return keptUnsaved(sampleId, payload);
  if (status === 409 && state.sample.sample === sampleId) {
    mergeWithServer(payload.boxes);
    state.saved = new Set(payload.boxes.map(boxKey));  // the server's boxes are the base now, even if the retry fails
    state.version = payload.version;
    sent = state.boxes.map((entry) => ({ label: entry.label, box: entry.box.slice() }));
    ({ status, payload } = await api("PUT", path, { version: state.version, boxes: sent }));
    merged = status === 200;
  }
  if (status !== 200) {
    if (status === 422 && payload.marked_no_structure === sampleId) return takeMarked(sampleId, payload);
    if (status === 404 && payload.unknown_sample === sampleId) {
      state.unqueued = sampleId;
      message(`${errorText(payload)}: its boxes cannot be saved. N or P leaves it (after asking).`, "error");
      return false;
    }
    message(errorText(payload), "error");
    return false;
  }
  updateProgress(payload);
  if (!state.sample || state.sample.sample !== sampleId) return true;  // answered after another sample was shown
  state.version = payload.version;
  state.overRejection = null;  // saved over it: boxes drawn from now on are this sample's own
  state.saved = new Set(sent.map(boxKey));
  state.dirty = state.edits !== edits;
  if (state.dirty) message("Saved; changed again meanwhile (S saves)", "dirty");
  else if (merged) message("Merged with the boxes saved in another tab, and saved.");
  else message(`Saved ${sent.length} box(es) of ${sampleId}.`);
  renderOverlay();
  return true;
}

// Marked No structure meanwhile in another tab: a decision, not boxes to merge. This tab's boxes stay unsaved, based
// on the server's empty list now, so that S again saves them over it (the sample rejoins the queue); leaving asks.
function keptUnsaved(sampleId, payload) {
  state.saved = new Set(payload.boxes.map(boxKey));
  state.version = payload.version;
  state.overRejection = sampleId;
  message(`${sampleId} was marked No structure in another tab or window meanwhile, so these boxes were not saved: `
    + "press S again to save them over it (the sample rejoins the queue), or X to keep it marked (discarding them).",
  "error");
  return false;
}

function markedAlreadyText(sampleId) {
  return `${sampleId} is marked No structure already: there is no box to save. Restore brings it back to draw its `
    + "boxes.";
}

// Saved without boxes (all deleted, or a volume's slice never boxed), while another tab had marked it No structure:
// nothing of this tab's own to save over that decision. The page takes the sample as the server holds it (marked, no
// boxes, the server's version), not unsaved, so that N, P and the queue move on; boxes drawn while the save was on its
// way stay, for S to save over it.
function takeMarked(sampleId, payload) {
  updateProgress(payload);
  if (!state.sample || state.sample.sample !== sampleId) return true;
  if (state.boxes.length) { message(errorText(payload), "error"); return false; }
  state.sample = { ...state.sample, status: "rejected", boxes: [] };
  state.version = payload.version;
  state.saved = new Set();
  state.dirty = false;
  state.overRejection = null;
  showRejectOrRestore();
  message(markedAlreadyText(sampleId));
  return true;
}

// Saved meanwhile in another tab: a three-way merge against what this tab last loaded or saved (state.saved). The
// other tab's changes come in (its new and moved boxes are added, the boxes it moved away from or deleted go, if this
// tab still holds them as loaded); this tab's own changes win (the boxes it moved or deleted do not come back).
function mergeWithServer(serverBoxes) {
  const server = new Set(serverBoxes.map(boxKey));
  const mine = new Set(state.boxes.map(boxKey));
  removeBoxes((entry) => state.saved.has(boxKey(entry)) && !server.has(boxKey(entry)));
  for (const entry of serverBoxes) {
    if (!mine.has(boxKey(entry)) && !state.saved.has(boxKey(entry))) {
      state.boxes.push({ label: entry.label, box: entry.box.slice() });
      state.masks.push(null);
      requestMask(state.boxes.length - 1);
    }
  }
}

// Removes the boxes `drop` picks, with their masks; the selection and a move or resize under way follow the boxes
// that stay (and end when theirs goes), since both hold an index into state.boxes.
function removeBoxes(drop) {
  const selected = state.boxes[state.selected];
  const dragged = state.drag && state.drag.index !== undefined ? state.boxes[state.drag.index] : undefined;
  const kept = state.boxes.map((entry) => !drop(entry));
  state.masks = state.masks.filter((_, index) => kept[index]);
  state.boxes = state.boxes.filter((_, index) => kept[index]);
  state.selected = state.boxes.indexOf(selected);
  if (dragged) state.drag.index = state.boxes.indexOf(dragged);
  if (state.drag && state.drag.index < 0) state.drag = null;
}

// One No structure or Accept at a time, and not again right after one: pressed again before the first has shown the
// next sample (a double-click), or as it appears (X X), it would mark or add a sample nobody has looked at.
const DECISION_PAUSE_MS = 500;

function oneDecisionAtATime(name, decide) {
  return async () => {
    if (state.deciding) {
      message(`${name} pressed again right after the last one, before the sample shown could be looked at: `
        + "ignored. Press it again to decide on this sample.", "dirty");
      return;
    }
    state.deciding = true;
    try {
      await decide();
    } finally {
      setTimeout(() => { state.deciding = false; }, DECISION_PAUSE_MS);
    }
  };
}

const reject = oneDecisionAtATime("No structure", async () => {
  if (state.sample && state.overview.mode === "review") {  // the record of No structure is the draw's (session.py)
    message("No structure is for the drawn samples: in review, press N to pass this one by (a sample passed by is "
      + "not added).", "dirty");
    return;
  }
  if (!state.sample || isRejected() || loadingRefuses()) return;
  const sampleId = state.sample.sample;
  if (state.boxes.length && !window.confirm(`${sampleId} has ${state.boxes.length} box(es). Mark it as not `
    + "showing the structure and discard them?")) return;
  // X right after S: the reject names the boxes' version that save gets back, not the one before it.
  if (state.saving) await state.saving;
  if (state.sample.sample !== sampleId || loadingRefuses()) return;  // N pressed meanwhile: not this sample's X
  const { status, payload } = await api("POST", `${samplePath(sampleId)}/reject`, { version: state.version });
  if (status === 409) {
    state.dirty = false;  // the boxes this tab had were to be discarded: show the other tab's instead
    await goTo(state.index);
    message(`${sampleId} was not marked No structure: its boxes were changed in another tab or window meanwhile. `
      + "They are shown now: press X again to mark it anyway.", "error");
    return;
  }
  if (status !== 200) { message(errorText(payload), "error"); return; }
  state.dirty = false;
  updateProgress(payload);
  await goTo(nextToDo(state.index));
  message(`${sampleId} does not show the structure: the next drawn sample joins the queue (Restore on ${sampleId} `
    + "takes this back).");
});

// The first sample after `position` (else from the top) still to annotate: after No structure, the one brought in.
function nextToDo(position) {
  const samples = state.overview.samples;
  const after = samples.findIndex((entry, index) => index > position && entry.status === "todo");
  const any = samples.findIndex((entry) => entry.status === "todo");
  return after >= 0 ? after : any >= 0 ? any : position;
}

async function restore() {
  if (!isRejected() || loadingRefuses()) return;
  const sampleId = state.sample.sample;
  const { status, payload } = await api("POST", `${samplePath(sampleId)}/restore`, { version: state.version });
  if (status === 409) {  // another tab boxed or restored it: show it as it is now
    await goTo(state.index);
    message(`${sampleId} was changed in another tab or window meanwhile: it is shown as it is now.`, "error");
    return;
  }
  if (status !== 200) { message(errorText(payload), "error"); return; }
  updateProgress(payload);
  await goTo(payload.samples.findIndex((entry) => entry.sample === sampleId));
  message(`${sampleId} is back in the queue: draw its boxes.`);
}

const accept = oneDecisionAtATime("Accept", async () => {
  if (state.sample && state.overview.mode !== "review") {
    message("A (Accept) is for review: here S saves the boxes and N goes to the next sample.", "dirty");
    return;
  }
  if (loadingRefuses()) return;
  if (!state.boxes.length) { message("Draw a box first: a sample is added with its boxes.", "error"); return; }
  if (await save()) await goTo(state.index + 1);
});

// ------------------------------------------------------------------------------------------------ training

const POLL_MS = 2000;
const IDLE_POLL_MS = 10000;

function duration(seconds) {
  return seconds < 90 ? `${Math.round(seconds)} s` : `${Math.round(seconds / 60)} min`;
}

function showTraining(training) {
  state.training = training;
  state.unanswered = false;
  const running = training.state === "running";
  const button = $("train");
  button.textContent = running ? `Stop ${training.run || "training"}` : "Train";
  button.disabled = !running && Boolean(training.blocker);
  button.title = running ? "Stop the run: the running step ends at once"
    : training.blocker || "Preprocess the boxes, train every fold, then review the new model";
  $("download").disabled = !training.model;
  const review = $("review");
  review.disabled = running || !training.model || Boolean(training.review_blocker);
  review.title = (!running && training.model && training.review_blocker)
    || "Rank the unlabelled samples with the trained model and show them, worst first";
  $("segment").disabled = running || !training.model;
  const segmentations = $("download-segmentations");
  segmentations.disabled = running || !training.segmentations;
  segmentations.textContent = training.segmentations_out_of_date ? "Download segmentations (out of date)"
    : "Download segmentations";
  segmentations.title = training.segmentations_out_of_date ? "Made before the latest boxes or model: Segment "
    + "images again to include them" : "The label maps of the last Segment images, as one zip";
  $("review").hidden = Boolean(state.overview) && state.overview.mode === "review";
  const last = lastOutput(training);
  let text = "";
  if (running) {
    text = `${training.title} (step ${training.step} of ${training.steps}, ${duration(training.elapsed_s)})`
      + (last ? `: ${last}` : "");
  } else if (training.state === "finished") {
    text = `Finished in ${duration(training.elapsed_s)}.`;
  } else if (training.state === "failed" || training.state === "stopped") {
    text = training.message;
  }
  const line = $("training");
  line.textContent = text;
  line.title = running ? (training.lines || []).join("\n") : `Log: ${training.log}`;
  line.className = training.state === "failed" ? "error" : "";
  if (training.problem) showTrainingProblem(training.problem);
  else state.trainingProblem = null;
}

// The line being redrawn (a progress bar) or the last line printed; after an epoch, the bar and that epoch's loss
// and validation box Dice, which the bar alone hides: "training 2/3 0:00:16 \u00b7 epoch 1/3 loss 1.9900 val box
// Dice 0.500", with a middle dot.
function lastOutput(training) {
  const live = plainLine(training.live || "");
  const lines = (training.lines || []).map(plainLine);
  const liveEpoch = epochFigures(live);
  const epoch = lastEpochFigures(lines);
  if (liveEpoch || !epoch) return (liveEpoch && liveEpoch.text) || live || lines.slice(-1)[0] || "";
  return live ? `${live} \u00b7 ${epoch}` : epoch;
}

// The figures of the last line when it is an epoch's; an epoch that did not validate (most do not: the plans'
// val_every) shows the box Dice of the last one of this run that did, naming its epoch.
function lastEpochFigures(lines) {
  const last = epochFigures(lines.slice(-1)[0] || "");
  if (!last || last.dice) return last && last.text;
  for (let index = lines.length - 2; index >= 0; index -= 1) {
    const earlier = epochFigures(lines[index]);
    if (!earlier) break;
    if (earlier.dice) return `${last.text} val box Dice ${earlier.dice} (epoch ${earlier.epoch})`;
  }
  return last.text;
}

// A bar reads better without its glyphs ("embeddings 4/10 0:00:06").
function plainLine(line) {
  return line.replace(/[\u2500-\u257f]+/g, " ").replace(/\s+/g, " ").trim();
}

// The epoch, its loss and its validation box Dice of a trainer's epoch line, null for any other line.
function epochFigures(line) {
  const figures = /^epoch (\d+\/\d+) loss (\S+)(?:.* val box Dice (\S+))?/.exec(line);
  if (!figures) return null;
  const [, epoch, loss, dice] = figures;
  return {epoch, dice, text: `epoch ${epoch} loss ${loss}` + (dice ? ` val box Dice ${dice}` : "")};
}

// Every request about the run takes a ticket: an answer older than one already shown (a poll sent just before
// Train, answered after it) is dropped, or the page would see the run end and start again.
async function trainingRequest(method, path) {
  const ticket = ++state.trainingTickets.sent;
  const answer = await api(method, path);
  answer.stale = answer.status === 200 && ticket < state.trainingTickets.shown;
  if (answer.status === 200 && !answer.stale) state.trainingTickets.shown = ticket;
  return answer;
}

async function refreshTraining() {
  const { status, payload, stale } = await trainingRequest("GET", "/api/training");
  if (status === 200) {
    // The "No answer" of a save tried meanwhile would stay on screen (a run that ended says so instead)
    if (state.unanswered) message(`automedsam_annotate answers again${state.dirty ? ": S saves the boxes" : ""}.`);
    if (!stale) await onTraining(payload);
  } else if (status === 0 || status === OPENED_ELSEWHERE || status === NOT_AUTHORISED) {
    showUnanswered(status === 0 ? "automedsam_annotate is not answering (stopped?): start it again, then save. "
      + "Boxes not saved stay on this page." : errorText(payload));
  } else {
    showTrainingProblem(errorText(payload));
  }
}

// No answer about the runs, or one from another run: the header says why and shows no run going on, its buttons
// wait for an answer, and boxes can be drawn meanwhile. The run known before stays in state.training: if it has
// ended once the server answers again (a restart stops it), the page says so and loads the queue again.
function showUnanswered(text) {
  state.unanswered = true;
  $("train").textContent = "Train";
  for (const id of ["train", "review", "segment", "download", "download-segmentations"]) $(id).disabled = true;
  showTrainingProblem(text);
}

// What keeps the run's status from being complete (its `problem`: a damaged box file of a case the queue does not
// show, say; the buttons still work) or from being read at all (a failed request): the header's run line says why
// until it is fixed, and the status line once, so that the poll does not overwrite every other message.
function showTrainingProblem(text) {
  const line = $("training");
  line.textContent = text;
  line.title = text;
  line.className = "error";
  if (text !== state.trainingProblem) message(text, "error");
  state.trainingProblem = text;
}

// One loop for the page's life: every 2 s while a run goes on or the server does not answer (a restart shows soon),
// every 10 s otherwise (another tab may start one).
async function watchTraining() {
  try {
    await refreshTraining();
  } finally {
    setTimeout(watchTraining, runGoingOn() || state.unanswered ? POLL_MS : IDLE_POLL_MS);
  }
}

// `started`: the answer to this tab's own start, which may already say the run ended (a step that fails at once):
// that run has ended all the same, and the page must say how.
async function onTraining(training, { started = false } = {}) {
  const wasRunning = started || (Boolean(state.training) && state.training.state === "running");
  showTraining(training);
  if (wasRunning && training.state !== "running") await trainingEnded(training);
}

// A command's error is the last "Error:" line and the lines after it (a list of bad files, what to do).
function failureText(training) {
  const lines = (training.lines || []).map((line) => line.trim());
  const start = lines.map((line) => line.startsWith("Error:")).lastIndexOf(true);
  if (start >= 0) return `${training.title} failed: ${lines.slice(start).join(" ")}`;
  return training.message || "The run ended without a word: the server may have been restarted.";
}

async function trainingEnded(training) {
  // Boxes left unsaved in this tab before another tab's run began: save them while their sample is still queued.
  if (state.dirty) await save();
  if (training.run !== "segmentation") {  // Segment images keeps the annotator's place
    // Planning may have changed the queue, and a finished run shows the new model's review.
    if (!(await loadOverview())) return;
    await goTo(0);
    showTraining(training);  // the mode may have changed: Review hides in review
  }
  message(...endedMessage(training));
}

// What the page says of a run that has ended, as it ends or in a page opened after (a reload, a new tab): a
// failure in the command's own words, what Segment images wrote, what a finished run found. [text, kind]
function endedMessage(training) {
  if (!["finished", "stopped"].includes(training.state)) {  // failed, or unknown to a restarted server ("idle")
    return [`${failureText(training)} (the whole output: ${training.log})`, "error"];
  }
  if (training.run === "segmentation") return [segmentingEndedText(training), ""];
  if (training.state === "finished") {
    return [state.overview.mode === "review" ? "The unlabelled samples are shown worst first, with the trained "
      + "model's prediction: correct or accept the boxes where it fails, then Train again." : finishedText(training),
    ""];
  }
  return [training.run === "review" ? "Review stopped: the queue shown is unchanged; Review ranks the samples again "
    + "from the first." : "Training stopped: the boxes can be changed again; Train starts again from the first step.",
  ""];
}

// A page opened after the last run ended says how it ended, unless the run is unknown (none in this server run, no
// answer, a problem shown) or the sample failed to load: that error stays.
function sayHowTheLastRunEnded() {
  const training = state.training;
  if (!training || !["finished", "failed", "stopped"].includes(training.state)) return;
  if (state.unanswered || state.trainingProblem || $("status").className === "error") return;
  message(...endedMessage(training));
}

// A run that ended without a review to show: its last line says why ("Every sample is labelled: nothing is left
// to review.").
function finishedText(training) {
  const last = (training.lines || []).map((line) => line.trim()).filter(Boolean).slice(-1)[0] || "";
  const done = training.run === "review" ? "Review finished" : "Training finished";
  return last ? `${done}: ${last}` : `${done}.`;
}

// A finished Segment images gives the predict command's summary ("Wrote 30 segmentation(s) to ...: 12 outlined from
// the annotator's boxes, ...").
function segmentingEndedText(training) {
  if (training.state === "stopped") {
    return "Segmenting stopped: the last complete segmentations are kept, and Segment images goes on from where this "
      + "run stopped.";
  }
  const summary = (training.lines || []).filter((line) => line.startsWith("Wrote ")).slice(-1)[0] || "";
  return `${summary} Download segmentations gives them as one zip.`.trim();
}

const STOP_QUESTIONS = {
  training: "Stop the training? Unless every fold has finished, the model trained before is put back in place and "
    + "the folds trained in this run go to previous/ (on the first Train, with no model before, the folds finished "
    + "so far stay). Train starts again from the first step.",
  review: "Stop ranking the samples for review?",
  segmentation: "Stop segmenting the images?",
};

// One start or stop at a time: the second click of a double-click, sent before the first's answer, would be refused
// ("Training is already running"), the user's own start answered in red.
function oneRunRequestAtATime(request) {
  return async () => {
    if (state.startingOrStopping) return;
    state.startingOrStopping = true;
    try {
      await request();
    } finally {
      state.startingOrStopping = false;
    }
  };
}

// A start or stop refused (a run another tab started, or one that ended meanwhile): the reason, and the run as it is.
async function runRequestRefused(payload) {
  message(errorText(payload), "error");
  await refreshTraining();
}

const toggleTraining = oneRunRequestAtATime(async () => {
  const running = Boolean(state.training) && state.training.state === "running";
  if (running && !window.confirm(STOP_QUESTIONS[state.training.run] || STOP_QUESTIONS.training)) return;
  if (!running && state.dirty && !(await save())) return;
  const { status, payload, stale } = await trainingRequest(running ? "DELETE" : "POST", "/api/training");
  if (status !== 200) { await runRequestRefused(payload); return; }
  if (payload.state === "running") {
    message("Training started: boxes cannot be changed until it ends. The page stays open to browse the samples.");
  }
  if (!stale) await onTraining(payload, { started: !running });
});

// Review and Segment images: a run that needs the trained model, started after saving the sample on screen.
const runStarter = (path, startedText) => oneRunRequestAtATime(async () => {
  if (state.dirty && !(await save())) return;
  const { status, payload, stale } = await trainingRequest("POST", path);
  if (status !== 200) { await runRequestRefused(payload); return; }
  message(startedText);
  if (!stale) await onTraining(payload, { started: true });
});

const startReview = runStarter("/api/review", "Ranking the unlabelled samples with the trained model: the review "
  + "opens when it is done.");
const startSegmenting = runStarter("/api/segmentations", "Segmenting the images whose boxes or model changed "
  + "since the last time (every image the first time): your boxes are outlined by the frozen model, the trained model "
  + "segments the rest. Boxes cannot be changed until it ends.");

// A zip the server packs on request, saved under the name it gives; returns that name, or null after an error.
async function downloadZip(path, fallbackName) {
  let response = null;
  try { response = await fetch(path, { headers: pageHeaders() }); } catch (error) { response = null; }
  if (!response || !response.ok) {
    const payload = response ? await response.json().catch(() => ({})) : {};
    message(response ? errorText(payload) : "No answer from automedsam_annotate (is it still running?).", "error");
    return null;
  }
  const named = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
  const link = document.createElement("a");
  link.download = named ? named[1] : fallbackName;
  link.href = URL.createObjectURL(await response.blob());
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  return link.download;
}

// The zip carries the dataset's name, which may name a patient (a folder imported with --images): the page asks for
// the name it carries instead, as automedsam_export_model's --name does; Cancel downloads nothing.
async function downloadModel() {
  const shared = window.prompt("The dataset name the shared model carries (change it if this one identifies a "
    + "patient): a name such as Shared, or a full name such as Dataset005_Shared.", state.overview.dataset);
  if (shared === null) return;
  message("Packing the model...");
  const name = await downloadZip(`/api/model?name=${encodeURIComponent(shared.trim())}`, "model.zip");
  if (name) message(`Downloaded ${name}: on another machine, automedsam_install_model ${name} installs it.`);
}

async function downloadSegmentations() {
  message("Packing the segmentations...");
  const name = await downloadZip("/api/segmentations", "segmentations.zip");
  if (name) message(`Downloaded ${name}: one label map per image, named after the image.`);
}

// ------------------------------------------------------------------------------------------------ wiring

canvas.addEventListener("pointerdown", onPointerDown);
canvas.addEventListener("pointermove", onPointerMove);
canvas.addEventListener("pointerup", onPointerUp);
canvas.addEventListener("pointercancel", onPointerCancel);
canvas.addEventListener("lostpointercapture", onPointerCancel);  // after pointerup too, when the drag has ended
canvas.addEventListener("dblclick", onDoubleClick);
canvas.addEventListener("contextmenu", (event) => event.preventDefault());
canvas.addEventListener("wheel", (event) => {
  event.preventDefault();
  const bounds = canvas.getBoundingClientRect();
  const cx = event.clientX - bounds.left, cy = event.clientY - bounds.top;
  const factor = Math.exp(-event.deltaY * 0.0015);
  state.view.x = cx - (cx - state.view.x) * factor;
  state.view.y = cy - (cy - state.view.y) * factor;
  state.view.scale *= factor;
  state.fitted = false;
  draw();
}, { passive: false });
// The stage changes size with the window and when the header wraps (a 3D sample adds the slice controls): a fitted
// image is fitted again, a zoomed one keeps its zoom.
new ResizeObserver(() => (state.fitted ? fit() : draw())).observe(canvas);
// A label chosen in the list gives the focus back to the page: Up would otherwise change the label, not the slice.
$("label").addEventListener("change", (event) => { setLabel(event.target.value); event.target.blur(); });
$("level").addEventListener("input", windowFromSliders);
$("width").addEventListener("input", windowFromSliders);
// A slider set with the mouse gives the keys back to the page once let go: its arrow keys would otherwise change the
// window, not the slice or sample. A slider reached with Tab keeps its arrows.
document.addEventListener("pointerup", () => {
  if (["level", "width"].includes(document.activeElement.id)) document.activeElement.blur();
});
// A header button gives the focus back to the page once clicked: Enter or Space would otherwise click it again, on
// the sample shown next (No structure or Accept on a sample nobody looked at).
function onClick(id, action) {
  $(id).addEventListener("click", (event) => { event.currentTarget.blur(); action(); });
}

onClick("prev", () => goTo(state.index - 1));
onClick("next", () => goTo(state.index + 1));
onClick("save", save);
onClick("delete", deleteSelected);
onClick("reject", reject);
onClick("accept", accept);
onClick("restore", restore);
onClick("train", toggleTraining);
onClick("review", startReview);
onClick("download", downloadModel);
onClick("segment", startSegmenting);
onClick("download-segmentations", downloadSegmentations);
onClick("slice-up", () => showSlice(state.requestedSlice + 1));
onClick("slice-down", () => showSlice(state.requestedSlice - 1));

// The keys a focused slider (or label list) uses itself; any other key is the page's, so S, N or a label's key work
// right after the window was set with a slider. Home stays the page's (the sample's slice): on the Width slider it
// would make the window 1 wide, the image black and white.
const CONTROL_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "End", "PageUp", "PageDown"]);
// Keys that act once per press: held down, the keyboard repeats them, and X or A would go on marking or adding the
// samples shown next, unseen (S and Delete: one save, one box).
const ONCE_PER_PRESS = new Set(["x", "a", "s", "Delete", "Backspace"]);

document.addEventListener("keydown", (event) => {
  const key = event.key;
  if (["INPUT", "SELECT"].includes(event.target.tagName) && CONTROL_KEYS.has(key)) return;
  const name = key.length === 1 ? key.toLowerCase() : key;  // Caps Lock or Shift: N is still next
  if (event.repeat && ONCE_PER_PRESS.has(name)) { event.preventDefault(); return; }
  if ((event.ctrlKey || event.metaKey) && name === "s") { event.preventDefault(); save(); return; }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const labels = Object.values(state.overview ? state.overview.labels : {});
  const physical = /^(Digit|Numpad)[1-9]$/.test(event.code) ? Number(event.code.slice(-1)) : 0;  // Shift+1 is "!"
  const digit = /^[1-9]$/.test(key) ? Number(key) : physical;
  if (digit && digit <= labels.length) {
    event.preventDefault();
    (event.shiftKey ? relabelSelected : setLabel)(labels[digit - 1]);
    return;
  }
  const actions = {
    n: () => goTo(state.index + 1), ArrowRight: () => goTo(state.index + 1),
    p: () => goTo(state.index - 1), ArrowLeft: () => goTo(state.index - 1),
    s: save, Delete: deleteSelected, Backspace: deleteSelected, x: reject, a: accept, f: fit,
    ArrowUp: () => showSlice(state.requestedSlice + 1), PageUp: () => showSlice(state.requestedSlice + 1),
    ArrowDown: () => showSlice(state.requestedSlice - 1), PageDown: () => showSlice(state.requestedSlice - 1),
    Home: () => { if (state.sample) showSlice(state.sample.slice); },
    Escape: () => { state.selected = -1; draw(); },
  };
  const action = actions[name];
  if (action) { event.preventDefault(); action(); }
});

window.addEventListener("beforeunload", (event) => { if (state.dirty) event.preventDefault(); });

// The token of the address automedsam_annotate printed is in the page's cookie now (server.py, page): out of the
// address bar, it stays out of the history, screenshots and links copied from there.
function dropTokenFromAddress() {
  const address = new URL(window.location.href);
  if (!address.searchParams.has("token")) return;
  address.searchParams.delete("token");
  history.replaceState(history.state, "", address.pathname + address.search + address.hash);
}

(async () => {
  dropTokenFromAddress();
  if (!(await loadOverview())) return;
  const firstAnswer = watchTraining();
  await goTo(openingPosition());
  await firstAnswer;
  sayHowTheLastRunEnded();
})();
