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
const lwm2m = require('lwm2m-node-lib');

const [host, port, endpoint] = process.argv.slice(2);
if (!host || !port || !endpoint) {
    process.stderr.write('usage: node device.js SERVER_HOST SERVER_PORT ENDPOINT\n');
    process.exit(2);
}
const client = lwm2m.client;
let device = null;

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

function fail(step, error) {
    emit({event: 'error', step: step, error: String(error && (error.message || error.name) || error)});
}

client.init({
    logLevel: 'FATAL',
    client: {
        lifetime: '300',
        version: '1.0',
        logLevel: 'FATAL',
        observe: {period: 1000},
        ipProtocol: 'udp4',
        serverProtocol: 'udp4',
        formats: [{name: 'lightweightm2m/text', value: 1541}],
        writeFormat: 'lightweightm2m/text'
    }
});

function handlers(info) {
    const report = (kind) => (objectType, objectId, resourceId, value, callback) => {
        const path = '/' + objectType + '/' + objectId + '/' + resourceId;
        emit({event: kind, path: path, value: value === undefined ? null : String(value)});
        callback(null);
        if (kind === 'execute' && path === '/3/0/4') {
            // Reboot: the answer leaves first, then the process ends.
            emit({event: 'rebooting'});
            setTimeout(() => process.exit(0), 200);
        }
    };
    client.setHandler(info.serverInfo, 'write', report('write'));
    client.setHandler(info.serverInfo, 'execute', report('execute'));
    client.setHandler(info.serverInfo, 'read', report('read'));
}

// Device (3) resources: manufacturer, model, serial, firmware version, battery level,
// error code, current time, UTC offset, supported binding.
const initial = [
    ['0', 'lwm2m-node-lib'],
    ['1', 'node-device'],
    ['2', 'ND-' + endpoint],
    ['3', '1.4.0'],
    ['9', '87'],
    ['11', '0'],
    ['13', String(Math.floor(Date.now() / 1000))],
    ['14', '+01:00'],
    ['16', 'U']
];

function setAll(i) {
    if (i === initial.length) {
        client.register(host, Number(port), null, endpoint, (error, info) => {
            if (error) {
                return fail('register', error);
            }
            device = info;
            handlers(info);
            emit({event: 'registered', location: info.location});
        });
        return;
    }
    client.registry.setResource('/3/0', initial[i][0], initial[i][1], (error) => {
        if (error) {
            return fail('set', error);
        }
        setAll(i + 1);
    });
}

// Server (1) instance 0: Short Server ID, lifetime, notification storing, binding.
const server = [['0', '1'], ['1', '300'], ['6', 'false'], ['7', 'U']];

function setServer(i) {
    if (i === server.length) {
        return client.registry.create('/3/0', (error) => {
            if (error) {
                return fail('create', error);
            }
            setAll(0);
        });
    }
    client.registry.setResource('/1/0', server[i][0], server[i][1], (error) => {
        if (error) {
            return fail('set', error);
        }
        setServer(i + 1);
    });
}

client.registry.create('/1/0', (error) => {
    if (error) {
        return fail('create', error);
    }
    setServer(0);
});

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
