/* The report: TESTKIT BEGIN/END framing, `key: value` lines, self-checks, and the exit. */
#include "testkit.h"

static unsigned failures;

const char *yesno(bool b) { return b ? "yes" : "no"; }

void report(const char *key, const char *fmt, ...)
{
	char buf[200];
	va_list ap; va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	printf("%s: %s\n", key, buf);
}

bool check(const char *what, bool ok, const char *fmt, ...)
{
	if (ok) {
		printf("check %s: ok\n", what);
		return true;
	}
	char buf[160];
	va_list ap; va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	printf("check %s: FAIL (%s)\n", what, buf);
	failures++;
	return false;
}

/* isa-debug-exit: QEMU exits with status (value << 1) | 1; vnix --debug-exit does the same. */
void debug_exit(uint8_t value)
{
	outb(DEBUG_EXIT_PORT, value);
	for (;;) __asm__ volatile("cli; hlt");
}

void fail(const char *fmt, ...)
{
	char buf[200];
	va_list ap; va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	printf("check fatal: FAIL (%s)\n", buf);
	printf("TESTKIT END %s\n", testkit_name);
	debug_exit(1);
}

/* Called by testkit_start after the guest's main returns. */
void report_finish(void)
{
	printf("TESTKIT END %s\n", testkit_name);
	if (testkit_after_end) testkit_after_end();
	debug_exit(failures ? 1 : 0);
}
