/*
 * runtime.sys._clone: a container's first process (or an exec's), from
 * clone3(2) to execve(2), without Python after the clone.
 *
 * berthd (runtime/container/program.py) compiles what a start needs into a
 * program: the clone's flags, the cloner's part after the clone (id maps, the
 * host mounts through the child's user namespace, "go") and the child's part
 * (namespaces, rootfs steps, hostname, pty, user, workdir, capabilities,
 * no_new_privs, seccomp, exec). This module parses it in the cloning process,
 * clones, and runs each part. The child only makes system calls and reads
 * from memory it shares copy-on-write with its parent: no Python object is
 * touched after the clone (each would be a reference-count write, so a page
 * copy), no malloc (another thread of the parent may hold its lock).
 *
 * The same code serves the spawner process (serve: berthd's requests on a
 * socket) and a cloner inside berthd itself (spawn).
 *
 * Wire format of a program: items, each
 *     u16 tag, u16 n_int, u16 n_str, u16 0, n_int x i64, n_str x (u32 len, bytes)
 * native byte order; a string's len counts its trailing NUL; len 0xFFFFFFFF
 * is a null string (None). Fds in a program are indices into the fd list
 * that comes with it.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <endian.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <termios.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif
#define B_CLONE_PIDFD 0x00001000ULL
#define B_CLONE_PARENT 0x00008000ULL
#define B_CLONE_INTO_CGROUP 0x200000000ULL

struct b_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
        set_tid, set_tid_size, cgroup;
};

struct b_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

/* Item tags: program.py reads them from this module (TAGS). */
enum {
    T_CLONE = 1,    /* i: namespace flags, CLONE_PARENT (0/1), cgroup fd, pid ns fd */
    T_IDMAP,        /* s: the uid_map/gid_map line */
    T_RELEASE,      /* i: fd to write "g" to once the cloner's part is done */
    T_STDIO,        /* i: stdin, stdout, stderr fds */
    T_GO,           /* i: fd the child reads "g" from */
    T_ERROR,        /* i: CLOEXEC fd the child writes its failure to */
    T_CONSOLE,      /* i: -t: socket the pty master goes to */
    T_JOIN,         /* i: fd, namespace type */
    T_USERNS,       /* become root of the (new or joined) user namespace */
    T_UNSHARE,      /* i: flags */
    T_HOSTNAME,     /* s */
    T_DOMAINNAME,   /* s */
    T_USER,         /* s: Docker's --user */
    T_WORKDIR,      /* i: make it (0/1); s: path */
    T_ARG,          /* s */
    T_ENV,          /* s: NAME=value */
    T_CAPS,         /* i: mask of the capabilities kept */
    T_SECCOMP,      /* s: classic BPF, 8 bytes per instruction (no NUL) */
    /* rootfs steps: i[0] is the phase, 0 = the cloner's (host), 1 = the child's */
    S_MKDIR = 64,   /* s: path */
    S_TOUCH,        /* s: path */
    S_SYMLINK,      /* s: target, link */
    S_MOUNT,        /* i: phase, flags; s: source, target, fstype, data */
    S_IDMAP_BIND,   /* s: source, target */
    S_REMOUNT_RO,   /* s: target */
    S_MOUNTPOINT,   /* s: source, target */
    S_MASK,         /* s: path */
    S_READONLY,     /* s: path */
    S_PIVOT,        /* s: root */
    S_TREE_BIND,    /* s: source, target; the cloner takes a copy of source's mount before
                     * the clone (open_tree), the child moves it on target: the child's
                     * root need not reach source by its path (i[1]: that copy's fd) */
};
#define S_FIRST S_MKDIR
#define S_LAST S_TREE_BIND

#define MAX_INT 4
#define MAX_STR 4
#define MAX_JOIN 8
#define MAX_GROUPS 256
#define MSG_MAX 4096

struct item {
    int tag, nint, nstr;
    int64_t i[MAX_INT];
    const char *s[MAX_STR];
    uint32_t len[MAX_STR];
};

struct plan {
    struct item *items;      /* every item, in order */
    int nitems;
    uint64_t ns_flags;
    int parent, cgroup_fd, pidns_fd;
    const char *idmap;
    int release_fd;
    int stdio[3], go_fd, err_fd, console_fd;
    int join_fd[MAX_JOIN], join_type[MAX_JOIN], njoin;
    int userns;
    uint64_t unshare;
    const char *hostname, *domainname, *user, *workdir;
    int make_workdir;
    char **argv, **envp;     /* envp has a spare slot for HOME */
    int argc, envc;
    const char *path;        /* $PATH, for the executable's lookup */
    int has_home;
    uint64_t caps;
    int last_cap;
    struct sock_fprog seccomp;
    int has_seccomp;
    int trees_open;          /* open_trees ran: each S_TREE_BIND's i[1] is an fd or -1 */
};

/* A failure: errno and a message ("what: ENAME (description)" for a failed call). */
struct fail {
    int err;
    char msg[MSG_MAX];
};

static int failf(struct fail *f, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int failf(struct fail *f, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->msg, sizeof f->msg, fmt, ap);
    va_end(ap);
    f->err = err;
    return -1;
}

static const char *ename(int err)
{
    const char *n = strerrorname_np(err);
    return n ? n : "E?";
}

static const char *edesc(int err)
{
    const char *d = strerrordesc_np(err);
    return d ? d : "unknown error";
}

