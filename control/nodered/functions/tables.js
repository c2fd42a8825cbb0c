// Rows for the dashboard's tables from flow context, at most 2 times a second.
// Outputs: 1 devices, 2 apps, 3 RoI zones, 4 the app choices of the control group.
const last = context.get("last") || 0;
if (Date.now() - last < 500) {
    if (!context.get("queued")) {
        context.set("queued", true);
        setTimeout(() => {
            context.set("queued", false);
            context.set("last", Date.now());
            node.send(rows());
        }, 500);
    }
    return null;
}
context.set("last", Date.now());
return rows();

function rows() {
    // online devices first: a broker keeps the retained "offline" of every device ever seen
    const devices = Object.values(flow.get("devices") || {}).sort((a, b) =>
        (a.status !== "online") - (b.status !== "online") || a.device.localeCompare(b.device));
    const apps = Object.values(flow.get("apps") || {}).sort((a, b) => (a.device + a.label).localeCompare(b.device + b.label));
    const roi = Object.values(flow.get("roi") || {});
    const fmt = (v, d) => (typeof v === "number" ? v.toFixed(d) : "-");
    const devRows = devices.map((d) => ({
        device: d.device, status: d.status, apps: Object.keys(d.apps).length ? Object.entries(d.apps).map(([a, s]) => `${a} (${s})`).join(", ") : "-",
        modules: d.modules, version: d.version || "-", cpu: d.cpu === null || d.cpu === undefined ? "-" : `${fmt(d.cpu, 0)} %`,
    }));
    const appRows = apps.map((a) => ({
        device: a.device, app: a.label, status: a.status, fps: fmt(a.fps, 2), "latency p50 ms": fmt(a.latency_p50, 1),
        frames: a.frames, dropped: a.dropped, events: (flow.get("events") || {})[`${a.device}/${a.tenant}/${a.app}`] || 0,
    }));
    const roiRows = roi.map((z) => ({ device: z.device, app: z.app, zone: z.zone, "inside now": z.count, entered: z.entered, left: z.exited }));
    // New choices only when the app names change: replacing them clears the user's choice.
    const names = [...new Set(apps.map((a) => a.label).concat(["tracking", "roi", "reid"]))].sort();
    const same = context.get("names") === names.join(",");
    context.set("names", names.join(","));
    const choices = same ? null : { options: names.map((n) => ({ label: n, value: n })) };
    return [{ payload: devRows }, { payload: appRows }, { payload: roiRows }, choices];
}
