/*
 * gearmand-bench native load generator (part of gearmand-py; compiled on first use by
 * gearmand_py/bench/native.py with the system C compiler and cached per user).
 *
 * Drives one Gearman server over many loopback connections with the raw binary protocol
 * (12-byte header: "\0REQ"/"\0RES", command u32 BE, size u32 BE; arguments NUL-separated)
 * from ONE epoll loop in ONE thread.  Replies produced while handling one epoll batch are
 * appended to per-connection output buffers and written once per connection at the end of
 * the batch.
 *
 * Modes (argv[1]):
 *   fg     C clients, one SUBMIT_JOB in flight each, and W echo workers (GRAB_JOB,
 *          WORK_COMPLETE carrying the job's data + the next GRAB_JOB in one write;
 *          NO_JOB -> PRE_SLEEP, NOOP -> GRAB_JOB).  Optional `status` prober (-S).
 *   bg     C connections, each keeping -q SUBMIT_JOB_BG in flight (pipelined).
 *   drain  -F jobs are queued first (untimed, pipelined), then W workers with -q GRAB_JOBs
 *          in flight each empty the queue until NO_JOB.
 *   ping   C connections, each keeping -q ECHO_REQ in flight.
 * Submits carry an empty unique id unless -u gives each its own (durable queues).
 *
 * Control protocol with the parent (stdin/stdout, one line each): after connecting (and
 * filling the queue for drain) it prints "ready"; it starts on a "go" line; when the
 * measured part is over it prints one JSON object with counts, latencies, its own CPU
 * time (getrusage) and CLOCK_MONOTONIC start/end times.  In fg mode the workers keep
 * serving after that until stdin is closed (other generator processes may still need
 * them); the other modes exit at once.  Errors go to stderr with exit status 1.
 *
 * C99 + Linux (epoll).  Build: cc -O2 -Wall -Wextra -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    CAN_DO = 1, PRE_SLEEP = 4, NOOP = 6, SUBMIT_JOB = 7, JOB_CREATED = 8, GRAB_JOB = 9,
    NO_JOB = 10, JOB_ASSIGN = 11, WORK_COMPLETE = 13, WORK_FAIL = 14, ECHO_REQ = 16,
    ECHO_RES = 17, SUBMIT_JOB_BG = 18, ERROR = 19, WORK_EXCEPTION = 25
};

enum { HEADER = 12, MIN_READ = 65536, MAX_EVENTS = 256 };
#define DRAIN_GRACE_NS 2000000000LL /* after the deadline: let in-flight requests finish */

typedef enum { K_CLIENT, K_WORKER, K_BG, K_DRAIN, K_PING, K_STATUS } kind_t;

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

typedef struct conn {
    int fd;
    kind_t kind;
    buf_t in, out;
    size_t out_off;
    int dirty, pollout, active;
    long left;          /* requests this connection may still send */
    long outstanding;   /* requests in flight */
    int64_t t0;         /* send time of the request in flight (fg, ping depth 1) */
} conn_t;

typedef struct {
    int64_t *v;
    size_t n, cap;
} lat_t;

/* ---- options ---------------------------------------------------------------------- */
static const char *mode = "";
static const char *host = "127.0.0.1";
static int port = 0;
static long nclients = 16, nworkers = 4, depth = 1, jobs = 100000, fill = 0;
static long payload_len = 100;
static double time_limit = 2.0;
static const char *func = "bench";
static long status_interval_us = 0;
static int unique_ids = 0;  /* -u: every submit carries its own unique id (a durable queue
                               keys its rows on it, as real clients' UUIDs do) */

/* ---- state ------------------------------------------------------------------------ */
static int ep = -1;
static conn_t **conns;
static size_t nconns;
static conn_t **dirty;
static size_t ndirty;
static long active_primary;
static int stopping;
static int64_t t_end;
static long done, failed, errors, worker_jobs;
static lat_t lat, status_lat;
static char *submit_pkt;       /* one prebuilt request packet (submit / echo) */
static size_t submit_pkt_len;
enum { UNIQUE_LEN = 24 };      /* -u ids: 8 hex digits of the pid, 16 of a counter */
static size_t unique_off;      /* where the id sits in submit_pkt */
static unsigned long unique_seq;
static conn_t *status_conn;
static int64_t next_probe;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("loadgen: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(double *user, double *sys)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *user = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    *sys = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    return *user + *sys;
}