/* A failed call, as runtime/sys/libc.py words it: "what: ENAME (description)". */
static int fail_call(struct fail *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int fail_call(struct fail *f, const char *fmt, ...)
{
    int err = errno;
    char what[MSG_MAX / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    return failf(f, err, "%s: %s (%s)", what, ename(err), edesc(err));
}

/* --- parsing (the cloning process, before the clone) ---------------------------- */

static int get_fd(const struct item *it, int k, const int *fds, int nfds, struct fail *f)
{
    int64_t ix = it->i[k];
    if (ix < 0)
        return -1;
    if (ix >= nfds)
        return failf(f, EINVAL, "program: fd index %lld out of range", (long long)ix), -2;
    return fds[ix];
}

static int parse(const char *buf, size_t size, const int *fds, int nfds, struct plan *p,
                 struct fail *f)
{
    size_t off = 0;
    int cap = 64;
    memset(p, 0, sizeof *p);
    p->cgroup_fd = p->pidns_fd = p->release_fd = -1;
    p->stdio[0] = p->stdio[1] = p->stdio[2] = -1;
    p->go_fd = p->err_fd = p->console_fd = -1;
    p->items = calloc(cap, sizeof *p->items);
    if (!p->items)
        return failf(f, ENOMEM, "program: out of memory");
    while (off < size) {
        uint16_t head[4];
        struct item *it;
        if (size - off < sizeof head)
            return failf(f, EINVAL, "program: truncated item");
        memcpy(head, buf + off, sizeof head);
        off += sizeof head;
        if (head[1] > MAX_INT || head[2] > MAX_STR)
            return failf(f, EINVAL, "program: item %u has too many fields", head[0]);
        if (p->nitems == cap) {
            struct item *more = realloc(p->items, 2 * cap * sizeof *more);
            if (!more)
                return failf(f, ENOMEM, "program: out of memory");
            p->items = more;
            cap *= 2;
        }
        it = &p->items[p->nitems++];
        memset(it, 0, sizeof *it);
        it->tag = head[0];
        it->nint = head[1];
        it->nstr = head[2];
        if (size - off < (size_t)it->nint * 8)
            return failf(f, EINVAL, "program: truncated item");
        memcpy(it->i, buf + off, (size_t)it->nint * 8);
        off += (size_t)it->nint * 8;
        for (int k = 0; k < it->nstr; k++) {
            uint32_t len;
            if (size - off < 4)
                return failf(f, EINVAL, "program: truncated string");
            memcpy(&len, buf + off, 4);
            off += 4;
            if (len == 0xFFFFFFFFu)
                continue;
            if (size - off < len)
                return failf(f, EINVAL, "program: truncated string");
            it->s[k] = buf + off;
            it->len[k] = len;
            off += len;
        }
    }
    /* Each item has the fields its tag needs (strings not null, but a mount's fstype
     * and data): a program that lacks one is refused here, before any clone. */
    for (int n = 0; n < p->nitems; n++) {
        const struct item *it = &p->items[n];
        int nint = 0, nstr = 0, nullable = MAX_STR;
        switch (it->tag) {
        case T_CLONE: nint = 4; break;
        case T_STDIO: nint = 3; break;
        case T_JOIN: nint = 2; break;
        case T_RELEASE: case T_GO: case T_ERROR: case T_CONSOLE: case T_UNSHARE: case T_CAPS:
            nint = 1; break;
        case T_IDMAP: case T_HOSTNAME: case T_DOMAINNAME: case T_USER: case T_ARG: case T_ENV:
        case T_SECCOMP:
            nstr = 1; break;
        case T_WORKDIR: nint = 1; nstr = 1; break;
        case S_MKDIR: case S_TOUCH: case S_REMOUNT_RO: case S_MASK: case S_READONLY:
        case S_PIVOT:
            nint = 1; nstr = 1; break;
        case S_SYMLINK: case S_IDMAP_BIND: case S_MOUNTPOINT: case S_TREE_BIND:
            nint = 1; nstr = 2; break;
        case S_MOUNT: nint = 2; nstr = 4; nullable = 2; break;
        default: break;
        }
        if (it->nint < nint || it->nstr < nstr)
            return failf(f, EINVAL, "program: item %d has %d ints and %d strings, not %d and %d",
                         it->tag, it->nint, it->nstr, nint, nstr);
        for (int k = 0; k < nstr && k < nullable; k++)
            if (!it->s[k])
                return failf(f, EINVAL, "program: item %d: string %d is null", it->tag, k);
    }
    /* Count argv and env first: their arrays are made once, here. */
    for (int n = 0; n < p->nitems; n++) {
        p->argc += p->items[n].tag == T_ARG;
        p->envc += p->items[n].tag == T_ENV;
    }
    p->argv = calloc(p->argc + 1, sizeof(char *));
    p->envp = calloc(p->envc + 2, sizeof(char *));
    if (!p->argv || !p->envp)
        return failf(f, ENOMEM, "program: out of memory");
    p->argc = p->envc = 0;
    for (int n = 0; n < p->nitems; n++) {
        struct item *it = &p->items[n];
        int fd;
        /* C strings must end in their NUL (the BPF program is bytes). */
        for (int k = 0; k < it->nstr; k++)
            if (it->s[k] && it->tag != T_SECCOMP && (it->len[k] == 0 || it->s[k][it->len[k] - 1]))
                return failf(f, EINVAL, "program: item %d: string not terminated", it->tag);
        switch (it->tag) {
        case T_CLONE:
            p->ns_flags = (uint64_t)it->i[0];
            p->parent = (int)it->i[1];
            if ((fd = get_fd(it, 2, fds, nfds, f)) < -1)
                return -1;
            p->cgroup_fd = fd;
            if ((fd = get_fd(it, 3, fds, nfds, f)) < -1)
                return -1;
            p->pidns_fd = fd;
            break;
        case T_IDMAP:
            p->idmap = it->s[0];
            break;
        case T_STDIO:
            for (int k = 0; k < 3; k++)
                if ((p->stdio[k] = get_fd(it, k, fds, nfds, f)) < -1)
                    return -1;
            break;
        case T_RELEASE:
        case T_GO:
        case T_ERROR:
        case T_CONSOLE: {
            int *slot = it->tag == T_RELEASE ? &p->release_fd : it->tag == T_GO ? &p->go_fd
                        : it->tag == T_ERROR ? &p->err_fd : &p->console_fd;
            if ((*slot = get_fd(it, 0, fds, nfds, f)) < -1)
                return -1;
            break;
        }
        case T_JOIN:
            if (p->njoin == MAX_JOIN)
                return failf(f, EINVAL, "program: too many namespaces to join");
            if ((fd = get_fd(it, 0, fds, nfds, f)) < -1)
                return -1;
            p->join_fd[p->njoin] = fd;
            p->join_type[p->njoin++] = (int)it->i[1];
            break;
        case T_USERNS:
            p->userns = 1;
            break;
        case T_UNSHARE:
            p->unshare = (uint64_t)it->i[0];
            break;
        case T_HOSTNAME:
            p->hostname = it->s[0];
            break;
        case T_DOMAINNAME:
            p->domainname = it->s[0];
            break;
        case T_USER:
            p->user = it->s[0];
            break;
        case T_WORKDIR:
            p->make_workdir = (int)it->i[0];
            p->workdir = it->s[0];
            break;
        case T_ARG:
            p->argv[p->argc++] = (char *)it->s[0];
            break;
        case T_ENV:
            p->envp[p->envc++] = (char *)it->s[0];
            if (!strncmp(it->s[0], "HOME=", 5))
                p->has_home = 1;
            if (!strncmp(it->s[0], "PATH=", 5))
                p->path = it->s[0] + 5;
            break;
        case T_CAPS:
            p->caps = (uint64_t)it->i[0];
            break;
        case T_SECCOMP:
            if (it->len[0] % 8 || !it->len[0] || it->len[0] / 8 > 0xFFFF)
                return failf(f, EINVAL, "program: seccomp program of %u bytes", it->len[0]);
            p->seccomp.len = it->len[0] / 8;
            p->seccomp.filter = (struct sock_filter *)it->s[0];
            p->has_seccomp = 1;
            break;
        default:
            if (it->tag < S_FIRST || it->tag > S_LAST)
                return failf(f, EINVAL, "program: unknown item %d", it->tag);
        }
    }
    if (p->argc == 0 && p->err_fd >= 0)
        return failf(f, EINVAL, "program: no command");
    if (!p->path)
        p->path = "";
    return 0;
}

/* Before the clone: a detached copy of each S_TREE_BIND source's mount, made here with
 * the cloner's view of the host's paths. */
static int open_trees(struct plan *p, struct fail *f)
{
    for (int n = 0; n < p->nitems; n++)
        if (p->items[n].tag == S_TREE_BIND)
            p->items[n].i[1] = -1;
    p->trees_open = 1;
    for (int n = 0; n < p->nitems; n++) {
        struct item *it = &p->items[n];
        if (it->tag != S_TREE_BIND)
            continue;
        it->i[1] = syscall(SYS_open_tree, AT_FDCWD, it->s[0], OPEN_TREE_CLONE | O_CLOEXEC);
        if (it->i[1] < 0)
            return fail_call(f, "open_tree %s", it->s[0]);
    }
    return 0;
}

/* After the clone (the child has its own copies), or when it did not happen. */
static void close_trees(struct plan *p)
{
    if (!p->trees_open)
        return;
    for (int n = 0; n < p->nitems; n++)
        if (p->items[n].tag == S_TREE_BIND && p->items[n].i[1] >= 0) {
            close((int)p->items[n].i[1]);
            p->items[n].i[1] = -1;
        }
}

static void plan_free(struct plan *p)
{
    free(p->items);
    free(p->argv);
    free(p->envp);
}

static int cached_last_cap = -1;

static int last_cap(struct fail *f)
{
    if (cached_last_cap < 0) {
        char buf[16] = {0};
        int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return fail_call(f, "open /proc/sys/kernel/cap_last_cap");
        if (read(fd, buf, sizeof buf - 1) <= 0) {
            close(fd);
            return fail_call(f, "read /proc/sys/kernel/cap_last_cap");
        }
        close(fd);
        cached_last_cap = atoi(buf);
    }
    return cached_last_cap;
}

/* --- rootfs steps (runtime/rootfs.py's Step kinds) ------------------------------------ */

enum kind { K_NONE, K_DIR, K_FILE, K_ERROR };

static enum kind path_kind(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0)
        return errno == ENOENT ? K_NONE : K_ERROR;
    return S_ISDIR(st.st_mode) ? K_DIR : K_FILE;
}

static int makedirs(const char *path, struct fail *f)
{
    char buf[PATH_MAX];
    struct stat st;
    size_t n = strlen(path);
    if (mkdir(path, 0755) == 0)
        return 0;
    if (errno == EEXIST) {
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
        errno = EEXIST;
        return fail_call(f, "mkdir %s", path);
    }
    if (errno != ENOENT)
        return fail_call(f, "mkdir %s", path);
    if (n >= sizeof buf)
        return failf(f, ENAMETOOLONG, "mkdir %s: ENAMETOOLONG", path);
    memcpy(buf, path, n + 1);
    for (size_t k = 1; k <= n; k++) {
        if (buf[k] != '/' && buf[k] != '\0')
            continue;
        if (buf[k - 1] == '/')
            continue;
        char c = buf[k];
        buf[k] = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return fail_call(f, "mkdir %s", buf);
        buf[k] = c;
    }
    if (stat(path, &st) < 0)
        return fail_call(f, "mkdir %s", path);
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return fail_call(f, "mkdir %s", path);
    }
    return 0;
}

