/*
 * A plain C client (and a listener) for the preload tests and bench/run.py, compiled at test
 * time, dynamically or statically linked. Each mode prints one line saying what happened.
 *
 *   client once HOST PORT [nonblock] [udp]     one connect; then send "ping-from-client" and
 *                                              wait 0.5 s for a reply. Prints
 *                                              "refused" | "self-connected read-back=..." |
 *                                              "connected" | "error ERRNO"
 *   client loop HOST PORT N [same]             N connects (a new socket each, or one socket
 *                                              reused with "same"), then
 *                                              {"refused": R, "self": S, "other": O,
 *                                               "fds_before": F, "fds_after": G}
 *   client bench HOST PORT N                   N connects to a listener; prints the
 *                                              nanoseconds spent inside connect() alone,
 *                                              the median of one connect, and failures
 *   client alternate HOST PORT N               N connects to a listener alternating, one by
 *                                              one, between connect() (the preloaded one, if
 *                                              any) and libc's own; prints the median
 *                                              nanoseconds of each: "CONNECT LIBC"
 *   client errno HOST PORT                     errno set to EDOM before a connect that
 *                                              succeeds; prints errno after it
 *   client bindself PORT                       bind 127.0.0.1:PORT, connect to it: a
 *                                              deliberate self-connect; prints as "once"
 *   client untilrefused PORT MAX               bindself every 5 ms until refused, at most
 *                                              MAX times; prints "self-connected" after the
 *                                              first self-connect, then "refused after N" or
 *                                              "never refused"
 *   client serve PORT                          listen on 127.0.0.1:PORT (0: any), print the
 *                                              port, accept and close until stdin closes
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#ifndef STATIC_CLIENT
#include <dlfcn.h>
#endif
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static socklen_t address(const char *host, int port, struct sockaddr_storage *out) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;

    memset(out, 0, sizeof *out);
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((unsigned short)port);
        return sizeof *v4;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((unsigned short)port);
        return sizeof *v6;
    }
    fprintf(stderr, "bad address %s\n", host);
    exit(2);
}

static int is_self(int fd) {
    struct sockaddr_storage a, b;
    socklen_t la = sizeof a, lb = sizeof b;

    if (getsockname(fd, (struct sockaddr *)&a, &la) || getpeername(fd, (struct sockaddr *)&b, &lb))
        return 0;
    return la == lb && memcmp(&a, &b, la) == 0;
}

static void abort_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static int open_fds(void) {
    int count = 0;
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL)
        return -1;
    while (readdir(dir) != NULL)
        count++;
    closedir(dir);
    return count - 3; /* ".", ".." and the directory's own descriptor */
}

/* 0 connected (or in progress and then connected), else the errno of the failure. */
static int connect_and_wait(int fd, const struct sockaddr *to, socklen_t len) {
    struct pollfd p = {fd, POLLOUT, 0};
    int error = 0;
    socklen_t el = sizeof error;

    if (connect(fd, to, len) == 0)
        return 0;
    if (errno != EINPROGRESS)
        return errno;
    if (poll(&p, 1, 5000) != 1)
        return ETIMEDOUT;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &el);
    return error;
}

static void print_outcome(int fd, int error) {
    char reply[64] = "";
    const char *ping = "ping-from-client";
    struct pollfd p = {fd, POLLIN, 0};

    if (error == ECONNREFUSED) {
        puts("refused");
        return;
    }
    if (error) {
        printf("error %s\n", strerror(error));
        return;
    }
    if (!is_self(fd)) {
        puts("connected");
        return;
    }
    send(fd, ping, strlen(ping), MSG_NOSIGNAL);
    if (poll(&p, 1, 500) == 1) {
        ssize_t n = recv(fd, reply, sizeof reply - 1, MSG_DONTWAIT);
        reply[n > 0 ? n : 0] = '\0';
    }
    printf("self-connected read-back=%s\n", reply);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int bind_self(int port) {
    struct sockaddr_storage to;
    socklen_t len = address("127.0.0.1", port, &to);
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0), error;

    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&to, len) != 0) {
        printf("error bind %s\n", strerror(errno));
        exit(1);
    }
    error = connect(fd, (struct sockaddr *)&to, len) == 0 ? 0 : errno;
    if (error == 0 && is_self(fd)) {
        abort_close(fd);
        return 1;
    }
    abort_close(fd);
    return error == ECONNREFUSED ? 0 : -1;
}