/* ---- buffers ---------------------------------------------------------------------- */
static void buf_reserve(buf_t *b, size_t extra)
{
    size_t want = b->len + extra, cap = b->cap ? b->cap : 4096;
    if (want <= b->cap)
        return;
    while (cap < want)
        cap *= 2;
    b->p = realloc(b->p, cap);
    if (b->p == NULL)
        die("out of memory (%zu bytes)", cap);
    b->cap = cap;
}

static void buf_add(buf_t *b, const void *data, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u32(char *p, uint32_t v)
{
    uint32_t be = htonl(v);
    memcpy(p, &be, 4);
}

static uint32_t get_u32(const char *p)
{
    uint32_t be;
    memcpy(&be, p, 4);
    return ntohl(be);
}

static void put_header(buf_t *b, uint32_t cmd, uint32_t size)
{
    char h[HEADER];
    memcpy(h, "\0REQ", 4);
    put_u32(h + 4, cmd);
    put_u32(h + 8, size);
    buf_add(b, h, HEADER);
}

/* One request packet with NUL-separated args: the last one is the data part. */
static void put_packet(buf_t *b, uint32_t cmd, int nargs, const char **args,
                       const size_t *lens)
{
    size_t size = 0;
    int i;
    for (i = 0; i < nargs; i++)
        size += lens[i] + (i + 1 < nargs);
    put_header(b, cmd, (uint32_t)size);
    for (i = 0; i < nargs; i++) {
        buf_add(b, args[i], lens[i]);
        if (i + 1 < nargs)
            buf_add(b, "", 1);
    }
}

static void lat_add(lat_t *l, int64_t v)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (l->v == NULL)
            die("out of memory");
    }
    l->v[l->n++] = v;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile in milliseconds (0 when empty); l must be sorted. */
static double pct_ms(const lat_t *l, double q)
{
    double rank = q * (double)l->n;
    size_t k = (size_t)rank;
    if (l->n == 0)
        return 0.0;
    if ((double)k < rank)
        k++;
    if (k > 0)
        k--;
    if (k >= l->n)
        k = l->n - 1;
    return l->v[k] / 1e6;
}

/* ---- connections ------------------------------------------------------------------ */
static int dial(void)
{
    struct sockaddr_in sa;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    if (fd < 0)
        die("socket: %s", strerror(errno));
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("bad address %s", host);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        die("connect %s:%d: %s", host, port, strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void read_exact(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t k = recv(fd, p, n, 0);
        if (k <= 0)
            die("server closed a connection during setup");
        p += k;
        n -= (size_t)k;
    }
}

/* Blocking: send CAN_DO + ECHO_REQ and wait for the echo, so the server knows the
 * function before the measurement starts. */
static void register_worker(int fd)
{
    buf_t b = {0, 0, 0};
    const char *a[1] = {func};
    size_t l[1] = {strlen(func)};
    char reply[HEADER + 1];
    put_packet(&b, CAN_DO, 1, a, l);
    a[0] = "x";
    l[0] = 1;
    put_packet(&b, ECHO_REQ, 1, a, l);
    if (send(fd, b.p, b.len, MSG_NOSIGNAL) != (ssize_t)b.len)
        die("send during setup: %s", strerror(errno));
    read_exact(fd, reply, sizeof reply);
    if (memcmp(reply, "\0RES", 4) != 0 || get_u32(reply + 4) != ECHO_RES)
        die("unexpected reply %u to ECHO_REQ during setup", get_u32(reply + 4));
    free(b.p);
}

static conn_t *add_conn(kind_t kind)
{
    conn_t *c = calloc(1, sizeof *c);
    struct epoll_event ev;
    if (c == NULL)
        die("out of memory");
    c->fd = dial();
    c->kind = kind;
    if (kind == K_WORKER || kind == K_DRAIN)
        register_worker(c->fd);
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    ev.events = EPOLLIN;
    ev.data.ptr = c;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) != 0)
        die("epoll_ctl: %s", strerror(errno));
    conns[nconns++] = c;
    return c;
}

static void close_conn(conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
}

static void mark_dirty(conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        dirty[ndirty++] = c;
    }
}

