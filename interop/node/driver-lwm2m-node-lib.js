#!/usr/bin/env node
// The example server driver of `lwm2m-harness test --server-api exec:COMMAND`: it runs the
// LwM2M server of npm lwm2m-node-lib and speaks the harness's driver protocol (JSON lines;
// README "Testing your own server", harness/src/bdd/adapter/exec.rs).
//
//   lwm2m-harness test --server coap://127.0.0.1:5683 \
//     --server-api "exec:node interop/node/driver-lwm2m-node-lib.js 5683"
//
// What the library can ask a client for, and so what this driver offers: Read, Write
// (replace) and Observe of one resource, with text/plain, Execute and Discover; the
// registrations and their events. Its Create sends no payload and its remove() sends
// nothing at all, so neither is offered; nor are composites, attributes, cancellation.
// The library's server has no DTLS listener and no security store: there is no coaps://
// address to give (`--server-coaps`) and no `put-credentials` to offer, so the DTLS cases
// are not applicable, saying the server under test has no coaps:// address.
'use strict';

const readline = require('readline');
const lwm2m = require('lwm2m-node-lib');
const libVersion = require('lwm2m-node-lib/package.json').version;

const port = Number(process.argv[2]);
if (!port) {
    process.stderr.write('usage: node driver-lwm2m-node-lib.js PORT\n');
    process.exit(2);
}
const server = lwm2m.server;
// What each endpoint registered with: version, binding, objects (the library keeps less).
const registered = new Map();

function emit(line) {
    process.stdout.write(JSON.stringify(line) + '\n');
}

function hex(text) {
    return Buffer.from(String(text), 'utf8').toString('hex');
}

// `</1/0>,</3/0>` as the REST API's objects list.
function objectsOf(payload) {
    const objects = new Map();
    for (const m of String(payload || '').matchAll(/<\/?(\d+)(?:\/(\d+))?>/g)) {
        const id = Number(m[1]);
        if (!objects.has(id)) {
            objects.set(id, {id: id, version: null, instances: []});
        }
        if (m[2] !== undefined) {
            objects.get(id).instances.push(Number(m[2]));
        }
    }
    return Array.from(objects.values());
}