static int touch(const char *path, struct fail *f)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail_call(f, "create %s", path);
    close(fd);
    return 0;
}

static int do_mount(const char *src, const char *target, const char *fstype,
                    unsigned long flags, const char *data, struct fail *f)
{
    if (mount(src, target, fstype, flags, data) == 0)
        return 0;
    return fail_call(f, "mount %s %s on %s",
                     fstype ? fstype : (flags & MS_BIND ? "bind" : "remount"),
                     src ? src : "none", target);
}

static int remount_ro(const char *target, struct fail *f)
{
    struct statvfs sv;
    unsigned long locked;
    if (statvfs(target, &sv) < 0)
        return fail_call(f, "statvfs %s", target);
    /* ST_NOSUID, ST_NODEV, ST_NOEXEC have MS_'s values: keep what the kernel locked. */
    locked = sv.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC);
    return do_mount("none", target, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | locked, NULL, f);
}

static int idmapped_bind(const char *src, const char *target, int userns_fd, struct fail *f)
{
    struct b_mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns_fd};
    int fd = (int)syscall(SYS_open_tree, AT_FDCWD, src,
                          OPEN_TREE_CLONE | O_CLOEXEC | AT_RECURSIVE);
    if (fd < 0)
        return fail_call(f, "open_tree %s", src);
    if (syscall(SYS_mount_setattr, fd, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) {
        fail_call(f, "mount_setattr idmap %s", src);
        close(fd);
        return -1;
    }
    if (syscall(SYS_move_mount, fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH) < 0) {
        fail_call(f, "move_mount %s to %s", src, target);
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static int mount_point(const char *src, const char *target, struct fail *f)
{
    char dir[PATH_MAX];
    const char *slash;
    if (path_kind(src) == K_DIR)
        return makedirs(target, f);
    slash = strrchr(target, '/');
    if (slash && slash != target) {
        size_t n = (size_t)(slash - target);
        if (n >= sizeof dir)
            return failf(f, ENAMETOOLONG, "mkdir %s: ENAMETOOLONG", target);
        memcpy(dir, target, n);
        dir[n] = '\0';
        if (makedirs(dir, f) < 0)
            return -1;
    }
    return path_kind(target) == K_NONE ? touch(target, f) : 0;
}

static int pivot(const char *root, struct fail *f)
{
    if (chdir(root) < 0)
        return fail_call(f, "chdir %s", root);
    /* pivot_root(".", "."): the old root ends up stacked under the new one and is
     * detached right away (as runc does); no put_old dir needed. */
    if (syscall(SYS_pivot_root, ".", ".") < 0) {
        if (errno != EINVAL)
            return fail_call(f, "pivot_root %s", root);
        /* The host's / sits on the initramfs (switch_root): pivot_root refuses, so
         * move the rootfs over / and chroot, as runc's --no-pivot does. */
        if (do_mount(root, "/", NULL, MS_MOVE, NULL, f) < 0)
            return -1;
        if (chroot(".") < 0)
            return fail_call(f, "chroot %s", root);
    } else if (umount2(".", MNT_DETACH) < 0) {
        return fail_call(f, "umount %s", ".");
    }
    if (chdir("/") < 0)
        return fail_call(f, "chdir /");
    return 0;
}

/* Carry out the steps of one phase in order; the first failure stops them. */
static int apply_steps(const struct plan *p, int phase, int userns_fd, struct fail *f)
{
    /* Masked dirs: an empty read-only tmpfs on the first, bound (read-only) on the
     * others: one superblock per container instead of one per masked dir. */
    const char *first_mask = NULL;
    for (int n = 0; n < p->nitems; n++) {
        const struct item *it = &p->items[n];
        const char *a = it->s[0], *b = it->s[1];
        int rc = 0;
        if (it->tag < S_FIRST || it->tag > S_LAST || it->i[0] != phase)
            continue;
        switch (it->tag) {
        case S_MKDIR:
            rc = makedirs(a, f);
            break;
        case S_TOUCH:
            if (path_kind(a) == K_NONE)
                rc = touch(a, f);
            break;
        case S_SYMLINK:
            if (symlink(a, b) < 0 && errno != EEXIST)
                rc = fail_call(f, "symlink %s", b);
            break;
        case S_MOUNT:
            rc = do_mount(a, b, it->s[2], (unsigned long)it->i[1], it->s[3], f);
            break;
        case S_IDMAP_BIND:
            rc = idmapped_bind(a, b, userns_fd, f);
            break;
        case S_REMOUNT_RO:
            rc = remount_ro(a, f);
            break;
        case S_MOUNTPOINT:
            rc = mount_point(a, b, f);
            break;
        case S_MASK:
            switch (path_kind(a)) {
            case K_DIR:
                if (!first_mask) {
                    rc = do_mount("tmpfs", a, "tmpfs", MS_RDONLY, "size=0", f);
                    first_mask = a;
                } else {
                    rc = do_mount(first_mask, a, NULL, MS_BIND, NULL, f);
                    if (rc == 0)
                        rc = do_mount("none", a, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY,
                                      NULL, f);
                }
                break;
            case K_FILE:
                rc = do_mount("/dev/null", a, NULL, MS_BIND, NULL, f);
                break;
            default:
                break;
            }
            break;
        case S_READONLY:
            if (path_kind(a) != K_NONE) {
                rc = do_mount(a, a, NULL, MS_BIND | MS_REC, NULL, f);
                if (rc == 0)
                    rc = remount_ro(a, f);
            }
            break;
        case S_PIVOT:
            rc = pivot(a, f);
            break;
        case S_TREE_BIND:
            /* Not following a symlink at target: the mount lands on the link itself,
             * never where an image's link points. */
            if (syscall(SYS_move_mount, (int)it->i[1], "", AT_FDCWD, b,
                        MOVE_MOUNT_F_EMPTY_PATH) < 0)
                rc = fail_call(f, "move_mount %s to %s", a, b);
            break;
        }
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* --- the child's user, workdir, executable -------------------------------------------- */

struct exec_user {
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    const char *home;
};

/* Static: the child's own copy (no malloc after the clone), untouched by the parent. */
static char passwd_buf[1 << 18], group_buf[1 << 18], home_buf[PATH_MAX + 8];

static ssize_t read_file(const char *path, char *buf, size_t size)
{
    ssize_t n = 0, got;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;   /* a missing file is an empty table */
    while ((size_t)n < size - 1 && (got = read(fd, buf + n, size - 1 - (size_t)n)) > 0)
        n += got;
    close(fd);
    buf[n] = '\0';
    return n;
}

#define MAX_FIELDS 8
#define LINE_MAX_ 4096

/* The next line of a table, copied into buf and split at ':' there: its field count,
 * 0 at the end. Skips empty lines and comments; *pos moves past the line. */
static int next_line(const char **pos, char *buf, char *fields[MAX_FIELDS])
{
    for (;;) {
        const char *line = *pos, *end;
        size_t len;
        int n = 0;
        if (!*line)
            return 0;
        end = strchr(line, '\n');
        len = end ? (size_t)(end - line) : strlen(line);
        *pos = line + len + (end ? 1 : 0);
        if (len && line[len - 1] == '\r')
            len--;
        if (!len || *line == '#')
            continue;
        if (len >= LINE_MAX_)
            len = LINE_MAX_ - 1;
        memcpy(buf, line, len);
        buf[len] = '\0';
        fields[n++] = buf;
        for (char *c = buf; *c; c++)
            if (*c == ':') {
                *c = '\0';
                if (n < MAX_FIELDS)
                    fields[n] = c + 1;
                n++;
            }
        return n;
    }
}

static int is_number(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

static int to_id(const char *s, unsigned *out)
{
    char *end;
    unsigned long v;
    while (*s == ' ' || *s == '\t')
        s++;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (end == s || errno || v > 0xFFFFFFFFul)
        return -1;
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end)
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int has_member(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *c = list;;) {
        const char *comma = strchr(c, ',');
        size_t len = comma ? (size_t)(comma - c) : strlen(c);
        if (len == n && !memcmp(c, name, n))
            return 1;
        if (!comma)
            return 0;
        c = comma + 1;
    }
}

/* Docker's --user ("", "name", "uid", "name:group", "uid:gid") against the texts of
 * the container's /etc/passwd and /etc/group (runc's GetExecUser): uid, gid, the
 * groups (the primary first, then those naming the user, ascending) and home. */
static int resolve_user(const char *user, const char *passwd, const char *group,
                        struct exec_user *u, struct fail *f)
{
    static char line[LINE_MAX_];
    char name[256], grp[256], uname[256] = "";
    const char *colon, *spec = (user && *user) ? user : "0", *pos;
    char *fields[MAX_FIELDS];
    int n, found = 0;
    unsigned v;
    colon = strchr(spec, ':');
    snprintf(name, sizeof name, "%.*s", colon ? (int)(colon - spec) : (int)strlen(spec), spec);
    snprintf(grp, sizeof grp, "%s", colon ? colon + 1 : "");
    snprintf(home_buf, sizeof home_buf, "/");
    /* By name first, then by uid. */
    for (int by_uid = 0; by_uid < 2 && !found; by_uid++) {
        if (by_uid && !is_number(name))
            break;
        pos = passwd;
        while ((n = next_line(&pos, line, fields)) > 0) {
            if (n < 7 || strcmp(fields[by_uid ? 2 : 0], name))
                continue;
            if (to_id(fields[2], &v) < 0)
                return failf(f, EINVAL, "invalid uid in /etc/passwd for %s", fields[0]);
            u->uid = v;
            if (to_id(fields[3], &v) < 0)
                return failf(f, EINVAL, "invalid gid in /etc/passwd for %s", fields[0]);
            u->gid = v;
            snprintf(home_buf, sizeof home_buf, "%s", *fields[5] ? fields[5] : "/");
            snprintf(uname, sizeof uname, "%s", fields[0]);
            found = 1;
            break;
        }
    }
    if (!found) {
        if (!is_number(name))
            return failf(f, ENOENT,
                         "unable to find user %s: no matching entries in passwd file", name);
        if (to_id(name, &v) < 0)
            return failf(f, EINVAL, "unable to find user %s: uid out of range", name);
        u->uid = v;
        u->gid = 0;
    }
    if (*grp) {
        int gfound = 0;
        pos = group;
        while ((n = next_line(&pos, line, fields)) > 0)
            if (n >= 3 && !strcmp(fields[0], grp) && to_id(fields[2], &v) == 0) {
                u->gid = v;
                gfound = 1;
                break;
            }
        if (!gfound) {
            if (!is_number(grp) || to_id(grp, &v) < 0)
                return failf(f, ENOENT,
                             "unable to find group %s: no matching entries in group file", grp);
            u->gid = v;
        }
    }
    u->home = home_buf;
    u->groups[0] = u->gid;
    u->ngroups = 1;
    if (!*uname)
        return 0;
    pos = group;
    while ((n = next_line(&pos, line, fields)) > 0) {
        int k, dup = 0;
        if (n < 4 || !has_member(fields[3], uname) || to_id(fields[2], &v) < 0)
            continue;
        for (k = 0; k < u->ngroups; k++)
            dup |= u->groups[k] == v;
        if (dup || u->ngroups == MAX_GROUPS)
            continue;
        /* insertion into the ascending tail (groups[0] is the primary group) */
        for (k = u->ngroups; k > 1 && u->groups[k - 1] > v; k--)
            u->groups[k] = u->groups[k - 1];
        u->groups[k] = v;
        u->ngroups++;
    }
    return 0;
}

/* $PATH lookup inside the container, with Docker's error texts. */
static int find_executable(const char *name, const char *path, char *out, size_t size,
                           struct fail *f)
{
    struct stat st;
    if (strchr(name, '/')) {
        if (stat(name, &st) < 0) {
            if (errno == ENOENT)
                return failf(f, ENOENT, "exec: \"%s\": stat %s: no such file or directory",
                             name, name);
            return fail_call(f, "exec: \"%s\": stat %s", name, name);
        }
        if (access(name, X_OK) < 0 || S_ISDIR(st.st_mode))
            return failf(f, EACCES, "exec: \"%s\": permission denied", name);
        snprintf(out, size, "%s", name);
        return 0;
    }
    for (const char *d = path;;) {
        const char *colon = strchr(d, ':');
        size_t len = colon ? (size_t)(colon - d) : strlen(d);
        if (len == 0)
            snprintf(out, size, "./%s", name);
        else
            snprintf(out, size, "%.*s%s%s", (int)len, d, d[len - 1] == '/' ? "" : "/", name);
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0)
            return 0;
        if (!colon)
            break;
        d = colon + 1;
    }
    return failf(f, ENOENT, "exec: \"%s\": executable file not found in $PATH", name);
}

/* A pty of the container's own devpts (so `tty` names a /dev/pts/N that exists
 * inside): the master goes to berthd over `sock`, the peer becomes stdio. */
static int open_console(int sock, struct fail *f)
{
    int unlock = 0, master, slave;
    char byte = 't';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    struct cmsghdr *c;
    master = open("/dev/pts/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0)
        return fail_call(f, "open /dev/pts/ptmx");
    if (ioctl(master, TIOCSPTLCK, &unlock) < 0)
        return fail_call(f, "unlock pty");
    slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
    if (slave < 0)
        return fail_call(f, "open the pty's peer");
    memset(&ctl, 0, sizeof ctl);
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &master, sizeof(int));
    if (sendmsg(sock, &msg, MSG_NOSIGNAL) < 0)
        return fail_call(f, "send the pty to berthd");
    close(master);
    for (int k = 0; k < 3; k++)
        if (dup2(slave, k) < 0)
            return fail_call(f, "dup2 the pty");
    if (setsid() < 0)
        return fail_call(f, "setsid");
    if (ioctl(0, TIOCSCTTY, 0) < 0)
        return fail_call(f, "set the controlling terminal");
    return 0;
}

static int set_ids(const struct exec_user *u, struct fail *f)
{
    if (setgroups((size_t)u->ngroups, u->groups) < 0)
        return fail_call(f, "setgroups");
    if (syscall(SYS_setresgid, u->gid, u->gid, u->gid) < 0)
        return fail_call(f, "setresgid %u", u->gid);
    if (syscall(SYS_setresuid, u->uid, u->uid, u->uid) < 0)
        return fail_call(f, "setresuid %u", u->uid);
    return 0;
}

static int set_caps(const struct plan *p, const struct exec_user *u, struct fail *f)
{
    for (int cap = 0; cap <= p->last_cap; cap++)
        if (!(p->caps >> cap & 1) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
            return fail_call(f, "prctl PR_CAPBSET_DROP %d", cap);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
        return fail_call(f, "prctl PR_CAP_AMBIENT_CLEAR_ALL");
    if (set_ids(u, f) < 0)
        return -1;
    if (u->uid == 0) {
        /* effective = permitted = the set, inheritable empty (another uid keeps none) */
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof data);
        for (int k = 0; k < 2; k++)
            data[k].effective = data[k].permitted = (uint32_t)(p->caps >> (32 * k));
        if (syscall(SYS_capset, &hdr, data) < 0)
            return fail_call(f, "capset");
    }
    return 0;
}

/* The child, from the clone to its exec; returns only on failure (f says why). */
static int child_setup(const struct plan *p, struct fail *f)
{
    static struct exec_user u;
    static char exe[PATH_MAX];
    sigset_t none;
    char go = 0;
    /* Signals as a new process has them (the cloner's handlers and ignores reset). */
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            signal(sig, SIG_DFL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* What needs neither the id maps nor the mounts is done while the cloner makes
     * them: the child would only wait for "go" meanwhile. */
    if (p->console_fd < 0) {
        for (int k = 0; k < 3; k++)
            if (p->stdio[k] >= 0 && dup2(p->stdio[k], k) < 0)
                return fail_call(f, "dup2 %d", k);
        setsid();
    }
    if (read(p->go_fd, &go, 1) != 1 || go != 'g')
        _exit(127);   /* berthd gave up on this start */
    for (int k = 0; k < p->njoin; k++)
        if (setns(p->join_fd[k], p->join_type[k]) < 0)
            return fail_call(f, "setns 0x%x", p->join_type[k]);
    if (p->userns) {
        if (setgroups(0, NULL) < 0)
            return fail_call(f, "setgroups");
        if (syscall(SYS_setresgid, 0, 0, 0) < 0 || syscall(SYS_setresuid, 0, 0, 0) < 0)
            return fail_call(f, "become root of the user namespace");
    }
    if (p->unshare && unshare((int)p->unshare) < 0)
        return fail_call(f, "unshare 0x%llx", (unsigned long long)p->unshare);
    if (apply_steps(p, 1, -1, f) < 0)
        return -1;
    if (p->hostname && sethostname(p->hostname, strlen(p->hostname)) < 0)
        return fail_call(f, "sethostname %s", p->hostname);
    if (p->domainname && setdomainname(p->domainname, strlen(p->domainname)) < 0)
        return fail_call(f, "setdomainname %s", p->domainname);
    if (p->console_fd >= 0 && open_console(p->console_fd, f) < 0)
        return -1;
    /* Nothing of the cloner's (sockets, other containers' FIFOs) may leak in. */
    if (p->err_fd > 3)
        syscall(SYS_close_range, 3, p->err_fd - 1, 0);
    syscall(SYS_close_range, p->err_fd + 1, ~0U, 0);
    read_file("/etc/passwd", passwd_buf, sizeof passwd_buf);
    read_file("/etc/group", group_buf, sizeof group_buf);
    if (resolve_user(p->user, passwd_buf, group_buf, &u, f) < 0)
        return -1;
    if (!p->has_home) {
        static char home_env[PATH_MAX + 8];
        snprintf(home_env, sizeof home_env, "HOME=%s", u.home);
        p->envp[p->envc] = home_env;   /* the spare slot; the array is this child's copy */
    }
    if (p->workdir) {
        if (p->make_workdir && makedirs(p->workdir, f) < 0)
            return -1;
        if (chdir(p->workdir) < 0)
            return failf(f, errno, "chdir to cwd (\"%s\") set in config.json failed: %s",
                         p->workdir, edesc(errno));
    }
    if (find_executable(p->argv[0], p->path, exe, sizeof exe, f) < 0)
        return -1;
    if (set_caps(p, &u, f) < 0)
        return -1;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return fail_call(f, "prctl PR_SET_NO_NEW_PRIVS");
    if (p->has_seccomp && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &p->seccomp, 0, 0) < 0)
        return fail_call(f, "prctl PR_SET_SECCOMP");
    execve(exe, p->argv, p->envp);
    {
        /* Go's wording, as Docker reports it: "exec /bin/x: exec format error" */
        int err = errno;
        char desc[128];
        snprintf(desc, sizeof desc, "%s", edesc(err));
        if (desc[0] >= 'A' && desc[0] <= 'Z' && desc[1] >= 'a' && desc[1] <= 'z')
            desc[0] = (char)(desc[0] - 'A' + 'a');
        return failf(f, err, "exec %s: %s", exe, desc);
    }
}

static void __attribute__((noreturn)) child_main(const struct plan *p)
{
    static struct fail f;
    child_setup(p, &f);
    if (p->err_fd >= 0) {
        size_t n = strlen(f.msg);
        ssize_t w = write(p->err_fd, f.msg, n ? n : 1);
        (void)w;
    }
    _exit(127);
}

/* --- the cloner's part ------------------------------------------------------------ */

static int write_proc(pid_t pid, const char *name, const char *data, struct fail *f)
{
    char path[64];
    int fd;
    ssize_t n;
    snprintf(path, sizeof path, "/proc/%d/%s", pid, name);
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return fail_call(f, "open %s", path);
    n = write(fd, data, strlen(data));
    if (n < 0) {
        fail_call(f, "write %s", path);
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

/* After the clone, while the child waits: id maps, host mounts, "go". */
static int parent_setup(const struct plan *p, pid_t pid, struct fail *f)
{
    int has_host = 0, userns_fd = -1, rc = 0;
    if (p->idmap && (write_proc(pid, "uid_map", p->idmap, f) < 0
                     || write_proc(pid, "gid_map", p->idmap, f) < 0))
        return -1;
    for (int n = 0; n < p->nitems; n++)
        has_host |= p->items[n].tag >= S_FIRST && p->items[n].tag <= S_LAST
                    && p->items[n].i[0] == 0;
    if (has_host) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/user", pid);
        userns_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (userns_fd < 0)
            return fail_call(f, "open %s", path);
        rc = apply_steps(p, 0, userns_fd, f);
        close(userns_fd);
        if (rc < 0)
            return -1;
    }
    if (p->release_fd >= 0 && write(p->release_fd, "g", 1) != 1)
        return fail_call(f, "release the child");
    return 0;
}

enum { R_OK_ = 0, R_ERROR = 1, R_SETUP_FAILED = 2 };

struct result {
    int status, pid, pidfd;
    struct fail f;   /* why, with R_ERROR and R_SETUP_FAILED (zeroed otherwise) */
};

/* Clone per the program and run both parts. Thread-safe (no shared state but the
 * cached last_cap); call without the GIL. */
static void spawn(const char *prog, size_t size, const int *fds, int nfds, struct result *r)
{
    struct plan p;
    struct fail *f = &r->f;
    struct b_clone_args args;
    int own_pidns = -1, pidfd = -1;
    pid_t pid;
    memset(r, 0, sizeof *r);
    r->pidfd = -1;
    r->status = R_ERROR;
    if (parse(prog, size, fds, nfds, &p, f) < 0 || (p.last_cap = last_cap(f)) < 0
        || open_trees(&p, f) < 0)
        goto done;
    memset(&args, 0, sizeof args);
    args.flags = p.ns_flags | B_CLONE_PIDFD | (p.cgroup_fd >= 0 ? B_CLONE_INTO_CGROUP : 0)
                 | (p.parent ? B_CLONE_PARENT : 0);
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    /* CLONE_PARENT takes no exit_signal: the child gets ours (SIGCHLD) for our parent. */
    args.exit_signal = p.parent ? 0 : SIGCHLD;
    args.cgroup = p.cgroup_fd >= 0 ? (uint64_t)p.cgroup_fd : 0;
    if (p.pidns_fd >= 0) {
        /* Joining a pid namespace applies to children only: switch this thread's for
         * the clone, then back (our own active pid namespace is always allowed). */
        own_pidns = open("/proc/thread-self/ns/pid", O_RDONLY | O_CLOEXEC);
        if (own_pidns < 0 || setns(p.pidns_fd, CLONE_NEWPID) < 0) {
            fail_call(f, "setns pid");
            if (own_pidns >= 0)
                close(own_pidns);
            goto done;
        }
    }
    pid = (pid_t)syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0)
        child_main(&p);
    if (pid < 0)
        fail_call(f, "clone3 0x%llx", (unsigned long long)p.ns_flags);
    if (own_pidns >= 0) {
        if (setns(own_pidns, CLONE_NEWPID) < 0)
            abort();   /* this thread's children would be born in a container's pid ns */
        close(own_pidns);
    }
    if (pid < 0)
        goto done;
    r->pid = pid;
    r->pidfd = pidfd;
    /* A failed setup leaves the child to the caller: it kills and reaps it, undoes mounts. */
    r->status = parent_setup(&p, pid, f) < 0 ? R_SETUP_FAILED : R_OK_;
done:
    close_trees(&p);
    plan_free(&p);
}

/* --- the spawner's loop ------------------------------------------------------------ */

#define MAX_FDS 64

/* One request: 8-byte big-endian length + SCM_RIGHTS fds, then the program. 0 at EOF,
 * -1 on error; *body is malloc'd. Received fds are close-on-exec. */
static int recv_request(int sock, char **body, size_t *size, int *fds, int *nfds)
{
    char head[8];
    uint64_t len;
    size_t got = 0;
    struct iovec iov = {.iov_base = head, .iov_len = sizeof head};
    union {
        char buf[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
                         .msg_controllen = sizeof ctl.buf};
    ssize_t n;
    *nfds = 0;
    *body = NULL;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_WAITALL);
    while (n < 0 && errno == EINTR);
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            memcpy(fds + *nfds, CMSG_DATA(c), (size_t)k * sizeof(int));
            *nfds += k;
        }
    if (n <= 0)
        return (int)n;
    if (n < (ssize_t)sizeof head) {
        errno = EPROTO;
        return -1;
    }
    memcpy(&len, head, 8);
    len = be64toh(len);
    if (len > (64u << 20)) {
        errno = EMSGSIZE;
        return -1;
    }
    *body = malloc(len ? len : 1);
    if (!*body)
        return -1;
    while (got < len) {
        n = recv(sock, *body + got, len - got, MSG_WAITALL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            errno = n == 0 ? EPROTO : errno;
            return -1;
        }
        got += (size_t)n;
    }
    *size = len;
    return 1;
}

/* The answer: 8-byte big-endian length, then i32 status, errno, pid and the message;
 * the pidfd by SCM_RIGHTS when there is a child. */
static int send_result(int sock, const struct result *r)
{
    char buf[8 + 12 + MSG_MAX];
    size_t mlen = strlen(r->f.msg), len = 12 + mlen;
    uint64_t be = htobe64(len);
    int32_t head[3] = {r->status, r->f.err, r->pid};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctl;
    struct iovec iov;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    memcpy(buf, &be, 8);
    memcpy(buf + 8, head, 12);
    memcpy(buf + 20, r->f.msg, mlen);
    iov.iov_base = buf;
    iov.iov_len = 8 + len;
    if (r->pidfd >= 0) {
        struct cmsghdr *c;
        memset(&ctl, 0, sizeof ctl);
        msg.msg_control = ctl.buf;
        msg.msg_controllen = sizeof ctl.buf;
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &r->pidfd, sizeof(int));
    }
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)(8 + len) ? 0 : -1;
}

