/* procscan.c: per-thread state scan of a cgroup's thread list (see procscan.h).
 *
 * Kernel facts used here:
 *  - fs/proc/array.c do_task_stat(): "<pid> (<comm>) <state> ..."; comm may hold
 *    any byte but NUL, so the state is found after the last ')'. Every field after
 *    the state is numeric, so a prefix of the line that contains the state gives
 *    the same answer as the whole line.
 *  - fs/proc/base.c: proc_pid_lookup() accepts any tid as the first component and
 *    proc_task_lookup() then finds that tid in its thread group, so
 *    <proc>/<tid>/task/<tid>/stat is the per-thread stat file (proc_tid_stat).
 *  - A read of a /proc/<pid>/... file whose task has exited fails with ESRCH
 *    (proc_single_show: get_pid_task() == NULL); the fd stays bound to the old
 *    struct pid, so a reused tid can never answer through it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memrchr; build.py passes -D_GNU_SOURCE too */
#endif
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "procscan.h"

#define MAX_FDS_LIMIT (1u << 24)
#define STAT_PREFIX 512     /* enough for pid, comm (<= 64 bytes) and the state */
#define SCHEDSTAT_MAX 96    /* "%llu %llu %lu\n": at most 3 * 20 digits, 2 spaces, newline */
#define LIST_INITIAL 16384
/* No thread list is longer: PID_MAX_LIMIT (4M) tids of 8 bytes is 32 MiB. A file
 * that goes on past this (say /dev/zero) is not a thread list. */
#define LIST_MAX ((size_t)128 << 20)
#define AGE_BUCKETS 64      /* sweep ages are counted in scans, capped here */

struct entry {
    int32_t tid;            /* 0: empty slot */
    int32_t fd;             /* the stat file */
    int32_t sfd;            /* the schedstat file (CG_SCAN_SCHEDSTAT), or -1 */
    uint64_t seen;          /* epoch of the last scan that listed tid */
};

struct cg_scanner {
    int proc_fd;
    uint32_t max_fds;
    uint32_t nfds;          /* entries in tab; each holds one open fd (stat) */
    uint32_t nsfds;         /* entries that also hold a schedstat fd: nfds + nsfds <= max_fds */
    int schedstat;          /* the scan in progress reads schedstat (CG_SCAN_SCHEDSTAT) */
    uint32_t cap;           /* slots in tab: 0 or a power of two >= 2 * nfds */
    struct entry *tab;
    uint64_t epoch;         /* scans started */
    char *list;             /* thread list read by scan_fd */
    size_t list_cap;
    int32_t *set;           /* per-scan set of distinct tids (0 = empty) */
    size_t set_cap;
    int32_t *tids;          /* per-scan distinct tids, in list order */
    size_t tids_cap;
    uint64_t opens;         /* stat files opened since creation */
};

/* Tids cluster (sequential allocation); mix all bits into the low ones the
 * tables use (the finaliser of MurmurHash3). */
static inline uint32_t tid_hash(int32_t tid)
{
    uint32_t h = (uint32_t)tid;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

/* ---- the fd cache: linear probing, load factor <= 1/2 ---- */

static long cache_find(const struct cg_scanner *sc, int32_t tid)
{
    if (sc->cap == 0)
        return -1;
    uint32_t mask = sc->cap - 1;
    for (uint32_t i = tid_hash(tid) & mask;; i = (i + 1) & mask) {
        if (sc->tab[i].tid == tid)
            return i;
        if (sc->tab[i].tid == 0)
            return -1;
    }
}

static void table_put(struct entry *tab, uint32_t cap, struct entry e)
{
    uint32_t mask = cap - 1;
    uint32_t i = tid_hash(e.tid) & mask;
    while (tab[i].tid != 0)
        i = (i + 1) & mask;
    tab[i] = e;
}

/* Remove slot i without tombstones (backward-shift deletion). The caller has closed
 * its stat fd; its schedstat fd is closed here. */
static void cache_delete(struct cg_scanner *sc, uint32_t i)
{
    if (sc->tab[i].sfd >= 0) {
        close(sc->tab[i].sfd);
        sc->nsfds--;
    }
    uint32_t mask = sc->cap - 1;
    uint32_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (sc->tab[j].tid == 0)
            break;
        uint32_t home = tid_hash(sc->tab[j].tid) & mask;
        /* Entry j may move to the hole at i unless its home lies in (i, j]. */
        int stays = (i <= j) ? (i < home && home <= j) : (i < home || home <= j);
        if (stays)
            continue;
        sc->tab[i] = sc->tab[j];
        i = j;
    }
    sc->tab[i].tid = 0;
    sc->tab[i].fd = -1;
    sc->tab[i].sfd = -1;
    sc->nfds--;
}

