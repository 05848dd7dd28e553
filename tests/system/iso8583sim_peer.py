"""
An ISO 8583 peer tvlink did not write: iso8583sim's asyncio client and
mock host, run as a child process by L{tests.system.test_interop}.

    python -m tests.system.iso8583sim_peer client PORT
        sign on to a tvlink payment node on 127.0.0.1:PORT, buy, ask the
        balance and reverse; print each answer as a JSON line; exit.
    python -m tests.system.iso8583sim_peer host
        listen on 127.0.0.1 (any free port), print "host listening on
        PORT", answer every request 00 until killed.

Both use a 4-ASCII-digit length header (tvlink's ascii4) and iso8583sim's
ASCII-with-binary-bitmap wire format, its own encoder and parser.
"""

import asyncio
import json
import sys

from iso8583sim.core.types import ISO8583Message
from iso8583sim.net import Framing, ISO8583Client, MockHost

FRAMING = Framing(header="4a")
ACQUIRER = "10000001"
PAN = "6222020000000000018"


def request(mti, stan, fields):
    fields = dict(fields)
    fields.update({7: "0615103000", 11: stan, 32: ACQUIRER, 33: ACQUIRER})
    return ISO8583Message(mti=mti, fields=fields)


def report(step, message):
    fields = {str(k): v for k, v in sorted(message.fields.items())}
    print(json.dumps({"step": step, "mti": message.mti, "fields": fields}), flush=True)


async def client(port):
    async with ISO8583Client("127.0.0.1", port, framing=FRAMING, timeout=10) as c:
        report("sign-on", await c.send(request("0800", "000001", {70: "001"})))
        purchase = request("0200", "000002", {2: PAN, 3: "000000", 4: "000000001234", 49: "156", 48: "SIM-1"})
        report("purchase", await c.send(purchase))
        report("balance", await c.send(request("0200", "000003", {2: PAN, 3: "300000"})))
        original = "0200" + "000002" + "0615103000" + ACQUIRER.zfill(11) * 2
        reversal = request("0420", "000004", {2: PAN, 4: "000000001234", 49: "156", 90: original})
        report("reversal", await c.send(reversal))
        report("balance-after", await c.send(request("0200", "000005", {2: PAN, 3: "300000"})))


async def host():
    mock = MockHost(framing=FRAMING)
    await mock.start("127.0.0.1", 0)
    print("host listening on %d" % (mock.port,), flush=True)
    while True:
        await asyncio.sleep(3600)


def main(argv):
    if argv[1] == "client":
        asyncio.run(client(int(argv[2])))
    else:
        asyncio.run(host())


if __name__ == "__main__":
    main(sys.argv)