static int serve_loop(int sock)
{
    for (;;) {
        int fds[MAX_FDS], nfds, rc;
        char *body;
        size_t size = 0;
        struct result r;
        rc = recv_request(sock, &body, &size, fds, &nfds);
        if (rc <= 0) {
            int err = errno;
            for (int k = 0; k < nfds; k++)
                close(fds[k]);
            free(body);
            if (rc == 0)
                return 0;
            errno = err;
            return -1;
        }
        spawn(body, size, fds, nfds, &r);
        free(body);
        for (int k = 0; k < nfds; k++)
            close(fds[k]);
        rc = send_result(sock, &r);
        if (r.pidfd >= 0)
            close(r.pidfd);
        if (rc < 0)
            return -1;
    }
}

/* --- Python ----------------------------------------------------------------------- */

static int fd_list(PyObject *seq, int *fds, int *nfds)
{
    PyObject *fast = PySequence_Fast(seq, "fds must be a sequence of ints");
    Py_ssize_t n;
    if (!fast)
        return -1;
    n = PySequence_Fast_GET_SIZE(fast);
    if (n > MAX_FDS) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "too many fds");
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(fast, k));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
        fds[k] = (int)v;
    }
    *nfds = (int)n;
    Py_DECREF(fast);
    return 0;
}

