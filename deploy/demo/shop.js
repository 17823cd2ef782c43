// Demo service (uninstrumented): a tiny shop API on plain node:http.
const http = require('http');
const port = Number(process.env.PORT || 8080);
http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x');
  let body = '';
  req.on('data', (c) => (body += c));
  req.on('end', () => {
    const m = url.pathname.match(/^\/products\/(\d+)$/);
    if (req.method === 'GET' && m) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(JSON.stringify({ id: Number(m[1]), name: 'thing' }));
    }
    if (req.method === 'POST' && url.pathname === '/checkout') {
      if (Math.random() < 0.1) { res.writeHead(500); return res.end('payment failed'); }
      return setTimeout(() => { res.writeHead(201); res.end('ok'); }, 20 + Math.random() * 50);
    }
    res.writeHead(404); res.end('not found');
  });
}).listen(port, () => console.error(`shop listening on ${port}`));
