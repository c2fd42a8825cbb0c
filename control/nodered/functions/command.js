// Turns {topic: verb, payload: {...}} into an edgeva command (docs/protocol.md) for the
// mqtt out node: topic edgeva/v1/{device}/{tenant}/cmd/{verb}, a fresh request_id, and the MQTT 5
// response topic + correlation data, so that "match replies" can pair the reply with this request
// (on an MQTT 3.1.1 broker the agent answers on .../reply/{request_id}, matched by request_id).
// msg.device / msg.tenant override EDGEVA_DEVICE / EDGEVA_TENANT (default "default");
// EDGEVA_SOURCE and EDGEVA_FPS, when set, replace every decoder's source and fps in a deploy.
const VERBS = ["deploy", "update", "start", "stop", "remove", "status", "metrics"];
const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const verb = msg.topic;
if (!VERBS.includes(verb)) {
    node.error(`unknown command ${JSON.stringify(verb)} in msg.topic: use one of ${VERBS.join(", ")}`, msg);
    return null;
}
const device = msg.device || env.get("EDGEVA_DEVICE");
const tenant = msg.tenant || env.get("EDGEVA_TENANT") || "default";
if (!NAME.test(String(device || ""))) {
    node.error(`device ${JSON.stringify(device)} is not a device id: set EDGEVA_DEVICE or msg.device`, msg);
    return null;
}
if (!NAME.test(String(tenant))) {
    node.error(`tenant ${JSON.stringify(tenant)} is not a tenant name: fix EDGEVA_TENANT or msg.tenant`, msg);
    return null;
}
let body = msg.payload;
if (typeof body === "string") {
    try {
        body = body.trim() ? JSON.parse(body) : {};
    } catch (e) {
        node.error(`${verb}: msg.payload is not JSON: ${e.message}`, msg);
        return null;
    }
}
if (body === null || body === undefined) body = {};
if (typeof body !== "object" || Array.isArray(body)) {
    node.error(`${verb}: msg.payload must be a JSON object, got ${typeof body}`, msg);
    return null;
}
// The inject node hands out the same object every time: never change it in place.
body = RED.util.cloneMessage(body);
if (verb === "deploy") {
    const source = env.get("EDGEVA_SOURCE");
    const fps = env.get("EDGEVA_FPS");
    if (fps && !(Number(fps) > 0)) {
        node.error(`EDGEVA_FPS=${JSON.stringify(fps)} is not a positive number`, msg);
        return null;
    }
    for (const m of Object.values(body.modules || {})) {
        if (m && m.type === "decoder") {
            m.args = m.args || {};
            if (source) m.args.source = source;
            if (fps) m.args.fps = Number(fps);
        }
    }
}
const seq = (context.get("seq") || 0) + 1;
context.set("seq", seq);
const rid = `nr-${Date.now().toString(36)}-${seq}`;
body.request_id = rid;

const pending = flow.get("pending") || {};
pending[rid] = { verb, app: body.app || "", module: body.module || "", device, tenant, sent: Date.now() };
flow.set("pending", pending);

const out = {
    topic: `edgeva/v1/${device}/${tenant}/cmd/${verb}`,
    payload: JSON.stringify(body),
    qos: 1,
    retain: false,
    responseTopic: `edgeva/v1/${device}/${tenant}/reply/${context.get("inbox")}`,
    correlationData: Buffer.from(rid),
};
const what = [verb, body.app, body.module].filter(Boolean).join(" ");
node.status({ fill: "blue", shape: "dot", text: `${what} -> ${device}` });
return [out, { topic: "command", payload: `-> ${what} sent to ${device} (${rid})` }];
