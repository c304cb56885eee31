"""``cim-run emulate``: serve the board emulator on a pseudo-terminal or a loopback TCP port."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time

from cim_runtime.errors import ConfigError


#: Smallest frame payload the emulator accepts: room for a HELLO reply and a few cells per command.
MIN_PAYLOAD = 256


def command_emulate(args: argparse.Namespace) -> int:
    # Imported here so that other commands do not load the emulator.
    from firmware_protocol.emulator import BoardEmulator, LinkFaults, PtyBoardServer, TcpBoardServer
    from firmware_protocol.firmware import BoardFirmware, CountingSimulator

    if args.link_bytes_per_s is not None and args.link_bytes_per_s <= 0:
        raise ConfigError(f"--link-bytes-per-s {args.link_bytes_per_s} is invalid: must be above 0")
    if args.tcp is not None and not 0 <= args.tcp <= 65535:
        raise ConfigError(f"--tcp {args.tcp} is invalid: use a port from 1 to 65535, or 0 for a free one")
    if args.max_payload < MIN_PAYLOAD:
        raise ConfigError(f"--max-payload {args.max_payload} is invalid: a board needs at least {MIN_PAYLOAD} bytes per frame")
    if args.pty_link is not None and not Path(args.pty_link).parent.is_dir():
        raise ConfigError(f"--pty-link {args.pty_link} is invalid: its folder {Path(args.pty_link).parent} does not exist")
    faults = LinkFaults(
        drop_rate=args.drop_rate, corrupt_rate=args.corrupt_rate, duplicate_rate=args.duplicate_rate,
        delay_rate=args.delay_rate, delay_s=args.delay_s, reset_at_batch=args.reset_at_batch,
        disconnect_at_frame=args.disconnect_at_frame, disconnected_s=args.disconnected_s, seed=args.fault_seed,
    )
    simulator = CountingSimulator(args.device_profile, rows=args.rows, cols=args.cols, arrays=args.arrays, seed=args.seed)
    emulator = BoardEmulator(BoardFirmware(simulator, max_payload=args.max_payload), faults, args.link_bytes_per_s)
    try:
        server = TcpBoardServer(emulator, args.tcp) if args.tcp is not None else PtyBoardServer(emulator, args.pty_link)
    except OSError as exc:
        where = f"port {args.tcp} on 127.0.0.1" if args.tcp is not None else "a pseudo-terminal"
        raise ConfigError(f"cannot serve on {where} ({exc.strerror or exc}); pick another port, or --tcp 0 for a free one") from None
    print(f"board emulator ready: use --backend '{server.url}'", flush=True)
    server.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
        print(f"board emulator stopped after {simulator.pulses_applied:,} pulses; link faults "
              f"to board {emulator.to_board.counts}, to host {emulator.to_host.counts}", file=sys.stderr)
    return 0


def add_commands(commands) -> None:
    """Add ``emulate`` to the ``cim-run`` subcommands."""
    emulate = commands.add_parser("emulate", help="run the board emulator for serial:// and socket:// backends",
                                  description="Serve a memristor test board, backed by the simulator, over a pseudo-terminal "
                                              "or a TCP port on 127.0.0.1, until Ctrl-C.")
    where = emulate.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal (printed as a serial:// URL)")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT (0 picks a free port)")
    emulate.add_argument("--pty-link", metavar="PATH", help="keep a symbolic link to the current pty at PATH; hosts should open it, "
                                                            "because a disconnect fault replaces the pty")
    emulate.add_argument("--device-profile", default="C4D1", metavar="NAME", help="simulator device profile (default %(default)s)")
    emulate.add_argument("--rows", type=int, default=256, help="rows per array (default %(default)s)")
    emulate.add_argument("--cols", type=int, default=256, help="columns per array (default %(default)s)")
    emulate.add_argument("--arrays", type=int, default=64, help="arrays on the board (default %(default)s)")
    emulate.add_argument("--seed", type=int, default=0, help="simulator seed (default %(default)s, as sim://)")
    emulate.add_argument("--max-payload", type=int, default=16384, help="largest frame payload the board accepts, in bytes (default %(default)s)")
    emulate.add_argument("--link-bytes-per-s", type=float, help="link rate in bytes per second in each direction, for example 92160 "
                                                                "for 921,600 baud 8N1 (default: unlimited)")
    faults = emulate.add_argument_group("fault injection")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="fraction of bytes dropped in each direction, 0 to 1")
    faults.add_argument("--corrupt-rate", type=float, default=0.0, help="fraction of bytes corrupted in each direction, 0 to 1")
    faults.add_argument("--duplicate-rate", type=float, default=0.0, help="fraction of bytes sent twice, 0 to 1")
    faults.add_argument("--delay-rate", type=float, default=0.0, help="fraction of reply writes held back by --delay-s, 0 to 1")
    faults.add_argument("--delay-s", type=float, default=0.0, help="hold time of a delayed write, in seconds")
    faults.add_argument("--reset-at-batch", type=int, default=0, metavar="N", help="reset the board when the N-th BATCH frame arrives")
    faults.add_argument("--disconnect-at-frame", type=int, default=0, metavar="N",
                        help="drop the link after executing the N-th frame, before replying")
    faults.add_argument("--disconnected-s", type=float, default=0.5, help="how long the link stays down, in seconds (default %(default)s)")
    faults.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (default %(default)s)")
    emulate.set_defaults(handler=command_emulate)
