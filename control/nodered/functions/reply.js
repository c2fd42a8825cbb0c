// Pairs each reply with the request "send command" recorded: by MQTT 5 correlation data, else by
// the reply's request_id (MQTT 3.1.1). Replies to other clients' requests are ignored. A
// msg.topic of "sweep" (the inject node beside) reports requests unanswered after 30 s.
const TIMEOUT_MS = 30000;
const pending = flow.get("pending") || {};
function what(req) {
    return [req.verb, req.app, req.module].filter(Boolean).join(" ");
}
if (msg.topic === "sweep") {
    const now = Date.now();
    const out = [];
    for (const [rid, req] of Object.entries(pending)) {
        if (now - req.sent > TIMEOUT_MS) {
            delete pending[rid];
            out.push({ topic: "reply", payload: `x ${what(req)} on ${req.device}: no reply after ${TIMEOUT_MS / 1000} s (is the device online?)` });
        }
    }
    flow.set("pending", pending);
    return [out];
}
let reply;
try {
    reply = JSON.parse(Buffer.isBuffer(msg.payload) ? msg.payload.toString() : msg.payload);
} catch (e) {
    reply = null;
}
let rid = null;
if (msg.correlationData !== undefined && msg.correlationData !== null) {
    rid = Buffer.isBuffer(msg.correlationData) ? msg.correlationData.toString() : String(msg.correlationData);
}
if (!rid && reply && typeof reply === "object" && typeof reply.request_id === "string") rid = reply.request_id;
const req = rid ? pending[rid] : undefined;
if (!req) return null; // another client's request, or one we already reported
delete pending[rid];
flow.set("pending", pending);

const took = ((Date.now() - req.sent) / 1000).toFixed(1);
let text;
if (!reply || typeof reply !== "object") {
    text = `x ${what(req)} on ${req.device}: unreadable reply (${took} s)`;
} else if (reply.ok) {
    const r = reply.result || {};
    let detail = "done";
    if (req.verb === "deploy" || req.verb === "start") detail = r.status || "done";
    else if (req.verb === "update") detail = r.applied_live ? "applied live" : "module restarted";
    else if (req.verb === "status" && r.apps) {
        const apps = Object.entries(r.apps).map(([name, a]) => `${name} ${a.status}`);
        detail = apps.length ? apps.join(", ") : "no apps";
    } else if (req.verb === "stop") detail = "stopped";
    else if (req.verb === "remove") detail = "removed";
    text = `ok ${what(req)} on ${req.device}: ${detail} (${took} s)`;
} else {
    const e = reply.error || {};
    text = `x ${what(req)} on ${req.device}: ${e.code || "error"}${e.path ? " at " + e.path : ""}: ${e.message || ""} (${took} s)`;
}
const replies = flow.get("replies") || [];
replies.push({ request_id: rid, verb: req.verb, app: req.app, device: req.device, ok: !!(reply && reply.ok),
    error: reply && reply.error ? reply.error : null, seconds: Number(took), text });
flow.set("replies", replies.slice(-50));
node.status({ fill: reply && reply.ok ? "green" : "red", shape: "dot", text: text.slice(0, 60) });
return [{ topic: "reply", payload: text, reply, request: req }];
