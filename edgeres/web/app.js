// The edgeres page: the bundle's .tflite models in the browser (LiteRT.js, WebAssembly CPU),
// on a live camera or a photo. Served by `edgeres serve`.
//
// Every frame runs the model the user picked (int8 unless told otherwise); the others run only
// in compare mode, side by side, so a slow float32 never throttles the int8 camera.
//
// URL parameters: autostart=1 starts the camera at once; facing=user|environment picks the
// camera; model=float32 picks the model; compare=1 runs every loaded model on every frame;
// models=int8,float32 loads only those; threads=0 forces one thread; record=N keeps the
// last N inputs and answers for window.edgeres.takeRecords() (test harnesses), frames=1 with
// the whole frame each was computed from.
//
// #result carries the latest answer of the picked model for any harness: data-label,
// data-score, data-uncertain (true when the score is below the bundle's "uncertain" threshold:
// the text then says "not sure", the label stays), data-model, data-frames (camera frames classified), data-source, data-fps,
// data-latency-ms, data-compare, data-<variant>-label / -score for every model run, data-error
// when something failed; data-runtime-check (JSON: this runtime's agreement with each runtime
// the bundle recorded, see runtime_check.js) and data-runtime-check-status (running/done/error).

import { RESIZE_RULES, toPixels } from './pixels.js';
import { checkRuntime, describe as describeCheck } from './runtime_check.js';
import * as litert from './vendor/litertjs/core/index.js';

const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
// The overlay's band colour; the browser test looks for it in a screenshot.
const OVERLAY_BG = 'rgb(16, 16, 16)';
const AGREE = 'rgb(26, 188, 156)';
const DISAGREE = 'rgb(230, 126, 34)';

const app = {
  config: null,
  models: [], // {variant, file, input, output, compiled (null until first needed)}
  selected: null, // the variant every frame runs
  compare: params.get('compare') === '1', // run every model on every frame
  numThreads: 1,
  size: [0, 0], // [H, W]
  resize: 'bilinear',
  runtime: '',
  frames: 0,
  running: false,
  stream: null,
  facing: params.get('facing') || 'environment',
  frameTimes: [],
  records: [],
  recordLimit: Number(params.get('record') || 0),
  recordFrames: params.get('frames') === '1', // records keep the whole frame too (large)
  error: null,
  ready: false,
  runtimeCheck: null, // this runtime vs the bundle's recorded runtimes, once the probes ran
};

// One model run at a time: the camera loop and the runtime check share the compiled models.
let queue = Promise.resolve();
function exclusive(fn) {
  const run = queue.then(fn, fn);
  queue = run.catch(() => {});
  return run;
}

const video = $('video');
const view = $('view');
const viewCtx = view.getContext('2d');
const grab = document.createElement('canvas');
const grabCtx = grab.getContext('2d', { willReadFrequently: true });

// -- loading -------------------------------------------------------------------------------------

