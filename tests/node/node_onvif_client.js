// Drives node-onvif (init, profiles, stream URIs, one snapshot) against one device.
// Usage: node node_onvif_client.js XADDR USER PASS
// fetchSnapshot sends Basic first and answers a 401's Digest challenge.
'use strict';
const onvif = require('node-onvif');
const [xaddr, user, pass] = process.argv.slice(2);
const device = new onvif.OnvifDevice({ xaddr, user, pass });

async function main() {
  const info = await device.init();
  const profiles = device.getProfileList().map((p) => ({ token: p.token, rtsp: p.stream.rtsp, snapshot: p.snapshot }));
  let snapshot;
  try {
    const res = await device.fetchSnapshot();
    snapshot = { ok: res.body.length > 2 && res.body[0] === 0xff && res.body[1] === 0xd8, bytes: res.body.length };
  } catch (e) {
    snapshot = { ok: false, error: String(e) };
  }
  return { ok: true, info, profiles, snapshot };
}

// node-onvif leaves the refused first response unread, which holds a keep-alive socket open:
// exit once the result is written.
function done(result) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(0));
}

main().then(done).catch((e) => done({ ok: false, error: String(e && e.stack ? e.stack : e) }));
