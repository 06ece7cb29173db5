/* procscan: count the states of a cgroup's own threads from /proc, the way
 * cgroupstats_build() (kernel/cgroup/cgroup-v1.c) classifies them.
 *
 * Input is a thread list as the kernel prints it in cgroup.threads (v2) or
 * tasks (v1): decimal tids, one per line, unordered, possibly repeated; each
 * distinct tid is counted once. The last line's newline is optional. A "0"
 * line (a task with no pid in the reader's pid namespace; kernels before the
 * SEQ_SKIP fix in cgroup_procs_show() print it) is counted in nr_hidden, once
 * per line. Any other line (empty, sign, blank, non-digit, > INT32_MAX) makes
 * the list invalid: EINVAL, and nothing is read from /proc.
 *
 * For each distinct tid the state letter is read from
 * <proc>/<tid>/task/<tid>/stat (fs/proc/base.c: tid_base_stuff; the first
 * component may be any tid, not only a thread-group leader, and the file is
 * the per-thread one, not the O(threads) whole-process /proc/<tid>/stat);
 * R, S, D, T go to the four counters, any other letter to nr_other. Threads
 * that exit during the scan (ENOENT/ESRCH, also between open and read) are
 * counted in nr_vanished, EACCES/EPERM in nr_denied; any other error ends the
 * scan with that errno. So after a successful scan
 *   running + sleeping + uninterruptible + stopped + other + vanished + denied
 *   == nr_listed.
 *
 * Cache: a scanner keeps up to max_fds stat files open between scans, in an
 * open-addressing table keyed by tid (no global state), so that a repeated
 * scan costs one pread per thread. A cached fd is bound to the task it was
 * opened for: once that task exits the pread fails with ESRCH, the fd is closed
 * and the tid reopened by path, so pid reuse yields the new task, never a
 * stale state. Each entry remembers the last scan that listed its tid. Before
 * a scan reads anything, the cached tids of its list are marked as listed now;
 * if the others would not fit, a sweep closes the entries least recently
 * listed (whole scans at a time, oldest first) until they fit and at least a
 * quarter of max_fds is free, or until nothing listed before this scan is
 * left. Entries of the current list are never evicted; a tid that finds no
 * room is read uncached (open, pread, close). So at most max_fds fds are ever
 * held, a scanner shared by many cgroups keeps the most recently scanned ones,
 * and fds of threads that died (or left the cgroup) are closed when their tid
 * is listed again (ESRCH), by a sweep once the table is full, or by
 * drop_cache/free: never more than max_fds of them.
 *
 * A scanner is not thread-safe: callers serialise use of one scanner.
 * Functions return 0 or a positive errno value.
 */
struct cg_scan_counts {
    uint64_t nr_running;         /* R */
    uint64_t nr_sleeping;        /* S */
    uint64_t nr_uninterruptible; /* D */
    uint64_t nr_stopped;         /* T */
    uint64_t nr_other;           /* any other letter: I, t, Z, X, P, ... */
    uint64_t nr_listed;          /* distinct tids (other than 0) in the list */
    uint64_t nr_vanished;        /* exited before their state was read */
    uint64_t nr_denied;          /* EACCES/EPERM on the stat file */
    uint64_t nr_hidden;          /* "0" lines: tasks without a pid in this pid namespace */
};

struct cg_scanner;

/* proc_dirfd: an open directory fd of the proc root (dup'ed; the caller keeps
 * its own). max_fds: most stat fds kept open between scans (0: none; at most
 * 1 << 24, else EINVAL). */
int cg_scanner_new(int proc_dirfd, uint32_t max_fds, struct cg_scanner **out);
void cg_scanner_free(struct cg_scanner *sc);

/* Read the whole thread list from list_fd (pread from offset 0 to EOF) and scan.
 * Errors of the read (e.g. ENODEV: the cgroup was removed) are returned as is;
 * EFBIG if the file goes on past 128 MiB (no thread list is that long). */
int cg_scanner_scan_fd(struct cg_scanner *sc, int list_fd, struct cg_scan_counts *out);

/* Scan a thread list already in memory. EINVAL if it is not a tid list. */
int cg_scanner_scan_buf(struct cg_scanner *sc, const char *list, size_t len,
                        struct cg_scan_counts *out);

/* Number of fds currently held open (stat, and schedstat with CG_SCAN_SCHEDSTAT);
 * close them all. */
uint32_t cg_scanner_cached_fds(struct cg_scanner *sc);
void cg_scanner_drop_cache(struct cg_scanner *sc);

