/* floor.c: the least syscall work behind each cgshim path (see floor.h).
 *
 * Netlink requests are sent the way cgshim/_native/netlink.c sends them
 * (NLM_F_REQUEST | NLM_F_ACK, one u32 or string attribute), so the kernel does
 * the same work: kernel/taskstats.c builds the reply, af_netlink.c queues it and
 * then the ACK, both before send() returns. The floor then takes the two
 * datagrams with one recvmmsg(MSG_WAITFORONE), as netlink.c does, and checks only
 * what it must to know the request succeeded (type, seq, error).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/taskstats.h>
#include <linux/cgroupstats.h>

#include "floor.h"

#define RXBUF 8192
#define STAT_READ 512     /* what cgshim's scanner reads of a stat file */
#define PSI_READ 4096     /* what cgshim's Reader reads of cpu.pressure */

/* -errno of a failed read, -EIO for an empty one (errno cleared before). */
#define read_error() (errno ? -(int64_t)errno : -(int64_t)EIO)

static clockid_t clock_id = CLOCK_THREAD_CPUTIME_ID;

void fl_use_clock(int wall)
{
    clock_id = wall ? CLOCK_MONOTONIC : CLOCK_THREAD_CPUTIME_ID;
}

static int64_t now_ns(void)
{
    struct timespec ts;

    clock_gettime(clock_id, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct req {
    struct nlmsghdr n;
    struct genlmsghdr g;
    struct nlattr a;
    char payload[12];
};

static size_t build(struct req *r, uint16_t type, uint32_t seq, uint8_t cmd, uint8_t version,
                    uint16_t attr, const void *p, size_t plen)
{
    size_t len = NLMSG_HDRLEN + GENL_HDRLEN + NLA_HDRLEN + NLA_ALIGN(plen);

    memset(r, 0, sizeof(*r));
    r->n.nlmsg_len = (uint32_t)len;
    r->n.nlmsg_type = type;
    r->n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    r->n.nlmsg_seq = seq;
    r->g.cmd = cmd;
    r->g.version = version;
    r->a.nla_len = (uint16_t)(NLA_HDRLEN + plen);
    r->a.nla_type = attr;
    memcpy(r->payload, p, plen);
    return len;
}

/* Error code of an NLMSG_ERROR message (0: ACK). */
static int nl_err(const char *buf)
{
    struct nlmsgerr e;

    memcpy(&e, buf + NLMSG_HDRLEN, sizeof(e));
    return -e.error;
}

/* send, then one recvmmsg for the reply and the ACK: 0, or a positive errno.
 * The reply is left in buf (RXBUF bytes). */
static int transact(int fd, struct req *r, size_t len, char *buf)
{
    struct nlmsghdr h;
    char ack[64];
    struct iovec iov[2] = {{buf, RXBUF}, {ack, sizeof(ack)}};
    struct mmsghdr m[2];

    memset(m, 0, sizeof(m));
    m[0].msg_hdr.msg_iov = &iov[0];
    m[0].msg_hdr.msg_iovlen = 1;
    m[1].msg_hdr.msg_iov = &iov[1];
    m[1].msg_hdr.msg_iovlen = 1;
    ssize_t sent = send(fd, r, len, 0);

    if (sent != (ssize_t)len)
        return sent < 0 ? errno : EIO;
    int n = recvmmsg(fd, m, 2, MSG_WAITFORONE, NULL);
    if (n < 1)
        return n < 0 ? errno : EBADMSG;
    if (m[0].msg_len < NLMSG_HDRLEN)
        return EBADMSG;
    memcpy(&h, buf, sizeof(h));
    if (h.nlmsg_seq != r->n.nlmsg_seq)
        return EBADMSG;
    if (h.nlmsg_type == NLMSG_ERROR)
        return nl_err(buf) ? nl_err(buf) : ENODATA; /* an error, or an ACK without reply */
    if (n < 2) { /* the ACK came apart: take it on its own */
        ssize_t got = recv(fd, ack, sizeof(ack), 0);
        if (got < 0)
            return errno;
        m[1].msg_len = (unsigned)got;
    }
    if (m[1].msg_len < NLMSG_HDRLEN + sizeof(struct nlmsgerr))
        return EBADMSG;
    memcpy(&h, ack, sizeof(h));
    if (h.nlmsg_type != NLMSG_ERROR || h.nlmsg_seq != r->n.nlmsg_seq || nl_err(ack) != 0)
        return EBADMSG;
    return 0;
}

int fl_nl_open(void)
{
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    struct timeval tv = {.tv_sec = 1};
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);

    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static uint32_t seq_counter = 1;

static int family_request(int fd, char *buf)
{
    static const char name[] = TASKSTATS_GENL_NAME;
    struct req r;
    size_t len = build(&r, GENL_ID_CTRL, seq_counter++, CTRL_CMD_GETFAMILY, 2,
                       CTRL_ATTR_FAMILY_NAME, name, sizeof(name));

    return transact(fd, &r, len, buf);
}

int fl_family_id(int nlfd)
{
    char buf[RXBUF];
    struct nlmsghdr h;
    int rc = family_request(nlfd, buf);

    if (rc)
        return -rc;
    memcpy(&h, buf, sizeof(h));
    size_t off = NLMSG_HDRLEN + GENL_HDRLEN;
    while (off + NLA_HDRLEN <= h.nlmsg_len && h.nlmsg_len <= RXBUF) {
        struct nlattr a;
        memcpy(&a, buf + off, sizeof(a));
        if (a.nla_len < NLA_HDRLEN)
            break;
        if ((a.nla_type & NLA_TYPE_MASK) == CTRL_ATTR_FAMILY_ID && a.nla_len >= NLA_HDRLEN + 2) {
            uint16_t id;
            memcpy(&id, buf + off + NLA_HDRLEN, sizeof(id));
            return id;
        }
        off += NLA_ALIGN(a.nla_len);
    }
    return -EBADMSG;
}

int64_t fl_family(int nlfd, int n)
{
    char buf[RXBUF];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        int rc = family_request(nlfd, buf);
        if (rc)
            return -rc;
    }
    return now_ns() - t0;
}

int64_t fl_family_fresh(int n)
{
    char buf[RXBUF];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        int fd = fl_nl_open();
        if (fd < 0)
            return fd;
        int rc = family_request(fd, buf);
        close(fd);
        if (rc)
            return -rc;
    }
    return now_ns() - t0;
}

