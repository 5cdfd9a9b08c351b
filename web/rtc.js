// WebRTC to the voxline server: offer/answer over HTTP, the mic as the outbound track, the assistant's
// voice as the inbound track, and the "oai-events" data channel carrying Realtime events (JSON).

export class UserFacingError extends Error {}

function authHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

async function request(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new UserFacingError(`Cannot reach the voxline server at ${location.origin}. Is it running? (${err.message})`);
  }
  if (response.ok) return response;
  let detail = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) detail = body.error.message;
  } catch (_) { /* not JSON */ }
  if (response.status === 401) {
    throw new UserFacingError(`The server needs an API key: enter it under Settings. (${detail})`);
  }
  if (response.status === 503) {
    throw new UserFacingError(`The server is busy: ${detail}`);
  }
  throw new UserFacingError(`The server refused the call: ${detail}`);
}

// Resolves when ICE gathering is complete (the server takes every candidate in the offer: no trickle),
// or after `ms` with whatever was gathered by then.
function gatheringDone(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

/**
 * Open a call. `handlers`: onEvent(event), onRemoteStream(stream), onConnectionState(state).
 * Returns { pc, channel, callId, send(event), close() }.
 */
export async function connect(stream, apiKey, handlers) {
  const configResponse = await request("/v1/realtime/webrtc/config", { headers: authHeaders(apiKey) });
  const config = await configResponse.json();
  const pc = new RTCPeerConnection({ iceServers: config.ice_servers || [] });
  try {
    for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
    pc.addEventListener("track", (ev) => handlers.onRemoteStream(ev.streams[0] || new MediaStream([ev.track])));
    pc.addEventListener("connectionstatechange", () => handlers.onConnectionState(pc.connectionState));
    const channel = pc.createDataChannel(config.data_channel || "oai-events");
    channel.addEventListener("message", (ev) => {
      let event;
      try {
        event = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      handlers.onEvent(event);
    });
    const opened = new Promise((resolve) => channel.addEventListener("open", resolve, { once: true }));

    await pc.setLocalDescription(await pc.createOffer());
    await gatheringDone(pc, 3000);
    const answer = await request("/v1/realtime/webrtc", {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders(apiKey) },
      body: pc.localDescription.sdp,
    });
    const location_ = answer.headers.get("Location") || "";
    const callId = location_.split("/").pop() || null;
    await pc.setRemoteDescription({ type: "answer", sdp: await answer.text() });

    const timeout = new Promise((_, reject) => setTimeout(
      () => reject(new UserFacingError("The connection to the server could not be established (ICE/DTLS timed out).")),
      20000));
    await Promise.race([opened, timeout]);

    return {
      pc,
      channel,
      callId,
      send(event) {
        if (channel.readyState === "open") channel.send(JSON.stringify(event));
      },
      async close() {
        // Hang up first (the server frees the call at once), then close; if the server cannot be
        // reached it still notices the closed connection by itself.
        if (callId) {
          const bye = fetch(`/v1/realtime/webrtc/${callId}`, { method: "DELETE", headers: authHeaders(apiKey) })
            .catch(() => {});
          await Promise.race([bye, new Promise((resolve) => setTimeout(resolve, 1000))]);
        }
        try { channel.close(); } catch (_) { /* already closed */ }
        pc.close();
      },
    };
  } catch (err) {
    pc.close();
    throw err;
  }
}

/** Audio counters from getStats(): what was received from and sent to the server. */
export async function audioStats(pc) {
  const out = { packetsReceived: 0, totalSamplesReceived: 0, audioLevel: 0, packetsSent: 0 };
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && s.kind === "audio") {
      out.packetsReceived += s.packetsReceived || 0;
      out.totalSamplesReceived += s.totalSamplesReceived || 0;
      out.audioLevel = Math.max(out.audioLevel, s.audioLevel || 0);
    } else if (s.type === "outbound-rtp" && s.kind === "audio") {
      out.packetsSent += s.packetsSent || 0;
    }
  });
  return out;
}
