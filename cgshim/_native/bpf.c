/* bpf.c: load, attach, pin and read cgshim's BPF iterators with libbpf, and parse a pass
 * (see bpf.h; the record format is bpf/records.h, the program bpf/cgshim.bpf.c).
 *
 * Kernel facts used here:
 *  - kernel/bpf/bpf_iter.c bpf_seq_read(): a read() gets whole records only, at most
 *    PAGE_SIZE << 3 bytes, and min(that, count); 0 at the end of the pass.
 *  - kernel/bpf/inode.c: open() of a pinned iterator link starts a new pass (bpf_iter_fops),
 *    needing only read permission on the pin; BPF_ITER_CREATE on a link fd does the same.
 *  - kernel/bpf/cgroup_iter.c: the per-cgroup pass cannot continue in a second read()
 *    (EOPNOTSUPP); order BPF_CGROUP_ITER_DESCENDANTS_PRE walks the start cgroup and all
 *    below it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>

#include "bpf.h"
#include "bpf/records.h"

_Static_assert(sizeof(struct cgshim_rec_head) == 24, "HEAD is 24 bytes");
_Static_assert(sizeof(struct cgshim_rec_cgroup) == 64, "CGROUP is 64 bytes");
_Static_assert(sizeof(struct cgshim_rec_task) == 32, "TASK is 32 bytes");
_Static_assert(sizeof(struct cgshim_rec_end) == 16, "END is 16 bytes");
_Static_assert(CGSHIM_FORMAT == CG_BPF_FORMAT, "one format");
_Static_assert(CGSHIM_NR_STATES == CG_BPF_NR_STATES, "nine states");

#define READ_CHUNK (64 * 1024)
#define PASS_MAX ((size_t)256 << 20)

/* ---- the pass: read buffer, per-cgroup table, id index ---- */

struct cg_bpf_pass {
    uint8_t *buf;
    size_t cap;
    struct cg_bpf_cgroup *cg;
    size_t ncg, cgcap;
    uint32_t *slots;  /* index into cg + 1; 0 = empty; power-of-two size >= 2 * cgcap */
    size_t nslots;
};

