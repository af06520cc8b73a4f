"""`python -m services.swarm.demo`: serve the demo world in the foreground and print the settings
that point the collectors at it (Ctrl-C stops)."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading

from services.swarm.demo.server import DemoWorld, Request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.swarm.demo", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="the web hosts' port (default: a free one)")
    parser.add_argument("--dns-port", type=int, default=0, help="the DNS server's port (default: a free one)")
    parser.add_argument("--whois-port", type=int, default=0, help="the WHOIS server's port (default: a free one)")
    parser.add_argument("--json", action="store_true", help="print the collectors' settings as JSON, not env lines")
    parser.add_argument("--quiet", action="store_true", help="do not log each request to stderr")
    args = parser.parse_args(argv)

    def log(request: Request) -> None:
        print(request, file=sys.stderr, flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with DemoWorld(port=args.port, dns_port=args.dns_port, whois_port=args.whois_port,
                   on_request=None if args.quiet else log) as world:
        if args.json:
            print(json.dumps({"collectors": world.collectors_config()}, indent=2))
        else:
            print(f"# {world.world.title}")
            for line in world.world.story.splitlines():
                print(f"#   {line}")
            print("# Seeds: " + ", ".join(f"{kind} {value}" for kind, value in world.seeds))
            print("# Point the collectors at this world (e.g. before `bev up`):")
            for name, value in world.collectors_env().items():
                print(f"export {name}={shlex.quote(value)}")
        print(f"# serving: web hosts on port {world.port}, DNS {world.nameserver}, WHOIS {world.whois_server}; "
              "Ctrl-C stops", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
