// livehuman demo page: create a session, watch it over WHEP, talk to it. No build step.
"use strict";

const $ = (id) => document.getElementById(id);
const demo = { state: "idle", session: null, pc: null, ws: null, stats: {}, events: [] };
window.livehumanDemo = demo;  // read by the browser test

function setState(state) { demo.state = state; $("s-state").textContent = state; }

async function loadCapabilities() {
  const health = await (await fetch("/v1/health")).json();
  const caps = health.capabilities || {};
  $("prompt-row").hidden = !caps.prompt;
  $("camera-row").hidden = !caps.camera;
}

async function portraitBlob() {
  const file = $("portrait").files[0];
  if (file) return file;
  return await (await fetch("/demo/portrait.png")).blob();  // the default portrait
}

async function createSession() {
  const form = new FormData();
  form.append("image", await portraitBlob(), "portrait.png");
  if (!$("prompt-row").hidden && $("prompt").value) form.append("prompt", $("prompt").value);
  if (!$("camera-row").hidden && $("camera").value) form.append("camera", $("camera").value);
  const response = await fetch("/v1/sessions", { method: "POST", body: form });
  if (response.status !== 201) throw new Error(`create session: ${response.status} ${await response.text()}`);
  return await response.json();
}

function waitForIceGathering(pc, timeoutMs = 3000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function watch(session, useMic) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  demo.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  if (useMic) {
    const mic = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    pc.addTransceiver(mic.getAudioTracks()[0], { direction: "sendrecv" });
  } else {
    pc.addTransceiver("audio", { direction: "recvonly" });
  }
  const stream = new MediaStream();
  pc.ontrack = (event) => { stream.addTrack(event.track); $("video").srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const response = await fetch(session.whep_url, {
    method: "POST", headers: { "Content-Type": "application/sdp" }, body: pc.localDescription.sdp,
  });
  if (response.status !== 201) throw new Error(`WHEP: ${response.status} ${await response.text()}`);
  demo.viewerUrl = new URL(response.headers.get("Location"), new URL(session.whep_url, location.href)).href;
  await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
}

function openAudioSocket(session) {
  const url = new URL(session.audio_url, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = (message) => {
    if (typeof message.data !== "string") return;
    const event = JSON.parse(message.data);
    demo.events.push(event);
    $("s-event").textContent = JSON.stringify(event);
  };
  demo.ws = ws;
  return new Promise((resolve) => { ws.onopen = resolve; });
}

async function speakFile(file) {
  // Decode, resample to 16 kHz mono, and send PCM16 in 20 ms packets at real-time pace.
  const decoded = await new AudioContext().decodeAudioData(await file.arrayBuffer());
  const offline = new OfflineAudioContext(1, Math.ceil(decoded.duration * 16000), 16000);
  const source = offline.createBufferSource();
  source.buffer = decoded;
  source.connect(offline.destination);
  source.start();
  const samples = (await offline.startRendering()).getChannelData(0);
  demo.ws.send(JSON.stringify({ type: "segment" }));
  const packet = 320;
  const started = performance.now();
  for (let i = 0; i < samples.length; i += packet) {
    const chunk = samples.subarray(i, i + packet);
    const pcm = new Int16Array(chunk.length);
    for (let j = 0; j < chunk.length; j++) pcm[j] = Math.max(-1, Math.min(1, chunk[j])) * 32767;
    demo.ws.send(pcm.buffer);
    const due = started + ((i + packet) / 16000) * 1000;
    await new Promise((r) => setTimeout(r, Math.max(0, due - performance.now())));
  }
  demo.ws.send(JSON.stringify({ type: "end_of_speech" }));
}

async function pollStats() {
  if (!demo.pc) return;
  const report = await demo.pc.getStats();
  let video = null, audio = null, pair = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "video") video = s;
    if (s.type === "inbound-rtp" && s.kind === "audio") audio = s;
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
  });
  const delay = (s) => (s && s.jitterBufferEmittedCount ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : null);
  const rtt = pair && pair.currentRoundTripTime ? pair.currentRoundTripTime * 1000 : 0;
  demo.stats = {
    fps: video ? video.framesPerSecond || 0 : 0,
    framesDecoded: video ? video.framesDecoded || 0 : 0,
    latencyMs: delay(video) === null ? null : delay(video) + rtt / 2,
    avOffsetMs: delay(video) === null || delay(audio) === null ? null : delay(video) - delay(audio),
  };
  $("s-fps").textContent = demo.stats.fps.toFixed(1);
  $("s-frames").textContent = demo.stats.framesDecoded;
  $("s-latency").textContent = demo.stats.latencyMs === null ? "-" : `${demo.stats.latencyMs.toFixed(0)} ms`;
  $("s-av").textContent = demo.stats.avOffsetMs === null ? "-" : `${demo.stats.avOffsetMs.toFixed(0)} ms`;
}

async function start() {
  $("start").disabled = true;
  try {
    setState("creating session");
    // ?session=ID watches a session that already exists (livehuman live --mic prints such a URL).
    const existing = new URLSearchParams(location.search).get("session");
    demo.session = existing
      ? { id: existing, whep_url: `/v1/sessions/${existing}/whep`, audio_url: `/v1/sessions/${existing}/audio` }
      : await createSession();
    setState("connecting");
    if (!existing) await openAudioSocket(demo.session);
    await watch(demo.session, $("use-mic").checked && !existing);
    setState("live");
    $("stop").disabled = $("interrupt").disabled = $("audio-file").disabled = false;
    demo.timer = setInterval(pollStats, 1000);
  } catch (error) {
    setState(`error: ${error.message}`);
    $("start").disabled = false;
  }
}

async function stop() {
  clearInterval(demo.timer);
  if (demo.pc) demo.pc.close();
  if (demo.ws) demo.ws.close();
  if (demo.session) await fetch(`/v1/sessions/${demo.session.id}`, { method: "DELETE" });
  demo.pc = demo.ws = demo.session = null;
  setState("idle");
  $("start").disabled = false;
  $("stop").disabled = $("interrupt").disabled = $("audio-file").disabled = true;
}

$("start").onclick = start;
$("stop").onclick = stop;
$("interrupt").onclick = () => demo.session && fetch(`/v1/sessions/${demo.session.id}/interrupt`, { method: "POST" });
$("audio-file").onchange = (e) => e.target.files[0] && speakFile(e.target.files[0]);
loadCapabilities();
const query = new URLSearchParams(location.search);
if (query.has("autostart") || query.has("session")) start();
