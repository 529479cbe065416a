/* vnix-identity: a Linux clone learns who it is (issue 4, clones; the tiny image's /sbin/vnix-identity).
 *
 * A golden snapshot's guest waits with this agent listening on AF_VSOCK port P (--port, default
 * 5000). Right after a clone of it runs, the node agent CONNECTs to P through the VMM's vsock
 * socket (vnix.vmm.clone.send_identity) and sends ONE line
 *
 *     name=NAME addr=A.B.C.D/PREFIX|none seed=N\n
 *
 * Every field is checked (NAME: [A-Za-z0-9.-], 1..63 chars; addr: a dotted IPv4 address with a
 * prefix length 0..32, or "none"; seed: a decimal u64; each field exactly once, nothing else; the
 * line at most MAX_LINE bytes with its newline). The agent then
 *   1. sethostname(NAME);
 *   2. unless addr=none: brings the interface (--iface, default eth0) up, removes its IPv4
 *      addresses, adds ADDR/PREFIX, puts back a default route it had through a gateway that the
 *      new subnet still reaches, and sends one gratuitous ARP (an ARP announcement, RFC 5227) so
 *      the neighbours forget the golden's MAC for this address. Netlink (RTM_DELADDR,
 *      RTM_NEWADDR) and an AF_PACKET socket, not busybox `ip`/`arping`: no fork/exec, no
 *      dependence on which applets a busybox build has, and each step's errno comes back;
 *   3. mixes the seed into the kernel's RNG (RNDADDENTROPY as root, a plain write to /dev/urandom
 *      otherwise) and forces the CRNG to reseed (RNDRESEEDCRNG): a clone's CRNG state is its
 *      golden's until then, so every clone would draw the same numbers;
 *   4. answers "identity NAME RANDOM\n" (RANDOM: 64 bits from getrandom(2), in decimal) - the
 *      answer of guests/testkit/clone_identity.c - and prints "vnix-guest: identity NAME ADDR" on
 *      its stdout (the console when /init starts it).
 * A malformed line gets "error REASON\n" and changes nothing. One connection at a time, each with
 * a 5 s timeout; the listening socket serves on forever: a restore resets the vsock transport
 * (the guest's connected sockets get ECONNRESET, the listener stays), and any failing accept or
 * read only ends that connection. An accept error it does not know makes it listen afresh.
 *
 * --unix PATH listens on a Unix socket instead (tests); --daemon returns once it listens (exit 0)
 * and serves from a child, so /init announces the port only when the agent really is there.
 * Built by vnix.images.tiny with the host's `gcc -static -Os`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/if_ether.h>
#include <netpacket/packet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

#define MAX_LINE 512  /* bytes, newline included */
#define MAX_NAME 63
#define IO_TIMEOUT_S 5

static const char *iface = "eth0";
static uint64_t own_state;  /* splitmix64: the fallback if getrandom(2) fails */

static void logf_(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
	va_end(ap);
	if (n < 0) return;
	if (n > (int)sizeof buf - 2) n = (int)sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t w = write(2, buf, (size_t)n);
	(void)w;
}

