#!/usr/bin/env python3
"""An outside client, written from docs/PROTOCOL.md alone, beside an enumerator.

- alice, from 127.0.61.SEED: a desktop sync client whose cache went stale. Her phone (from
  127.0.63.SEED) stores 30 notes; the desktop lists them and fetches each into its cache;
  the phone deletes them all; the desktop asks for each cached id again (30 NOT_FOUND in a
  burst) and goes on working at about one request a second for 20 s, now and then asking
  after a note the phone deleted.
- mallory, from 127.0.62.SEED: fetches ids past the highest in use, about five a second
  (jittered), as an enumeration does.

Prints when mallory was cut off; exits 1 if alice was, or if mallory never was. With the
default configuration:

    rampart user add --data-dir D alice   # password: alice-password-1
    rampart user add --data-dir D mallory # password: mallory-password-1
    rampart serve --data-dir D --listen 127.0.0.1:0   # note the port
    python3 examples/outsider_stale_cache.py PORT SEED
    rampart firewall list --all --data-dir D   # mallory blocked, alice not

With `firewall.model = "enforce"` the default model blocks both of alice's devices for their
bulk operations (docs/DETECTION.md, "Enumerations of missing ids").

Loopback only.
"""
import random, socket, struct, sys, threading, time
HOST, PORT = '127.0.0.1', int(sys.argv[1])
SEED = int(sys.argv[2]) if len(sys.argv) > 2 else 1
print('seed', SEED)

class Conn:
    def __init__(self, user, pw, src):
        self.rid = 0
        self.s = socket.create_connection((HOST, PORT), source_address=(src, 0))
        k, b = self.call(0x01, bytes([len(user)]) + user.encode() + struct.pack('>H', len(pw)) + pw.encode())
        assert k == 0x81, (k, b)
    def recv_exact(self, n):
        b = b''
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c: raise ConnectionError('closed by server')
            b += c
        return b
    def call(self, kind, body=b''):
        self.rid += 1
        self.s.sendall(struct.pack('>2sBBIHI', b'RM', 1, kind, self.rid, 0, len(body)) + body)
        _, _, k, _, _, n = struct.unpack('>2sBBIHI', self.recv_exact(14))
        return k, self.recv_exact(n)
    def send(self, to, text):
        k, b = self.call(0x03, bytes([len(to)]) + to.encode() + struct.pack('>I', len(text)) + text.encode())
        assert k == 0x83, (k, b)
        return struct.unpack('>Q', b[:8])[0]
    def fetch(self, i):
        return self.call(0x0A, struct.pack('>Q', i))
    def delete(self, i):
        k, b = self.call(0x0C, struct.pack('>Q', i))
        assert k == 0x8A, (k, b)   # OK

def code(k, b):
    return struct.unpack('>H', b[:2])[0] if k == 0xFF else None

result = {}
def mallory():
    rng = random.Random(SEED * 7 + 1)
    t0 = time.time()
    try:
        m = Conn('mallory', 'mallory-password-1', f'127.0.62.{SEED}')
        i = 1 << 40
        while time.time() - t0 < 40:
            i += rng.randrange(1, 50)
            m.fetch(i)
            time.sleep(0.2 * rng.uniform(0.8, 1.2))
        result['mallory'] = 'never cut'
    except Exception as e:
        result['mallory'] = f'cut after {time.time() - t0:.1f}s ({e!r})'

rng = random.Random(SEED)
t = threading.Thread(target=mallory); t.start()
try:
    # The phone, on another network, stores 30 notes; the desktop lists them and fetches
    # each into its cache; the phone deletes them all; the desktop, back from sleep, asks
    # for each cached id again.
    phone = Conn('alice', 'alice-password-1', f'127.0.63.{SEED}')
    cached = [phone.send('alice', f'note {n}') for n in range(30)]
    alice = Conn('alice', 'alice-password-1', f'127.0.61.{SEED}')
    k, b = alice.call(0x09, struct.pack('>QH', 0, 100)); assert k == 0x87, (k, b)
    for i in cached:
        k, b = alice.fetch(i); assert k == 0x88, (k, b)
    print('cache filled:', len(cached), 'items')
    for i in cached:
        phone.delete(i)
    time.sleep(2)
    stale = [code(*alice.fetch(i)) for i in cached]
    print('stale cache: answers', sorted(set(stale)), 'x', len(stale))
    other = phone
    mine, gone, t0 = [], [], time.time()
    while time.time() - t0 < 20:
        r = rng.random()
        if r < 0.1 and gone:
            alice.fetch(rng.choice(gone))
        elif r < 0.3 and mine:
            i = mine.pop(rng.randrange(len(mine))); other.delete(i); gone.append(i)
        elif r < 0.5 and mine:
            k, b = alice.fetch(rng.choice(mine)); assert k == 0x88, (k, b)
        else:
            mine.append(alice.send('alice', f'message {len(mine)}'))
        time.sleep(rng.uniform(0.6, 1.4))
    print('alice: never cut')
except Exception as e:
    print(f'alice was cut off: {e!r}'); t.join(); print('mallory:', result.get('mallory')); sys.exit(1)
t.join()
print('mallory:', result.get('mallory'))
sys.exit(0 if result.get('mallory', '').startswith('cut') else 1)
