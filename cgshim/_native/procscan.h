/* procscan: count the states of a cgroup's own threads from /proc, the way
 * cgroupstats_build() (kernel/cgroup/cgroup-v1.c) classifies them.
 *
 * Input is a thread list as the kernel prints it in cgroup.threads (v2) or
 * tasks (v1): decimal tids, one per line, unordered, possibly repeated.
 * For each distinct tid the state letter is read from
 * <proc>/<tid>/task/<tid>/stat (field 3, after the last ')'); R, S, D, T go to
 * the four counters, any other letter to nr_other. Threads that exit during the
 * scan (ENOENT/ESRCH) are counted in nr_vanished, not as errors.
 *
 * A scanner keeps up to max_fds stat files open between scans (keyed by tid) so
 * that a repeated scan costs one pread per thread. A cached fd is bound to the
 * task it was opened for: once that task exits the read fails with ESRCH and the
 * fd is closed and reopened by path, so pid reuse cannot give a stale answer.
 * A scanner is not thread-safe: callers serialise use of one scanner.
 * Functions return 0 or a positive errno value.
 */
struct cg_scan_counts {
    uint64_t nr_running;         /* R */
    uint64_t nr_sleeping;        /* S */
    uint64_t nr_uninterruptible; /* D */
    uint64_t nr_stopped;         /* T */
    uint64_t nr_other;           /* any other letter: I, t, Z, X, P, ... */
    uint64_t nr_listed;          /* distinct tids in the list */
    uint64_t nr_vanished;        /* exited before their state was read */
    uint64_t nr_denied;          /* EACCES/EPERM on the stat file */
};

struct cg_scanner;

/* proc_dirfd: an open directory fd of the proc root (dup'ed; the caller keeps
 * its own). max_fds: most stat fds kept open between scans (0: none). */
int cg_scanner_new(int proc_dirfd, uint32_t max_fds, struct cg_scanner **out);
void cg_scanner_free(struct cg_scanner *sc);

/* Read the whole thread list from list_fd (pread from offset 0 to EOF) and scan. */
int cg_scanner_scan_fd(struct cg_scanner *sc, int list_fd, struct cg_scan_counts *out);

/* Scan a thread list already in memory. EINVAL if it is not a tid list. */
int cg_scanner_scan_buf(struct cg_scanner *sc, const char *list, size_t len,
                        struct cg_scan_counts *out);

/* Number of stat fds currently held open; close them all. */
uint32_t cg_scanner_cached_fds(struct cg_scanner *sc);
void cg_scanner_drop_cache(struct cg_scanner *sc);

/* State letter of one /proc/<pid>/stat line: the first non-blank byte after the
 * last ')'. Returns the letter (> 0) or -EINVAL if there is none. */
int cg_stat_state(const char *buf, size_t len);