static uint64_t now_ns(clockid_t c)
{
	struct timespec ts;
	clock_gettime(c, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix(void)
{
	uint64_t z = (own_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* ---- the line --------------------------------------------------------------------------- */

struct identity {
	char name[MAX_NAME + 1];
	char addr_text[20];  /* "none" or A.B.C.D/P as sent */
	int has_addr;
	struct in_addr addr;
	int prefix;
	uint64_t seed;
};

static int valid_name(const char *s, size_t n)
{
	if (n == 0 || n > MAX_NAME) return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '-'))
			return 0;
	}
	return 1;
}

static int parse_addr(const char *s, size_t n, struct identity *id)
{
	if (n == 4 && !memcmp(s, "none", 4)) {
		id->has_addr = 0;
		strcpy(id->addr_text, "none");
		return 1;
	}
	if (n >= sizeof id->addr_text) return 0;
	char buf[sizeof id->addr_text];
	memcpy(buf, s, n);
	buf[n] = 0;
	char *slash = strchr(buf, '/');
	if (!slash) return 0;
	*slash = 0;
	const char *p = slash + 1;
	size_t pl = strlen(p);
	if (pl < 1 || pl > 2) return 0;
	int prefix = 0;
	for (size_t i = 0; i < pl; i++) {
		if (p[i] < '0' || p[i] > '9') return 0;
		prefix = prefix * 10 + (p[i] - '0');
	}
	if (prefix > 32 || (pl == 2 && p[0] == '0')) return 0;
	if (inet_pton(AF_INET, buf, &id->addr) != 1) return 0;  /* dotted quad only */
	id->has_addr = 1;
	id->prefix = prefix;
	memcpy(id->addr_text, s, n);
	id->addr_text[n] = 0;
	return 1;
}

static int parse_seed(const char *s, size_t n, uint64_t *out)
{
	if (n == 0 || n > 20) return 0;
	uint64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9') return 0;
		uint64_t d = (uint64_t)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10) return 0;
		v = v * 10 + d;
	}
	*out = v;
	return 1;
}

/* line: NUL-terminated, without its newline. NULL when good, else the reason. */
static const char *parse_line(const char *line, struct identity *id)
{
	int seen_name = 0, seen_addr = 0, seen_seed = 0;
	memset(id, 0, sizeof *id);
	for (const char *c = line; *c; c++)
		if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e)
			return "control or non-ASCII character in the line";
	const char *p = line;
	while (*p) {
		if (*p == ' ') { p++; continue; }
		const char *end = strchr(p, ' ');
		if (!end) end = p + strlen(p);
		const char *eq = memchr(p, '=', (size_t)(end - p));
		if (!eq) return "a field without '=' (want name=NAME addr=ADDR/PREFIX|none seed=N)";
		size_t kl = (size_t)(eq - p), vl = (size_t)(end - eq - 1);
		const char *v = eq + 1;
		if (kl == 4 && !memcmp(p, "name", 4)) {
			if (seen_name++) return "name given twice";
			if (!valid_name(v, vl)) return "bad name (want 1-63 of A-Z a-z 0-9 . -)";
			memcpy(id->name, v, vl);
			id->name[vl] = 0;
		} else if (kl == 4 && !memcmp(p, "addr", 4)) {
			if (seen_addr++) return "addr given twice";
			if (!parse_addr(v, vl, id)) return "bad addr (want A.B.C.D/PREFIX or none)";
		} else if (kl == 4 && !memcmp(p, "seed", 4)) {
			if (seen_seed++) return "seed given twice";
			if (!parse_seed(v, vl, &id->seed)) return "bad seed (want a decimal 64-bit number)";
		} else {
			return "unknown field (want name=, addr=, seed=)";
		}
		p = end;
	}
	if (!seen_name) return "missing name=";
	if (!seen_addr) return "missing addr=";
	if (!seen_seed) return "missing seed=";
	return NULL;
}

/* ---- netlink ---------------------------------------------------------------------------- */

struct nlreq {
	struct nlmsghdr h;
	union {
		struct ifaddrmsg ifa;
		struct ifinfomsg ifi;
		struct rtmsg rt;
	};
	char attrs[64];
};

static void add_attr(struct nlreq *r, unsigned short type, const void *data, unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
	a->rta_type = type;
	a->rta_len = (unsigned short)RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

static unsigned nl_seq;

static int nl_open(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0) return -1;
	struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
	return fd;
}

/* Send r and wait for its ACK: 0, or -errno. */
static int nl_do(int fd, struct nlreq *r)
{
	r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	r->h.nlmsg_seq = ++nl_seq;
	if (send(fd, r, r->h.nlmsg_len, 0) < 0) return -errno;
	char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			return -errno;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != r->h.nlmsg_seq) continue;
			if (h->nlmsg_type == NLMSG_ERROR)
				return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
		}
	}
}

