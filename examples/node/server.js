#!/usr/bin/env node
// A small HTTP server that handoff can reload without dropping a connection.
//
// It takes its listening socket from systemd-style socket activation (what handoff does),
// reports READY=1 once it serves, and on SIGTERM stops accepting, finishes the requests in
// flight, closes idle keep-alive connections and exits 0. No npm dependencies (Node >= 18.2).
//
//     handoff --listen 127.0.0.1:8080 -- node examples/node/server.js
//
// Started without handoff (no LISTEN_FDS), it binds 127.0.0.1:8080 itself.
'use strict';

const http = require('node:http');
const { execFile } = require('node:child_process');

const SD_LISTEN_FDS_START = 3; // inherited sockets are fds 3, 4, ... (we use only the first)
const GENERATION = process.env.HANDOFF_GENERATION || '?';
let draining = false;

function fail(message) {
  console.error(`node-server: ${message}`);
  process.exit(1);
}

// Where to listen: the socket passed by handoff/systemd, or our own port when started alone.
function listenTarget() {
  if (process.env.LISTEN_FDS === undefined) {
    console.error('node-server: LISTEN_FDS is not set: binding 127.0.0.1:8080 myself');
    return { host: '127.0.0.1', port: 8080 };
  }
  // Like sd_listen_fds(): the fds are ours only if LISTEN_PID names this very process
  // (strict: a missing LISTEN_PID is an error too).
  if (process.env.LISTEN_PID !== String(process.pid)) {
    fail(`LISTEN_PID=${process.env.LISTEN_PID} is not our pid ${process.pid}`);
  }
  if (!(Number(process.env.LISTEN_FDS) >= 1)) fail('LISTEN_FDS is set but no socket was passed');
  // Node adopts an already bound, listening socket by fd (and makes it non-blocking, which
  // is what a socket shared with another generation during a reload needs).
  return { fd: SD_LISTEN_FDS_START };
}

// READY=1 for $NOTIFY_SOCKET. Node's core has no AF_UNIX datagram sockets (`dgram` is UDP
// only, `net` is stream only), and the npm packages that add them are native add-ons that
// need a compiler. So we ask systemd-notify(1) to send it: the standard tool for programs
// without an sd_notify library (Debian: package `systemd`). handoff accepts the message
// because systemd-notify is our child, and systemd-notify waits (sd_notify_barrier) until
// handoff has read it before it exits, so it is attributed to us even though the helper is
// gone right after. Asynchronous: we serve while it runs.
function sdNotifyReady() {
  if (!process.env.NOTIFY_SOCKET) return;
  execFile('systemd-notify', ['--ready', `--status=serving, generation ${GENERATION}`], (err) => {
    if (err) {
      const why = err.code === 'ENOENT' ? 'systemd-notify is not installed' : err.message;
      console.error(`node-server: could not send READY=1 (${why}); ` +
        'install systemd-notify or run handoff with --ready-after');
    }
  });
}

function reply(res, text) {
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(text));
  // Going away: ask the client to reconnect (to the new generation) after this response.
  if (draining) res.setHeader('Connection', 'close');
  res.end(text);
}

const server = http.createServer((req, res) => {
  const who = `generation ${GENERATION} (pid ${process.pid})`;
  if (req.url === '/slow') {
    // A request that takes a second: reload while it runs, it still completes.
    setTimeout(() => reply(res, `Slow hello from Node.js, ${who}\n`), 1000);
  } else {
    reply(res, `Hello from Node.js, ${who}\n`);
  }
});

function drain() {
  if (draining) return;
  draining = true;
  // Stop accepting: close() closes our copy of the listening socket (it stays open in
  // handoff and in the next generation) and calls back once every connection has ended.
  server.close(() => process.exit(0));
  // Connections with no request in flight would otherwise wait for their keep-alive
  // timeout; those with one get "Connection: close" on their response (see reply()).
  server.closeIdleConnections();
  // Bound the drain from inside too (handoff's --drain-timeout bounds it from outside).
  setTimeout(() => server.closeAllConnections(), 25000).unref();
}

process.on('SIGTERM', drain); // handoff's stop signal
process.on('SIGINT', drain); // Ctrl-C when running alone

server.listen(listenTarget(), sdNotifyReady);
