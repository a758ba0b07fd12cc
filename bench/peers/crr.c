/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TCP connect + request + response + close, one transaction at a time (what
 * netperf calls TCP_CRR; netperf is not packaged in Debian main). Compiled by
 * bench/peers/run.ts with clang into a temporary directory.
 *
 *   crr -s ADDR PORT            serve: accept, read 1 byte, answer 1 byte,
 *                               wait for the client's close, close
 *   crr -c ADDR PORT SECONDS    run transactions for SECONDS, then print
 *                               {"transactions":N,"seconds":S,"p50_us":..,"p99_us":..,"errors":E}
 *
 * The client closes first, so TIME_WAIT stays on its side: its namespace
 * needs net.ipv4.tcp_tw_reuse=1 to recycle ports at tens of thousands of
 * connections per second.
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

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static int parse_addr(const char *ip, const char *port, struct sockaddr_in *sa)
{
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((unsigned short)atoi(port));
	if (inet_pton(AF_INET, ip, &sa->sin_addr) != 1) {
		fprintf(stderr, "crr: '%s' is not an IPv4 address\n", ip);
		return -1;
	}
	return 0;
}

static int serve(const struct sockaddr_in *sa)
{
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
	char buf[64];

	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(ls, (const struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(ls, 4096) < 0) {
		perror("crr: listen");
		return 1;
	}
	for (;;) {
		int s = accept(ls, NULL, NULL);

		if (s < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("crr: accept");
			return 1;
		}
		if (read(s, buf, 1) == 1 && write(s, buf, 1) == 1)
			while (read(s, buf, sizeof(buf)) > 0)
				;
		close(s);
	}
}

static int client(const struct sockaddr_in *sa, double seconds)
{
	size_t cap = 1 << 16, n = 0;
	double *lat = malloc(cap * sizeof(*lat));
	double start = now_s(), end = start + seconds, t0, t1;
	unsigned long errors = 0;
	char c = 'x';

	if (!lat)
		return 1;
	for (t0 = start; t0 < end; t0 = t1) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		int ok = s >= 0 && connect(s, (const struct sockaddr *)sa, sizeof(*sa)) == 0 &&
			 write(s, &c, 1) == 1 && read(s, &c, 1) == 1;

		if (s >= 0)
			close(s);
		t1 = now_s();
		if (!ok) {
			if (++errors > 1000) {
				perror("crr: more than 1000 failed transactions, last");
				return 1;
			}
			continue;
		}
		if (n == cap) {
			double *bigger = realloc(lat, 2 * cap * sizeof(*lat));

			if (!bigger)
				return 1;
			lat = bigger;
			cap *= 2;
		}
		lat[n++] = (t1 - t0) * 1e6;
	}
	if (n == 0) {
		fprintf(stderr, "crr: no transaction completed\n");
		return 1;
	}
	qsort(lat, n, sizeof(*lat), cmp_double);
	printf("{\"transactions\":%zu,\"seconds\":%.6f,\"p50_us\":%.2f,\"p99_us\":%.2f,\"errors\":%lu}\n", n,
	       t1 - start, lat[(n - 1) / 2], lat[(size_t)((n - 1) * 0.99)], errors);
	return 0;
}

int main(int argc, char **argv)
{
	struct sockaddr_in sa;

	if (argc == 4 && strcmp(argv[1], "-s") == 0)
		return parse_addr(argv[2], argv[3], &sa) ? 2 : serve(&sa);
	if (argc == 5 && strcmp(argv[1], "-c") == 0 && atof(argv[4]) > 0)
		return parse_addr(argv[2], argv[3], &sa) ? 2 : client(&sa, atof(argv[4]));
	fprintf(stderr, "usage: crr -s ADDR PORT | crr -c ADDR PORT SECONDS\n"
			"example: crr -s 10.102.2.11 5301; crr -c 10.102.2.11 5301 4\n");
	return 2;
}
