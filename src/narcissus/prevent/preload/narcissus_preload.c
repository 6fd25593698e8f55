/*
 * narcissus_preload.c: refuse TCP/UDP self-connects in any dynamically linked program.
 *
 * Loaded with LD_PRELOAD (Linux) or DYLD_INSERT_LIBRARIES (macOS), this library wraps libc's
 * connect(). When a connect() to an IPv4/IPv6 address succeeds, or returns EINPROGRESS (on
 * loopback a self-connect is already complete then), and the socket turns out to be connected to
 * its own address and port, the connection is reset the way narcissus's Python guard resets it
 * (src/narcissus/prevent/guard/check.py) and the call fails with ECONNREFUSED: the truth, since nothing
 * listens there. Every other call passes through untouched, errno included.
 *
 * What it cannot see: code that makes the connect system call itself (Go, static binaries,
 * io_uring), a connect made by sendto(MSG_FASTOPEN), and programs the dynamic loader starts in
 * secure mode (setuid); `narcissus run` says so for the command it starts.
 *
 * The hot path: only a destination port inside the ephemeral range can be handed out as the
 * client's own source port, so for any other port the wrapper adds one comparison (and a read of
 * the coarse monotonic clock, to know the cached range is fresh). Inside the range it adds one
 * getsockname(); only equal ports pay for getpeername() and the rest. The range is that of the
 * network namespace the process is in (see port_at_risk()).
 *
 * Linux is where this is built and tested; the macOS parts (dyld interposing, the reset by
 * dup2) follow the same design but have not run here.
 *
 * Rules kept throughout: no allocation, no stdio, no locks (atomics only); every function the
 * wrapper calls after libc's connect() is async-signal-safe (getenv aside, and only once a
 * self-connect was found); errno is what libc's connect() left unless the call is refused.
 *
 * Settings, read from the environment when the library loads (as the Python guard reads them):
 *   NARCISSUS_GUARD          "0" or empty: do nothing (unset: on)
 *   NARCISSUS_GUARD_RETRIES  0-100: connect again on the same (blocking) socket after a
 *                            self-connect, up to this many times (default 0)
 *   NARCISSUS_GUARD_REPORT   "text" or "json": one line on stderr per self-connect prevented
 *                            (unset: silent), in the Python guard's format
 *   NARCISSUS_GUARD_PYTHON   set by the Python guard of this process (see python_guards())
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#define EXPORT __attribute__((visibility("default")))
#define MAX_RETRIES 100
/* How long a cached ephemeral range is trusted before /proc is read again. Reading it costs
 * ~1.6 us, so even a program connecting flat out pays < 0.02% for re-reading every 10 ms. */
#define RANGE_TTL_NS 10000000LL

enum report_form { REPORT_NONE, REPORT_TEXT, REPORT_JSON };

typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);

/* ------------------------------------------------------------------ settings */

static atomic_int ready;                 /* 1 once settings and real_connect are known */
static _Atomic(connect_fn) real_connect; /* libc's (or the next preloaded library's) connect */
static atomic_int enabled;
static atomic_int retries;
static atomic_int report_form;

static int parse_retries(const char *text) {
    int value = 0;
    if (text == NULL || *text == '\0')
        return 0;
    for (; *text; text++) {
        if (*text < '0' || *text > '9' || value > MAX_RETRIES)
            return 0; /* the Python guard warns about a bad value; here it is just 0 */
        value = value * 10 + (*text - '0');
    }
    return value <= MAX_RETRIES ? value : 0;
}

#ifdef __linux__
static int raw_connect(int fd, const struct sockaddr *addr, socklen_t len) {
    return (int)syscall(SYS_connect, fd, addr, len);
}
#endif

/* Idempotent: the constructor calls it, and so does connect() when another library's
 * constructor connects before ours ran. Concurrent first calls store the same values. */
