"""
The file service against a plain TCP copy of the same file, in the same
run: a download and an upload of one file (1 GiB by default) over
loopback, each end in its own process, with the throughput of each, their
ratio, and the peak memory (RSS) of both ends.

    python bench/file_bench.py                 # 1 GiB
    python bench/file_bench.py --size 256      # 256 MiB
    python bench/file_bench.py --header ascii4 # the link's default framing

The floor is a Twisted server that writes the file with
C{twisted.protocols.basic.FileSender} (or reads an upload to disk) and a
client that does the other half: no framing, no messages, no digests.
tvlink's figures include everything a transfer does: SHA-256 of the whole
file on both ends (the sender's before it starts, the receiver's as it
writes), framing, and the fsync and rename at the end.

Everything listens on 127.0.0.1; every phase has a time limit and the
whole run a hard cap (--wall); every child is killed on every exit path.
Exit status: 0; 1 when a transfer failed or came out different; 3 when
the cap was reached.
"""

import argparse
import hashlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SENDER = "BENCH"

#: The children started, killed if the hard cap is reached.
CHILDREN_RUNNING = []


def maxRSS():
    """
    This process's peak resident set, in MiB (Linux reports KiB).
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- the children -------------------------------------------------------------


def tvlinkServer(args):
    from twisted.internet import reactor

    from tvlink.files.service import FileService
    from tvlink.link.settings import LinkSettings

    settings = LinkSettings(reactor=reactor, header=args.header, max_frame=args.max_frame)
    tls = None
    if args.certs:
        from tvlink.link.tls import ServerTLS

        tls = ServerTLS(*(os.path.join(args.certs, name) for name in ("server.pem", "server.key", "ca.pem")))
    service = FileService("tcp:0:interface=127.0.0.1", args.path, settings, tls=tls, max_size=1 << 40,
                          total=args.seconds)
    service.startService()
    _serveUntilStdinCloses(reactor, service.port.getHost().port)


def plainServer(args):
    from twisted.internet import protocol, reactor
    from twisted.protocols.basic import FileSender

    class Copy(protocol.Protocol):
        receiving = None

        def dataReceived(self, data):
            if self.receiving is None:
                command, data = data[:1], data[1:]
                if command == b"G":
                    source = open(args.path, "rb")
                    d = FileSender().beginFileTransfer(source, self.transport)
                    d.addBoth(lambda _: (source.close(), self.transport.loseConnection()))
                    self.receiving = False
                    return
                self.receiving = open(os.path.join(os.path.dirname(args.path), "upload.bin"), "wb")
            if self.receiving:
                self.receiving.write(data)

        def connectionLost(self, reason):
            if self.receiving:
                self.receiving.close()

    factory = protocol.ServerFactory.forProtocol(Copy)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    _serveUntilStdinCloses(reactor, port.getHost().port)


def _serveUntilStdinCloses(reactor, port):
    from twisted.internet import stdio
    from twisted.internet.protocol import Protocol

    class Stop(Protocol):
        def connectionLost(self, reason):
            reactor.stop()

    print("PORT %d" % (port,), flush=True)
    stdio.StandardIO(Stop())
    reactor.run()
    print("MAXRSS %.1f" % (maxRSS(),), flush=True)


def tvlinkClient(args):
    from twisted.internet import task

    from tvlink.files.client import FileClient
    from tvlink.link.settings import LinkSettings

    def run(reactor):
        settings = LinkSettings(reactor=reactor, header=args.header, max_frame=args.max_frame, sender=SENDER)
        tls = None
        if args.certs:
            from tvlink.link.tls import ClientTLS

            tls = ClientTLS(*(os.path.join(args.certs, name) for name in ("client.pem", "client.key", "ca.pem")))
        client = FileClient("127.0.0.1", args.port, SENDER, tls=tls, settings=settings, total=args.seconds)
        started = time.perf_counter()
        if args.direction == "get":
            d = client.get("bench.bin", args.path)
        else:
            d = client.put(args.path, "upload.bin")
        return d.addCallback(lambda result: _report(started))

    task.react(run)


def plainClient(args):
    from twisted.internet import protocol, task
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.protocols.basic import FileSender

    class Copy(protocol.Protocol):
        def __init__(self):
            self.done = Deferred()
            self.file = None

        def connectionMade(self):
            if args.direction == "get":
                self.file = open(args.path, "wb")
                self.transport.write(b"G")
            else:
                self.transport.write(b"P")
                source = open(args.path, "rb")
                d = FileSender().beginFileTransfer(source, self.transport)
                d.addBoth(lambda _: (source.close(), self.transport.loseConnection()))

        def dataReceived(self, data):
            self.file.write(data)

        def connectionLost(self, reason):
            if self.file is not None:
                self.file.close()
            self.done.callback(None)

    def run(reactor):
        started = time.perf_counter()
        copy = Copy()
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port), copy)
        d.addCallback(lambda _: copy.done)
        return d.addCallback(lambda _: _report(started))

    task.react(run)


def _report(started):
    print("SECONDS %.3f" % (time.perf_counter() - started,), flush=True)
    print("MAXRSS %.1f" % (maxRSS(),), flush=True)


CHILDREN = {
    "tvlink-server": tvlinkServer,
    "plain-server": plainServer,
    "tvlink-client": tvlinkClient,
    "plain-client": plainClient,
}


# -- the run ------------------------------------------------------------------


def _spawn(role, args, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    argv = [sys.executable, os.path.abspath(__file__), "--child", role, "--header", args.header,
            "--max-frame", str(args.max_frame), "--seconds", str(args.seconds)] + [str(e) for e in extra]
    if args.certs and role.startswith("tvlink"):
        argv += ["--certs", args.certs]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    CHILDREN_RUNNING.append(child)
    return child


def _fields(text):
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.strip()}


def phase(kind, direction, args, work, served):
    """
    One transfer: a server child, a client child; C{(seconds, server
    MiB, client MiB)}.
    """
    server = _spawn(kind + "-server", args, "--path", served)
    try:
        port = int(server.stdout.readline().split()[1])
        path = os.path.join(work, "client.bin") if direction == "get" else args.source
        client = _spawn(kind + "-client", args, "--direction", direction, "--port", port, "--path", path)
        try:
            out, _ = client.communicate(timeout=args.seconds)
        except subprocess.TimeoutExpired:
            client.kill()
            raise
        if client.returncode != 0:
            raise RuntimeError("%s %s client failed (%d)" % (kind, direction, client.returncode))
        server.stdin.close()
        server.wait(timeout=30)
        served_out = server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
    result = _fields(out)
    return result["SECONDS"], _fields(served_out)["MAXRSS"], result["MAXRSS"]


def _makeCertificates(folder):
    """
    The test certificates (a CA, a server certificate for 127.0.0.1, a
    client certificate; C{tests/certs.py}) in C{folder}.
    """
    sys.path.insert(0, ROOT)
    from tests.certs import makeCertificates

    makeCertificates(folder)
    return folder


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    parser.add_argument("--header", default="bin4", help="frame header (default bin4)")
    parser.add_argument("--max-frame", type=int, default=65536, help="largest frame body (default 65536)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each both ways both sides (default 3)")
    parser.add_argument("--seconds", type=float, default=300.0, help="time limit of one transfer")
    parser.add_argument("--wall", type=float, default=1200.0, help="hard cap on the whole run")
    parser.add_argument("--tls", action="store_true", help="tvlink over mutual TLS (the floor stays plain TCP)")
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--direction", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        CHILDREN[args.child](args)
        return 0

    def capped(number, frame):
        sys.stderr.write("file_bench: the hard cap of %gs was reached\n" % (args.wall,))
        for child in CHILDREN_RUNNING:
            if child.poll() is None:
                child.kill()
        shutil.rmtree(work, True)
        os._exit(3)

    work = tempfile.mkdtemp(prefix="tvlink-file-bench-")
    signal.signal(signal.SIGALRM, capped)
    signal.alarm(int(args.wall))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, True)


def _run(args, work):
    if args.tls:
        args.certs = _makeCertificates(os.path.join(work, "certs"))
    args.source = os.path.join(work, "source.bin")
    block = os.urandom(1 << 20)
    with open(args.source, "wb") as f:
        for n in range(args.size):
            f.write(n.to_bytes(8, "big") + block[8:])
    digest = _digest(args.source)
    files = os.path.join(work, "files")
    os.makedirs(os.path.join(files, SENDER))
    os.link(args.source, os.path.join(files, SENDER, "bench.bin"))
    plainDir = os.path.join(work, "plain")
    os.makedirs(plainDir)
    os.link(args.source, os.path.join(plainDir, "bench.bin"))
    print("file_bench: %d MiB, header %s, max frame %d%s, Python %s, %d CPUs"
          % (args.size, args.header, args.max_frame, ", tvlink over mutual TLS" if args.tls else "",
             sys.version.split()[0], os.cpu_count()))
    print("%-5s %-9s %-7s %9s %9s %12s %12s"
          % ("round", "transfer", "side", "seconds", "MiB/s", "server MiB", "client MiB"))
    plainFile = os.path.join(plainDir, "bench.bin")
    received = {
        ("plain", "get"): os.path.join(work, "client.bin"),
        ("tvlink", "get"): os.path.join(work, "client.bin"),
        ("plain", "put"): os.path.join(plainDir, "upload.bin"),
        ("tvlink", "put"): os.path.join(files, SENDER, "upload.bin"),
    }
    ratios = {"get": [], "put": []}
    failed = False
    for round in range(1, args.rounds + 1):
        for direction in ("get", "put"):
            rates = {}
            # Alternate which goes first, so neither always meets a cold cache.
            order = (("plain", plainFile), ("tvlink", files))
            for kind, served in order if round % 2 else order[::-1]:
                seconds, serverRSS, clientRSS = phase(kind, direction, args, work, served)
                rates[kind] = args.size / seconds
                print("%-5d %-9s %-7s %9.2f %9.1f %12.1f %12.1f"
                      % (round, direction, kind, seconds, rates[kind], serverRSS, clientRSS), flush=True)
                if _digest(received[kind, direction]) != digest:
                    sys.stderr.write("file_bench: %s %s came out different\n" % (kind, direction))
                    failed = True
                os.remove(received[kind, direction])
            ratios[direction].append(rates["tvlink"] / rates["plain"])
    for direction, each in ratios.items():
        print("%s throughput, tvlink / plain TCP copy: %.2f (median of %s)"
              % (direction, statistics.median(each), ", ".join("%.2f" % r for r in each)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