async function init() {
  const config = await fetchJson('bundle/config.json');
  app.config = config;
  app.size = [config.input.size[0], config.input.size[1]];
  app.resize = config.resize || 'bilinear';
  if (!RESIZE_RULES.includes(app.resize)) {
    throw new Error(`this bundle's resize rule "${app.resize}" is unknown to this page (knows ${RESIZE_RULES}); update edgeres`);
  }
  showFacts(config);

  const versions = await fetchJson('vendor/VERSIONS.json').catch(() => ({}));
  const threaded = params.get('threads') !== '0' && self.crossOriginIsolated &&
    navigator.hardwareConcurrency > 1 && await supported('relaxedSimd') && await supported('threads');
  const numThreads = threaded ? Math.min(navigator.hardwareConcurrency, 4) : 1;
  setStatus('loading LiteRT.js…');
  await litert.loadLiteRt(new URL('vendor/litertjs/wasm/', location.href).href, { threads: threaded });
  app.runtime = `LiteRT.js ${versions['@litertjs/core'] || ''} (WebAssembly, ${numThreads} thread${numThreads > 1 ? 's' : ''})`;
  app.numThreads = numThreads;

  const wanted = params.get('models') ? params.get('models').split(',') : null;
  for (const m of config.models) {
    if (wanted && !wanted.includes(m.variant)) continue;
    if (!['uint8', 'float32'].includes(m.input.dtype)) {
      throw new Error(`${m.file}: input dtype ${m.input.dtype} is not supported by LiteRT.js (uint8 or float32)`);
    }
    app.models.push({ ...m, compiled: null });
  }
  if (!app.models.length) throw new Error(`no model matches models=${params.get('models')} (bundle has ${config.models.map((m) => m.variant)})`);
  const picked = params.get('model');
  if (picked && !app.models.some((m) => m.variant === picked)) {
    throw new Error(`model=${picked}: not among the loaded models (${app.models.map((m) => m.variant)})`);
  }
  app.selected = picked || app.models[0].variant;
  for (const m of running()) await compile(m);
  showModelCards();
  $('compare').checked = app.compare;
  $('compare').disabled = app.models.length < 2;
  app.ready = true;
  setStatus(`ready: ${running().map((m) => m.variant).join(' + ')} on ${app.runtime}`);
  $('start').disabled = false;
  $('switch').disabled = false;
  if (config.runtimes) selfCheck(config.runtimes).catch(failCheck);
  if (params.get('autostart') === '1') await startCamera();
}

/** The models every frame runs: the picked one, or all of them in compare mode (picked first). */
function running() {
  const picked = app.models.find((m) => m.variant === app.selected);
  return app.compare ? [picked, ...app.models.filter((m) => m !== picked)] : [picked];
}

async function compile(m) {
  if (m.compiled) return m.compiled;
  m.compiling ??= (async () => {
    setStatus(`loading ${m.file} (${(m.bytes / 1e6).toFixed(1)} MB)…`);
    m.compiled = await litert.loadAndCompile(new URL(m.url, location.href).href,
      { accelerator: 'wasm', cpuOptions: { numThreads: app.numThreads } });
    return m.compiled;
  })();
  return m.compiling;
}

async function pick(variant) {
  const m = app.models.find((x) => x.variant === variant);
  if (!m) throw new Error(`no model ${variant} on this page (${app.models.map((x) => x.variant)})`);
  await compile(m);
  app.selected = variant;
  markCards();
  setStatus(`running: ${running().map((x) => x.variant).join(' + ')} on ${app.runtime}`);
}

async function setCompare(on) {
  app.compare = Boolean(on);
  $('compare').checked = app.compare;
  if (app.compare) for (const m of app.models) await compile(m);
  markCards();
  setStatus(`running: ${running().map((x) => x.variant).join(' + ')} on ${app.runtime}`);
}

