/* Reference codec of the cim board protocol, version 1 (see ../SPEC.md): CRC, COBS and frames.
 *
 * The functions use no heap and no global state, so firmware can call them from any context.
 * A frame on the wire is COBS(header | payload | crc) followed by one 0x00 byte.
 */
#ifndef CIM_CODEC_H
#define CIM_CODEC_H

#include <stddef.h>
#include <stdint.h>

#define CIM_PROTOCOL_VERSION 1u
#define CIM_HEADER_BYTES 6u
#define CIM_CRC_BYTES 2u
#define CIM_MAX_PAYLOAD 65535u

/* Result codes of cim_frame_decode; they match the reasons of the Python codec. */
enum cim_decode_status {
    CIM_OK = 0,
    CIM_ERR_COBS = -1,   /* invalid COBS encoding */
    CIM_ERR_SHORT = -2,  /* shorter than header and CRC */
    CIM_ERR_LENGTH = -3, /* length field disagrees with the frame size */
    CIM_ERR_CRC = -4,    /* CRC mismatch */
    CIM_ERR_SPACE = -5   /* output buffer too small */
};

struct cim_frame {
    uint8_t version;
    uint8_t type;
    uint16_t seq;
    uint16_t length;        /* payload bytes */
    const uint8_t *payload; /* points into the caller's decode buffer */
};

/* CRC-16/CCITT-FALSE: polynomial 0x1021, initial value 0xFFFF, no reflection, no final XOR. */
uint16_t cim_crc16(const uint8_t *data, size_t length);

/* Encode `length` bytes; returns the encoded length, or 0 when `capacity` is too small.
 * The output has no zero byte and no trailing delimiter. */
size_t cim_cobs_encode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity);

/* Decode COBS bytes (without the delimiter) and return the decoded length. Returns -1 when the input
 * is invalid (a zero byte, or a code that runs past the end) or when `capacity` is too small. */
long cim_cobs_decode(const uint8_t *data, size_t length, uint8_t *out, size_t capacity);

/* Build a whole frame, delimiter included, into `out`; returns its length or 0 when it does not fit.
 * `scratch` must hold header, payload and CRC (length + 8 bytes). */
size_t cim_frame_encode(uint8_t type, uint16_t seq, const uint8_t *payload, uint16_t length,
                        uint8_t *scratch, size_t scratch_capacity, uint8_t *out, size_t capacity);

/* Decode one frame from its COBS bytes (without the delimiter) into `buffer`, and fill `frame`.
 * Returns CIM_OK or a negative enum cim_decode_status. */
int cim_frame_decode(const uint8_t *encoded, size_t length, uint8_t *buffer, size_t capacity,
                     struct cim_frame *frame);

#endif