static void initialise(void) {
    const char *guard = getenv("NARCISSUS_GUARD");
    const char *report = getenv("NARCISSUS_GUARD_REPORT");
    int form = REPORT_NONE;

    if (report != NULL && strcmp(report, "text") == 0)
        form = REPORT_TEXT;
    else if (report != NULL && strcmp(report, "json") == 0)
        form = REPORT_JSON;
    atomic_store_explicit(&report_form, form, memory_order_relaxed);
    atomic_store_explicit(&retries, parse_retries(getenv("NARCISSUS_GUARD_RETRIES")),
                          memory_order_relaxed);
    atomic_store_explicit(&enabled,
                          !(guard != NULL && (guard[0] == '\0' || strcmp(guard, "0") == 0)),
                          memory_order_relaxed);
#ifndef __APPLE__
    {
        /* dlsym returns void *; POSIX guarantees it converts to a function pointer. */
        void *next = dlsym(RTLD_NEXT, "connect");
        connect_fn found;
        memcpy(&found, &next, sizeof found);
#ifdef __linux__
        if (found == NULL)
            found = raw_connect; /* no libc connect below us: make the system call */
#endif
        atomic_store_explicit(&real_connect, found, memory_order_relaxed);
    }
#else
    atomic_store_explicit(&real_connect, (connect_fn)connect, memory_order_relaxed);
#endif
    atomic_store_explicit(&ready, 1, memory_order_release);
}

__attribute__((constructor)) static void on_load(void) { initialise(); }

/* ------------------------------------------------------------------ the ephemeral range */

/* low | high << 16 of the range last read; 0: unknown, so every port counts as at risk. */
static _Atomic uint32_t range_packed;
static _Atomic int64_t range_expires; /* CLOCK_MONOTONIC_COARSE, ns */

#ifdef __linux__
/* "32768\t60999\n" -> low | high << 16, or 0 if it does not read as two ports. Raw system calls:
 * open() and read() are cancellation points, and a thread cancelled here would leak the fd. */
static uint32_t read_range(void) {
    char text[64];
    unsigned long port[2] = {0, 0};
    int which = 0, digits = 0;
    long count;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/sys/net/ipv4/ip_local_port_range",
                          O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return 0;
    count = syscall(SYS_read, fd, text, sizeof text - 1);
    syscall(SYS_close, fd);
    for (long i = 0; i < count && which < 2; i++) {
        if (text[i] >= '0' && text[i] <= '9') {
            port[which] = port[which] * 10 + (unsigned long)(text[i] - '0');
            if (port[which] > 65535)
                return 0;
            digits++;
        } else if (digits) {
            which++;
            digits = 0;
        }
    }
    if (which < 2 && digits)
        which++;
    if (which != 2 || port[0] == 0 || port[0] > port[1])
        return 0;
    return (uint32_t)port[0] | (uint32_t)port[1] << 16;
}

static int64_t coarse_now(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now); /* vDSO: ~5 ns, no system call */
    return (int64_t)now.tv_sec * 1000000000LL + now.tv_nsec;
}

/* Could the OS hand a client `port` (host order) as its source port? The range belongs to the
 * network namespace of the thread that last read it; a change (or a thread that moved to
 * another namespace) is noticed within RANGE_TTL_NS. */
static int port_at_risk(unsigned port) {
    int64_t now = coarse_now();
    uint32_t range;

    if (now >= atomic_load_explicit(&range_expires, memory_order_relaxed)) {
        atomic_store_explicit(&range_packed, read_range(), memory_order_relaxed);
        atomic_store_explicit(&range_expires, now + RANGE_TTL_NS, memory_order_relaxed);
    }
    range = atomic_load_explicit(&range_packed, memory_order_relaxed);
    return range == 0 || (port >= (range & 0xffff) && port <= range >> 16);
}
#else
static int port_at_risk(unsigned port) {
    (void)port; /* no cheap way to read the range here: check every port */
    return 1;
}
#endif

/* ------------------------------------------------------------------ addresses */

/* The destination port of an AF_INET/AF_INET6 address (host order), or 0 for anything else. */
static unsigned target_port(const struct sockaddr *addr, socklen_t len) {
    in_port_t port;

    if (addr == NULL || len < (socklen_t)(offsetof(struct sockaddr_in, sin_port) + sizeof port))
        return 0;
    if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)
        return 0;
    memcpy(&port, (const char *)addr + offsetof(struct sockaddr_in, sin_port), sizeof port);
    return ntohs(port);
}

/* Same family, address, port (and IPv6 scope)? The IPv6 flow label is not part of it. With
 * `any_is_local`, an unspecified address in `b` (a connect to 0.0.0.0 or ::) matches any. */
