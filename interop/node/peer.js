// What the two lwm2m-node-lib client peers (client.js, device.js) share: the JSON-lines
// output, the client's configuration (LwM2M 1.0, plain-text values, UDP), setting
// resources one after the other, and the handlers that report each server request.
'use strict';

const lwm2m = require('lwm2m-node-lib');

const client = lwm2m.client;

function emit(event) {
    process.stdout.write(JSON.stringify(event) + '\n');
}

function fail(step, error) {
    emit({event: 'error', step: step, error: String(error && (error.message || error.name) || error)});
}

// HOST PORT ENDPOINT from the command line, or the usage line and exit status 2.
function args(script) {
    const [host, port, endpoint] = process.argv.slice(2);
    if (!host || !port || !endpoint) {
        process.stderr.write('usage: node ' + script + ' SERVER_HOST SERVER_PORT ENDPOINT\n');
        process.exit(2);
    }
    return {host: host, port: Number(port), endpoint: endpoint};
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

// Creates the instance `uri` (e.g. '/3/0') and sets its [resource, value] pairs in order,
// then calls `done`; a failure is reported and stops there.
function createWith(uri, pairs, done) {
    client.registry.create(uri, (error) => {
        if (error) {
            return fail('create', error);
        }
        const set = (i) => {
            if (i === pairs.length) {
                return done();
            }
            client.registry.setResource(uri, pairs[i][0], pairs[i][1], (e) => {
                if (e) {
                    return fail('set', e);
                }
                set(i + 1);
            });
        };
        set(0);
    });
}

// Reports every write, execute and read of the server as {event, path, value}; `after`
// (optional) sees each (kind, path) once the request is answered.
function handlers(info, after) {
    const report = (kind) => (objectType, objectId, resourceId, value, callback) => {
        const path = '/' + objectType + '/' + objectId + '/' + resourceId;
        emit({event: kind, path: path, value: value === undefined ? null : String(value)});
        callback(null);
        if (after) {
            after(kind, path);
        }
    };
    client.setHandler(info.serverInfo, 'write', report('write'));
    client.setHandler(info.serverInfo, 'execute', report('execute'));
    client.setHandler(info.serverInfo, 'read', report('read'));
}

module.exports = {client, emit, fail, args, createWith, handlers};