static PyObject *py_spawn(PyObject *self, PyObject *args)
{
    Py_buffer prog;
    PyObject *seq, *out;
    int fds[MAX_FDS], nfds = 0;
    struct result *r;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*O", &prog, &seq))
        return NULL;
    if (fd_list(seq, fds, &nfds) < 0) {
        PyBuffer_Release(&prog);
        return NULL;
    }
    r = PyMem_RawMalloc(sizeof *r);
    if (!r) {
        PyBuffer_Release(&prog);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    spawn(prog.buf, (size_t)prog.len, fds, nfds, r);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&prog);
    out = Py_BuildValue("(iiiis)", r->status, r->f.err, r->pid, r->pidfd, r->f.msg);
    PyMem_RawFree(r);
    return out;
}

static PyObject *py_serve(PyObject *self, PyObject *args)
{
    int sock, rc;
    (void)self;
    if (!PyArg_ParseTuple(args, "i", &sock))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = serve_loop(sock);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *py_resolve_user(PyObject *self, PyObject *args)
{
    const char *user, *passwd, *group;
    static struct exec_user u;
    struct fail f;
    PyObject *groups;
    (void)self;
    if (!PyArg_ParseTuple(args, "sss", &user, &passwd, &group))
        return NULL;
    if (resolve_user(user, passwd, group, &u, &f) < 0)
        return PyErr_Format(PyExc_LookupError, "%s", f.msg);
    groups = PyTuple_New(u.ngroups);
    if (!groups)
        return NULL;
    for (int k = 0; k < u.ngroups; k++)
        PyTuple_SET_ITEM(groups, k, PyLong_FromUnsignedLong(u.groups[k]));
    return Py_BuildValue("(IINs)", u.uid, u.gid, groups, u.home);
}

static PyObject *py_find_executable(PyObject *self, PyObject *args)
{
    const char *name, *path;
    char out[PATH_MAX];
    struct fail f;
    (void)self;
    if (!PyArg_ParseTuple(args, "ss", &name, &path))
        return NULL;
    if (find_executable(name, path, out, sizeof out, &f) < 0)
        return PyErr_Format(PyExc_LookupError, "%s", f.msg);
    return PyUnicode_DecodeFSDefault(out);
}

static PyObject *py_parse(PyObject *self, PyObject *args)
{
    Py_buffer prog;
    int nfds, fds[MAX_FDS];
    struct plan p;
    struct fail f;
    PyObject *out;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*i", &prog, &nfds))
        return NULL;
    if (nfds < 0 || nfds > MAX_FDS) {
        PyBuffer_Release(&prog);
        PyErr_SetString(PyExc_ValueError, "nfds out of range");
        return NULL;
    }
    for (int k = 0; k < nfds; k++)
        fds[k] = k;   /* so that each fd reads back as its index */
    if (parse(prog.buf, (size_t)prog.len, fds, nfds, &p, &f) < 0) {
        plan_free(&p);
        PyBuffer_Release(&prog);
        return PyErr_Format(PyExc_ValueError, "%s", f.msg);
    }
    out = PyList_New(p.nitems);
    for (int n = 0; out && n < p.nitems; n++) {
        const struct item *it = &p.items[n];
        PyObject *ints = PyTuple_New(it->nint), *strs = PyTuple_New(it->nstr), *t;
        if (!ints || !strs) {
            Py_XDECREF(ints);
            Py_XDECREF(strs);
            Py_CLEAR(out);
            break;
        }
        for (int k = 0; k < it->nint; k++)
            PyTuple_SET_ITEM(ints, k, PyLong_FromLongLong(it->i[k]));
        for (int k = 0; k < it->nstr; k++) {
            PyObject *v;
            if (!it->s[k]) {
                v = Py_None;
                Py_INCREF(v);
            } else {
                /* C strings without their NUL; the BPF program as it is */
                v = PyBytes_FromStringAndSize(it->s[k], it->len[k] - (it->tag != T_SECCOMP));
            }
            PyTuple_SET_ITEM(strs, k, v);
        }
        t = Py_BuildValue("(iNN)", it->tag, ints, strs);
        if (!t) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, n, t);
    }
    plan_free(&p);
    PyBuffer_Release(&prog);
    return out;
}

