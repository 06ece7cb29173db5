/* netlink.c: taskstats and cgroupstats over generic netlink.
 *
 * Kernel side: kernel/taskstats.c (taskstats_user_cmd, cgroupstats_user_cmd,
 * mk_reply), net/netlink/genetlink.c (nlctrl), net/netlink/af_netlink.c
 * (netlink_ack, netlink_recvmsg). See netlink.h for the API and its errors.
 *
 * Every byte the kernel sends goes through the parsers below, which read with
 * memcpy only (attribute payloads sit at 4 mod 8) and check every length
 * against what is left before using it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* recvmmsg */
#endif
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/taskstats.h>
#include <linux/cgroupstats.h>

#include "netlink.h"

#define HDRLEN ((size_t)NLMSG_HDRLEN)           /* 16 */
#define GENLLEN ((size_t)GENL_HDRLEN)           /* 4 */
#define ATTRLEN ((size_t)NLA_HDRLEN)            /* 4 */
#define ALIGN4(n) (((size_t)(n) + 3u) & ~(size_t)3u)
/* receive buffers: datagrams per recvmmsg, bytes each */
#define RX_DATAGRAMS 2
#define RXBUF 8192

/* ---- parsing ---------------------------------------------------------- */

/* Validate the netlink header of one whole message of len bytes. */
static int msg_header(const uint8_t *msg, size_t len, struct nlmsghdr *h)
{
    if (msg == NULL || len < HDRLEN)
        return EBADMSG;
    memcpy(h, msg, sizeof(*h));
    if (h->nlmsg_len < HDRLEN || h->nlmsg_len > len)
        return EBADMSG;
    if (len - h->nlmsg_len >= 4) /* more than alignment padding follows */
        return EBADMSG;
    return 0;
}

/* NLMSG_ERROR payload -> 0 (an ACK) or the positive errno it carries. */
static int msg_error(const uint8_t *msg, const struct nlmsghdr *h)
{
    int32_t error;

    if (h->nlmsg_len < HDRLEN + sizeof(struct nlmsgerr))
        return EBADMSG;
    memcpy(&error, msg + HDRLEN, sizeof(error));
    if (error > 0 || error < -4095)
        return EBADMSG;
    return (int)-error;
}

/* Check a reply header and locate its attributes. Returns 0, the errno of an
 * NLMSG_ERROR (ENODATA for a bare ACK) or EBADMSG. */
static int genl_attrs(const uint8_t *msg, size_t len, uint16_t type, uint8_t cmd,
                      const uint8_t **attrs, size_t *attrs_len)
{
    struct nlmsghdr h;
    struct genlmsghdr g;
    int rc = msg_header(msg, len, &h);

    if (rc)
        return rc;
    if (h.nlmsg_type == NLMSG_ERROR) {
        rc = msg_error(msg, &h);
        return rc ? rc : ENODATA;
    }
    if (h.nlmsg_type < NLMSG_MIN_TYPE)       /* NOOP, DONE, OVERRUN, reserved */
        return EBADMSG;
    if (h.nlmsg_flags & NLM_F_MULTI)         /* a dump: never asked for */
        return EBADMSG;
    if (type != 0 && h.nlmsg_type != type)
        return EBADMSG;
    if (h.nlmsg_len < HDRLEN + GENLLEN)
        return EBADMSG;
    memcpy(&g, msg + HDRLEN, sizeof(g));
    if (g.cmd != cmd)
        return EBADMSG;
    *attrs = msg + HDRLEN + GENLLEN;
    *attrs_len = h.nlmsg_len - HDRLEN - GENLLEN;
    return 0;
}

struct attr {
    uint16_t type;         /* without NLA_F_NESTED / NLA_F_NET_BYTEORDER */
    const uint8_t *data;
    size_t len;            /* payload bytes */
};

/* Next attribute of buf[0..len) at *off: 1 and *a, 0 at the end, -EBADMSG. */
static int attr_next(const uint8_t *buf, size_t len, size_t *off, struct attr *a)
{
    struct nlattr na;
    size_t left;

    if (*off >= len)
        return 0;
    left = len - *off;
    if (left < ATTRLEN)
        return -EBADMSG;
    memcpy(&na, buf + *off, sizeof(na));
    if (na.nla_len < ATTRLEN || na.nla_len > left)
        return -EBADMSG;
    a->type = na.nla_type & NLA_TYPE_MASK;
    a->data = buf + *off + ATTRLEN;
    a->len = na.nla_len - ATTRLEN;
    /* the last attribute's alignment padding may be cut by nlmsg_len */
    *off += ALIGN4(na.nla_len) < left ? ALIGN4(na.nla_len) : left;
    return 1;
}

