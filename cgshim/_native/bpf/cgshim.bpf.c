// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/* cgshim's in-kernel pass: for every cgroup2 cgroup, the /proc state letters of its own
 * threads and the sums of their CPU and run-queue clocks, in one read of a BPF iterator.
 *
 * Two iterator programs share one record format (cgshim/_native/bpf.h, "Records"):
 *
 * - cgshim_cgroups (SEC "iter/cgroup", kernel/bpf/cgroup_iter.c, >= 6.1; the
 *   bpf_iter_css_task_* kfuncs of kernel/bpf/task_iter.c, >= 6.7): walks every cgroup below
 *   the cgroup the link was attached to, pre-order, and each cgroup's own tasks the way
 *   cgroup.threads lists them (css_task_iter with flags 0: no descendants, no dying tasks;
 *   kernel/cgroup/cgroup.c css_task_iter_advance). One CGROUP record per cgroup with at least
 *   one task. cgroup_iter_seq_start() holds cgroup_mutex for the whole read() and cannot
 *   resume a walk in a second read() (EOPNOTSUPP), so one pass must fit bpf_seq_read()'s
 *   buffer (PAGE_SIZE << 3 = 32 KiB: ~500 non-empty cgroups); past that, the reader uses:
 * - cgshim_tasks (SEC "iter/task", kernel/bpf/task_iter.c, >= 5.8): one TASK record per
 *   thread visible in the reader's pid namespace; resumable across read() calls, holds no
 *   lock, so it has no size limit; the reader adds the records up per cgroup.
 *
 * Both are stateless (no maps, no globals): concurrent readers cannot disturb each other.
 * Every pass starts with a HEAD record (magic, format) and ends with an END record, so a
 * pin made by another cgshim version is detected, and a truncated pass is not mistaken for
 * a complete one.
 *
 * Types: a small hand-written set of kernel structs with preserve_access_index (CO-RE: libbpf
 * relocates each field against the running kernel's BTF at load time), so building needs
 * only clang, not the build machine's BTF. Plain pointer loads (no BPF_CORE_READ chains):
 * tracing programs read BTF-typed pointers directly, ~30-40% cheaper here.
 */
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "records.h"

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;

/* -- kernel types (only the fields read; offsets come from the kernel's BTF) ------------ */
struct kernfs_node {
	u64 id; /* the cgroup2 directory's inode number (fs/kernfs/dir.c kernfs_new_node) */
} __attribute__((preserve_access_index));

struct cgroup_subsys_state {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct cgroup {
	struct cgroup_subsys_state self;
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct css_set {
	struct cgroup *dfl_cgrp;
} __attribute__((preserve_access_index));

struct sched_entity {
	u64 sum_exec_runtime;
} __attribute__((preserve_access_index));

struct sched_info {
	unsigned long long run_delay;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int __state;
	unsigned int flags;
	int exit_state;
	struct sched_entity se;
	struct sched_info sched_info;
	struct css_set *cgroups;
} __attribute__((preserve_access_index));

struct task_struct___pre514 { /* "state" was renamed "__state" in 5.14 */
	long state;
} __attribute__((preserve_access_index));

struct seq_file {
	unsigned long count; /* size_t: bytes in the buffer of this read() (include/linux/seq_file.h) */
} __attribute__((preserve_access_index));

struct bpf_iter_meta {
	struct seq_file *seq;
	u64 session_id;
	u64 seq_num;
} __attribute__((preserve_access_index));

struct bpf_iter__task {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
} __attribute__((preserve_access_index));

struct bpf_iter__cgroup {
	struct bpf_iter_meta *meta;
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct bpf_iter_css_task {
	u64 __opaque[1];
} __attribute__((aligned(8)));

extern int bpf_iter_css_task_new(struct bpf_iter_css_task *it, struct cgroup_subsys_state *css,
				 unsigned int flags) __weak __ksym;
extern struct task_struct *bpf_iter_css_task_next(struct bpf_iter_css_task *it) __weak __ksym;
extern void bpf_iter_css_task_destroy(struct bpf_iter_css_task *it) __weak __ksym;

/* -- task states: include/linux/sched.h (values are #defines, not in BTF) -------------- */
#define TASK_REPORT 0x7f       /* R S D T t X Z P: bits 0..6 of __state | exit_state */
#define TASK_IDLE 0x402        /* TASK_UNINTERRUPTIBLE | TASK_NOLOAD */
#define TASK_UNINTERRUPTIBLE 0x2
#define TASK_RTLOCK_WAIT 0x1000 /* >= 5.15: reported as D */
#define TASK_FROZEN 0x8000      /* >= 6.1: reported as D */
#define PF_EXITING 0x4

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* The /proc state index (0..8 over "RSDTtXZPI"): __task_state_index() of
 * include/linux/sched.h, as fs/proc/array.c task_state_array prints it. */
static __always_inline u64 state_index(unsigned int state, unsigned int exit_state)
{
	unsigned int bits = (state | exit_state) & TASK_REPORT;
	u64 idx = 0;

	if ((state & TASK_IDLE) == TASK_IDLE)
		return 8; /* TASK_REPORT_IDLE: I */
	if (state & (TASK_RTLOCK_WAIT | TASK_FROZEN))
		bits = TASK_UNINTERRUPTIBLE;
	/* fls(bits): the highest set bit, 1-based; 0 for R */
	while (bits && idx < 8) {
		bits >>= 1;
		idx++;
	}
	return idx;
}

static __always_inline unsigned int task_state(struct task_struct *t)
{
	if (bpf_core_field_exists(t->__state))
		return t->__state;
	return (unsigned int)((struct task_struct___pre514 *)t)->state;
}

static __always_inline u64 run_delay(struct task_struct *t)
{
	if (bpf_core_field_exists(t->sched_info)) /* CONFIG_SCHED_INFO */
		return t->sched_info.run_delay;
	return 0;
}

/* Count one thread into a CGROUP record; returns 1. A global noinline function: verified
 * once on its own, and to the caller's open-coded loop the record is plain memory, so the
 * loop's verifier states converge (inlined, the counters' bounds made them explode). */
__attribute__((noinline)) int cgshim_count(struct cgshim_rec_cgroup *r, unsigned int state,
					   unsigned int exit_state, u64 runtime, u64 delay)
{
	u64 idx;

	if (!r)
		return 0;
	idx = state_index(state, exit_state);
	asm volatile("" : "+r"(idx)); /* keep the bound check below (clang 14 drops it) */
	if (idx > 8)
		idx = 8;
	r->nr[idx]++;
	r->sum_exec_runtime += runtime;
	r->run_delay += delay;
	return 1;
}

static __always_inline void emit_head(struct seq_file *seq, u16 mechanism, u64 root)
{
	struct cgshim_rec_head h = {
		.kind = CGSHIM_REC_HEAD, .size = sizeof(h), .format = CGSHIM_FORMAT,
		.mechanism = mechanism, .magic = CGSHIM_MAGIC, .root = root,
	};
	bpf_seq_write(seq, &h, sizeof(h));
}

/* HEAD goes first: with the first object (seq_num 0), or in the end call (object NULL) when
 * the read has written nothing yet. bpf_seq_read() (kernel/bpf/bpf_iter.c) raises seq_num
 * only when next() gives a further object, so the end call of a walk of ONE object also sees
 * seq_num 0: the buffer's count tells it that HEAD is already there. A pass of no object
 * (the walk's start cgroup removed: cgroup_iter shows a dead cgroup without running the
 * program) is HEAD with root 0, then END. */
static __always_inline int head_due(struct seq_file *seq, u64 seq_num, const void *obj)
{
	return seq_num == 0 && (obj || seq->count == 0);
}

static __always_inline void emit_end(struct seq_file *seq, u64 objects)
{
	struct cgshim_rec_end e = {
		.kind = CGSHIM_REC_END, .size = sizeof(e), .objects = objects,
	};
	bpf_seq_write(seq, &e, sizeof(e));
}

SEC("iter/cgroup")
int cgshim_cgroups(struct bpf_iter__cgroup *ctx)
{
	struct bpf_iter_meta *meta = ctx->meta;
	struct seq_file *seq = meta->seq;
	struct cgroup *cgrp = ctx->cgroup;
	struct cgshim_rec_cgroup r = {};
	struct bpf_iter_css_task it;
	struct task_struct *t;
	unsigned int threads = 0;

	if (head_due(seq, meta->seq_num, cgrp)) /* pre-order: the first cgroup is the start */
		emit_head(seq, CGSHIM_MECH_CGROUP, cgrp ? cgrp->kn->id : 0);
	if (!cgrp) {
		emit_end(seq, meta->seq_num);
		return 0;
	}
	r.kind = CGSHIM_REC_CGROUP;
	r.size = sizeof(r);
	bpf_iter_css_task_new(&it, &cgrp->self, 0);
	while ((t = bpf_iter_css_task_next(&it))) {
		/* In a global function: the loop's state stays small enough for the verifier
		 * to see it converge (the counters are plain memory to it). */
		threads += cgshim_count(&r, task_state(t), t->exit_state, t->se.sum_exec_runtime,
					run_delay(t));
	}
	bpf_iter_css_task_destroy(&it);
	if (threads) {
		r.id = cgrp->kn->id;
		bpf_seq_write(seq, &r, sizeof(r));
	}
	return 0;
}

SEC("iter/task")
int cgshim_tasks(struct bpf_iter__task *ctx)
{
	struct bpf_iter_meta *meta = ctx->meta;
	struct seq_file *seq = meta->seq;
	struct task_struct *t = ctx->task; /* read once (verifier: trusted_ptr_or_null) */
	struct cgshim_rec_task r = {};

	if (head_due(seq, meta->seq_num, t))
		emit_head(seq, CGSHIM_MECH_TASK, 0);
	if (!t) {
		emit_end(seq, meta->seq_num);
		return 0;
	}
	/* cgroup.threads leaves out exiting tasks (cgroup_exit() moves them to the css_set's
	 * dying_tasks, which css_task_iter skips): so does this pass. */
	if (t->flags & PF_EXITING)
		return 0;
	r.kind = CGSHIM_REC_TASK;
	r.size = sizeof(r);
	r.state = state_index(task_state(t), t->exit_state);
	r.id = t->cgroups->dfl_cgrp->kn->id;
	r.sum_exec_runtime = t->se.sum_exec_runtime;
	r.run_delay = run_delay(t);
	bpf_seq_write(seq, &r, sizeof(r));
	return 0;
}