/* A dump (RTM_GETADDR / RTM_GETROUTE, AF_INET); each message to fn. 0 or -errno. */
static int nl_dump(int fd, unsigned short type, void (*fn)(struct nlmsghdr *, void *), void *arg)
{
	struct nlreq r;
	memset(&r, 0, sizeof r);
	r.h.nlmsg_type = type;
	r.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	r.h.nlmsg_seq = ++nl_seq;
	if (type == RTM_GETADDR) {
		r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
		r.ifa.ifa_family = AF_INET;
	} else {
		r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
		r.rt.rtm_family = AF_INET;
	}
	if (send(fd, &r, r.h.nlmsg_len, 0) < 0) return -errno;
	char buf[16384] __attribute__((aligned(NLMSG_ALIGNTO)));
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			return -errno;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != r.h.nlmsg_seq) continue;
			if (h->nlmsg_type == NLMSG_DONE) return 0;
			if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
			fn(h, arg);
		}
	}
}

#define MAX_OLD 16
struct old_state {
	int ifindex;
	int naddr;
	struct in_addr addr[MAX_OLD];
	unsigned char plen[MAX_OLD];
	int ngw;
	struct in_addr gw[MAX_OLD];
};

static void collect_addr(struct nlmsghdr *h, void *arg)
{
	struct old_state *o = arg;
	struct ifaddrmsg *ifa = NLMSG_DATA(h);
	if (h->nlmsg_type != RTM_NEWADDR || ifa->ifa_family != AF_INET || (int)ifa->ifa_index != o->ifindex)
		return;
	int len = (int)IFA_PAYLOAD(h);
	for (struct rtattr *a = IFA_RTA(ifa); RTA_OK(a, len); a = RTA_NEXT(a, len))
		if (a->rta_type == IFA_LOCAL && o->naddr < MAX_OLD) {
			memcpy(&o->addr[o->naddr], RTA_DATA(a), 4);
			o->plen[o->naddr++] = ifa->ifa_prefixlen;
		}
}

static void collect_gw(struct nlmsghdr *h, void *arg)
{
	struct old_state *o = arg;
	struct rtmsg *rt = NLMSG_DATA(h);
	if (h->nlmsg_type != RTM_NEWROUTE || rt->rtm_family != AF_INET || rt->rtm_dst_len != 0 ||
	    rt->rtm_table != RT_TABLE_MAIN)
		return;
	int len = (int)RTM_PAYLOAD(h), oif = 0, has_gw = 0;
	struct in_addr gw = {0};
	for (struct rtattr *a = RTM_RTA(rt); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
		if (a->rta_type == RTA_OIF) oif = *(int *)RTA_DATA(a);
		if (a->rta_type == RTA_GATEWAY) { memcpy(&gw, RTA_DATA(a), 4); has_gw = 1; }
	}
	if (oif == o->ifindex && has_gw && o->ngw < MAX_OLD) o->gw[o->ngw++] = gw;
}

static int addr_msg(int fd, unsigned short type, unsigned short flags, int ifindex,
		    struct in_addr a, int prefix)
{
	struct nlreq r;
	memset(&r, 0, sizeof r);
	r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
	r.h.nlmsg_type = type;
	r.h.nlmsg_flags = flags;
	r.ifa.ifa_family = AF_INET;
	r.ifa.ifa_prefixlen = (unsigned char)prefix;
	r.ifa.ifa_index = (unsigned)ifindex;
	add_attr(&r, IFA_LOCAL, &a, 4);
	add_attr(&r, IFA_ADDRESS, &a, 4);
	if (type == RTM_NEWADDR && prefix < 31) {
		uint32_t mask = prefix ? htonl(~0u << (32 - prefix)) : 0;
		struct in_addr b = {.s_addr = a.s_addr | ~mask};
		add_attr(&r, IFA_BROADCAST, &b, 4);
	}
	return nl_do(fd, &r);
}

