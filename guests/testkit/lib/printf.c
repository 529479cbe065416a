/* Freestanding string helpers and a small printf: %s %c %d %i %u %x %lx %llx %zu %p, width, '0'. */
#include "testkit.h"

size_t strlen(const char *s) { size_t n = 0; while (s[n]) n++; return n; }

int strncmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		if (*a != *b) return (unsigned char)*a - (unsigned char)*b;
		if (!*a) return 0;
	}
	return 0;
}

const char *strstr_(const char *h, const char *n)
{
	size_t ln = strlen(n);
	for (; *h; h++)
		if (!strncmp(h, n, ln)) return h;
	return NULL;
}

void *memcpy(void *d, const void *s, size_t n)
{
	char *dd = d; const char *ss = s;
	while (n--) *dd++ = *ss++;
	return d;
}

void *memset(void *d, int c, size_t n)
{
	char *dd = d;
	while (n--) *dd++ = (char)c;
	return d;
}

struct out { char *buf; size_t size, pos; };

static void put(struct out *o, char c)
{
	if (o->pos + 1 < o->size) o->buf[o->pos] = c;
	o->pos++;
}

static void put_num(struct out *o, uint64_t v, unsigned base, int width, char pad, bool neg)
{
	char tmp[24];
	int n = 0;
	do { tmp[n++] = "0123456789abcdef"[v % base]; v /= base; } while (v);
	if (neg) tmp[n++] = '-';
	while (n < width--) put(o, pad);
	while (n) put(o, tmp[--n]);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { buf, size, 0 };
	for (; *fmt; fmt++) {
		if (*fmt != '%') { put(&o, *fmt); continue; }
		fmt++;
		char pad = ' ';
		int width = 0, lng = 0;
		if (*fmt == '0') { pad = '0'; fmt++; }
		while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
		while (*fmt == 'l' || *fmt == 'z') { lng++; fmt++; }
		switch (*fmt) {
		case 's': {
			const char *s = va_arg(ap, const char *);
			if (!s) s = "(null)";
			int len = (int)strlen(s);
			while (len < width--) put(&o, ' ');
			while (*s) put(&o, *s++);
			break;
		}
		case 'c': put(&o, (char)va_arg(ap, int)); break;
		case 'd': case 'i': {
			int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			put_num(&o, v < 0 ? (uint64_t)-v : (uint64_t)v, 10, width, pad, v < 0); break; }
		case 'u': put_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, width, pad, false); break;
		case 'x': put_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, width, pad, false); break;
		case 'p': put(&o, '0'); put(&o, 'x'); put_num(&o, (uint64_t)va_arg(ap, void *), 16, width, pad, false); break;
		case '%': put(&o, '%'); break;
		default: put(&o, '%'); put(&o, *fmt); break;
		}
	}
	if (size) buf[o.pos < size ? o.pos : size - 1] = 0;
	return (int)o.pos;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap; va_start(ap, fmt);
	int n = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}

int printf(const char *fmt, ...)
{
	char buf[256];
	va_list ap; va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	serial_write(buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
	return n;
}