static uint32_t table_cap_for(uint32_t max_fds)
{
    uint32_t cap = 16;
    while (cap < 2 * (uint64_t)max_fds)
        cap <<= 1;
    return cap;
}

/* Rebuild into a table of new_cap slots, closing entries with age >= min_age
 * (min_age 0: keep everything). 0 or ENOMEM (then nothing changed). */
static int cache_rebuild(struct cg_scanner *sc, uint32_t new_cap, uint64_t min_age)
{
    struct entry *tab = calloc(new_cap, sizeof *tab);
    if (tab == NULL)
        return ENOMEM;
    uint32_t kept = 0, kept_s = 0;
    for (uint32_t i = 0; i < sc->cap; i++) {
        struct entry e = sc->tab[i];
        if (e.tid == 0)
            continue;
        if (min_age > 0 && sc->epoch - e.seen >= min_age) {
            close(e.fd);
            if (e.sfd >= 0)
                close(e.sfd);
            continue;
        }
        table_put(tab, new_cap, e);
        kept++;
        kept_s += e.sfd >= 0;
    }
    free(sc->tab);
    sc->tab = tab;
    sc->cap = new_cap;
    sc->nfds = kept;
    sc->nsfds = kept_s;
    return 0;
}

/* Make room for `need` more fds before a scan: close the least recently listed
 * entries, whole scans at a time, oldest first, until `need` and at least a
 * quarter of max_fds are free or nothing listed before this scan is left.
 * Entries of tids in the current list were marked with this epoch beforehand,
 * so they stay. */
static void cache_sweep(struct cg_scanner *sc, uint64_t need)
{
    uint32_t hist[AGE_BUCKETS] = {0};
    for (uint32_t i = 0; i < sc->cap; i++) {
        if (sc->tab[i].tid == 0)
            continue;
        uint64_t age = sc->epoch - sc->tab[i].seen;
        hist[age < AGE_BUCKETS ? age : AGE_BUCKETS - 1]++;
    }
    uint64_t want = sc->max_fds / 4 > need ? sc->max_fds / 4 : need;
    uint64_t freed = 0, min_age = 1;
    for (uint64_t age = AGE_BUCKETS - 1; age >= 1; age--) {
        freed += hist[age];
        if (freed >= want) {
            min_age = age;
            break;
        }
    }
    if (freed > 0)
        cache_rebuild(sc, sc->cap, min_age);    /* ENOMEM: stay full, read uncached */
}

/* Keep fd for tid if there is room; otherwise close it. */
static void cache_offer(struct cg_scanner *sc, int32_t tid, int fd)
{
    if (sc->nfds + sc->nsfds >= sc->max_fds) {
        close(fd);
        return;
    }
    if (2 * (uint64_t)(sc->nfds + 1) > sc->cap) {
        uint32_t cap = sc->cap ? sc->cap * 2 : 16;
        uint32_t limit = table_cap_for(sc->max_fds);
        if (cap > limit)
            cap = limit;
        if (cap <= sc->cap || cache_rebuild(sc, cap, 0) != 0) {
            close(fd);
            return;
        }
    }
    struct entry e = { .tid = tid, .fd = fd, .sfd = -1, .seen = sc->epoch };
    table_put(sc->tab, sc->cap, e);
    sc->nfds++;
}

/* ---- public API ---- */

int cg_stat_state(const char *buf, size_t len)
{
    /* the comm may hold ')': the state follows the last one */
    const char *close_paren = memrchr(buf, ')', len);
    if (close_paren == NULL)
        return -EINVAL;
    const char *p = close_paren + 1, *end = buf + len;
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    if (p == end)
        return -EINVAL;
    unsigned char c = (unsigned char)*p;
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
        return -EINVAL;
    return c;
}

int cg_scanner_new(int proc_dirfd, uint32_t max_fds, struct cg_scanner **out)
{
    if (out == NULL || max_fds > MAX_FDS_LIMIT)
        return EINVAL;
    struct cg_scanner *sc = calloc(1, sizeof *sc);
    if (sc == NULL)
        return ENOMEM;
    sc->proc_fd = fcntl(proc_dirfd, F_DUPFD_CLOEXEC, 0);
    if (sc->proc_fd < 0) {
        int err = errno;
        free(sc);
        return err;
    }
    sc->max_fds = max_fds;
    *out = sc;
    return 0;
}

