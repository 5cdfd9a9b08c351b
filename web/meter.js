// Microphone level: RMS of the local stream through an AnalyserNode, drawn as a bar.

// `onLevel(level)` (0..1) is called with every reading.
export function startMeter(stream, bar, onLevel = () => {}) {
  const Ctx = window.AudioContext || window.webkitAudioContext;
  if (!Ctx) return { level: () => 0, stop() {} };
  const ctx = new Ctx();
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  let level = 0;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const s of samples) sum += s * s;
    const rms = Math.sqrt(sum / samples.length);
    // ~ -60 dBFS .. 0 dBFS onto 0..100 %
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    level = Math.max(0, Math.min(1, (db + 60) / 60));
    bar.style.width = `${(level * 100).toFixed(0)}%`;
    onLevel(level);
  }, 50);
  if (ctx.state === "suspended") ctx.resume().catch(() => {});
  return {
    level: () => level,
    stop() {
      clearInterval(timer);
      bar.style.width = "0";
      ctx.close().catch(() => {});
    },
  };
}