int cg_nl_parse_family(const uint8_t *msg, size_t len, uint16_t *family_out)
{
    static const char name[] = TASKSTATS_GENL_NAME;
    const uint8_t *attrs;
    size_t alen, off = 0;
    struct attr a;
    int rc, have_id = 0, have_name = 0;
    uint16_t id = 0;

    rc = genl_attrs(msg, len, GENL_ID_CTRL, CTRL_CMD_NEWFAMILY, &attrs, &alen);
    if (rc)
        return rc;
    while ((rc = attr_next(attrs, alen, &off, &a)) > 0) {
        if (a.type == CTRL_ATTR_FAMILY_ID) {
            if (have_id || a.len != sizeof(id))
                return EBADMSG;
            memcpy(&id, a.data, sizeof(id));
            have_id = 1;
        } else if (a.type == CTRL_ATTR_FAMILY_NAME) {
            /* NUL-terminated string: "TASKSTATS\0" */
            if (have_name || a.len < sizeof(name) || memcmp(a.data, name, sizeof(name)) != 0)
                return EBADMSG;
            have_name = 1;
        }
    }
    if (rc < 0 || !have_id || !have_name || id < GENL_MIN_ID)
        return EBADMSG;
    *family_out = id;
    return 0;
}

int cg_nl_parse_cgroupstats(const uint8_t *msg, size_t len, uint16_t family,
                            struct cg_nl_cgroupstats *out)
{
    const uint8_t *attrs;
    size_t alen, off = 0;
    struct attr a;
    int rc, have = 0;
    struct cg_nl_cgroupstats cs;

    rc = genl_attrs(msg, len, family, CGROUPSTATS_CMD_NEW, &attrs, &alen);
    if (rc)
        return rc;
    while ((rc = attr_next(attrs, alen, &off, &a)) > 0) {
        if (a.type != CGROUPSTATS_TYPE_CGROUP_STATS)
            continue; /* UNSPEC pads, attributes of a future kernel */
        /* struct cgroupstats is five u64 in kernel order; accept a longer one */
        if (have || a.len < sizeof(cs))
            return EBADMSG;
        memcpy(&cs, a.data, sizeof(cs));
        have = 1;
    }
    if (rc < 0 || !have)
        return EBADMSG;
    *out = cs;
    return 0;
}

int cg_nl_parse_taskstats(const uint8_t *msg, size_t len, uint16_t family,
                          struct cg_nl_taskstats_reply *out, uint8_t *stats, size_t cap)
{
    const uint8_t *attrs, *sdata = NULL;
    size_t alen, off = 0, slen = 0;
    struct attr a, n;
    int rc, nrc, have_aggr = 0, have_id = 0;
    uint32_t id = 0, is_tgid = 0;

    rc = genl_attrs(msg, len, family, TASKSTATS_CMD_NEW, &attrs, &alen);
    if (rc)
        return rc;
    while ((rc = attr_next(attrs, alen, &off, &a)) > 0) {
        size_t noff = 0;
        uint16_t want;

        if (a.type != TASKSTATS_TYPE_AGGR_PID && a.type != TASKSTATS_TYPE_AGGR_TGID)
            continue; /* TASKSTATS_TYPE_NULL pads, unknown attributes */
        if (have_aggr)
            return EBADMSG; /* one request, one aggregate */
        have_aggr = 1;
        is_tgid = a.type == TASKSTATS_TYPE_AGGR_TGID;
        want = is_tgid ? TASKSTATS_TYPE_TGID : TASKSTATS_TYPE_PID;
        while ((nrc = attr_next(a.data, a.len, &noff, &n)) > 0) {
            if (n.type == TASKSTATS_TYPE_PID || n.type == TASKSTATS_TYPE_TGID) {
                if (n.type != want || have_id || n.len != sizeof(id))
                    return EBADMSG;
                memcpy(&id, n.data, sizeof(id));
                have_id = 1;
            } else if (n.type == TASKSTATS_TYPE_STATS) {
                if (sdata != NULL)
                    return EBADMSG;
                sdata = n.data;
                slen = n.len;
            }
        }
        if (nrc < 0)
            return EBADMSG;
    }
    if (rc < 0 || !have_aggr || !have_id || sdata == NULL || slen > UINT32_MAX)
        return EBADMSG;
    if (stats != NULL && cap > 0)
        memcpy(stats, sdata, slen < cap ? slen : cap);
    out->id = id;
    out->is_tgid = is_tgid;
    out->stats_len = (uint32_t)slen;
    return 0;
}