void cg_scanner_drop_cache(struct cg_scanner *sc)
{
    for (uint32_t i = 0; i < sc->cap; i++)
        if (sc->tab[i].tid != 0) {
            close(sc->tab[i].fd);
            if (sc->tab[i].sfd >= 0)
                close(sc->tab[i].sfd);
        }
    free(sc->tab);
    sc->tab = NULL;
    sc->cap = 0;
    sc->nfds = 0;
    sc->nsfds = 0;
}

void cg_scanner_free(struct cg_scanner *sc)
{
    if (sc == NULL)
        return;
    cg_scanner_drop_cache(sc);
    close(sc->proc_fd);
    free(sc->list);
    free(sc->set);
    free(sc->tids);
    free(sc);
}

uint32_t cg_scanner_cached_fds(struct cg_scanner *sc)
{
    return sc->nfds + sc->nsfds;
}

static ssize_t pread_retry(int fd, void *buf, size_t len, off_t off)
{
    ssize_t n;
    do
        n = pread(fd, buf, len, off);
    while (n < 0 && errno == EINTR);
    return n;
}

int cg_stat_starttime(const char *buf, size_t len, uint64_t *out)
{
    const char *close_paren = buf ? memrchr(buf, ')', len) : NULL;
    if (close_paren == NULL || out == NULL)
        return EINVAL;
    const char *p = close_paren + 1, *end = buf + len;
    /* ") S f4 f5 ... f22 ...": fields after the comm are separated by one space */
    for (int field = 3; field < 22; field++) {
        if (p == end || *p != ' ')
            return EINVAL;
        p++;
        const char *start = p;
        if (field > 3 && p < end && *p == '-')
            p++;                /* tty_nr, tpgid, priority, nice may be negative */
        while (p < end && *p != ' ')
            p++;
        if (p == start)
            return EINVAL;
    }
    if (p == end || *p != ' ')
        return EINVAL;
    p++;
    uint64_t v = 0;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return EINVAL;
        v = v * 10 + d;
        p++;
    }
    /* the field must end inside what was read: a cut line cannot tell 12 from 123 */
    if (p == digits || p == end || (*p != ' ' && *p != '\n'))
        return EINVAL;
    *out = v;
    return 0;
}

static int tally(struct cg_scan_counts *c, const char *buf, size_t len,
                 struct cg_scan_thread *rec)
{
    int st = cg_stat_state(buf, len);
    switch (st) {
    case 'R': c->nr_running++; break;
    case 'S': c->nr_sleeping++; break;
    case 'D': c->nr_uninterruptible++; break;
    case 'T': c->nr_stopped++; break;
    default:
        if (st < 0)
            return EBADMSG;     /* the kernel printed no state after the comm */
        c->nr_other++;
    }
    if (rec != NULL) {
        rec->state = st;
        if (cg_stat_starttime(buf, len, &rec->starttime) != 0)
            return EBADMSG;
    }
    return 0;
}

/* Classify an errno of opening or reading a stat file: 1 counted, 0 not ours. */
static int count_gone(struct cg_scan_counts *c, int err, struct cg_scan_thread *rec)
{
    if (err == ENOENT || err == ESRCH) {
        c->nr_vanished++;
        if (rec != NULL)
            rec->state = 0;
        return 1;
    }
    if (err == EACCES || err == EPERM) {
        c->nr_denied++;
        if (rec != NULL)
            rec->state = -1;
        return 1;
    }
    return 0;
}

int cg_schedstat_clocks(const char *buf, size_t len, uint64_t *run_ns, uint64_t *delay_ns)
{
    if (buf == NULL || run_ns == NULL || delay_ns == NULL)
        return EINVAL;
    const char *p = buf, *end = buf + len;
    uint64_t v[2];
    for (int k = 0; k < 2; k++) {
        uint64_t x = 0;
        const char *digits = p;
        while (p < end && *p >= '0' && *p <= '9') {
            unsigned d = (unsigned)(*p - '0');
            if (x > (UINT64_MAX - d) / 10)
                return EINVAL;
            x = x * 10 + d;
            p++;
        }
        /* each number ends with the space before the next one, inside what was read */
        if (p == digits || p == end || *p != ' ')
            return EINVAL;
        p++;
        v[k] = x;
    }
    *run_ns = v[0];
    *delay_ns = v[1];
    return 0;
}

