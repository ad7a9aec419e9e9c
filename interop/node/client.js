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
const {client, emit, fail, args, createWith, handlers} = require('./peer');

const {host, port, endpoint} = args('client.js');
let device = null;

createWith('/3/0', [
    ['0', 'lwm2m-node-lib'],
    ['1', 'interop-client'],
    ['9', '87'],
    ['14', '+01:00']
], () => {
    client.register(host, port, null, endpoint, (error, info) => {
        if (error) {
            return fail('register', error);
        }
        device = info;
        handlers(info);
        emit({event: 'registered', location: info.location});
    });
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
