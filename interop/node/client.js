#!/usr/bin/env node
// Drives the LwM2M client of lwm2m-node-lib (an independently written, pre-1.0-era peer)
// for our interoperability tests.
//
//   node client.js SERVER_HOST SERVER_PORT ENDPOINT
//
// It creates /3/0 (Device) with a few resources, registers, and then reports everything it
// sees as one JSON object per line on stdout: {"event":"registered","location":...},
// {"event":"write","path":"/3/0/14","value":"..."}, {"event":"execute",...}, {"event":"read",...}.
// Commands, one per line on stdin: `set OBJ_URI RESOURCE VALUE`, `update`, `deregister`, `quit`.
'use strict';

const readline = require('readline');
const lwm2m = require('lwm2m-node-lib');

const [host, port, endpoint] = process.argv.slice(2);
if (!host || !port || !endpoint) {
    process.stderr.write('usage: node client.js SERVER_HOST SERVER_PORT ENDPOINT\n');
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
        emit({event: kind, path: '/' + objectType + '/' + objectId + '/' + resourceId,
            value: value === undefined ? null : String(value)});
        callback(null);
    };
    client.setHandler(info.serverInfo, 'write', report('write'));
    client.setHandler(info.serverInfo, 'execute', report('execute'));
    client.setHandler(info.serverInfo, 'read', report('read'));
}

const initial = [
    ['0', 'lwm2m-node-lib'],
    ['1', 'interop-client'],
    ['9', '87'],
    ['14', '+01:00']
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

client.registry.create('/3/0', (error) => {
    if (error) {
        return fail('create', error);
    }
    setAll(0);
});

readline.createInterface({input: process.stdin}).on('line', (line) => {
    const words = line.trim().split(/\s+/);
    switch (words[0]) {
    case 'set':
        client.registry.setResource(words[1], words[2], words.slice(3).join(' '), (error) => {
            if (error) {
                return fail('set', error);
            }
            emit({event: 'set', path: words[1] + '/' + words[2]});
        });
        break;
    case 'update':
        if (!device) {
            return fail('update', 'not registered');
        }
        client.update(device, (error, info) => {
            if (error) {
                return fail('update', error);
            }
            device = info;
            handlers(info);
            emit({event: 'updated'});
        });
        break;
    case 'deregister':
        if (!device) {
            return fail('deregister', 'not registered');
        }
        client.unregister(device, (error) => {
            if (error) {
                return fail('deregister', error);
            }
            emit({event: 'deregistered'});
        });
        break;
    case 'quit':
        process.exit(0);
        break;
    default:
        fail('command', 'unknown command ' + words[0]);
    }
}).on('close', () => process.exit(0));
