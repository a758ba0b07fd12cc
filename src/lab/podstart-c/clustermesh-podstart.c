// clustermesh-podstart: how the lab's kubelet starts a container's command,
// in one process that ends by exec'ing it (same pid throughout):
//
//   1. --hold: wait for the line "run" on stdin (the kubelet records the pid
//      first; src/util/held-start.ts), then stdin becomes /dev/null. Any other
//      line, or EOF, exits 125 without running anything.
//   2. --cgroup DIR: join the node's cgroup (DIR/cgroup.procs), so the program
//      and every socket it opens belong to it from the start.
//   3. --netns NAME: enter the pod's network namespace as `ip netns exec` does:
//      setns to /run/netns/NAME, a mount namespace of its own (every mount a
//      slave), /sys remounted for that namespace, and each file of
//      /etc/netns/NAME bound over its /etc twin (the pod's resolv.conf).
//      Or --mount-ns slave|unchanged: only a mount namespace of its own
//      (hostNetwork pods with volumes).
//   4. --scratch DIR, --mount FLAGS SRC TARGET (repeated), --bidirectional SRC
//      (repeated): the container's bind mounts, made as src/lab/pod-spec.ts
//      (mountPlan) describes: every source bound on a tmpfs at DIR/t first, so
//      an overlay made later cannot hide it; a mount point the machine lacks
//      is made in an overlay over its deepest existing ancestor (the mounts
//      under it bound again inside), never on the machine; then each staged
//      source is moved onto its target. FLAGS: letters r (read-only),
//      f (the target is a file), R (recursive: submounts come along), or '-'.
//   5. exec PROGRAM with its arguments (PATH searched).
//
// It replaces a chain of sh, ip, unshare and mount(8) processes: a lab pod's
// start used to fork about twenty of them (issue 20).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <unistd.h>

#define HELD_NOT_RELEASED_EXIT 125
#define SETUP_FAILED_EXIT 126
#define MAX_MOUNTS 256
#define MAX_OVERLAYS 256

static const char *prog = "clustermesh-podstart";

static void say(const char *kind, const char *fmt, va_list ap) {
	fprintf(stderr, "%s: %s", prog, kind);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

// The setup failed: what and where on stderr (the container's log), and nothing runs.
static void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static void die(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	say("", fmt, ap);
	va_end(ap);
	exit(SETUP_FAILED_EXIT);
}

static void warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warn(const char *fmt, ...) {
	va_list ap;
	va_start(ap, fmt);
	say("warning: ", fmt, ap);
	va_end(ap);
}

static void usage(const char *why) __attribute__((noreturn));
static void usage(const char *why) {
	fprintf(stderr,
		"%s: %s\n"
		"usage: %s [--hold] [--cgroup DIR] [--netns NAME | --mount-ns slave|unchanged]\n"
		"         [--scratch DIR] [--mount FLAGS SRC TARGET]... [--bidirectional SRC]... -- PROGRAM [ARG...]\n"
		"The lab kubelet's container start (src/lab/podstart-c); FLAGS: r read-only, f file target, R recursive, or -.\n",
		prog, why, prog);
	exit(2);
}

// --- small path helpers -----------------------------------------------------

static char *xstrdup(const char *s) {
	char *r = strdup(s);
	if (!r) die("out of memory");
	return r;
}

static char *join2(const char *a, const char *b) {
	size_t la = strlen(a), lb = strlen(b);
	char *r = malloc(la + lb + 1);
	if (!r) die("out of memory");
	memcpy(r, a, la);
	memcpy(r + la, b, lb + 1);
	return r;
}

static char *fmt(const char *f, ...) __attribute__((format(printf, 1, 2)));
static char *fmt(const char *f, ...) {
	va_list ap;
	char *r;
	va_start(ap, f);
	if (vasprintf(&r, f, ap) < 0) die("out of memory");
	va_end(ap);
	return r;
}

// The parent of p ("/" for "/x", "." for "x").
static char *parent(const char *p) {
	const char *s = strrchr(p, '/');
	if (!s) return xstrdup(".");
	if (s == p) return xstrdup("/");
	return strndup(p, (size_t)(s - p));
}

static int exists(const char *p) {
	struct stat st;
	return stat(p, &st) == 0;
}

static int is_dir(const char *p) {
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// mkdir -p; dies on failure.
static void mkdir_p(const char *path) {
	char *p = xstrdup(path);
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, 0755) != 0 && errno != EEXIST) die("mkdir %s: %s", p, strerror(errno));
			*s = c;
			if (c == '\0') break;
		}
	}
	if (!is_dir(path)) die("mkdir %s: not a directory", path);
	free(p);
}