/* rec->run_ns / delay_ns from <tid>/task/<tid>/schedstat, through the schedstat fd held
 * beside the stat fd when there is one (kept while nfds + nsfds < max_fds); stat_fd is the
 * stat file just read for the same tid. A held schedstat fd is bound to the same task as
 * its stat fd (both were opened while that task lived, and an entry whose stat fd answers
 * ESRCH is dropped with both). One opened by path right after the stat read could only be
 * another task's if the stat's task died and a new task took its tid within those
 * microseconds (the pid space wrapping, or a root writing ns_last_pid): the record then
 * carries that new task's clocks, microseconds old. A thread gone meanwhile, or a refused
 * file, leaves both clocks 0 (such a record adds nothing to a tracker); other errors are
 * returned. */
static int read_clocks(struct cg_scanner *sc, int32_t tid, int stat_fd,
                       struct cg_scan_thread *rec)
{
    char buf[SCHEDSTAT_MAX];
    ssize_t n = -1;
    long slot = cache_find(sc, tid);
    if (slot >= 0 && sc->tab[slot].fd == stat_fd && sc->tab[slot].sfd >= 0) {
        n = pread_retry(sc->tab[slot].sfd, buf, sizeof buf, 0);
        if (n < 0) {            /* dead, or anything else: ask by path */
            close(sc->tab[slot].sfd);
            sc->tab[slot].sfd = -1;
            sc->nsfds--;
        }
    }
    if (n < 0) {
        char path[56];
        snprintf(path, sizeof path, "%d/task/%d/schedstat", (int)tid, (int)tid);
        int fd;
        do
            fd = openat(sc->proc_fd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        while (fd < 0 && errno == EINTR);
        int err = fd < 0 ? errno : 0;
        if (fd >= 0) {
            n = pread_retry(fd, buf, sizeof buf, 0);
            if (n < 0)
                err = errno;
        }
        if (err != 0) {
            if (fd >= 0)
                close(fd);
            if (err == ENOENT || err == ESRCH || err == EACCES || err == EPERM)
                return 0;
            return err;
        }
        if (slot >= 0 && sc->tab[slot].fd == stat_fd && sc->nfds + sc->nsfds < sc->max_fds) {
            sc->tab[slot].sfd = fd;
            sc->nsfds++;
        } else {
            close(fd);
        }
    }
    if (cg_schedstat_clocks(buf, (size_t)n, &rec->run_ns, &rec->delay_ns) != 0)
        return EBADMSG;
    return 0;
}

static int scan_tid(struct cg_scanner *sc, int32_t tid, struct cg_scan_counts *c,
                    struct cg_scan_thread *rec)
{
    char buf[STAT_PREFIX];
    ssize_t n;
    if (rec != NULL)
        memset(rec, 0, sizeof *rec), rec->tid = tid;
    long slot = cache_find(sc, tid);
    if (slot >= 0) {
        struct entry *e = &sc->tab[slot];
        e->seen = sc->epoch;
        n = pread_retry(e->fd, buf, sizeof buf, 0);
        if (n >= 0) {
            int err = tally(c, buf, (size_t)n, rec);
            if (err == 0 && rec != NULL && sc->schedstat)
                err = read_clocks(sc, tid, e->fd, rec);
            return err;
        }
        /* Dead task (ESRCH) or anything else: forget this fd, ask by path. */
        close(e->fd);
        cache_delete(sc, (uint32_t)slot);
    }

    char path[48];
    snprintf(path, sizeof path, "%d/task/%d/stat", (int)tid, (int)tid);
    int fd;
    do
        fd = openat(sc->proc_fd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    sc->opens++;
    if (fd < 0) {
        int err = errno;
        return count_gone(c, err, rec) ? 0 : err;
    }
    n = pread_retry(fd, buf, sizeof buf, 0);
    if (n < 0) {
        int err = errno;
        close(fd);
        return count_gone(c, err, rec) ? 0 : err;
    }
    int err = tally(c, buf, (size_t)n, rec);
    if (err == 0 && rec != NULL && sc->schedstat)
        err = read_clocks(sc, tid, fd, rec);    /* before the cache may close fd */
    if (err != 0 || sc->max_fds == 0)
        close(fd);
    else
        cache_offer(sc, tid, fd);   /* its schedstat fd is kept from the next scan on */
    return err;
}

/* Grow sc->tids to hold at least `need` entries (keeping its contents). */
static int tids_reserve(struct cg_scanner *sc, size_t need)
{
    if (need <= sc->tids_cap)
        return 0;
    size_t cap = sc->tids_cap ? sc->tids_cap : 1024;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / sizeof(int32_t))
            return ENOMEM;
        cap *= 2;
    }
    int32_t *tids = realloc(sc->tids, cap * sizeof *tids);
    if (tids == NULL)
        return ENOMEM;
    sc->tids = tids;
    sc->tids_cap = cap;
    return 0;
}

