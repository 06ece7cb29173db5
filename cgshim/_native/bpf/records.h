/* The records of one cgshim BPF pass (cgshim.bpf.c writes them, bpf.c and
 * cgshim/kernel/bpf.py parse them). Host byte order, fixed sizes, 8-byte aligned:
 *
 *   HEAD, then CGROUP records (mechanism "cgroup") or TASK records (mechanism "task"), then END.
 *
 * Every record starts with kind (u16) and size (u16, the record's whole length). A reader
 * checks HEAD's magic and format first: another format (a pin made by an older or newer
 * cgshim) is refused, never misread. Bump CGSHIM_FORMAT on any change here.
 */
#define CGSHIM_MAGIC 0x50424d4948534743ULL /* "CGSHIMBP" read as a little-endian u64 */
#ifndef CGSHIM_FORMAT /* tests build an object of another format with -DCGSHIM_FORMAT=N */
#define CGSHIM_FORMAT 1
#endif

#define CGSHIM_REC_HEAD 1
#define CGSHIM_REC_CGROUP 2
#define CGSHIM_REC_TASK 3
#define CGSHIM_REC_END 4

#define CGSHIM_MECH_CGROUP 1 /* iter/cgroup + bpf_iter_css_task_*: one record per cgroup */
#define CGSHIM_MECH_TASK 2   /* iter/task: one record per thread */

#define CGSHIM_NR_STATES 9 /* "RSDTtXZPI": fs/proc/array.c task_state_array */

struct cgshim_rec_head { /* 24 bytes */
	__u16 kind;
	__u16 size;
	__u16 format;
	__u16 mechanism;
	__u64 magic;
	__u64 root; /* id of the cgroup the per-cgroup walk starts at; 0: per-thread pass */
};

struct cgshim_rec_cgroup { /* 64 bytes: a cgroup with at least one thread of its own */
	__u16 kind;
	__u16 size;
	__u32 nr[CGSHIM_NR_STATES]; /* threads by state index */
	__u64 id;                   /* kernfs node id = inode number of the cgroup2 directory */
	__u64 sum_exec_runtime;     /* ns, sum of se.sum_exec_runtime */
	__u64 run_delay;            /* ns, sum of sched_info.run_delay */
};

struct cgshim_rec_task { /* 32 bytes: one thread */
	__u16 kind;
	__u16 size;
	__u8 state; /* state index, 0..8 */
	__u8 pad[3];
	__u64 id;
	__u64 sum_exec_runtime;
	__u64 run_delay;
};

struct cgshim_rec_end { /* 16 bytes */
	__u16 kind;
	__u16 size;
	__u32 pad;
	__u64 objects; /* bpf_iter_meta.seq_num at the end: objects visited - 1 (0: none or one) */
};