static int same_endpoint(const struct sockaddr_storage *a, const struct sockaddr *b,
                         socklen_t b_len, int any_is_local) {
    if (a->ss_family != b->sa_family)
        return 0;
    if (a->ss_family == AF_INET && b_len >= (socklen_t)sizeof(struct sockaddr_in)) {
        struct sockaddr_in x, y;
        memcpy(&x, a, sizeof x);
        memcpy(&y, b, sizeof y);
        return x.sin_port == y.sin_port &&
               (x.sin_addr.s_addr == y.sin_addr.s_addr ||
                (any_is_local && y.sin_addr.s_addr == htonl(INADDR_ANY)));
    }
    if (a->ss_family == AF_INET6 && b_len >= (socklen_t)offsetof(struct sockaddr_in6, sin6_scope_id)) {
        struct sockaddr_in6 x, y;
        memset(&y, 0, sizeof y);
        memcpy(&x, a, sizeof x);
        memcpy(&y, b, b_len < (socklen_t)sizeof y ? b_len : sizeof y);
        if (x.sin6_port != y.sin6_port)
            return 0;
        if (any_is_local && IN6_IS_ADDR_UNSPECIFIED(&y.sin6_addr))
            return 1;
        return memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0 &&
               x.sin6_scope_id == y.sin6_scope_id;
    }
    return 0;
}

/* Is `fd` (just connected to `target`) connected to its own address and port? `*local` gets
 * its address and `*type` its socket type. `in_progress`: connect() returned EINPROGRESS. */
static int self_connected(int fd, const struct sockaddr *target, socklen_t target_len,
                          int in_progress, struct sockaddr_storage *local, int *type) {
    struct sockaddr_storage peer;
    socklen_t local_len = sizeof *local, peer_len = sizeof peer, type_len = sizeof *type;

    if (getsockname(fd, (struct sockaddr *)local, &local_len) != 0)
        return 0;
    if (target_port((const struct sockaddr *)local, local_len) != target_port(target, target_len))
        return 0; /* every ordinary connection ends here */
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, type, &type_len) != 0 ||
        (*type != SOCK_STREAM && *type != SOCK_DGRAM))
        return 0;
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0)
        return same_endpoint(local, (const struct sockaddr *)&peer, peer_len, 0);
    /* Still in SYN_SENT (its own SYN not yet looped back, as under heavy softirq load): the
     * peer is then the target itself, and a source equal to the target can only end in a
     * self-connect, since no port a listener holds is ever handed to a client. */
    return in_progress && errno == ENOTCONN && same_endpoint(local, target, target_len, 1);
}

/* ------------------------------------------------------------------ the reset */

/* Drop the connection and keep the descriptor, unconnected, as a refused connect leaves it.
 * Linux: connect(AF_UNSPEC) (tcp_disconnect/udp_disconnect) sends RST, goes straight to CLOSE
 * (no TIME_WAIT holding the port the real server needs) and releases an unbound socket's port;
 * the pending ECONNRESET is then cleared so the caller does not see it. Elsewhere: a fresh
 * socket takes over the caller's descriptor number (dup2) and the old one is closed with
 * SO_LINGER 0 (RST, no TIME_WAIT); closing the caller's descriptor itself would free a number
 * that another thread could reuse before its owner closes it again. */
static int reset(int fd, int family, int type) {
#ifdef __linux__
    connect_fn real = atomic_load_explicit(&real_connect, memory_order_relaxed);
    struct sockaddr unspec;
    int pending;
    socklen_t len = sizeof pending;

    memset(&unspec, 0, sizeof unspec);
    unspec.sa_family = AF_UNSPEC;
    if (real(fd, &unspec, sizeof unspec) == 0) {
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &pending, &len);
        return 1;
    }
#endif
    {
        struct linger abort_on_close = {1, 0};
        int status_flags = fcntl(fd, F_GETFL), fd_flags = fcntl(fd, F_GETFD);
        int fresh = socket(family, type, 0), old = dup(fd);

        if (fresh < 0 || old < 0 || status_flags < 0 || fd_flags < 0) {
            if (fresh >= 0)
                close(fresh);
            if (old >= 0)
                close(old);
            return 0;
        }
        setsockopt(old, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
        dup2(fresh, fd); /* atomically: the caller's number now names the fresh socket */
        fcntl(fd, F_SETFL, status_flags);
        fcntl(fd, F_SETFD, fd_flags);
        close(fresh);
        close(old); /* the last reference: RST */
        return 1;
    }
}