static int link_up(int fd, int ifindex)
{
	struct nlreq r;
	memset(&r, 0, sizeof r);
	r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
	r.h.nlmsg_type = RTM_NEWLINK;
	r.ifi.ifi_family = AF_UNSPEC;
	r.ifi.ifi_index = ifindex;
	r.ifi.ifi_flags = IFF_UP;
	r.ifi.ifi_change = IFF_UP;
	return nl_do(fd, &r);
}

static int default_route(int fd, int ifindex, struct in_addr gw)
{
	struct nlreq r;
	memset(&r, 0, sizeof r);
	r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	r.h.nlmsg_type = RTM_NEWROUTE;
	r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
	r.rt.rtm_family = AF_INET;
	r.rt.rtm_table = RT_TABLE_MAIN;
	r.rt.rtm_protocol = RTPROT_BOOT;
	r.rt.rtm_scope = RT_SCOPE_UNIVERSE;
	r.rt.rtm_type = RTN_UNICAST;
	add_attr(&r, RTA_GATEWAY, &gw, 4);
	add_attr(&r, RTA_OIF, &ifindex, 4);
	return nl_do(fd, &r);
}

static int same_subnet(struct in_addr a, struct in_addr b, int prefix)
{
	uint32_t mask = prefix ? htonl(~0u << (32 - prefix)) : 0;
	return (a.s_addr & mask) == (b.s_addr & mask);
}

/* An ARP announcement of a on the interface (RFC 5227 2.3: sender = target = a). */
static void announce(int ifindex, struct in_addr a)
{
	int s = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
	if (s < 0) { logf_("vnix-identity: gratuitous ARP: socket: %s", strerror(errno)); return; }
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", iface);
	if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0 || ifr.ifr_hwaddr.sa_family != ARPHRD_ETHER) {
		close(s);  /* not Ethernet: nothing to announce */
		return;
	}
	struct ether_arp p;
	memset(&p, 0, sizeof p);
	p.arp_hrd = htons(ARPHRD_ETHER);
	p.arp_pro = htons(ETH_P_IP);
	p.arp_hln = ETH_ALEN;
	p.arp_pln = 4;
	p.arp_op = htons(ARPOP_REQUEST);
	memcpy(p.arp_sha, ifr.ifr_hwaddr.sa_data, ETH_ALEN);
	memcpy(p.arp_spa, &a, 4);
	memcpy(p.arp_tpa, &a, 4);
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP),
				 .sll_ifindex = ifindex, .sll_halen = ETH_ALEN};
	memset(to.sll_addr, 0xff, ETH_ALEN);
	if (sendto(s, &p, sizeof p, 0, (struct sockaddr *)&to, sizeof to) < 0)
		logf_("vnix-identity: gratuitous ARP: %s", strerror(errno));
	close(s);
}

/* The interface's IPv4 address becomes id's. NULL, or what failed (with errno text in err). */
static const char *set_address(const struct identity *id, char *err, size_t errlen)
{
	int ifindex = (int)if_nametoindex(iface);
	if (!ifindex) {
		snprintf(err, errlen, "no interface %s", iface);
		return err;
	}
	int fd = nl_open();
	if (fd < 0) {
		snprintf(err, errlen, "netlink: %s", strerror(errno));
		return err;
	}
	struct old_state o = {.ifindex = ifindex};
	int rc = nl_dump(fd, RTM_GETADDR, collect_addr, &o);
	if (!rc) rc = nl_dump(fd, RTM_GETROUTE, collect_gw, &o);
	if (rc) {
		snprintf(err, errlen, "reading %s's addresses: %s", iface, strerror(-rc));
		goto out;
	}
	if ((rc = link_up(fd, ifindex))) {
		snprintf(err, errlen, "setting %s up: %s", iface, strerror(-rc));
		goto out;
	}
	/* Removed first: removing a primary address removes its secondaries with it. */
	for (int i = 0; i < o.naddr; i++) {
		rc = addr_msg(fd, RTM_DELADDR, 0, ifindex, o.addr[i], o.plen[i]);
		if (rc && rc != -EADDRNOTAVAIL && rc != -ENOENT) {
			snprintf(err, errlen, "removing %s from %s: %s", inet_ntoa(o.addr[i]), iface,
				 strerror(-rc));
			goto out;
		}
	}
	rc = addr_msg(fd, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, ifindex, id->addr, id->prefix);
	if (rc) {
		snprintf(err, errlen, "adding %s to %s: %s", id->addr_text, iface, strerror(-rc));
		goto out;
	}
	for (int i = 0; i < o.ngw; i++)
		if (same_subnet(o.gw[i], id->addr, id->prefix)) {
			int r2 = default_route(fd, ifindex, o.gw[i]);
			if (r2 && r2 != -EEXIST)
				logf_("vnix-identity: default route via %s: %s", inet_ntoa(o.gw[i]), strerror(-r2));
			break;
		}
	announce(ifindex, id->addr);
out:
	close(fd);
	return rc ? err : NULL;
}

