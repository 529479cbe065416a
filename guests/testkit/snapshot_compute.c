/* snapshot_compute: a long ring-3 computation made to be snapshotted in the middle.
 *
 * ROUNDS rounds (cmdline rounds=N, default 24); round k runs 2^SHIFT steps (shift=S, default 27)
 * of the 64-bit LCG x = x * 6364136223846793005 + 1442695040888963407 in ring 3 and keeps x in
 * xs[k]. After each round, in ring 0: one 512-byte record "ROUND k x=<hex>" to sector 1 + k of
 * the first virtio-blk disk, "progress: k/N x=<hex>" on the serial port, and the clocks are
 * read: the TSC, kvmclock (MSR_KVM_SYSTEM_TIME_NEW) and PIT interrupts seen in a 20 ms window.
 * At the end the result (a hash of every xs[k], read back from memory) goes to sector 0 as
 * "RESULT <hex>" and to the report. The host computes the same numbers (LCG jumps) to check.
 *
 * After END: max_step_ms (largest TSC step between two rounds), the kvmclock step, PIT
 * ticks per window: a restore that loses or jumps the clock shows here. */
#include "virtio.h"

const char testkit_name[] = "snapshot_compute";

#define LCG_A 6364136223846793005ull
#define LCG_C 1442695040888963407ull
#define MAX_ROUNDS 256
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define F_VERSION_1 32
#define PIT_VECTOR 0x20
#define MSR_KVM_SYSTEM_TIME_NEW 0x4b564d01
#define WINDOW_MS 20

static uint64_t xs[MAX_ROUNDS];
static uint64_t shift = 27;
static struct virtq vq __attribute__((aligned(4096)));
static struct { uint32_t type, reserved; uint64_t sector; } hdr __attribute__((aligned(16)));
static volatile uint8_t status_byte __attribute__((aligned(16)));
static char record[512] __attribute__((aligned(512)));
static struct virtio_dev dev;
static volatile uint32_t pit_irqs;

static struct pvclock {
	uint32_t version, pad0;
	uint64_t tsc_timestamp, system_time;
	uint32_t mul;
	int8_t shift;
	uint8_t flags, pad[2];
} __attribute__((aligned(64))) pvclock;

static void pit_irq(struct irq_frame *f) { pit_irqs++; lapic_eoi(); }