static PyMethodDef methods[] = {
    {"parse", py_parse, METH_VARARGS,
     "parse(program, nfds) -> [(tag, ints, strs)]: the items as the cloner reads them\n"
     "(fds read back as their indices); ValueError naming what is malformed."},
    {"spawn", py_spawn, METH_VARARGS,
     "spawn(program, fds) -> (status, errno, pid, pidfd, message): clone and run it.\n"
     "status 0: the child runs (released unless held); 1: no child, nothing done;\n"
     "2: the child exists but the cloner's part failed (kill and reap it)."},
    {"serve", py_serve, METH_VARARGS,
     "serve(sock_fd): the spawner's loop, until EOF on the socket."},
    {"resolve_user", py_resolve_user, METH_VARARGS,
     "resolve_user(user, passwd, group) -> (uid, gid, groups, home), as the child does;\n"
     "LookupError with Docker's message when there is no such user or group."},
    {"find_executable", py_find_executable, METH_VARARGS,
     "find_executable(name, path) -> path, as the child looks it up; LookupError with\n"
     "Docker's message when it cannot be run."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_clone",
    "A container's first process from clone3 to execve, without Python after the clone.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__clone(void)
{
    static const struct { const char *name; int value; } tags[] = {
        {"CLONE", T_CLONE}, {"IDMAP", T_IDMAP}, {"RELEASE", T_RELEASE}, {"STDIO", T_STDIO},
        {"GO", T_GO}, {"ERROR", T_ERROR}, {"CONSOLE", T_CONSOLE}, {"JOIN", T_JOIN},
        {"USERNS", T_USERNS}, {"UNSHARE", T_UNSHARE}, {"HOSTNAME", T_HOSTNAME},
        {"DOMAINNAME", T_DOMAINNAME}, {"USER", T_USER}, {"WORKDIR", T_WORKDIR},
        {"ARG", T_ARG}, {"ENV", T_ENV}, {"CAPS", T_CAPS}, {"SECCOMP", T_SECCOMP},
        {"MKDIR", S_MKDIR}, {"TOUCH", S_TOUCH}, {"SYMLINK", S_SYMLINK}, {"MOUNT", S_MOUNT},
        {"IDMAP_BIND", S_IDMAP_BIND}, {"REMOUNT_RO", S_REMOUNT_RO},
        {"MOUNTPOINT", S_MOUNTPOINT}, {"MASK", S_MASK}, {"READONLY", S_READONLY},
        {"PIVOT", S_PIVOT}, {"TREE_BIND", S_TREE_BIND},
    };
    PyObject *m = PyModule_Create(&module), *d;
    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "OK", R_OK_) < 0
        || PyModule_AddIntConstant(m, "ERROR", R_ERROR) < 0
        || PyModule_AddIntConstant(m, "SETUP_FAILED", R_SETUP_FAILED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    d = PyDict_New();
    if (!d || PyModule_AddObject(m, "TAGS", d) < 0) {
        Py_XDECREF(d);
        Py_DECREF(m);
        return NULL;
    }
    for (size_t k = 0; k < sizeof tags / sizeof *tags; k++) {
        PyObject *v = PyLong_FromLong(tags[k].value);
        if (!v || PyDict_SetItemString(d, tags[k].name, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(m);
            return NULL;
        }
        Py_DECREF(v);
    }
    return m;
}
