// clustermesh-echo: the echo server lab pods run for
// `clustermesh lab workload echo` (the lab's `clustermesh` wrapper on the
// pods' PATH execs it, src/lab/lab.ts). The same HTTP behaviour as
// src/lab/workload.ts's startEchoServer, which tests and the demo's bare
// topology still run in Node.js, in a small C program: a pod keeps about a
// megabyte resident instead of Node's ~44 MB, and starts in a millisecond
// instead of a quarter second of CPU (issue 20; BENCHMARKS.md, startup).
//
//   GET /bytes?n=N  N deterministic bytes (0 <= N <= 2^30), their SHA-256 in x-sha256
//   anything else   {"cluster","node","pod","from","path"} as JSON: who answered, and to whom
//
// HTTP/1.1 with keep-alive (idle connections closed after 5 s, as Node's
// server does), HTTP/1.0 answered and closed, request bodies read and
// ignored. SIGTERM/SIGINT: stop accepting, finish the answers in flight,
// exit 0. One thread, epoll, non-blocking sockets.
//
// Usage: clustermesh-echo [--or PROG ARG... --] lab workload echo [--port N]
//        [--cluster C] [--node N] [--pod P]
// Defaults: port 8080; who it is from CLUSTERMESH_CLUSTER, _NODE, _POD. With
// --or, anything it does not take as is (--help, an unknown flag, a bad value)
// is handed to PROG ARG... followed by its own arguments (the full CLI, which
// explains); without it, a usage error, exit 2.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 16384           /* request line and headers */
#define MAX_BYTES (1ULL << 30)   /* /bytes?n= limit, as workload.ts */
#define CHUNK 65536
#define KEEPALIVE_MS 5000        /* Node's server.keepAliveTimeout */
#define HEADERS_MS 60000         /* Node's server.headersTimeout */

static const char *me_cluster, *me_node, *me_pod;
static volatile sig_atomic_t stopping;

typedef struct conn {
	int fd;
	char from[INET_ADDRSTRLEN];
	char in[MAX_HEAD];
	size_t inlen;
	uint64_t skip;        /* body bytes of the current request still to discard */
	char *out;            /* status line, headers and (JSON) body */
	size_t outlen, outoff;
	uint64_t pat_off, pat_n; /* /bytes: pattern bytes sent so far, and in all */
	int sending, close_after, served;
	int64_t last_ms;
	struct conn *next, *prev;
} conn_t;

static conn_t *conns;
static int ep, lfd = -1;

static int64_t now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The byte at offset i of /bytes: workload.ts's patternChunk, in exact integer arithmetic. */
static void pattern(uint64_t off, unsigned char *buf, size_t len) {
	for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)((uint32_t)((off + i) * 2654435761ULL) >> 24);
}

static void conn_close(conn_t *c) {
	epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev) c->prev->next = c->next;
	else conns = c->next;
	if (c->next) c->next->prev = c->prev;
	free(c->out);
	free(c);
}

static void want(conn_t *c, uint32_t events) {
	struct epoll_event ev = {.events = events, .data.ptr = c};
	epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int appendf(char **p, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int appendf(char **p, size_t *len, const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	char *q = realloc(*p, *len + n + 1);
	if (!q) return -1;
	*p = q;
	va_start(ap, fmt);
	vsnprintf(q + *len, n + 1, fmt, ap);
	va_end(ap);
	*len += n;
	return 0;
}

/* s as the inside of a JSON string (", \ and control characters escaped). */
static void json_str(char **p, size_t *len, const char *s, size_t n) {
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch == '"' || ch == '\\') appendf(p, len, "\\%c", ch);
		else if (ch < 0x20) appendf(p, len, "\\u%04x", ch);
		else appendf(p, len, "%c", ch);
	}
}

/* Value of header name in [h, end), or NULL; *vlen its length. */
static const char *header(const char *h, const char *end, const char *name, size_t *vlen) {
	size_t nl = strlen(name);
	for (const char *line = h; line < end;) {
		const char *eol = memmem(line, end - line, "\r\n", 2);
		if (!eol) eol = end;
		if ((size_t)(eol - line) > nl && line[nl] == ':' && strncasecmp(line, name, nl) == 0) {
			const char *v = line + nl + 1;
			while (v < eol && (*v == ' ' || *v == '\t')) v++;
			const char *ve = eol;
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
			*vlen = ve - v;
			return v;
		}
		line = eol + 2;
	}
	return NULL;
}

