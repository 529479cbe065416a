/* compute: ring-3 work with known answers (CRC-32 of a generated buffer, a prime sieve). */
#include "testkit.h"

const char testkit_name[] = "compute";

#define BUF_BYTES (8u << 20)
#define SIEVE_N 2000000u
/* zlib.crc32 of the xorshift32 stream below (seed 0x12345678, little-endian words). */
#define CRC_EXPECTED 0xc5f63146u
#define PRIMES_EXPECTED 148933u	/* pi(2,000,000) */

static uint8_t buf[BUF_BYTES] __attribute__((aligned(64)));
static uint32_t crc_table[256];

static uint64_t crc_job(uint64_t n)
{
	uint32_t x = 0x12345678;
	for (uint64_t i = 0; i < n / 4; i++) {
		x ^= x << 13; x ^= x >> 17; x ^= x << 5;	/* Marsaglia xorshift32 */
		((uint32_t *)buf)[i] = x;
	}
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
	uint32_t crc = 0xffffffffu;
	for (uint64_t i = 0; i < n; i++) crc = crc_table[(crc ^ buf[i]) & 0xff] ^ (crc >> 8);
	return crc ^ 0xffffffffu;
}

static uint64_t sieve_job(uint64_t n)
{
	uint8_t *composite = buf;	/* reuse the buffer: n bytes */
	memset(composite, 0, n);
	uint64_t count = 0;
	for (uint64_t i = 2; i < n; i++) {
		if (composite[i]) continue;
		count++;
		for (uint64_t j = i * i; j < n; j += i) composite[j] = 1;
	}
	return count;
}

void testkit_main(void)
{
	uint32_t crc = (uint32_t)run_user(crc_job, BUF_BYTES);
	report("crc32_8mib", "0x%08x", crc);
	check("crc32 known value", crc == CRC_EXPECTED, "expected 0x%08x", CRC_EXPECTED);
	uint64_t primes = run_user(sieve_job, SIEVE_N);
	report("primes_below_2000000", "%lu", primes);
	check("prime count", primes == PRIMES_EXPECTED, "expected %u", PRIMES_EXPECTED);
}
