// Application events (edgeva/v1/{device}/{tenant}/events/{app}) in words. RoI enter/exit
// events keep per-zone counts (flow "roi": inside now, entered since Node-RED started); reid
// matches become alerts (at most one per person and app every 10 s; all are counted); other
// events (publish: frame_id, latency_ms, tracks...) are summed up once every 10 s per app.
// Outputs: 1 readable lines, 2 reid alerts (notification + table), 3 refresh the tables.
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const ALERT_EVERY_MS = 10000;
const SAY_EVERY_MS = 10000;
const parts = String(msg.topic).split("/");
const [device, tenant, app] = [parts[2], parts[3], parts[5]];
if (parts.length !== 6 || ![device, tenant, app].every((s) => NAME.test(s || ""))) return null;
let ev;
try {
    ev = JSON.parse(Buffer.isBuffer(msg.payload) ? msg.payload.toString() : msg.payload);
} catch (e) {
    return null;
}
if (!ev || typeof ev !== "object" || Array.isArray(ev)) return null;
const ours = env.get("EDGEVA_TENANT") || "default";
const label = tenant === ours ? app : `${tenant}/${app}`;
const key = `${device}/${tenant}/${app}`;
const counts = flow.get("events") || {};
counts[key] = (counts[key] || 0) + 1;
flow.set("events", counts);
const apps = flow.get("apps") || {};
if (apps[key]) apps[key].events = counts[key];
const lastEvent = flow.get("lastEvent") || {};
lastEvent[key] = ev;
flow.set("lastEvent", lastEvent);
const said = context.get("said") || {};
const now = Date.now();
const num = (v, d) => (typeof v === "number" ? v.toFixed(d) : "?");

if (ev.event === "enter" || ev.event === "exit") {
    const zone = String(ev.polygon);
    const roi = flow.get("roi") || {};
    const zk = `${key}/${zone}`;
    const z = roi[zk] || { device, app: label, zone, inside: [], entered: 0, exited: 0 };
    const tid = ev.track_id;
    if (ev.event === "enter") {
        if (!z.inside.includes(tid)) z.inside.push(tid);
        z.entered += 1;
    } else {
        z.inside = z.inside.filter((t) => t !== tid);
        z.exited += 1;
    }
    z.count = z.inside.length;
    roi[zk] = z;
    flow.set("roi", roi);
    const text = ev.event === "enter"
        ? `${device} ${label}: track ${tid} entered "${zone}" (inside now ${z.count}, ${z.entered} entered so far)`
        : `${device} ${label}: track ${tid} left "${zone}" after ${num(ev.dwell_s, 1)} s (inside now ${z.count})`;
    return [{ topic: "roi", payload: text, event: ev }, null, { topic: "refresh" }];
}
if (ev.event === "reid_match") {
    const who = String(ev.template);
    const ak = `${key}/${who}`;
    if (now - (said[ak] || 0) < ALERT_EVERY_MS) return null;
    said[ak] = now;
    context.set("said", said);
    const text = `${device} ${label}: ${who} seen (similarity ${num(ev.similarity, 2)}${ev.track_id !== null && ev.track_id !== undefined ? ", track " + ev.track_id : ""}, frame ${ev.frame_id})`;
    const alerts = flow.get("alerts") || [];
    const alert = { time: new Date().toLocaleTimeString(), device, app: label, person: who, similarity: typeof ev.similarity === "number" ? Math.round(ev.similarity * 100) / 100 : null, frame: ev.frame_id };
    alerts.unshift(alert);
    flow.set("alerts", alerts.slice(0, 20));
    return [{ topic: "reid", payload: text, event: ev }, [{ topic: "alert", payload: text }, { topic: "alerts", payload: flow.get("alerts") }], null];
}
if (now - (said[key] || 0) < SAY_EVERY_MS) return null;
said[key] = now;
context.set("said", said);
const bits = [];
if (Array.isArray(ev.tracks)) bits.push(`${ev.tracks.length} track${ev.tracks.length === 1 ? "" : "s"}`);
if (Array.isArray(ev.detections)) bits.push(`${ev.detections.length} detection${ev.detections.length === 1 ? "" : "s"}`);
if (typeof ev.latency_ms === "number") bits.push(`latency ${ev.latency_ms.toFixed(0)} ms`);
if (ev.event) bits.unshift(String(ev.event));
return [{ topic: "event", payload: `${device} ${label}: ${bits.join(", ") || "event"} (frame ${ev.frame_id ?? "?"}, ${counts[key]} events so far)`, event: ev }, null, null];
