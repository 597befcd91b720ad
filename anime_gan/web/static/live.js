// The page's live camera (anime_gan/web/live.py): the centre square of each camera frame is sent as a
// JPEG, the stylized JPEG drawn beside the camera; one frame in flight, so frames the model has no time
// for are skipped, never queued. body[data-live] is off | starting | on | error, for people and for
// tests (tests/web/test_live.py); #live_result's data-frame is the server's number of the frame shown.
"use strict";

const SEND_QUALITY = 0.85;  // the JPEG quality of the frames sent (the server answers at the same)
const WINDOW = 10;  // frames/s and the times shown are over the last WINDOW frames
const live = { session: null, stream: null, shown: [], timings: [], shownAt: 0 };

function setLive(state) { document.body.dataset.live = state; }

function setMode(mode) {
  if (document.body.dataset.mode && document.body.dataset.mode !== mode) showError(null);  // the other mode's
  document.body.dataset.mode = mode;
  $("mode_upload").setAttribute("aria-selected", String(mode !== "live"));
  $("mode_live").setAttribute("aria-selected", String(mode === "live"));
  if (mode !== "live") stopLive();
  if (mode === "live" && config) fillLiveControls();
}

function fillLiveControls() {
  const offer = config.live;
  $("live_lease").textContent = offer.lease_seconds.toFixed(0);
  for (const [id, values, chosen, label] of [
    ["live_size", offer.sizes, offer.default_size, (s) => `${s} × ${s}`],
    ["live_precision", offer.precisions, offer.default_precision, (p) => p],
  ]) {
    const select = $(id);
    if (select.options.length) continue;
    for (const value of values) {
      const option = element("option", { value });
      option.textContent = label(value);
      option.selected = value === chosen;
      select.append(option);
    }
  }
}

async function postForm(url, fields) {
  const form = new FormData();
  for (const [key, value] of Object.entries(fields)) form.append(key, value);
  try {
    return await (await fetch(url, { method: "POST", body: form })).json();
  } catch (e) {
    return { error: `the server did not answer (${e.message}); is python -m anime_gan.app still running?` };
  }
}

async function startLive() {
  await stopLive();
  showError(null);
  if (!navigator.mediaDevices?.getUserMedia) {
    return liveFail("this browser offers no camera to this page (it needs http://127.0.0.1 or https); use a photo instead.");
  }
  setLive("starting");
  $("live_start").disabled = true;
  $("live_fps").textContent = "starting…";
  $("live_timing").textContent = "";
  // Asked first, so that a second page is told before it opens its camera; the stream itself starts once
  // the camera is open (the browser's permission question may take longer than the stream's lease).
  let state;
  try {
    state = await (await fetch("/api/live")).json();
  } catch (e) {
    return liveFail(`the server did not answer (${e.message}); is python -m anime_gan.app still running?`);
  }
  if (state.busy) return liveFail(state.message);
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } } });
  } catch (e) {
    return liveFail(`the camera could not be opened (${e.message}); allow it in the browser, or use a photo instead.`);
  }
  live.stream = stream;
  const video = $("live_camera");
  video.srcObject = stream;
  await video.play().catch(() => {});
  $("live_stop").disabled = false;
  $("live_timing").textContent = "Loading the model and running it once at this size…";
  const answer = await postForm("/api/live/start", {
    model: $("model").value, size: $("live_size").value, precision: $("live_precision").value });
  if (live.stream !== stream) {  // stopped meanwhile
    if (answer.session) postForm(`/api/live/${answer.session}/stop`, {});
    return;
  }
  if (answer.error) return liveFail(answer.error);
  live.session = answer.session;
  $("live_caption").textContent = `${answer.size} × ${answer.size} · ${answer.precision}`;
  live.shown = [];
  live.timings = [];
  setLive("on");
  run(answer.session, answer.size);
}

async function stopLive() {
  const session = live.session;
  live.session = null;
  if (live.stream) live.stream.getTracks().forEach((t) => t.stop());  // releases the camera
  live.stream = null;
  $("live_camera").srcObject = null;
  $("live_stop").disabled = true;
  $("live_start").disabled = false;
  if (document.body.dataset.live !== "error") setLive("off");
  if (session) await postForm(`/api/live/${session}/stop`, {});
}

function liveFail(message) {
  stopLive();
  $("live_start").disabled = false;
  $("live_fps").textContent = "– frames/s";
  showError(message);
  setLive("error");
}

