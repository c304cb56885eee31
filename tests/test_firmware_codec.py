"""Frame codec and message layouts of the board protocol, against the golden vectors and fuzzed input."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from cim_runtime.errors import ProtocolError
from firmware_protocol import messages
from firmware_protocol.codec import (
    DELIMITER, MAX_ENCODED, PROTOCOL_VERSION, Frame, FrameError, FrameReader, crc16_ccitt_false, decode_frame, encode_frame,
)
from firmware_protocol.messages import MessageType, operations, parse_records

VECTORS_PATH = Path(str(resources.files("firmware_protocol").joinpath("vectors.json")))
VECTORS = json.loads(VECTORS_PATH.read_text())
C_DIR = VECTORS_PATH.parent / "c"


def frames_of(stream: bytes) -> list[Frame]:
    return [item for item in FrameReader().feed(stream) if isinstance(item, Frame)]


@pytest.mark.parametrize("case", VECTORS["crc"], ids=lambda case: case["data_hex"][:12] or "empty")
def test_crc_vectors(case):
    assert crc16_ccitt_false(bytes.fromhex(case["data_hex"])) == case["crc"]


def test_crc_check_value():
    assert crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize("case", VECTORS["cobs"], ids=lambda case: case["decoded_hex"][:12] or "empty")
def test_cobs_vectors(case):
    assert cobs.encode(bytes.fromhex(case["decoded_hex"])).hex() == case["encoded_hex"]


@pytest.mark.parametrize("case", VECTORS["frames"], ids=lambda case: case["name"])
def test_frame_vectors_encode_and_decode(case):
    payload = bytes.fromhex(case["payload_hex"])
    encoded = bytes.fromhex(case["frame_hex"])
    assert encode_frame(case["type"], case["seq"], payload) == encoded
    frame = decode_frame(encoded[:-1])
    assert frame == Frame(case["version"], case["type"], case["seq"], payload)


@pytest.mark.parametrize("case", VECTORS["messages"], ids=lambda case: case["frame"])
def test_message_vectors_unpack(case):
    frame = next(item for item in VECTORS["frames"] if item["name"] == case["frame"])
    layout = getattr(messages, case["layout"])
    message, rest = layout.unpack_prefix(bytes.fromhex(frame["payload_hex"]))
    expected = {key: bytes.fromhex(value) if isinstance(value, str) else value for key, value in case["fields"].items()}
    assert {name: getattr(message, name) for name in expected} == expected
    assert rest.hex() == case["rest_hex"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda case: case["name"])
def test_invalid_vectors_are_rejected(case):
    with pytest.raises(FrameError) as caught:
        decode_frame(bytes.fromhex(case["encoded_hex"]))
    assert caught.value.reason == case["error"]


def test_read_vector_records():
    frame = next(item for item in VECTORS["frames"] if item["name"] == "read_two_cells")
    payload = bytes.fromhex(frame["payload_hex"])
    records = parse_records(payload[messages.ReadParams.LAYOUT.size:], operations(4, 3)[MessageType.READ].record)
    assert records["array"].tolist() == [0, 1]
    assert records["row"].tolist() == [1, 3]
    assert records["col"].tolist() == [2, 0]


def test_layout_sizes_match_spec():
    assert messages.HelloReply.LAYOUT.size == 102
    assert messages.ProgramParams.LAYOUT.size == 115
    assert operations(4, 3)[MessageType.PULSE].record.itemsize == 22
    assert operations(4, 3)[MessageType.PROGRAM].result.itemsize == 11


def test_oversize_payload_is_rejected():
    with pytest.raises(ProtocolError, match="too long"):
        encode_frame(MessageType.BATCH, 1, bytes(0x10000))


def test_reader_bounds_a_stream_without_delimiters():
    reader = FrameReader()
    assert reader.feed(b"\x01" * (MAX_ENCODED + 10)) == []
    items = reader.feed(DELIMITER + encode_frame(MessageType.ACK, 3))
    assert isinstance(items[0], FrameError)
    assert items[0].reason == "oversize"
    assert items[1] == Frame(PROTOCOL_VERSION, MessageType.ACK, 3, b"")


def test_reader_joins_frames_split_across_reads():
    stream = encode_frame(MessageType.RESULT, 9, bytes(range(256)) * 3) + encode_frame(MessageType.DONE, 9, b"\x00\x03\x00\x00")
    reader = FrameReader()
    items = []
    for start in range(0, len(stream), 7):
        items += reader.feed(stream[start:start + 7])
    assert [item.message_type for item in items] == [MessageType.RESULT, MessageType.DONE]


@settings(max_examples=300, deadline=None)
@given(kind=st.integers(0, 255), seq=st.integers(0, 0xFFFF), payload=st.binary(max_size=600))
def test_roundtrip_any_frame(kind, seq, payload):
    encoded = encode_frame(kind, seq, payload)
    assert encoded.count(0) == 1
    assert decode_frame(encoded[:-1]) == Frame(PROTOCOL_VERSION, kind, seq, payload)


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(max_size=400))
def test_reader_never_raises_on_garbage(garbage):
    for item in FrameReader().feed(garbage):
        assert isinstance(item, (Frame, FrameError))
        if isinstance(item, Frame):
            # Random bytes can pass the CRC (1 in 65,536); such a frame must still be self-consistent.
            assert encode_frame(item.message_type, item.seq, item.payload, version=item.version)[:-1] in garbage


@settings(max_examples=500, deadline=None)
@given(garbage=st.binary(max_size=400), seq=st.integers(0, 0xFFFF), payload=st.binary(max_size=100))
def test_reader_resyncs_after_garbage(garbage, seq, payload):
    good = encode_frame(MessageType.RESULT, seq, payload)
    items = FrameReader().feed(garbage + DELIMITER + good + good)
    assert items[-2:] == [Frame(PROTOCOL_VERSION, MessageType.RESULT, seq, payload)] * 2


@settings(max_examples=500, deadline=None)
@given(payloads=st.lists(st.binary(max_size=60), min_size=3, max_size=6), data=st.data())
def test_one_damaged_byte_costs_at_most_two_frames(payloads, data):
    encoded = [encode_frame(MessageType.RESULT, index, payload) for index, payload in enumerate(payloads)]
    stream = bytearray(b"".join(encoded))
    position = data.draw(st.integers(0, len(stream) - 1))
    stream[position] = data.draw(st.integers(0, 255).filter(lambda value: value != stream[position]))
    seqs = [frame.seq for frame in frames_of(bytes(stream))]
    hit = next(index for index, frame in enumerate(encoded) if position < sum(map(len, encoded[:index + 1])))
    # A damaged delimiter joins a frame with the next one; any other damage stays inside its frame.
    expected = [index for index in range(len(payloads)) if index not in (hit, hit + 1)]
    assert set(expected) <= set(seqs)
    assert len(seqs) >= len(payloads) - 2


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(list(MessageType)), payload=st.binary(max_size=200))
def test_message_parsers_raise_only_protocol_errors(kind, payload):
    layouts = [messages.Hello, messages.HelloReply, messages.BatchHeader, messages.ExecuteHeader, messages.ResultHeader,
               messages.DoneHeader, messages.ErrorReply, messages.Nak, messages.ProgramParams]
    for layout in layouts:
        try:
            layout.unpack_prefix(payload)
        except ProtocolError:
            pass
    for operation in operations(5, 4).values():
        try:
            parse_records(payload, operation.record)
        except ProtocolError:
            pass


def test_c_reference_codec_passes_vectors(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler, "a C compiler (cc or gcc) is needed to test firmware_protocol/c"
    program = tmp_path / "test_codec"
    subprocess.run([compiler, "-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-o", str(program),
                    str(C_DIR / "test_codec.c"), str(C_DIR / "cim_codec.c")], check=True)
    run = subprocess.run([str(program), str(VECTORS_PATH)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert ", 0 failed" in run.stdout


def test_records_roundtrip_through_bytes():
    operation = operations(4, 3)[MessageType.PULSE]
    records = np.zeros(3, dtype=operation.record)
    records["amplitude_v"] = [1.0, -2.5, 0.75]
    assert np.array_equal(parse_records(records.tobytes(), operation.record), records)
    with pytest.raises(ProtocolError, match="whole number"):
        parse_records(records.tobytes()[:-1], operation.record)
