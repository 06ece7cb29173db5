/* bpf: cgshim's in-kernel pass (bpf/cgshim.bpf.c) loaded, attached, pinned and read with
 * libbpf, and a bounds-checked parser of the pass's records (bpf/records.h).
 *
 * A pass is what one read of an iterator gives, from start to EOF: HEAD, records, END.
 * cg_bpf_pass_read() reads a whole pass from an iterator fd (bpf_iter_create() of a link,
 * or open() of a pinned link on bpffs: kernel/bpf/inode.c serves it with bpf_iter_fops)
 * in reads of 64 KiB, more than bpf_seq_read()'s 32 KiB buffer, so each read() takes all
 * the kernel has ready. The parser then adds the records up per cgroup id.
 *
 * Errors (positive errno values; no function keeps global mutable state, except
 * libbpf's print hook, set once, which writes to a thread-local buffer):
 *   EPROTO   the pass is not of this format: wrong magic or CG_BPF_FORMAT (e.g. a pin made
 *            by another cgshim version); nothing of it is used
 *   EBADMSG  malformed: truncated record, size not the kind's, unknown kind, HEAD not
 *            first, no END or bytes after it, a record of the other mechanism, state index
 *            > 8, cgroup id 0, a cgroup twice in a per-cgroup pass
 *   EFBIG    the pass goes on past 256 MiB (a 30,000-thread pass is ~1 MiB)
 *   ENOMEM   out of memory
 *   anything read() answers: EOPNOTSUPP when a per-cgroup pass did not fit one read
 *            (cgroup_iter_seq_start() cannot resume), E2BIG, EAGAIN (kernel limits), ...
 *   loading: libbpf's errno (EPERM without CAP_BPF and CAP_PERFMON, ENOENT for a missing
 *            object file, ...); cg_bpf_last_message() gives libbpf's last warning.
 *
 * A cg_bpf_pass and a cg_bpf_obj are not thread-safe: callers serialise each one's use.
 */
#define CG_BPF_FORMAT 1
#define CG_BPF_NR_STATES 9 /* "RSDTtXZPI" */
#define CG_BPF_MECH_CGROUP 1
#define CG_BPF_MECH_TASK 2

/* One cgroup's own threads in a pass. */
struct cg_bpf_cgroup {
    uint64_t id;               /* inode number of the cgroup2 directory */
    uint64_t sum_exec_runtime; /* ns */
    uint64_t run_delay;        /* ns */
    uint32_t nr[9];            /* threads by state index over "RSDTtXZPI" */
    uint32_t threads;          /* sum of nr */
};

/* What the last read or parse of a pass gave; cgroups stays valid until the next call on
 * the same pass, or its free. Cgroups appear in the order the pass first named them. */
struct cg_bpf_result {
    uint32_t format;
    uint32_t mechanism;        /* CG_BPF_MECH_* */
    uint64_t objects;          /* the iterator's seq_num at its end (records.h) */
    uint64_t bytes;            /* bytes of the pass */
    uint64_t records;          /* CGROUP or TASK records */
    uint64_t nr_cgroups;
    const struct cg_bpf_cgroup *cgroups;
    uint64_t memory;           /* bytes held by the pass's buffers */
    uint64_t root;             /* cgroup id the per-cgroup walk starts at; 0 per-thread */
};

struct cg_bpf_pass;

int cg_bpf_pass_new(struct cg_bpf_pass **out);
void cg_bpf_pass_free(struct cg_bpf_pass *p);
/* Read iter_fd to EOF and parse it. */
int cg_bpf_pass_read(struct cg_bpf_pass *p, int iter_fd, struct cg_bpf_result *out);
/* Parse a pass already in memory. */
int cg_bpf_pass_parse(struct cg_bpf_pass *p, const uint8_t *buf, size_t len,
                      struct cg_bpf_result *out);

struct cg_bpf_obj;

/* Open and load the object file, attach its iterators: the per-thread one always, the
 * per-cgroup one when cgroup_fd >= 0 (a cgroup2 directory: the pass covers it and every
 * cgroup below it) and the kernel has the bpf_iter_css_task kfuncs (>= 6.7). */
int cg_bpf_load(const char *obj_path, int cgroup_fd, struct cg_bpf_obj **out);
void cg_bpf_free(struct cg_bpf_obj *o);
/* 1 if the object has an attached iterator of that mechanism, else 0. */
int cg_bpf_has(const struct cg_bpf_obj *o, uint32_t mechanism);
/* A new pass of that mechanism to read (bpf_iter_create); the caller closes *fd_out. */
int cg_bpf_iter_fd(struct cg_bpf_obj *o, uint32_t mechanism, int *fd_out);
/* The per-cgroup program attached to one cgroup2 directory alone (BPF_CGROUP_ITER_SELF_ONLY):
 * *link_fd_out is the caller's link fd (close-on-exec; closing it releases the link). A
 * pass of it is HEAD (root = that cgroup's id; 0 once it was removed), at most one CGROUP
 * record, END. ENOENT: no per-cgroup iterator in this object. */
int cg_bpf_self_link(struct cg_bpf_obj *o, int cgroup_fd, int *link_fd_out);
/* A new pass of the iterator link link_fd (bpf_iter_create); the caller closes *fd_out. */
int cg_bpf_link_iter_fd(int link_fd, int *fd_out);
/* Pin that mechanism's link at path (on bpffs) and make it mode 0444. */
int cg_bpf_pin(struct cg_bpf_obj *o, uint32_t mechanism, const char *path);
/* libbpf's last warning or error on this thread ("" if none). */
const char *cg_bpf_last_message(void);
