// clustermesh-cni: the CNI plugin executable (spec 1.0.0) a kubelet runs from
// /opt/cni/bin. It is not a Node.js process: it reads the CNI_* environment and
// the network config on stdin, forwards both to the node's agent over its unix
// socket (`agentSocket` of the config) and prints the agent's answer. The agent
// does the work and all validation (src/cni/plugin.ts runs inside it: veth,
// IPAM, endpoint); this program checks only what it needs to reach the agent.
//
//   POST /v1/cni?CNI_COMMAND=ADD&CNI_CONTAINERID=...  (body: stdin as is)
//   200, body: what the plugin prints (result or CNI error JSON),
//        X-Cni-Exit-Code: the exit status, X-Cni-Agent-Ms: the agent's time on it
//
// Answered here, without the agent: VERSION; CNI_COMMAND missing or unknown
// (code 4); stdin not JSON (6); no usable agentSocket (7); the agent not
// reachable or silent (11). Errors are CNI error JSON on stdout, exit 1.
// CLUSTERMESH_CNI_TIMING=1 prints {"totalMs","agentMs"} on stderr (bench/startup).
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_STDIN (1 << 20) /* the agent's request body limit */
#define MAX_RESPONSE (4 << 20)
#define SUPPORTED "[\"1.0.0\"]"

static char cni_version[64] = "1.0.0";

/* ---- output ------------------------------------------------------------- */

typedef struct {
	char *p;
	size_t len, cap;
} buf_t;

static void buf_grow(buf_t *b, size_t more) {
	if (b->len + more + 1 <= b->cap) return;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more + 1) cap *= 2;
	char *p = realloc(b->p, cap);
	if (!p) {
		fputs("clustermesh-cni: out of memory\n", stderr);
		exit(1);
	}
	b->p = p;
	b->cap = cap;
}

static void buf_add(buf_t *b, const char *s, size_t n) {
	buf_grow(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void buf_str(buf_t *b, const char *s) { buf_add(b, s, strlen(s)); }

/* s as the inside of a JSON string. */
static void buf_json(buf_t *b, const char *s) {
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		char esc[8];
		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			buf_add(b, esc, 2);
		} else if (c < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", c);
			buf_add(b, esc, 6);
		} else
			buf_add(b, (const char *)&c, 1);
	}
}

static void write_all(int fd, const char *p, size_t n) {
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR) continue;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Prints a CNI error and exits 1. */
__attribute__((noreturn, format(printf, 2, 3))) static void fail(int code, const char *fmt, ...) {
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	buf_t b = {0};
	buf_str(&b, "{\n \"cniVersion\": \"");
	buf_json(&b, cni_version);
	char num[32];
	snprintf(num, sizeof num, "\",\n \"code\": %d,\n \"msg\": \"", code);
	buf_str(&b, num);
	buf_json(&b, msg);
	buf_str(&b, "\"\n}\n");
	write_all(1, b.p, b.len);
	exit(1);
}

/* ---- the network config: a JSON check and three top-level fields --------- */

typedef struct {
	const char *s, *end;
	const char *err;
	int depth;
} json_t;

static void ws(json_t *j) {
	while (j->s < j->end && (*j->s == ' ' || *j->s == '\t' || *j->s == '\n' || *j->s == '\r')) j->s++;
}

static int jerr(json_t *j, const char *why) {
	if (!j->err) j->err = why;
	return 0;
}

/* A string at j->s; its decoded value (escapes of ASCII only, else kept raw) into out when out != NULL. */
static int jstring(json_t *j, char *out, size_t outsz) {
	size_t n = 0;
	if (j->s >= j->end || *j->s != '"') return jerr(j, "expected a string");
	j->s++;
	while (j->s < j->end && *j->s != '"') {
		char c = *j->s++;
		if ((unsigned char)c < 0x20) return jerr(j, "control character in a string");
		if (c == '\\') {
			if (j->s >= j->end) break;
			char e = *j->s++;
			switch (e) {
			case '"': case '\\': case '/': c = e; break;
			case 'b': c = '\b'; break;
			case 'f': c = '\f'; break;
			case 'n': c = '\n'; break;
			case 'r': c = '\r'; break;
			case 't': c = '\t'; break;
			case 'u': {
				unsigned v = 0;
				for (int i = 0; i < 4; i++) {
					if (j->s >= j->end) return jerr(j, "unterminated \\u escape");
					char h = *j->s++;
					v <<= 4;
					if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
					else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
					else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
					else return jerr(j, "bad \\u escape");
				}
				c = v < 0x80 && v > 0 ? (char)v : '?';
				break;
			}
			default: return jerr(j, "bad escape in a string");
			}
		}
		if (out && n + 1 < outsz) out[n++] = c;
	}
	if (j->s >= j->end) return jerr(j, "unterminated string");
	j->s++;
	if (out) out[n] = 0;
	return 1;
}

