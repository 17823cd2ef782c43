#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ (realistic messages,
in the step format of fuzz/src/lib.rs for the session targets). Re-run after
changing the format; the files are committed."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
IN, EG = 0, 1  # directions: Ingress, Egress


def step(direction, data, gap=0, tstep=1):
    """One chunk: control byte, gap operand, length operand, data."""
    c = direction | (tstep << 5)
    ops = b""
    if gap:
        if gap < 256:
            c |= 0x02
            ops += bytes([gap])
        elif gap < 65536:
            c |= 0x04
            ops += struct.pack("<H", gap)
        else:
            c |= 0x06
            ops += struct.pack("<I", gap)
    if len(data) < 256:
        ops += bytes([len(data)])
    else:
        c |= 0x08
        ops += struct.pack("<H", len(data))
    return bytes([c]) + ops + data


IDLE = bytes([0x18 | (1 << 5)])


def script(flags, *steps):
    return bytes([flags]) + b"".join(steps)


def split(direction, data, sizes):
    out, i = b"", 0
    for n in sizes:
        out += step(direction, data[i:i + n])
        i += n
    if i < len(data):
        out += step(direction, data[i:])
    return out


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --------------------------------------------------------------------- HTTP/2
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def lit(name, value):
    """Literal with incremental indexing, new name."""
    return b"\x40" + bytes([len(name)]) + name + bytes([len(value)]) + value