static int has_token(const char *v, size_t n, const char *tok) {
	size_t tl = strlen(tok);
	for (size_t i = 0; i + tl <= n; i++) {
		if (strncasecmp(v + i, tok, tl) == 0 && (i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') &&
		    (i + tl == n || v[i + tl] == ',' || v[i + tl] == ' '))
			return 1;
	}
	return 0;
}

/* Starts the answer to one whole request head of hlen bytes at c->in. 0, or -1: close now. */
static int answer(conn_t *c, size_t hlen) {
	const char *p = c->in, *end = c->in + hlen - 4; /* without the blank line */
	const char *eol = memmem(p, end - p, "\r\n", 2);
	if (!eol) eol = end;
	const char *sp1 = memchr(p, ' ', eol - p);
	const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', eol - sp1 - 1) : NULL;
	if (!sp1 || !sp2 || (size_t)(eol - sp2 - 1) != 8 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) return -1;
	int head = (sp1 - p) == 4 && strncmp(p, "HEAD", 4) == 0;
	int http10 = sp2[8] == '0';
	const char *hdrs = eol + 2 <= end ? eol + 2 : end;

	size_t vl;
	const char *v = header(hdrs, end, "connection", &vl);
	c->close_after = http10 ? !(v && has_token(v, vl, "keep-alive")) : (v && has_token(v, vl, "close"));
	if (stopping) c->close_after = 1;
	c->skip = 0;
	if ((v = header(hdrs, end, "content-length", &vl))) {
		char num[24] = {0};
		if (vl == 0 || vl >= sizeof num || strspn(v, "0123456789") < vl) return -1;
		memcpy(num, v, vl);
		c->skip = strtoull(num, NULL, 10);
	}
	if ((v = header(hdrs, end, "transfer-encoding", &vl)) && vl) c->close_after = 1; /* a chunked body: answer, then close */

	/* The path and query of the target (origin form; an absolute form's scheme and authority skipped). */
	const char *t = sp1 + 1, *te = sp2;
	if (te - t > 7 && strncasecmp(t, "http://", 7) == 0) {
		const char *slash = memchr(t + 7, '/', te - t - 7);
		t = slash ? slash : te;
	}
	const char *q = memchr(t, '?', te - t), *hash = memchr(t, '#', te - t);
	const char *pe = q ? q : hash ? hash : te;
	const char *qe = hash && (!q || hash > q) ? hash : te;
	const char *path = t == pe ? "/" : t;
	size_t pathlen = t == pe ? 1 : (size_t)(pe - t);

	char date[64];
	time_t now = time(NULL);
	struct tm tm;
	strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", gmtime_r(&now, &tm));
	const char *conn_hdr = c->close_after ? "Connection: close\r\n" : "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n";

	free(c->out);
	c->out = NULL;
	c->outlen = c->outoff = 0;
	c->pat_off = c->pat_n = 0;
	if (pathlen == 6 && strncmp(path, "/bytes", 6) == 0) {
		/* n from the query (absent or empty: 0); anything but decimal digits up to 2^30 is refused. */
		uint64_t n = 0;
		int ok = 1;
		for (const char *a = q ? q + 1 : qe; a < qe;) {
			const char *amp = memchr(a, '&', qe - a);
			const char *ae = amp ? amp : qe;
			if (ae - a >= 2 && a[0] == 'n' && a[1] == '=') {
				n = 0;
				for (const char *d = a + 2; d < ae; d++) {
					if (*d < '0' || *d > '9' || n > MAX_BYTES) { ok = 0; break; }
					n = n * 10 + (uint64_t)(*d - '0');
				}
				if (n > MAX_BYTES) ok = 0;
				break; /* the first n, as URLSearchParams.get */
			}
			a = amp ? amp + 1 : qe;
		}
		if (!ok) {
			static const char msg[] = "n must be an integer in 0..2^30\n";
			appendf(&c->out, &c->outlen, "HTTP/1.1 400 Bad Request\r\nDate: %s\r\n%sContent-Length: %zu\r\n\r\n%s", date, conn_hdr, sizeof msg - 1, head ? "" : msg);
		} else {
			unsigned char buf[CHUNK], md[32];
			unsigned int mdlen = 0;
			EVP_MD_CTX *h = EVP_MD_CTX_new();
			if (!h || !EVP_DigestInit_ex(h, EVP_sha256(), NULL)) return -1;
			for (uint64_t off = 0; off < n; off += CHUNK) {
				size_t len = n - off < CHUNK ? (size_t)(n - off) : CHUNK;
				pattern(off, buf, len);
				EVP_DigestUpdate(h, buf, len);
			}
			EVP_DigestFinal_ex(h, md, &mdlen);
			EVP_MD_CTX_free(h);
			char hex[65];
			for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
			appendf(&c->out, &c->outlen, "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %llu\r\nx-sha256: %s\r\nDate: %s\r\n%s\r\n",
				(unsigned long long)n, hex, date, conn_hdr);
			if (!head) c->pat_n = n;
		}
	} else {
		char *body = NULL;
		size_t blen = 0;
		appendf(&body, &blen, "{\"cluster\":\"");
		json_str(&body, &blen, me_cluster, strlen(me_cluster));
		appendf(&body, &blen, "\",\"node\":\"");
		json_str(&body, &blen, me_node, strlen(me_node));
		appendf(&body, &blen, "\",\"pod\":\"");
		json_str(&body, &blen, me_pod, strlen(me_pod));
		appendf(&body, &blen, "\",\"from\":\"%s\",\"path\":\"", c->from);
		json_str(&body, &blen, path, pathlen);
		appendf(&body, &blen, "\"}\n");
		appendf(&c->out, &c->outlen, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nDate: %s\r\n%sContent-Length: %zu\r\n\r\n%s", date, conn_hdr, blen, head ? "" : body);
		free(body);
	}
	if (!c->out) return -1;
	/* What followed the head in the buffer: the body to discard, then maybe the next request. */
	memmove(c->in, c->in + hlen, c->inlen - hlen);
	c->inlen -= hlen;
	c->sending = 1;
	return 0;
}

/* Discards body bytes, and starts the answer to the next whole request in the buffer. 0, or -1: close. */
static int parse(conn_t *c) {
	if (c->sending) return 0;
	if (c->skip) {
		size_t k = c->skip < c->inlen ? (size_t)c->skip : c->inlen;
		memmove(c->in, c->in + k, c->inlen - k);
		c->inlen -= k;
		c->skip -= k;
		if (c->skip) return 0;
	}
	char *e = memmem(c->in, c->inlen, "\r\n\r\n", 4);
	if (!e) return c->inlen == sizeof c->in ? -1 : 0; /* a head larger than MAX_HEAD */
	return answer(c, (size_t)(e - c->in) + 4);
}

/* Writes what it can. 0 while more is to come or the connection stays; -1: close. */
static int flush(conn_t *c) {
	while (c->sending) {
		if (c->outoff < c->outlen) {
			ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
			if (w < 0) return errno == EAGAIN ? 0 : -1;
			c->outoff += (size_t)w;
			continue;
		}
		if (c->pat_off < c->pat_n) {
			unsigned char buf[CHUNK];
			size_t len = c->pat_n - c->pat_off < CHUNK ? (size_t)(c->pat_n - c->pat_off) : CHUNK;
			pattern(c->pat_off, buf, len);
			ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL);
			if (w < 0) return errno == EAGAIN ? 0 : -1;
			c->pat_off += (uint64_t)w;
			continue;
		}
		/* The answer is out. */
		c->sending = 0;
		c->served = 1;
		c->last_ms = now_ms();
		if (c->close_after || stopping) return -1;
		if (parse(c) < 0) return -1;
	}
	return 0;
}

static void on_event(conn_t *c, uint32_t events) {
	if (c->sending) {
		if (flush(c) < 0) return conn_close(c);
	} else if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
		/* Not read while an answer is in flight: a client that half-closes after its request still gets it. */
		while (!c->sending && c->inlen < sizeof c->in) {
			ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - c->inlen, 0);
			if (r == 0) return conn_close(c);
			if (r < 0) {
				if (errno == EAGAIN) break;
				return conn_close(c);
			}
			c->inlen += (size_t)r;
			c->last_ms = now_ms();
			if (parse(c) < 0) return conn_close(c);
			if (c->sending && flush(c) < 0) return conn_close(c);
		}
	}
	want(c, c->sending ? EPOLLOUT : EPOLLIN);
}