// An empty file at p (its parent made first) unless something is there.
static void touch_file(const char *p) {
	struct stat st;
	if (lstat(p, &st) == 0) return;
	char *up = parent(p);
	if (!is_dir(up)) mkdir_p(up);
	free(up);
	int fd = open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) die("create %s: %s", p, strerror(errno));
	close(fd);
}

static void do_mount(const char *src, const char *target, const char *type, unsigned long flags, const char *data) {
	if (mount(src, target, type, flags, data) != 0)
		die("mount %s on %s (%s, flags 0x%lx): %s", src ? src : "-", target, type ? type : "bind/move", flags, strerror(errno));
}

// --- the mount table ----------------------------------------------------------

// A mountinfo field unescaped (\040 space, \011 tab, \012 newline, \134 backslash).
static char *unescape(const char *s, size_t n) {
	char *r = malloc(n + 1), *o = r;
	if (!r) die("out of memory");
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '\\' && i + 3 < n && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
			*o++ = (char)((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
			i += 3;
		} else
			*o++ = s[i];
	}
	*o = '\0';
	return r;
}

// The mount points of this mount namespace (field 5 of /proc/self/mountinfo), in table order.
static char **mount_points(size_t *count) {
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f) die("open /proc/self/mountinfo: %s", strerror(errno));
	char **out = NULL;
	size_t n = 0, cap = 0;
	char *line = NULL;
	size_t len = 0;
	while (getline(&line, &len, f) > 0) {
		// id parent major:minor root mountpoint ...
		char *p = line;
		for (int field = 0; field < 4 && p; field++) {
			p = strchr(p, ' ');
			if (p) p++;
		}
		if (!p) continue;
		char *e = strchr(p, ' ');
		if (!e) continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			out = realloc(out, cap * sizeof *out);
			if (!out) die("out of memory");
		}
		out[n++] = unescape(p, (size_t)(e - p));
	}
	free(line);
	fclose(f);
	*count = n;
	return out;
}

// p is dir or below it (dir "/" holds everything).
static int under(const char *p, const char *dir) {
	if (strcmp(dir, "/") == 0) return 1;
	size_t n = strlen(dir);
	return strncmp(p, dir, n) == 0 && (p[n] == '\0' || p[n] == '/');
}

// --- mount points the machine lacks: overlays ----------------------------------

static const char *scratch;
static char *overlays[MAX_OVERLAYS];
static int n_overlays;
static char cwd_at_start[PATH_MAX];

static int inside_overlay(const char *a) {
	for (int i = 0; i < n_overlays; i++)
		if (under(a, overlays[i])) return 1;
	return 0;
}

