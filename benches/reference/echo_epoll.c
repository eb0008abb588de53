/* The "close to the limit" reference for benches/models.sh: a minimal
 * single-threaded echo server (plain echo, RFC 862) on edge-triggered epoll.
 *
 *   cc -O2 -o echo_epoll echo_epoll.c && ./echo_epoll 25000
 *
 * It prints "listening on 127.0.0.1:PORT" once bound (port 0 picks one), like
 * `concur serve`. Per request it does what the concur event loops do at best:
 * one read into a loop-wide buffer, one write of the same bytes; a read shorter
 * than the buffer means the socket is drained (so no extra read to see EAGAIN),
 * unless the peer's FIN is pending (EPOLLRDHUP). Unsent bytes (a full socket
 * buffer) wait in a per-connection buffer, and the connection is not read until
 * they are gone. No timeouts, no limits, no logging: only the mechanism.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384

struct conn {
    int fd;
    int rdhup;
    char *pending; /* unsent bytes, or NULL */
    size_t len, off;
};

static char buf[BUF];
static volatile sig_atomic_t stop;

static void on_term(int sig) { (void)sig; stop = 1; }

static void drop_conn(struct conn *c) {
    close(c->fd); /* also leaves the epoll set */
    free(c->pending);
    free(c);
}

/* Write what is pending; returns 0 when all is sent, 1 if blocked, -1 on error. */
static int flush(struct conn *c) {
    while (c->pending && c->off < c->len) {
        ssize_t w = write(c->fd, c->pending + c->off, c->len - c->off);
        if (w < 0) return (errno == EAGAIN || errno == EINTR) ? 1 : -1;
        c->off += (size_t)w;
    }
    free(c->pending);
    c->pending = NULL;
    c->len = c->off = 0;
    return 0;
}

/* Read and echo until drained; returns -1 to close. */
static int serve(struct conn *c) {
    for (;;) {
        if (c->pending) return 0;
        ssize_t n = read(c->fd, buf, BUF);
        if (n == 0) return -1;
        if (n < 0) return (errno == EAGAIN) ? 0 : (errno == EINTR ? 0 : -1);
        ssize_t w = write(c->fd, buf, (size_t)n);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) return -1;
            w = 0;
        }
        if (w < n) {
            c->len = (size_t)(n - w);
            c->off = 0;
            c->pending = malloc(c->len);
            if (!c->pending) return -1;
            memcpy(c->pending, buf + w, c->len);
            return 0;
        }
        if (n < BUF && !c->rdhup) return 0;
    }
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 25000;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(ls, 1024) < 0) {
        perror("listen");
        return 2;
    }
    socklen_t slen = sizeof sin;
    getsockname(ls, (struct sockaddr *)&sin, &slen);
    printf("listening on 127.0.0.1:%d model=reference service=echo\n", ntohs(sin.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    struct epoll_event evs[1024];
    while (!stop) {
        int k = epoll_wait(ep, evs, 1024, -1);
        if (k < 0) {
            if (errno == EINTR) continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) { /* the listener: take every waiting client */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event cev = {
                        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
                }
                continue;
            }
            uint32_t e = evs[i].events;
            if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->rdhup = 1;
            int r = 0;
            if ((e & EPOLLOUT) && c->pending) r = flush(c);
            if (r >= 0 && !c->pending) r = serve(c);
            if (r < 0) drop_conn(c);
        }
    }
    return 0;
}
