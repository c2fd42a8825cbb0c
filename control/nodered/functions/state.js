// Retained device state (edgeva/v1/{device}/state): online/offline (the last will says offline)
// and the apps each device runs. Keeps flow "devices" and "apps" (shared with "app metrics" and
// "tables"); says in words what changed. Output 1: readable lines; output 2: refresh the tables.
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const parts = String(msg.topic).split("/");
const device = parts[2];
if (parts.length !== 4 || !NAME.test(device || "")) return null;
const devices = flow.get("devices") || {};
const apps = flow.get("apps") || {};
const raw = Buffer.isBuffer(msg.payload) ? msg.payload.toString() : String(msg.payload || "");
let st;
try {
    st = raw ? JSON.parse(raw) : null;
} catch (e) {
    node.warn(`state of ${device}: not JSON, ignored`);
    return null;
}
if (st === null) { // retained state cleared: the device is gone
    delete devices[device];
    for (const k of Object.keys(apps)) if (apps[k].device === device) delete apps[k];
    flow.set("devices", devices);
    flow.set("apps", apps);
    return [{ topic: "state", payload: `${device} forgotten (retained state cleared)` }, { topic: "refresh" }];
}
if (typeof st !== "object" || (st.status !== "online" && st.status !== "offline")) {
    node.warn(`state of ${device}: no online/offline status, ignored`);
    return null;
}
const ours = env.get("EDGEVA_TENANT") || "default";
const prev = devices[device];
const now = {};
if (st.status === "online") {
    for (const [tenant, tapps] of Object.entries(st.apps || {})) {
        if (!NAME.test(tenant) || !tapps || typeof tapps !== "object") continue;
        for (const [app, a] of Object.entries(tapps)) {
            if (!NAME.test(app)) continue;
            now[tenant === ours ? app : `${tenant}/${app}`] = { tenant, app, status: String((a && a.status) || "unknown"), error: (a && a.error) || null };
        }
    }
}
const dev = {
    device, status: st.status, ts: st.ts || null, version: st.version || null,
    modules: Object.keys(st.modules || {}).length, apps: Object.fromEntries(Object.entries(now).map(([k, a]) => [k, a.status])),
    cpu: prev ? prev.cpu : null, mem: prev ? prev.mem : null, seen: Date.now(),
};
devices[device] = dev;
for (const [k, a] of Object.entries(apps)) {
    if (a.device !== device) continue;
    const label = a.tenant === ours ? a.app : `${a.tenant}/${a.app}`;
    if (st.status === "offline") a.status = "device offline";
    else if (!(label in now)) delete apps[k];
}
for (const [label, a] of Object.entries(now)) {
    const k = `${device}/${a.tenant}/${a.app}`;
    apps[k] = Object.assign(apps[k] || { device, tenant: a.tenant, app: a.app, label, fps: null, latency_p50: null, latency_p95: null, frames: 0, dropped: 0, events: 0 }, { status: a.status, error: a.error });
}
flow.set("devices", devices);
flow.set("apps", apps);

const lines = [];
if (!prev || prev.status !== st.status) {
    const n = Object.keys(now).length;
    lines.push(st.status === "online"
        ? `${device} is online (${n} app${n === 1 ? "" : "s"}${n ? ": " + Object.entries(now).map(([l, a]) => `${l} ${a.status}`).join(", ") : ""})`
        : `${device} is offline`);
} else if (st.status === "online") {
    for (const [label, a] of Object.entries(now)) {
        const before = prev.apps[label];
        if (before !== a.status) lines.push(`${device}: app ${label} ${before ? "is now " : "appeared, "}${a.status}${a.error ? " (" + a.error + ")" : ""}`);
    }
    for (const label of Object.keys(prev.apps)) if (!(label in now)) lines.push(`${device}: app ${label} removed`);
}
const online = Object.values(devices).filter((d) => d.status === "online").length;
node.status({ fill: online ? "green" : "grey", shape: "dot", text: `${online}/${Object.keys(devices).length} devices online` });
return [lines.map((t) => ({ topic: "state", payload: t })), { topic: "refresh" }];