async function supported(feature) {
  try {
    const status = await litert.supportsFeature(feature);
    return typeof status === 'object' ? Boolean(status.supported) : Boolean(status);
  } catch {
    return false;
  }
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// -- the model -----------------------------------------------------------------------------------

/** The compiled model ``m`` on model-sized RGB pixels [h, w, 3]: its raw output tensor (a copy). */
async function invoke(m, pixels, h, w) {
  const tensor = new litert.Tensor(modelInput(pixels, m.input), [1, h, w, 3]);
  let outputs;
  try {
    outputs = await exclusive(() => m.compiled.run(tensor));
  } finally {
    tensor.delete();
  }
  const raw = outputs[0].toTypedArray().slice();
  for (const o of outputs) o.delete();
  return raw;
}

/** Run the picked model (every model in compare mode, or those given) on model-sized RGB
 * pixels; latency covers input, invoke and output. */
async function classify(pixels, models = running()) {
  const [H, W] = app.size;
  const results = [];
  for (const m of models) {
    await compile(m);
    const t0 = performance.now();
    const raw = await invoke(m, pixels, H, W);
    const probs = probabilities(raw, m.output);
    const latencyMs = performance.now() - t0;
    let index = 0;
    for (let i = 1; i < probs.length; i++) if (probs[i] > probs[index]) index = i;
    results.push({ variant: m.variant, label: app.config.labels[index], index, score: probs[index],
                   uncertain: isUncertain(probs[index]), probs: Array.from(probs), latencyMs });
  }
  return results;
}

// -- the runtime checks itself against the bundle's record ---------------------------------------

async function selfCheck(runtimes) {
  const described = app.config.models.find((m) => m.file === runtimes.model);
  if (!described) throw new Error(`the runtime record's model ${runtimes.model} is not served`);
  const m = app.models.find((x) => x.file === runtimes.model) || { ...described, compiled: null };
  const [, h, w] = runtimes.probes.shape;
  const result = $('result');
  result.dataset.runtimeCheckStatus = 'running';
  $('runtime-check').replaceChildren(el('li', `running ${runtimes.probes.n} probes through ${runtimes.model}…`));
  await compile(m);
  const run = async (pixels) => {
    const raw = await invoke(m, pixels, h, w);
    if (!(raw instanceof Uint8Array)) throw new Error(`${m.file}: output is ${raw.constructor.name}, the record is uint8`);
    return raw;
  };
  const check = await checkRuntime(runtimes, run, {
    fetchBytes: async (url) => {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
      return response.arrayBuffer();
    },
  });
  app.runtimeCheck = check;
  const { outputs, ...summary } = check;
  result.dataset.runtimeCheck = JSON.stringify(summary);
  result.dataset.runtimeCheckStatus = 'done';
  $('runtime-check').replaceChildren(...describeCheck(check, check.tolerance_steps).map((line) => el('li', line)));
}

function failCheck(error) {
  const message = error instanceof Error ? error.message : String(error);
  $('result').dataset.runtimeCheckStatus = `error: ${message}`;
  $('runtime-check').replaceChildren(el('li', `runtime check failed: ${message}`));
  console.error(error);
}

// edgeres.json "uncertain" (issue 26): the runtimes and float/int8 paths disagree only below
// this top score, so an answer under it is shown "not sure" (its label kept), as predict does.
function isUncertain(score) {
  const threshold = app.config.uncertain?.threshold;
  return threshold != null && score < threshold;
}

const NOT_SURE = 'not sure';

// As edgeres.runtime.Classifier.quantize_input: uint8 pixels as they are, float32 as values
// 0..255, other uint8 scales quantized (round half to even, as numpy).
function modelInput(pixels, input) {
  if (input.dtype === 'float32') return Float32Array.from(pixels);
  if (input.scale === 1 && input.zero_point === 0) return pixels;
  const q = new Uint8Array(pixels.length);
  for (let i = 0; i < pixels.length; i++) {
    const v = pixels[i] / input.scale;
    const f = Math.floor(v);
    const r = v - f > 0.5 || (v - f === 0.5 && f % 2 !== 0) ? f + 1 : f;
    q[i] = Math.min(255, Math.max(0, r + input.zero_point));
  }
  return q;
}

// As Classifier.dequantize_output: (raw - zero) * scale in float32; softmax only for a model
// that ends in logits (outputs are never re-normalised otherwise).
function probabilities(raw, output) {
  const p = new Float32Array(raw.length);
  if (output.dtype === 'float32') p.set(raw);
  else for (let i = 0; i < raw.length; i++) p[i] = (raw[i] - output.zero_point) * Math.fround(output.scale);
  if (output.activation === 'logits') {
    const max = Math.max(...p);
    let sum = 0;
    for (let i = 0; i < p.length; i++) { p[i] = Math.exp(p[i] - max); sum += p[i]; }
    for (let i = 0; i < p.length; i++) p[i] /= sum;
  }
  return p;
}

// -- one frame or photo ------------------------------------------------------------------------

async function processImage(image, source, name = '') {
  const [H, W] = app.size;
  const t0 = performance.now();
  const pixels = toPixels(image.data, image.width, image.height, W, H, { resize: app.resize });
  const preMs = performance.now() - t0;
  const results = await classify(pixels);
  if (source === 'camera') {
    app.frames++;
    const now = performance.now();
    app.frameTimes.push(now);
    if (app.frameTimes.length > 11) app.frameTimes.shift();
  }
  const fps = source === 'camera' && app.frameTimes.length > 1
    ? (app.frameTimes.length - 1) * 1000 / (app.frameTimes.at(-1) - app.frameTimes[0]) : null;
  const info = { source, name, preMs, fps, width: image.width, height: image.height };
  publish(results, info);
  drawOverlay(results, info);
  if (app.recordLimit) {
    app.records.push({ ...info, frame: app.frames, pixels, results, image: app.recordFrames ? image : null });
    if (app.records.length > app.recordLimit) app.records.shift();
  }
  return results;
}

function publish(results, info) {
  const el = $('result');
  const first = results[0];
  el.dataset.label = first.label;
  el.dataset.score = first.score.toFixed(6);
  el.dataset.frames = String(app.frames);
  el.dataset.source = info.source;
  el.dataset.model = first.variant;
  el.dataset.latencyMs = first.latencyMs.toFixed(2);
  el.dataset.fps = info.fps == null ? '' : info.fps.toFixed(2);
  el.dataset.compare = app.compare ? '1' : '0';
  for (const r of results) {
    el.dataset[camel(`${r.variant}-label`)] = r.label;
    el.dataset[camel(`${r.variant}-score`)] = r.score.toFixed(6);
  }
  el.dataset.uncertain = String(first.uncertain);
  el.classList.toggle('uncertain', first.uncertain);
  el.textContent = `${first.label} ${(100 * first.score).toFixed(1)}%` + (first.uncertain ? ` · ${NOT_SURE}` : '') +
    (info.source === 'file' ? ` (${info.name})` : '');
  for (const card of document.querySelectorAll('.model')) {
    if (!results.some((r) => r.variant === card.dataset.variant)) {
      card.querySelector('.meta').textContent = 'not run: pick it, or compare';
    }
  }
  for (const r of results) {
    const card = document.querySelector(`.model[data-variant="${r.variant}"]`);
    if (!card) continue;
    card.querySelector('.label').textContent = `${r.label} ${(100 * r.score).toFixed(1)}%` +
      (r.uncertain ? ` · ${NOT_SURE}` : '');
    card.querySelector('.bar > div').style.width = `${(100 * r.score).toFixed(1)}%`;
    card.querySelector('.meta').textContent = `${r.latencyMs.toFixed(1)} ms` +
      (info.fps ? ` · ${info.fps.toFixed(1)} FPS` : '');
  }
}

const camel = (s) => s.replace(/-([a-z0-9])/g, (_, c) => c.toUpperCase());

// The frame (still in `grab`) with a band on top: one line per model, then FPS and timings.
function drawOverlay(results, info) {
  const w = grab.width, h = grab.height;
  if (view.width !== w || view.height !== h) { view.width = w; view.height = h; }
  viewCtx.drawImage(grab, 0, 0);
  const lineH = Math.max(16, Math.round(h / 18));
  const pad = Math.round(lineH / 3);
  const lines = results.map((r) => [`${r.variant}  ${r.label}  ${r.score.toFixed(2)}${r.uncertain ? `  ${NOT_SURE}` : ''}  ${r.latencyMs.toFixed(1)} ms`,
                                    r.label === results[0].label ? AGREE : DISAGREE]);
  const status = info.source === 'camera'
    ? `${info.fps ? info.fps.toFixed(1) : '–'} FPS  ·  resize ${info.preMs.toFixed(1)} ms  ·  frame ${app.frames}`
    : `photo ${info.name}`;
  lines.push([status, null]);
  viewCtx.fillStyle = OVERLAY_BG;
  viewCtx.fillRect(0, 0, w, lines.length * lineH + 2 * pad);
  viewCtx.font = `600 ${Math.round(lineH * 0.72)}px system-ui, sans-serif`;
  viewCtx.textBaseline = 'middle';
  lines.forEach(([text, colour], i) => {
    const y = pad + i * lineH + lineH / 2;
    if (colour) {
      viewCtx.fillStyle = colour;
      viewCtx.fillRect(pad, y - lineH * 0.3, lineH * 0.6, lineH * 0.6);
    }
    viewCtx.fillStyle = 'rgb(255, 255, 255)';
    viewCtx.fillText(text, pad + lineH, y);
  });
}

// -- camera --------------------------------------------------------------------------------------

async function startCamera() {
  stopCamera();
  if (!navigator.mediaDevices?.getUserMedia) {
    fail('the camera needs https or localhost: run `edgeres serve BUNDLE --host 0.0.0.0 --https` and open the https URL');
    return;
  }
  try {
    app.stream = await navigator.mediaDevices.getUserMedia({
      audio: false,
      video: { facingMode: { ideal: app.facing }, width: { ideal: 640 }, height: { ideal: 480 } },
    });
  } catch (e) {
    fail(`camera unavailable (${e.name}: ${e.message}); allow the camera for this page, or drop a photo instead`);
    return;
  }
  video.srcObject = app.stream;
  await video.play();
  app.running = true;
  app.frameTimes = [];
  $('start').textContent = 'Stop camera';
  const settings = app.stream.getVideoTracks()[0]?.getSettings() || {};
  setStatus(`camera ${settings.width || '?'}x${settings.height || '?'}${settings.facingMode ? ' ' + settings.facingMode : ''} · ${app.runtime}`);
  cameraLoop();
}

function stopCamera() {
  app.running = false;
  if (app.stream) for (const track of app.stream.getTracks()) track.stop();
  app.stream = null;
  $('start').textContent = 'Start camera';
}

async function cameraLoop() {
  while (app.running) {
    if (video.readyState >= 2 && video.videoWidth) {
      const w = video.videoWidth, h = video.videoHeight;
      if (grab.width !== w || grab.height !== h) { grab.width = w; grab.height = h; }
      grabCtx.drawImage(video, 0, 0, w, h);
      try {
        await processImage(grabCtx.getImageData(0, 0, w, h), 'camera');
      } catch (e) {
        fail(e);
        stopCamera();
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
}

// -- photos --------------------------------------------------------------------------------------

async function classifyFile(file) {
  stopCamera();
  let bitmap;
  try {
    // EXIF orientation applied and colour profiles ignored, as edgeres.preprocess.decode does.
    bitmap = await createImageBitmap(file, { imageOrientation: 'from-image', colorSpaceConversion: 'none',
                                             premultiplyAlpha: 'none' });
  } catch (e) {
    fail(`${file.name}: not an image this browser can decode (${e.message})`);
    return null;
  }
  grab.width = bitmap.width;
  grab.height = bitmap.height;
  grabCtx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const results = await processImage(grabCtx.getImageData(0, 0, grab.width, grab.height), 'file', file.name);
  setStatus(`${file.name}: ${results.map((r) => `${r.variant} ${r.label} ${r.score.toFixed(3)}`).join(', ')}`);
  return results;
}

function wireControls() {
  $('start').addEventListener('click', () => (app.running ? stopCamera() : startCamera()));
  $('compare').addEventListener('change', (e) => setCompare(e.target.checked).catch(fail));
  $('switch').addEventListener('click', () => {
    app.facing = app.facing === 'user' ? 'environment' : 'user';
    if (app.running) startCamera();
  });
  const drop = $('drop');
  $('file').addEventListener('change', (e) => e.target.files[0] && classifyFile(e.target.files[0]).catch(fail));
  drop.addEventListener('keydown', (e) => (e.key === 'Enter' || e.key === ' ') && $('file').click());
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = e.dataTransfer?.files?.[0];
    if (file) classifyFile(file).catch(fail);
  });
}

// -- what the page shows about the model ---------------------------------------------------------

function showFacts(config) {
  document.title = `edgeres · ${config.name}`;
  $('model-name').textContent = config.name;
  const facts = [
    ['labels', config.labels.join(', ')],
    ['input', `${config.input.size[1]}x${config.input.size[0]} RGB, resize "${app.resize}"`],
    ['models', config.models.map((m) => `${m.variant} (${(m.bytes / 1e6).toFixed(1)} MB, ${m.input.dtype} in, ${m.output.dtype} out)`).join('; ')],
  ];
  if (config.arch) facts.push(['architecture', config.arch]);
  if (config.status) facts.push(['int8 check', config.status]);
  const band = config.uncertain;
  if (band) {
    facts.push([NOT_SURE, band.threshold == null ? 'off (no threshold in this bundle)'
      : `top score below ${band.threshold} (${band.source || 'recorded'}${band.photos ? `, measured on ${band.photos} photos` : ''})`]);
  }
  $('facts').replaceChildren(...facts.flatMap(([k, v]) => [el('dt', k), el('dd', v)]));

  const v = config.verification;
  const rows = [];
  if (v) {
    const pct = (x) => (x == null ? '–' : `${(100 * x).toFixed(1)}%`);
    for (const variant of Object.keys(v).filter((k) => v[k] && typeof v[k] === 'object' && 'accuracy' in v[k])) {
      const ci = v[variant].ci95 ? ` (95% CI ${pct(v[variant].ci95[0])}–${pct(v[variant].ci95[1])})` : '';
      rows.push([`${variant} accuracy`, pct(v[variant].accuracy) + ci]);
    }
    if (v.agreement != null) rows.push(['top-1 agreement', pct(v.agreement)]);
    if (v.accuracy_drop_pp != null) rows.push(['accuracy drop', `${v.accuracy_drop_pp.toFixed(2)} pp`]);
    if (v.mean_abs_prob_diff != null) rows.push(['mean |Δp|', v.mean_abs_prob_diff.toFixed(4)]);
    if (v.n != null) rows.push(['photos', `${v.n}${v.split ? ` (${v.split})` : ''}`]);
  } else {
    rows.push(['', 'no verification numbers in this bundle']);
  }
  $('verification').replaceChildren(...rows.map(([k, val]) => {
    const tr = el('tr');
    tr.append(el('th', k), el('td', val));
    return tr;
  }));
}

function showModelCards() {
  $('models').replaceChildren(...app.models.map((m) => {
    const card = el('div');
    card.className = 'model';
    card.dataset.variant = m.variant;
    const bar = el('div');
    bar.className = 'bar';
    bar.append(el('div'));
    const label = el('div', '–');
    label.className = 'label';
    const meta = el('div', `${(m.bytes / 1e6).toFixed(1)} MB`);
    meta.className = 'meta';
    const radio = el('input');
    radio.type = 'radio';
    radio.name = 'pick';
    radio.value = m.variant;
    radio.addEventListener('change', () => pick(m.variant).catch(fail));
    const title = el('label');
    title.append(radio, ` ${m.variant}`);
    const heading = el('h3');
    heading.append(title);
    card.append(heading, label, bar, meta);
    return card;
  }));
  markCards();
}

function markCards() {
  for (const card of document.querySelectorAll('.model')) {
    const on = card.dataset.variant === app.selected;
    card.classList.toggle('picked', on);
    card.classList.toggle('idle', !on && !app.compare);
    card.querySelector('input[name=pick]').checked = on;
  }
}

function el(tag, text) {
  const node = document.createElement(tag);
  if (text != null) node.textContent = text;
  return node;
}

function setStatus(text) {
  const status = $('status');
  status.textContent = text;
  status.classList.remove('error');
}

function fail(error) {
  const message = error instanceof Error ? error.message : String(error);
  app.error = message;
  $('result').dataset.error = message;
  const status = $('status');
  status.textContent = `error: ${message}`;
  status.classList.add('error');
  console.error(error);
}

// -- for test harnesses and benchmarks -----------------------------------------------------------

function rgbOf(image) {
  const rgb = new Uint8Array(image.width * image.height * 3);
  for (let i = 0, o = 0; o < rgb.length; i += 4, o += 3) {
    rgb[o] = image.data[i]; rgb[o + 1] = image.data[i + 1]; rgb[o + 2] = image.data[i + 2];
  }
  return rgb;
}

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

window.edgeres = {
  app,
  toPixels,
  classify,
  classifyFile,
  pick,
  setCompare,
  startCamera,
  stopCamera,
  /** The recorded inputs (base64 RGB) and answers since the last call (needs ?record=N). */
  takeRecords() {
    const out = app.records.map(({ image, ...r }) => ({ ...r, pixels: toBase64(r.pixels),
                                                       image: image ? toBase64(rgbOf(image)) : null }));
    app.records = [];
    return out;
  },
};

wireControls();
init().catch(fail);
