/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bench/services' connection-setup probe: a TCP connect, request, response,
 * close loop (netperf's TCP_CRR, with every transaction timed on its own).
 *
 *   crr server IP PORT            accept, read the request, answer, wait for
 *                                 the client's close, close; forever
 *   crr client IP PORT COUNT      COUNT transactions, one after the other;
 *                                 prints the nanoseconds of each, one a line
 *
 * A transaction is socket() .. close() on the client: the SYN, SYN-ACK, ACK
 * handshake, a 64-byte request and a 64-byte response (so the server's
 * accept and the first data segments in each direction are in it), and the
 * client's close. C and blocking sockets, so the figure is the network's and
 * the kernel's, not a runtime's event loop.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 64

static void die(const char *what, long i)
{
	fprintf(stderr, "crr: %s failed (transaction %ld): %s\n", what, i, strerror(errno));
	exit(1);
}

static int full(int fd, char *buf, size_t len, int rd)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = rd ? read(fd, buf + done, len - done) : write(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	char buf[MSG];
	int one = 1;

	if (argc < 4 || inet_pton(AF_INET, argv[2], &sa.sin_addr) != 1) {
		fprintf(stderr, "usage: crr server IP PORT | crr client IP PORT COUNT\n"
				"example: crr client 10.96.0.10 80 3000\n");
		return 2;
	}
	sa.sin_port = htons((unsigned short)atoi(argv[3]));
	memset(buf, 'x', sizeof(buf));

	if (strcmp(argv[1], "server") == 0) {
		int ls = socket(AF_INET, SOCK_STREAM, 0);
		if (ls < 0)
			die("socket", -1);
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(ls, 1024) < 0)
			die("bind/listen", -1);
		for (;;) {
			int c = accept(ls, NULL, NULL);
			if (c < 0) {
				if (errno == EINTR || errno == ECONNABORTED)
					continue;
				die("accept", -1);
			}
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			if (full(c, buf, MSG, 1) == 0 && full(c, buf, MSG, 0) == 0)
				while (read(c, buf, sizeof(buf)) > 0)
					;
			close(c);
		}
	}

	if (strcmp(argv[1], "client") == 0 && argc >= 5) {
		long count = atol(argv[4]);
		long long *ns = calloc((size_t)(count > 0 ? count : 1), sizeof(*ns));
		if (!ns)
			die("calloc", -1);
		for (long i = 0; i < count; i++) {
			long long t0 = now_ns();
			int s = socket(AF_INET, SOCK_STREAM, 0);
			if (s < 0)
				die("socket", i);
			setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			if (connect(s, (struct sockaddr *)&sa, sizeof(sa)) < 0)
				die("connect", i);
			if (full(s, buf, MSG, 0) < 0)
				die("write", i);
			if (full(s, buf, MSG, 1) < 0)
				die("read", i);
			close(s);
			ns[i] = now_ns() - t0;
		}
		for (long i = 0; i < count; i++)
			printf("%lld\n", ns[i]);
		return 0;
	}
	fprintf(stderr, "crr: unknown mode '%s' (server or client)\n", argv[1]);
	return 2;
}
