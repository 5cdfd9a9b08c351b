// The voice chat page: start/stop, mic meter, live transcript, assistant audio, per-turn latency.
// Everything the page knows is also on `window.voxline` (tests read it; so can you, in the console).

import { UserFacingError, audioStats, connect } from "./rtc.js";
import { startMeter } from "./meter.js";
import { Transcript } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"), stop: $("stop"), state: $("state"), message: $("message"), meter: $("meter-level"),
  key: $("api-key"), audio: $("remote-audio"), latency: $("latency"), stats: $("stats"),
};
const transcript = new Transcript($("transcript"));

const page = {
  state: "idle",
  callId: null,
  stats: { packetsReceived: 0, totalSamplesReceived: 0, audioLevel: 0, packetsSent: 0 },
  turns: [], // { item, speechStoppedAt, firstTextMs, firstAudioMs }
  errors: [],
  events: 0,
  micPeak: 0, // loudest mic level seen (0..1)
  transcript: () => transcript.entries(),
};
window.voxline = page;

let call = null;
let stream = null;
let meter = null;
let statsTimer = null;
let turn = null; // the turn waiting for its answer
const responseItems = new Map(); // response id -> assistant item id

function setState(state, text) {
  page.state = state;
  ui.state.dataset.state = state;
  ui.state.textContent = text || state;
}

function showMessage(text) {
  ui.message.textContent = text;
  ui.message.hidden = !text;
}

// ---- API key: from ?api_key= or what was typed before (this tab only) ----
const params = new URLSearchParams(location.search);
ui.key.value = params.get("api_key") || sessionStorage.getItem("voxline-api-key") || "";
ui.key.addEventListener("change", () => sessionStorage.setItem("voxline-api-key", ui.key.value));

// ---- events from the server ----
function onEvent(ev) {
  page.events += 1;
  const now = performance.now();
  switch (ev.type) {
    case "input_audio_buffer.speech_started":
      transcript.userStarted(ev.item_id);
      setState("live", "listening…");
      break;
    case "input_audio_buffer.speech_stopped":
      turn = { item: ev.item_id, speechStoppedAt: now, firstTextMs: null, firstAudioMs: null };
      page.turns.push(turn);
      setState("live", "thinking…");
      break;
    case "conversation.item.input_audio_transcription.delta":
      transcript.append(ev.item_id, "user", ev.delta || "");
      break;
    case "conversation.item.input_audio_transcription.completed":
      transcript.finish(ev.item_id, "user", (ev.transcript || "").trim());
      break;
    case "conversation.item.input_audio_transcription.failed":
      transcript.finish(ev.item_id, "user", "(could not transcribe)");
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      responseItems.set(ev.response_id, ev.item_id);
      transcript.append(ev.item_id, "assistant", ev.delta || "");
      if (turn && turn.firstTextMs === null) turn.firstTextMs = Math.round(now - turn.speechStoppedAt);
      break;
    case "response.output_audio_transcript.done":
      transcript.finish(ev.item_id, "assistant", ev.transcript);
      break;
    case "response.output_text.done":
      transcript.finish(ev.item_id, "assistant", ev.text);
      break;
    case "output_audio_buffer.started":
      setState("live", "speaking…");
      if (turn && turn.firstAudioMs === null) {
        turn.firstAudioMs = Math.round(now - turn.speechStoppedAt);
        const item = responseItems.get(ev.response_id);
        const text = `first audio ${turn.firstAudioMs} ms after you stopped` +
          (turn.firstTextMs !== null ? ` (text ${turn.firstTextMs} ms)` : "");
        if (item) transcript.note(item, text);
        ui.latency.textContent = `latency: ${turn.firstAudioMs} ms (end of speech → first audio)`;
        turn = null;
      }
      break;
    case "output_audio_buffer.stopped":
      setState("live", "listening");
      break;
    case "response.done": {
      const r = ev.response || {};
      if (r.status === "cancelled") {
        for (const out of r.output || []) transcript.interrupted(out.id);
      } else if (r.status === "failed") {
        const msg = (r.status_details && r.status_details.error && r.status_details.error.message) || "failed";
        page.errors.push(msg);
        showMessage(`The assistant could not answer: ${msg}`);
      }
      break;
    }
    case "error":
      page.errors.push((ev.error && ev.error.message) || "error");
      console.warn("server error event", ev.error);
      break;
    default:
      break;
  }
}

function onConnectionState(state) {
  if (state === "failed" || (state === "closed" && page.state !== "idle")) {
    showMessage("The connection to the server was lost. Press Start to reconnect.");
    stop(false);
    setState("error", "disconnected");
  }
}

async function pollStats() {
  if (!call) return;
  try {
    page.stats = await audioStats(call.pc);
    ui.stats.textContent = `audio: ${page.stats.packetsReceived} packets in · ${page.stats.packetsSent} out`;
  } catch (_) { /* closing */ }
}

async function start() {
  showMessage("");
  ui.start.disabled = true;
  setState("starting", "asking for the microphone…");
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new UserFacingError("This page cannot use the microphone here: open it over https or on localhost.");
    }
    try {
      // Echo cancellation keeps the assistant's own voice from interrupting it (speakers); automatic
      // gain is off: it drives loud speech into clipping, which costs ASR words, and Whisper needs no level.
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: false },
      });
    } catch (err) {
      if (err.name === "NotAllowedError" || err.name === "SecurityError") {
        throw new UserFacingError("Microphone access was denied. Allow the microphone for this page " +
          "(the icon in the address bar) and press Start again.");
      }
      if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
        throw new UserFacingError("No microphone was found. Connect one and press Start again.");
      }
      throw new UserFacingError(`The microphone could not be opened: ${err.message}`);
    }
    meter = startMeter(stream, ui.meter, (level) => { page.micPeak = Math.max(page.micPeak, level); });
    setState("starting", "connecting…");
    call = await connect(stream, ui.key.value.trim(), {
      onEvent,
      onConnectionState,
      onRemoteStream(remote) {
        ui.audio.srcObject = remote;
        ui.audio.play().catch(() => {});
      },
    });
    page.callId = call.callId;
    statsTimer = setInterval(pollStats, 500);
    ui.stop.disabled = false;
    setState("live", "listening");
  } catch (err) {
    stop(false);
    const text = err instanceof UserFacingError ? err.message : `Could not start: ${err.message || err}`;
    page.errors.push(text);
    showMessage(text);
    setState("error", "error");
  }
}

function stop(userAsked = true) {
  clearInterval(statsTimer);
  statsTimer = null;
  if (call) {
    const c = call;
    call = null;
    c.close();
  }
  if (meter) meter.stop();
  meter = null;
  if (stream) for (const t of stream.getTracks()) t.stop();
  stream = null;
  ui.audio.srcObject = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
  if (userAsked) setState("idle", "stopped");
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", () => stop(true));