// A registration in the REST API's shape, from the library's device record.
function registrationOf(device) {
    const known = registered.get(device.name) || {};
    return {
        endpoint: device.name,
        registration_id: String(device.path || device.id).replace(/^\/rd\//, ''),
        lwm2m_version: known.version || '1.0',
        lifetime: Number(device.lifetime),
        binding: known.binding || 'U',
        queue_mode: false,
        address: device.address + ':' + device.port,
        objects: known.objects || [],
    };
}

function withRegistration(endpoint, then) {
    server.getDevice(endpoint, (error, device) => then(error || !device ? null : device));
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

let started = false;
const waiting = [];

server.start(config, (error, serverInfo) => {
    if (error) {
        process.stderr.write('lwm2m-node-lib did not start: ' + (error.message || error) + '\n');
        process.exit(1);
    }
    server.setHandler(serverInfo, 'registration', (endpoint, lifetime, version, binding, payload, callback) => {
        registered.set(endpoint, {version: version, binding: binding, objects: objectsOf(payload)});
        callback();
        // The library stores the device in its callback: then it has an address.
        setImmediate(() => withRegistration(endpoint, (device) => {
            if (device) {
                emit({event: 'registration', registration: registrationOf(device)});
            }
        }));
    });
    server.setHandler(serverInfo, 'updateRegistration', (device, payload, callback) => {
        if (payload) {
            const known = registered.get(device.name) || {};
            known.objects = objectsOf(payload);
            registered.set(device.name, known);
        }
        callback();
        setImmediate(() => withRegistration(device.name, (d) => {
            emit({event: 'update', registration: registrationOf(d || device)});
        }));
    });
    server.setHandler(serverInfo, 'unregistration', (device, callback) => {
        emit({event: 'deregistration', registration: registrationOf(device)});
        registered.delete(device.name);
        callback();
    });
    started = true;
    waiting.splice(0).forEach(handle);
});

// The library's error for a client's error code (`ClientError` carries it; not-found is 4.04).
function errorCode(error) {
    if (error && error.name === 'OBJECT_NOT_FOUND') {
        return '4.04';
    }
    if (error && error.name === 'RESOURCE_NOT_FOUND') {
        return '4.04';
    }
    const m = /(\d\.\d\d)/.exec(String(error && (error.message || error.code) || ''));
    return m ? m[1] : null;
}

function answer(request, error, ok) {
    if (!error) {
        return emit(Object.assign({id: request.id}, ok));
    }
    const code = errorCode(error);
    if (code) {
        return emit({id: request.id, code: code});
    }
    const text = String(error.message || error.name || error);
    emit({id: request.id, error: text, kind: /timeout|ETIMEDOUT/i.test(text) ? 'timeout' : 'other'});
}

function handle(request) {
    const ids = String(request.path || '').split('/').filter((s) => s !== '');
    const onDevice = (then) => server.getDevice(request.endpoint, (error, device) => {
        if (error || !device) {
            return emit({id: request.id, error: 'no registration for ' + request.endpoint,
                kind: 'unknown-endpoint'});
        }
        then(device);
    });
    switch (request.op) {
    case 'hello':
        return emit({
            id: request.id,
            product: 'lwm2m-node-lib',
            version: libVersion,
            ops: ['read', 'write', 'execute', 'discover', 'observe', 'registrations', 'events',
                'notifications'],
            limits: {
                formats: ['text'],
                levels: {read: ['resource'], write: ['resource'], observe: ['resource'],
                    execute: ['resource']},
                partial_write: false,
            },
        });
    case 'registration':
        return withRegistration(request.endpoint, (device) =>
            emit({id: request.id, registration: device ? registrationOf(device) : null}));
    case 'read':
        return onDevice((d) => server.read(d.id, ids[0], ids[1], ids[2], (error, value) =>
            answer(request, error, {code: '2.05', value: value})));
    case 'write': {
        const text = typeof request.value === 'string' ? request.value : JSON.stringify(request.value);
        return onDevice((d) => server.write(d.id, ids[0], ids[1], ids[2], text, (error) =>
            answer(request, error, {code: '2.04'})));
    }
    case 'execute':
        return onDevice((d) => server.execute(d.id, ids[0], ids[1], ids[2], request.args || '', (error) =>
            answer(request, error, {code: '2.04'})));
    case 'discover': {
        const done = (error, links) => answer(request, error, {code: '2.05', links: links});
        return onDevice((d) => {
            if (ids.length >= 3) {
                server.discover(d.id, ids[0], ids[1], ids[2], done);
            } else if (ids.length === 2) {
                server.discover(d.id, ids[0], ids[1], done);
            } else {
                server.discover(d.id, ids[0], done);
            }
        });
    }
    case 'observe': {
        const observation = server.buildObserverId(request.endpoint, ids[0], ids[1], ids[2]);
        let seq = 0;
        return onDevice((d) => server.observe(d.id, ids[0], ids[1], ids[2], (value) => {
            seq += 1;
            emit({event: 'notification', endpoint: request.endpoint, observation: observation,
                path: request.path, seq: seq, value: value});
        }, (error, value) => answer(request, error, {code: '2.05', value: value,
            observation: observation})));
    }
    default:
        return emit({id: request.id, error: 'not offered: ' + request.op, kind: 'other'});
    }
}

readline.createInterface({input: process.stdin}).on('line', (line) => {
    let request;
    try {
        request = JSON.parse(line);
    } catch (e) {
        return;
    }
    if (started) {
        handle(request);
    } else {
        waiting.push(request);
    }
}).on('close', () => process.exit(0));