static int jvalue(json_t *j);

static int jliteral(json_t *j, const char *lit) {
	size_t n = strlen(lit);
	if ((size_t)(j->end - j->s) < n || memcmp(j->s, lit, n) != 0) return jerr(j, "unexpected token");
	j->s += n;
	return 1;
}

static int jnumber(json_t *j, double *out) {
	char tmp[64];
	const char *st = j->s;
	if (j->s < j->end && *j->s == '-') j->s++;
	if (j->s >= j->end || *j->s < '0' || *j->s > '9') return jerr(j, "unexpected token");
	while (j->s < j->end && strchr("0123456789.eE+-", *j->s)) j->s++;
	size_t n = (size_t)(j->s - st);
	if (n >= sizeof tmp) n = sizeof tmp - 1;
	memcpy(tmp, st, n);
	tmp[n] = 0;
	char *e;
	double v = strtod(tmp, &e);
	if (*e) return jerr(j, "malformed number");
	if (out) *out = v;
	return 1;
}

static int jcontainer(json_t *j, char close) {
	if (++j->depth > 128) return jerr(j, "nested too deeply");
	j->s++;
	ws(j);
	if (j->s < j->end && *j->s == close) {
		j->s++;
		j->depth--;
		return 1;
	}
	for (;;) {
		ws(j);
		if (close == '}') {
			if (!jstring(j, NULL, 0)) return 0;
			ws(j);
			if (j->s >= j->end || *j->s != ':') return jerr(j, "expected ':'");
			j->s++;
		}
		if (!jvalue(j)) return 0;
		ws(j);
		if (j->s < j->end && *j->s == ',') {
			j->s++;
			continue;
		}
		if (j->s < j->end && *j->s == close) {
			j->s++;
			j->depth--;
			return 1;
		}
		return jerr(j, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
	}
}

static int jvalue(json_t *j) {
	ws(j);
	if (j->s >= j->end) return jerr(j, "unexpected end of input");
	switch (*j->s) {
	case '{': return jcontainer(j, '}');
	case '[': return jcontainer(j, ']');
	case '"': return jstring(j, NULL, 0);
	case 't': return jliteral(j, "true");
	case 'f': return jliteral(j, "false");
	case 'n': return jliteral(j, "null");
	default: return jnumber(j, NULL);
	}
}

typedef struct {
	int is_object;
	char agent_socket[sizeof(((struct sockaddr_un *)0)->sun_path) + 64];
	const char *agent_socket_problem; /* NULL when agent_socket is usable */
	int timeout_s;
	int has_version;
	char version[64];
} netconf_t;

/* Checks that stdin is one JSON value and reads cniVersion, agentSocket, agentTimeoutSeconds of the root object. */
static const char *read_netconf(const char *text, size_t len, netconf_t *c, size_t *err_at) {
	json_t j = {text, text + len, NULL, 0};
	memset(c, 0, sizeof *c);
	c->agent_socket_problem = "required (a string)";
	c->timeout_s = 30;
	ws(&j);
	if (j.s < j.end && *j.s == '{') {
		c->is_object = 1;
		j.s++;
		ws(&j);
		if (j.s < j.end && *j.s == '}') j.s++;
		else
			for (;;) {
				char key[64];
				ws(&j);
				if (!jstring(&j, key, sizeof key)) break;
				ws(&j);
				if (j.s >= j.end || *j.s != ':') {
					jerr(&j, "expected ':'");
					break;
				}
				j.s++;
				ws(&j);
				int ok;
				int is_str = j.s < j.end && *j.s == '"';
				if (strcmp(key, "cniVersion") == 0 && is_str) {
					ok = jstring(&j, c->version, sizeof c->version);
					c->has_version = ok && c->version[0];
				} else if (strcmp(key, "agentSocket") == 0) {
					if (is_str) {
						ok = jstring(&j, c->agent_socket, sizeof c->agent_socket);
						size_t n = strlen(c->agent_socket);
						c->agent_socket_problem = c->agent_socket[0] != '/'                            ? "must be an absolute path"
									  : n >= sizeof(((struct sockaddr_un *)0)->sun_path) ? "longer than a unix socket path may be (107 bytes)"
																     : NULL;
					} else {
						ok = jvalue(&j);
						c->agent_socket_problem = "must be a string";
					}
				} else if (strcmp(key, "agentTimeoutSeconds") == 0 && j.s < j.end && (*j.s == '-' || (*j.s >= '0' && *j.s <= '9'))) {
					double v = 0;
					ok = jnumber(&j, &v);
					if (ok && v >= 1 && v <= 300) c->timeout_s = (int)v;
				} else
					ok = jvalue(&j);
				if (!ok) break;
				ws(&j);
				if (j.s < j.end && *j.s == ',') {
					j.s++;
					continue;
				}
				if (j.s < j.end && *j.s == '}') {
					j.s++;
					break;
				}
				jerr(&j, "expected ',' or '}'");
				break;
			}
	} else
		jvalue(&j);
	if (!j.err) {
		ws(&j);
		if (j.s < j.end) jerr(&j, "unexpected data after the JSON value");
	}
	*err_at = (size_t)(j.s - text);
	return j.err;
}

/* ---- the request ---------------------------------------------------------- */

static void query_param(buf_t *b, const char *name, int *first) {
	const char *v = getenv(name);
	if (!v) return;
	buf_str(b, *first ? "?" : "&");
	*first = 0;
	buf_str(b, name);
	buf_str(b, "=");
	for (const unsigned char *s = (const unsigned char *)v; *s; s++) {
		char pct[4];
		if ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || strchr("-._~", *s))
			buf_add(b, (const char *)s, 1);
		else {
			snprintf(pct, sizeof pct, "%%%02X", *s);
			buf_add(b, pct, 3);
		}
	}
}

