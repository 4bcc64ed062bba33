// npm `onvif` Discovery.probe; prints the endpoint addresses and XAddrs found.
'use strict';
const { Discovery } = require('onvif');
Discovery.probe({ timeout: Number(process.argv[2] || 2000), resolve: false, device: process.argv[3] || undefined }, (err, found) => {
  const out = (found || []).map((m) => ({
    address: m.probeMatches.probeMatch.endpointReference.address,
    xaddrs: m.probeMatches.probeMatch.XAddrs,
  }));
  process.stdout.write(JSON.stringify({ error: err ? String(err) : null, found: out }) + '\n');
  process.exit(0);
});
