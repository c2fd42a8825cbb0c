// Metrics: the tenant's (edgeva/v1/{device}/{tenant}/metrics: per app frames, latency, drops)
// and the device's (edgeva/v1/{device}/metrics: CPU, memory). Frame counters are cumulative, so
// fps = frames gained over the last ~5 s of samples (at least 2 s). Outputs: 1 fps chart points
// (topic "device/app"), 2 latency chart points, 3 refresh the tables, 4 a readable summary per
// app every 15 s.
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const WINDOW_S = 5;
const SAY_EVERY_MS = 15000;
const parts = String(msg.topic).split("/");
let m;
try {
    m = JSON.parse(Buffer.isBuffer(msg.payload) ? msg.payload.toString() : msg.payload);
} catch (e) {
    return null;
}
if (!m || typeof m !== "object" || !NAME.test(parts[2] || "")) return null;
const device = parts[2];
const devices = flow.get("devices") || {};
if (parts.length === 4) { // device-wide metrics
    if (devices[device]) {
        devices[device].cpu = typeof m.cpu_percent === "number" ? m.cpu_percent : null;
        devices[device].mem = typeof m.mem_mb === "number" ? m.mem_mb : null;
        flow.set("devices", devices);
    }
    return [null, null, { topic: "refresh" }, null];
}
const tenant = parts[3];
if (parts.length !== 5 || !NAME.test(tenant || "")) return null;
const ts = Number(m.ts);
if (!(ts > 0)) return null;
const ours = env.get("EDGEVA_TENANT") || "default";
const apps = flow.get("apps") || {};
const samples = context.get("samples") || {};
const said = context.get("said") || {};
const fpsOut = [], latOut = [], lines = [];
for (const [app, a] of Object.entries(m.apps || {})) {
    if (!a || typeof a !== "object" || !NAME.test(app)) continue;
    const k = `${device}/${tenant}/${app}`;
    const label = tenant === ours ? app : `${tenant}/${app}`;
    const frames = Number(a.frames) || 0;
    let hist = (samples[k] || []).filter((s) => s.ts < ts && s.frames <= frames);
    hist.push({ ts, frames });
    hist = hist.filter((s) => s.ts >= ts - WINDOW_S);
    samples[k] = hist;
    const first = hist[0];
    // At least 2 s of samples: over one short interval a frame more or less is a big swing.
    const fps = ts - first.ts >= 2 ? (frames - first.frames) / (ts - first.ts) : null;
    const lat = a.latency_ms || {};
    const entry = apps[k] || { device, tenant, app, label, status: "unknown", error: null };
    Object.assign(entry, {
        fps: fps === null ? entry.fps : Math.round(fps * 100) / 100,
        latency_p50: typeof lat.p50 === "number" ? Math.round(lat.p50 * 10) / 10 : entry.latency_p50,
        latency_p95: typeof lat.p95 === "number" ? Math.round(lat.p95 * 10) / 10 : entry.latency_p95,
        frames, dropped: Number(a.dropped) || 0, lagging: !!a.lagging,
    });
    apps[k] = entry;
    const series = `${device}/${label}`;
    if (fps !== null) fpsOut.push({ topic: series, payload: entry.fps });
    if (typeof lat.p50 === "number") latOut.push({ topic: series, payload: entry.latency_p50 });
    if (fps !== null && frames > 0 && Date.now() - (said[k] || 0) > SAY_EVERY_MS) {
        said[k] = Date.now();
        lines.push({ topic: "metrics", payload: `${device} ${label}: ${entry.fps.toFixed(1)} fps, latency p50 ${entry.latency_p50 ?? "-"} ms p95 ${entry.latency_p95 ?? "-"} ms, ${entry.frames} frames, ${entry.dropped} dropped${entry.lagging ? ", FALLING BEHIND" : ""}` });
    }
}
context.set("samples", samples);
context.set("said", said);
flow.set("apps", apps);
return [fpsOut, latOut, { topic: "refresh" }, lines];
