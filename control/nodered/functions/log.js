// Every readable line of the flow: kept (flow "log", last 200, for GET /edgeva/summary),
// passed on to the debug sidebar (output 1) and as the last 15 lines to the dashboard (output 2).
const log = flow.get("log") || [];
const line = { time: new Date().toLocaleTimeString(), kind: msg.topic || "", text: String(msg.payload) };
log.push(line);
flow.set("log", log.slice(-200));
const last = log.slice(-15).reverse().map((l) => ({ time: l.time, what: l.kind, message: l.text }));
return [msg, { payload: last }];