static void set_pollout(conn_t *c, int on)
{
    struct epoll_event ev;
    if (c->pollout == on)
        return;
    c->pollout = on;
    ev.events = EPOLLIN | (on ? EPOLLOUT : 0);
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void flush(conn_t *c)
{
    while (c->out_off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off,
                         MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                set_pollout(c, 1);
                return;
            }
            if (errno == EINTR)
                continue;
            die("send: %s", strerror(errno));
        }
        c->out_off += (size_t)n;
    }
    c->out.len = c->out_off = 0;
    set_pollout(c, 0);
}

static void finish_primary(conn_t *c)
{
    if (c->active) {
        c->active = 0;
        active_primary--;
        t_end = now_ns();
    }
}

/* ---- per-kind packet handlers ------------------------------------------------------ */
static void send_request(conn_t *c, long count)
{
    long i;
    buf_reserve(&c->out, submit_pkt_len * (size_t)count);
    for (i = 0; i < count; i++) {
        buf_add(&c->out, submit_pkt, submit_pkt_len);
        if (unique_ids) /* the NUL snprintf ends with lands on the separator after the id */
            snprintf(c->out.p + c->out.len - submit_pkt_len + unique_off, UNIQUE_LEN + 1,
                     "%08x%016lx", (unsigned)getpid(), ++unique_seq);
    }
    mark_dirty(c);
}

static void on_client(conn_t *c, uint32_t cmd, const char *p, uint32_t size)
{
    const char *nul;
    switch (cmd) {
    case WORK_COMPLETE:
        nul = memchr(p, 0, size);
        if (nul != NULL && (long)(p + size - nul - 1) == payload_len) {
            done++;
            lat_add(&lat, now_ns() - c->t0);
        } else {
            failed++;
        }
        break;
    case WORK_FAIL:
    case WORK_EXCEPTION:
    case ERROR:
        failed++;
        break;
    default:
        return; /* JOB_CREATED, WORK_DATA, ...: the job is still running */
    }
    c->outstanding--;
    if (c->left > 0 && !stopping) {
        c->left--;
        c->outstanding++;
        c->t0 = now_ns();
        send_request(c, 1);
    } else {
        finish_primary(c);
    }
}

/* JOB_ASSIGN payload: handle \0 function \0 data.  Reply: WORK_COMPLETE handle \0 data
 * (the job's own data when echo, else empty), then GRAB_JOB unless told not to. */
static void complete_job(conn_t *c, const char *p, uint32_t size, int echo, int grab)
{
    const char *h_end = memchr(p, 0, size), *f_end;
    size_t hlen, dlen;
    if (h_end == NULL)
        die("malformed JOB_ASSIGN");
    f_end = memchr(h_end + 1, 0, (size_t)(p + size - h_end - 1));
    if (f_end == NULL)
        die("malformed JOB_ASSIGN");
    hlen = (size_t)(h_end - p);
    dlen = echo ? (size_t)(p + size - f_end - 1) : 0;
    buf_reserve(&c->out, 2 * HEADER + hlen + 1 + dlen);
    put_header(&c->out, WORK_COMPLETE, (uint32_t)(hlen + 1 + dlen));
    buf_add(&c->out, p, hlen + 1);
    buf_add(&c->out, f_end + 1, dlen);
    if (grab)
        put_header(&c->out, GRAB_JOB, 0);
    mark_dirty(c);
}

static void on_worker(conn_t *c, uint32_t cmd, const char *p, uint32_t size)
{
    switch (cmd) {
    case JOB_ASSIGN:
        worker_jobs++;
        complete_job(c, p, size, 1, 1);
        break;
    case NO_JOB:
        put_header(&c->out, PRE_SLEEP, 0);
        mark_dirty(c);
        break;
    case NOOP:
        put_header(&c->out, GRAB_JOB, 0);
        mark_dirty(c);
        break;
    default:
        break;
    }
}

static void on_drain(conn_t *c, uint32_t cmd, const char *p, uint32_t size)
{
    switch (cmd) {
    case JOB_ASSIGN:
        done++;
        complete_job(c, p, size, 0, !stopping);
        if (stopping)
            c->outstanding--;
        break;
    case NO_JOB:
        c->outstanding--;
        break;
    default:
        return;
    }
    if (c->outstanding <= 0)
        finish_primary(c);
}

