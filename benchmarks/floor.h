/* Floors: the bare syscalls behind each cgshim path, looped n times in C.
 *
 * Every loop returns the elapsed nanoseconds (CLOCK_MONOTONIC) of its n
 * iterations, or a negative errno when a syscall failed or the kernel answered
 * with an error: a floor that did not do its work must not pass for a fast one.
 * Setup (sockets, fds) is done by the caller, outside the timed loop.
 * This text is both cffi's cdef and the C header: no includes, no guards.
 */

/* wall != 0: time loops by CLOCK_MONOTONIC; 0: by CLOCK_THREAD_CPUTIME_ID, which
 * leaves out the time the thread waited while other tasks ran on its CPU. */
void fl_use_clock(int wall);

/* AF_NETLINK/NETLINK_GENERIC socket, bound, SO_RCVTIMEO 1 s: fd or -errno. */
int fl_nl_open(void);

/* CTRL_CMD_GETFAMILY "TASKSTATS" once: the family id (> 0) or -errno. */
int fl_family_id(int nlfd);

/* n family lookups on the held socket nlfd (request + reply + ACK). */
int64_t fl_family(int nlfd, int n);

/* n times: socket + bind + family lookup + close. */
int64_t fl_family_fresh(int n);

/* n rounds of CGROUPSTATS_CMD_GET (NLM_F_ACK, as cgshim sends it) on each of
 * the ndirs held-open directory fds. */
int64_t fl_cgroupstats(int nlfd, uint16_t family, const int *dirfds, int ndirs, int n);

/* n times: open(path, O_DIRECTORY) + CGROUPSTATS_CMD_GET + close. */
int64_t fl_cgroupstats_open(int nlfd, uint16_t family, const char *path, int n);

/* n TASKSTATS_CMD_GET requests for one pid (NLM_F_ACK). */
int64_t fl_taskstats(int nlfd, uint16_t family, uint32_t pid, int n);

/* n rounds of pread(fd, 512 bytes, 0) over nfds held-open stat files. */
int64_t fl_pread(const int *fds, int nfds, int n);

/* n rounds over ntids tids: openat(procfd, "<tid>/task/<tid>/stat") + read
 * 512 bytes + close. */
int64_t fl_orc(int procfd, const int *tids, int ntids, int n);

/* n rounds over ncg cgroup2 cgroups, the kernel work of one scan reading each:
 * open + read to EOF + close of lists[i] (its cgroup.threads), pread of each of
 * its nfds[i] held stat fds (consecutive in fds), pread of 4096 bytes of its
 * held cpu.pressure fd psi_fds[i] (skipped if < 0). */
int64_t fl_scan(int ncg, char **lists, const int *psi_fds, const int *nfds,
                const int *fds, int n);

/* n times: open(path) of a pinned cgshim BPF iterator (a new pass) + read to EOF
 * in reads of 64 KiB into buf (cap bytes; E2BIG if the pass is longer) + close:
 * the kernel's whole pass, nothing parsed. */
int64_t fl_bpf_pass(const char *path, uint8_t *buf, size_t cap, int n);