static int cgroupstats_request(int nlfd, uint16_t family, int dirfd, char *buf)
{
    struct req r;
    uint32_t v = (uint32_t)dirfd;
    size_t len = build(&r, family, seq_counter++, CGROUPSTATS_CMD_GET, TASKSTATS_GENL_VERSION,
                       CGROUPSTATS_CMD_ATTR_FD, &v, sizeof(v));

    return transact(nlfd, &r, len, buf);
}

int64_t fl_cgroupstats(int nlfd, uint16_t family, const int *dirfds, int ndirs, int n)
{
    char buf[RXBUF];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++)
        for (int j = 0; j < ndirs; j++) {
            int rc = cgroupstats_request(nlfd, family, dirfds[j], buf);
            if (rc)
                return -rc;
        }
    return now_ns() - t0;
}

int64_t fl_cgroupstats_open(int nlfd, uint16_t family, const char *path, int n)
{
    char buf[RXBUF];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        int dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dirfd < 0)
            return -errno;
        int rc = cgroupstats_request(nlfd, family, dirfd, buf);
        close(dirfd);
        if (rc)
            return -rc;
    }
    return now_ns() - t0;
}

int64_t fl_taskstats(int nlfd, uint16_t family, uint32_t pid, int n)
{
    char buf[RXBUF];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        struct req r;
        size_t len = build(&r, family, seq_counter++, TASKSTATS_CMD_GET, TASKSTATS_GENL_VERSION,
                           TASKSTATS_CMD_ATTR_PID, &pid, sizeof(pid));
        int rc = transact(nlfd, &r, len, buf);
        if (rc)
            return -rc;
    }
    return now_ns() - t0;
}

int64_t fl_pread(const int *fds, int nfds, int n)
{
    char buf[STAT_READ];

    errno = 0;
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++)
        for (int j = 0; j < nfds; j++)
            if (pread(fds[j], buf, sizeof(buf), 0) <= 0)
                return read_error();
    return now_ns() - t0;
}

int64_t fl_orc(int procfd, const int *tids, int ntids, int n)
{
    char buf[STAT_READ], path[48];
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++)
        for (int j = 0; j < ntids; j++) {
            snprintf(path, sizeof(path), "%d/task/%d/stat", tids[j], tids[j]);
            int fd = openat(procfd, path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
            if (fd < 0)
                return -errno;
            ssize_t got = read(fd, buf, sizeof(buf));
            int err = errno;
            close(fd);
            if (got <= 0)
                return got < 0 ? -err : -EIO;
        }
    return now_ns() - t0;
}

int64_t fl_scan(int ncg, char **lists, const int *psi_fds, const int *nfds,
                const int *fds, int n)
{
    static char list[1 << 16];
    char buf[PSI_READ];

    errno = 0;
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        const int *f = fds;
        for (int c = 0; c < ncg; c++) {
            int lfd = open(lists[c], O_RDONLY | O_CLOEXEC);
            if (lfd < 0)
                return -errno;
            ssize_t got;
            while ((got = read(lfd, list, sizeof(list))) > 0)
                ;
            int err = errno;
            close(lfd);
            if (got < 0)
                return -err;
            for (int j = 0; j < nfds[c]; j++)
                if (pread(f[j], buf, STAT_READ, 0) <= 0)
                    return read_error();
            f += nfds[c];
            if (psi_fds[c] >= 0 && pread(psi_fds[c], buf, sizeof(buf), 0) <= 0)
                return read_error();
        }
    }
    return now_ns() - t0;
}

int64_t fl_bpf_pass(const char *path, uint8_t *buf, size_t cap, int n)
{
    int64_t t0 = now_ns();

    for (int i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        size_t len = 0;
        for (;;) {
            if (cap - len < 65536) {
                close(fd);
                return -E2BIG;
            }
            ssize_t got = read(fd, buf + len, 65536);
            if (got < 0) {
                int err = errno;
                close(fd);
                return -err;
            }
            if (got == 0)
                break;
            len += (size_t)got;
        }
        close(fd);
        if (len == 0)
            return -EIO;
    }
    return now_ns() - t0;
}
