// Drives node-onvif (init, profiles, stream URIs) against one device.
// Usage: node node_onvif_client.js XADDR USER PASS
'use strict';
const onvif = require('node-onvif');
const [xaddr, user, pass] = process.argv.slice(2);
const device = new onvif.OnvifDevice({ xaddr, user, pass });
device.init().then((info) => {
  const profiles = device.getProfileList().map((p) => ({ token: p.token, rtsp: p.stream.rtsp, snapshot: p.snapshot }));
  process.stdout.write(JSON.stringify({ ok: true, info, profiles }) + '\n');
}).catch((e) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(e && e.stack ? e.stack : e) }) + '\n');
});
