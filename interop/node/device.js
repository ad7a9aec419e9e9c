#!/usr/bin/env node
// A device under test for `lwm2m-harness test --device-cmd` built on the LwM2M client of
// lwm2m-node-lib (an independently written, pre-1.0-era stack):
//
//   node interop/node/device.js SERVER_HOST SERVER_PORT ENDPOINT
//   lwm2m-harness test --device-cmd 'node interop/node/device.js {server_host} {server_port} {endpoint}' \
//       --device-stop deregister
//
// It holds a Server object instance /1/0 and a Device object instance /3/0 with the usual
// identification resources, registers,
// and answers the server. As many real devices do, it reboots by ending its process: on
// Execute /3/0/4 it answers, then exits (the harness starts it again). Commands, one per line
// on stdin: `deregister` (de-register, then exit), `quit`; it exits at the end of its input.
// What it sees goes to stdout, one JSON object per line.
'use strict';

const readline = require('readline');
const {client, emit, fail, args, createWith, handlers} = require('./peer');

const {host, port, endpoint} = args('device.js');
let device = null;

// Reboot: the answer to Execute /3/0/4 leaves first, then the process ends.
function rebootOnExecute(kind, path) {
    if (kind === 'execute' && path === '/3/0/4') {
        emit({event: 'rebooting'});
        setTimeout(() => process.exit(0), 200);
    }
}

// Server (1) instance 0: Short Server ID, lifetime, notification storing, binding.
createWith('/1/0', [['0', '1'], ['1', '300'], ['6', 'false'], ['7', 'U']], () =>
    // Device (3): manufacturer, model, serial, firmware version, battery level, error code,
    // current time, UTC offset, supported binding.
    createWith('/3/0', [
        ['0', 'lwm2m-node-lib'],
        ['1', 'node-device'],
        ['2', 'ND-' + endpoint],
        ['3', '1.4.0'],
        ['9', '87'],
        ['11', '0'],
        ['13', String(Math.floor(Date.now() / 1000))],
        ['14', '+01:00'],
        ['16', 'U']
    ], () => {
        client.register(host, port, null, endpoint, (error, info) => {
            if (error) {
                return fail('register', error);
            }
            device = info;
            handlers(info, rebootOnExecute);
            emit({event: 'registered', location: info.location});
        });
    }));

readline.createInterface({input: process.stdin}).on('line', (line) => {
    switch (line.trim()) {
    case 'deregister':
        if (!device) {
            process.exit(0);
        }
        client.unregister(device, (error) => {
            if (error) {
                fail('deregister', error);
            } else {
                emit({event: 'deregistered'});
            }
            process.exit(0);
        });
        break;
    case 'quit':
        process.exit(0);
        break;
    default:
        fail('command', 'unknown command ' + line.trim());
    }
}).on('close', () => {
    // The end of input after `deregister` must not cut the De-register short.
    setTimeout(() => process.exit(0), device ? 1000 : 0);
});