/* ---- the kernel's RNG ----------------------------------------------------------------------- */

static void mix_seed(uint64_t seed)
{
	struct {
		int entropy_count;
		int buf_size;
		uint64_t buf[4];
	} e;
	e.buf[0] = seed;
	e.buf[1] = now_ns(CLOCK_REALTIME);
	e.buf[2] = now_ns(CLOCK_MONOTONIC);
	e.buf[3] = (uint64_t)getpid() << 32 ^ own_state;
	e.buf_size = sizeof e.buf;
	e.entropy_count = 64;  /* the seed: the host draws it from its CSPRNG (secrets.randbits) */
	own_state ^= seed ^ e.buf[1] ^ e.buf[2];
	splitmix();
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		logf_("vnix-identity: /dev/urandom: %s", strerror(errno));
		return;
	}
	if (ioctl(fd, RNDADDENTROPY, &e) < 0) {  /* not root: mixed in, not credited */
		ssize_t w = write(fd, e.buf, sizeof e.buf);
		(void)w;
	}
	ioctl(fd, RNDRESEEDCRNG);  /* root only; else the CRNG reseeds on its own schedule */
	close(fd);
}

static uint64_t draw_random(void)
{
	uint64_t v;
	ssize_t n;
	do n = getrandom(&v, sizeof v, GRND_NONBLOCK);
	while (n < 0 && errno == EINTR);
	if (n == (ssize_t)sizeof v) return v;
	own_state ^= now_ns(CLOCK_MONOTONIC);
	return splitmix();
}

/* ---- serving ---------------------------------------------------------------------------- */

static void reply(int c, const char *fmt, ...)
{
	char buf[MAX_LINE + 128];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0) return;
	if (n >= (int)sizeof buf) n = (int)sizeof buf - 1;
	for (int off = 0; off < n;) {
		ssize_t w = send(c, buf + off, (size_t)(n - off), MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR) continue;
		if (w <= 0) return;  /* the peer went away (a reset, a closed stream): nothing to do */
		off += (int)w;
	}
}