/* bg submitters and pingers: every reply frees a slot in the window. */
static void on_windowed(conn_t *c, uint32_t cmd, const char *p, uint32_t size)
{
    long more;
    (void)p;
    (void)size;
    switch (cmd) {
    case JOB_CREATED:
    case ECHO_RES:
        done++;
        if (c->kind == K_PING && depth == 1)
            lat_add(&lat, now_ns() - c->t0);
        break;
    case ERROR:
        errors++;
        break;
    default:
        return;
    }
    c->outstanding--;
    more = stopping ? 0 : (c->left < 1 ? c->left : 1);
    if (more > 0) {
        c->left -= more;
        c->outstanding += more;
        c->t0 = now_ns();
        send_request(c, more);
    }
    if (c->outstanding <= 0)
        finish_primary(c);
}

typedef void (*handler_t)(conn_t *, uint32_t, const char *, uint32_t);
static const handler_t HANDLERS[] = {
    [K_CLIENT] = on_client, [K_WORKER] = on_worker, [K_BG] = on_windowed,
    [K_DRAIN] = on_drain, [K_PING] = on_windowed, [K_STATUS] = NULL,
};

/* Text-protocol `status` reply ends with a line holding only ".". */
static void on_status_bytes(conn_t *c)
{
    size_t n = c->in.len;
    const char *p = c->in.p;
    if ((n == 2 && memcmp(p, ".\n", 2) == 0) || (n >= 3 && memcmp(p + n - 3, "\n.\n", 3) == 0)) {
        int64_t t = now_ns();
        lat_add(&status_lat, t - c->t0);
        c->in.len = 0;
        c->outstanding = 0;
        next_probe = t + status_interval_us * 1000LL;
    }
}

static void probe_status(int64_t t)
{
    if (status_conn == NULL || status_conn->outstanding || t < next_probe)
        return;
    status_conn->t0 = t;
    status_conn->outstanding = 1;
    buf_add(&status_conn->out, "status\n", 7);
    mark_dirty(status_conn);
}

static void on_readable(conn_t *c)
{
    size_t pos = 0, need = HEADER;
    ssize_t k;
    buf_reserve(&c->in, MIN_READ);
    if (c->in.len >= HEADER && c->kind != K_STATUS) {
        need = HEADER + (size_t)get_u32(c->in.p + 8);
        if (need > c->in.len)
            buf_reserve(&c->in, need - c->in.len);
    }
    k = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (k < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        die("recv: %s", strerror(errno));
    }
    if (k == 0)
        die("the server closed a benchmark connection");
    c->in.len += (size_t)k;
    if (c->kind == K_STATUS) {
        on_status_bytes(c);
        return;
    }
    while (c->in.len - pos >= HEADER) {
        const char *h = c->in.p + pos;
        uint32_t size = get_u32(h + 8);
        if (memcmp(h, "\0RES", 4) != 0)
            die("bad magic in a server reply (stream out of sync)");
        if (c->in.len - pos - HEADER < size)
            break;
        HANDLERS[c->kind](c, get_u32(h + 4), h + HEADER, size);
        pos += HEADER + size;
    }
    if (pos) {
        memmove(c->in.p, c->in.p + pos, c->in.len - pos);
        c->in.len -= pos;
    }
}

/* One epoll round: read what is readable, then write every connection that has output. */
static void poll_once(int timeout_ms, int *stdin_ready)
{
    struct epoll_event evs[MAX_EVENTS];
    int i, n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
    size_t j;
    if (n < 0) {
        if (errno == EINTR)
            return;
        die("epoll_wait: %s", strerror(errno));
    }
    for (i = 0; i < n; i++) {
        conn_t *c = evs[i].data.ptr;
        if (c == NULL) {
            *stdin_ready = 1;
            continue;
        }
        if (evs[i].events & EPOLLOUT)
            mark_dirty(c);
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            on_readable(c);
    }
    if (status_conn != NULL)
        probe_status(now_ns());
    for (j = 0; j < ndirty; j++) {
        dirty[j]->dirty = 0;
        flush(dirty[j]);
    }
    ndirty = 0;
}

static int wait_ms(int64_t until)
{
    int64_t left = until - now_ns();
    int ms = left <= 0 ? 0 : (int)((left + 999999) / 1000000);
    if (ms > 50)
        ms = 50;
    if (status_conn != NULL && !status_conn->outstanding) {
        int64_t p = next_probe - now_ns();
        int pm = p <= 0 ? 0 : (int)((p + 999999) / 1000000);
        if (pm < ms)
            ms = pm;
    }
    return ms;
}