/* ---- socket ----------------------------------------------------------- */

int cg_nl_open(uint32_t timeout_ms, int *fd_out)
{
    struct sockaddr_nl sa;
    struct timeval tv;
    int fd, err;

    if (timeout_ms == 0 || fd_out == NULL)
        return EINVAL;
    fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
    if (fd < 0)
        return errno;
    tv.tv_sec = timeout_ms / 1000;
    tv.tv_usec = (timeout_ms % 1000) * 1000;
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        err = errno;
        close(fd);
        return err;
    }
    *fd_out = fd;
    return 0;
}

/* A request: netlink header, genl header, one attribute of up to 12 bytes. */
struct request {
    struct nlmsghdr n;
    struct genlmsghdr g;
    struct nlattr a;
    uint8_t payload[12];
};

static int send_request(int fd, uint16_t type, uint32_t seq, uint8_t cmd, uint8_t version,
                        uint16_t attr, const void *payload, size_t plen)
{
    struct request r;
    struct sockaddr_nl sa;
    size_t len = HDRLEN + GENLLEN + ATTRLEN + ALIGN4(plen);
    ssize_t n;

    if (plen > sizeof(r.payload))
        return EINVAL;
    memset(&r, 0, sizeof(r));
    r.n.nlmsg_len = (uint32_t)len;
    r.n.nlmsg_type = type;
    r.n.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    r.n.nlmsg_seq = seq;
    r.g.cmd = cmd;
    r.g.version = version;
    r.a.nla_len = (uint16_t)(ATTRLEN + plen);
    r.a.nla_type = attr;
    memcpy(r.payload, payload, plen);
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    do
        n = sendto(fd, &r, len, 0, (struct sockaddr *)&sa, sizeof(sa));
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno;
    return (size_t)n == len ? 0 : EIO;
}

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Parse one reply message; 0 on success, else an errno (ENODATA for an ACK). */
typedef int (*parse_fn)(const uint8_t *msg, size_t len, void *ctx);

enum { WAIT_REPLY, WAIT_ACK };

/* Walk the messages of one datagram that belong to seq. Returns 0 to keep
 * receiving, 1 when the request is complete, or -errno. */
static int walk_datagram(const uint8_t *buf, size_t n, uint32_t seq, int *state,
                         parse_fn parse, void *ctx, int ack_only_err)
{
    size_t off = 0;

    while (off < n) {
        struct nlmsghdr h;
        size_t mlen;
        int rc;

        if (n - off < HDRLEN)
            return -EBADMSG;
        memcpy(&h, buf + off, sizeof(h));
        if (h.nlmsg_len < HDRLEN || h.nlmsg_len > n - off)
            return -EBADMSG;
        mlen = h.nlmsg_len;
        if (h.nlmsg_seq == seq) {
            if (h.nlmsg_type == NLMSG_ERROR) {
                rc = msg_error(buf + off, &h);
                if (rc)
                    return -rc;
                /* ACK(0): the request is done; was there a reply before it? */
                return *state == WAIT_ACK ? 1 : -ack_only_err;
            }
            if (h.nlmsg_type == NLMSG_NOOP)
                ; /* nothing to say */
            else if (*state == WAIT_ACK)
                return -EBADMSG; /* a second reply to one request */
            else {
                rc = parse(buf + off, mlen, ctx);
                if (rc)
                    return -rc;
                *state = WAIT_ACK;
            }
        }
        off += ALIGN4(mlen) < n - off ? ALIGN4(mlen) : n - off;
    }
    return 0;
}

