// The second baseline for bench/fanout.py: node's `ws` server doing what
// bench/baseline_server.py does with Python's `websockets`.
//
// Every connection except `/publish` is a subscriber that only listens. Each message that
// arrives on `/publish` is sent to every subscriber, then the publisher gets a one-byte
// acknowledgement so it can keep a bounded number of publishes in flight. The same Buffer is
// handed to every `send` (ws writes its own 2-4 byte header per socket and the shared payload
// after it, without copying). No authentication, channels, history or envelope, and no
// compression. `GET /healthz` answers 200 like the hub, so one readiness check serves all.
//
// Run: node bench/ws_baseline/server.js --port 8010   (after `npm ci` in bench/ws_baseline)

'use strict';

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const host = option('host', '127.0.0.1');
const port = Number(option('port', '0'));
if (!port) {
  console.error('usage: server.js --port PORT [--host HOST]');
  process.exit(2);
}

const subscribers = new Set();

const server = http.createServer((request, response) => {
  if (request.url === '/healthz') {
    response.writeHead(200, { 'content-type': 'text/plain' });
    response.end('ok\n');
    return;
  }
  response.writeHead(404);
  response.end();
});

const wss = new WebSocketServer({ server, perMessageDeflate: false, clientTracking: false });

wss.on('connection', (socket, request) => {
  if (request.url === '/publish') {
    socket.on('message', (message, isBinary) => {
      for (const subscriber of subscribers) {
        if (subscriber.readyState === WebSocket.OPEN) {
          subscriber.send(message, { binary: isBinary });
        }
      }
      socket.send('1');
    });
    return;
  }
  subscribers.add(socket);
  socket.on('close', () => subscribers.delete(socket));
  socket.on('error', () => subscribers.delete(socket));
});

server.listen({ host, port, backlog: 1024 }, () => {
  const { version } = require('ws/package.json');
  console.log(`ws baseline listening on ${host}:${port} node=${process.version} ws=${version}`);
});

function stop() {
  for (const subscriber of subscribers) subscriber.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