/* Parse the list and append its distinct non-zero tids to sc->tids from index `at`
 * (*ntids gets how many); count "0" lines. Nothing is read from /proc until the whole
 * list is known to be valid; on error sc->tids beyond `at` is garbage. */
static int parse_list(struct cg_scanner *sc, const char *list, size_t len, size_t at,
                      size_t *ntids, uint64_t *hidden)
{
    size_t lines = 1;
    for (const char *p = list; (p = memchr(p, '\n', (size_t)(list + len - p))) != NULL; p++)
        lines++;
    size_t set_cap = 16;
    while (set_cap < 2 * lines) {
        if (set_cap > SIZE_MAX / 4 / sizeof(int32_t))
            return ENOMEM;
        set_cap <<= 1;
    }
    if (set_cap > sc->set_cap) {
        int32_t *set = malloc(set_cap * sizeof *set);
        if (set == NULL)
            return ENOMEM;
        free(sc->set);
        sc->set = set;
        sc->set_cap = set_cap;
    }
    if (at > SIZE_MAX - lines || tids_reserve(sc, at + lines) != 0)
        return ENOMEM;
    memset(sc->set, 0, set_cap * sizeof *sc->set);
    size_t mask = set_cap - 1, n = 0;
    int32_t *tids = sc->tids + at;
    uint64_t zeros = 0;
    const char *p = list, *end = list + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if (eol == p)
            return EINVAL;      /* empty line: only the final newline may end the list */
        int64_t v = 0;
        for (const char *q = p; q < eol; q++) {
            if (*q < '0' || *q > '9')
                return EINVAL;
            v = v * 10 + (*q - '0');
            if (v > INT32_MAX)
                return EINVAL;
        }
        p = eol + 1;
        if (v == 0) {
            zeros++;
            continue;
        }
        int32_t tid = (int32_t)v;
        size_t i = tid_hash(tid) & mask;
        while (sc->set[i] != 0 && sc->set[i] != tid)
            i = (i + 1) & mask;
        if (sc->set[i] == tid)
            continue;           /* repeated */
        sc->set[i] = tid;
        tids[n++] = tid;
    }
    *ntids = n;
    *hidden = zeros;
    return 0;
}

/* Before reading: mark the cached tids of tids[0..n) as listed now (epoch already
 * advanced), then make room for the others by evicting entries not listed longest. */
static void cache_prepare(struct cg_scanner *sc, const int32_t *tids, size_t n)
{
    if (sc->max_fds == 0)
        return;
    uint64_t misses = 0;
    for (size_t i = 0; i < n; i++) {
        long slot = cache_find(sc, tids[i]);
        if (slot >= 0)
            sc->tab[slot].seen = sc->epoch;
        else
            misses++;
    }
    /* a thread read with its schedstat file wants two fds */
    uint64_t held = (uint64_t)sc->nfds + sc->nsfds, want = misses * (sc->schedstat ? 2 : 1);
    if (misses > 0 && held + want > sc->max_fds)
        cache_sweep(sc, held + want - sc->max_fds);
}

/* Scan tids[0..n) into c (and rec[0..n) if not NULL). */
static int scan_tids(struct cg_scanner *sc, const int32_t *tids, size_t n,
                     struct cg_scan_counts *c, struct cg_scan_thread *rec)
{
    for (size_t i = 0; i < n; i++) {
        int err = scan_tid(sc, tids[i], c, rec ? &rec[i] : NULL);
        if (err != 0)
            return err;
    }
    return 0;
}

int cg_scanner_scan_buf(struct cg_scanner *sc, const char *list, size_t len,
                        struct cg_scan_counts *out)
{
    struct cg_scan_counts c;
    memset(&c, 0, sizeof c);
    memset(out, 0, sizeof *out);
    size_t n;
    int err = parse_list(sc, list, len, 0, &n, &c.nr_hidden);
    if (err != 0)
        return err;
    sc->epoch++;
    c.nr_listed = n;
    cache_prepare(sc, sc->tids, n);
    err = scan_tids(sc, sc->tids, n, &c, NULL);
    if (err != 0)
        return err;
    *out = c;
    return 0;
}

