// The page of `python -m anime_gan.app`: plain JS, no library. body[data-state] is idle | busy | done |
// error, for people and for tests (tests/web/test_app.py). The live camera is live.js.
"use strict";

const $ = (id) => document.getElementById(id);
let config = null;
let lastFile = null;  // re-run with other settings ("Run again", or a changed control for an image)
let current = 0;  // the newest request; answers to older ones are ignored
let ticker = null;

function setState(state) { document.body.dataset.state = state; }

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
  if (message) setState("error");
}

function showWarning(message) {
  $("warning").textContent = message || "";
  $("warning").hidden = !message;
}

function showStatus(text, fraction) {
  $("status").hidden = text === null;
  if (text === null) return;
  $("status_text").textContent = text;
  const bar = $("progress_bar");
  bar.className = fraction == null ? "indeterminate" : "";
  bar.style.width = fraction == null ? "" : `${Math.round(fraction * 100)}%`;
}

function stopTicker() { if (ticker) clearInterval(ticker); ticker = null; }

function isVideo(name) {
  const dot = name.lastIndexOf(".");
  return dot >= 0 && config.video_suffixes.includes(name.slice(dot).toLowerCase());
}

// The same sentence the server gives (anime_gan.app.upload_too_large_message), said before sending.
function tooLargeMessage(name, size, limit) {
  return `${name} is ${(size / 2 ** 20).toFixed(1)} MB, more than the ${Math.round(limit / 2 ** 20)} MB ` +
    "this page accepts; send a smaller file or start the app with a larger --max_upload_mb.";
}

function element(tag, attributes) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) if (value != null) el.setAttribute(key, value);
  return el;
}

function fill(frameId, child) { $(frameId).replaceChildren(child); }

function placeholder(text) {
  const p = element("p", { class: "placeholder" });
  p.textContent = text;
  return p;
}

async function init() {
  try {
    config = await (await fetch("/api/config")).json();
  } catch (e) {
    showError("the page could not reach its server; is python -m anime_gan.app still running?");
    return;
  }
  const select = $("model");
  for (const m of config.models) {
    const option = element("option", { value: m.key });
    option.textContent = m.label;
    select.append(option);
  }
  const precision = $("precision");
  for (const p of config.precisions) {
    const option = element("option", { value: p });
    option.textContent = p;
    precision.append(option);
  }
  precision.addEventListener("change", rerunImage);
  const cap = $("max_side");
  cap.min = config.min_side;
  cap.max = config.max_side;
  cap.value = config.max_side;
  describeModel();
  select.addEventListener("change", () => { describeModel(); rerunImage(); });
  $("adjust").addEventListener("change", rerunImage);
  cap.addEventListener("change", rerunImage);
  $("faces").addEventListener("change", rerunImage);
  setState("idle");
}

function describeModel() {
  const m = config.models.find((x) => x.key === $("model").value);
  if (!m) return;
  const flag = element("code", {});
  flag.textContent = "--max_side";
  $("model_info").replaceChildren(
    `${m.style}: ${m.arch_label} (${m.origin}: ${m.path}). Images with a side above the size cap are refused, ` +
    "as by stylize ", flag, ` (at most ${config.max_side} px here).`);
}

function rerunImage() {
  if (document.body.dataset.mode === "live") return;  // the live camera restarts itself (live.js)
  if (lastFile && !isVideo(lastFile.name) && document.body.dataset.state !== "busy") submit(lastFile);
}

async function submit(file) {
  const name = file.name || "pasted.png";
  const id = ++current;
  lastFile = file;
  $("again").disabled = false;
  showError(null);
  showWarning(null);
  stopTicker();
  $("download").hidden = true;
  if (file.size > config.max_upload_bytes) {
    showStatus(null);
    showError(tooLargeMessage(name, file.size, config.max_upload_bytes));
    return;
  }
  setState("busy");
  const started = performance.now();
  const tell = () => showStatus(`Stylizing ${name}… ${((performance.now() - started) / 1000).toFixed(0)} s`);
  tell();
  ticker = setInterval(tell, 500);
  if (isVideo(name)) {
    fill("photo_frame", element("video", { src: URL.createObjectURL(file), controls: "", muted: "" }));
  } else {
    fill("photo_frame", element("img", { src: URL.createObjectURL(file), alt: name, id: "photo_img" }));
  }
  fill("result_frame", placeholder("working…"));
  $("photo_caption").textContent = name;
  $("result_caption").textContent = "";

  const form = new FormData();
  form.append("file", file, name);
  form.append("model", $("model").value);
  form.append("adjust", $("adjust").value);
  form.append("precision", $("precision").value);
  form.append("max_side", $("max_side").value);
  form.append("faces", $("faces").checked ? "1" : "0");
  let answer;
  try {
    const response = await fetch("/api/stylize", { method: "POST", body: form });
    answer = await response.json();
  } catch (e) {
    answer = { error: `the server did not answer (${e.message}); is python -m anime_gan.app still running?` };
  }
  if (id !== current) return;
  try {
    if (answer.error) return fail(answer.error);
    if (answer.kind === "video") return await followVideo(id, answer);
    stopTicker();
    await showImage(answer, id);
  } catch (e) {
    fail(`the page could not show the answer (${e.message}); reload it and try again.`);
  }
}