/* Deadline of a request that has to wait again: now + the socket's receive timeout. */
static int deadline_ms(int fd, uint64_t *deadline)
{
    struct timeval tv;
    socklen_t tvlen = sizeof(tv);

    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &tvlen) != 0)
        return errno;
    *deadline = now_ms() + (uint64_t)tv.tv_sec * 1000u + (uint64_t)tv.tv_usec / 1000u;
    return 0;
}

/* Receive until the reply to seq and its ACK arrived, an error answered it, or
 * the socket's receive timeout passed. Messages of other sequence numbers
 * (late answers to requests that timed out) and datagrams not sent by the
 * kernel are skipped.
 *
 * Generic netlink handles a request inside the sender's sendto(): the reply and
 * the ACK are both queued when it returns, so one recvmmsg(MSG_WAITFORONE)
 * usually takes both (send + one receive per request). A datagram larger than
 * a buffer is reported by MSG_TRUNC and rejected (EMSGSIZE), never parsed cut:
 * the kernel's replies here are well under 1 KiB. */
static int transact(int fd, uint32_t seq, parse_fn parse, void *ctx, int ack_only_err)
{
    uint8_t bufs[RX_DATAGRAMS][RXBUF];
    struct sockaddr_nl sas[RX_DATAGRAMS];
    struct iovec iov[RX_DATAGRAMS];
    struct mmsghdr msgs[RX_DATAGRAMS];
    uint64_t deadline = 0;
    int state = WAIT_REPLY;

    for (;;) {
        int i, n, rc = 0;

        for (i = 0; i < RX_DATAGRAMS; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = RXBUF;
            memset(&msgs[i], 0, sizeof(msgs[i]));
            msgs[i].msg_hdr.msg_name = &sas[i];
            msgs[i].msg_hdr.msg_namelen = sizeof(sas[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        n = recvmmsg(fd, msgs, RX_DATAGRAMS,
                     state == WAIT_ACK ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                /* the reply came; its ACK did not: the reply stands and a
                 * late ACK is skipped as stale by the next request */
                return state == WAIT_ACK ? 0 : ETIMEDOUT;
            if (errno != EINTR)
                return errno;
            n = 0;
        }
        for (i = 0; i < n && rc == 0; i++) {
            const struct sockaddr_nl *sa = &sas[i];

            if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
                return EMSGSIZE;
            if (msgs[i].msg_hdr.msg_namelen < sizeof(*sa) || sa->nl_family != AF_NETLINK ||
                sa->nl_pid != 0)
                continue; /* not from the kernel */
            rc = walk_datagram(bufs[i], msgs[i].msg_len, seq, &state, parse, ctx, ack_only_err);
        }
        if (rc < 0)
            return -rc;
        if (rc > 0)
            return 0;
        /* only stale or foreign messages so far (or a reply without its ACK):
         * wait again, bounded by one receive timeout from here */
        if (deadline == 0) {
            rc = deadline_ms(fd, &deadline);
            if (rc)
                return rc;
        } else if (now_ms() > deadline) {
            return state == WAIT_ACK ? 0 : ETIMEDOUT;
        }
    }
}

struct family_ctx { uint16_t id; };

static int parse_family_cb(const uint8_t *msg, size_t len, void *ctx)
{
    return cg_nl_parse_family(msg, len, &((struct family_ctx *)ctx)->id);
}

int cg_nl_family_id(int fd, uint32_t seq, uint16_t *family_out)
{
    static const char name[] = TASKSTATS_GENL_NAME;
    struct family_ctx c = {0};
    int rc;

    rc = send_request(fd, GENL_ID_CTRL, seq, CTRL_CMD_GETFAMILY, CG_NL_CTRL_VERSION,
                      CTRL_ATTR_FAMILY_NAME, name, sizeof(name));
    if (rc == 0)
        rc = transact(fd, seq, parse_family_cb, &c, ENODATA);
    if (rc == 0)
        *family_out = c.id;
    return rc;
}

struct cgroupstats_ctx { uint16_t family; struct cg_nl_cgroupstats *out; };

static int parse_cgroupstats_cb(const uint8_t *msg, size_t len, void *ctx)
{
    struct cgroupstats_ctx *c = ctx;

    return cg_nl_parse_cgroupstats(msg, len, c->family, c->out);
}

int cg_nl_cgroupstats(int fd, uint16_t family, uint32_t seq, int cgroup_fd,
                      struct cg_nl_cgroupstats *out)
{
    struct cgroupstats_ctx c = {family, out};
    uint32_t cfd = (uint32_t)cgroup_fd;
    int rc;

    if (cgroup_fd < 0 || family < GENL_MIN_ID)
        return cgroup_fd < 0 ? EBADF : EINVAL;
    rc = send_request(fd, family, seq, CGROUPSTATS_CMD_GET, CG_NL_TASKSTATS_GENL_VERSION,
                      CGROUPSTATS_CMD_ATTR_FD, &cfd, sizeof(cfd));
    /* cgroupstats_user_cmd() answers an fd that is not open with no reply and
     * return 0: only the ACK comes, which means EBADF here */
    return rc ? rc : transact(fd, seq, parse_cgroupstats_cb, &c, EBADF);
}

struct taskstats_ctx {
    uint16_t family;
    struct cg_nl_taskstats_reply *out;
    uint8_t *stats;
    size_t cap;
};

static int parse_taskstats_cb(const uint8_t *msg, size_t len, void *ctx)
{
    struct taskstats_ctx *c = ctx;

    return cg_nl_parse_taskstats(msg, len, c->family, c->out, c->stats, c->cap);
}

int cg_nl_taskstats(int fd, uint16_t family, uint32_t seq, uint32_t id, int tgid,
                    struct cg_nl_taskstats_reply *out, uint8_t *stats, size_t cap)
{
    struct taskstats_ctx c = {family, out, stats, cap};
    int rc;

    if (family < GENL_MIN_ID)
        return EINVAL;
    rc = send_request(fd, family, seq, TASKSTATS_CMD_GET, CG_NL_TASKSTATS_GENL_VERSION,
                      tgid ? TASKSTATS_CMD_ATTR_TGID : TASKSTATS_CMD_ATTR_PID,
                      &id, sizeof(id));
    return rc ? rc : transact(fd, seq, parse_taskstats_cb, &c, ENODATA);
}

/* ---- many cgroups in one call ------------------------------------------- */

#define MANY_REQLEN (HDRLEN + GENLLEN + ATTRLEN + 4u) /* 28: one CGROUPSTATS request */
#define MANY_RXSLOT 1024u       /* bytes per received datagram; answers are < 100 */
#define NO_ANSWER (-1)          /* errs[i] while cgroup i has no answer yet */
#define ASK_AGAIN (-2)          /* internal: its answer was dropped (ENOBUFS) */

int cg_nl_walk_cgroupstats(const uint8_t *buf, size_t len, uint16_t family, uint32_t seq0,
                           uint32_t n, uint32_t last, struct cg_nl_cgroupstats *out,
                           int32_t *errs)
{
    size_t off = 0;
    int complete = 0;

    if (buf == NULL || (n > 0 && (out == NULL || errs == NULL)))
        return -EBADMSG;
    while (off < len) {
        struct nlmsghdr h;
        uint32_t i;
        size_t mlen;

        if (len - off < HDRLEN)
            return -EBADMSG;
        memcpy(&h, buf + off, sizeof(h));
        if (h.nlmsg_len < HDRLEN || h.nlmsg_len > len - off)
            return -EBADMSG;
        mlen = h.nlmsg_len;
        i = h.nlmsg_seq - seq0; /* mod 2^32: sequence numbers wrap */
        if (i < n && h.nlmsg_type != NLMSG_NOOP) {
            if (h.nlmsg_type == NLMSG_ERROR) {
                int e = msg_error(buf + off, &h);

                if (e != 0)          /* refused: that cgroup's errno */
                    errs[i] = errs[i] == NO_ANSWER ? e : EBADMSG;
                else if (errs[i] == NO_ANSWER)
                    errs[i] = EBADF; /* ACK(0) with no reply: the fd was not open */
                if (i == last)
                    complete = 1;
            } else {
                struct cg_nl_cgroupstats cs;
                int rc = cg_nl_parse_cgroupstats(buf + off, mlen, family, &cs);

                if (errs[i] != NO_ANSWER)
                    errs[i] = EBADMSG; /* a second answer to one request */
                else {
                    errs[i] = rc;
                    if (rc == 0)
                        out[i] = cs;
                }
            }
        }
        off += ALIGN4(mlen) < len - off ? ALIGN4(mlen) : len - off;
    }
    return complete;
}

/* Send requests for the cgroups of [a, b) still without an answer, in one datagram.
 * *last gets the index of the last one sent (the one that asks for an ACK).
 * Returns 0 with *sent == 0 if there was none. */
static int many_send(int fd, uint16_t family, uint32_t seq0, const int32_t *fds,
                     const int32_t *errs, uint32_t a, uint32_t b, uint8_t *tx,
                     uint32_t *last, uint32_t *sent)
{
    struct sockaddr_nl sa;
    uint32_t i, k = 0;
    size_t len;
    ssize_t r;

    for (i = a; i < b; i++) {
        struct request q;
        uint32_t cfd;

        if (errs[i] != NO_ANSWER)
            continue;
        cfd = (uint32_t)fds[i];
        memset(&q, 0, sizeof(q));
        q.n.nlmsg_len = (uint32_t)MANY_REQLEN;
        q.n.nlmsg_type = family;
        q.n.nlmsg_flags = NLM_F_REQUEST;
        q.n.nlmsg_seq = seq0 + i;
        q.g.cmd = CGROUPSTATS_CMD_GET;
        q.g.version = CG_NL_TASKSTATS_GENL_VERSION;
        q.a.nla_len = (uint16_t)(ATTRLEN + sizeof(cfd));
        q.a.nla_type = CGROUPSTATS_CMD_ATTR_FD;
        memcpy(q.payload, &cfd, sizeof(cfd));
        memcpy(tx + (size_t)k * MANY_REQLEN, &q, MANY_REQLEN);
        *last = i;
        k++;
    }
    *sent = k;
    if (k == 0)
        return 0;
    /* the last one asks for an ACK: its NLMSG_ERROR closes the window */
    {
        struct nlmsghdr h;
        uint8_t *p = tx + (size_t)(k - 1) * MANY_REQLEN;

        memcpy(&h, p, sizeof(h));
        h.nlmsg_flags |= NLM_F_ACK;
        memcpy(p, &h, sizeof(h));
    }
    len = (size_t)k * MANY_REQLEN;
    memset(&sa, 0, sizeof(sa));
    sa.nl_family = AF_NETLINK;
    do
        r = sendto(fd, tx, len, 0, (struct sockaddr *)&sa, sizeof(sa));
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return errno;
    return (size_t)r == len ? 0 : EIO;
}

/* Collect the answers of one window [a, b) whose last request is `last`. */
static int many_collect(int fd, uint16_t family, uint32_t seq0, uint32_t a, uint32_t b,
                        uint32_t last, struct cg_nl_cgroupstats *out, int32_t *errs,
                        uint8_t *rx, int *overflow)
{
    struct sockaddr_nl sas[CG_NL_MANY_RX];
    struct iovec iov[CG_NL_MANY_RX];
    struct mmsghdr msgs[CG_NL_MANY_RX];
    int complete = 0, broken = 0, timed_out = 0;
    uint32_t i;

    *overflow = 0;
    while (!complete) {
        int k, r;

        for (k = 0; k < CG_NL_MANY_RX; k++) {
            iov[k].iov_base = rx + (size_t)k * MANY_RXSLOT;
            iov[k].iov_len = MANY_RXSLOT;
            memset(&msgs[k], 0, sizeof(msgs[k]));
            msgs[k].msg_hdr.msg_name = &sas[k];
            msgs[k].msg_hdr.msg_namelen = sizeof(sas[k]);
            msgs[k].msg_hdr.msg_iov = &iov[k];
            msgs[k].msg_hdr.msg_iovlen = 1;
        }
        /* Every answer was queued inside our sendto, so the queue normally holds the
         * whole window; MSG_WAITFORONE waits (up to SO_RCVTIMEO) only if it is empty.
         * After an overflow nothing more is coming: do not wait at all. */
        r = recvmmsg(fd, msgs, CG_NL_MANY_RX, *overflow ? MSG_DONTWAIT : MSG_WAITFORONE, NULL);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) { /* the kernel dropped answers: the queue was full */
                *overflow = 1;
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                timed_out = !*overflow;
                break;
            }
            return errno;
        }
        for (k = 0; k < r; k++) {
            const struct sockaddr_nl *sa = &sas[k];
            const uint8_t *buf = rx + (size_t)k * MANY_RXSLOT;
            size_t len = msgs[k].msg_len;
            int w;

            if (msgs[k].msg_hdr.msg_namelen < sizeof(*sa) || sa->nl_family != AF_NETLINK ||
                sa->nl_pid != 0)
                continue; /* not from the kernel */
            if (msgs[k].msg_hdr.msg_flags & MSG_TRUNC) {
                struct nlmsghdr h;

                if (len >= HDRLEN) {
                    memcpy(&h, buf, sizeof(h));
                    i = h.nlmsg_seq - (seq0 + a);
                    if (i < b - a && errs[a + i] == NO_ANSWER)
                        errs[a + i] = EMSGSIZE;
                    if (a + i == last && i < b - a)
                        complete = 1;
                }
                continue;
            }
            w = cg_nl_walk_cgroupstats(buf, len, family, seq0 + a, b - a, last - a,
                                       out + a, errs + a);
            if (w < 0)
                broken = 1;
            else if (w > 0)
                complete = 1;
        }
    }
    for (i = a; i < b; i++) {
        if (errs[i] != NO_ANSWER)
            continue;
        if (*overflow)
            errs[i] = ASK_AGAIN;
        else if (broken)
            errs[i] = EBADMSG;
        else if (timed_out)
            errs[i] = ETIMEDOUT;
        else
            errs[i] = EBADF; /* the window closed without a word for it */
    }
    return 0;
}

int cg_nl_cgroupstats_many(int fd, uint16_t family, uint32_t *seq, const int32_t *cgroup_fds,
                           uint32_t n, uint32_t window, struct cg_nl_cgroupstats *out,
                           int32_t *errs)
{
    uint8_t *tx = NULL, *rx = NULL;
    uint32_t i, a, seq0;
    int rcvbuf = 0, rc = 0, retry = 0;
    socklen_t optlen = sizeof(rcvbuf);

    if (seq == NULL || family < GENL_MIN_ID || (n > 0 && (cgroup_fds == NULL || out == NULL ||
                                                         errs == NULL)))
        return EINVAL;
    if (n == 0)
        return 0;
    if (n > 0x7fffffffu)
        return EINVAL;
    /* SO_RCVBUF reports what the kernel compares sk_rmem_alloc with (twice the
     * value set); each queued answer costs its skb's truesize. */
    if (window == 0) {
        if (getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, &optlen) != 0)
            return errno;
        window = rcvbuf > 0 ? (uint32_t)rcvbuf / CG_NL_MANY_SKB_COST : 1;
    }
    if (window < 1)
        window = 1;
    if (window > CG_NL_MANY_WINDOW)
        window = CG_NL_MANY_WINDOW;
    tx = malloc((size_t)CG_NL_MANY_WINDOW * MANY_REQLEN);
    rx = malloc((size_t)CG_NL_MANY_RX * MANY_RXSLOT);
    if (tx == NULL || rx == NULL) {
        rc = ENOMEM;
        goto done;
    }
    seq0 = *seq;
    for (i = 0; i < n; i++)
        errs[i] = cgroup_fds[i] < 0 ? EBADF : NO_ANSWER;
    for (a = 0; a < n;) {
        uint32_t b = n - a > window ? a + window : n, last = a, sent = 0;
        int overflow = 0;

        rc = many_send(fd, family, seq0, cgroup_fds, errs, a, b, tx, &last, &sent);
        if (rc)
            goto done;
        if (sent > 0) {
            rc = many_collect(fd, family, seq0, a, b, last, out, errs, rx, &overflow);
            if (rc)
                goto done;
        }
        if (overflow) {
            retry = 1;
            if (window > 1)
                window /= 2; /* the buffer holds fewer answers than estimated */
        }
        a = b;
    }
    *seq = seq0 + n;
    if (retry) {
        /* answers the kernel dropped: ask again, one request and its ACK at a time */
        for (i = 0; i < n; i++) {
            if (errs[i] != ASK_AGAIN)
                continue;
            errs[i] = cg_nl_cgroupstats(fd, family, (*seq)++, cgroup_fds[i], &out[i]);
        }
    }
done:
    free(tx);
    free(rx);
    return rc;
}
