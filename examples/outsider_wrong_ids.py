#!/usr/bin/env python3
"""An outside client, written from docs/PROTOCOL.md alone: a user who works at about one
request a second and twice, three seconds apart, mistypes an item id that happens to be
another user's (PERMISSION_DENIED). Exits 1 if the server cuts it off.

    rampart user add --data-dir D alice   # password: alice-password-1
    rampart user add --data-dir D bob     # password: bob-password-1
    printf '[firewall]\nmodel = "enforce"\n' > enforce.toml
    rampart serve --data-dir D --listen 127.0.0.1:0 --config enforce.toml   # note the port
    python3 examples/outsider_wrong_ids.py PORT SEED
    rampart firewall list --all --data-dir D   # no block expected

docs/DETECTION.md ("Weak anomalies") has what it measured. Loopback only.
"""
import socket, struct, sys, time, random
HOST, PORT = '127.0.0.1', int(sys.argv[1])
random.seed(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
rid = 0
def frame(kind, body=b''):
    global rid; rid += 1
    return struct.pack('>2sBBIHI', b'RM', 1, kind, rid, 0, len(body)) + body
def recv_exact(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise ConnectionError('closed by server')
        b += c
    return b
def call(s, kind, body=b''):
    s.sendall(frame(kind, body))
    h = recv_exact(s, 14)
    _, _, k, r, _, n = struct.unpack('>2sBBIHI', h)
    return k, recv_exact(s, n)
def login(user, pw, src):
    s = socket.create_connection((HOST, PORT), source_address=(src, 0))
    k, b = call(s, 0x01, bytes([len(user)]) + user.encode() + struct.pack('>H', len(pw)) + pw.encode())
    assert k == 0x81, (k, b)
    return s
def send(s, to, text):
    k, b = call(s, 0x03, bytes([len(to)]) + to.encode() + struct.pack('>I', len(text)) + text.encode())
    assert k == 0x83, (k, b)
    return struct.unpack('>Q', b[:8])[0]
def fetch(s, i):
    k, b = call(s, 0x0A, struct.pack('>Q', i))
    return k, b
bob = login('bob', 'bob-password-1', '127.0.60.2')
bobs = [send(bob, 'bob', f'note {i}') for i in range(5)]
alice = login('alice', 'alice-password-1', '127.0.60.1')
mine = []
errors = {}
t0 = time.time()
for step in range(40):
    try:
        if step in (10, 13):   # two mistyped ids, three seconds apart: bob's items
            k, b = fetch(alice, bobs[step % 5])
            code = struct.unpack('>H', b[:2])[0] if k == 0xFF else None
            errors[step] = (hex(k), code)
        elif step % 3 == 0 and mine:
            k, b = fetch(alice, random.choice(mine)); assert k == 0x88, (k, b)
        else:
            mine.append(send(alice, 'alice', f'message {step}'))
    except Exception as e:
        print(f'step {step} at {time.time()-t0:.1f}s: {e!r}'); sys.exit(1)
    time.sleep(random.uniform(0.6, 1.4))
print('wrong-id answers', errors, 'ops done 40, items', len(mine))