static const char *errno_name(int e) {
	switch (e) {
	case ENOENT: return "ENOENT";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EACCES: return "EACCES";
	case EAGAIN: return "ETIMEDOUT";
	case ECONNRESET: return "ECONNRESET";
	case EPIPE: return "EPIPE";
	case ENOTSOCK: return "ENOTSOCK";
	default: return "EIO";
	}
}

static double now_ms(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1000.0 + (double)t.tv_nsec / 1e6;
}

/* The value of a response header (case-insensitive name), or NULL. */
static const char *header(const char *head, const char *name, char *out, size_t outsz) {
	size_t n = strlen(name);
	for (const char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
		const char *h = l + 2;
		if (strncasecmp(h, name, n) == 0 && h[n] == ':') {
			h += n + 1;
			while (*h == ' ') h++;
			size_t k = strcspn(h, "\r");
			if (k >= outsz) k = outsz - 1;
			memcpy(out, h, k);
			out[k] = 0;
			return out;
		}
	}
	return NULL;
}

int main(void) {
	double t0 = now_ms();
	const char *cmd = getenv("CNI_COMMAND");
	if (!cmd || !*cmd) fail(4, "CNI_COMMAND: not set (one of ADD, DEL, CHECK, VERSION)");
	int is_version = strcmp(cmd, "VERSION") == 0;
	if (!is_version && strcmp(cmd, "ADD") && strcmp(cmd, "DEL") && strcmp(cmd, "CHECK"))
		fail(4, "CNI_COMMAND: '%.40s' is not one of ADD, DEL, CHECK, VERSION", cmd);

	buf_t in = {0};
	for (;;) {
		buf_grow(&in, 65536);
		ssize_t r = read(0, in.p + in.len, in.cap - in.len - 1);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0) fail(5, "reading the network config on stdin: %s", strerror(errno));
		if (r == 0) break;
		in.len += (size_t)r;
		in.p[in.len] = 0;
		if (in.len > MAX_STDIN) fail(7, "invalid network config: (root): larger than %d bytes", MAX_STDIN);
	}
	netconf_t conf;
	size_t err_at = 0;
	const char *jerr_msg = read_netconf(in.p ? in.p : "", in.len, &conf, &err_at);
	if (!jerr_msg && conf.has_version) snprintf(cni_version, sizeof cni_version, "%s", conf.version);

	if (is_version) {
		/* Whatever stdin holds: its cniVersion when it has one. */
		buf_t b = {0};
		buf_str(&b, "{\"cniVersion\":\"");
		buf_json(&b, cni_version);
		buf_str(&b, "\",\"supportedVersions\":" SUPPORTED "}\n");
		write_all(1, b.p, b.len);
		return 0;
	}
	if (jerr_msg) fail(6, "network config on stdin is not JSON: %s at byte %zu", jerr_msg, err_at);
	if (!conf.is_object) fail(7, "invalid network config: (root): must be a JSON object");
	if (conf.agent_socket_problem) fail(7, "invalid network config: agentSocket: %s", conf.agent_socket_problem);

	/* The agent answers within its own deadline for each step (agentTimeoutSeconds); this one covers the whole call. */
	int timeout_s = conf.timeout_s * 2 + 10;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) fail(999, "socket: %s", strerror(errno));
	struct timeval tv = {.tv_sec = timeout_s};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, conf.agent_socket, strlen(conf.agent_socket) + 1);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		fail(11, "agent at %s is not reachable (%s): connect: %s", conf.agent_socket, errno_name(e), strerror(e));
	}

	buf_t req = {0};
	buf_str(&req, "POST /v1/cni");
	const char *vars[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};
	int first = 1;
	for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) query_param(&req, vars[i], &first);
	char head[160];
	snprintf(head, sizeof head, " HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", in.len);
	buf_str(&req, head);
	if (in.len) buf_add(&req, in.p, in.len);
	for (size_t off = 0; off < req.len;) {
		ssize_t w = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR) continue;
		if (w < 0) {
			int e = errno;
			fail(11, "agent at %s is not reachable (%s): sending the request: %s", conf.agent_socket, errno_name(e), strerror(e));
		}
		off += (size_t)w;
	}

	buf_t res = {0};
	for (;;) {
		buf_grow(&res, 65536);
		ssize_t r = recv(fd, res.p + res.len, res.cap - res.len - 1, 0);
		if (r < 0 && errno == EINTR) continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) fail(11, "agent at %s did not answer within %d s; try again later", conf.agent_socket, timeout_s);
		if (r < 0) {
			int e = errno;
			fail(11, "agent at %s is not reachable (%s): reading the answer: %s", conf.agent_socket, errno_name(e), strerror(e));
		}
		if (r == 0) break;
		res.len += (size_t)r;
		res.p[res.len] = 0;
		if (res.len > MAX_RESPONSE) fail(999, "the agent's answer is larger than %d bytes", MAX_RESPONSE);
	}
	close(fd);

	char *body = res.p ? strstr(res.p, "\r\n\r\n") : NULL;
	int status = 0;
	if (!body || sscanf(res.p, "HTTP/1.%*d %d", &status) != 1)
		fail(11, "agent at %s closed the connection without a complete answer; try again later", conf.agent_socket);
	*body = 0;
	body += 4;
	size_t body_len = res.len - (size_t)(body - res.p);
	char exit_code[16], agent_ms[32];
	if (status != 200 || !header(res.p, "X-Cni-Exit-Code", exit_code, sizeof exit_code))
		fail(999, "the agent at %s does not serve CNI requests (HTTP %d): %.300s", conf.agent_socket, status, body);
	write_all(1, body, body_len);
	if (getenv("CLUSTERMESH_CNI_TIMING") && strcmp(getenv("CLUSTERMESH_CNI_TIMING"), "1") == 0) {
		char line[128];
		int n = snprintf(line, sizeof line, "{\"totalMs\":%.3f,\"agentMs\":%s}\n", now_ms() - t0,
				 header(res.p, "X-Cni-Agent-Ms", agent_ms, sizeof agent_ms) ? agent_ms : "null");
		write_all(2, line, (size_t)n);
	}
	return atoi(exit_code);
}
