// Drives npm `onvif` against one device; prints one JSON object with what it saw.
// Every call is a step: out.steps[name] is "ok" or the error it failed with, so one run
// shows all that works and all that does not (the conformance matrix reads them).
// Usage: node npm_onvif_client.js HOST PORT USER PASS
'use strict';
const { Cam } = require('onvif');
const [host, port, username, password] = process.argv.slice(2);

function call(fn) {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

const cam = new Cam({ hostname: host, port: Number(port), username, password, timeout: 15000 }, async function (err) {
  const out = { steps: {} };
  const step = async (name, fn) => {
    try {
      const res = await call(fn);
      out.steps[name] = 'ok';
      return res;
    } catch (e) {
      out.steps[name] = String(e && e.message ? e.message : e);
      return undefined;
    }
  };
  try {
    if (err) throw err;
    out.steps.connect = 'ok';
    out.media2 = Boolean(this.media2Support);
    const token = this.profiles[0].$.token;
    out.profiles = this.profiles.map((p) => p.$.token);
    out.info = await step('getDeviceInformation', (cb) => this.getDeviceInformation(cb));
    out.streamUri = ((await step('getStreamUri', (cb) => this.getStreamUri({ protocol: 'RTSP', profileToken: token }, cb))) || {}).uri;
    out.snapshotUri = ((await step('getSnapshotUri', (cb) => this.getSnapshotUri({ profileToken: token }, cb))) || {}).uri;
    await step('getVideoEncoderConfigurations', (cb) => this.getVideoEncoderConfigurations(cb));
    await step('getVideoEncoderConfigurationOptions', (cb) => this.getVideoEncoderConfigurationOptions(cb));
    await step('getOSDs', (cb) => this.getOSDs(cb));
    await step('getOSDOptions', (cb) => this.getOSDOptions(cb));
    await step('createPullPointSubscription', (cb) => this.createPullPointSubscription(cb));
    const first = await step('pullMessages', (cb) => this.pullMessages({ timeout: 5000, messageLimit: 10 }, cb));
    out.initialMessages = first ? [].concat(first.notificationMessage || []).length : 0;
    if (this.uri && this.uri.ptz) {
      await step('continuousMove', (cb) => this.continuousMove({ x: 0.5, y: 0, zoom: 0 }, cb));
      const moving = await step('getStatus', (cb) => this.getStatus({}, cb));
      await step('stop', (cb) => this.stop({ panTilt: true, zoom: true }, cb));
      out.ptzMoveStatus = moving && moving.moveStatus;
    }
    await step('unsubscribe', (cb) => this.unsubscribe(cb));
  } catch (e) {
    out.steps.connect = String(e && e.stack ? e.stack : e);
  }
  out.ok = Object.values(out.steps).every((v) => v === 'ok');
  out.error = out.ok ? undefined : JSON.stringify(out.steps);
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(0);
});
