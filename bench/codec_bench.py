"""
What each message codec costs: C{json} (the default), C{iso8583} and
C{cups} (the 46-byte CUPS header, then ISO 8583), in one run.

Two figures per codec, each beside a floor measured in the same run:

1. B{codec cost per message}: encoding and decoding a purchase request
   and its answer (the platform encodes the request and decodes the
   answer, the payment node the other way round), in microseconds. The
   floor is the same two dicts through C{orjson.dumps}/C{orjson.loads}
   with no checks at all: the cheapest way to turn a message dict into
   bytes and back.
2. B{link throughput}: a platform and a payment node on one loopback TCP
   link, both in this process (one CPU does all the work, for the floor
   too), answering N purchases with 64 in flight, in answers per second.
   The floor is the bare framed echo of L{link_bench} (the same ascii4
   frames, nothing decoded) over its own loopback connection in the same
   reactor, with a body the size of tvlink's JSON request.

    python bench/codec_bench.py                 # 20000 codec rounds, 20000 link requests
    python bench/codec_bench.py --quick         # a short run

Each line prints the figure, the floor and the ratio (floor/codec for a
cost, codec/floor for a throughput: 1.0 would be as cheap as the floor).
"""

import argparse
import os
import sys
import time

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from link_bench import FloorClient, FloorEchoServer, Load, TVLinkClient  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.internet.protocol import Factory  # noqa: E402
from zope.interface import implementer  # noqa: E402

import tvlink  # noqa: E402
from tvlink.link.codecs import CODECS, makeCodec  # noqa: E402
from tvlink.link.interfaces import IMessageHandler  # noqa: E402

HOST = "127.0.0.1"
SENDER = "10000001"

#: A purchase as the platform sends it, stamped, and its answer.
REQUEST = {
    "mti": "0200",
    "sender": SENDER,
    "stan": "000123",
    "time": "1204103000",
    "proc": "000000",
    "pan": "6222020000000000018",
    "amount": "000000001234",
    "currency": "156",
    "order": "BENCH0000000001",
}
ANSWER = {
    "mti": "0210",
    "sender": SENDER,
    "stan": "000123",
    "time": "1204103000",
    "resp": "00",
}
PURCHASE = {k: REQUEST[k] for k in ("mti", "proc", "pan", "amount", "currency", "order")}


def parseArgs(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=20000, help="encode/decode rounds per codec (20000)")
    p.add_argument("--requests", type=int, default=20000, help="link requests per codec (20000)")
    p.add_argument("--depth", type=int, default=64, help="requests in flight on the link (64)")
    p.add_argument("--seconds", type=float, default=30.0, help="time limit of one link phase (30)")
    p.add_argument("--quick", action="store_true", help="2000 rounds, 4000 requests")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 2000, 4000
    for name in ("rounds", "requests", "depth"):
        if getattr(args, name) < 1:
            p.error("--%s must be at least 1" % (name,))
    return args


def perMessage(encode, decode, rounds):
    """
    Microseconds to encode and decode L{REQUEST} and L{ANSWER} once each.
    """
    request, answer = REQUEST, ANSWER
    start = time.perf_counter()
    for _ in range(rounds):
        decode(encode(request))
        decode(encode(answer))
    return (time.perf_counter() - start) / rounds * 1e6


def codecCosts(rounds):
    floor = perMessage(orjson.dumps, orjson.loads, rounds)
    rows = []
    for name in CODECS:
        codec = makeCodec(name, sender=SENDER, destination="20000002")
        # Once untimed: the codec must give back what it was given.
        for message in (REQUEST, ANSWER):
            again = codec.decode(codec.encode(message))
            assert again == message, (name, message, again)
        cost = perMessage(codec.encode, codec.decode, rounds)
        rows.append((name, cost, len(codec.encode(REQUEST))))
    return floor, rows


@implementer(IMessageHandler)
class Approve:
    def handle(self, message):
        return {"resp": "00"}


@inlineCallbacks
def linkThroughput(reactor, name, args):
    """
    Answers per second through one platform-payment link under codec
    C{name}, both roles in this reactor.
    """
    options = dict(reactor=reactor, header="ascii4", sender=SENDER, codec=name, heartbeat=5.0, idle_timeout=30.0)
    payment = tvlink.PaymentService("tcp:0:interface=%s" % (HOST,), handler=Approve(), **options)
    payment.startService()
    try:
        port = (yield payment.whenListening()).getHost().port
        platform = tvlink.PlatformService(["%s:%d" % (HOST, port)], **options)
        platform.startService()
        try:
            yield platform.whenReady()
            client = TVLinkClient(platform, PURCHASE, timeout=30.0)
            warm = Load(client.send, min(2000, args.requests), args.depth, args.seconds)
            yield warm.start()
            load = Load(client.send, args.requests, args.depth, args.seconds)
            yield load.start()
            if load.errors:
                raise RuntimeError("%s: %d errors, last %s" % (name, load.errors, load.lastError))
            return load.done / (load.finished - load.started)
        finally:
            yield platform.stopService()
    finally:
        yield payment.stopService()


@inlineCallbacks
def floorThroughput(reactor, args, size):
    listening = reactor.listenTCP(0, Factory.forProtocol(FloorEchoServer), interface=HOST)
    try:
        client = yield connectProtocol(
            TCP4ClientEndpoint(reactor, HOST, listening.getHost().port), FloorClient(b"x" * size)
        )
        warm = Load(client.send, min(2000, args.requests), args.depth, args.seconds)
        yield warm.start()
        load = Load(client.send, args.requests, args.depth, args.seconds)
        yield load.start()
        client.transport.loseConnection()
        return load.done / (load.finished - load.started)
    finally:
        yield listening.stopListening()


@inlineCallbacks
def run(reactor, args):
    floor, rows = codecCosts(args.rounds)
    print("codec cost per message (encode + decode a request and its answer), %d rounds" % (args.rounds,))
    print("  %-8s %10s %12s %8s %s" % ("codec", "us", "floor us", "ratio", "request bytes"))
    for name, cost, size in rows:
        print("  %-8s %10.2f %12.2f %8.3f %d" % (name, cost, floor, floor / cost, size))
    jsonSize = len(makeCodec("json").encode(REQUEST))
    print("link throughput, %d requests, %d in flight, both ends in one process" % (args.requests, args.depth))
    print("  %-8s %10s %12s %8s" % ("codec", "tps", "floor tps", "ratio"))
    for name in CODECS:
        floorTps = yield floorThroughput(reactor, args, jsonSize)
        tps = yield linkThroughput(reactor, name, args)
        print("  %-8s %10.0f %12.0f %8.3f" % (name, tps, floorTps, tps / floorTps))


def main(argv=None):
    args = parseArgs(sys.argv[1:] if argv is None else argv)
    from twisted.internet import reactor

    failures = []

    def finished(result):
        if hasattr(result, "getTraceback"):
            failures.append(result.getTraceback())
        reactor.stop()

    # Bounded: the whole run stops after this long whatever happens.
    reactor.callLater(600, reactor.stop)
    reactor.callWhenRunning(lambda: run(reactor, args).addBoth(finished))
    reactor.run()
    if failures:
        sys.stderr.write(failures[0])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
