// One reply inbox per Node-RED start: edgeva/v1/{device}/{tenant}/reply/nodered-XXXXXX.
context.set("inbox", "nodered-" + Math.random().toString(36).slice(2, 10));
