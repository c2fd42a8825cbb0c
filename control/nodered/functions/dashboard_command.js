// Dashboard controls: the app dropdown stores its choice; stop / start / remove / status buttons
// (msg.topic = the verb) turn it into a command for "send command".
if (msg.topic === "select") {
    flow.set("selectedApp", msg.payload);
    return null;
}
const app = flow.get("selectedApp");
if (msg.topic === "status") return { topic: "status", payload: {} };
if (!app) {
    node.warn(`${msg.topic}: choose an app first`);
    return null;
}
return { topic: msg.topic, payload: { app } };