/* State letter of one /proc/<pid>/stat line: the first byte after the last ')'
 * that is not a space or tab. Returns the letter (> 0) or -EINVAL if there is no
 * ')' or what follows it is not an ASCII letter. */
int cg_stat_state(const char *buf, size_t len);

/* ---- many thread lists in one call (a node sweep) --------------------------------
 *
 * One record per distinct listed tid, for callers that follow threads from one scan to
 * the next. (tid, starttime) names a thread across pid reuse: starttime is field 22 of
 * the stat line (clock ticks after boot; fs/proc/array.c do_task_stat, task->start_boottime).
 * With CG_SCAN_SCHEDSTAT (only with CG_SCAN_RECORDS), run_ns / delay_ns are the thread's
 * cumulative clocks from /proc/<pid>/task/<tid>/schedstat (fs/proc/base.c
 * proc_pid_schedstat: se.sum_exec_runtime, sched_info.run_delay), read right after its stat
 * line, through a second fd held beside the stat fd (one more pread per thread; the cache
 * then holds up to two fds per thread, never more than max_fds in all; past that, schedstat
 * is opened, read and closed). Both files are of the same task, but for a schedstat opened
 * by path in the microseconds after its task died and a new one took the tid (see
 * read_clocks in procscan.c). 0 and 0 when the clocks could not be
 * read (the thread exited between the two files, or schedstat was refused); without the
 * flag they read 0. */
struct cg_scan_thread {
    int32_t tid;
    int32_t state;          /* the /proc letter (R, S, D, T, ...); 0: vanished; -1: denied */
    uint64_t starttime;     /* stat field 22; 0 when state <= 0 */
    uint64_t run_ns;        /* schedstat field 1, with CG_SCAN_SCHEDSTAT */
    uint64_t delay_ns;      /* schedstat field 2, with CG_SCAN_SCHEDSTAT */
};

#define CG_SCAN_RECORDS 1   /* fill threads[] */
#define CG_SCAN_SCHEDSTAT 2 /* fill run_ns / delay_ns (needs CG_SCAN_RECORDS, else EINVAL) */

/* Scan n thread lists (list_fds[i]: an open cgroup.threads or tasks file, read with
 * pread from offset 0 to EOF) in one call. All lists are read and parsed first, then
 * every cached tid they name is marked as listed by this scan (one epoch for the
 * whole batch, so a cache that holds the node never evicts within a sweep), room is
 * made for the rest, and each thread's stat file is read once per list that names it.
 *
 * counts[i] and errs[i] per list: errs[i] is 0, or the errno that failed that list
 * alone (ENODEV/ENOENT: the cgroup was removed; EINVAL: not a thread list; EFBIG;
 * EBADMSG: a stat line without a state; EMFILE; ...); counts[i] is then all zero.
 *
 * With CG_SCAN_RECORDS, the records of list i are threads[thread_end[i-1] ..
 * thread_end[i]) (thread_end[-1] = 0), in list order; *nthreads gets the total. If
 * threads_cap is too small the call fails with ENOSPC before reading any stat file,
 * with *nthreads set to the number needed. Without it threads may be NULL.
 *
 * Returns 0 or an errno that failed the whole call (EINVAL, ENOMEM, ENOSPC). */
int cg_scanner_scan_many(struct cg_scanner *sc, const int32_t *list_fds, uint32_t n,
                         uint32_t flags, struct cg_scan_counts *counts, int32_t *errs,
                         struct cg_scan_thread *threads, uint64_t threads_cap,
                         uint64_t *thread_end, uint64_t *nthreads);

/* Stat files opened (openat) by this scanner since it was made: a cache that holds
 * the node opens each thread's file once, a thrashing one on every scan. */
uint64_t cg_scanner_opens(struct cg_scanner *sc);

/* Change max_fds (same bounds as cg_scanner_new). Shrinking below the fds held closes
 * them all (the next scan reopens what fits). */
int cg_scanner_set_max_fds(struct cg_scanner *sc, uint32_t max_fds);
uint32_t cg_scanner_max_fds(struct cg_scanner *sc);

/* Field 22 (starttime) of a stat line: 0 and *out, or EINVAL if the line does not
 * reach it or a field before it is not a number. */
int cg_stat_starttime(const char *buf, size_t len, uint64_t *out);

/* The first two numbers of a schedstat line ("%llu %llu %lu\n": sum_exec_runtime,
 * run_delay, pcount): 0, or EINVAL if either is missing, not decimal, > UINT64_MAX, or
 * not followed by a space inside buf (a cut line cannot tell 12 from 123). */
int cg_schedstat_clocks(const char *buf, size_t len, uint64_t *run_ns, uint64_t *delay_ns);