int main(int argc, char **argv) {
    struct sockaddr_storage to;
    socklen_t len;
    const char *mode = argc > 1 ? argv[1] : "";

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(mode, "once") == 0 && argc >= 4) {
        int nonblock = 0, udp = 0;
        for (int i = 4; i < argc; i++) {
            nonblock |= strcmp(argv[i], "nonblock") == 0;
            udp |= strcmp(argv[i], "udp") == 0;
        }
        len = address(argv[2], atoi(argv[3]), &to);
        int fd = socket(to.ss_family, (udp ? SOCK_DGRAM : SOCK_STREAM) | (nonblock ? SOCK_NONBLOCK : 0), 0);
        print_outcome(fd, connect_and_wait(fd, (struct sockaddr *)&to, len));
        abort_close(fd);
        return 0;
    }
    if (strcmp(mode, "loop") == 0 && argc >= 5) {
        int count = atoi(argv[4]), same = argc > 5 && strcmp(argv[5], "same") == 0;
        int refused = 0, self = 0, other = 0, before = open_fds(), fd = -1;
        len = address(argv[2], atoi(argv[3]), &to);
        for (int i = 0; i < count; i++) {
            if (fd < 0)
                fd = socket(to.ss_family, SOCK_STREAM, 0);
            if (connect(fd, (struct sockaddr *)&to, len) == 0) {
                self += is_self(fd);
                other += !is_self(fd);
                abort_close(fd);
                fd = -1;
            } else {
                refused += errno == ECONNREFUSED;
                other += errno != ECONNREFUSED;
                if (!same) {
                    close(fd);
                    fd = -1;
                }
            }
        }
        if (fd >= 0)
            close(fd);
        printf("{\"refused\": %d, \"self\": %d, \"other\": %d, \"fds_before\": %d, "
               "\"fds_after\": %d}\n", refused, self, other, before, open_fds());
        return 0;
    }
    if (strcmp(mode, "bench") == 0 && argc >= 5) {
        long long spent = 0;
        int count = atoi(argv[4]), failed = 0;
        long long *each = calloc((size_t)(count > 0 ? count : 1), sizeof *each);
        len = address(argv[2], atoi(argv[3]), &to);
        for (int i = 0; i < count; i++) {
            int fd = socket(to.ss_family, SOCK_STREAM, 0);
            long long start = now_ns();
            int result = connect(fd, (struct sockaddr *)&to, len);
            each[i] = now_ns() - start;
            spent += each[i];
            failed += result != 0;
            abort_close(fd);
        }
        qsort(each, (size_t)count, sizeof *each, by_value);
        printf("%lld %lld %d\n", spent, count > 0 ? each[count / 2] : 0, failed);
        free(each);
        return failed != 0;
    }
#ifndef STATIC_CLIENT /* dlopen in a static program draws a linker warning */
    if (strcmp(mode, "alternate") == 0 && argc >= 5) {
        typedef int (*connect_fn)(int, const struct sockaddr *, socklen_t);
        void *libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD), *symbol;
        connect_fn direct;
        int count = atoi(argv[4]) / 2, failed = 0;
        long long *each[2] = {calloc((size_t)count + 1, sizeof(long long)),
                              calloc((size_t)count + 1, sizeof(long long))};
        if (libc == NULL || (symbol = dlsym(libc, "connect")) == NULL) {
            puts("error no libc connect");
            return 1;
        }
        memcpy(&direct, &symbol, sizeof direct);
        len = address(argv[2], atoi(argv[3]), &to);
        for (int i = 0; i < 2 * count; i++) {
            int fd = socket(to.ss_family, SOCK_STREAM, 0);
            long long start = now_ns();
            int result = i % 2 ? direct(fd, (struct sockaddr *)&to, len)
                               : connect(fd, (struct sockaddr *)&to, len);
            each[i % 2][i / 2] = now_ns() - start;
            failed += result != 0;
            abort_close(fd);
        }
        for (int k = 0; k < 2; k++)
            qsort(each[k], (size_t)count, sizeof(long long), by_value);
        printf("%lld %lld %d\n", each[0][count / 2], each[1][count / 2], failed);
        return failed != 0;
    }
#endif
    if (strcmp(mode, "errno") == 0 && argc >= 4) {
        len = address(argv[2], atoi(argv[3]), &to);
        int fd = socket(to.ss_family, SOCK_STREAM, 0);
        errno = EDOM;
        int result = connect(fd, (struct sockaddr *)&to, len);
        printf("result %d errno %s\n", result, errno == EDOM ? "EDOM" : strerror(errno));
        abort_close(fd);
        return 0;
    }
    if (strcmp(mode, "bindself") == 0 && argc >= 3) {
        int outcome = bind_self(atoi(argv[2]));
        puts(outcome > 0 ? "self-connected" : outcome == 0 ? "refused" : "error");
        return 0;
    }
    if (strcmp(mode, "untilrefused") == 0 && argc >= 4) {
        int port = atoi(argv[2]), most = atoi(argv[3]), said = 0;
        for (int i = 1; i <= most; i++) {
            int outcome = bind_self(port);
            if (outcome == 0) {
                printf("refused after %d\n", i);
                return 0;
            }
            if (outcome > 0 && !said) {
                puts("self-connected");
                said = 1;
            }
            usleep(5000);
        }
        puts("never refused");
        return 1;
    }
    if (strcmp(mode, "serve") == 0 && argc >= 3) {
        int one = 1, server = socket(AF_INET, SOCK_STREAM, 0);
        struct pollfd watch[2] = {{0, POLLIN, 0}, {server, POLLIN, 0}};
        len = address("127.0.0.1", atoi(argv[2]), &to);
        setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(server, (struct sockaddr *)&to, len) || listen(server, 4096)) {
            printf("error %s\n", strerror(errno));
            return 1;
        }
        getsockname(server, (struct sockaddr *)&to, &len);
        printf("%d\n", ntohs(((struct sockaddr_in *)&to)->sin_port));
        for (;;) {
            if (poll(watch, 2, -1) < 0 && errno != EINTR)
                return 1;
            if (watch[0].revents)
                return 0; /* stdin closed: the caller is done */
            if (watch[1].revents) {
                int connection = accept(server, NULL, NULL);
                if (connection >= 0)
                    close(connection);
            }
        }
    }
    fprintf(stderr, "usage: see the comment at the top of client.c\n");
    return 2;
}
