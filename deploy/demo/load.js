// Demo load generator (uninstrumented): keep-alive calls to the shop and the
// static file server, some carrying a W3C traceparent.
const http = require('http');
const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
const hex = (n) => [...Array(n)].map(() => Math.floor(Math.random() * 16).toString(16)).join('');
function call(port, method, path) {
  return new Promise((resolve) => {
    const headers = Math.random() < 0.5 ? { traceparent: `00-${hex(32)}-${hex(16)}-01` } : {};
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      res.resume(); res.on('end', resolve);
    });
    req.on('error', resolve);
    req.end(method === 'POST' ? '{"cart":[1,2]}' : undefined);
  });
}
async function loop() {
  for (;;) {
    await call(8080, 'GET', `/products/${Math.floor(Math.random() * 1000)}`);
    await call(8080, 'POST', '/checkout');
    if (Math.random() < 0.2) await call(8080, 'GET', '/nope');
    await call(8081, 'GET', Math.random() < 0.8 ? '/index.html' : '/missing.txt');
    await new Promise((r) => setTimeout(r, 100));
  }
}
loop();
