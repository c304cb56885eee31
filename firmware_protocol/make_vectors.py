"""Write vectors.json, the golden test vectors of the protocol, from the messages listed here.

Run ``python -m firmware_protocol.make_vectors`` only when the protocol version changes: the vectors
pin the wire format, and every test (Python and C) checks its codec against the stored file. The CRC
check value and the COBS cases are the standard published ones, so they do not depend on this codec.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from firmware_protocol.codec import encode_frame
from firmware_protocol.messages import (
    BatchHeader, DoneHeader, ErrorCode, ErrorReply, ExecuteHeader, Hello, HelloReply, MessageType, Nak, NakReason,
    ProgramParams, ProgramSummary, PulseParams, ReadParams, ResultHeader, operations,
)

PATH = Path(__file__).with_name("vectors.json")

CRC_CASES = [(b"123456789", 0x29B1), (b"", 0xFFFF), (b"\x00", 0xE1F0), (bytes(range(256)), None)]
COBS_CASES = [
    ("00", "0101"), ("0000", "010101"), ("11220033", "0311220233"), ("11223344", "0511223344"),
    ("11000000", "0211010101"), ("", "01"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    ("00" + bytes(range(1, 255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
]


def _records(kind: MessageType, values: dict) -> bytes:
    dtype = operations(4, 3)[kind].record
    records = np.zeros(len(next(iter(values.values()))), dtype=dtype)
    for name, column in values.items():
        records[name] = column
    return records.tobytes()


def _messages() -> list[tuple[str, MessageType, int, object, bytes]]:
    """Return (name, type, seq, fixed-field message or None, extra bytes) for every frame vector."""
    hello_reply = HelloReply(1, 1, 0, 0, b"CIM-EMU-0001".ljust(16, b"\0"), 0x1234ABCD, 4, 3, 2, 0x07, 16384, 67108864,
                             0.00143, 0.00338, 0.3, 0.1, 3.0, 1e-08, 0.01, 0.1)
    read_cells = _records(MessageType.READ, {"array": [0, 1], "row": [1, 3], "col": [2, 0]})
    pulse_cells = _records(MessageType.PULSE, {"array": [0], "row": [2], "col": [1], "amplitude_v": [-1.25], "width_s": [1e-4]})
    program = ProgramParams(0.01, 0.75, 0.5, 0.5, 0.05, 2.0, 1e-4, 100, 3600.0, 0.0, 1, 1.5, 1e-3, 0.8, 64.0, 0.8)
    return [
        ("hello", MessageType.HELLO, 1, Hello(1, 16384), b""),
        ("hello_reply", MessageType.HELLO_REPLY, 1, hello_reply, b""),
        ("read_two_cells", MessageType.READ, 2, ReadParams(0.1), read_cells),
        ("pulse_one_cell", MessageType.PULSE, 3, PulseParams(0.0), pulse_cells),
        ("batch_chunk", MessageType.BATCH, 4, BatchHeader(7, 0), read_cells),
        ("execute_read", MessageType.EXECUTE, 5, ExecuteHeader(7, MessageType.READ, len(read_cells)), ReadParams(0.1).pack()),
        ("execute_program", MessageType.EXECUTE, 6, ExecuteHeader(8, MessageType.PROGRAM, 28), program.pack()),
        ("result_two_reads", MessageType.RESULT, 5, ResultHeader(0), np.array([0.00143, 0.0025], "<f8").tobytes()),
        ("done_read", MessageType.DONE, 5, DoneHeader(16), b""),
        ("done_program", MessageType.DONE, 6, DoneHeader(22), ProgramSummary(12, 0.25, 1.95e-05).pack()),
        ("ack", MessageType.ACK, 4, None, b""),
        ("error_limit", MessageType.ERROR, 9, ErrorReply(ErrorCode.LIMIT), "amplitude_v=9 is invalid".encode()),
        ("nak_crc", MessageType.NAK, 0xFFFF, Nak(NakReason.CRC), b""),
        ("long_payload", MessageType.BATCH, 0xFFFE, BatchHeader(1, 512), bytes(range(1, 256)) * 2 + bytes(40)),
    ]


def build() -> dict:
    from cobs import cobs

    from firmware_protocol.codec import crc16_ccitt_false

    frames, messages = [], []
    for name, kind, seq, message, extra in _messages():
        payload = (message.pack() if message is not None else b"") + extra
        frames.append({"name": name, "version": 1, "type": int(kind), "seq": seq, "payload_hex": payload.hex(),
                       "frame_hex": encode_frame(kind, seq, payload).hex()})
        if message is not None:
            fields = {key: (value.hex() if isinstance(value, bytes) else value) for key, value in asdict(message).items()}
            messages.append({"frame": name, "layout": type(message).__name__, "fields": fields, "rest_hex": extra.hex()})
    good = bytes.fromhex(frames[0]["frame_hex"])[:-1]
    bad_crc = bytearray(good)
    bad_crc[9] ^= 0x10  # a payload byte, not a COBS code byte, so only the CRC check can catch it
    invalid = [
        {"name": "crc_mismatch", "encoded_hex": bytes(bad_crc).hex(), "error": "crc"},
        {"name": "truncated", "encoded_hex": good[:4].hex(), "error": "short"},
        {"name": "cobs_code_past_end", "encoded_hex": "0911", "error": "cobs"},
        {"name": "length_mismatch", "encoded_hex": _bad_length().hex(), "error": "length"},
    ]
    return {
        "protocol_version": 1,
        "crc": [{"data_hex": data.hex(), "crc": crc if crc is not None else crc16_ccitt_false(data)} for data, crc in CRC_CASES],
        "cobs": [{"decoded_hex": decoded, "encoded_hex": encoded} for decoded, encoded in COBS_CASES
                 if cobs.encode(bytes.fromhex(decoded)).hex() == encoded],
        "frames": frames,
        "messages": messages,
        "invalid": invalid,
    }


def _bad_length() -> bytes:
    """Return a frame whose length field is 5 while it carries 2 payload bytes, with a valid CRC."""
    from cobs import cobs

    from firmware_protocol.codec import CRC, HEADER, crc16_ccitt_false

    body = HEADER.pack(1, MessageType.READ, 9, 5) + b"\x01\x02"
    return cobs.encode(body + CRC.pack(crc16_ccitt_false(body)))


def main() -> None:
    vectors = build()
    if len(vectors["cobs"]) != len(COBS_CASES):
        raise SystemExit("the cobs package disagrees with a published COBS example; vectors.json not written")
    PATH.write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