// An overlay over the existing directory a (upper and work dir on the tmpfs at
// scratch/t), mounted at scratch/r with the top mounts that were under a bound
// again inside it (recursively: theirs come along), then moved onto a -- or,
// when a is "/", made the root with pivot_root. a's contents show through, and
// what is created in it stays in this mount namespace.
static void overlay(const char *a) {
	if (n_overlays == MAX_OVERLAYS) die("more than %d overlays", MAX_OVERLAYS);
	char *d = fmt("%s/t/%d", scratch, n_overlays + 1);
	char *upper = join2(d, "/upper"), *work = join2(d, "/work");
	mkdir_p(upper);
	mkdir_p(work);
	char *r = join2(scratch, "/r");
	char *opts = fmt("lowerdir=%s,upperdir=%s,workdir=%s", a, upper, work);
	do_mount("clustermesh-lab", r, "overlay", 0, opts);

	size_t n;
	char **mp = mount_points(&n);
	int root = strcmp(a, "/") == 0;
	// The mounts strictly under a (not the new overlay), keeping only the top ones.
	char **sel = calloc(n ? n : 1, sizeof *sel);
	size_t ns = 0;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(mp[i], a) == 0 || strcmp(mp[i], r) == 0 || !under(mp[i], a)) continue;
		int dup = 0;
		for (size_t k = 0; k < ns && !dup; k++) dup = strcmp(sel[k], mp[i]) == 0;
		if (!dup) sel[ns++] = mp[i];
	}
	for (size_t i = 0; i < ns; i++) {
		int top = 1;
		for (size_t k = 0; k < ns && top; k++)
			if (k != i && under(sel[i], sel[k]) && strcmp(sel[i], sel[k]) != 0) top = 0;
		if (!top) continue;
		const char *m = sel[i];
		char *t = root ? join2(r, m) : join2(r, m + strlen(a));
		if (is_dir(m)) {
			if (!is_dir(t)) mkdir_p(t);
		} else
			touch_file(t);
		// As the shell version did, a mount that cannot be bound again is said and skipped.
		if (mount(m, t, NULL, MS_BIND | MS_REC, NULL) != 0) warn("bind %s again inside the overlay over %s: %s", m, a, strerror(errno));
		free(t);
	}
	free(sel);
	for (size_t i = 0; i < n; i++) free(mp[i]);
	free(mp);

	if (root) {
		if (chdir(r) != 0) die("chdir %s: %s", r, strerror(errno));
		char *old = fmt(".%s/old", scratch);
		if (syscall(SYS_pivot_root, ".", old) != 0) die("pivot_root into the overlay at %s: %s", r, strerror(errno));
		free(old);
		char *oldAbs = join2(scratch, "/old");
		if (umount2(oldAbs, MNT_DETACH) != 0) die("umount %s: %s", oldAbs, strerror(errno));
		free(oldAbs);
		if (chdir(cwd_at_start) != 0 && chdir("/") != 0) die("chdir /: %s", strerror(errno));
	} else
		do_mount(r, a, NULL, MS_MOVE, NULL);
	overlays[n_overlays++] = xstrdup(a);
	free(d), free(upper), free(work), free(r), free(opts);
}

// Makes the mount point t (a file when file) where the machine has none,
// without creating anything on the machine.
static void point(const char *t, int file) {
	struct stat st;
	if (lstat(t, &st) == 0) return;
	char *a = parent(t);
	while (!exists(a)) {
		char *up = parent(a);
		free(a);
		a = up;
	}
	char real[PATH_MAX];
	if (!realpath(a, real)) die("realpath %s: %s", a, strerror(errno));
	free(a);
	if (!inside_overlay(real)) overlay(real);
	if (file)
		touch_file(t);
	else
		mkdir_p(t);
}

// --- the steps ------------------------------------------------------------------

struct bind {
	const char *src, *target;
	int ro, file, rec;
};

static void hold(void) {
	char buf[64];
	size_t n = 0;
	for (;;) {
		char c;
		ssize_t r = read(0, &c, 1);
		if (r < 0 && errno == EINTR) continue;
		if (r <= 0) exit(HELD_NOT_RELEASED_EXIT);
		if (c == '\n') break;
		if (n == sizeof buf - 1) exit(HELD_NOT_RELEASED_EXIT);
		buf[n++] = c;
	}
	buf[n] = '\0';
	if (strcmp(buf, "run") != 0) exit(HELD_NOT_RELEASED_EXIT);
	int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || dup2(fd, 0) < 0) die("stdin from /dev/null: %s", strerror(errno));
	close(fd);
}