/* ------------------------------------------------------------------ the report */

/* A line built in a caller's buffer without stdio (snprintf is not async-signal-safe). */
struct line {
    char *at, *end;
};

static void put(struct line *line, const char *text, size_t len) {
    if (len > (size_t)(line->end - line->at))
        len = (size_t)(line->end - line->at);
    memcpy(line->at, text, len);
    line->at += len;
}

static void put_text(struct line *line, const char *text) { put(line, text, strlen(text)); }

static void put_number(struct line *line, unsigned long value, unsigned base, int width) {
    char digits[24];
    int count = 0;

    do {
        digits[sizeof digits - 1 - count++] = "0123456789abcdef"[value % base];
        value /= base;
    } while (value && count < (int)sizeof digits);
    while (count < width && count < (int)sizeof digits)
        digits[sizeof digits - 1 - count++] = '0';
    put(line, digits + sizeof digits - count, (size_t)count);
}

static void put_ipv4(struct line *line, const unsigned char *bytes) {
    for (int i = 0; i < 4; i++) {
        if (i)
            put_text(line, ".");
        put_number(line, bytes[i], 10, 1);
    }
}

/* As inet_ntop() writes it (and so Python's getsockname()): the longest run of two or more
 * zero groups (the first of equals) becomes "::"; ::ffff:a.b.c.d and ::a.b.c.d keep the
 * IPv4 address dotted. */
static void put_ipv6(struct line *line, const unsigned char *bytes) {
    unsigned words[8];
    int best = -1, best_len = 0;

    for (int i = 0; i < 8; i++)
        words[i] = (unsigned)bytes[2 * i] << 8 | bytes[2 * i + 1];
    for (int i = 0; i < 8;) {
        int run = 0;
        while (i + run < 8 && words[i + run] == 0)
            run++;
        if (run > best_len) {
            best = i;
            best_len = run;
        }
        i += run ? run : 1;
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (best >= 0 && i >= best && i < best + best_len) {
            if (i == best)
                put_text(line, ":");
            continue;
        }
        if (i)
            put_text(line, ":");
        if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))) {
            put_ipv4(line, bytes + 12);
            return;
        }
        put_number(line, words[i], 16, 1);
    }
    if (best >= 0 && best + best_len == 8)
        put_text(line, ":");
}

static void put_address(struct line *line, const struct sockaddr_storage *local) {
    if (local->ss_family == AF_INET) {
        struct sockaddr_in v4;
        memcpy(&v4, local, sizeof v4);
        put_ipv4(line, (const unsigned char *)&v4.sin_addr);
    } else {
        struct sockaddr_in6 v6;
        memcpy(&v6, local, sizeof v6);
        put_ipv6(line, (const unsigned char *)&v6.sin6_addr);
        if (v6.sin6_scope_id) { /* Python names the interface; a number is what is at hand */
            put_text(line, "%");
            put_number(line, v6.sin6_scope_id, 10, 1);
        }
    }
}