// Server-Timing "decode;dur=1.2, model;dur=80, encode;dur=0.7" -> {decode: 1.2, model: 80, encode: 0.7}
function serverTimes(header) {
  const times = {};
  for (const part of (header || "").split(",")) {
    const match = part.trim().match(/^(\w+);dur=([\d.]+)$/);
    if (match) times[match[1]] = parseFloat(match[2]);
  }
  return times;
}

async function run(session, size) {
  const video = $("live_camera");
  const source = element("canvas", { width: size, height: size });
  const sourceContext = source.getContext("2d");
  const out = $("live_result");
  out.width = out.height = size;
  delete out.dataset.frame;
  const outContext = out.getContext("2d");
  while (live.session === session) {
    if (video.readyState < 2 || !video.videoWidth) {  // no picture yet
      await new Promise((resolve) => setTimeout(resolve, 30));
      continue;
    }
    const started = performance.now();
    const side = Math.min(video.videoWidth, video.videoHeight);
    sourceContext.drawImage(video, (video.videoWidth - side) / 2, (video.videoHeight - side) / 2, side, side,
                            0, 0, size, size);
    const blob = await new Promise((resolve) => source.toBlob(resolve, "image/jpeg", SEND_QUALITY));
    const sent = performance.now();
    let response, data;
    try {
      response = await fetch(`/api/live/${session}/frame`, {
        method: "POST", body: blob, headers: { "Content-Type": "image/jpeg" } });
      if (!response.ok) {
        const answer = await response.json();
        if (live.session === session) liveFail(answer.error);
        return;
      }
      data = await response.blob();
    } catch (e) {
      if (live.session === session) liveFail(`the server did not answer (${e.message}); is python -m anime_gan.app still running?`);
      return;
    }
    const answered = performance.now();
    if (live.session !== session) return;
    show(session, data, Number(response.headers.get("X-Frame")), outContext);  // decoded while the next frame goes
    record(answered, { capture: sent - started, roundTrip: answered - sent,
                       ...serverTimes(response.headers.get("Server-Timing")) });
  }
}

// Draws a stylized frame once decoded, unless a newer one is already shown or the stream has ended.
async function show(session, data, number, context) {
  const picture = await createImageBitmap(data);
  const out = context.canvas;
  if (live.session === session && number > Number(out.dataset.frame || 0)) {
    context.drawImage(picture, 0, 0);
    out.dataset.frame = number;
  }
  picture.close();
}

function record(now, timing) {
  live.shown.push(now);
  live.timings.push(timing);
  while (live.shown.length > WINDOW + 1) live.shown.shift();
  while (live.timings.length > WINDOW) live.timings.shift();
  if (now - live.shownAt < 250 || live.shown.length < 2) return;  // the text changes 4 times a second
  live.shownAt = now;
  const fps = (live.shown.length - 1) / ((now - live.shown[0]) / 1000);
  $("live_fps").textContent = `${fps.toFixed(1)} frames/s`;
  const mean = (key) => live.timings.reduce((sum, t) => sum + (t[key] || 0), 0) / live.timings.length;
  const server = mean("decode") + mean("wait") + mean("model") + mean("encode");
  const ms = (x) => `${x.toFixed(x < 10 ? 1 : 0)} ms`;
  const wait = mean("wait") >= 1 ? ` · waiting for uploads ${ms(mean("wait"))}` : "";
  $("live_timing").textContent = `Per frame: model ${ms(mean("model"))}${wait} · server decode ` +
    `${ms(mean("decode"))}, encode ${ms(mean("encode"))} · HTTP and browser ${ms(mean("roundTrip") - server)} · ` +
    `camera to JPEG ${ms(mean("capture"))} (the last ${live.timings.length} frames).`;
}

$("mode_upload").addEventListener("click", () => setMode("upload"));
$("mode_live").addEventListener("click", () => setMode("live"));
$("live_start").addEventListener("click", startLive);
$("live_stop").addEventListener("click", () => { stopLive(); $("live_fps").textContent = "– frames/s"; });
for (const id of ["model", "live_size", "live_precision"]) {
  $(id).addEventListener("change", () => { if (live.session) startLive(); });  // the new choice at once
}
// A closed or reloaded tab ends its stream at once (the server's lease ends it anyway).
window.addEventListener("pagehide", () => {
  if (live.session) navigator.sendBeacon(`/api/live/${live.session}/stop`);
});
setMode("upload");
setLive("off");