static void join_cgroup(const char *dir) {
	char *p = join2(dir, "/cgroup.procs");
	int fd = open(p, O_WRONLY | O_CLOEXEC);
	if (fd < 0) die("join cgroup %s: %s", dir, strerror(errno));
	if (dprintf(fd, "%d\n", getpid()) < 0) die("join cgroup %s: %s", dir, strerror(errno));
	if (close(fd) != 0) die("join cgroup %s: %s", dir, strerror(errno));
	free(p);
}

// What `ip netns exec NAME` does before it execs.
static void enter_netns(const char *name) {
	if (strchr(name, '/') || !*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) die("bad network namespace name '%s'", name);
	char *p = join2("/run/netns/", name);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0) die("network namespace %s: %s", p, strerror(errno));
	if (setns(fd, CLONE_NEWNET) != 0) die("setns %s: %s", p, strerror(errno));
	close(fd);
	free(p);
	if (unshare(CLONE_NEWNS) != 0) die("unshare the mount namespace: %s", strerror(errno));
	do_mount("", "/", "none", MS_SLAVE | MS_REC, NULL);
	// A /sys that describes the pod's network namespace.
	unsigned long flags = 0;
	if (umount2("/sys", MNT_DETACH) != 0) {
		struct statvfs sv;
		if (statvfs("/sys", &sv) == 0 && (sv.f_flag & ST_RDONLY)) flags = MS_RDONLY;
	}
	do_mount(name, "/sys", "sysfs", flags, NULL);
	// /etc/netns/NAME/x over /etc/x.
	char *etc = join2("/etc/netns/", name);
	DIR *d = opendir(etc);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
			char *src = fmt("%s/%s", etc, e->d_name), *dst = fmt("/etc/%s", e->d_name);
			if (mount(src, dst, "none", MS_BIND, NULL) != 0) warn("bind %s on %s: %s", src, dst, strerror(errno));
			free(src), free(dst);
		}
		closedir(d);
	}
	free(etc);
}

static void own_mount_ns(const char *propagation) {
	if (unshare(CLONE_NEWNS) != 0) die("unshare the mount namespace: %s", strerror(errno));
	if (strcmp(propagation, "slave") == 0) do_mount("none", "/", NULL, MS_SLAVE | MS_REC, NULL);
}

// Every mount a slave but the bidirectional sources (and what is under them),
// which stay peers of the machine's, so what the container mounts there shows outside.
static void slaves_but(char **bidi, int nb) {
	size_t n;
	char **mp = mount_points(&n);
	for (size_t i = 0; i < n; i++) {
		int keep = 0;
		for (int k = 0; k < nb && !keep; k++) keep = under(mp[i], bidi[k]);
		if (!keep) mount(NULL, mp[i], NULL, MS_SLAVE, NULL); // as before: a mount that refuses stays as it is
		free(mp[i]);
	}
	free(mp);
}

