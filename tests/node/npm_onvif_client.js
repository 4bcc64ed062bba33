// Drives npm `onvif` against one device; prints one JSON object with what it saw.
// Usage: node npm_onvif_client.js HOST PORT USER PASS
'use strict';
const { Cam } = require('onvif');
const [host, port, username, password] = process.argv.slice(2);

function step(fn) {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

const cam = new Cam({ hostname: host, port: Number(port), username, password, timeout: 15000 }, async function (err) {
  const out = {};
  try {
    if (err) throw err;
    const token = this.profiles[0].$.token;
    out.profiles = this.profiles.map((p) => p.$.token);
    out.info = await step((cb) => this.getDeviceInformation(cb));
    out.streamUri = (await step((cb) => this.getStreamUri({ protocol: 'RTSP', profileToken: token }, cb))).uri;
    out.snapshotUri = (await step((cb) => this.getSnapshotUri({ profileToken: token }, cb))).uri;
    await step((cb) => this.createPullPointSubscription(cb));
    const first = await step((cb) => this.pullMessages({ timeout: 5000, messageLimit: 10 }, cb));
    out.initialMessages = [].concat(first.notificationMessage || []).length;
    if (this.uri && this.uri.ptz) {
      await step((cb) => this.continuousMove({ x: 0.5, y: 0, zoom: 0 }, cb));
      const moving = await step((cb) => this.getStatus({}, cb));
      await step((cb) => this.stop({ panTilt: true, zoom: true }, cb));
      out.ptzMoveStatus = moving.moveStatus;
    }
    await step((cb) => this.unsubscribe(cb));
    out.ok = true;
  } catch (e) {
    out.ok = false;
    out.error = String(e && e.stack ? e.stack : e);
  }
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
});