/* Run until no primary connection is active or `until` passes. */
static void run_until(int64_t until)
{
    int dummy = 0;
    while (active_primary > 0 && now_ns() < until)
        poll_once(wait_ms(until), &dummy);
}

/* ---- phases -------------------------------------------------------------------------- */
static void build_request(void)
{
    buf_t b = {0, 0, 0};
    char *data = malloc((size_t)payload_len + 1);
    if (data == NULL)
        die("out of memory");
    memset(data, 'x', (size_t)payload_len);
    if (strcmp(mode, "ping") == 0) {
        const char *a[1] = {data};
        size_t l[1] = {(size_t)payload_len};
        put_packet(&b, ECHO_REQ, 1, a, l);
    } else {
        char id[UNIQUE_LEN + 1];
        const char *a[3] = {func, id, data};
        size_t l[3] = {strlen(func), unique_ids ? UNIQUE_LEN : 0, (size_t)payload_len};
        memset(id, '0', UNIQUE_LEN);
        unique_off = HEADER + strlen(func) + 1;
        put_packet(&b, strcmp(mode, "fg") == 0 ? SUBMIT_JOB : SUBMIT_JOB_BG, 3, a, l);
    }
    free(data);
    submit_pkt = b.p;
    submit_pkt_len = b.len;
}

/* Share `total` requests over connections `first..nconns-1` of one kind. */
static void share(size_t first, long total)
{
    size_t i, n = nconns - first;
    for (i = first; i < nconns; i++)
        conns[i]->left = total / (long)n + ((long)(i - first) < total % (long)n);
}

/* Start a windowed connection: send up to `window` requests at once. */
static void start_windowed(conn_t *c, long window)
{
    long first = c->left < window ? c->left : window;
    c->left -= first;
    c->outstanding = first;
    c->active = first > 0;
    active_primary += c->active;
    c->t0 = now_ns();
    if (first)
        send_request(c, first);
}

/* drain: queue `fill` background jobs through one pipelined connection, untimed. */
static double fill_queue(void)
{
    size_t first = nconns;
    int64_t t0 = now_ns();
    conn_t *c = add_conn(K_BG);
    c->left = fill;
    start_windowed(c, 256);
    while (active_primary > 0)
        poll_once(50, &(int){0});
    close_conn(c);
    free(c->in.p);
    free(c->out.p);
    free(c);
    nconns = first;
    if (errors)
        die("%ld ERROR replies while queueing jobs", errors);
    done = 0;
    return fill / ((now_ns() - t0) / 1e9 + 1e-9);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen fg|bg|drain|ping -p PORT [-H HOST] [-c CONNS] [-w WORKERS]\n"
            "       [-q IN_FLIGHT] [-n REQUESTS] [-F FILL] [-T SECONDS] [-s PAYLOAD]\n"
            "       [-f FUNCTION] [-S STATUS_INTERVAL_US] [-u]\n");
    exit(2);
}

static long num(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0)
        die("bad number %s", s);
    return v;
}