static void make_mounts(struct bind *b, int nb) {
	// Staging: a tmpfs of this namespace at scratch/t; each source bound at t/src/i.
	char *t = join2(scratch, "/t");
	const char *dirs[] = {"/t", "/r", "/old"};
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		char *p = join2(scratch, dirs[i]);
		if (!is_dir(p)) mkdir_p(p);
		free(p);
	}
	do_mount("clustermesh-lab", t, "tmpfs", 0, "mode=0700");
	char **staged = calloc((size_t)nb + 1, sizeof *staged);
	for (int i = 0; i < nb; i++) {
		staged[i] = fmt("%s/src/%d", t, i);
		if (b[i].file)
			touch_file(staged[i]);
		else
			mkdir_p(staged[i]);
		do_mount(b[i].src, staged[i], NULL, MS_BIND | (b[i].rec ? MS_REC : 0), NULL);
		// A plain read-only bind is read-only from its staging on; a recursive one after its move.
		if (b[i].ro && !b[i].rec) do_mount(NULL, staged[i], NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
	}
	// A target under an earlier target gets its mount point inside that volume.
	int *nested = calloc((size_t)nb + 1, sizeof *nested);
	for (int i = 0; i < nb; i++)
		for (int k = 0; k < i && !nested[i]; k++) nested[i] = under(b[i].target, b[k].target);
	for (int i = 0; i < nb; i++)
		if (!nested[i]) point(b[i].target, b[i].file);
	for (int i = 0; i < nb; i++) {
		if (nested[i]) {
			if (b[i].file)
				touch_file(b[i].target);
			else if (!is_dir(b[i].target))
				mkdir_p(b[i].target);
		}
		do_mount(staged[i], b[i].target, NULL, MS_MOVE, NULL);
		if (b[i].ro && b[i].rec) do_mount(NULL, b[i].target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
		free(staged[i]);
	}
	free(staged);
	free(nested);
	free(t);
}

int main(int argc, char **argv) {
	int do_hold = 0, nb = 0, nbidi = 0;
	const char *cgroup = NULL, *netns = NULL, *mountns = NULL;
	static struct bind binds[MAX_MOUNTS];
	static char *bidi[MAX_MOUNTS];
	int i = 1;
	for (; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--") == 0) {
			i++;
			break;
		}
		if (strcmp(a, "--hold") == 0)
			do_hold = 1;
		else if (strcmp(a, "--cgroup") == 0 && i + 1 < argc)
			cgroup = argv[++i];
		else if (strcmp(a, "--netns") == 0 && i + 1 < argc)
			netns = argv[++i];
		else if (strcmp(a, "--mount-ns") == 0 && i + 1 < argc) {
			mountns = argv[++i];
			if (strcmp(mountns, "slave") != 0 && strcmp(mountns, "unchanged") != 0) usage("--mount-ns takes slave or unchanged");
		} else if (strcmp(a, "--scratch") == 0 && i + 1 < argc)
			scratch = argv[++i];
		else if (strcmp(a, "--bidirectional") == 0 && i + 1 < argc) {
			if (nbidi == MAX_MOUNTS) usage("too many --bidirectional");
			bidi[nbidi++] = argv[++i];
		} else if (strcmp(a, "--mount") == 0 && i + 3 < argc) {
			if (nb == MAX_MOUNTS) usage("too many --mount");
			const char *f = argv[++i];
			struct bind *b = &binds[nb++];
			b->src = argv[++i];
			b->target = argv[++i];
			for (const char *c = f; *c; c++) {
				if (*c == 'r')
					b->ro = 1;
				else if (*c == 'f')
					b->file = 1;
				else if (*c == 'R')
					b->rec = 1;
				else if (*c != '-')
					usage("--mount FLAGS are letters of r, f, R (or -)");
			}
			if (b->target[0] != '/') usage("a --mount TARGET must be an absolute path");
		} else
			usage(fmt("unknown or incomplete option '%s'", a));
	}
	if (i >= argc) usage("no program to run (after --)");
	if (netns && mountns) usage("--netns gives a mount namespace already; --mount-ns is for the node's network namespace");
	if (nb && !scratch) usage("--mount needs --scratch");
	if (scratch && scratch[0] != '/') usage("--scratch must be an absolute path");
	if (nb && !netns && !mountns) usage("--mount needs a mount namespace of its own (--netns or --mount-ns)");
	if (!getcwd(cwd_at_start, sizeof cwd_at_start)) strcpy(cwd_at_start, "/");

	if (do_hold) hold();
	if (cgroup) join_cgroup(cgroup);
	if (netns) enter_netns(netns);
	if (mountns) own_mount_ns(mountns);
	if (nbidi) slaves_but(bidi, nbidi);
	if (nb) make_mounts(binds, nb);
	execvp(argv[i], &argv[i]);
	fprintf(stderr, "%s: exec %s: %s\n", prog, argv[i], strerror(errno));
	return errno == ENOENT ? 127 : 126;
}
