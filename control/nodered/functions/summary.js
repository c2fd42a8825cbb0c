// GET /edgeva/summary: what this flow knows, as JSON, for scripts and tests: devices, apps
// (status, fps, latency, event counts), RoI zones, reid alerts, matched replies, readable lines.
msg.payload = {
    device: env.get("EDGEVA_DEVICE") || null,
    devices: flow.get("devices") || {},
    apps: flow.get("apps") || {},
    events: flow.get("events") || {},
    roi: flow.get("roi") || {},
    alerts: flow.get("alerts") || [],
    replies: flow.get("replies") || [],
    pending: Object.keys(flow.get("pending") || {}).length,
    log: flow.get("log") || [],
};
return msg;
