"""Wire protocol between the host and a memristor test board: SPEC.md, codec, messages, board emulator.

``codec`` frames bytes (COBS, header, CRC-16/CCITT-FALSE), ``messages`` defines the payloads,
``firmware`` is the board's behaviour over the simulator and ``emulator`` serves it on a pty or a TCP
socket. ``c/`` holds a reference codec in C for firmware authors.
"""