static void parse_args(int argc, char **argv)
{
    int opt;
    if (argc < 2)
        usage();
    mode = argv[1];
    optind = 2;
    while ((opt = getopt(argc, argv, "p:H:c:w:q:n:F:T:s:f:S:u")) != -1) {
        switch (opt) {
        case 'p': port = (int)num(optarg); break;
        case 'H': host = optarg; break;
        case 'c': nclients = num(optarg); break;
        case 'w': nworkers = num(optarg); break;
        case 'q': depth = num(optarg); break;
        case 'n': jobs = num(optarg); break;
        case 'F': fill = num(optarg); break;
        case 'T': time_limit = atof(optarg); break;
        case 's': payload_len = num(optarg); break;
        case 'f': func = optarg; break;
        case 'S': status_interval_us = num(optarg); break;
        case 'u': unique_ids = 1; break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || depth < 1 || (strcmp(mode, "fg") && strcmp(mode, "bg")
        && strcmp(mode, "drain") && strcmp(mode, "ping")))
        usage();
}

int main(int argc, char **argv)
{
    char line[64];
    double fill_rate = 0, u0, s0, u1, s1, c0, c1;
    int64_t t_go, deadline;
    size_t i, first;
    long k;
    int fg = 0, drain = 0;

    parse_args(argc, argv);
    fg = strcmp(mode, "fg") == 0;
    drain = strcmp(mode, "drain") == 0;
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1: %s", strerror(errno));
    conns = calloc((size_t)(nclients + nworkers + 3), sizeof *conns);
    dirty = calloc((size_t)(nclients + nworkers + 3), sizeof *dirty);
    if (conns == NULL || dirty == NULL)
        die("out of memory");
    build_request();

    /* Setup (untimed): connect, register workers, queue the drain jobs. */
    if (drain && fill > 0)
        fill_rate = fill_queue();
    if (fg || drain)
        for (i = 0; i < (size_t)nworkers; i++)
            add_conn(drain ? K_DRAIN : K_WORKER);
    first = nconns;
    if (!drain) {
        for (i = 0; i < (size_t)nclients; i++)
            add_conn(fg ? K_CLIENT : strcmp(mode, "bg") == 0 ? K_BG : K_PING);
        if (nclients > 0)
            share(first, jobs);
    }
    if (fg && status_interval_us > 0)
        status_conn = add_conn(K_STATUS);

    printf("ready\n");
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL || strncmp(line, "go", 2) != 0)
        return 0;

    /* Measured part. */
    t_go = now_ns();
    deadline = t_go + (int64_t)(time_limit * 1e9);
    t_end = t_go;
    c0 = cpu_seconds(&u0, &s0);
    for (i = 0; i < nconns; i++) {
        conn_t *c = conns[i];
        switch (c->kind) {
        case K_WORKER:
            put_header(&c->out, GRAB_JOB, 0);
            mark_dirty(c);
            break;
        case K_DRAIN:
            c->outstanding = depth;
            c->active = 1;
            active_primary++;
            for (k = 0; k < depth; k++)
                put_header(&c->out, GRAB_JOB, 0);
            mark_dirty(c);
            break;
        case K_CLIENT:
            start_windowed(c, 1);
            break;
        case K_BG:
        case K_PING:
            start_windowed(c, depth);
            break;
        case K_STATUS:
            next_probe = t_go;
            break;
        }
    }
    for (i = 0; i < ndirty; i++) {
        dirty[i]->dirty = 0;
        flush(dirty[i]);
    }
    ndirty = 0;
    run_until(deadline);
    if (active_primary > 0) {
        stopping = 1;
        run_until(now_ns() + DRAIN_GRACE_NS);
    }
    c1 = cpu_seconds(&u1, &s1);
    qsort(lat.v, lat.n, sizeof *lat.v, cmp_i64);
    qsort(status_lat.v, status_lat.n, sizeof *status_lat.v, cmp_i64);
    printf("{\"mode\": \"%s\", \"jobs\": %ld, \"failed\": %ld, \"errors\": %ld, "
           "\"unfinished\": %ld, \"worker_jobs\": %ld, \"cpu\": %.6f, \"utime\": %.6f, "
           "\"stime\": %.6f, \"t_start\": %.6f, \"t_end\": %.6f, \"p50_ms\": %.6f, "
           "\"p99_ms\": %.6f, \"latencies\": %zu, \"queued\": %ld, \"fill_s\": %.1f, "
           "\"probes\": %zu, \"status_p50_ms\": %.6f, \"status_p99_ms\": %.6f}\n",
           mode, done, failed, errors, active_primary, worker_jobs, c1 - c0, u1 - u0,
           s1 - s0, t_go / 1e9, t_end / 1e9, pct_ms(&lat, 0.50), pct_ms(&lat, 0.99), lat.n,
           fill, fill_rate, status_lat.n, pct_ms(&status_lat, 0.50),
           pct_ms(&status_lat, 0.99));
    fflush(stdout);

    if (fg) {
        /* Keep the workers serving other generator processes until stdin closes. */
        struct epoll_event ev;
        int stdin_ready = 0;
        ev.events = EPOLLIN;
        ev.data.ptr = NULL;
        if (status_conn != NULL)
            close_conn(status_conn);
        status_conn = NULL;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev) == 0)
            while (!stdin_ready)
                poll_once(1000, &stdin_ready);
    }
    return 0;
}