function fail(message) {
  stopTicker();
  showStatus(null);
  fill("result_frame", placeholder("no result"));
  showError(message);
}

async function showImage(a, id) {
  const photo = element("img", { src: a.photo, alt: a.name, id: "photo_img" });
  const result = element("img", { src: a.result, alt: `${a.name}, stylized`, id: "result_img" });
  // "done" means the result is on screen: wait until both pictures are decoded.
  await Promise.all([photo.decode(), result.decode()]);
  if (id !== current) return;
  fill("photo_frame", photo);
  fill("result_frame", result);
  $("photo_caption").textContent = `${a.name} · ${a.width} × ${a.height}`;
  $("result_caption").textContent = `${a.width} × ${a.height} · ${a.seconds.toFixed(2)} s` +
    (a.model_loaded ? " with the model's loading" : "") + (a.faces ? ` · ${a.faces}` : "");
  const link = $("download");
  link.href = `${a.result}?download=1`;
  link.download = a.download_name;
  link.textContent = `Download ${a.download_name}`;
  link.hidden = false;
  showStatus(null);
  setState("done");
}

async function followVideo(id, started_answer) {
  stopTicker();
  const frames = started_answer.frames ? `${started_answer.frames} frames` : "frames";
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    if (id !== current) return;
    let job;
    try {
      job = await (await fetch(`/api/jobs/${started_answer.job}`)).json();
    } catch (e) {
      return fail(`the server did not answer (${e.message}); is python -m anime_gan.app still running?`);
    }
    if (id !== current) return;
    if (job.error) return fail(job.error);
    if (job.state === "done") return showVideo(job);
    const elapsed = `${job.elapsed.toFixed(0)} s`;
    if (job.state === "queued") {
      showStatus(`${job.name}: waiting for the model (another request is running)… ${elapsed}`);
    } else if (job.estimated_fraction == null) {
      showStatus(`Stylizing ${job.name} (${frames})… ${elapsed}`);
    } else {
      const percent = Math.round(job.estimated_fraction * 100);
      showStatus(`Stylizing ${job.name} (${frames})… ${elapsed}, about ${percent}% (estimated from the first frame)`,
                 job.estimated_fraction);
    }
  }
}

function showVideo(job) {
  const r = job.result;
  fill("photo_frame", element("video", { src: r.photo_video, poster: r.photo_poster, controls: "", muted: "" }));
  const video = element("video", { src: r.video, poster: r.poster, controls: "", id: "result_video" });
  video.addEventListener("error", () => showWarning(
    "This browser cannot play the result's codec here; the first frame is shown, and the download holds the whole video."));
  fill("result_frame", video);
  $("photo_caption").textContent = `${job.name} · ${job.frames} frames`;
  $("result_caption").textContent = `${job.elapsed.toFixed(1)} s`;
  const link = $("download");
  link.href = `${r.video}?download=1`;
  link.download = r.download_name;
  link.textContent = `Download ${r.download_name}`;
  link.hidden = false;
  if (job.warning) showWarning(job.warning);
  showStatus(null);
  setState("done");
}

// ---- the ways a file comes in -------------------------------------------------------------------
$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  e.target.value = "";  // the same file chosen again still fires "change"
  if (file) submit(file);
});

$("again").addEventListener("click", () => { if (lastFile) submit(lastFile); });

const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  const file = e.dataTransfer.files[0];
  if (file) submit(file);
});

document.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])][0];
  if (file) { e.preventDefault(); submit(file); }
});

let stream = null;
$("webcam").addEventListener("click", async () => {
  if (!navigator.mediaDevices?.getUserMedia) {
    return showError("this browser offers no webcam to this page (it needs http://127.0.0.1 or https); choose a file instead.");
  }
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: true });
  } catch (e) {
    return showError(`the webcam could not be opened (${e.message}); allow it in the browser or choose a file instead.`);
  }
  $("camera_video").srcObject = stream;
  $("camera").hidden = false;
});

function closeCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("camera").hidden = true;
}
$("camera_close").addEventListener("click", closeCamera);
$("capture").addEventListener("click", () => {
  const video = $("camera_video");
  const canvas = element("canvas", { width: video.videoWidth, height: video.videoHeight });
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    closeCamera();
    submit(new File([blob], "webcam.png", { type: "image/png" }));
  }, "image/png");
});

init();