static void on_signal(int sig) {
	(void)sig;
	stopping = 1;
}

static void usage_or(char **fallback, int nfallback, char **argv, int argc, const char *why) {
	if (nfallback) {
		char **a = calloc((size_t)(nfallback + argc + 1), sizeof *a);
		if (a) {
			memcpy(a, fallback, (size_t)nfallback * sizeof *a);
			memcpy(a + nfallback, argv, (size_t)argc * sizeof *a);
			execvp(a[0], a);
			fprintf(stderr, "clustermesh-echo: cannot run %s: %s\n", a[0], strerror(errno));
			exit(1);
		}
	}
	fprintf(stderr, "clustermesh-echo: %s\nusage: clustermesh-echo [--or PROG ARG... --] lab workload echo [--port N] [--cluster C] [--node N] [--pod P]\n", why);
	exit(2);
}

int main(int argc, char **argv) {
	char **fallback = NULL;
	int nfallback = 0, i = 1;
	if (i < argc && strcmp(argv[i], "--or") == 0) {
		fallback = argv + i + 1;
		while (++i < argc && strcmp(argv[i], "--") != 0) nfallback++;
		if (i == argc || nfallback == 0) usage_or(NULL, 0, NULL, 0, "--or needs PROG and a closing --");
		i++;
	}
	char **args = argv + i;
	int nargs = argc - i;
	if (nargs < 3 || strcmp(args[0], "lab") || strcmp(args[1], "workload") || strcmp(args[2], "echo"))
		usage_or(fallback, nfallback, args, nargs, "expected: lab workload echo");
	const char *env;
	me_cluster = (env = getenv("CLUSTERMESH_CLUSTER")) ? env : "unknown";
	me_node = (env = getenv("CLUSTERMESH_NODE")) ? env : "unknown";
	me_pod = (env = getenv("CLUSTERMESH_POD")) ? env : "unknown";
	long port = 8080;
	for (int a = 3; a < nargs; a++) {
		const char *flag = args[a], *val = NULL;
		static const char *const names[] = {"--port", "--cluster", "--node", "--pod"};
		int which = -1;
		for (int k = 0; k < 4; k++) {
			size_t l = strlen(names[k]);
			if (strncmp(flag, names[k], l) == 0 && (flag[l] == 0 || flag[l] == '=')) {
				which = k;
				val = flag[l] == '=' ? flag + l + 1 : (a + 1 < nargs ? args[++a] : NULL);
			}
		}
		if (which < 0 || !val) usage_or(fallback, nfallback, args, nargs, which < 0 ? "unknown argument" : "a flag without its value");
		if (which == 0) {
			char *e;
			port = strtol(val, &e, 10);
			if (!*val || *e || strspn(val, "0123456789") != strlen(val) || port < 1 || port > 65535)
				usage_or(fallback, nfallback, args, nargs, "--port must be a port number 1..65535");
		} else if (which == 1) me_cluster = val;
		else if (which == 2) me_node = val;
		else me_pod = val;
	}

	signal(SIGPIPE, SIG_IGN);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_ANY)};
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 511) < 0) {
		fprintf(stderr, "echo: cannot listen on 0.0.0.0:%ld: %s\n", port, strerror(errno));
		return 1;
	}
	ep = epoll_create1(EPOLL_CLOEXEC);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
	printf("echo: listening on :%ld as %s/%s/%s\n", port, me_cluster, me_node, me_pod);
	fflush(stdout);

	struct epoll_event evs[64];
	int64_t last_sweep = now_ms();
	for (;;) {
		if (stopping && lfd >= 0) {
			/* Stop accepting; idle connections go now, answers in flight finish. */
			epoll_ctl(ep, EPOLL_CTL_DEL, lfd, NULL);
			close(lfd);
			lfd = -1;
			for (conn_t *c = conns, *n; c; c = n) {
				n = c->next;
				if (!c->sending) conn_close(c);
			}
		}
		if (stopping && !conns) return 0;
		int n = epoll_wait(ep, evs, 64, 1000);
		if (n < 0 && errno != EINTR) {
			perror("echo: epoll_wait");
			return 1;
		}
		for (int k = 0; k < n; k++) {
			if (evs[k].data.ptr) {
				on_event(evs[k].data.ptr, evs[k].events);
				continue;
			}
			for (;;) {
				struct sockaddr_in peer;
				socklen_t pl = sizeof peer;
				int fd = accept4(lfd, (struct sockaddr *)&peer, &pl, SOCK_NONBLOCK | SOCK_CLOEXEC);
				if (fd < 0) break;
				conn_t *c = calloc(1, sizeof *c);
				if (!c) {
					close(fd);
					continue;
				}
				c->fd = fd;
				inet_ntop(AF_INET, &peer.sin_addr, c->from, sizeof c->from);
				setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
				c->last_ms = now_ms();
				c->next = conns;
				if (conns) conns->prev = c;
				conns = c;
				struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
				epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
			}
		}
		/* Idle keep-alive connections, and heads that never complete, are closed as Node's server closes them
		 * (looked for at most once a second). */
		int64_t t = now_ms();
		if (t - last_sweep < 1000) continue;
		last_sweep = t;
		for (conn_t *c = conns, *nx; c; c = nx) {
			nx = c->next;
			if (!c->sending && t - c->last_ms > (c->served && c->inlen == 0 ? KEEPALIVE_MS : HEADERS_MS)) conn_close(c);
		}
	}
}