static void serve(int c)
{
	struct timeval tv = {.tv_sec = IO_TIMEOUT_S};
	setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	char line[MAX_LINE + 1];
	size_t got = 0;
	char *nl = NULL;
	while (!nl) {
		if (got == MAX_LINE) {
			reply(c, "error line too long (at most %d bytes with its newline)\n", MAX_LINE);
			return;
		}
		ssize_t n = recv(c, line + got, MAX_LINE - got, 0);
		if (n < 0 && errno == EINTR) continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			reply(c, "error no line within %d s\n", IO_TIMEOUT_S);
			return;
		}
		if (n < 0) return;  /* ECONNRESET (a transport reset), ...: this stream is gone */
		if (n == 0) {
			reply(c, "error end of stream before a newline\n");
			return;
		}
		line[got + (size_t)n] = 0;
		nl = memchr(line + got, '\n', (size_t)n);
		got += (size_t)n;
	}
	*nl = 0;  /* anything after the newline is ignored */
	if (memchr(line, 0, (size_t)(nl - line))) {
		reply(c, "error NUL byte in the line\n");
		return;
	}
	struct identity id;
	const char *bad = parse_line(line, &id);
	if (bad) {
		reply(c, "error %s\n", bad);
		return;
	}
	if (sethostname(id.name, strlen(id.name)) < 0) {
		reply(c, "error sethostname: %s\n", strerror(errno));
		return;
	}
	if (id.has_addr) {
		char err[200];
		const char *failed = set_address(&id, err, sizeof err);
		if (failed) {
			reply(c, "error %s\n", failed);
			return;
		}
	}
	mix_seed(id.seed);
	uint64_t random = draw_random();
	reply(c, "identity %s %llu\n", id.name, (unsigned long long)random);
	printf("vnix-guest: identity %s %s\n", id.name, id.addr_text);
	fflush(stdout);
}

static int listen_on(int port, const char *unix_path)
{
	int s;
	if (unix_path) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		if (strlen(unix_path) >= sizeof sa.sun_path) { errno = ENAMETOOLONG; return -1; }
		strcpy(sa.sun_path, unix_path);
		s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0) return -1;
		unlink(unix_path);
		if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
	} else {
		struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
					 .svm_port = (unsigned)port};
		s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (s < 0) return -1;
		if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
	}
	if (listen(s, 8) < 0) goto fail;
	return s;
fail:;
	int e = errno;
	close(s);
	errno = e;
	return -1;
}

static void usage(void)
{
	fprintf(stderr, "usage: vnix-identity [--port P | --unix PATH] [--iface NAME] [--daemon]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int port = 5000, daemonize = 0;
	const char *unix_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc) {
			char *end;
			long v = strtol(argv[++i], &end, 10);
			if (*end || v < 1 || v > 0x7fffffff) usage();
			port = (int)v;
		} else if (!strcmp(argv[i], "--unix") && i + 1 < argc) {
			unix_path = argv[++i];
		} else if (!strcmp(argv[i], "--iface") && i + 1 < argc) {
			iface = argv[++i];
		} else if (!strcmp(argv[i], "--daemon")) {
			daemonize = 1;
		} else {
			usage();
		}
	}
	signal(SIGPIPE, SIG_IGN);
	own_state = now_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 40);
	int ls = listen_on(port, unix_path);
	if (ls < 0) {
		if (unix_path) logf_("vnix-identity: cannot listen on %s: %s", unix_path, strerror(errno));
		else logf_("vnix-identity: cannot listen on vsock port %d: %s", port, strerror(errno));
		return 1;
	}
	if (daemonize) {
		pid_t pid = fork();
		if (pid < 0) { logf_("vnix-identity: fork: %s", strerror(errno)); return 1; }
		if (pid > 0) _exit(0);
		setsid();
		int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (devnull >= 0) { dup2(devnull, 0); close(devnull); }
	}
	int failures = 0;
	for (;;) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
		if (c >= 0) {
			failures = 0;
			serve(c);
			close(c);
			continue;
		}
		switch (errno) {
		case EINTR: case ECONNRESET: case ECONNABORTED: case EPROTO: case EAGAIN:
		case ENETDOWN: case ENETUNREACH: case EHOSTDOWN: case EHOSTUNREACH: case ENONET:
		case EOPNOTSUPP: case ETIMEDOUT:
			continue;  /* that connection is gone; the listener serves on */
		case EMFILE: case ENFILE: case ENOBUFS: case ENOMEM:
			usleep(100000);
			continue;
		}
		logf_("vnix-identity: accept: %s; listening afresh", strerror(errno));
		if (++failures > 1) sleep(1);
		close(ls);
		while ((ls = listen_on(port, unix_path)) < 0) {
			logf_("vnix-identity: cannot listen again: %s", strerror(errno));
			sleep(1);
		}
	}
}