H2_REQ = (b"\x83\x86" + lit(b":path", b"/shop.Cart/Add") + lit(b":authority", b"cart:50051")
          + lit(b"content-type", b"application/grpc")
          + lit(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
H2_REQ2 = b"\x83\x86\xc1\xc0\xbf\xbe"
H2_RESP = (frame(1, 4, 1, b"\x88" + lit(b"content-type", b"application/grpc"))
           + frame(0, 0, 1, b"\x00\x00\x00\x00\x02\x08\x01")
           + frame(1, 5, 1, lit(b"grpc-status", b"0")))
H2_CLIENT = (PREFACE + frame(4, 0, 0, b"\x00\x03\x00\x00\x00\x64") + frame(1, 4, 1, H2_REQ)
             + frame(0, 1, 1, b"\x00\x00\x00\x00\x00"))


def write_h2():
    for role, flags, req, resp in (("server", 2, IN, EG), ("client", 3, EG, IN)):
        write("http2_session", f"{role}-unary", script(flags, step(req, H2_CLIENT), step(resp, H2_RESP),
                                                       step(req, frame(1, 5, 3, H2_REQ2)),
                                                       step(resp, H2_RESP.replace(b"\x00\x00\x00\x01", b"\x00\x00\x00\x03"))))
        write("http2_session", f"{role}-split", script(flags, split(req, H2_CLIENT, [5, 20, 9, 3, 40]),
                                                       split(resp, H2_RESP, [9, 1, 30])))
        write("http2_session", f"{role}-gap", script(flags, step(req, H2_CLIENT[:60], gap=len(H2_CLIENT) - 60),
                                                     step(req, frame(1, 5, 3, b"\x82\x84")), step(resp, frame(1, 5, 3, b"\x88"))))
    # Flag 4: whole bytes against the kernel walk's segments. A server
    # stream: several DATA frames and the trailers in one read.
    stream = (frame(1, 4, 1, b"\x88" + lit(b"content-type", b"application/grpc"))
              + b"".join(frame(0, 0, 1, b"\x00\x00\x00\x00\x40" + bytes([65 + i]) * 64) for i in range(8))
              + frame(1, 5, 1, lit(b"grpc-status", b"13")))
    for role, flags, req, resp in (("server", 6, IN, EG), ("client", 7, EG, IN)):
        write("http2_session", f"{role}-walked", script(flags, step(req, H2_CLIENT), split(resp, stream, [60, 9, 200, 4])))
    write("http2_session", "midstream", script(0, step(IN, frame(1, 5, 7, b"\x82\xc1\xbe")),
                                               step(EG, frame(1, 5, 7, b"\x88"))))
    # RFC 7541 C.3 and C.4: requests sharing a table, plain and Huffman.
    c3 = [b"\x82\x86\x84\x41\x0fwww.example.com", b"\x82\x86\x84\xbe\x58\x08no-cache"]
    write("hpack", "rfc-c3", b"".join(bytes([len(b)]) + b for b in c3))
    c4 = bytes([0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff])
    write("hpack", "rfc-c4", bytes([len(c4)]) + c4 + b"\x01\x3f" + bytes([len(H2_REQ)]) + H2_REQ)


# --------------------------------------------------------------------- HTTP/1
REQ = (b"GET /users/12345?x=1 HTTP/1.1\r\nHost: api.example\r\nUser-Agent: curl/8\r\n"
       b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n")
POST = (b"POST /orders HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
POST_CHUNKED = (b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
RESP_CHUNKED = (b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n")
RESP_CLOSE = b"HTTP/1.0 500 Internal Server Error\r\nConnection: close\r\n\r\nboom"
RESP_101 = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
RESP_100 = b"HTTP/1.1 100 Continue\r\n\r\n"

for flags, req, resp in [(0, IN, EG), (1, EG, IN)]:
    role = "server" if flags == 0 else "client"
    write("http1_session", f"{role}-simple", script(flags, step(req, REQ), step(resp, RESP)))
    write("http1_session", f"{role}-split", script(
        flags, split(req, POST, [3, 20, 40]), split(resp, RESP, [9, 1, 30])))
    write("http1_session", f"{role}-pipelined", script(
        flags, step(req, REQ + POST + REQ), step(resp, RESP + RESP_CHUNKED), step(resp, RESP)))
    write("http1_session", f"{role}-chunked", script(
        flags, split(req, POST_CHUNKED, [70, 4]), step(resp, RESP_100 + RESP_CHUNKED)))
    # Capture limit: the body (and then a whole head) only partly captured.
    write("http1_session", f"{role}-truncated", script(
        flags, step(req, POST[:40], gap=len(POST) - 40),
        step(resp, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nab", gap=99998),
        step(req, REQ[:30], gap=len(REQ) - 30), step(resp, RESP)))
    write("http1_session", f"{role}-close", script(
        flags, step(req, REQ), step(resp, RESP_CLOSE), IDLE, step(resp, b"more body")))
    write("http1_session", f"{role}-upgrade", script(
        flags, step(req, REQ), step(resp, RESP_101), step(req, b"\x81\x05hello")))
big = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 17000 + b"\r\n\r\n"
write("http1_session", "server-head-too-big", script(0, split(IN, big, [8000, 8000]), step(EG, RESP)))

for name, data in [("req", REQ), ("post", POST), ("resp", RESP), ("resp-chunked", RESP_CHUNKED),
                   ("resp-close", RESP_CLOSE), ("truncated-req", REQ[:45]),
                   ("truncated-resp", RESP[:25]), ("101", RESP_101)]:
    write("http1_head", name, data)

body = POST_CHUNKED.split(b"\r\n\r\n", 1)[1]
write("chunked", "whole", bytes([0]) + body)
write("chunked", "split", bytes([3, 2, 7, 5]) + body)
write("chunked", "skip", bytes([3, 3, 0x82, 2]) + body)
write("chunked", "big", bytes([2, 5, 0x90]) + b"1f4\r\n" + b"x" * 500 + b"\r\n0\r\n\r\n")

# ----------------------------------------------------------------- PostgreSQL
def pg(tag, body):
    return tag + struct.pack(">I", len(body) + 4) + body


def cstr(s):
    return s + b"\0"


startup = struct.pack(">II", 0, 196608) + cstr(b"user") + cstr(b"app") + cstr(b"database") + cstr(b"shop") + b"\0"
startup = struct.pack(">I", len(startup)) + startup[4:]
auth_ok = pg(b"R", struct.pack(">I", 0)) + pg(b"S", cstr(b"server_version") + cstr(b"16.2")) \
    + pg(b"K", struct.pack(">II", 1, 2)) + pg(b"Z", b"I")
query = pg(b"Q", cstr(b"SELECT id, name FROM users WHERE id = 42"))
rowdesc = pg(b"T", struct.pack(">H", 1) + cstr(b"id") + struct.pack(">IHIhih", 0, 0, 23, 4, -1, 0))
datarow = pg(b"D", struct.pack(">HI", 1, 2) + b"42")
done = pg(b"C", cstr(b"SELECT 1")) + pg(b"Z", b"I")
err = pg(b"E", b"SERROR\0C42P01\0Mrelation \"nope\" does not exist\0\0") + pg(b"Z", b"I")
parse = pg(b"P", cstr(b"s1") + cstr(b"UPDATE accounts SET balance = $1 WHERE id = $2") + struct.pack(">H", 0))
bind = pg(b"B", cstr(b"") + cstr(b"s1") + struct.pack(">HHI", 0, 2, 2) + b"10" + struct.pack(">I", 1) + b"7"
          + struct.pack(">H", 0))
describe = pg(b"D", b"P" + cstr(b""))
execute = pg(b"E", cstr(b"") + struct.pack(">I", 0))
sync = pg(b"S", b"")
ext_resp = pg(b"1", b"") + pg(b"2", b"") + pg(b"n", b"") + pg(b"C", cstr(b"UPDATE 1")) + pg(b"Z", b"I")
ssl = struct.pack(">II", 8, 80877103)
terminate = pg(b"X", b"")

for flags, req, resp in [(0, IN, EG), (1, EG, IN)]:
    role = "server" if flags == 0 else "client"
    write("postgres_session", f"{role}-simple", script(
        flags, step(req, startup), step(resp, auth_ok), step(req, query),
        step(resp, rowdesc + datarow + done), step(req, terminate)))
    write("postgres_session", f"{role}-extended", script(
        flags, step(req, parse + bind + describe + execute + sync), split(resp, ext_resp, [5, 3])))
    write("postgres_session", f"{role}-error", script(
        flags, step(req, pg(b"Q", cstr(b"SELECT * FROM nope; SELECT 2"))), step(resp, err)))
    write("postgres_session", f"{role}-ssl", script(flags, step(req, ssl), step(resp, b"N"), step(req, startup)))
    write("postgres_session", f"{role}-truncated", script(
        flags, step(req, query[:12], gap=len(query) - 12),
        step(resp, rowdesc + datarow[:4], gap=5000), step(resp, done), step(req, query), step(resp, done)))

# ---------------------------------------------------------------------- MySQL
def my(seq, payload):
    return struct.pack("<I", len(payload))[:3] + bytes([seq]) + payload


greeting = my(0, b"\x0a" + cstr(b"8.0.36") + struct.pack("<I", 12) + b"abcdefgh\0"
              + struct.pack("<HBHH", 0xffff, 45, 2, 0xdfff) + bytes([21]) + b"\0" * 10
              + b"ijklmnopqrst\0" + cstr(b"caching_sha2_password"))
login = my(1, struct.pack("<IIB", 0x00aaa685 | 0x8, 1 << 24, 45) + b"\0" * 23 + cstr(b"app")
           + bytes([0]) + cstr(b"shop") + cstr(b"caching_sha2_password"))
ok = lambda seq: my(seq, b"\x00\x00\x00\x02\x00\x00\x00")
com_query = my(0, b"\x03SELECT name FROM users WHERE id = 42")
coldef = my(2, b"\x03def\x04shop\x05users\x05users\x04name\x04name\x0c\x21\x00\xff\x00\x00\x00\xfd\x00\x00\x00\x00\x00")
resultset = my(1, b"\x01") + coldef + my(3, b"\xfe\x00\x00\x02\x00") + my(4, b"\x05alice") \
    + my(5, b"\xfe\x00\x00\x02\x00")
errp = my(1, b"\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist")
prepare = my(0, b"\x16UPDATE accounts SET balance = ? WHERE id = ?")
prepare_ok = my(1, b"\x00" + struct.pack("<IHHBH", 1, 0, 2, 0, 0)) + my(2, b"\x03def\0\0\0\x01?\0\x0c\x3f\0\0\0\0\0\x08\x80\0\0\0\0") \
    + my(3, b"\x03def\0\0\0\x01?\0\x0c\x3f\0\0\0\0\0\x08\x80\0\0\0\0") + my(4, b"\xfe\x00\x00\x02\x00")
execute_ = my(0, b"\x17" + struct.pack("<IBI", 1, 0, 1) + b"\x00\x01" + b"\x08\x00\x08\x00"
              + struct.pack("<qq", 10, 7))
quit_ = my(0, b"\x01")

for flags, req, resp in [(0, IN, EG), (1, EG, IN)]:
    role = "server" if flags == 0 else "client"
    write("mysql_session", f"{role}-handshake-query", script(
        flags, step(resp, greeting), step(req, login), step(resp, ok(2)), step(req, com_query),
        step(resp, resultset), step(req, quit_)))
    write("mysql_session", f"{role}-prepared", script(
        flags, step(req, prepare), split(resp, prepare_ok, [4, 20]), step(req, execute_), step(resp, ok(1))))
    write("mysql_session", f"{role}-error", script(flags, step(req, my(0, b"\x03SELECT * FROM nope")), step(resp, errp)))
    write("mysql_session", f"{role}-truncated", script(
        flags, step(req, com_query[:10], gap=len(com_query) - 10), step(resp, resultset[:7], gap=300),
        step(req, com_query), step(resp, ok(1))))

# ----------------------------------------------------------------------- AMQP
# Real amqplib <-> RabbitMQ conversations (agent/src/protocols/amqp/fixtures,
# records: direction byte 1 = client, u32 LE length, bytes).
AMQP_FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent", "src",
                             "protocols", "amqp", "fixtures")


def amqp_records(name):
    with open(os.path.join(AMQP_FIXTURES, name), "rb") as f:
        d = f.read()
    out, i = [], 0
    while i < len(d):
        n = struct.unpack_from("<I", d, i + 1)[0]
        out.append((d[i] == 1, d[i + 5:i + 5 + n]))
        i += 5 + n
    return out


for fixture in ("producer", "consumer"):
    recs = amqp_records(fixture + ".bin")
    # Captured up to 4096 bytes per syscall (the agent's maximum), which
    # keeps seeds under libFuzzer's default max_len here.
    for flags, client, broker in [(1, EG, IN), (0, IN, EG)]:
        role = "client" if flags == 1 else "broker"
        write("amqp_session", f"{role}-{fixture}", script(
            flags, *[step(client if c else broker, b[:4096], gap=max(0, len(b) - 4096)) for c, b in recs]))
    # Captures cut at 512 bytes, the agent's default.
    write("amqp_session", f"client-{fixture}-512", script(
        1, *[step(EG if c else IN, b[:512], gap=max(0, len(b) - 512)) for c, b in recs]))
    # Attached mid-connection, frames split in small pieces.
    write("amqp_session", f"client-{fixture}-midstream", script(
        1, *[split(EG if c else IN, b[:4096], [3, 5, 11]) for c, b in recs[9:]]))

# ------------------------------------------------------------------------ SQL
for i, sql in enumerate([
    "SELECT id, name FROM users WHERE id = 42 AND name = 'alice'",
    "INSERT INTO shop.orders (id, total) VALUES (1, 9.99), (2, -3e5) RETURNING id",
    "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
    "WITH t AS (SELECT * FROM a JOIN b ON a.id = b.id) SELECT count(*) FROM t; DELETE FROM x",
    "SELECT $tag$ body; with 'quotes' $tag$, E'it\\'s', x'ff', B'101' /* c; */ -- tail\n",
    "SELECT `col`, \"str\" FROM `db`.`t` WHERE a = 0x1F # mysql comment\n; SET @v := 1",
    "CREATE TABLE t (id int primary key); BEGIN; COMMIT",
    "SELECT 'unterminated",
    "COPY t FROM STDIN; SELECT ((((((1))))))",
]):
    write("sql_text", f"seed-{i}", sql.encode())

# --------------------------------------------------------- traceparent/routes
write("traceparent_and_routes", "traceparent", b"\x00" + b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
write("traceparent_and_routes", "routes", b"\x14/users/{id}\n/api/*/items/**\n\n/health\n\n/users/42\n"
      b"/api/v1/items/9/x\n/health\n/orders/0f8fad5b-d9cb-469f-a165-70867728950e\n/a//b/\n")

# ------------------------------------------------------------------ ring buffer
# Layouts of ebpf/include/events.h (header 32 bytes, tuple 40, data prefix 88).
def header(kind):
    return struct.pack("<IIIiQQ", kind, 4242, 4243, 7, 1_000_000, 1_000_500)


def tuple_(v4=True):
    if v4:
        local = b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1])
        remote = b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2])
    else:
        local, remote = b"\0" * 15 + b"\1", bytes(range(16))
    return local + remote + struct.pack("<HHHH", 8080, 51000, 2 if v4 else 10, 0)


payload = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
write("ring_record", "data", header(1) + tuple_() + struct.pack("<qIBBBB", 4096, len(payload), 1, 1, 0, 0) + payload)
write("ring_record", "data-v6", header(1) + tuple_(False) + struct.pack("<qIBBBB", 3, 3, 0, 2, 1, 0) + b"abc")
write("ring_record", "data-short", header(1) + tuple_() + struct.pack("<qIBBBB", 10, 10, 0, 0, 0, 0) + b"abc")
for kind in (2, 3):
    write("ring_record", f"conn-{kind}", header(kind) + tuple_() + bytes([1]) + b"\0" * 7)
for kind in (4, 5, 6):
    write("ring_record", f"proc-{kind}", header(kind) + struct.pack("<II", 1, 0) + b"nginx\0" + b"\0" * 10)
write("ring_record", "unknown", header(99))
write_h2()
