/* Reference codec of the cim board protocol, version 1: see cim_codec.h and ../SPEC.md. */
#include "cim_codec.h"

uint16_t cim_crc16(const uint8_t *data, size_t length)
{
    uint16_t crc = 0xFFFFu;
    for (size_t i = 0; i < length; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (int bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

size_t cim_cobs_encode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity)
{
    size_t code_at = 0; /* position of the code byte of the current block */
    size_t write = 1;
    uint8_t code = 1;   /* one more than the bytes in the current block */

    /* COBS adds one byte per 254 bytes, plus one; check the worst case once. */
    if (capacity < length + length / 254u + 1u) {
        return 0;
    }
    for (size_t i = 0; i < length; i++) {
        if (data[i] == 0) {
            out[code_at] = code;
            code_at = write++;
            code = 1;
            continue;
        }
        out[write++] = data[i];
        code++;
        if (code == 0xFF) {
            /* A full block of 254 non-zero bytes implies no zero; at the end of input it ends the frame. */
            out[code_at] = code;
            if (i + 1 == length) {
                return write;
            }
            code_at = write++;
            code = 1;
        }
    }
    out[code_at] = code;
    return write;
}

long cim_cobs_decode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity)
{
    size_t read = 0;
    size_t write = 0;

    while (read < length) {
        uint8_t code = data[read++];
        if (code == 0 || read + code - 1 > length) {
            return -1;
        }
        for (uint8_t i = 1; i < code; i++) {
            if (data[read] == 0 || write >= capacity) {
                return -1;
            }
            out[write++] = data[read++];
        }
        /* A block shorter than 254 bytes stands for a zero, except at the very end. */
        if (code != 0xFF && read < length) {
            if (write >= capacity) {
                return -1;
            }
            out[write++] = 0;
        }
    }
    return (long)write;
}

size_t cim_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t length,
                        uint8_t *scratch, size_t scratch_capacity, uint8_t *out, size_t capacity)
{
    size_t body = CIM_HEADER_BYTES + (size_t)length;
    size_t encoded;
    uint16_t crc;

    if (scratch_capacity < body + CIM_CRC_BYTES) {
        return 0;
    }
    scratch[0] = CIM_PROTOCOL_VERSION;
    scratch[1] = type;
    scratch[2] = (uint8_t)(seq & 0xFFu);
    scratch[3] = (uint8_t)(seq >> 8);
    scratch[4] = (uint8_t)(length & 0xFFu);
    scratch[5] = (uint8_t)(length >> 8);
    for (size_t i = 0; i < length; i++) {
        scratch[CIM_HEADER_BYTES + i] = payload[i];
    }
    crc = cim_crc16(scratch, body);
    scratch[body] = (uint8_t)(crc & 0xFFu);
    scratch[body + 1] = (uint8_t)(crc >> 8);
    encoded = cim_cobs_encode(scratch, body + CIM_CRC_BYTES, out, capacity);
    if (encoded == 0 || encoded >= capacity) {
        return 0;
    }
    out[encoded] = 0;
    return encoded + 1;
}

int cim_frame_decode(const uint8_t *encoded, size_t length, uint8_t *buffer, size_t capacity,
                     struct cim_frame *frame)
{
    long decoded = cim_cobs_decode(encoded, length, buffer, capacity);
    size_t body;
    uint16_t received;

    if (decoded < 0) {
        return length > capacity ? CIM_ERR_SPACE : CIM_ERR_COBS;
    }
    if ((size_t)decoded < CIM_HEADER_BYTES + CIM_CRC_BYTES) {
        return CIM_ERR_SHORT;
    }
    body = (size_t)decoded - CIM_CRC_BYTES;
    received = (uint16_t)(buffer[body] | (buffer[body + 1] << 8));
    if (received != cim_crc16(buffer, body)) {
        return CIM_ERR_CRC;
    }
    frame->version = buffer[0];
    frame->type = buffer[1];
    frame->seq = (uint16_t)(buffer[2] | (buffer[3] << 8));
    frame->length = (uint16_t)(buffer[4] | (buffer[5] << 8));
    if ((size_t)frame->length != body - CIM_HEADER_BYTES) {
        return CIM_ERR_LENGTH;
    }
    frame->payload = buffer + CIM_HEADER_BYTES;
    return CIM_OK;
}