static inline void wrmsr(uint32_t msr, uint64_t v)
{
	__asm__ volatile("wrmsr" :: "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static uint64_t kvmclock_ns(void)
{
	uint32_t v;
	uint64_t ns;
	do {
		v = *(volatile uint32_t *)&pvclock.version;
		barrier();
		uint64_t delta = rdtsc() - pvclock.tsc_timestamp;
		delta = pvclock.shift < 0 ? delta >> -pvclock.shift : delta << pvclock.shift;
		ns = pvclock.system_time + (uint64_t)(((unsigned __int128)delta * pvclock.mul) >> 32);
		barrier();
	} while ((v & 1) || v != *(volatile uint32_t *)&pvclock.version);
	return ns;
}

static uint64_t round_job(uint64_t k)
{
	uint64_t x = k ? xs[k - 1] : 0x243f6a8885a308d3ull;
	for (uint64_t i = 0; i < (1ull << shift); i++)
		x = x * LCG_A + LCG_C;
	xs[k] = x;
	return x;
}

static bool blk_write(uint64_t sector, const char *text)
{
	memset(record, 0, sizeof record);
	memcpy(record, text, strlen(text));
	uint32_t used;
	hdr.type = BLK_T_OUT; hdr.reserved = 0; hdr.sector = sector;
	status_byte = 0xff;
	uint64_t a[3] = {(uint64_t)&hdr, (uint64_t)record, (uint64_t)&status_byte};
	uint32_t l[3] = {sizeof hdr, sizeof record, 1};
	bool w[3] = {false, false, true};
	virtq_post(&vq, 3, a, l, w);
	if (!virtq_wait(&vq, &used, 5000) || status_byte != 0)
		return false;
	hdr.type = BLK_T_FLUSH; hdr.sector = 0; status_byte = 0xff;
	a[1] = a[2]; l[1] = 1; w[1] = true;
	virtq_post(&vq, 2, a, l, w);
	return virtq_wait(&vq, &used, 5000) && status_byte == 0;
}

static uint64_t parse_u64(const char *s, uint64_t dflt)
{
	if (!s || *s < '0' || *s > '9') return dflt;
	uint64_t v = 0;
	for (; *s >= '0' && *s <= '9'; s++) v = v * 10 + (uint64_t)(*s - '0');
	return v;
}

static uint64_t max_step_tsc, max_step_kvm_ns, min_window_ticks = ~0ull, max_window_ticks;
static bool tsc_backwards, kvm_backwards;

void testkit_main(void)
{
	uint64_t rounds = parse_u64(cmdline_value("rounds"), 24);
	shift = parse_u64(cmdline_value("shift"), 27);
	if (rounds > MAX_ROUNDS) rounds = MAX_ROUNDS;
	if (shift > 40) shift = 40;
	struct madt_info m;
	uint32_t gsi = acpi_parse_madt(&m) && m.irq0_override ? m.irq0_gsi : 2;
	pic_mask_all();
	lapic_enable();
	irq_set_handler(PIT_VECTOR, pit_irq);
	ioapic_route(gsi, PIT_VECTOR, lapic_id(), false, false);
	pit_periodic(1000);

	uint32_t r[4];
	cpuid(0x40000001, 0, r);
	bool kvmclock = (r[0] >> 3) & 1;	/* KVM_FEATURE_CLOCKSOURCE2 */
	if (kvmclock)
		wrmsr(MSR_KVM_SYSTEM_TIME_NEW, (uint64_t)&pvclock | 1);
	report("kvmclock", "%s", yesno(kvmclock));

	bool found = virtio_open(&dev, 0x1042, 0);
	bool ok = found && virtio_negotiate(&dev, 1ull << F_VERSION_1) && virtio_queue_setup(&dev, &vq, 0, VIRTIO_MSI_NO_VECTOR);
	if (!check("virtio-blk ready", ok, "found %d", found))
		return;
	virtio_driver_ok(&dev);
	printf("rounds: %lu shift: %lu\n", rounds, shift);

	uint64_t last_tsc = rdtsc(), last_kvm = kvmclock ? kvmclock_ns() : 0;
	bool disk_ok = true;
	char line[96];
	for (uint64_t k = 0; k < rounds; k++) {
		uint64_t x = run_user(round_job, k);
		snprintf(line, sizeof line, "ROUND %lu x=%016lx", k, x);
		disk_ok &= blk_write(1 + k, line);
		printf("progress: %lu/%lu x=%016lx\n", k + 1, rounds, x);
		/* the clocks: TSC and kvmclock steps since the last round, PIT ticks in a window */
		uint64_t now = rdtsc();
		if (now < last_tsc) tsc_backwards = true;
		else if (now - last_tsc > max_step_tsc) max_step_tsc = now - last_tsc;
		last_tsc = now;
		if (kvmclock) {
			uint64_t ns = kvmclock_ns();
			if (ns < last_kvm) kvm_backwards = true;
			else if (ns - last_kvm > max_step_kvm_ns) max_step_kvm_ns = ns - last_kvm;
			last_kvm = ns;
		}
		uint32_t before = pit_irqs;
		uint64_t dl = deadline_ms(WINDOW_MS);
		sti();
		while (!past(dl))
			__asm__ volatile("hlt" ::: "memory");
		cli();
		uint64_t ticks = pit_irqs - before;
		if (ticks < min_window_ticks) min_window_ticks = ticks;
		if (ticks > max_window_ticks) max_window_ticks = ticks;
		last_tsc = rdtsc();
		if (kvmclock) last_kvm = kvmclock_ns();
	}
	uint64_t h = 0xcbf29ce484222325ull;	/* FNV-1a over the xs, as the host computes it */
	for (uint64_t k = 0; k < rounds; k++)
		for (int b = 0; b < 64; b += 8) { h ^= (xs[k] >> b) & 0xff; h *= 0x100000001b3ull; }
	snprintf(line, sizeof line, "RESULT %016lx", h);
	disk_ok &= blk_write(0, line);
	report("result", "%016lx", h);
	check("progress and result written to disk", disk_ok, "a virtio-blk write failed");
	check("tsc never went backwards", !tsc_backwards, "it did");
	check("kvmclock never went backwards", !kvmclock || !kvm_backwards, "it did");
	/* 1 kHz PIT: about WINDOW_MS ticks a window; a lost or stopped PIT gives none */
	check("pit ticks in every window", min_window_ticks >= WINDOW_MS / 4, "min %lu in %d ms", min_window_ticks, WINDOW_MS);
}

void testkit_after_end(void)
{
	printf("max_step_ms: %lu\n", max_step_tsc / tsc_khz());
	printf("max_kvmclock_step_ms: %lu\n", max_step_kvm_ns / 1000000);
	printf("window_ticks: %lu..%lu\n", min_window_ticks, max_window_ticks);
}