int cg_bpf_pass_new(struct cg_bpf_pass **out)
{
    struct cg_bpf_pass *p = calloc(1, sizeof(*p));
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

void cg_bpf_pass_free(struct cg_bpf_pass *p)
{
    if (!p)
        return;
    free(p->buf);
    free(p->cg);
    free(p->slots);
    free(p);
}

static inline uint64_t id_hash(uint64_t x)
{
    /* splitmix64's finaliser: ids are sequential, spread them */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static int table_grow(struct cg_bpf_pass *p)
{
    size_t cgcap = p->cgcap ? p->cgcap * 2 : 256;
    size_t nslots = cgcap * 2;
    struct cg_bpf_cgroup *cg = realloc(p->cg, cgcap * sizeof(*cg));
    if (!cg)
        return ENOMEM;
    p->cg = cg;
    uint32_t *slots = calloc(nslots, sizeof(*slots));
    if (!slots)
        return ENOMEM;
    for (size_t i = 0; i < p->ncg; i++) {
        size_t s = id_hash(cg[i].id) & (nslots - 1);
        while (slots[s])
            s = (s + 1) & (nslots - 1);
        slots[s] = (uint32_t)(i + 1);
    }
    free(p->slots);
    p->slots = slots;
    p->nslots = nslots;
    p->cgcap = cgcap;
    return 0;
}

/* The entry of id, created (zeroed) if absent; *created says which. NULL: ENOMEM. */
static struct cg_bpf_cgroup *table_get(struct cg_bpf_pass *p, uint64_t id, int *created)
{
    if (p->ncg == p->cgcap && table_grow(p))
        return NULL;
    size_t mask = p->nslots - 1;
    size_t s = id_hash(id) & mask;
    while (p->slots[s]) {
        struct cg_bpf_cgroup *c = &p->cg[p->slots[s] - 1];
        if (c->id == id) {
            *created = 0;
            return c;
        }
        s = (s + 1) & mask;
    }
    struct cg_bpf_cgroup *c = &p->cg[p->ncg];
    memset(c, 0, sizeof(*c));
    c->id = id;
    p->slots[s] = (uint32_t)(++p->ncg);
    *created = 1;
    return c;
}

static void table_clear(struct cg_bpf_pass *p)
{
    if (p->ncg && p->slots)
        memset(p->slots, 0, p->nslots * sizeof(*p->slots));
    p->ncg = 0;
}

/* Records are read with memcpy: the buffer gives no alignment guarantee to a fuzzer. */
int cg_bpf_pass_parse(struct cg_bpf_pass *p, const uint8_t *buf, size_t len,
                      struct cg_bpf_result *out)
{
    struct cgshim_rec_head head;
    size_t off;
    uint64_t records = 0;
    int ended = 0;

    memset(out, 0, sizeof(*out));
    table_clear(p);
    if (!buf && len)
        return EINVAL;
    if (len < sizeof(head))
        return EBADMSG;
    memcpy(&head, buf, sizeof(head));
    if (head.kind != CGSHIM_REC_HEAD || head.size != sizeof(head))
        return head.kind == CGSHIM_REC_HEAD ? EBADMSG : EPROTO;
    if (head.magic != CGSHIM_MAGIC || head.format != CGSHIM_FORMAT)
        return EPROTO;
    if (head.mechanism != CGSHIM_MECH_CGROUP && head.mechanism != CGSHIM_MECH_TASK)
        return EBADMSG;
    out->format = head.format;
    out->mechanism = head.mechanism;
    out->root = head.root;
    for (off = sizeof(head); off < len;) {
        uint16_t kind, size;
        if (ended)
            return EBADMSG; /* bytes after END */
        if (len - off < 4)
            return EBADMSG;
        memcpy(&kind, buf + off, 2);
        memcpy(&size, buf + off + 2, 2);
        if (size > len - off)
            return EBADMSG;
        if (kind == CGSHIM_REC_END) {
            struct cgshim_rec_end e;
            if (size != sizeof(e))
                return EBADMSG;
            memcpy(&e, buf + off, sizeof(e));
            out->objects = e.objects;
            ended = 1;
        } else if (kind == CGSHIM_REC_CGROUP && head.mechanism == CGSHIM_MECH_CGROUP) {
            struct cgshim_rec_cgroup r;
            int created;
            if (size != sizeof(r))
                return EBADMSG;
            memcpy(&r, buf + off, sizeof(r));
            if (r.id == 0)
                return EBADMSG;
            struct cg_bpf_cgroup *c = table_get(p, r.id, &created);
            if (!c)
                return ENOMEM;
            if (!created)
                return EBADMSG; /* a pre-order walk visits each cgroup once */
            uint64_t threads = 0;
            for (int i = 0; i < CG_BPF_NR_STATES; i++) {
                c->nr[i] = r.nr[i];
                threads += r.nr[i];
            }
            if (threads == 0 || threads > UINT32_MAX)
                return EBADMSG; /* only cgroups with threads are sent */
            c->threads = (uint32_t)threads;
            c->sum_exec_runtime = r.sum_exec_runtime;
            c->run_delay = r.run_delay;
            records++;
        } else if (kind == CGSHIM_REC_TASK && head.mechanism == CGSHIM_MECH_TASK) {
            struct cgshim_rec_task r;
            int created;
            if (size != sizeof(r))
                return EBADMSG;
            memcpy(&r, buf + off, sizeof(r));
            if (r.id == 0 || r.state >= CG_BPF_NR_STATES)
                return EBADMSG;
            struct cg_bpf_cgroup *c = table_get(p, r.id, &created);
            if (!c)
                return ENOMEM;
            if (c->threads == UINT32_MAX)
                return EBADMSG;
            c->nr[r.state]++;
            c->threads++;
            c->sum_exec_runtime += r.sum_exec_runtime; /* u64, wraps as the kernel's sums */
            c->run_delay += r.run_delay;
            records++;
        } else {
            return EBADMSG; /* unknown kind, a second HEAD, or the other mechanism's record */
        }
        off += size;
    }
    if (!ended)
        return EBADMSG;
    out->bytes = len;
    out->records = records;
    out->nr_cgroups = p->ncg;
    out->cgroups = p->cg;
    out->memory = p->cap + p->cgcap * sizeof(*p->cg) + p->nslots * sizeof(*p->slots);
    return 0;
}

int cg_bpf_pass_read(struct cg_bpf_pass *p, int iter_fd, struct cg_bpf_result *out)
{
    size_t len = 0;

    memset(out, 0, sizeof(*out));
    for (;;) {
        if (p->cap - len < READ_CHUNK) {
            if (p->cap >= PASS_MAX)
                return EFBIG;
            size_t cap = p->cap ? p->cap * 2 : 4 * READ_CHUNK;
            uint8_t *buf = realloc(p->buf, cap);
            if (!buf)
                return ENOMEM;
            p->buf = buf;
            p->cap = cap;
        }
        ssize_t n = read(iter_fd, p->buf + len, READ_CHUNK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    return cg_bpf_pass_parse(p, p->buf, len, out);
}

/* ---- libbpf: messages go to a thread-local buffer, never to stderr ---- */

static __thread char last_message[512];
static pthread_once_t print_once = PTHREAD_ONCE_INIT;

static int print_hook(enum libbpf_print_level level, const char *fmt, va_list ap)
{
    if (level == LIBBPF_DEBUG)
        return 0;
    char line[512];
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    if (n <= 0)
        return 0;
    /* keep the last non-empty line: libbpf's summary ("failed to load object ...") comes
     * after the verifier log, whose last line says why */
    size_t l = strnlen(line, sizeof(line));
    while (l && (line[l - 1] == '\n' || line[l - 1] == ' '))
        line[--l] = 0;
    if (l && strncmp(line, "libbpf: failed to load object", 29) != 0)
        snprintf(last_message, sizeof(last_message), "%s", line);
    return 0;
}

static void install_print(void)
{
    libbpf_set_print(print_hook);
}

const char *cg_bpf_last_message(void)
{
    return last_message;
}

/* ---- the object ---- */

struct cg_bpf_obj {
    struct bpf_object *obj;
    struct bpf_link *links[3]; /* by mechanism */
};

static int kernel_has_css_task_iter(void)
{
    struct btf *vmlinux = btf__load_vmlinux_btf();
    if (!vmlinux)
        return 0;
    int ok = btf__find_by_name_kind(vmlinux, "bpf_iter_css_task_new", BTF_KIND_FUNC) > 0 &&
             btf__find_by_name_kind(vmlinux, "bpf_iter__cgroup", BTF_KIND_STRUCT) > 0;
    btf__free(vmlinux);
    return ok;
}

void cg_bpf_free(struct cg_bpf_obj *o)
{
    if (!o)
        return;
    for (int i = 0; i < 3; i++)
        bpf_link__destroy(o->links[i]);
    bpf_object__close(o->obj);
    free(o);
}

static int err_of(long ret)
{
    if (ret < 0)
        return (int)-ret;
    return errno ? errno : EINVAL;
}

/* Where a per-cgroup iterator link walks: from cgroup_fd's cgroup, in that order. */
static void cgroup_link_info(union bpf_iter_link_info *linfo, int cgroup_fd,
                             enum bpf_cgroup_iter_order order)
{
    memset(linfo, 0, sizeof(*linfo));
    linfo->cgroup.cgroup_fd = (__u32)cgroup_fd;
    linfo->cgroup.order = order;
}

int cg_bpf_load(const char *obj_path, int cgroup_fd, struct cg_bpf_obj **out)
{
    pthread_once(&print_once, install_print);
    last_message[0] = 0;
    *out = NULL;

    struct cg_bpf_obj *o = calloc(1, sizeof(*o));
    if (!o)
        return ENOMEM;
    int err;
    o->obj = bpf_object__open_file(obj_path, NULL);
    if (!o->obj) {
        err = errno ? errno : EINVAL;
        free(o);
        return err;
    }
    struct bpf_program *tasks = bpf_object__find_program_by_name(o->obj, "cgshim_tasks");
    struct bpf_program *cgroups = bpf_object__find_program_by_name(o->obj, "cgshim_cgroups");
    if (!tasks || !cgroups) {
        snprintf(last_message, sizeof(last_message), "%s lacks cgshim's programs", obj_path);
        cg_bpf_free(o);
        return EBADMSG;
    }
    int with_cgroups = cgroup_fd >= 0 && kernel_has_css_task_iter();
    if (!with_cgroups)
        bpf_program__set_autoload(cgroups, false);
    err = bpf_object__load(o->obj);
    if (err) {
        err = err_of(err);
        cg_bpf_free(o);
        return err;
    }
    o->links[CG_BPF_MECH_TASK] = bpf_program__attach_iter(tasks, NULL);
    if (!o->links[CG_BPF_MECH_TASK]) {
        err = errno ? errno : EINVAL;
        cg_bpf_free(o);
        return err;
    }
    if (with_cgroups) {
        union bpf_iter_link_info linfo;
        cgroup_link_info(&linfo, cgroup_fd, BPF_CGROUP_ITER_DESCENDANTS_PRE);
        DECLARE_LIBBPF_OPTS(bpf_iter_attach_opts, opts, .link_info = &linfo,
                            .link_info_len = sizeof(linfo));
        o->links[CG_BPF_MECH_CGROUP] = bpf_program__attach_iter(cgroups, &opts);
        if (!o->links[CG_BPF_MECH_CGROUP]) {
            err = errno ? errno : EINVAL;
            cg_bpf_free(o);
            return err;
        }
    }
    *out = o;
    return 0;
}

int cg_bpf_has(const struct cg_bpf_obj *o, uint32_t mechanism)
{
    return o && mechanism < 3 && o->links[mechanism] != NULL;
}

int cg_bpf_iter_fd(struct cg_bpf_obj *o, uint32_t mechanism, int *fd_out)
{
    if (!cg_bpf_has(o, mechanism))
        return ENOENT;
    int fd = bpf_iter_create(bpf_link__fd(o->links[mechanism]));
    if (fd < 0)
        return err_of(fd);
    *fd_out = fd;
    return 0;
}

int cg_bpf_self_link(struct cg_bpf_obj *o, int cgroup_fd, int *link_fd_out)
{
    if (!cg_bpf_has(o, CG_BPF_MECH_CGROUP))
        return ENOENT;
    struct bpf_program *prog = bpf_object__find_program_by_name(o->obj, "cgshim_cgroups");
    if (!prog)
        return ENOENT;
    union bpf_iter_link_info linfo;
    cgroup_link_info(&linfo, cgroup_fd, BPF_CGROUP_ITER_SELF_ONLY);
    LIBBPF_OPTS(bpf_link_create_opts, opts, .iter_info = &linfo,
                .iter_info_len = sizeof(linfo));
    /* the link's fd is the caller's (bpf() makes it close-on-exec); closing it releases
     * the link and the kernel's reference on the cgroup */
    int fd = bpf_link_create(bpf_program__fd(prog), 0, BPF_TRACE_ITER, &opts);
    if (fd < 0)
        return err_of(fd);
    *link_fd_out = fd;
    return 0;
}

int cg_bpf_link_iter_fd(int link_fd, int *fd_out)
{
    int fd = bpf_iter_create(link_fd);
    if (fd < 0)
        return err_of(fd);
    *fd_out = fd;
    return 0;
}

int cg_bpf_pin(struct cg_bpf_obj *o, uint32_t mechanism, const char *path)
{
    if (!cg_bpf_has(o, mechanism))
        return ENOENT;
    int err = bpf_link__pin(o->links[mechanism], path);
    if (err)
        return err_of(err);
    if (chmod(path, 0444) != 0) {
        err = errno;
        bpf_link__unpin(o->links[mechanism]);
        return err;
    }
    return 0;
}