/* The length of the well-formed UTF-8 sequence at `s` (Unicode's table 3-7), or 0. */
static int utf8_length(const unsigned char *s, size_t left) {
    unsigned char lo = 0x80, hi = 0xbf;
    int len;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if ((size_t)len > left || s[1] < lo || s[1] > hi)
        return 0;
    for (int i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

static void put_u_escape(struct line *line, unsigned unit) {
    put_text(line, "\\u");
    put_number(line, unit, 16, 4);
}

/* `text` as a JSON string the way Python's json.dumps() writes the program name: ASCII only;
 * bytes that are not UTF-8 as the lone surrogates Python's surrogateescape made of them. */
static void put_json_string(struct line *line, const char *text) {
    const unsigned char *s = (const unsigned char *)text;
    size_t left = strlen(text);

    put_text(line, "\"");
    while (left) {
        int len = utf8_length(s, left);
        unsigned code;

        if (len == 0) {
            put_u_escape(line, 0xdc00u | s[0]);
            s++, left--;
            continue;
        }
        if (len == 1) {
            char c = (char)s[0];
            const char *escape = c == '"'    ? "\\\""
                                 : c == '\\' ? "\\\\"
                                 : c == '\n' ? "\\n"
                                 : c == '\r' ? "\\r"
                                 : c == '\t' ? "\\t"
                                 : c == '\b' ? "\\b"
                                 : c == '\f' ? "\\f"
                                             : NULL;
            if (escape)
                put_text(line, escape);
            else if (s[0] < 0x20 || s[0] == 0x7f)
                put_u_escape(line, s[0]);
            else
                put(line, &c, 1);
            s++, left--;
            continue;
        }
        code = s[0] & (0x7fu >> len);
        for (int i = 1; i < len; i++)
            code = code << 6 | (s[i] & 0x3fu);
        if (code > 0xffff) {
            code -= 0x10000;
            put_u_escape(line, 0xd800u | code >> 10);
            put_u_escape(line, 0xdc00u | (code & 0x3ffu));
        } else {
            put_u_escape(line, code);
        }
        s += len, left -= (size_t)len;
    }
    put_text(line, "\"");
}

static const char *program_name(void) {
#ifdef __APPLE__
    const char *name = getprogname();
#else
    const char *name = program_invocation_short_name;
#endif
    return name != NULL ? name : "";
}

/* One line on stderr, in the format of narcissus.core.selfconnect.event_line(), with one write(). */
static void report(int form, const struct sockaddr_storage *local, int type) {
    char buffer[2048], program[256];
    struct line line = {buffer, buffer + sizeof buffer - 1};
    int v6 = local->ss_family == AF_INET6;
    unsigned port = target_port((const struct sockaddr *)local, sizeof *local);
    const char *transport = type == SOCK_DGRAM ? "udp" : "tcp";
    unsigned long pid = (unsigned long)getpid();
    size_t length = strlen(program_name());

    if (length >= sizeof program) /* an absurdly long argv[0]: cut it, keep the line whole */
        length = sizeof program - 1;
    memcpy(program, program_name(), length);
    program[length] = '\0';
    if (form == REPORT_JSON) {
        put_text(&line, "{\"event\": \"self-connect-prevented\", \"pid\": ");
        put_number(&line, pid, 10, 1);
        put_text(&line, ", \"program\": ");
        put_json_string(&line, program);
        put_text(&line, ", \"address\": \"");
        put_address(&line, local);
        put_text(&line, "\", \"port\": ");
        put_number(&line, port, 10, 1);
        put_text(&line, v6 ? ", \"family\": \"ipv6\"" : ", \"family\": \"ipv4\"");
        put_text(&line, ", \"transport\": \"");
        put_text(&line, transport);
        put_text(&line, "\"}");
    } else {
        put_text(&line, "narcissus: prevented a self-connect to ");
        put_text(&line, v6 ? "[" : "");
        put_address(&line, local);
        put_text(&line, v6 ? "]:" : ":");
        put_number(&line, port, 10, 1);
        put_text(&line, " (");
        put_text(&line, transport);
        put_text(&line, ") in ");
        put_text(&line, program);
        put_text(&line, " (pid ");
        put_number(&line, pid, 10, 1);
        put_text(&line, "): nothing listened there and the OS gave the client the same port; "
                        "the program was told 'connection refused'. Fix it for good: "
                        "narcissus doctor --port ");
        put_number(&line, port, 10, 1);
    }
    *line.at++ = '\n';
    for (const char *at = buffer; at < line.at;) {
        ssize_t written = write(STDERR_FILENO, at, (size_t)(line.at - at));
        if (written > 0)
            at += written;
        else if (!(written < 0 && errno == EINTR))
            break; /* stderr closed or full: the connect matters more than the report */
    }
}

/* ------------------------------------------------------------------ the Python guard */

static int hex_digit(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static const char *parse_hex(const char *s, uintptr_t *value) {
    int digit;
    *value = 0;
    if (hex_digit(*s) < 0)
        return NULL;
    while ((digit = hex_digit(*s)) >= 0)
        *value = *value << 4 | (uintptr_t)digit, s++;
    return s;
}

/* Does this process's Python guard check the connect() called from `caller` itself? In a
 * Python process, narcissus.prevent.guard.install() sets NARCISSUS_GUARD_PYTHON="PID:LO-HI[,LO-HI]":
 * its pid and where the code of Python's _socket module lies. A self-connect made through a
 * Python socket object is then left to that guard, which raises the richer
 * narcissus.SelfConnectError and names the script; connects from C extensions and any other
 * code are handled here. Called only once a self-connect was found. */
static int python_guards(const void *caller) {
    const char *s = getenv("NARCISSUS_GUARD_PYTHON");
    unsigned long pid = 0;
    uintptr_t address = (uintptr_t)caller, low, high;

    if (s == NULL)
        return 0;
    for (; *s >= '0' && *s <= '9'; s++)
        pid = pid * 10 + (unsigned long)(*s - '0');
    if (*s++ != ':' || pid != (unsigned long)getpid())
        return 0; /* inherited from a parent process, or malformed */
    while (s != NULL && *s) {
        s = parse_hex(s, &low);
        if (s == NULL || *s++ != '-' || (s = parse_hex(s, &high)) == NULL)
            return 0;
        if (address >= low && address < high)
            return 1;
        if (*s == ',')
            s++;
    }
    return 0;
}

/* ------------------------------------------------------------------ connect() */

/* The self-connect found after the first connect (`result`, `error`): reset, report, and
 * connect again while the retry policy allows it; the result the caller gets. */
static int refuse(int fd, const struct sockaddr *addr, socklen_t len, int result, int error,
                  struct sockaddr_storage *local, int type, const void *caller) {
    connect_fn real = atomic_load_explicit(&real_connect, memory_order_relaxed);
    int allowed = atomic_load_explicit(&retries, memory_order_relaxed);
    int form = atomic_load_explicit(&report_form, memory_order_relaxed);

    if (python_guards(caller)) {
        errno = error;
        return result;
    }
    for (int attempt = 1;; attempt++) {
        int flags, reusable = reset(fd, local->ss_family, type);

        if (form != REPORT_NONE)
            report(form, local, type);
        flags = fcntl(fd, F_GETFL);
        /* A non-blocking socket is not retried: its next connect would only be in progress. */
        if (!reusable || attempt > allowed || flags < 0 || (flags & O_NONBLOCK)) {
            errno = ECONNREFUSED;
            return -1;
        }
        result = real(fd, addr, len);
        error = errno;
        if (!(result == 0 || error == EINPROGRESS) ||
            !self_connected(fd, addr, len, result != 0, local, &type)) {
            errno = error;
            return result;
        }
    }
}

#ifdef __APPLE__
#define WRAPPER narcissus_connect /* installed by the interposing table at the end */
#else
#define WRAPPER connect /* found before libc's: LD_PRELOAD puts this library first */
#endif

EXPORT int WRAPPER(int fd, const struct sockaddr *addr, socklen_t len) {
    const void *caller = __builtin_return_address(0);
    connect_fn real;
    int result, error, type = 0;
    unsigned port;
    struct sockaddr_storage local;

    if (!atomic_load_explicit(&ready, memory_order_acquire))
        initialise();
    real = atomic_load_explicit(&real_connect, memory_order_relaxed);
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    result = real(fd, addr, len);
    if (result != 0 && errno != EINPROGRESS)
        return result; /* refused, unreachable, ...: exactly as without the library */
    if (!atomic_load_explicit(&enabled, memory_order_relaxed))
        return result;
    error = errno;
    port = target_port(addr, len);
    if (port == 0 || !port_at_risk(port)) {
        errno = error;
        return result;
    }
    if (!self_connected(fd, addr, len, result != 0, &local, &type)) {
        errno = error;
        return result;
    }
    return refuse(fd, addr, len, result, error, &local, type, caller);
}

#ifdef __APPLE__
/* macOS: dyld's interposing table replaces connect() in every image with ours; inside this
 * library `connect` still names libc's, which is what real_connect holds. Untested here. */
__attribute__((used, section("__DATA,__interpose"))) static const struct {
    const void *replacement;
    const void *replaced;
} interpose_connect = {(const void *)narcissus_connect, (const void *)connect};
#endif
