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

/* ---- many cgroups in one call (a node sweep) ----------------------------------
 *
 * CGROUPSTATS_CMD_GET for n held v1 directory fds. The requests go out back to back,
 * many per datagram (netlink_rcv_skb() in net/netlink/af_netlink.c runs every message
 * of a datagram in turn, and genetlink answers each inside that sendto), so after one
 * sendto every answer of the window is already queued; recvmmsg() collects them,
 * CG_NL_MANY_RX datagrams per call. Only the last request of a window asks for an
 * ACK: an NLMSG_ERROR of that sequence number ends the window, and a request with
 * no answer before it got none at all (the kernel's answer to an fd that is not
 * open: EBADF). Answers are matched to cgroups by sequence number (seq + i), never by
 * order.
 *
 * A window holds as many requests as the socket's receive buffer takes answers
 * (SO_RCVBUF / CG_NL_MANY_SKB_COST, at least 1, at most CG_NL_MANY_WINDOW). If the
 * queue overflowed anyway (recv reports ENOBUFS: the kernel dropped answers), the
 * cgroups left without an answer are asked again one by one with an ACK each.
 *
 * errs[i] receives 0 (out[i] is filled) or that cgroup's errno: the kernel's
 * NLMSG_ERROR (ENOENT: removed; EINVAL: not a v1 cgroup), EBADF (fd not open, or < 0),
 * EBADMSG (its reply was malformed), ETIMEDOUT (no answer within SO_RCVTIMEO).
 * One cgroup's failure never touches another's result.
 *
 * window 0 sizes windows from SO_RCVBUF as above; any other value is the number of
 * requests per datagram (tests use it to overflow the queue on purpose).
 *
 * *seq is the first sequence number to use; on return it is the next unused one.
 * Returns 0, or an errno that failed the whole call (EINVAL for bad arguments,
 * ENOMEM, a sendto/recvmmsg error of the socket itself); errs is then unspecified. */
#define CG_NL_MANY_WINDOW 1024
#define CG_NL_MANY_SKB_COST 1280
#define CG_NL_MANY_RX 64
int cg_nl_cgroupstats_many(int fd, uint16_t family, uint32_t *seq, const int32_t *cgroup_fds,
                           uint32_t n, uint32_t window, struct cg_nl_cgroupstats *out,
                           int32_t *errs);

/* The walker cg_nl_cgroupstats_many runs on each received datagram (buf, len bytes):
 * for every message whose sequence number is seq0 + i, i < n, it records the answer
 * in out[i] / errs[i] (errs[i] must be -1 on entry for a cgroup not yet answered; a
 * second answer makes it EBADMSG). Messages of other sequence numbers are skipped.
 * Returns 1 if an NLMSG_ERROR (ACK or error) of seq0 + last was seen (the window is
 * complete), 0 if not, or -EBADMSG if the datagram's framing is broken (a message
 * length that lies). */
int cg_nl_walk_cgroupstats(const uint8_t *buf, size_t len, uint16_t family, uint32_t seq0,
                           uint32_t n, uint32_t last, struct cg_nl_cgroupstats *out,
                           int32_t *errs);