/* Read the whole list behind list_fd into sc->list; *len gets its length. */
static int read_list(struct cg_scanner *sc, int list_fd, size_t *lenp)
{
    size_t len = 0;
    for (;;) {
        if (len == sc->list_cap) {
            if (sc->list_cap >= LIST_MAX)
                return EFBIG;
            size_t cap = sc->list_cap ? sc->list_cap * 2 : LIST_INITIAL;
            char *buf = realloc(sc->list, cap);
            if (buf == NULL)
                return ENOMEM;
            sc->list = buf;
            sc->list_cap = cap;
        }
        ssize_t r = pread_retry(list_fd, sc->list + len, sc->list_cap - len, (off_t)len);
        if (r < 0)
            return errno;
        if (r == 0)
            break;
        len += (size_t)r;
    }
    *lenp = len;
    return 0;
}

int cg_scanner_scan_fd(struct cg_scanner *sc, int list_fd, struct cg_scan_counts *out)
{
    size_t len = 0;
    memset(out, 0, sizeof *out);
    int err = read_list(sc, list_fd, &len);
    if (err != 0)
        return err;
    return cg_scanner_scan_buf(sc, sc->list, len, out);
}

int cg_scanner_scan_many(struct cg_scanner *sc, const int32_t *list_fds, uint32_t n,
                         uint32_t flags, struct cg_scan_counts *counts, int32_t *errs,
                         struct cg_scan_thread *threads, uint64_t threads_cap,
                         uint64_t *thread_end, uint64_t *nthreads)
{
    int records = (flags & CG_SCAN_RECORDS) != 0;
    /* schedstat clocks go into the records: only with CG_SCAN_RECORDS */
    if (sc == NULL || (flags & ~(uint32_t)(CG_SCAN_RECORDS | CG_SCAN_SCHEDSTAT)) != 0 ||
        ((flags & CG_SCAN_SCHEDSTAT) && !records) ||
        (n > 0 && (list_fds == NULL || counts == NULL || errs == NULL)) ||
        (records && (thread_end == NULL || nthreads == NULL || (threads == NULL && threads_cap))))
        return EINVAL;
    if (records)
        *nthreads = 0;
    if (n == 0)
        return 0;
    /* [begin, end) of each list's tids in sc->tids */
    size_t *span = malloc(2 * (size_t)n * sizeof *span);
    if (span == NULL)
        return ENOMEM;
    size_t total = 0;
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (uint32_t i = 0; i < n; i++) {
        size_t len = 0, k = 0;
        int err = list_fds[i] < 0 ? EBADF : read_list(sc, list_fds[i], &len);
        if (err == 0)
            err = parse_list(sc, sc->list, len, total, &k, &counts[i].nr_hidden);
        if (err == ENOMEM) {
            free(span);
            return ENOMEM;
        }
        errs[i] = err;
        if (err != 0) {
            counts[i].nr_hidden = 0;
            k = 0;
        }
        span[2 * i] = total;
        span[2 * i + 1] = total + k;
        counts[i].nr_listed = k;
        total += k;
    }
    if (records) {
        *nthreads = total;
        if (total > threads_cap) {
            free(span);
            memset(counts, 0, (size_t)n * sizeof *counts);
            return ENOSPC;
        }
    }
    sc->epoch++;                /* one scan: every list of the batch is listed now */
    sc->schedstat = (flags & CG_SCAN_SCHEDSTAT) != 0;
    cache_prepare(sc, sc->tids, total);
    for (uint32_t i = 0; i < n; i++) {
        size_t b = span[2 * i], e = span[2 * i + 1];
        if (records)
            thread_end[i] = e;
        if (errs[i] != 0)
            continue;
        int err = scan_tids(sc, sc->tids + b, e - b, &counts[i], records ? threads + b : NULL);
        if (err != 0) {
            errs[i] = err;
            memset(&counts[i], 0, sizeof counts[i]);
        }
    }
    sc->schedstat = 0;
    free(span);
    return 0;
}

uint64_t cg_scanner_opens(struct cg_scanner *sc)
{
    return sc->opens;
}

uint32_t cg_scanner_max_fds(struct cg_scanner *sc)
{
    return sc->max_fds;
}

int cg_scanner_set_max_fds(struct cg_scanner *sc, uint32_t max_fds)
{
    if (sc == NULL || max_fds > MAX_FDS_LIMIT)
        return EINVAL;
    if (sc->nfds + sc->nsfds > max_fds)
        cg_scanner_drop_cache(sc);
    sc->max_fds = max_fds;
    return 0;
}
