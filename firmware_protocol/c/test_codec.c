/* Checks cim_codec.c against the golden vectors: test_codec PATH/TO/vectors.json
 *
 * vectors.json keeps every entry of the "crc", "cobs", "frames" and "invalid" lists flat (no nested
 * objects) and its strings free of escapes, so this reader only finds keys inside each {...} entry.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cim_codec.h"

#define BUFFER_BYTES 140000u

static int failures;
static int checks;

static void check(int condition, const char *section, const char *description, int index)
{
    checks++;
    if (!condition) {
        failures++;
        fprintf(stderr, "FAIL %s[%d]: %s\n", section, index, description);
    }
}

static char *read_file(const char *path)
{
    FILE *file = fopen(path, "rb");
    char *text;
    long size;

    if (file == NULL) {
        perror(path);
        exit(2);
    }
    fseek(file, 0, SEEK_END);
    size = ftell(file);
    fseek(file, 0, SEEK_SET);
    text = malloc((size_t)size + 1);
    if (text == NULL || fread(text, 1, (size_t)size, file) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(2);
    }
    text[size] = '\0';
    fclose(file);
    return text;
}

/* Return the text after `"name": [`, or exit when the list is missing. */
static const char *find_list(const char *json, const char *name)
{
    char key[64];
    const char *at;

    snprintf(key, sizeof key, "\"%s\":", name);
    at = strstr(json, key);
    if (at == NULL || (at = strchr(at, '[')) == NULL) {
        fprintf(stderr, "vectors.json has no list \"%s\"\n", name);
        exit(2);
    }
    return at + 1;
}

/* Find the next {...} entry of a list; returns 0 at the end of the list. */
static int next_entry(const char **cursor, const char **start, const char **end)
{
    const char *open = strchr(*cursor, '{');
    const char *close_list = strchr(*cursor, ']');

    if (open == NULL || (close_list != NULL && close_list < open)) {
        return 0;
    }
    *start = open;
    *end = strchr(open, '}');
    *cursor = *end + 1;
    return 1;
}

static const char *find_value(const char *start, const char *end, const char *name)
{
    char key[64];
    const char *at;

    snprintf(key, sizeof key, "\"%s\":", name);
    at = strstr(start, key);
    if (at == NULL || at > end) {
        fprintf(stderr, "an entry lacks \"%s\"\n", name);
        exit(2);
    }
    at += strlen(key);
    while (*at == ' ') {
        at++;
    }
    return at;
}

static long number_of(const char *start, const char *end, const char *name)
{
    return strtol(find_value(start, end, name), NULL, 10);
}

static size_t hex_of(const char *start, const char *end, const char *name, uint8_t *out)
{
    const char *at = find_value(start, end, name) + 1; /* skip the opening quote */
    size_t count = 0;

    while (*at != '"') {
        unsigned value;
        sscanf(at, "%2x", &value);
        out[count++] = (uint8_t)value;
        at += 2;
    }
    return count;
}

static void string_of(const char *start, const char *end, const char *name, char *out, size_t capacity)
{
    const char *at = find_value(start, end, name) + 1;
    size_t count = 0;

    while (*at != '"' && count + 1 < capacity) {
        out[count++] = *at++;
    }
    out[count] = '\0';
}

static uint8_t data[BUFFER_BYTES], expected[BUFFER_BYTES], out[BUFFER_BYTES], scratch[BUFFER_BYTES];

static void test_crc(const char *json)
{
    const char *cursor = find_list(json, "crc"), *start, *end;
    int index = 0;

    while (next_entry(&cursor, &start, &end)) {
        size_t length = hex_of(start, end, "data_hex", data);
        check(cim_crc16(data, length) == (uint16_t)number_of(start, end, "crc"), "crc", "CRC value", index++);
    }
}

static void test_cobs(const char *json)
{
    const char *cursor = find_list(json, "cobs"), *start, *end;
    int index = 0;

    while (next_entry(&cursor, &start, &end)) {
        size_t decoded = hex_of(start, end, "decoded_hex", data);
        size_t encoded = hex_of(start, end, "encoded_hex", expected);
        size_t length = cim_cobs_encode(data, decoded, out, sizeof out);
        check(length == encoded && memcmp(out, expected, encoded) == 0, "cobs", "encode", index);
        check(cim_cobs_decode(expected, encoded, out, sizeof out) == (long)decoded && memcmp(out, data, decoded) == 0,
              "cobs", "decode", index);
        index++;
    }
}

static void test_frames(const char *json)
{
    const char *cursor = find_list(json, "frames"), *start, *end;
    int index = 0;

    while (next_entry(&cursor, &start, &end)) {
        size_t payload = hex_of(start, end, "payload_hex", data);
        size_t frame_length = hex_of(start, end, "frame_hex", expected);
        uint8_t type = (uint8_t)number_of(start, end, "type");
        uint16_t seq = (uint16_t)number_of(start, end, "seq");
        struct cim_frame frame;
        size_t length = cim_frame_encode(type, seq, data, (uint16_t)payload, scratch, sizeof scratch, out, sizeof out);

        check(length == frame_length && memcmp(out, expected, frame_length) == 0, "frames", "encode", index);
        check(cim_frame_decode(expected, frame_length - 1, scratch, sizeof scratch, &frame) == CIM_OK, "frames", "decode", index);
        check(frame.version == number_of(start, end, "version") && frame.type == type && frame.seq == seq, "frames", "header", index);
        check(frame.length == payload && memcmp(frame.payload, data, payload) == 0, "frames", "payload", index);
        index++;
    }
}

static void test_invalid(const char *json)
{
    const char *cursor = find_list(json, "invalid"), *start, *end;
    int index = 0;

    while (next_entry(&cursor, &start, &end)) {
        char error[16];
        size_t length = hex_of(start, end, "encoded_hex", data);
        struct cim_frame frame;
        int status = cim_frame_decode(data, length, scratch, sizeof scratch, &frame);
        int expected_status;

        string_of(start, end, "error", error, sizeof error);
        expected_status = strcmp(error, "crc") == 0 ? CIM_ERR_CRC : strcmp(error, "short") == 0 ? CIM_ERR_SHORT
                 : strcmp(error, "cobs") == 0 ? CIM_ERR_COBS : CIM_ERR_LENGTH;
        check(status == expected_status, "invalid", error, index++);
    }
}

int main(int argc, char **argv)
{
    char *json;

    if (argc != 2) {
        fprintf(stderr, "usage: %s PATH/TO/vectors.json\n", argv[0]);
        return 2;
    }
    json = read_file(argv[1]);
    test_crc(json);
    test_cobs(json);
    test_frames(json);
    test_invalid(json);
    free(json);
    printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
