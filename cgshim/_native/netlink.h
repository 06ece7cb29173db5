/* netlink: taskstats and cgroupstats over generic netlink (kernel/taskstats.c,
 * include/uapi/linux/taskstats.h, include/uapi/linux/cgroupstats.h).
 *
 * Every function returns 0 or a positive errno value; there is no global
 * mutable state. One socket must not be used by two threads at once (callers
 * serialise requests on a socket; the sequence number is theirs to choose).
 *
 * Errors:
 *   kernel NLMSG_ERROR      -> its errno (EINVAL, ENOENT, ESRCH, EPERM, ...)
 *   no reply in time        -> ETIMEDOUT (SO_RCVTIMEO expired, or the whole
 *                              request outlived that timeout)
 *   malformed reply         -> EBADMSG (truncated, a length that lies, wrong
 *                              genl command, missing attribute, multipart,
 *                              NLMSG_DONE/NOOP/OVERRUN where a reply belongs)
 *   ACK(0) but no reply     -> EBADF from cg_nl_cgroupstats (the kernel found no
 *                              open file at that fd number and sends nothing
 *                              else), ENODATA from the other requests and parsers
 */

#define CG_NL_CTRL_VERSION 2           /* genl version sent to nlctrl */
#define CG_NL_TASKSTATS_GENL_VERSION 1 /* TASKSTATS_GENL_VERSION */

/* struct cgroupstats, kernel order. */
struct cg_nl_cgroupstats {
    uint64_t nr_sleeping;
    uint64_t nr_running;
    uint64_t nr_stopped;
    uint64_t nr_uninterruptible;
    uint64_t nr_io_wait;
};

/* What a TASKSTATS_CMD_NEW reply said besides the struct bytes. */
struct cg_nl_taskstats_reply {
    uint32_t id;        /* the PID or TGID attribute inside the aggregate */
    uint32_t is_tgid;   /* 1: AGGR_TGID/TGID, 0: AGGR_PID/PID */
    uint32_t stats_len; /* payload length of TASKSTATS_TYPE_STATS as sent; the
                           caller's buffer got min(stats_len, cap) bytes */
};

/* An AF_NETLINK/NETLINK_GENERIC socket, SOCK_CLOEXEC, bound to a kernel-chosen
 * port, with SO_RCVTIMEO of timeout_ms (>= 1; 0 would mean "wait forever" and
 * is refused with EINVAL). The caller owns *fd_out and closes it. */
int cg_nl_open(uint32_t timeout_ms, int *fd_out);

/* CTRL_CMD_GETFAMILY for "TASKSTATS" -> its dynamic family id. */
int cg_nl_family_id(int fd, uint32_t seq, uint16_t *family_out);

/* CGROUPSTATS_CMD_GET for an open directory fd of a v1 cgroup. */
int cg_nl_cgroupstats(int fd, uint16_t family, uint32_t seq, int cgroup_fd,
                      struct cg_nl_cgroupstats *out);

/* TASKSTATS_CMD_GET for a pid (tgid == 0) or a thread group (tgid != 0).
 * Copies up to cap bytes of the TASKSTATS_TYPE_STATS payload into stats. */
int cg_nl_taskstats(int fd, uint16_t family, uint32_t seq, uint32_t id, int tgid,
                    struct cg_nl_taskstats_reply *out, uint8_t *stats, size_t cap);

/* Parsers of one whole netlink message (len bytes, exactly as the kernel sent
 * it; len may exceed nlmsg_len only by alignment padding). family 0 accepts any
 * nlmsg_type >= 0x10; otherwise nlmsg_type must equal family. The socket
 * functions above use these same parsers. */
int cg_nl_parse_family(const uint8_t *msg, size_t len, uint16_t *family_out);
int cg_nl_parse_cgroupstats(const uint8_t *msg, size_t len, uint16_t family,
                            struct cg_nl_cgroupstats *out);
int cg_nl_parse_taskstats(const uint8_t *msg, size_t len, uint16_t family,
                          struct cg_nl_taskstats_reply *out, uint8_t *stats, size_t cap);
