#!/usr/bin/env node
// Drives the LwM2M server of lwm2m-node-lib (an independently written, pre-1.0-era peer)
// for our interoperability tests.
//
//   node server.js PORT
//
// Reports, one JSON object per line on stdout: {"event":"listening"},
// {"event":"registration","endpoint":...,"lifetime":...,"version":...,"binding":...,"payload":...},
// {"event":"update",...}, {"event":"deregistration","endpoint":...}.
// Commands, one JSON object per line on stdin, answered with {"reply":ID,...}:
//   {"id":1,"op":"read","endpoint":"ep","path":"/3/0/0"}
//   {"id":2,"op":"write","endpoint":"ep","path":"/3/0/14","value":"+02:00"}
//   {"id":3,"op":"execute","endpoint":"ep","path":"/3/0/4","value":""}
//   {"id":4,"op":"discover","endpoint":"ep","path":"/3/0"}
//   {"id":5,"op":"observe","endpoint":"ep","path":"/3/0/9"}   (then {"event":"notification",...})
//   {"id":6,"op":"quit"}
'use strict';

const readline = require('readline');
const lwm2m = require('lwm2m-node-lib');

const port = Number(process.argv[2]);
if (!port) {
    process.stderr.write('usage: node server.js PORT\n');
    process.exit(2);
}
const server = lwm2m.server;

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

const config = {
    port: port,
    lifetimeCheckInterval: 1000,
    udpWindow: 100,
    defaultType: 'Device',
    types: [],
    logLevel: 'FATAL',
    ipProtocol: 'udp4',
    serverProtocol: 'udp4',
    deviceRegistry: {type: 'memory'},
    formats: [
        {name: 'application-vnd-oma-lwm2m/text', value: 1541},
        {name: 'application-vnd-oma-lwm2m/tlv', value: 1542},
        {name: 'application-vnd-oma-lwm2m/json', value: 1543},
        {name: 'application-vnd-oma-lwm2m/opaque', value: 1544}
    ],
    writeFormat: 'application-vnd-oma-lwm2m/text',
    defaultAcceptFormat: 'text/plain'
};

server.start(config, (error, serverInfo) => {
    if (error) {
        emit({event: 'error', step: 'start', error: String(error.message || error)});
        process.exit(1);
    }
    server.setHandler(serverInfo, 'registration', (endpoint, lifetime, version, binding, payload, callback) => {
        emit({event: 'registration', endpoint: endpoint, lifetime: lifetime, version: version,
            binding: binding, payload: payload});
        callback();
    });
    server.setHandler(serverInfo, 'updateRegistration', (object, payload, callback) => {
        emit({event: 'update', endpoint: object.name, payload: payload});
        callback();
    });
    server.setHandler(serverInfo, 'unregistration', (device, callback) => {
        emit({event: 'deregistration', endpoint: device.name});
        callback();
    });
    emit({event: 'listening', port: port});
});

function withDevice(command, then) {
    server.getDevice(command.endpoint, (error, device) => {
        if (error || !device) {
            return emit({reply: command.id, error: 'unknown endpoint ' + command.endpoint});
        }
        const ids = command.path.split('/').filter((s) => s !== '');
        then(device, ids);
    });
}

function reply(command) {
    return (error, result) => {
        if (error) {
            emit({reply: command.id, error: String(error.message || error.name || error),
                code: error.code || null});
        } else {
            emit({reply: command.id, result: result === undefined ? null : result});
        }
    };
}

readline.createInterface({input: process.stdin}).on('line', (line) => {
    let command;
    try {
        command = JSON.parse(line);
    } catch (e) {
        return emit({event: 'error', step: 'command', error: 'not JSON: ' + line});
    }
    switch (command.op) {
    case 'read':
        withDevice(command, (d, ids) => server.read(d.id, ids[0], ids[1], ids[2], reply(command)));
        break;
    case 'write':
        withDevice(command, (d, ids) => server.write(d.id, ids[0], ids[1], ids[2], command.value, reply(command)));
        break;
    case 'execute':
        withDevice(command, (d, ids) => server.execute(d.id, ids[0], ids[1], ids[2], command.value || '',
            reply(command)));
        break;
    case 'discover':
        withDevice(command, (d, ids) => server.discover(d.id, ids[0], ids[1], ids[2], reply(command)));
        break;
    case 'observe':
        withDevice(command, (d, ids) => server.observe(d.id, ids[0], ids[1], ids[2], (value) => {
            emit({event: 'notification', endpoint: command.endpoint, path: command.path, value: value});
        }, reply(command)));
        break;
    case 'quit':
        server.stop(() => process.exit(0));
        break;
    default:
        emit({reply: command.id, error: 'unknown op ' + command.op});
    }
}).on('close', () => process.exit(0));
